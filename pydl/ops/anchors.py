"""anchors: anchor generation, anchor-to-ground-truth matching and box coding (NumPy or CuPy).

Array code through ``xp`` (no kernels of their own: these are not hot loops); IoU comes from
pydl.ops.box_iou. Conventions follow "Dive into Deep Learning" (multibox prior, anchor
assignment, offset_boxes) and torchvision's BoxCoder; the docstrings state each rule.
"""
import math
import numbers

import numpy as np

from .. import _backend
from .nms import _check_boxes, box_iou

__all__ = ["anchor_boxes", "match_anchors", "encode_boxes", "decode_boxes"]


def _positive_floats(name, values):
    if type(values).__module__.startswith("cupy") and hasattr(values, "get"):
        values = values.get()  # hyperparameters: a few numbers, read on the host
    if isinstance(values, np.ndarray) and values.ndim != 1:
        if values.ndim:
            raise ValueError(f"{name}: expected a 1-D sequence of floats, got an array of shape {values.shape}")
        values = values.item()  # a 0-d array is a scalar
    if isinstance(values, (numbers.Real, np.floating, np.integer)):
        values = [values]
    if not isinstance(values, (list, tuple, np.ndarray)):
        raise TypeError(f"{name}: expected a sequence of floats, got {type(values).__name__}")
    out = [_backend.float_arg(name, v) for v in values]
    if not out:
        raise ValueError(f"{name}: expected at least one value, got an empty sequence")
    for v in out:
        if not v > 0:
            raise ValueError(f"{name}: expected floats > 0, got {v}")
    return out


def anchor_boxes(feature_size, image_size, sizes, aspect_ratios, dtype=np.float32, xp=np):
    """Anchor boxes centred on every pixel of a feature map (d2l's multibox prior).

    For feature-map pixel (i, j) (row i < fh, column j < fw) of an image of H x W pixels, the
    centre is ``cx = (j + 0.5) * W / fw``, ``cy = (i + 0.5) * H / fh``. With sizes s_1..s_n
    (fractions of the image height) and aspect ratios r_1..r_m (width / height), the anchors
    are the n + m - 1 pairs (s_1, r_1), (s_2, r_1), ..., (s_n, r_1), (s_1, r_2), ..., (s_1, r_m),
    in that order, each of pixel size
    ``w = s * sqrt(r) * H``, ``h = s / sqrt(r) * H``
    (d2l's normalized ``w = s * sqrt(r) * H / W``, times W), i.e. box
    ``(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)``, computed in float64 then cast.
    Anchors are not clipped to the image.

    Parameters
    ----------
    feature_size : int or (fh, fw)
    image_size : int or (H, W), pixels
    sizes : sequence of floats > 0
    aspect_ratios : sequence of floats > 0
    dtype : float32 or float64
    xp : numpy or cupy (the array module of the result)

    Returns
    -------
    ndarray, shape (fh * fw * (n + m - 1), 4)
        (x1, y1, x2, y2) in image pixels; pixel-major (row by row), then the anchor order above.
    """
    fh, fw = _backend.pair("feature_size", feature_size, minimum=1)
    ih, iw = _backend.pair("image_size", image_size, minimum=1)
    sizes = _positive_floats("sizes", sizes)
    ratios = _positive_floats("aspect_ratios", aspect_ratios)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype!r}") from None
    if dt not in _backend.FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    if getattr(xp, "__name__", None) not in ("numpy", "cupy"):
        raise TypeError(f"xp: expected the numpy or cupy module, got {xp!r}")
    pairs = [(s, ratios[0]) for s in sizes] + [(sizes[0], r) for r in ratios[1:]]
    half_w = np.array([s * math.sqrt(r) * ih for s, r in pairs]) / 2
    half_h = np.array([s / math.sqrt(r) * ih for s, r in pairs]) / 2
    cy = (np.arange(fh) + 0.5) * ih / fh
    cx = (np.arange(fw) + 0.5) * iw / fw
    cyy, cxx = np.meshgrid(cy, cx, indexing="ij")  # (fh, fw)
    cxx = cxx[:, :, None]
    cyy = cyy[:, :, None]
    out = np.stack([cxx - half_w, cyy - half_h, cxx + half_w, cyy + half_h], axis=-1)
    with np.errstate(over="ignore", invalid="ignore"):
        out = out.reshape(-1, 4).astype(dt)
    if not np.isfinite(out).all():  # e.g. sizes=[1e308], or aspect_ratios=[1e-320] in float32
        raise ValueError(f"sizes, aspect_ratios: anchors of image_size {(ih, iw)} overflow {dt} "
                         f"(sizes {sizes}, aspect_ratios {ratios})")
    return out if xp is np else xp.asarray(out)


def match_anchors(anchors, gt_boxes, iou_threshold=0.5):
    """Assign ground-truth boxes to anchors (d2l's assign_anchor_to_bbox).

    With the IoU matrix J = box_iou(anchors, gt_boxes) (NaN entries count as 0):

    1. Greedy step: repeatedly take the largest remaining entry J[a, g] (ties: the lowest flat
       index a * G + g), assign anchor a to gt g and discard row a and column g; stop when every
       gt (or every anchor) is assigned or no positive entry is left. Every gt that overlaps
       some free anchor thus gets at least one anchor.
    2. Every anchor still unassigned takes the gt of its highest IoU (ties: the lowest gt index)
       when that IoU >= iou_threshold.

    Parameters
    ----------
    anchors : ndarray, shape (A, 4); gt_boxes : ndarray, shape (G, 4), same float dtype
    iou_threshold : float

    Returns
    -------
    ndarray, shape (A,), int64
        The gt index of each anchor, -1 for background. Runs on the device of the inputs
        without host round trips (min(A, G) greedy steps of masked array updates).
    """
    xp = _backend.array_module(anchors=anchors, gt_boxes=gt_boxes)
    _check_boxes("anchors", anchors)
    _check_boxes("gt_boxes", gt_boxes)
    _backend.check_same_dtype("anchors", anchors, gt_boxes=gt_boxes)
    thr = _backend.float_arg("iou_threshold", iou_threshold)
    a_count, g_count = anchors.shape[0], gt_boxes.shape[0]
    out = _backend.empty((a_count,), np.int64, xp)
    if a_count == 0:
        return out
    out[...] = -1
    if g_count == 0:
        return out
    iou = box_iou(anchors, gt_boxes)
    iou = xp.where(iou > 0, iou, iou.dtype.type(0))  # NaN -> 0
    work = iou.copy()
    rows = xp.arange(a_count)[:, None]
    cols = xp.arange(g_count)[None, :]
    for _ in range(min(a_count, g_count)):
        k = xp.argmax(work)  # first maximum = lowest flat index; stays on the device
        a, g = k // g_count, k % g_count
        ok = xp.take(work, k) > 0  # the value at k (k stays on the device)
        hit_row = (rows == a) & ok
        out = xp.where(hit_row[:, 0], g, out)
        work = xp.where(hit_row | ((cols == g) & ok), iou.dtype.type(-1), work)
    best = xp.argmax(iou, axis=1)
    best_iou = xp.max(iou, axis=1)
    return xp.where((out < 0) & (best_iou >= thr), best, out).astype(np.int64, copy=False)


def _pair_check(a_name, a, b_name, b):
    xp = _backend.array_module(**{a_name: a, b_name: b})
    _check_boxes(a_name, a)
    _backend.check_float(b_name, b, ndim=2)
    _backend.check_same_dtype(a_name, a, **{b_name: b})
    _backend.check_shape(b_name, b, a.shape)
    return xp


def _weights(weights):
    if not isinstance(weights, (list, tuple)):
        raise TypeError(f"weights: expected a sequence of 4 floats (wx, wy, ww, wh), got {type(weights).__name__} "
                        f"{weights!r}")
    if len(weights) != 4:
        raise ValueError(f"weights: expected 4 floats (wx, wy, ww, wh), got {weights!r}")
    w = [_backend.float_arg("weights", v) for v in weights]
    if not all(v > 0 for v in w):
        raise ValueError(f"weights: expected floats > 0, got {weights!r}")
    return w


def _centers(xp, b):
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    return b[:, 0] + 0.5 * w, b[:, 1] + 0.5 * h, w, h


def encode_boxes(anchors, boxes, weights=(10.0, 10.0, 5.0, 5.0)):
    """Regression targets of boxes relative to anchors (torchvision's BoxCoder.encode_single).

    With centres and sizes ``cx = x1 + 0.5 * w``, ``w = x2 - x1`` (likewise y, h):
    ``dx = wx * (cx_b - cx_a) / w_a``, ``dy = wy * (cy_b - cy_a) / h_a``,
    ``dw = ww * log(w_b / w_a)``, ``dh = wh * log(h_b / h_a)``, in the inputs' dtype.
    d2l's offset_boxes is the same with (10, 10, 5, 5) but adds 1e-6 inside the log.
    Anchors need positive sizes and boxes too (else inf/NaN; not checked, to avoid a device sync).

    Parameters
    ----------
    anchors : ndarray, shape (N, 4); boxes : ndarray, shape (N, 4), same float dtype
    weights : (wx, wy, ww, wh), floats > 0

    Returns
    -------
    ndarray, shape (N, 4): (dx, dy, dw, dh); decode_boxes is its inverse.
    """
    xp = _pair_check("anchors", anchors, "boxes", boxes)
    wx, wy, ww, wh = _weights(weights)
    out = _backend.empty(anchors.shape, anchors.dtype, xp)
    if anchors.shape[0] == 0:
        return out
    t = anchors.dtype.type
    ax, ay, aw, ah = _centers(xp, anchors)
    bx, by, bw, bh = _centers(xp, boxes)
    out[:, 0] = t(wx) * (bx - ax) / aw
    out[:, 1] = t(wy) * (by - ay) / ah
    out[:, 2] = t(ww) * xp.log(bw / aw)
    out[:, 3] = t(wh) * xp.log(bh / ah)
    return out


def decode_boxes(anchors, deltas, weights=(10.0, 10.0, 5.0, 5.0)):
    """Boxes from regression deltas relative to anchors, the inverse of encode_boxes.

    ``cx = dx / wx * w_a + cx_a``, ``w = exp(dw / ww) * w_a`` (likewise y, h), box
    ``(cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h)``, in the inputs' dtype.
    Unlike torchvision's BoxCoder.decode_single, dw and dh are not clamped at log(1000 / 16),
    so that decode_boxes(a, encode_boxes(a, b)) == b up to rounding for any b.

    Parameters
    ----------
    anchors : ndarray, shape (N, 4); deltas : ndarray, shape (N, 4), same float dtype
    weights : (wx, wy, ww, wh), floats > 0

    Returns
    -------
    ndarray, shape (N, 4): (x1, y1, x2, y2).
    """
    xp = _pair_check("anchors", anchors, "deltas", deltas)
    wx, wy, ww, wh = _weights(weights)
    out = _backend.empty(anchors.shape, anchors.dtype, xp)
    if anchors.shape[0] == 0:
        return out
    t = anchors.dtype.type
    ax, ay, aw, ah = _centers(xp, anchors)
    cx = deltas[:, 0] / t(wx) * aw + ax
    cy = deltas[:, 1] / t(wy) * ah + ay
    w = xp.exp(deltas[:, 2] / t(ww)) * aw
    h = xp.exp(deltas[:, 3] / t(wh)) * ah
    out[:, 0] = cx - t(0.5) * w
    out[:, 1] = cy - t(0.5) * h
    out[:, 2] = cx + t(0.5) * w
    out[:, 3] = cy + t(0.5) * h
    return out
