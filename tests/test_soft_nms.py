"""pydl.ops.soft_nms against the NumPy reference (exact indices, scores by the tolerance table)
and hand-computed cases, on both backends and both dtypes."""
import math

import numpy as np
import pytest

import pydl.ops
import pydl.reference as R
from conftest import TOL, rel_error, to_numpy
from test_nms import clustered, integer_boxes, uniform

GENERATORS = {"clustered": clustered, "uniform": uniform, "integer": integer_boxes}


def run(xp, boxes, scores, **kw):
    keep, kept = pydl.ops.soft_nms(xp.asarray(boxes), xp.asarray(scores), **kw)
    assert keep.dtype == np.int64 and kept.dtype == scores.dtype and keep.shape == kept.shape
    return to_numpy(keep), to_numpy(kept)


def check(xp, boxes, scores, **kw):
    keep, kept = run(xp, boxes, scores, **kw)
    want_keep, want_kept = R.soft_nms(boxes, scores, **kw)
    np.testing.assert_array_equal(keep, want_keep)
    assert rel_error(kept, want_kept.astype(np.float64)) <= TOL[scores.dtype]
    assert np.all(np.diff(kept.astype(np.float64)) <= 0), "scores of later picks never exceed earlier ones"
    return keep, kept


CONFIGS = [
    dict(method="gaussian", sigma=0.5, score_threshold=0.001),
    dict(method="gaussian", sigma=0.1, score_threshold=0.05),
    dict(method="gaussian", sigma=2.0, score_threshold=0.0),
    dict(method="linear", iou_threshold=0.3, score_threshold=0.001),
    dict(method="linear", iou_threshold=0.0, score_threshold=0.2),
    dict(method="hard", iou_threshold=0.5, score_threshold=0.001),
    dict(method="hard", iou_threshold=-0.1, score_threshold=0.0),
]


@pytest.mark.parametrize("kind", list(GENERATORS))
@pytest.mark.parametrize("n", [1, 2, 7, 64, 257])
@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
def test_soft_nms_matches_reference(xp, dtype, kind, n, cfg):
    rng = np.random.default_rng(100 * n + 7 * cfg + len(kind))
    boxes, scores = GENERATORS[kind](rng, n, dtype)
    check(xp, boxes, scores, **CONFIGS[cfg])


def test_hand_computed_gaussian_linear_hard(xp, dtype):
    # boxes 0 and 1: areas 4 and 4, intersection 1 x 2 = 2, union 6: IoU = 1/3 exactly enough;
    # box 2 is far away (IoU 0 with both).
    boxes = np.array([[0, 0, 2, 2], [1, 0, 3, 2], [10, 10, 12, 12]], dtype)
    scores = np.array([0.9, 0.8, 0.7], dtype)
    # gaussian, sigma 0.5: pick 0 (0.9); box 1 -> 0.8 * exp(-(1/9) / 0.5) = 0.8 * 0.8007 = 0.6406;
    # box 2 keeps 0.7 > 0.6406, so it is picked second.
    keep, kept = check(xp, boxes, scores, method="gaussian", sigma=0.5)
    np.testing.assert_array_equal(keep, [0, 2, 1])
    np.testing.assert_allclose(kept[:2], [0.9, 0.7], rtol=1e-7)
    assert abs(float(kept[2]) - 0.8 * math.exp(-2 / 9)) < 1e-6
    # linear, threshold 0.3: 1/3 > 0.3, so box 1 -> 0.8 * (1 - 1/3) = 0.5333
    keep, kept = check(xp, boxes, scores, method="linear", iou_threshold=0.3)
    np.testing.assert_array_equal(keep, [0, 2, 1])
    assert abs(float(kept[2]) - 0.8 * 2 / 3) < 1e-6
    # linear, threshold 0.5: 1/3 is not above it: no decay
    keep, kept = check(xp, boxes, scores, method="linear", iou_threshold=0.5)
    np.testing.assert_array_equal(keep, [0, 1, 2])
    np.testing.assert_array_equal(kept, scores)
    # hard, threshold 0.3: box 1 removed (classic NMS)
    keep, kept = check(xp, boxes, scores, method="hard", iou_threshold=0.3)
    np.testing.assert_array_equal(keep, [0, 2])
    # score_threshold 0.6 drops the decayed box 1 (0.5333) under linear decay
    keep, _ = check(xp, boxes, scores, method="linear", iou_threshold=0.3, score_threshold=0.6)
    np.testing.assert_array_equal(keep, [0, 2])


def test_decay_accumulates_over_picks(xp, dtype):
    # identical boxes: IoU 1, gaussian sigma 1 multiplies by exp(-1) per earlier pick.
    boxes = np.tile(np.array([[0, 0, 4, 4]], dtype), (3, 1))
    scores = np.array([0.5, 1.0, 0.75], dtype)
    keep, kept = check(xp, boxes, scores, method="gaussian", sigma=1.0, score_threshold=0.0)
    np.testing.assert_array_equal(keep, [1, 2, 0])
    e = math.exp(-1)
    np.testing.assert_allclose(kept.astype(np.float64), [1.0, 0.75 * e, 0.5 * e * e], rtol=1e-6)
    # linear with IoU 1: factor 0, the others fall to 0 < threshold and vanish
    keep, kept = check(xp, boxes, scores, method="linear", iou_threshold=0.5, score_threshold=1e-3)
    np.testing.assert_array_equal(keep, [1])


def test_gaussian_weight_rounded_to_float32(xp, dtype):
    """Rule: the Gaussian weight is exp(-iou^2 / sigma) in float64 rounded to float32 (so that
    libm, CUDA and NumPy, whose exp differ by up to 1 ulp, pick the same boxes)."""
    boxes = np.array([[0, 0, 4, 4], [0, 0, 4, 4]], dtype)  # IoU exactly 1
    scores = np.array([1.0, 0.5], dtype)
    keep, kept = run(xp, boxes, scores, method="gaussian", sigma=0.7, score_threshold=0.0)
    w = float(np.float32(math.exp(-1.0 / 0.7)))
    np.testing.assert_array_equal(keep, [0, 1])
    assert kept[1] == dtype.type(0.5 * w)
    if dtype == np.float64:
        assert kept[1] != 0.5 * math.exp(-1.0 / 0.7)  # the unrounded weight differs here


def test_ties_pick_the_lowest_index(xp, dtype):
    boxes = np.array([[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10], [20, 20, 21, 21]], dtype)
    scores = np.array([0.3, 0.5, 0.5, -0.0], dtype)
    keep, _ = check(xp, boxes, scores, score_threshold=0.0)
    np.testing.assert_array_equal(keep, [1, 2, 0, 3])  # -0.0 >= 0 is a candidate


def test_hard_equals_classic_nms(xp, dtype):
    rng = np.random.default_rng(9)
    for kind in GENERATORS:
        boxes, scores = GENERATORS[kind](rng, 150, dtype)
        for thr in (0.0, 0.3, 0.7):
            keep, kept = check(xp, boxes, scores, method="hard", iou_threshold=thr, score_threshold=0.0)
            np.testing.assert_array_equal(keep, R.nms(boxes, scores, thr))
            np.testing.assert_array_equal(kept, scores[keep])


def test_nan_scores_dropped_and_nan_boxes_inert(xp, dtype):
    """Rule: a NaN score is never a candidate; a NaN box (IoU NaN -> 0) neither decays nor is decayed."""
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, np.nan, 10, 10], [1, 1, 11, 11]], dtype)
    scores = np.array([0.9, np.nan, 0.8, 0.7], dtype)
    keep, kept = check(xp, boxes, scores, method="linear", iou_threshold=0.1)
    np.testing.assert_array_equal(keep, [0, 2, 3])
    assert float(kept[1]) == float(scores[2])  # box 2 undecayed
    assert float(kept[2]) < float(scores[3])   # box 3 decayed by box 0 (IoU 81/119)


def test_zero_area_boxes_never_decay(xp, dtype):
    boxes = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 2, 2], [1, 0, 1, 5]], dtype)
    scores = np.array([0.9, 0.8, 0.7, 0.6], dtype)
    for method in ("gaussian", "linear", "hard"):
        keep, kept = check(xp, boxes, scores, method=method, iou_threshold=0.0, score_threshold=0.0)
        np.testing.assert_array_equal(keep, [0, 1, 2, 3])
        np.testing.assert_array_equal(kept, scores)


def test_initial_scores_below_threshold_dropped(xp, dtype):
    boxes = np.array([[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]], dtype)
    scores = np.array([0.2, 0.05, 0.1], dtype)
    keep, _ = check(xp, boxes, scores, score_threshold=0.1)
    np.testing.assert_array_equal(keep, [0, 2])
    keep, kept = run(xp, boxes, scores, score_threshold=0.5)
    assert keep.shape == (0,) and kept.shape == (0,)


@pytest.mark.parametrize("n", [1023, 1025, 2100])
def test_many_boxes(xp, dtype, n):
    """More boxes than one GPU block has threads."""
    rng = np.random.default_rng(n)
    boxes, scores = clustered(rng, n, dtype, per=30, size=300.0)
    check(xp, boxes, scores, method="gaussian", sigma=0.5, score_threshold=0.01)


@pytest.mark.parametrize("method", ["gaussian", "linear", "hard"])
def test_heavy_overlap(xp, dtype, method):
    """400 boxes that all overlap (80k pairs: the CPU leaves its pair lists for the dense pass)
    plus a few isolated and degenerate ones."""
    rng = np.random.default_rng(21)
    c = rng.uniform(45, 55, (400, 2))
    h = rng.uniform(20, 40, (400, 2))
    boxes = np.concatenate([np.concatenate([c - h, c + h], 1),
                            [[200, 200, 210, 210], [5, 5, 5, 9], [0, np.inf, 1, 1]]]).astype(dtype)
    scores = rng.random(len(boxes)).astype(dtype)
    check(xp, boxes, scores, method=method, sigma=0.3, iou_threshold=0.5, score_threshold=0.01)


def test_empty_and_single(xp, dtype):
    keep, kept = pydl.ops.soft_nms(xp.zeros((0, 4), dtype), xp.zeros(0, dtype))
    assert keep.shape == (0,) and keep.dtype == np.int64 and kept.shape == (0,) and kept.dtype == dtype
    keep, kept = check(xp, np.array([[0, 0, 1, 1]], dtype), np.array([0.3], dtype))
    np.testing.assert_array_equal(keep, [0])


def test_non_contiguous_and_unmodified(xp, dtype):
    rng = np.random.default_rng(11)
    big, s = clustered(rng, 120, dtype)
    wide = np.zeros((120, 8), dtype)
    wide[:, ::2] = big
    bx, sx = xp.asarray(wide)[:, ::2], xp.asarray(np.repeat(s, 2))[::2]
    before = [to_numpy(a).copy() for a in (bx, sx)]
    keep, kept = pydl.ops.soft_nms(bx, sx, method="linear")
    want_keep, want_kept = R.soft_nms(big, s, method="linear")
    np.testing.assert_array_equal(to_numpy(keep), want_keep)
    assert rel_error(kept, want_kept) <= TOL[dtype]
    for a, b in zip((bx, sx), before):
        np.testing.assert_array_equal(to_numpy(a), b)


def test_bad_inputs_raise(xp):
    b = xp.zeros((3, 4), np.float32)
    s = xp.zeros(3, np.float32)
    with pytest.raises(TypeError, match="boxes: expected dtype float32 or float64, got int64"):
        pydl.ops.soft_nms(xp.zeros((3, 4), np.int64), s)
    with pytest.raises(TypeError, match="scores: expected dtype float32"):
        pydl.ops.soft_nms(b, xp.zeros(3, np.float64))
    with pytest.raises(ValueError, match=r"boxes: expected shape \(N, 4\).*got \(3, 5\)"):
        pydl.ops.soft_nms(xp.zeros((3, 5), np.float32), s)
    with pytest.raises(ValueError, match=r"scores: expected shape \(3,\), got \(2,\)"):
        pydl.ops.soft_nms(b, xp.zeros(2, np.float32))
    with pytest.raises(ValueError, match="sigma: expected a float > 0, got 0.0"):
        pydl.ops.soft_nms(b, s, sigma=0.0)
    with pytest.raises(ValueError, match="sigma: expected a finite float"):
        pydl.ops.soft_nms(b, s, sigma=float("inf"))
    with pytest.raises(ValueError, match="score_threshold: expected a float >= 0"):
        pydl.ops.soft_nms(b, s, score_threshold=-0.1)
    with pytest.raises(ValueError, match="iou_threshold: expected a finite float"):
        pydl.ops.soft_nms(b, s, iou_threshold=float("nan"))
    with pytest.raises(ValueError, match="method: expected one of"):
        pydl.ops.soft_nms(b, s, method="soft")
    with pytest.raises(TypeError, match="method: expected a str"):
        pydl.ops.soft_nms(b, s, method=1)
    with pytest.raises(TypeError, match="boxes: expected a numpy.ndarray or cupy.ndarray, got list"):
        pydl.ops.soft_nms([[0, 0, 1, 1]], s)
