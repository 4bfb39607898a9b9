"""nms: non-maximum suppression and box IoU (dispatch in pydl._backend).

Semantics are torchvision.ops' (see pydl.reference.nms for the rule book):
kept indices by decreasing score, ties to the lower index, NaN scores first,
suppression when IoU > iou_threshold (strictly), a zero union never suppresses,
a box with a NaN coordinate neither suppresses nor is suppressed.
"""
import numpy as np

from .. import _backend

__all__ = ["nms", "batched_nms", "box_iou"]

_INT64 = np.dtype(np.int64)


def _check_boxes(name, boxes):
    _backend.check_float(name, boxes, ndim=2)
    if boxes.shape[1] != 4:
        raise ValueError(f"{name}: expected shape (N, 4) as (x1, y1, x2, y2), got {tuple(boxes.shape)}")


def _prepare(boxes, scores, idxs, iou_threshold):
    xp = _backend.array_module(boxes=boxes, scores=scores, idxs=idxs)
    _check_boxes("boxes", boxes)
    _backend.check_float("scores", scores, ndim=1)
    _backend.check_same_dtype("boxes", boxes, scores=scores)
    _backend.check_shape("scores", scores, (boxes.shape[0],))
    if idxs is not None:
        if idxs.dtype != _INT64:
            raise TypeError(f"idxs: expected dtype int64, got {_backend._dtype_str(idxs.dtype)}")
        _backend.check_shape("idxs", idxs, (boxes.shape[0],))
    thr = _backend.float_arg("iou_threshold", iou_threshold)
    return xp, thr


def _run(xp, boxes, scores, idxs, thr):
    n = boxes.shape[0]
    out = _backend.empty((n,), _INT64, xp)
    if n == 0:
        return out
    boxes = _backend.contiguous(boxes, xp)
    scores = _backend.contiguous(scores, xp)
    if idxs is not None:
        idxs = _backend.contiguous(idxs, xp)
    count = _backend.kernels(xp, "nms").nms(boxes, scores, idxs, thr, out)
    return out[:count]


def nms(boxes, scores, iou_threshold):
    """Non-maximum suppression, as torchvision.ops.nms.

    Parameters
    ----------
    boxes : ndarray, shape (N, 4), float32 or float64
        (x1, y1, x2, y2) corners.
    scores : ndarray, shape (N,), the dtype of boxes
    iou_threshold : float
        Boxes whose IoU with a kept, higher-scored box is > iou_threshold are dropped.

    Returns
    -------
    ndarray, shape (K,), int64
        Indices of the kept boxes by decreasing score (ties: lower index first; NaN
        scores rank first). IoU is computed in the boxes' dtype; a pair with zero
        union (0/0) and a box with a NaN coordinate never suppress.
    """
    xp, thr = _prepare(boxes, scores, None, iou_threshold)
    return _run(xp, boxes, scores, None, thr)


def batched_nms(boxes, scores, idxs, iou_threshold):
    """NMS within each category, as torchvision.ops.batched_nms.

    Parameters
    ----------
    boxes : ndarray, shape (N, 4); scores : ndarray, shape (N,)
    idxs : ndarray, shape (N,), int64
        Category of each box; boxes of different categories never suppress each other.
    iou_threshold : float

    Returns
    -------
    ndarray, shape (K,), int64
        Kept indices over all categories, by decreasing score (ties: lower index).
        IoU is computed on the given coordinates (no coordinate-offset trick, so no
        rounding from shifted boxes).
    """
    if idxs is None:  # None would silently run a plain, class-agnostic nms
        raise TypeError("idxs: expected an int64 array of categories, got None")
    xp, thr = _prepare(boxes, scores, idxs, iou_threshold)
    return _run(xp, boxes, scores, idxs, thr)


def box_iou(boxes1, boxes2):
    """Pairwise IoU, as torchvision.ops.box_iou.

    Parameters
    ----------
    boxes1 : ndarray, shape (N, 4); boxes2 : ndarray, shape (M, 4), same float dtype

    Returns
    -------
    ndarray, shape (N, M)
        inter / (area1 + area2 - inter); 0 where the union is 0 (two zero-area boxes),
        where torchvision gives NaN.
    """
    xp = _backend.array_module(boxes1=boxes1, boxes2=boxes2)
    _check_boxes("boxes1", boxes1)
    _check_boxes("boxes2", boxes2)
    _backend.check_same_dtype("boxes1", boxes1, boxes2=boxes2)
    out = _backend.empty((boxes1.shape[0], boxes2.shape[0]), boxes1.dtype, xp)
    if out.size == 0:
        return out
    boxes1 = _backend.contiguous(boxes1, xp)
    boxes2 = _backend.contiguous(boxes2, xp)
    _backend.kernels(xp, "nms").box_iou(boxes1, boxes2, out)
    return out
