"""pydl.metrics against hand-computed cases (the arithmetic is in the comments), scikit-learn
(when importable) and the loop-written reference on random cases."""
import numpy as np
import pytest

import pydl.metrics as M
import pydl.reference as R
from conftest import to_numpy

try:
    import sklearn.metrics as skm
except Exception:  # scikit-learn is optional: those comparisons skip
    skm = None

INTERPOLATIONS = ["voc2010", "voc2007", "coco", "none"]


def test_average_precision_hand_computed(xp, dtype):
    # ranked labels 1 0 0 1 1 (scores 0.9 .. 0.5), npos = 3:
    #   k  tp fp  precision  recall
    #   1  1  0   1          1/3
    #   2  1  1   1/2        1/3
    #   3  1  2   1/3        1/3
    #   4  2  2   1/2        2/3
    #   5  3  2   3/5        1
    scores = xp.asarray(np.array([0.9, 0.8, 0.7, 0.6, 0.5], dtype))
    labels = xp.asarray(np.array([1, 0, 0, 1, 1]))
    # none: 1/3 * 1 + 1/3 * 1/2 + 1/3 * 3/5 = 7/10
    assert M.average_precision(scores, labels, "none") == pytest.approx(0.7, abs=1e-15)
    # voc2010: the envelope at k = 4 is max(1/2, 3/5) = 3/5: 1/3 + 1/3 * 3/5 + 1/3 * 3/5 = 11/15
    assert M.average_precision(scores, labels, "voc2010") == pytest.approx(11 / 15, abs=1e-15)
    assert M.average_precision(scores, labels) == pytest.approx(11 / 15, abs=1e-15)  # the default
    # voc2007: t = 0, .1, .2, .3 -> 1 (recall 1/3 reaches them); t = .4 ... 1 (7 points) -> 3/5
    assert M.average_precision(scores, labels, "voc2007") == pytest.approx((4 + 7 * 0.6) / 11, abs=1e-15)
    # coco: t = i/100 <= 1/3 for i = 0..33 (34 points) -> 1; the other 67 -> 3/5
    assert M.average_precision(scores, labels, "coco") == pytest.approx((34 + 67 * 0.6) / 101, abs=1e-15)
    if skm is not None:
        assert M.average_precision(scores, labels, "none") == pytest.approx(
            skm.average_precision_score(to_numpy(labels), to_numpy(scores)), abs=1e-15)


def test_voc2007_points_are_exact_tenths():
    """Rule: the 11 points are i/10, so a recall of exactly 3/10 reaches t = 0.3 (numpy.arange's
    0.30000000000000004 would miss it)."""
    # 10 positives; the top 3 samples are positive, then a negative, then the other 7 positives.
    labels = np.array([1, 1, 1, 0] + [1] * 7)
    scores = np.arange(11, 0, -1).astype(np.float64)
    # precision at recall 3/10 is 1; after that 4/5 ... envelope = 10/11 from recall 0.4 on.
    # t = 0, .1, .2, .3 -> 1 (4 points); t = .4 ... 1 (7 points) -> max precision beyond = 10/11
    want = (4 + 7 * 10 / 11) / 11
    assert M.average_precision(scores, labels, "voc2007") == pytest.approx(want, abs=1e-15)
    assert R.average_precision(scores, labels, "voc2007") == pytest.approx(want, abs=1e-15)


def test_tied_scores_form_one_threshold(xp):
    # scores .9 .9 .5, labels 0 1 1: one threshold at .9 (tp 1, fp 1: precision 1/2, recall 1/2),
    # then (tp 2, fp 1): precision 2/3, recall 1. none: 1/2 * 1/2 + 1/2 * 2/3 = 7/12, whatever the
    # order of the tied pair.
    for order in ([0, 1, 2], [1, 0, 2]):
        scores = np.array([0.9, 0.9, 0.5])[order]
        labels = np.array([0, 1, 1])[order]
        assert M.average_precision(xp.asarray(scores), xp.asarray(labels), "none") == pytest.approx(7 / 12, abs=1e-15)
        p, r, t = M.precision_recall_curve(xp.asarray(scores), xp.asarray(labels))
        np.testing.assert_allclose(p, [2 / 3, 1 / 2, 1.0], atol=1e-15)
        np.testing.assert_allclose(r, [1.0, 1 / 2, 0.0], atol=1e-15)
        np.testing.assert_array_equal(t, [0.5, 0.9])


@pytest.mark.parametrize("seed", range(8))
def test_precision_recall_curve_matches_sklearn_and_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    scores = rng.integers(0, 8, n).astype(np.float32) if seed % 2 else rng.random(n)
    labels = rng.random(n) < 0.4
    labels[rng.integers(0, n)] = True
    p, r, t = M.precision_recall_curve(scores, labels)
    assert p.dtype == r.dtype == t.dtype == np.float64
    wp, wr, wt = R.precision_recall_curve(scores, labels)
    np.testing.assert_allclose(p, wp, rtol=1e-14)
    np.testing.assert_allclose(r, wr, rtol=1e-14)
    np.testing.assert_array_equal(t, wt)
    if skm is not None:
        sp, sr, st = skm.precision_recall_curve(labels, scores)
        np.testing.assert_allclose(p, sp, rtol=1e-14)
        np.testing.assert_allclose(r, sr, rtol=1e-14)
        np.testing.assert_allclose(t, st, rtol=0)
        assert M.average_precision(scores, labels, "none") == pytest.approx(
            skm.average_precision_score(labels, scores), abs=1e-12)
    for interp in INTERPOLATIONS:
        assert M.average_precision(scores, labels, interp) == pytest.approx(
            R.average_precision(scores, labels, interp), abs=1e-12)


def test_interpolation_order_relations():
    """voc2010 >= none (the envelope lies above precision); all in [0, 1]."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        scores = rng.random(40)
        labels = rng.random(40) < 0.3
        labels[0] = True
        ap = {k: M.average_precision(scores, labels, k) for k in INTERPOLATIONS}
        assert ap["voc2010"] >= ap["none"] - 1e-15
        assert all(0.0 <= v <= 1.0 for v in ap.values())
        perfect = M.average_precision(labels.astype(float), labels)  # positives ranked first
        assert perfect == 1.0


def _hand_map_inputs(xp, f=np.float64):
    # image 0: gt class 0 G0 = [0,0,10,10]; predictions (all class 0):
    #   P0 [0,0,10,10] .9 (IoU 1 with G0), P1 [1,0,11,10] .8 (IoU 90/110 with G0, matched by then:
    #   a duplicate, FP), P2 [50,50,60,60] .7 (FP)
    # image 1: gt class 0 G1 = [0,0,10,10], class 1 G2 = [20,20,30,30]; predictions:
    #   P3 [0,0,10,5] class 0 .85 (IoU 50/100 = 1/2 with G1), P4 [20,20,30,30] class 1 .6 (TP),
    #   P5 [20,20,30,30] class 0 .95 (IoU 0 with G1: FP), P6 class 7 (no gt of class 7: ignored)
    pb = [np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], f),
          np.array([[0, 0, 10, 5], [20, 20, 30, 30], [20, 20, 30, 30], [0, 0, 10, 10]], f)]
    ps = [np.array([0.9, 0.8, 0.7], f), np.array([0.85, 0.6, 0.95, 0.99], f)]
    pl = [np.array([0, 0, 0]), np.array([0, 1, 0, 7])]
    gb = [np.array([[0, 0, 10, 10]], f), np.array([[0, 0, 10, 10], [20, 20, 30, 30]], f)]
    gl = [np.array([0]), np.array([0, 1])]
    return [[xp.asarray(a) for a in group] for group in (pb, ps, pl, gb, gl)]


def test_mean_average_precision_hand_computed(xp, dtype):
    args = _hand_map_inputs(xp, dtype)
    # class 0, npos 2, ranked P5 FP, P0 TP, P3 TP (IoU 1/2 >= 0.5), P1 FP, P2 FP:
    #   (tp, fp) = (0,1) (1,1) (2,1) (2,2) (2,3); recall 0, 1/2, 1, 1, 1; precision 0, 1/2, 2/3, ...
    #   voc2010: 1/2 * 2/3 + 1/2 * 2/3 = 2/3;  none: 1/2 * 1/2 + 1/2 * 2/3 = 7/12
    # class 1: one TP at the top: AP 1.
    assert M.mean_average_precision(*args) == pytest.approx((2 / 3 + 1) / 2, abs=1e-15)
    assert M.mean_average_precision(*args, interpolation="none") == pytest.approx((7 / 12 + 1) / 2, abs=1e-15)
    # IoU threshold 0.6: P3 (IoU 1/2) becomes a FP: class 0 recall stops at 1/2 with precision 1/2
    assert M.mean_average_precision(*args, iou_threshold=0.6) == pytest.approx((0.25 + 1) / 2, abs=1e-15)
    host = [[to_numpy(a) for a in group] for group in args]
    assert R.mean_average_precision(*host) == pytest.approx((2 / 3 + 1) / 2, abs=1e-15)


def test_map_matches_the_best_unmatched_gt():
    """Rule: a prediction takes the best UNMATCHED gt (COCO); the VOC devkit would call the
    second prediction a duplicate of B and count a FP."""
    a = [0, 0, 10, 10]
    b = [2, 0, 12, 10]
    p1 = [1.5, 0, 11.5, 10]   # IoU with a: 85/115 = .74, with b: 95/105 = .90 -> takes b
    p2 = [1.2, 0, 11.2, 10]   # IoU with a: 88/112 = .79, with b: 92/108 = .85 (b taken) -> takes a
    gt = np.array([a, b], np.float64)
    pred = np.array([p1, p2], np.float64)
    args = ([pred], [np.array([0.9, 0.8])], [np.array([3, 3])], [gt], [np.array([3, 3])])
    assert M.mean_average_precision(*args) == 1.0  # both TPs: precision 1 up to recall 1
    assert R.mean_average_precision(*args) == 1.0


def _random_detections(rng, n_img, n_cls):
    pb, ps, pl, gb, gl = [], [], [], [], []
    for _ in range(n_img):
        m = int(rng.integers(0, 6))
        xy = rng.uniform(0, 50, (m, 2))
        g = np.concatenate([xy, xy + rng.uniform(5, 20, (m, 2))], 1)
        lab = rng.integers(0, n_cls, m)
        k = int(rng.integers(0, 10))
        src = rng.integers(0, max(m, 1), k)
        base = g[src] if m else rng.uniform(0, 50, (k, 4))
        p = base + rng.normal(0, 2, (k, 4))
        p[:, 2:] = np.maximum(p[:, 2:], p[:, :2] + 1)
        plab = np.where(rng.random(k) < 0.8, lab[src] if m else 0, rng.integers(0, n_cls, k))
        pb.append(p)
        ps.append(np.round(rng.random(k), 1))  # ties across images
        pl.append(plab.astype(np.int64))
        gb.append(g)
        gl.append(lab.astype(np.int64))
    return pb, ps, pl, gb, gl


@pytest.mark.parametrize("seed", range(10))
def test_mean_average_precision_matches_reference(seed):
    rng = np.random.default_rng(seed)
    args = _random_detections(rng, int(rng.integers(1, 6)), 3)
    if sum(len(g) for g in args[4]) == 0:
        args[3][0] = np.array([[0, 0, 5, 5]], np.float64)
        args[4][0] = np.array([1])
    for interp in INTERPOLATIONS:
        for thr in (0.3, 0.5, 0.75):
            got = M.mean_average_precision(*args, iou_threshold=thr, interpolation=interp)
            assert got == pytest.approx(R.mean_average_precision(*args, iou_threshold=thr, interpolation=interp),
                                        abs=1e-12)


def test_inputs_unmodified(xp, dtype):
    args = _hand_map_inputs(xp, dtype)
    before = [[to_numpy(a).copy() for a in group] for group in args]
    M.mean_average_precision(*args)
    s, y = xp.asarray(np.array([0.3, 0.1, 0.2])), xp.asarray(np.array([1, 0, 1]))
    M.average_precision(s, y)
    M.precision_recall_curve(s, y)
    np.testing.assert_array_equal(to_numpy(s), [0.3, 0.1, 0.2])
    for group, old in zip(args, before):
        for a, b in zip(group, old):
            np.testing.assert_array_equal(to_numpy(a), b)


def test_bad_inputs_raise():
    s, y = np.array([0.3, 0.1]), np.array([1, 0])
    with pytest.raises(ValueError, match="labels: expected at least one positive"):
        M.average_precision(s, np.array([0, 0]))
    with pytest.raises(ValueError, match="labels: expected at least one positive"):
        M.precision_recall_curve(s, np.array([0, 0]))
    with pytest.raises(ValueError, match=r"labels: expected values 0 or 1, got \[0, 2\]"):
        M.average_precision(s, np.array([2, 0]))
    with pytest.raises(TypeError, match="labels: expected a bool or integer dtype, got float64"):
        M.average_precision(s, np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"labels: expected shape \(2,\)"):
        M.average_precision(s, np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="scores: expected no NaN"):
        M.average_precision(np.array([np.nan, 0.1]), y)
    with pytest.raises(TypeError, match="scores: expected a numpy.ndarray or cupy.ndarray, got list"):
        M.average_precision([0.3, 0.1], y)
    with pytest.raises(ValueError, match="interpolation: expected one of"):
        M.average_precision(s, y, "voc2012")
    args = _hand_map_inputs(np)
    with pytest.raises(ValueError, match="gt_labels: expected 2 arrays"):
        M.mean_average_precision(*args[:4], args[4][:1])
    with pytest.raises(TypeError, match="pred_boxes: expected a list"):
        M.mean_average_precision(args[0][0], *args[1:])
    with pytest.raises(ValueError, match=r"pred_boxes\[1\]: expected shape \(N, 4\)"):
        M.mean_average_precision([args[0][0], np.zeros((4, 3))], *args[1:])
    with pytest.raises(TypeError, match=r"gt_labels\[0\]: expected an integer dtype, got float64"):
        M.mean_average_precision(*args[:4], [np.array([0.0]), args[4][1]])
    with pytest.raises(ValueError, match=r"pred_scores\[0\]: expected shape \(3,\)"):
        M.mean_average_precision(args[0], [np.zeros(2), args[1][1]], *args[2:])
    with pytest.raises(ValueError, match=r"iou_threshold: expected a float in \(0, 1\]"):
        M.mean_average_precision(*args, iou_threshold=0.0)
    with pytest.raises(ValueError, match="gt_boxes: expected at least one ground-truth box"):
        M.mean_average_precision([np.zeros((0, 4))], [np.zeros(0)], [np.zeros(0, np.int64)],
                                 [np.zeros((0, 4))], [np.zeros(0, np.int64)])
