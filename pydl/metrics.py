"""pydl.metrics: precision-recall curves, average precision and detection mAP (NumPy host code).

CuPy arrays are accepted and copied to the host (``.get()``); results are NumPy arrays and
Python floats.

Conventions (each is tested by name in tests/test_metrics.py):

- Ranking is by decreasing score; tied scores form ONE threshold (scikit-learn's convention),
  so AP does not depend on the order of tied detections (the VOC devkit's per-detection curve
  does).
- For a threshold k (the k-th distinct score, decreasing), ``tp_k`` / ``fp_k`` count the
  positives / negatives scored >= it, ``precision_k = tp_k / (tp_k + fp_k)`` and
  ``recall_k = tp_k / npos``; ``recall_0 = 0``.
- Average precision, by ``interpolation``:
    'none'    sum_k (recall_k - recall_{k-1}) * precision_k (scikit-learn's
              average_precision_score; no interpolation).
    'voc2010' all-point interpolation (PASCAL VOC 2010 and later): the area under the monotone
              envelope ``penv_k = max_{j >= k} precision_j``, i.e.
              sum_k (recall_k - recall_{k-1}) * penv_k.
    'voc2007' 11-point interpolation (PASCAL VOC 2007): the mean over t = 0, 0.1, ..., 1
              (t = i / 10, not numpy.arange's accumulated 0.1 steps) of
              max {precision_k : recall_k >= t}, 0 where no threshold reaches recall t.
    'coco'    the same with 101 points t = i / 100 (COCO's recall thresholds).
"""
import numpy as np

__all__ = ["precision_recall_curve", "average_precision", "mean_average_precision"]

INTERPOLATIONS = ("voc2010", "voc2007", "coco", "none")


def _host(name, a):
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        a = a.get()
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray or cupy.ndarray, got {type(a).__name__}")
    return a


def _scores(name, a):
    a = _host(name, a)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real (float or int) dtype, got {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    a = a.astype(np.float64)
    if np.isnan(a).any():
        raise ValueError(f"{name}: expected no NaN scores, got {int(np.isnan(a).sum())}")
    return a


def _binary_labels(name, a, n):
    a = _host(name, a)
    if a.dtype.kind not in "biu":
        raise TypeError(f"{name}: expected a bool or integer dtype, got {a.dtype}")
    if a.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) (as scores), got {a.shape}")
    if a.dtype.kind != "b" and not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name}: expected values 0 or 1, got {np.unique(a)[:5].tolist()}")
    return a.astype(bool)


def _interp(interpolation):
    if not isinstance(interpolation, str):
        raise TypeError(f"interpolation: expected a str, got {type(interpolation).__name__}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation: expected one of {INTERPOLATIONS}, got {interpolation!r}")
    return interpolation


def _curve(scores, positive):
    """(tp, fp, thresholds) at each distinct score, decreasing; ties form one threshold."""
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    tp = np.cumsum(positive[order], dtype=np.int64)
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1] if s.size else np.zeros(0, np.int64)
    tp = tp[last]
    fp = (last + 1) - tp
    return tp, fp, s[last]


def _ap(tp, fp, npos, interpolation):
    """AP from counts at decreasing thresholds, npos positives in all (see the module rules)."""
    if tp.size == 0:
        return 0.0
    precision = tp / (tp + fp)
    recall = tp / npos
    if interpolation == "none":
        return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    env = np.maximum.accumulate(precision[::-1])[::-1]  # max over this and lower thresholds
    if interpolation == "voc2010":
        return float(np.sum(np.diff(np.r_[0.0, recall]) * env))
    points = 11 if interpolation == "voc2007" else 101
    t = np.arange(points) / (points - 1)
    # recall is non-decreasing: the first threshold reaching t carries the envelope there
    first = np.searchsorted(recall, t, side="left")
    return float(np.mean(np.where(first < recall.size, env[np.minimum(first, recall.size - 1)], 0.0)))


def precision_recall_curve(scores, labels):
    """Precision-recall pairs at every distinct score, as sklearn.metrics.precision_recall_curve.

    Parameters
    ----------
    scores : ndarray, shape (N,), real
    labels : ndarray, shape (N,), bool or integers in {0, 1}
        1 for a positive sample; at least one is required (ValueError otherwise, where
        scikit-learn warns and sets recall to 1).

    Returns
    -------
    precision : ndarray, shape (K + 1,), float64
        precision[i] at thresholds[i], then 1 (the end point of zero recall).
    recall : ndarray, shape (K + 1,), float64
        Decreasing, ending with 0.
    thresholds : ndarray, shape (K,), float64
        The K distinct scores, increasing; a sample counts as predicted positive when its
        score >= the threshold.
    """
    s = _scores("scores", scores)
    y = _binary_labels("labels", labels, s.size)
    npos = int(y.sum())
    if npos == 0:
        raise ValueError("labels: expected at least one positive label (recall is undefined), got none")
    tp, fp, thr = _curve(s, y)
    precision = tp / (tp + fp)
    recall = tp / npos
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1].copy()


def average_precision(scores, labels, interpolation="voc2010"):
    """Average precision of a ranking (see the module docstring for the interpolation rules).

    Parameters
    ----------
    scores : ndarray, shape (N,), real
    labels : ndarray, shape (N,), bool or integers in {0, 1}; at least one positive
    interpolation : {'voc2010', 'voc2007', 'coco', 'none'}
        'none' equals sklearn.metrics.average_precision_score.

    Returns
    -------
    float in [0, 1]
    """
    s = _scores("scores", scores)
    y = _binary_labels("labels", labels, s.size)
    interpolation = _interp(interpolation)
    npos = int(y.sum())
    if npos == 0:
        raise ValueError("labels: expected at least one positive label (AP is undefined), got none")
    tp, fp, _ = _curve(s, y)
    return _ap(tp, fp, npos, interpolation)


def _image_list(name, seq, count=None, like=None):
    if not isinstance(seq, (list, tuple)):
        raise TypeError(f"{name}: expected a list of per-image arrays, got {type(seq).__name__}")
    if count is not None and len(seq) != count:
        raise ValueError(f"{name}: expected {count} arrays (one per image, as {like}), got {len(seq)}")
    return list(seq)


def _boxes(name, a):
    a = _host(name, a)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real dtype, got {a.dtype}")
    if a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"{name}: expected shape (N, 4) as (x1, y1, x2, y2), got {a.shape}")
    return a.astype(np.float64)


def _labels(name, a, n):
    a = _host(name, a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer dtype, got {a.dtype}")
    if a.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {a.shape}")
    return a.astype(np.int64)


def _iou(a, b):
    from .ops.nms import box_iou

    return box_iou(a, b)


def mean_average_precision(pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels, iou_threshold=0.5,
                           interpolation="voc2010"):
    """Detection mAP at one IoU threshold over a set of images (PASCAL VOC style).

    Per class c with at least one ground-truth box (the classes of gt_labels): all predictions
    labelled c, over all images, are ranked by decreasing score (ties: image order, then the
    order within the image). In that order each prediction is matched to the still-unmatched
    ground-truth box of class c in its image with the highest IoU, if that IoU >= iou_threshold
    (ties: the lowest gt index): a true positive, and that box is matched; otherwise a false
    positive (including duplicates of a matched box). AP_c is then computed from the tp/fp
    counts with npos = the number of gt boxes of class c (see the module rules; tied scores
    form one threshold). The result is the mean of AP_c over those classes; predictions of
    classes without ground truth are ignored.

    IoU is pydl.ops.box_iou in float64 (continuous coordinates: no VOC "+1" pixel
    convention). Not supported: VOC "difficult" and COCO "crowd" annotations (every gt box
    counts), COCO's per-image detection cap and area ranges. Differences from the VOC devkit:
    it matches the best gt over ALL boxes (a matched one makes a duplicate FP) with IoU >
    threshold strictly; here the best UNMATCHED box with IoU >= threshold is taken (COCO's rule).

    Parameters
    ----------
    pred_boxes : list of ndarray, shape (N_i, 4); pred_scores : list of ndarray, shape (N_i,)
    pred_labels : list of int ndarray, shape (N_i,)
    gt_boxes : list of ndarray, shape (M_i, 4); gt_labels : list of int ndarray, shape (M_i,)
    iou_threshold : float in (0, 1]
    interpolation : {'voc2010', 'voc2007', 'coco', 'none'}

    Returns
    -------
    float
        mAP; ValueError when there is no ground-truth box at all.
    """
    pred_boxes = _image_list("pred_boxes", pred_boxes)
    n_img = len(pred_boxes)
    pred_scores = _image_list("pred_scores", pred_scores, n_img, "pred_boxes")
    pred_labels = _image_list("pred_labels", pred_labels, n_img, "pred_boxes")
    gt_boxes = _image_list("gt_boxes", gt_boxes, n_img, "pred_boxes")
    gt_labels = _image_list("gt_labels", gt_labels, n_img, "pred_boxes")
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float, np.integer, np.floating)):
        raise TypeError(f"iou_threshold: expected a float, got {type(iou_threshold).__name__}")
    thr = float(iou_threshold)
    if not 0.0 < thr <= 1.0:
        raise ValueError(f"iou_threshold: expected a float in (0, 1], got {thr}")
    interpolation = _interp(interpolation)
    images = []
    for i in range(n_img):
        pb = _boxes(f"pred_boxes[{i}]", pred_boxes[i])
        ps = _scores(f"pred_scores[{i}]", pred_scores[i])
        if ps.shape != (pb.shape[0],):
            raise ValueError(f"pred_scores[{i}]: expected shape ({pb.shape[0]},), got {ps.shape}")
        pl = _labels(f"pred_labels[{i}]", pred_labels[i], pb.shape[0])
        gb = _boxes(f"gt_boxes[{i}]", gt_boxes[i])
        gl = _labels(f"gt_labels[{i}]", gt_labels[i], gb.shape[0])
        iou = _iou(pb, gb) if pb.shape[0] and gb.shape[0] else np.zeros((pb.shape[0], gb.shape[0]))
        images.append((ps, pl, gl, iou))
    classes = np.unique(np.concatenate([g[2] for g in images])) if images else np.zeros(0, np.int64)
    if classes.size == 0:
        raise ValueError("gt_boxes: expected at least one ground-truth box over all images, got none")
    aps = []
    for c in classes:
        npos = sum(int(np.sum(gl == c)) for _, _, gl, _ in images)
        scores, img, idx = [], [], []
        for i, (ps, pl, _, _) in enumerate(images):
            k = np.nonzero(pl == c)[0]
            scores.append(ps[k])
            img.append(np.full(k.size, i))
            idx.append(k)
        scores, img, idx = np.concatenate(scores), np.concatenate(img), np.concatenate(idx)
        order = np.argsort(-scores, kind="stable")  # images in order, then index: the tie rule
        matched = [np.zeros(g[2].size, bool) for g in images]
        tp_flags = np.zeros(order.size, bool)
        for r, k in enumerate(order):
            ps, pl, gl, iou = images[img[k]]
            cand = (gl == c) & ~matched[img[k]]
            if not cand.any():
                continue
            row = np.where(cand, iou[idx[k]], -1.0)
            g = int(np.argmax(row))
            if row[g] >= thr:
                tp_flags[r] = True
                matched[img[k]][g] = True
        tp, fp, _ = _curve(scores[order], tp_flags)
        aps.append(_ap(tp, fp, npos, interpolation))
    return float(np.mean(aps))
