"""anchors: NumPy twin of pydl.ops.anchor_boxes, match_anchors, encode_boxes, decode_boxes.

Plain loops over pixels, anchors and boxes, in float64, stating the rules of the
pydl.ops.anchors docstrings directly; IoU from the NMS reference.
"""
import math

import numpy as np

from .nms import box_iou

__all__ = ["anchor_boxes", "match_anchors", "encode_boxes", "decode_boxes"]


def _pair(v):
    return (v, v) if np.isscalar(v) else tuple(v)


def anchor_boxes(feature_size, image_size, sizes, aspect_ratios, dtype=np.float32, xp=np):
    fh, fw = _pair(feature_size)
    ih, iw = _pair(image_size)
    sizes = [sizes] if np.isscalar(sizes) else list(sizes)
    ratios = [aspect_ratios] if np.isscalar(aspect_ratios) else list(aspect_ratios)
    pairs = [(s, ratios[0]) for s in sizes] + [(sizes[0], r) for r in ratios[1:]]
    out = []
    for i in range(fh):
        for j in range(fw):
            cx = (j + 0.5) / fw * iw
            cy = (i + 0.5) / fh * ih
            for s, r in pairs:
                w = s * math.sqrt(r) * ih
                h = s / math.sqrt(r) * ih
                out.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return np.array(out, dtype=np.float64).reshape(-1, 4).astype(dtype)


def match_anchors(anchors, gt_boxes, iou_threshold=0.5):
    anchors = np.asarray(anchors)
    gt_boxes = np.asarray(gt_boxes)
    na, ng = len(anchors), len(gt_boxes)
    out = np.full(na, -1, dtype=np.int64)
    if na == 0 or ng == 0:
        return out
    iou = box_iou(anchors, gt_boxes)
    iou = np.where(iou > 0, iou, 0)
    row_free = [True] * na
    col_free = [True] * ng
    for _ in range(min(na, ng)):
        best, ba, bg = 0.0, -1, -1
        for a in range(na):  # row-major scan: strict > keeps the lowest flat index
            if not row_free[a]:
                continue
            for g in range(ng):
                if col_free[g] and iou[a, g] > best:
                    best, ba, bg = iou[a, g], a, g
        if ba < 0:  # no positive IoU left
            break
        out[ba] = bg
        row_free[ba] = False
        col_free[bg] = False
    for a in range(na):
        if out[a] >= 0:
            continue
        best, bg = iou[a, 0], 0
        for g in range(1, ng):
            if iou[a, g] > best:
                best, bg = iou[a, g], g
        if best >= iou_threshold:
            out[a] = bg
    return out


def encode_boxes(anchors, boxes, weights=(10.0, 10.0, 5.0, 5.0)):
    wx, wy, ww, wh = weights
    out = np.empty((len(anchors), 4))
    for k, (a, b) in enumerate(zip(np.asarray(anchors, np.float64), np.asarray(boxes, np.float64))):
        aw, ah = a[2] - a[0], a[3] - a[1]
        bw, bh = b[2] - b[0], b[3] - b[1]
        acx, acy = a[0] + aw / 2, a[1] + ah / 2
        bcx, bcy = b[0] + bw / 2, b[1] + bh / 2
        out[k] = [wx * (bcx - acx) / aw, wy * (bcy - acy) / ah, ww * math.log(bw / aw), wh * math.log(bh / ah)]
    return out


def decode_boxes(anchors, deltas, weights=(10.0, 10.0, 5.0, 5.0)):
    wx, wy, ww, wh = weights
    out = np.empty((len(anchors), 4))
    for k, (a, d) in enumerate(zip(np.asarray(anchors, np.float64), np.asarray(deltas, np.float64))):
        aw, ah = a[2] - a[0], a[3] - a[1]
        acx, acy = a[0] + aw / 2, a[1] + ah / 2
        cx, cy = d[0] / wx * aw + acx, d[1] / wy * ah + acy
        w, h = math.exp(d[2] / ww) * aw, math.exp(d[3] / wh) * ah
        out[k] = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    return out
