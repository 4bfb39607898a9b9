"""metrics: NumPy twin of pydl.metrics, written as plain loops over the ranked samples.

The rules are those of pydl.metrics's module docstring: decreasing score, tied scores form
one threshold, and the four interpolations read off their definitions.
"""
import numpy as np

from .nms import box_iou

__all__ = ["precision_recall_curve", "average_precision", "mean_average_precision"]


def _points(scores, positive):
    """[(precision_k, tp_k, threshold_k)] at distinct scores, decreasing."""
    pts = []
    tp = fp = 0
    distinct = sorted(set(float(s) for s in scores), reverse=True)
    for t in distinct:
        for s, y in zip(scores, positive):
            if float(s) == t:
                if y:
                    tp += 1
                else:
                    fp += 1
        pts.append((tp / (tp + fp), tp, t))
    return pts


def _ap(pts, npos, interpolation):
    prec = [p for p, _, _ in pts]
    rec = [tp / npos for _, tp, _ in pts]
    if not pts:
        return 0.0
    if interpolation == "none":
        total, prev = 0.0, 0.0
        for p, r in zip(prec, rec):
            total += (r - prev) * p
            prev = r
        return total
    if interpolation == "voc2010":
        total, prev = 0.0, 0.0
        for k in range(len(prec)):
            total += (rec[k] - prev) * max(prec[k:])
            prev = rec[k]
        return total
    n = 11 if interpolation == "voc2007" else 101
    total = 0.0
    for i in range(n):
        t = i / (n - 1)
        reach = [p for p, r in zip(prec, rec) if r >= t]
        total += max(reach) if reach else 0.0
    return total / n


def precision_recall_curve(scores, labels):
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels).astype(bool)
    npos = int(labels.sum())
    pts = _points(scores, labels)
    precision = [p for p, _, _ in reversed(pts)] + [1.0]
    recall = [tp / npos for _, tp, _ in reversed(pts)] + [0.0]
    thresholds = [t for _, _, t in reversed(pts)]
    return np.array(precision), np.array(recall), np.array(thresholds)


def average_precision(scores, labels, interpolation="voc2010"):
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels).astype(bool)
    return _ap(_points(scores, labels), int(labels.sum()), interpolation)


def mean_average_precision(pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels, iou_threshold=0.5,
                           interpolation="voc2010"):
    classes = sorted(set(int(c) for gl in gt_labels for c in np.asarray(gl)))
    aps = []
    for c in classes:
        npos = sum(int(np.sum(np.asarray(gl) == c)) for gl in gt_labels)
        dets = []  # (-score, image, index): sorting gives the rank with its tie rule
        for i in range(len(pred_boxes)):
            for k in range(len(pred_scores[i])):
                if int(pred_labels[i][k]) == c:
                    dets.append((-float(pred_scores[i][k]), i, k))
        dets.sort()
        matched = {i: set() for i in range(len(gt_boxes))}
        scores, flags = [], []
        for negs, i, k in dets:
            best, bg = -1.0, -1
            gb = np.asarray(gt_boxes[i], np.float64)
            for g in range(len(gb)):
                if int(gt_labels[i][g]) != c or g in matched[i]:
                    continue
                iou = box_iou(np.asarray(pred_boxes[i], np.float64)[k:k + 1], gb[g:g + 1])[0, 0]
                if iou > best:
                    best, bg = iou, g
            hit = bg >= 0 and best >= iou_threshold
            if hit:
                matched[i].add(bg)
            scores.append(-negs)
            flags.append(hit)
        aps.append(_ap(_points(scores, flags), npos, interpolation))
    return float(np.mean(aps))
