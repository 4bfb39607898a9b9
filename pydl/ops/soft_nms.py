"""soft_nms: Soft-NMS (Bodla et al. 2017) on NumPy or CuPy arrays (dispatch in pydl._backend).

The rule book (the same in the C++ and CUDA kernels and in pydl.reference.soft_nms):

- Candidates are the boxes with ``score >= score_threshold`` (compared in float64); a NaN
  score is never a candidate, so NaN-scored boxes are dropped and decay nothing.
- Working scores are float64. Repeatedly: pick the candidate with the highest working score
  (ties: the lowest index), output it with its current score, remove it, and decay every other
  candidate i with ``iou = IoU(picked, i)``:
  gaussian ``s *= w`` with ``w = exp(-(iou * iou) / sigma)`` evaluated in float64 and rounded
  to float32 (exp implementations differ by up to 1 ulp between libm, CUDA and NumPy; the
  rounding makes the three implementations pick identically); linear ``s *= 1 - iou`` if ``iou > iou_threshold``;
  hard: remove i if ``iou > iou_threshold`` (classic NMS among the candidates). Candidates whose
  score falls below score_threshold are removed.
- IoU is pydl.ops.nms's: computed in the boxes' dtype, one rounding per operation, then widened
  to float64; an IoU that is not > 0 (0/0 of zero-area pairs, NaN from NaN coordinates) counts as
  0, so such boxes are never decayed (gaussian weight exp(-0) = 1) and never removed by 'hard'
  or 'linear' unless iou_threshold < 0.
"""
import numpy as np

from .. import _backend
from .nms import _check_boxes

__all__ = ["soft_nms"]

_METHODS = {"gaussian": 0, "linear": 1, "hard": 2}
_INT64 = np.dtype(np.int64)


def soft_nms(boxes, scores, sigma=0.5, score_threshold=0.001, method="gaussian", iou_threshold=0.3):
    """Soft non-maximum suppression (Bodla et al. 2017); see the module docstring for the rules.

    Parameters
    ----------
    boxes : ndarray, shape (N, 4), float32 or float64
        (x1, y1, x2, y2) corners.
    scores : ndarray, shape (N,), the dtype of boxes
    sigma : float > 0
        Gaussian width: weight ``exp(-iou**2 / sigma)`` (method 'gaussian' only).
    score_threshold : float >= 0
        Boxes whose (decayed) score is below it are dropped.
    method : {'gaussian', 'linear', 'hard'}
    iou_threshold : float
        Overlap above which 'linear' decays and 'hard' removes (unused by 'gaussian').

    Returns
    -------
    keep : ndarray, shape (K,), int64
        Indices of the picked boxes, in selection order.
    kept_scores : ndarray, shape (K,), the dtype of scores
        Their (decayed) scores when picked: non-increasing.
    """
    xp = _backend.array_module(boxes=boxes, scores=scores)
    _check_boxes("boxes", boxes)
    _backend.check_float("scores", scores, ndim=1)
    _backend.check_same_dtype("boxes", boxes, scores=scores)
    _backend.check_shape("scores", scores, (boxes.shape[0],))
    sigma = _backend.float_arg("sigma", sigma)
    if not sigma > 0:
        raise ValueError(f"sigma: expected a float > 0, got {sigma}")
    sthr = _backend.float_arg("score_threshold", score_threshold, minimum=0.0)
    ithr = _backend.float_arg("iou_threshold", iou_threshold)
    if not isinstance(method, str):
        raise TypeError(f"method: expected a str, got {type(method).__name__} {method!r}")
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {sorted(_METHODS)}, got {method!r}")
    n = boxes.shape[0]
    keep = _backend.empty((n,), _INT64, xp)
    kept = _backend.empty((n,), boxes.dtype, xp)
    if n == 0:
        return keep, kept
    boxes = _backend.contiguous(boxes, xp)
    scores = _backend.contiguous(scores, xp)
    count = _backend.kernels(xp, "soft_nms").soft_nms(boxes, scores, sigma, sthr, _METHODS[method], ithr, keep, kept)
    return keep[:count], kept[:count]
