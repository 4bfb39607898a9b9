"""nms: NumPy twin of pydl.ops.nms, batched_nms, box_iou.

Textbook greedy non-maximum suppression, O(n^2), written to state the semantics
(those of torchvision.ops.nms) plainly:

- order: decreasing score, ties broken by the lower index (a stable sort); NaN scores
  rank above every number (as torch.sort puts them), ties among them by index;
  -0.0 and 0.0 are equal scores.
- IoU in the boxes' dtype, evaluated exactly as
  ``inter / (area_i + area_j - inter)`` with ``area = (x2 - x1) * (y2 - y1)`` and
  ``inter = max(0, min(x2) - max(x1)) * max(0, min(y2) - max(y1))``;
  box j is suppressed by a kept box i when ``iou > iou_threshold`` (strictly, compared
  in float64). A zero union gives 0/0 = NaN, which is never > threshold, so zero-area
  boxes are never suppressed by anything; a box with a NaN coordinate has NaN area, so
  it neither suppresses nor is suppressed.
"""
import numpy as np

__all__ = ["nms", "batched_nms", "box_iou"]


def _order(scores):
    scores = np.asarray(scores)
    keys = [(0 if np.isnan(s) else 1, 0.0 if np.isnan(s) else -float(s), i) for i, s in enumerate(scores)]
    return np.array([k[2] for k in sorted(keys)], dtype=np.int64)


def _iou_parts(a, b):
    """(intersection, union) of box a against boxes b (rows), in their dtype.

    One rounding per operation, max/min/clamp written as the comparisons C++'s
    std::max/std::min make, so that NaN falls through the same way.
    """
    zero = a.dtype.type(0)
    with np.errstate(invalid="ignore", over="ignore"):
        area_a = (a[2] - a[0]) * (a[3] - a[1])
        area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        left = np.where(a[0] < b[:, 0], b[:, 0], a[0])
        top = np.where(a[1] < b[:, 1], b[:, 1], a[1])
        right = np.where(b[:, 2] < a[2], b[:, 2], a[2])
        bottom = np.where(b[:, 3] < a[3], b[:, 3], a[3])
        w = right - left
        h = bottom - top
        w = np.where(zero < w, w, zero)
        h = np.where(zero < h, h, zero)
        inter = w * h
        union = (area_a + area_b) - inter
    return inter, union


def nms(boxes, scores, iou_threshold):
    """Greedy NMS: kept indices (int64), by decreasing score (see the module docstring)."""
    boxes = np.asarray(boxes)
    thr = float(iou_threshold)
    order = _order(scores)
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for a in range(len(order)):
        i = order[a]
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[a + 1:]
        inter, union = _iou_parts(boxes[i], boxes[rest])
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / union  # 0/0 = NaN: never suppresses
        # compared in float64 (a float32 IoU against the exact threshold, as torchvision's CPU op)
        suppressed[rest[iou.astype(np.float64) > thr]] = True
    return np.array(keep, dtype=np.int64)


def batched_nms(boxes, scores, idxs, iou_threshold):
    """NMS within each category of idxs; all kept indices by decreasing score."""
    boxes = np.asarray(boxes)
    idxs = np.asarray(idxs)
    keep = []
    for c in np.unique(idxs):
        members = np.nonzero(idxs == c)[0]
        keep.extend(members[nms(boxes[members], np.asarray(scores)[members], iou_threshold)])
    keep = np.array(sorted(keep), dtype=np.int64)  # index order, then a stable sort by score
    if keep.size == 0:
        return keep
    return keep[_order(np.asarray(scores)[keep])]


def box_iou(boxes1, boxes2):
    """(N, M) IoU matrix, same formula and dtype as the pair rule above.

    Unlike torchvision (which returns 0/0 = NaN there), a pair with zero union (two
    zero-area boxes) has IoU 0; NaN coordinates still give NaN.
    """
    b1 = np.asarray(boxes1)
    b2 = np.asarray(boxes2)
    out = np.empty((len(b1), len(b2)), dtype=np.result_type(b1, b2))
    for i in range(len(b1)):
        inter, union = _iou_parts(b1[i].astype(out.dtype), b2.astype(out.dtype))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i] = np.where(union == 0, out.dtype.type(0), inter / union)
    return out
