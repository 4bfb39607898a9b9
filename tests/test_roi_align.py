"""pydl.ops.roi_align / roi_align_backward against the NumPy reference (float64), central finite
differences of the reference, and torchvision.ops.roi_align when importable; both backends, both
dtypes, both box formats."""
import numpy as np
import pytest

import pydl.ops
import pydl.reference as R
from conftest import TOL, assert_close, numerical_grad, rand, rel_error, to_numpy


def make_boxes(rng, N, K, H, W, scale, dtype, skip_last=True):
    """(K, 5) rois in box coordinates (feature map / scale): boxes partly or wholly outside the
    image, tiny, degenerate (x2 < x1), half-integer corners; image N-1 gets none when N >= 2."""
    Hs, Ws = H / scale, W / scale
    kind = rng.integers(0, 5, K)
    x1 = rng.uniform(-0.3 * Ws, 1.1 * Ws, K)
    y1 = rng.uniform(-0.3 * Hs, 1.1 * Hs, K)
    w = rng.uniform(0, 0.9 * Ws, K)
    h = rng.uniform(0, 0.9 * Hs, K)
    tiny = kind == 1
    w[tiny] = rng.uniform(0, 1.5 / scale, tiny.sum())
    h[tiny] = rng.uniform(0, 1.5 / scale, tiny.sum())
    bad = kind == 2
    w[bad] = -rng.uniform(0, 2 / scale, bad.sum())
    half = kind == 3
    x1[half] = np.round(x1[half] * 2) / 2
    y1[half] = np.round(y1[half] * 2) / 2
    w[half] = np.round(w[half] * 2) / 2
    h[half] = np.round(h[half] * 2) / 2
    b = rng.integers(0, N, K)
    if skip_last and N >= 2:
        b[b == N - 1] = 0
    return np.stack([b, x1, y1, x1 + w, y1 + h], 1).astype(dtype)


def as_list(rois, N, xp):
    return [xp.asarray(np.ascontiguousarray(rois[rois[:, 0] == i, 1:])) for i in range(N)]


def config(seed):
    rng = np.random.default_rng(seed)
    N = int(rng.integers(1, 4))
    C = int(rng.integers(1, 5))
    H, W = int(rng.integers(1, 11)), int(rng.integers(1, 13))
    out = (int(rng.integers(1, 5)), int(rng.integers(1, 5))) if seed % 3 else int(rng.integers(1, 4))
    scale = [1.0, 0.5, 0.25, 1.7][seed % 4]
    K = int(rng.integers(0, 14)) if seed % 5 else 0
    return rng, N, C, H, W, out, scale, K


@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_roi_align_matches_reference(xp, dtype, sampling_ratio, aligned, seed):
    rng, N, C, H, W, out, scale, K = config(seed * 7 + sampling_ratio + 3 * aligned + 100)
    x = rand(rng, (N, C, H, W), dtype)
    rois = make_boxes(rng, N, K, H, W, scale, dtype)
    use_list = seed % 2 == 1
    boxes = as_list(rois, N, xp) if use_list else xp.asarray(rois)
    rboxes = [to_numpy(b) for b in boxes] if use_list else rois
    args = (out, scale, sampling_ratio, aligned)
    y = pydl.ops.roi_align(xp.asarray(x), boxes, *args)
    assert y.dtype == dtype
    want = R.roi_align(x.astype(np.float64), rboxes, *args)
    assert_close(y, want, dtype)
    dy = rand(rng, want.shape, dtype)
    dx = pydl.ops.roi_align_backward(xp.asarray(dy), boxes, x.shape, *args)
    assert dx.dtype == dtype and dx.shape == x.shape
    assert_close(dx, R.roi_align_backward(dy.astype(np.float64), rboxes, x.shape, *args), dtype)


@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_backward_matches_finite_differences(xp, dtype, sampling_ratio, aligned):
    rng = np.random.default_rng(5 + sampling_ratio + aligned)
    N, C, H, W, out, scale = 2, 2, 5, 6, (2, 3), 0.5
    x = rng.uniform(-1, 1, (N, C, H, W))
    rois = make_boxes(rng, N, 5, H, W, scale, np.float64)
    rois[0, 1:] = [-3.0, -2.5, 13.0, 11.0]  # covers the image and its border band
    dy = rng.uniform(-1, 1, (5, C) + out)
    args = (out, scale, sampling_ratio, aligned)
    want = numerical_grad(lambda v: R.roi_align(v, rois, *args), x, dy)
    got = pydl.ops.roi_align_backward(xp.asarray(dy.astype(dtype)), xp.asarray(rois.astype(dtype)),
                                      x.shape, *args)
    # roi_align is linear in x: central differences are exact up to rounding.
    assert rel_error(got, want) <= max(TOL[dtype], 1e-8)


def test_roi_align_matches_torchvision(xp, dtype):
    torch = pytest.importorskip("torch")
    tvops = pytest.importorskip("torchvision.ops")
    for seed in range(8):
        rng, N, C, H, W, out, scale, K = config(seed + 300)
        K = max(K, 3)
        sr, aligned = [-1, 0, 1, 2][seed % 4], bool(seed // 4)
        x = rand(rng, (N, C, H, W), dtype)
        rois = make_boxes(rng, N, K, H, W, scale, dtype)
        dy = rand(rng, (K, C) + (out if isinstance(out, tuple) else (out, out)), dtype)
        xt = torch.from_numpy(x).requires_grad_(True)
        yt = tvops.roi_align(xt, torch.from_numpy(rois), out, scale, sr, aligned)
        yt.backward(torch.from_numpy(dy))
        y = pydl.ops.roi_align(xp.asarray(x), xp.asarray(rois), out, scale, sr, aligned)
        assert_close(y, yt.detach().numpy(), dtype, factor=2)
        dx = pydl.ops.roi_align_backward(xp.asarray(dy), xp.asarray(rois), x.shape, out, scale, sr, aligned)
        assert_close(dx, xt.grad.numpy(), dtype, factor=2)


def test_roi_align_realistic_batch(xp, dtype):
    """Many rois per image, one image without rois, non-contiguous x, adaptive sampling grid."""
    rng = np.random.default_rng(11)
    N, C, H, W = 3, 5, 13, 17
    base = rand(rng, (N, W, C, H), dtype)
    x = np.transpose(base, (0, 2, 3, 1))  # non-contiguous view of shape (N, C, H, W)
    scale = 0.25
    rois = make_boxes(rng, N, 60, H, W, scale, dtype)
    rois[:, 0] = np.where(rois[:, 0] == 1, 0, rois[:, 0])  # image 1 without rois, image 2 too
    rf = xp.asarray(np.asfortranarray(rois))  # non-contiguous boxes too
    y = pydl.ops.roi_align(xp.asarray(x), rf, (7, 5), scale, -1, True)
    assert_close(y, R.roi_align(x.astype(np.float64), rois, (7, 5), scale, -1, True), dtype)
    dy = rand(rng, y.shape, dtype)
    dx = to_numpy(pydl.ops.roi_align_backward(xp.asarray(dy), rf, x.shape, (7, 5), scale, -1, True))
    assert_close(dx, R.roi_align_backward(dy.astype(np.float64), rois, x.shape, (7, 5), scale, -1, True), dtype)
    assert not dx[1].any() and not dx[2].any()


def test_roi_align_no_boxes(xp, dtype):
    x = xp.asarray(np.ones((2, 3, 4, 5), dtype))
    for boxes in (xp.asarray(np.zeros((0, 5), dtype)), [], [xp.asarray(np.zeros((0, 4), dtype))]):
        y = pydl.ops.roi_align(x, boxes, 3)
        assert y.shape == (0, 3, 3, 3)
        dx = pydl.ops.roi_align_backward(xp.asarray(np.zeros((0, 3, 3, 3), dtype)), boxes, x.shape, 3)
        assert dx.shape == x.shape and not to_numpy(dx).any()


def test_roi_align_box_formats_agree(xp, dtype):
    rng = np.random.default_rng(2)
    x = rand(rng, (3, 2, 8, 9), dtype, xp)
    per_image = [rng.uniform(0, 8, (n, 4)).astype(dtype) for n in (2, 0, 3)]
    for b in per_image:
        b[:, 2:] += b[:, :2]
    rois = np.concatenate([np.concatenate([np.full((len(b), 1), i, dtype), b], 1) for i, b in enumerate(per_image)])
    a = pydl.ops.roi_align(x, [xp.asarray(b) for b in per_image], (2, 3), 1.0, 2)
    b = pydl.ops.roi_align(x, xp.asarray(rois), (2, 3), 1.0, 2)
    np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    # a shorter list: the last image simply has no boxes
    c = pydl.ops.roi_align(x, [xp.asarray(per_image[0])], (2, 3), 1.0, 2)
    np.testing.assert_array_equal(to_numpy(c), to_numpy(b)[:2])


def test_roi_align_border_rule(xp, dtype):
    """torchvision's border rule: samples beyond -1 or H/W are 0, samples in the band are clamped."""
    x = xp.asarray(np.full((1, 1, 4, 4), 2.0, dtype))
    # one sample per bin at the bin centre: centres at -1.5 (dropped), -0.5 (clamped to row 0)
    rois = xp.asarray(np.array([[0, 0.0, -2.0, 4.0, 0.0]], dtype))
    y = to_numpy(pydl.ops.roi_align(x, rois, (2, 1), 1.0, 1))
    np.testing.assert_array_equal(y[0, 0, :, 0], [0.0, 2.0])


def test_roi_align_backward_is_deterministic(xp, dtype):
    rng = np.random.default_rng(4)
    N, C, H, W = 2, 16, 12, 14
    rois = make_boxes(rng, N, 200, H, W, 1.0, dtype, skip_last=False)
    dy = rand(rng, (200, C, 7, 7), dtype, xp)
    r = xp.asarray(rois)
    first = to_numpy(pydl.ops.roi_align_backward(dy, r, (N, C, H, W), 7, 1.0, -1, False))
    for _ in range(3):
        again = to_numpy(pydl.ops.roi_align_backward(dy, r, (N, C, H, W), 7, 1.0, -1, False))
        assert np.array_equal(first, again)


def test_roi_align_inputs_unmodified(xp, dtype):
    rng = np.random.default_rng(6)
    x = rand(rng, (2, 3, 6, 7), dtype, xp)
    rois = xp.asarray(make_boxes(rng, 2, 9, 6, 7, 1.0, dtype))
    x0, r0 = to_numpy(x).copy(), to_numpy(rois).copy()
    y = pydl.ops.roi_align(x, rois, 3, 1.0, 2, True)
    dy = rand(rng, y.shape, dtype, xp)
    dy0 = to_numpy(dy).copy()
    pydl.ops.roi_align_backward(dy, rois, x.shape, 3, 1.0, 2, True)
    for a, b in ((x, x0), (rois, r0), (dy, dy0)):
        np.testing.assert_array_equal(to_numpy(a), b)


def test_roi_align_module(xp, dtype):
    rng = np.random.default_rng(8)
    x = rand(rng, (2, 3, 6, 7), dtype, xp)
    rois = xp.asarray(make_boxes(rng, 2, 5, 6, 7, 1.0, dtype))
    m = pydl.ops.RoIAlign((2, 3), 1.0, 2, aligned=True)
    y = m(x, rois)
    np.testing.assert_array_equal(to_numpy(y), to_numpy(pydl.ops.roi_align(x, rois, (2, 3), 1.0, 2, True)))
    dy = rand(rng, y.shape, dtype, xp)
    np.testing.assert_array_equal(
        to_numpy(m.backward(dy)), to_numpy(pydl.ops.roi_align_backward(dy, rois, x.shape, (2, 3), 1.0, 2, True)))
    assert "RoIAlign" in repr(m)


def test_roi_align_bad_inputs(xp, dtype):
    x = xp.asarray(np.zeros((2, 3, 4, 5), dtype))
    good = np.array([[0, 0, 0, 2, 2], [1, 1, 1, 3, 3]], dtype)
    other = np.float64 if dtype == np.float32 else np.float32
    cases = [
        (ValueError, dict(boxes=xp.asarray(good[:, 1:]))),                       # (K, 4) array
        (ValueError, dict(boxes=xp.asarray(good[0]))),                           # 1-D
        (ValueError, dict(boxes=[xp.asarray(good)])),                            # list of (L, 5)
        (ValueError, dict(boxes=[xp.asarray(good[:, 1:])] * 3)),                 # more images than N
        (ValueError, dict(boxes=xp.asarray(good * np.array([1, 1, 1, 1, 1], dtype) + np.array([2, 0, 0, 0, 0], dtype)))),
        (ValueError, dict(boxes=xp.asarray(good - np.array([1, 0, 0, 0, 0], dtype)))),  # index -1
        (ValueError, dict(boxes=xp.asarray(good + np.array([0.5, 0, 0, 0, 0], dtype)))),  # non-integer
        (ValueError, dict(boxes=xp.asarray(good * np.array([1, np.nan, 1, 1, 1], dtype)))),
        (ValueError, dict(spatial_scale=float("inf"))),
        (ValueError, dict(spatial_scale=float("nan"))),
        (ValueError, dict(output_size=0)),
        (ValueError, dict(output_size=(2, 0))),
        (ValueError, dict(output_size=(2, 2, 2))),
        (TypeError, dict(output_size=2.5)),
        (TypeError, dict(boxes=xp.asarray(good.astype(other)))),
        (TypeError, dict(boxes=[xp.asarray(good[:, 1:].astype(other))])),
        (TypeError, dict(boxes=xp.asarray(good.astype(np.int64)))),
        (TypeError, dict(x=xp.asarray(np.zeros((2, 3, 4, 5), np.int32)))),
        (ValueError, dict(x=xp.asarray(np.zeros((3, 4, 5), dtype)))),
        (TypeError, dict(sampling_ratio=1.5)),
        (TypeError, dict(aligned="yes")),
    ]
    if xp is not np:  # host boxes with a device image: no hidden copies
        cases += [(TypeError, dict(boxes=good)), (TypeError, dict(boxes=[good[:, 1:]]))]
    for exc, kw in cases:
        args = dict(x=x, boxes=xp.asarray(good), output_size=2, spatial_scale=1.0, sampling_ratio=-1, aligned=False)
        args.update(kw)
        with pytest.raises(exc):
            pydl.ops.roi_align(**args)
    dy = xp.asarray(np.zeros((2, 3, 2, 2), dtype))
    with pytest.raises(ValueError, match="grad_out"):
        pydl.ops.roi_align_backward(dy, xp.asarray(good), x.shape, 3)
    with pytest.raises(ValueError, match="grad_out"):
        pydl.ops.roi_align_backward(dy[:1], xp.asarray(good), x.shape, 2)
    with pytest.raises(ValueError, match="x_shape"):
        pydl.ops.roi_align_backward(dy, xp.asarray(good), (2, 3, 4), 2)
    with pytest.raises(ValueError, match="boxes"):
        pydl.ops.roi_align_backward(dy, xp.asarray(good), (1, 3, 4, 5), 2)
    with pytest.raises(TypeError, match="boxes"):
        pydl.ops.roi_align_backward(dy, xp.asarray(good.astype(other)), x.shape, 2)
