"""pydl.ops.nms / batched_nms / box_iou against the NumPy reference (exact indices) and
torchvision (when importable), on both backends and both dtypes."""
import numpy as np
import pytest

import pydl.ops
import pydl.reference as R
from conftest import TOL, rel_error, to_numpy


def _torchvision():
    try:
        import torch
        import torchvision.ops
    except Exception:  # torch missing or broken: those comparisons skip
        return None, None
    return torch, torchvision.ops


def clustered(rng, n, dtype, per=8, size=200.0):
    """Jittered boxes around random centers: many overlaps near the threshold."""
    nc = max(1, n // per)
    c = rng.uniform(0, size, (nc, 2))
    wh = rng.uniform(4, 40, (nc, 2))
    k = rng.integers(0, nc, n)
    ctr = c[k] + rng.normal(0, 1, (n, 2)) * wh[k] * 0.15
    s = wh[k] * rng.uniform(0.8, 1.2, (n, 2))
    boxes = np.concatenate([ctr - s / 2, ctr + s / 2], 1).astype(dtype)
    return boxes, rng.random(n).astype(dtype)


def uniform(rng, n, dtype, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(0, size / 3, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(dtype), rng.random(n).astype(dtype)


def integer_boxes(rng, n, dtype):
    """Small integer coordinates: exact IoUs, many ties with simple fractions (1/2, 1/3...)."""
    xy = rng.integers(0, 6, (n, 2))
    wh = rng.integers(0, 4, (n, 2))  # includes zero-area boxes
    scores = rng.integers(0, 4, n)  # many tied scores
    return np.concatenate([xy, xy + wh], 1).astype(dtype), scores.astype(dtype)


def run_nms(xp, boxes, scores, thr):
    return to_numpy(pydl.ops.nms(xp.asarray(boxes), xp.asarray(scores), thr))


def check_nms(xp, boxes, scores, thr):
    got = run_nms(xp, boxes, scores, thr)
    want = R.nms(boxes, scores, thr)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    return got


GENERATORS = {"clustered": clustered, "uniform": uniform, "integer": integer_boxes}


@pytest.mark.parametrize("kind", list(GENERATORS))
@pytest.mark.parametrize("n", [1, 2, 7, 64, 65, 200])
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_matches_reference(xp, dtype, kind, n, thr):
    rng = np.random.default_rng(1000 * n + int(thr * 10) + len(kind))
    boxes, scores = GENERATORS[kind](rng, n, dtype)
    check_nms(xp, boxes, scores, thr)


@pytest.mark.parametrize("n", [511, 513, 1100])
def test_nms_across_chunks(xp, dtype, n):
    """Past 512 ranks the GPU works in chunks (removals carried between them)."""
    rng = np.random.default_rng(n)
    boxes, scores = clustered(rng, n, dtype, per=30, size=300.0)
    check_nms(xp, boxes, scores, 0.5)
    idxs = rng.integers(0, 4, n).astype(np.int64)
    got = to_numpy(pydl.ops.batched_nms(xp.asarray(boxes), xp.asarray(scores), xp.asarray(idxs), 0.4))
    np.testing.assert_array_equal(got, R.batched_nms(boxes, scores, idxs, 0.4))


def test_identical_boxes_across_chunks(xp, dtype):
    n = 700
    boxes = np.tile(np.array([[3, 4, 30, 40]], dtype), (n, 1))
    scores = np.random.default_rng(0).random(n).astype(dtype)
    np.testing.assert_array_equal(check_nms(xp, boxes, scores, 0.5), [np.argmax(scores)])
    boxes[:, 2] = boxes[:, 0]  # all zero-area: nothing suppresses anything
    assert len(check_nms(xp, boxes, scores, 0.5)) == n


@pytest.mark.parametrize("seed", range(6))
def test_nms_matches_torchvision(xp, dtype, seed):
    torch, tvops = _torchvision()
    if torch is None:
        pytest.skip("torchvision not importable")
    rng = np.random.default_rng(seed)
    boxes, scores = clustered(rng, 300, dtype) if seed % 2 else integer_boxes(rng, 300, dtype)
    thr = [0.5, 0.7, 0.3][seed % 3]
    got = run_nms(xp, boxes, scores, thr)
    want = tvops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()
    np.testing.assert_array_equal(got, want)


def test_all_equal_scores_keep_lower_index_first(xp, dtype):
    rng = np.random.default_rng(3)
    boxes, _ = clustered(rng, 120, dtype)
    scores = np.full(120, 0.25, dtype)
    got = check_nms(xp, boxes, scores, 0.5)
    assert got[0] == 0 and np.all(np.diff(got) > 0)


def test_duplicate_boxes_keep_the_best(xp, dtype):
    boxes = np.tile(np.array([[1, 2, 5, 7]], dtype), (10, 1))
    scores = np.arange(10, dtype=dtype)[::-1].copy()
    scores[4] = 20
    np.testing.assert_array_equal(check_nms(xp, boxes, scores, 0.9), [4])
    # identical boxes have IoU exactly 1: never > 1.0, so a threshold of 1 keeps all
    assert len(check_nms(xp, boxes, scores, 1.0)) == 10


def test_iou_exactly_at_threshold_is_not_suppressed(xp, dtype):
    # areas 3 and 3, intersection 2, union 4: IoU = 0.5 exactly in binary floating point
    boxes = np.array([[0, 0, 3, 1], [1, 0, 4, 1], [10, 10, 12, 12]], dtype)
    scores = np.array([0.9, 0.8, 0.7], dtype)
    np.testing.assert_array_equal(check_nms(xp, boxes, scores, 0.5), [0, 1, 2])  # 0.5 > 0.5 is false
    np.testing.assert_array_equal(check_nms(xp, boxes, scores, np.nextafter(0.5, 0)), [0, 2])
    np.testing.assert_array_equal(check_nms(xp, boxes, scores, 0.25), [0, 2])


def test_suppressed_box_does_not_suppress(xp, dtype):
    # 0 suppresses 1 (IoU 0.6); 1 would suppress 2 (IoU 0.6) but is gone; IoU(0, 2) = 0.2
    boxes = np.array([[0, 0, 8, 1], [2, 0, 10, 1], [4, 0, 12, 1]], dtype)  # IoUs 0.6, 0.6, 1/3
    scores = np.array([3, 2, 1], dtype)
    np.testing.assert_array_equal(check_nms(xp, boxes, scores, 0.5), [0, 2])


def test_zero_area_boxes_never_suppressed(xp, dtype):
    # 0/0 = NaN never exceeds the threshold: degenerate boxes survive, no NaN, no crash
    boxes = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 2, 2], [1, 0, 1, 5], [3, 3, 2, 2]], dtype)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], dtype)
    np.testing.assert_array_equal(check_nms(xp, boxes, scores, 0.0), [0, 1, 2, 3, 4])


def test_negative_threshold_suppresses_every_nonnan_pair(xp, dtype):
    rng = np.random.default_rng(5)
    for kind in GENERATORS:
        boxes, scores = GENERATORS[kind](rng, 50, dtype)
        check_nms(xp, boxes, scores, -0.5)


def test_nan_scores_rank_first(xp, dtype):
    """Rule: NaN scores rank above every number (torch.sort's order), ties by index."""
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype)
    scores = np.array([0.5, np.nan, 0.9, np.nan, 0.1], dtype)
    got = check_nms(xp, boxes, scores, 0.5)
    np.testing.assert_array_equal(got, [1, 4])
    np.testing.assert_array_equal(check_nms(xp, boxes, scores, 0.99), [1, 3, 4])  # identical: IoU 1
    torch, tvops = _torchvision()
    if torch is not None:
        want = tvops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
        np.testing.assert_array_equal(got, want)


def test_nan_box_neither_suppresses_nor_is_suppressed(xp, dtype):
    boxes = np.array([[0, 0, 10, 10], [0, np.nan, 10, 10], [0, 0, 10, 10], [np.inf, 0, np.inf, 5]], dtype)
    scores = np.array([0.9, 0.95, 0.8, 0.7], dtype)
    np.testing.assert_array_equal(check_nms(xp, boxes, scores, 0.5), [1, 0, 3])


def test_skewed_sizes_and_huge_coordinates(xp, dtype):
    """Tiny boxes under a few huge ones (the CPU grid coarsens), and coordinates whose areas
    overflow to inf (IoU 0 or NaN: no suppression), mixed with ordinary boxes."""
    rng = np.random.default_rng(17)
    tiny, s1 = clustered(rng, 300, dtype, per=5, size=1000.0)
    tiny[:, 2:] = tiny[:, :2] + (tiny[:, 2:] - tiny[:, :2]) * 0.05
    huge = np.array([[-5, -5, 1100, 1100], [0, 0, 1000, 990], [10, -3, 1005, 1000]], dtype)
    big = np.finfo(dtype).max / 4
    wild = np.array([[-big, -big, big, big], [-big, 0, big, 1], [0, 0, big, big]], dtype)
    huge = np.concatenate([huge, huge + 1, huge + 2])  # 9 boxes over every cell: > 16 entries/box
    for boxes in (np.concatenate([tiny, huge]), np.concatenate([tiny, huge, wild])):
        scores = rng.random(len(boxes)).astype(dtype)
        for thr in (0.0, 0.3, 0.9):
            check_nms(xp, boxes, scores, thr)


def test_negative_zero_ties_with_zero(xp, dtype):
    boxes = np.array([[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]], dtype)
    scores = np.array([0.0, -0.0, 0.0], dtype)
    np.testing.assert_array_equal(check_nms(xp, boxes, scores, 0.5), [0, 1, 2])


def test_empty_and_single(xp, dtype):
    got = pydl.ops.nms(xp.zeros((0, 4), dtype), xp.zeros(0, dtype), 0.5)
    assert got.shape == (0,) and got.dtype == np.int64
    got = pydl.ops.batched_nms(xp.zeros((0, 4), dtype), xp.zeros(0, dtype), xp.zeros(0, np.int64), 0.5)
    assert got.shape == (0,) and got.dtype == np.int64
    np.testing.assert_array_equal(check_nms(xp, np.array([[0, 0, 1, 1]], dtype), np.array([0.3], dtype), 0.5), [0])
    assert pydl.ops.box_iou(xp.zeros((0, 4), dtype), xp.zeros((3, 4), dtype)).shape == (0, 3)


def test_non_contiguous_and_unmodified(xp, dtype):
    rng = np.random.default_rng(11)
    big, s = clustered(rng, 150, dtype)
    wide = np.zeros((150, 8), dtype)
    wide[:, ::2] = big
    boxes, scores = wide[:, ::2], np.repeat(s, 2)[::2]
    idxs = np.repeat(rng.integers(0, 3, 150), 2)[::2]
    bx, sx, ix = xp.asarray(wide)[:, ::2], xp.asarray(np.repeat(s, 2))[::2], xp.asarray(np.repeat(idxs, 2))[::2]
    before = [to_numpy(a).copy() for a in (bx, sx, ix)]
    np.testing.assert_array_equal(to_numpy(pydl.ops.nms(bx, sx, 0.5)), R.nms(boxes, scores, 0.5))
    np.testing.assert_array_equal(to_numpy(pydl.ops.batched_nms(bx, sx, ix, 0.5)),
                                  R.batched_nms(boxes, scores, idxs, 0.5))
    np.testing.assert_array_equal(to_numpy(pydl.ops.box_iou(bx, bx[:7])), R.box_iou(boxes, boxes[:7]))
    for a, b in zip((bx, sx, ix), before):
        np.testing.assert_array_equal(to_numpy(a), b)


@pytest.mark.parametrize("kind", list(GENERATORS))
@pytest.mark.parametrize("n,ncls", [(1, 1), (40, 1), (150, 3), (200, 17)])
def test_batched_nms_matches_reference(xp, dtype, kind, n, ncls):
    rng = np.random.default_rng(n + ncls)
    boxes, scores = GENERATORS[kind](rng, n, dtype)
    idxs = rng.integers(-2, ncls - 2, n).astype(np.int64)
    got = to_numpy(pydl.ops.batched_nms(xp.asarray(boxes), xp.asarray(scores), xp.asarray(idxs), 0.5))
    want = R.batched_nms(boxes, scores, idxs, 0.5)
    np.testing.assert_array_equal(got, want)
    # suppression never crosses categories: each category's kept set is its own nms
    for c in np.unique(idxs):
        members = np.nonzero(idxs == c)[0]
        np.testing.assert_array_equal(np.sort(got[idxs[got] == c]), np.sort(members[R.nms(boxes[members], scores[members], 0.5)]))


@pytest.mark.parametrize("seed", range(3))
def test_batched_nms_matches_torchvision(xp, dtype, seed):
    torch, tvops = _torchvision()
    if torch is None:
        pytest.skip("torchvision not importable")
    rng = np.random.default_rng(50 + seed)
    boxes, scores = clustered(rng, 300, dtype)  # distinct scores: torchvision's order is defined
    idxs = rng.integers(0, 5, 300).astype(np.int64)
    got = to_numpy(pydl.ops.batched_nms(xp.asarray(boxes), xp.asarray(scores), xp.asarray(idxs), 0.6))
    want = tvops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(idxs), 0.6)
    np.testing.assert_array_equal(got, want.numpy())


@pytest.mark.parametrize("n,m", [(1, 1), (7, 13), (64, 3), (130, 70)])
def test_box_iou_matches_reference(xp, dtype, n, m):
    rng = np.random.default_rng(n * m)
    b1, _ = uniform(rng, n, dtype)
    b2, _ = clustered(rng, m, dtype, size=100.0)
    got = pydl.ops.box_iou(xp.asarray(b1), xp.asarray(b2))
    assert got.dtype == dtype and got.shape == (n, m)
    want = R.box_iou(b1, b2)
    np.testing.assert_array_equal(to_numpy(got), want)  # same formula, same roundings
    want64 = R.box_iou(b1.astype(np.float64), b2.astype(np.float64))
    assert rel_error(got, want64) <= TOL[dtype] * 10  # table: f32 1e-4, f64 1e-11
    torch, tvops = _torchvision()
    if torch is not None:
        tv = tvops.box_iou(torch.from_numpy(b1), torch.from_numpy(b2)).numpy()
        assert rel_error(got, tv.astype(np.float64)) <= TOL[dtype] * 10


def test_box_iou_zero_union_is_zero(xp, dtype):
    b = np.array([[1, 1, 1, 1], [2, 2, 2, 5], [0, 0, 2, 2]], dtype)
    got = to_numpy(pydl.ops.box_iou(xp.asarray(b), xp.asarray(b)))
    assert not np.isnan(got).any()
    np.testing.assert_array_equal(got, [[0, 0, 0], [0, 0, 0], [0, 0, 1]])


def test_bad_inputs_raise(xp):
    b = xp.zeros((3, 4), np.float32)
    s = xp.zeros(3, np.float32)
    i = xp.zeros(3, np.int64)
    with pytest.raises(TypeError, match="boxes: expected dtype float32 or float64, got int64"):
        pydl.ops.nms(xp.zeros((3, 4), np.int64), s, 0.5)
    with pytest.raises(TypeError, match="scores: expected dtype float32"):
        pydl.ops.nms(b, xp.zeros(3, np.float64), 0.5)
    with pytest.raises(ValueError, match=r"boxes: expected shape \(N, 4\).*got \(3, 5\)"):
        pydl.ops.nms(xp.zeros((3, 5), np.float32), s, 0.5)
    with pytest.raises(ValueError, match="boxes: expected a 2-D array"):
        pydl.ops.nms(xp.zeros(12, np.float32), s, 0.5)
    with pytest.raises(ValueError, match=r"scores: expected shape \(3,\), got \(4,\)"):
        pydl.ops.nms(b, xp.zeros(4, np.float32), 0.5)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="iou_threshold: expected a finite float"):
            pydl.ops.nms(b, s, bad)
    with pytest.raises(TypeError, match="iou_threshold: expected a float"):
        pydl.ops.nms(b, s, "0.5")
    with pytest.raises(TypeError, match="idxs: expected dtype int64, got int32"):
        pydl.ops.batched_nms(b, s, xp.zeros(3, np.int32), 0.5)
    with pytest.raises(ValueError, match=r"idxs: expected shape \(3,\)"):
        pydl.ops.batched_nms(b, s, xp.zeros(2, np.int64), 0.5)
    with pytest.raises(TypeError, match="boxes: expected a numpy.ndarray or cupy.ndarray, got list"):
        pydl.ops.nms([[0, 0, 1, 1]], s, 0.5)
    with pytest.raises(TypeError, match="boxes2: expected dtype float32"):
        pydl.ops.box_iou(b, xp.zeros((2, 4), np.float64))
    with pytest.raises(ValueError, match=r"boxes1: expected shape \(N, 4\)"):
        pydl.ops.box_iou(xp.zeros((2, 3), np.float32), b)
    assert pydl.ops.batched_nms(b, s, i, 0.5).dtype == np.int64
