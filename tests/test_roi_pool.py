"""pydl.ops.roi_pool / roi_pool_backward against the NumPy reference (exact values and argmax),
central finite differences of the reference (tie-free inputs), and torchvision.ops.roi_pool
when importable; both backends, both dtypes, both box formats."""
import numpy as np
import pytest

import pydl.ops
import pydl.reference as R
from conftest import TOL, assert_close, numerical_grad, rand, rel_error, to_numpy
from test_roi_align import as_list, config, make_boxes


def distinct(rng, shape, dtype, xp=np):
    """Values without ties (a random permutation of a grid), so the argmax is unique."""
    n = int(np.prod(shape))
    v = (rng.permutation(n) - n / 2) / max(n, 1) * 2
    return xp.asarray(v.reshape(shape).astype(dtype))


@pytest.mark.parametrize("seed", range(16))
def test_roi_pool_matches_reference(xp, dtype, seed):
    rng, N, C, H, W, out, scale, K = config(seed + 500)
    x = rand(rng, (N, C, H, W), dtype)
    if seed % 4 == 0:
        x = np.round(x * 2) / 2  # many ties: the first maximum in row-major order wins
    rois = make_boxes(rng, N, K, H, W, scale, dtype)
    use_list = seed % 2 == 1
    boxes = as_list(rois, N, xp) if use_list else xp.asarray(rois)
    rboxes = [to_numpy(b) for b in boxes] if use_list else rois
    y, ind = pydl.ops.roi_pool(xp.asarray(x), boxes, out, scale, return_indices=True)
    want, want_ind = R.roi_pool(x, rboxes, out, scale, return_indices=True)
    assert y.dtype == dtype and ind.dtype == np.int64
    np.testing.assert_array_equal(to_numpy(y), want)
    np.testing.assert_array_equal(to_numpy(ind), want_ind)
    np.testing.assert_array_equal(to_numpy(pydl.ops.roi_pool(xp.asarray(x), boxes, out, scale)), want)
    dy = rand(rng, want.shape, dtype)
    dx = pydl.ops.roi_pool_backward(xp.asarray(dy), ind, boxes, x.shape, out, scale)
    assert dx.dtype == dtype and dx.shape == x.shape
    assert_close(dx, R.roi_pool_backward(dy.astype(np.float64), want_ind, rboxes, x.shape, out, scale), dtype)


def test_roi_pool_backward_matches_finite_differences(xp, dtype):
    rng = np.random.default_rng(9)
    N, C, H, W, out, scale = 2, 2, 6, 7, (3, 2), 0.5
    x = to_numpy(distinct(rng, (N, C, H, W), np.float64))
    rois = make_boxes(rng, N, 6, H, W, scale, np.float64)
    dy = rng.uniform(-1, 1, (6, C) + out)
    want = numerical_grad(lambda v: R.roi_pool(v, rois, out, scale), x, dy, eps=1e-4)
    _, ind = pydl.ops.roi_pool(xp.asarray(x.astype(dtype)), xp.asarray(rois.astype(dtype)), out, scale,
                               return_indices=True)
    got = pydl.ops.roi_pool_backward(xp.asarray(dy.astype(dtype)), ind, xp.asarray(rois.astype(dtype)),
                                     x.shape, out, scale)
    assert rel_error(got, want) <= max(TOL[dtype], 1e-9)


def test_roi_pool_matches_torchvision(xp, dtype):
    torch = pytest.importorskip("torch")
    tvops = pytest.importorskip("torchvision.ops")
    for seed in range(8):
        rng, N, C, H, W, out, scale, K = config(seed + 700)
        K = max(K, 3)
        x = to_numpy(distinct(rng, (N, C, H, W), dtype))
        rois = make_boxes(rng, N, K, H, W, scale, dtype)
        pair = out if isinstance(out, tuple) else (out, out)
        dy = rand(rng, (K, C) + pair, dtype)
        xt = torch.from_numpy(x).requires_grad_(True)
        yt = tvops.roi_pool(xt, torch.from_numpy(rois), out, scale)
        yt.backward(torch.from_numpy(dy))
        y, ind = pydl.ops.roi_pool(xp.asarray(x), xp.asarray(rois), out, scale, return_indices=True)
        np.testing.assert_array_equal(to_numpy(y), yt.detach().numpy())
        dx = pydl.ops.roi_pool_backward(xp.asarray(dy), ind, xp.asarray(rois), x.shape, out, scale)
        assert_close(dx, xt.grad.numpy(), dtype)


def test_roi_pool_empty_bin_is_zero(xp, dtype):
    """A box wholly outside the image: every bin is empty, output 0 and argmax -1."""
    x = xp.asarray(np.full((1, 2, 4, 5), -3.0, dtype))
    rois = xp.asarray(np.array([[0, 10, 10, 14, 12], [0, -9, -9, -5, -6]], dtype))
    y, ind = pydl.ops.roi_pool(x, rois, 2, return_indices=True)
    assert not to_numpy(y).any() and (to_numpy(ind) == -1).all()
    dx = pydl.ops.roi_pool_backward(xp.asarray(np.ones((2, 2, 2, 2), dtype)), ind, rois, x.shape, 2)
    assert not to_numpy(dx).any()


def test_roi_pool_rounds_half_away_from_zero(xp, dtype):
    """Corners round as std::round (2.5 -> 3, -0.5 -> -1), not to even as np.round."""
    x = np.arange(36, dtype=dtype).reshape(1, 1, 6, 6)
    rois = np.array([[0, 2.5, 0.5, 2.5, 0.5]], dtype)  # -> the single pixel (row 1, col 3)
    y, ind = pydl.ops.roi_pool(xp.asarray(x), xp.asarray(rois), 1, return_indices=True)
    assert to_numpy(ind)[0, 0, 0, 0] == 1 * 6 + 3 and to_numpy(y)[0, 0, 0, 0] == 9
    rois = np.array([[0, -0.5, -0.5, 0.0, 0.0]], dtype)  # (-1, -1)-(0, 0): 2x2 roi, 1 pixel inside
    y, ind = pydl.ops.roi_pool(xp.asarray(x), xp.asarray(rois), 2, return_indices=True)
    np.testing.assert_array_equal(to_numpy(ind)[0, 0], [[-1, -1], [-1, 0]])


def test_roi_pool_no_boxes(xp, dtype):
    x = xp.asarray(np.ones((2, 3, 4, 5), dtype))
    for boxes in (xp.asarray(np.zeros((0, 5), dtype)), [], [xp.asarray(np.zeros((0, 4), dtype))]):
        y, ind = pydl.ops.roi_pool(x, boxes, (2, 3), return_indices=True)
        assert y.shape == (0, 3, 2, 3) and ind.shape == (0, 3, 2, 3)
        dx = pydl.ops.roi_pool_backward(xp.asarray(np.zeros((0, 3, 2, 3), dtype)), ind, boxes, x.shape, (2, 3))
        assert dx.shape == x.shape and not to_numpy(dx).any()


def test_roi_pool_many_rois_deterministic(xp, dtype):
    """Overlapping rois on one image share argmax elements; reruns are bit-identical, images
    without rois get zeros, non-contiguous x reads right."""
    rng = np.random.default_rng(3)
    N, C, H, W = 3, 9, 11, 13
    x = np.transpose(rand(rng, (N, H, W, C), dtype), (0, 3, 1, 2))
    rois = make_boxes(rng, N, 150, H, W, 1.0, dtype)
    rois[:, 0] = 0
    y, ind = pydl.ops.roi_pool(xp.asarray(x), xp.asarray(rois), 4, return_indices=True)
    np.testing.assert_array_equal(to_numpy(y), R.roi_pool(x, rois, 4))
    dy = rand(rng, y.shape, dtype, xp)
    first = to_numpy(pydl.ops.roi_pool_backward(dy, ind, xp.asarray(rois), x.shape, 4))
    assert_close(first, R.roi_pool_backward(to_numpy(dy).astype(np.float64), to_numpy(ind), rois, x.shape, 4), dtype)
    assert not first[1:].any()
    for _ in range(3):
        again = to_numpy(pydl.ops.roi_pool_backward(dy, ind, xp.asarray(rois), x.shape, 4))
        assert np.array_equal(first, again)


def test_roi_pool_inputs_unmodified(xp, dtype):
    rng = np.random.default_rng(6)
    x = rand(rng, (2, 3, 6, 7), dtype, xp)
    rois = xp.asarray(make_boxes(rng, 2, 9, 6, 7, 1.0, dtype))
    x0, r0 = to_numpy(x).copy(), to_numpy(rois).copy()
    y, ind = pydl.ops.roi_pool(x, rois, 3, return_indices=True)
    dy = rand(rng, y.shape, dtype, xp)
    dy0, ind0 = to_numpy(dy).copy(), to_numpy(ind).copy()
    pydl.ops.roi_pool_backward(dy, ind, rois, x.shape, 3)
    for a, b in ((x, x0), (rois, r0), (dy, dy0), (ind, ind0)):
        np.testing.assert_array_equal(to_numpy(a), b)


def test_roi_pool_module(xp, dtype):
    rng = np.random.default_rng(8)
    x = rand(rng, (2, 3, 6, 7), dtype, xp)
    rois = xp.asarray(make_boxes(rng, 2, 5, 6, 7, 1.0, dtype))
    m = pydl.ops.RoIPool((2, 3), 1.0)
    y = m(x, rois)
    yy, ind = pydl.ops.roi_pool(x, rois, (2, 3), 1.0, return_indices=True)
    np.testing.assert_array_equal(to_numpy(y), to_numpy(yy))
    dy = rand(rng, y.shape, dtype, xp)
    np.testing.assert_array_equal(
        to_numpy(m.backward(dy)), to_numpy(pydl.ops.roi_pool_backward(dy, ind, rois, x.shape, (2, 3), 1.0)))
    assert "RoIPool" in repr(m)


def test_roi_pool_bad_inputs(xp, dtype):
    x = xp.asarray(np.zeros((2, 3, 4, 5), dtype))
    good = np.array([[0, 0, 0, 2, 2], [1, 1, 1, 3, 3]], dtype)
    other = np.float64 if dtype == np.float32 else np.float32
    cases = [
        (ValueError, dict(boxes=xp.asarray(good[:, 1:]))),
        (ValueError, dict(boxes=[xp.asarray(good)])),
        (ValueError, dict(boxes=xp.asarray(good + np.array([2, 0, 0, 0, 0], dtype)))),
        (ValueError, dict(boxes=xp.asarray(good + np.array([0.25, 0, 0, 0, 0], dtype)))),
        (ValueError, dict(boxes=xp.asarray(np.array([[0, 0, np.inf, 2, 2]], dtype)))),
        (ValueError, dict(boxes=xp.asarray(good * np.array([1, 1, 1e12, 1, 1], dtype)))),
        (ValueError, dict(spatial_scale=float("nan"))),
        (ValueError, dict(output_size=0)),
        (TypeError, dict(boxes=xp.asarray(good.astype(other)))),
        (TypeError, dict(x=xp.asarray(np.zeros((2, 3, 4, 5), np.float16)))),
        (TypeError, dict(boxes="boxes")),
    ]
    for exc, kw in cases:
        args = dict(x=x, boxes=xp.asarray(good), output_size=2, spatial_scale=1.0)
        args.update(kw)
        with pytest.raises(exc):
            pydl.ops.roi_pool(**args)
    dy = xp.asarray(np.zeros((2, 3, 2, 2), dtype))
    ind = xp.asarray(np.zeros((2, 3, 2, 2), np.int64))
    with pytest.raises(TypeError, match="indices"):
        pydl.ops.roi_pool_backward(dy, ind.astype(np.int32), xp.asarray(good), x.shape, 2)
    with pytest.raises(ValueError, match="indices"):
        pydl.ops.roi_pool_backward(dy, ind[:1], xp.asarray(good), x.shape, 2)
    with pytest.raises(ValueError, match="indices"):
        pydl.ops.roi_pool_backward(dy, ind + 20, xp.asarray(good), x.shape, 2)
    with pytest.raises(ValueError, match="indices"):
        pydl.ops.roi_pool_backward(dy, ind - 2, xp.asarray(good), x.shape, 2)
    with pytest.raises(ValueError, match="grad_out"):
        pydl.ops.roi_pool_backward(dy, ind, xp.asarray(good), x.shape, 3)
