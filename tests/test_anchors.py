"""pydl.ops.anchor_boxes, match_anchors, encode_boxes, decode_boxes against the loop-written
NumPy reference, hand-computed cases and torchvision's BoxCoder (when importable)."""
import math

import numpy as np
import pytest

import pydl.ops
import pydl.reference as R
from conftest import TOL, assert_close, rel_error, to_numpy
from test_nms import clustered, integer_boxes, uniform


def test_anchor_boxes_hand_computed(xp, dtype):
    # 2 x 3 feature map on a 40 x 60 image (H x W): centres at x = 10, 30, 50 and y = 10, 30.
    # sizes (0.5, 0.25), ratios (1, 4): pairs (0.5, 1), (0.25, 1), (0.5, 4):
    #   w = s * sqrt(r) * H, h = s / sqrt(r) * H -> (20, 20), (10, 10), (40, 10).
    a = pydl.ops.anchor_boxes((2, 3), (40, 60), [0.5, 0.25], [1.0, 4.0], dtype=dtype, xp=xp)
    assert a.dtype == dtype and a.shape == (2 * 3 * 3, 4)
    got = to_numpy(a)
    np.testing.assert_array_equal(got[0], [0, 0, 20, 20])      # pixel (0, 0), (0.5, 1)
    np.testing.assert_array_equal(got[1], [5, 5, 15, 15])      # pixel (0, 0), (0.25, 1)
    np.testing.assert_array_equal(got[2], [-10, 5, 30, 15])    # pixel (0, 0), (0.5, 4)
    np.testing.assert_array_equal(got[3], [20, 0, 40, 20])     # pixel (0, 1): next column first
    np.testing.assert_array_equal(got[9], [0, 20, 20, 40])     # pixel (1, 0)
    np.testing.assert_array_equal(got[17], [30, 25, 70, 35])   # pixel (1, 2), (0.5, 4)
    # every anchor's pixel aspect ratio is its r
    wh = got[:, 2:] - got[:, :2]
    np.testing.assert_allclose(wh[:, 0] / wh[:, 1], np.tile([1, 1, 4], 6), rtol=1e-6)


@pytest.mark.parametrize("fs,im,sizes,ratios", [
    (1, 1, [0.3], [1.0]),
    ((3, 5), (37, 53), [0.75, 0.5, 0.25], [1.0, 2.0, 0.5]),
    ((4, 1), (64, 17), [0.2, 0.9], [0.5]),
    (7, (100, 80), [0.1], [1.0, 3.0, 1 / 3, 1.5]),
])
def test_anchor_boxes_matches_reference(xp, dtype, fs, im, sizes, ratios):
    got = pydl.ops.anchor_boxes(fs, im, sizes, ratios, dtype=dtype, xp=xp)
    want = R.anchor_boxes(fs, im, sizes, ratios, dtype=np.float64)
    assert got.dtype == dtype and got.shape == want.shape
    assert_close(got, want, dtype)


def test_anchor_boxes_match_d2l_multibox_prior():
    """d2l's multibox_prior (normalized coordinates), rewritten here in NumPy, times (W, H)."""
    h, w, ih, iw = 3, 4, 30, 50
    sizes, ratios = [0.75, 0.5], [1.0, 2.0, 0.5]
    ns, nr = len(sizes), len(ratios)
    cy = (np.arange(h) + 0.5) / h
    cx = (np.arange(w) + 0.5) / w
    sy, sx = np.meshgrid(cy, cx, indexing="ij")
    sy, sx = sy.reshape(-1), sx.reshape(-1)
    ww = np.r_[np.array(sizes) * np.sqrt(ratios[0]), sizes[0] * np.sqrt(ratios[1:])] * ih / iw
    hh = np.r_[np.array(sizes) / np.sqrt(ratios[0]), sizes[0] / np.sqrt(ratios[1:])]
    manip = np.tile(np.stack((-ww, -hh, ww, hh)).T, (h * w, 1)) / 2
    grid = np.repeat(np.stack([sx, sy, sx, sy], axis=1), ns + nr - 1, axis=0)
    d2l = (grid + manip) * np.array([iw, ih, iw, ih])
    got = pydl.ops.anchor_boxes((h, w), (ih, iw), sizes, ratios, dtype=np.float64)
    assert rel_error(got, d2l) <= 1e-14


def _random_gt(rng, g, dtype):
    xy = rng.uniform(0, 80, (g, 2))
    wh = rng.uniform(5, 40, (g, 2))
    return np.concatenate([xy, xy + wh], 1).astype(dtype)


@pytest.mark.parametrize("g", [1, 2, 5, 12])
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_match_anchors_matches_reference(xp, dtype, g, thr):
    rng = np.random.default_rng(10 * g + int(thr * 10))
    anchors = R.anchor_boxes((6, 5), (100, 100), [0.3, 0.15], [1.0, 2.0, 0.5], dtype=dtype)
    gt = _random_gt(rng, g, dtype)
    got = pydl.ops.match_anchors(xp.asarray(anchors), xp.asarray(gt), thr)
    assert got.dtype == np.int64 and got.shape == (len(anchors),)
    want = R.match_anchors(anchors, gt, thr)
    np.testing.assert_array_equal(to_numpy(got), want)
    assert set(range(g)) <= set(want.tolist())  # each gt overlapping an anchor gets one


def test_match_anchors_integer_ties(xp, dtype):
    """Integer boxes: many exactly tied IoUs; the lowest flat index wins."""
    rng = np.random.default_rng(3)
    for _ in range(5):
        anchors, _ = integer_boxes(rng, 40, dtype)
        gt, _ = integer_boxes(rng, 6, dtype)
        got = pydl.ops.match_anchors(xp.asarray(anchors), xp.asarray(gt), 0.4)
        np.testing.assert_array_equal(to_numpy(got), R.match_anchors(anchors, gt, 0.4))


def test_match_anchors_hand_computed(xp, dtype):
    # anchors: a0 = [0,0,4,4], a1 = [1,0,5,4], a2 = [10,10,14,14], a3 = [20,20,21,21]
    # gts:     g0 = [0,0,4,4] (IoU a0 1, a1 12/20 = 0.6), g1 = [2,0,6,4] (a0 8/24 = 1/3, a1 0.6)
    # greedy: largest entry (a0, g0) = 1 -> a0:g0; then among rows a1.. and column g1: (a1, g1) = 0.6
    # -> a1:g1. a2, a3 overlap nothing: -1. The greedy step takes a1 for g1 although a1 is
    # also 0.6 with g0 (g0 is gone).
    anchors = np.array([[0, 0, 4, 4], [1, 0, 5, 4], [10, 10, 14, 14], [20, 20, 21, 21]], dtype)
    gt = np.array([[0, 0, 4, 4], [2, 0, 6, 4]], dtype)
    got = to_numpy(pydl.ops.match_anchors(xp.asarray(anchors), xp.asarray(gt), 0.5))
    np.testing.assert_array_equal(got, [0, 1, -1, -1])
    # a third gt far from every anchor stays unassigned; a gt equal to a2 takes a2 (IoU 1)
    gt2 = np.array([[0, 0, 4, 4], [50, 50, 60, 60], [10, 10, 14, 14]], dtype)
    got = to_numpy(pydl.ops.match_anchors(xp.asarray(anchors), xp.asarray(gt2), 0.5))
    # greedy: (a0, g0) = 1 first (flat index 0 < 8), then (a2, g2) = 1; a1 then takes its best
    # gt g0 (0.6 >= 0.5) in step 2.
    np.testing.assert_array_equal(got, [0, 0, 2, -1])
    # with threshold 0.7, a1's 0.6 is not enough
    got = to_numpy(pydl.ops.match_anchors(xp.asarray(anchors), xp.asarray(gt2), 0.7))
    np.testing.assert_array_equal(got, [0, -1, 2, -1])


def test_match_anchors_more_gts_than_anchors_and_empty(xp, dtype):
    anchors = np.array([[0, 0, 4, 4]], dtype)
    gt = np.array([[0, 0, 2, 2], [0, 0, 4, 4], [1, 1, 4, 4]], dtype)
    got = to_numpy(pydl.ops.match_anchors(xp.asarray(anchors), xp.asarray(gt)))
    np.testing.assert_array_equal(got, [1])
    got = pydl.ops.match_anchors(xp.asarray(anchors), xp.zeros((0, 4), dtype))
    np.testing.assert_array_equal(to_numpy(got), [-1])
    got = pydl.ops.match_anchors(xp.zeros((0, 4), dtype), xp.asarray(gt))
    assert got.shape == (0,) and got.dtype == np.int64


def test_match_anchors_nan_iou_counts_as_zero(xp, dtype):
    anchors = np.array([[0, 0, 4, 4], [0, np.nan, 4, 4]], dtype)
    gt = np.array([[0, 0, 4, 4], [0, 0, np.nan, 4]], dtype)
    got = to_numpy(pydl.ops.match_anchors(xp.asarray(anchors), xp.asarray(gt), 0.0))
    want = R.match_anchors(anchors, gt, 0.0)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, [0, 0])  # threshold 0: IoU 0 >= 0 takes gt 0


@pytest.mark.parametrize("kind", ["uniform", "clustered"])
@pytest.mark.parametrize("weights", [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0), (2.0, 3.0, 0.5, 7.0)])
def test_encode_decode_match_reference(xp, dtype, kind, weights):
    rng = np.random.default_rng(len(kind) + int(sum(weights)))
    gen = {"uniform": uniform, "clustered": clustered}[kind]
    anchors, _ = gen(rng, 97, dtype)
    boxes, _ = gen(rng, 97, dtype)
    anchors[:, 2:] += 1  # positive sizes
    boxes[:, 2:] += 1
    deltas = pydl.ops.encode_boxes(xp.asarray(anchors), xp.asarray(boxes), weights)
    assert deltas.dtype == dtype and deltas.shape == (97, 4)
    assert_close(deltas, R.encode_boxes(anchors, boxes, weights), dtype, factor=100)
    back = pydl.ops.decode_boxes(xp.asarray(anchors), deltas, weights)
    assert_close(back, boxes.astype(np.float64), dtype, factor=100)  # inverse of each other
    d = rng.normal(0, 1, (97, 4)).astype(dtype)
    got = pydl.ops.decode_boxes(xp.asarray(anchors), xp.asarray(d), weights)
    assert_close(got, R.decode_boxes(anchors, d, weights), dtype, factor=100)
    assert_close(pydl.ops.encode_boxes(xp.asarray(anchors), got, weights), d.astype(np.float64), dtype, factor=1000)


def test_encode_hand_computed(xp, dtype):
    # anchor centre (2, 3), size 4 x 2; box centre (3, 2.5), size 8 x 1:
    # dx = 10 * 1 / 4 = 2.5, dy = 10 * -0.5 / 2 = -2.5, dw = 5 log 2, dh = 5 log 0.5
    a = np.array([[0, 2, 4, 4]], dtype)
    b = np.array([[-1, 2, 7, 3]], dtype)
    got = to_numpy(pydl.ops.encode_boxes(xp.asarray(a), xp.asarray(b)))
    np.testing.assert_allclose(got, [[2.5, -2.5, 5 * math.log(2), -5 * math.log(2)]], rtol=1e-6)


def test_encode_decode_match_torchvision_boxcoder(dtype):
    try:
        import torch
        from torchvision.models.detection._utils import BoxCoder
    except Exception:
        pytest.skip("torchvision not importable")
    rng = np.random.default_rng(4)
    anchors, _ = uniform(rng, 50, dtype)
    boxes, _ = uniform(rng, 50, dtype)
    anchors[:, 2:] += 1
    boxes[:, 2:] += 1
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    tv = coder.encode_single(torch.from_numpy(boxes), torch.from_numpy(anchors)).numpy()
    assert rel_error(pydl.ops.encode_boxes(anchors, boxes), tv.astype(np.float64)) <= TOL[dtype] * 100
    d = rng.normal(0, 1, (50, 4)).astype(dtype)
    tv = coder.decode_single(torch.from_numpy(d), torch.from_numpy(anchors)).numpy()
    assert rel_error(pydl.ops.decode_boxes(anchors, d), tv.astype(np.float64)) <= TOL[dtype] * 100


def test_inputs_unmodified_and_non_contiguous(xp, dtype):
    rng = np.random.default_rng(8)
    a, _ = uniform(rng, 30, dtype)
    b, _ = uniform(rng, 30, dtype)
    a[:, 2:] += 1
    b[:, 2:] += 1
    wide = np.zeros((30, 8), dtype)
    wide[:, ::2] = a
    av, bv = xp.asarray(wide)[:, ::2], xp.asarray(b)
    before = [to_numpy(v).copy() for v in (av, bv)]
    assert_close(pydl.ops.encode_boxes(av, bv), R.encode_boxes(a, b), dtype, factor=100)
    assert_close(pydl.ops.decode_boxes(av, bv), R.decode_boxes(a, b), dtype, factor=100)
    np.testing.assert_array_equal(to_numpy(pydl.ops.match_anchors(av, bv[:5])), R.match_anchors(a, b[:5]))
    for v, w in zip((av, bv), before):
        np.testing.assert_array_equal(to_numpy(v), w)


def test_bad_inputs_raise(xp):
    a = xp.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="feature_size: expected an int >= 1, got 0"):
        pydl.ops.anchor_boxes(0, 10, [0.5], [1.0])
    with pytest.raises(ValueError, match="image_size: expected an int or a pair"):
        pydl.ops.anchor_boxes(2, (1, 2, 3), [0.5], [1.0])
    with pytest.raises(ValueError, match="sizes: expected floats > 0, got -0.5"):
        pydl.ops.anchor_boxes(2, 10, [-0.5], [1.0])
    with pytest.raises(ValueError, match="aspect_ratios: expected at least one value"):
        pydl.ops.anchor_boxes(2, 10, [0.5], [])
    with pytest.raises(TypeError, match="sizes: expected a float, got str"):
        pydl.ops.anchor_boxes(2, 10, ["a"], [1.0])
    with pytest.raises(TypeError, match="dtype: expected float32 or float64, got int32"):
        pydl.ops.anchor_boxes(2, 10, [0.5], [1.0], dtype=np.int32)
    with pytest.raises(TypeError, match="xp: expected the numpy or cupy module"):
        pydl.ops.anchor_boxes(2, 10, [0.5], [1.0], xp=math)
    with pytest.raises(TypeError, match="gt_boxes: expected dtype float32"):
        pydl.ops.match_anchors(a, xp.zeros((2, 4), np.float64))
    with pytest.raises(ValueError, match=r"anchors: expected shape \(N, 4\)"):
        pydl.ops.match_anchors(xp.zeros((3, 5), np.float32), a)
    with pytest.raises(TypeError, match="iou_threshold: expected a float"):
        pydl.ops.match_anchors(a, a, "0.5")
    with pytest.raises(ValueError, match=r"boxes: expected shape \(3, 4\), got \(2, 4\)"):
        pydl.ops.encode_boxes(a, xp.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="deltas: expected dtype float32 or float64, got int64"):
        pydl.ops.decode_boxes(a, xp.zeros((3, 4), np.int64))
    with pytest.raises(ValueError, match="weights: expected 4 floats"):
        pydl.ops.encode_boxes(a, a, (1.0, 2.0))
    with pytest.raises(ValueError, match="weights: expected floats > 0"):
        pydl.ops.decode_boxes(a, a, (1.0, 2.0, 0.0, 1.0))
