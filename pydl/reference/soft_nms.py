"""soft_nms: NumPy twin of pydl.ops.soft_nms (the rules are in pydl.ops.soft_nms's docstring).

Textbook Soft-NMS: one pick per loop turn, the decay of the remaining boxes vectorized.
The IoU is the NMS reference's (pydl.reference.nms), in the boxes' dtype; weights and
working scores are float64 in the same order of operations as the kernels.
"""
import numpy as np

from .nms import _iou_parts

__all__ = ["soft_nms"]


def soft_nms(boxes, scores, sigma=0.5, score_threshold=0.001, method="gaussian", iou_threshold=0.3):
    """(keep int64 in selection order, their decayed scores in the dtype of scores)."""
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    s = scores.astype(np.float64)
    with np.errstate(invalid="ignore"):
        alive = np.nonzero(s >= score_threshold)[0]  # NaN >= t is False
    keep, kept = [], []
    while alive.size:
        j = alive[np.argmax(s[alive])]  # first maximum: alive is in index order
        keep.append(j)
        kept.append(s[j])
        alive = alive[alive != j]
        inter, union = _iou_parts(boxes[j], boxes[alive])
        with np.errstate(invalid="ignore", divide="ignore"):
            q = inter / union
        iou = np.where(q > 0, q, 0).astype(np.float64)  # 0/0, NaN and -0 count as 0
        if method == "gaussian":
            # the weight rounded to float32, as the kernels do (exp differs by <= 1 ulp between libraries)
            s[alive] = s[alive] * np.exp(-(iou * iou) / sigma).astype(np.float32).astype(np.float64)
        elif method == "linear":
            hit = iou > iou_threshold
            s[alive[hit]] = s[alive[hit]] * (1.0 - iou[hit])
        elif method == "hard":
            alive = alive[~(iou > iou_threshold)]
        else:
            raise ValueError(f"method: unknown {method!r}")
        alive = alive[s[alive] >= score_threshold]
    return np.array(keep, dtype=np.int64), np.array(kept, dtype=np.float64).astype(scores.dtype)
