"""pool: max / average / adaptive average pooling against the float64 NumPy reference (and
PyTorch where importable), on both backends and dtypes; gradients by finite differences."""
import numpy as np
import pytest

import pydl.functional as F
import pydl.reference.pool as R

from conftest import assert_close, numerical_grad, rand, to_numpy

try:
    import torch
    import torch.nn.functional as TF
except Exception:  # pragma: no cover - torch is optional
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed")

# (shape, kernel_size, stride, padding, dilation, ceil_mode)
MAX_CONFIGS = [
    ((2, 3, 9, 11), 3, 2, 1, 1, False),
    ((2, 3, 9, 11), 3, 2, 1, 1, True),
    ((1, 2, 8, 8), 2, None, 0, 1, False),
    ((3, 1, 7, 10), (2, 3), (1, 2), (1, 1), (2, 1), True),
    ((1, 2, 5, 5), 2, 2, 1, 1, True),       # ceil: a 4th window would start in the right padding
    ((2, 2, 6, 6), 3, 2, 0, 1, True),       # ceil: last window hangs over the edge
    ((1, 3, 13, 6), (3, 1), (3, 1), (1, 0), (1, 1), False),
    ((2, 2, 12, 14), 3, 1, 1, 2, False),
    ((1, 1, 1, 1), 1, 1, 0, 1, False),
    ((2, 4, 10, 9), 4, 3, 2, 1, True),
    ((1, 2, 11, 11), 5, 4, 2, 2, True),
]

# (shape, kernel_size, stride, padding, ceil_mode)
AVG_CONFIGS = [
    ((2, 3, 9, 11), 3, 2, 1, False),
    ((2, 3, 9, 11), 3, 2, 1, True),
    ((1, 2, 8, 8), 2, None, 0, False),
    ((3, 1, 7, 10), (2, 3), (1, 2), (1, 1), True),
    ((1, 2, 5, 5), 2, 2, 1, True),
    ((2, 2, 6, 7), 3, 2, 0, True),
    ((1, 3, 13, 6), (3, 1), (3, 1), (1, 0), False),
    ((2, 4, 10, 9), 4, 3, 2, True),
    ((1, 1, 1, 1), 1, 1, 0, False),
    ((2, 3, 6, 10), 2, 2, 0, False),        # 2x2 fast path, rows not a multiple of 4 (GPU)
    ((1, 2, 7, 9), 2, 2, 0, True),          # odd sizes: the last windows are clipped
]


def distinct(rng, shape, dtype, xp):
    """Tie-free values (a permutation, exactly representable in float32)."""
    n = int(np.prod(shape))
    a = (rng.permutation(n).astype(np.float64) - n / 2) / 8
    return xp.asarray(a.reshape(shape).astype(dtype))


def ids(configs):
    return [str(i) for i in range(len(configs))]


# ------------------------------------------------------------------------------ max pooling

@pytest.mark.parametrize("cfg", MAX_CONFIGS, ids=ids(MAX_CONFIGS))
def test_max_pool2d_matches_reference(xp, dtype, cfg, simd_level):
    shape, k, s, p, d, ceil = cfg
    rng = np.random.default_rng(1)
    x = distinct(rng, shape, dtype, xp)
    x0 = to_numpy(x).copy()
    y, ind = F.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
    y_only = F.max_pool2d(x, k, s, p, d, ceil)
    want, want_ind = R.max_pool2d(x0.astype(np.float64), k, s, p, d, ceil, return_indices=True)
    assert type(y) is type(x) and y.dtype == dtype and ind.dtype == np.int64
    assert np.array_equal(to_numpy(y), want.astype(dtype))
    assert np.array_equal(to_numpy(y_only), want.astype(dtype))
    assert np.array_equal(to_numpy(ind), want_ind)
    assert np.array_equal(to_numpy(x), x0)  # input unmodified

    dy = rand(rng, y.shape, dtype, xp)
    dx = F.max_pool2d_backward(dy, ind, x.shape, k, s, p, d, ceil)
    assert dx.dtype == dtype
    want_dx = R.max_pool2d_backward(to_numpy(dy).astype(np.float64), want_ind, shape, k, s, p, d, ceil)
    assert_close(dx, want_dx, dtype)


@needs_torch
@pytest.mark.parametrize("cfg", MAX_CONFIGS, ids=ids(MAX_CONFIGS))
def test_max_pool2d_reference_and_pydl_match_torch(xp, cfg):
    shape, k, s, p, d, ceil = cfg
    rng = np.random.default_rng(2)
    x = rng.integers(-2, 3, size=shape).astype(np.float64)  # many ties
    yt, it = TF.max_pool2d(torch.from_numpy(x), k, s, p, d, ceil, return_indices=True)
    yr, ir = R.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
    y, ind = F.max_pool2d(xp.asarray(x), k, s, p, d, ceil, return_indices=True)
    assert np.array_equal(yr, yt.numpy()) and np.array_equal(ir, it.numpy())
    assert np.array_equal(to_numpy(y), yt.numpy()) and np.array_equal(to_numpy(ind), it.numpy())


def test_max_pool2d_ties_pick_first_like_pytorch(xp, dtype):
    # A constant image: every window's argmax is its first element inside the image (row-major).
    x = xp.ones((1, 1, 5, 6), dtype=dtype)
    _, ind = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    want = np.array([[0, 1, 3], [6, 7, 9], [18, 19, 21]])
    assert np.array_equal(to_numpy(ind)[0, 0], want)
    # Two equal maxima in one window: the earlier one in scan order wins.
    x = xp.asarray(np.array([[[[0, 5, 5], [5, 1, 2], [3, 4, 5]]]], dtype=dtype))
    _, ind = F.max_pool2d(x, 3, return_indices=True)
    assert to_numpy(ind).item() == 1
    if torch is not None:
        _, it = TF.max_pool2d(torch.from_numpy(to_numpy(x)), 3, return_indices=True)
        assert it.item() == 1


def test_max_pool2d_backward_follows_forward_choice_on_ties(xp, dtype):
    rng = np.random.default_rng(3)
    x = xp.asarray(rng.integers(0, 2, size=(2, 3, 7, 8)).astype(dtype))
    y, ind = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    dy = rand(rng, y.shape, dtype, xp)
    dx = to_numpy(F.max_pool2d_backward(dy, ind, x.shape, 3, 2, 1))
    # Exactly the elements the forward chose receive gradient, summed when chosen twice.
    want = np.zeros((2, 3, 56))
    ind_h, dy_h = to_numpy(ind), to_numpy(dy).astype(np.float64)
    for n in range(2):
        for c in range(3):
            np.add.at(want[n, c], ind_h[n, c].ravel(), dy_h[n, c].ravel())
    assert_close(dx, want.reshape(x.shape), dtype)
    if torch is not None:
        xt = torch.from_numpy(to_numpy(x).astype(np.float64)).requires_grad_()
        TF.max_pool2d(xt, 3, 2, 1).backward(torch.from_numpy(dy_h))
        assert_close(dx, xt.grad.numpy(), dtype)


def test_max_pool2d_nan_propagates_and_wins_the_index(xp, dtype):
    x = np.arange(2 * 16, dtype=dtype).reshape(1, 2, 4, 4)
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 0, 0] = np.nan
    x[0, 1, 1, 0] = np.nan  # two NaNs in one window: PyTorch keeps the last one seen
    y, ind = F.max_pool2d(xp.asarray(x), 2, return_indices=True)
    y, ind = to_numpy(y), to_numpy(ind)
    assert np.isnan(y[0, 0, 0, 0]) and ind[0, 0, 0, 0] == 5
    assert np.isnan(y[0, 1, 0, 0]) and ind[0, 1, 0, 0] == 4
    assert np.isfinite(y[0, 0, 1, 1])
    yr, ir = R.max_pool2d(x, 2, return_indices=True)
    assert np.array_equal(ind, ir) and np.array_equal(np.isnan(y), np.isnan(yr))
    # Without indices (a separate, separable CPU path) NaN propagates the same way.
    y_only = to_numpy(F.max_pool2d(xp.asarray(x), 2))
    assert np.array_equal(y_only, y, equal_nan=True)
    y3 = to_numpy(F.max_pool2d(xp.asarray(x), 3, 1, 1))
    assert np.array_equal(y3, R.max_pool2d(x, 3, 1, 1), equal_nan=True)
    if torch is not None:
        _, it = TF.max_pool2d(torch.from_numpy(x), 2, return_indices=True)
        assert np.array_equal(ind, it.numpy())


def test_max_pool2d_window_entirely_in_padding_gives_minus_inf_and_index_minus_one(xp, dtype):
    # H = 2, k = 2, dilation 3, padding 1: the taps of the first window are rows -1 and 2.
    x = xp.asarray(np.arange(8, dtype=dtype).reshape(1, 1, 2, 4))
    y, ind = F.max_pool2d(x, (2, 1), 1, (1, 0), (3, 1), return_indices=True)
    assert y.shape == (1, 1, 1, 4)
    assert np.all(to_numpy(y) == -np.inf) and np.all(to_numpy(ind) == -1)
    dx = F.max_pool2d_backward(xp.ones(y.shape, dtype), ind, x.shape, (2, 1), 1, (1, 0), (3, 1))
    assert np.all(to_numpy(dx) == 0)


@pytest.mark.parametrize("cfg", [MAX_CONFIGS[0], MAX_CONFIGS[3], MAX_CONFIGS[5]], ids=["0", "3", "5"])
def test_max_pool2d_backward_matches_numerical_grad(xp, cfg):
    shape, k, s, p, d, ceil = cfg
    shape = (1,) + shape[1:]
    rng = np.random.default_rng(4)
    x = distinct(rng, shape, np.float64, np)
    _, ind = F.max_pool2d(xp.asarray(x), k, s, p, d, ceil, return_indices=True)
    dy = rng.standard_normal(ind.shape)
    dx = F.max_pool2d_backward(xp.asarray(dy), ind, shape, k, s, p, d, ceil)
    num = numerical_grad(lambda v: R.max_pool2d(v, k, s, p, d, ceil), x, dy, eps=1e-3)
    assert_close(dx, num, np.float64, factor=1e4)  # finite differences: ~1e-8 accuracy


# -------------------------------------------------------------------------- average pooling

@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("cfg", AVG_CONFIGS, ids=ids(AVG_CONFIGS))
def test_avg_pool2d_matches_reference(xp, dtype, cfg, count_include_pad, simd_level):
    shape, k, s, p, ceil = cfg
    rng = np.random.default_rng(5)
    x = rand(rng, shape, dtype, xp)
    x0 = to_numpy(x).copy()
    y = F.avg_pool2d(x, k, s, p, ceil, count_include_pad)
    assert type(y) is type(x) and y.dtype == dtype
    assert_close(y, R.avg_pool2d(x0.astype(np.float64), k, s, p, ceil, count_include_pad), dtype)
    dy = rand(rng, y.shape, dtype, xp)
    dy0 = to_numpy(dy).copy()
    dx = F.avg_pool2d_backward(dy, shape, k, s, p, ceil, count_include_pad)
    want = R.avg_pool2d_backward(dy0.astype(np.float64), shape, k, s, p, ceil, count_include_pad)
    assert_close(dx, want, dtype)
    assert np.array_equal(to_numpy(x), x0) and np.array_equal(to_numpy(dy), dy0)
    if torch is not None:
        xt = torch.from_numpy(x0.astype(np.float64)).requires_grad_()
        yt = TF.avg_pool2d(xt, k, s, p, ceil, count_include_pad)
        yt.backward(torch.from_numpy(dy0.astype(np.float64)))
        assert_close(y, yt.detach().numpy(), dtype)
        assert_close(dx, xt.grad.numpy(), dtype)


@pytest.mark.parametrize("divisor", [1, 5])
def test_avg_pool2d_divisor_override(xp, dtype, divisor):
    rng = np.random.default_rng(6)
    x = rand(rng, (2, 3, 7, 9), dtype, xp)
    y = F.avg_pool2d(x, 3, 2, 1, True, divisor_override=divisor)
    assert_close(y, R.avg_pool2d(to_numpy(x).astype(np.float64), 3, 2, 1, True, divisor_override=divisor), dtype)
    dy = rand(rng, y.shape, dtype, xp)
    dx = F.avg_pool2d_backward(dy, x.shape, 3, 2, 1, True, divisor_override=divisor)
    want = R.avg_pool2d_backward(to_numpy(dy).astype(np.float64), x.shape, 3, 2, 1, True, divisor_override=divisor)
    assert_close(dx, want, dtype)
    if torch is not None:
        yt = TF.avg_pool2d(torch.from_numpy(to_numpy(x).astype(np.float64)), 3, 2, 1, True, divisor_override=divisor)
        assert_close(y, yt.numpy(), dtype)


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_backward_matches_numerical_grad(xp, count_include_pad):
    rng = np.random.default_rng(7)
    shape, k, s, p = (1, 2, 6, 7), (3, 2), (2, 2), (1, 1)
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(F.avg_pool2d(x, k, s, p, True, count_include_pad).shape)
    dx = F.avg_pool2d_backward(xp.asarray(dy), shape, k, s, p, True, count_include_pad)
    num = numerical_grad(lambda v: R.avg_pool2d(v, k, s, p, True, count_include_pad), x, dy)
    assert_close(dx, num, np.float64, factor=1e4)  # finite differences: ~1e-9 accurate


# ----------------------------------------------------------------- adaptive average pooling

@pytest.mark.parametrize("shape,output_size", [
    ((2, 3, 10, 13), (3, 4)), ((1, 2, 7, 7), 3), ((2, 1, 9, 5), (None, 2)), ((1, 3, 4, 6), (8, 9)),
    ((2, 2, 5, 5), 1), ((1, 1, 1, 1), 1), ((1, 2, 6, 8), (6, 8)),
])
def test_adaptive_avg_pool2d_matches_reference(xp, dtype, shape, output_size):
    rng = np.random.default_rng(8)
    x = rand(rng, shape, dtype, xp)
    x0 = to_numpy(x).copy()
    y = F.adaptive_avg_pool2d(x, output_size)
    want = R.adaptive_avg_pool2d(x0.astype(np.float64), output_size)
    assert_close(y, want, dtype)
    dy = rand(rng, y.shape, dtype, xp)
    dx = F.adaptive_avg_pool2d_backward(dy, shape)
    assert_close(dx, R.adaptive_avg_pool2d_backward(to_numpy(dy).astype(np.float64), shape), dtype)
    assert np.array_equal(to_numpy(x), x0)
    if torch is not None:
        xt = torch.from_numpy(x0.astype(np.float64)).requires_grad_()
        yt = TF.adaptive_avg_pool2d(xt, output_size)
        yt.backward(torch.from_numpy(to_numpy(dy).astype(np.float64)))
        assert_close(y, yt.detach().numpy(), dtype)
        assert_close(dx, xt.grad.numpy(), dtype)


def test_adaptive_avg_pool2d_backward_matches_numerical_grad(xp):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 2, 7, 5))
    dy = rng.standard_normal((1, 2, 3, 4))
    dx = F.adaptive_avg_pool2d_backward(xp.asarray(dy), x.shape)
    num = numerical_grad(lambda v: R.adaptive_avg_pool2d(v, (3, 4)), x, dy)
    assert_close(dx, num, np.float64, factor=1e4)  # finite differences: ~1e-9 accurate


def test_global_avg_pool2d(xp, dtype, simd_level):
    rng = np.random.default_rng(10)
    x = rand(rng, (3, 4, 9, 7), dtype, xp)
    y = F.global_avg_pool2d(x)
    assert y.shape == (3, 4, 1, 1)
    assert_close(y, to_numpy(x).astype(np.float64).mean(axis=(2, 3), keepdims=True), dtype)
    dy = rand(rng, y.shape, dtype, xp)
    dx = F.global_avg_pool2d_backward(dy, x.shape)
    want = np.broadcast_to(to_numpy(dy).astype(np.float64) / 63, x.shape)
    assert_close(dx, want, dtype)


# ---------------------------------------------------------- batch sizes, views, 3-D inputs

@pytest.mark.parametrize("n", [0, 1])
def test_batch_zero_and_one(xp, dtype, n):
    rng = np.random.default_rng(11)
    x = rand(rng, (n, 3, 7, 6), dtype, xp)
    y, ind = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert y.shape == (n, 3, 4, 3)
    want, want_ind = R.max_pool2d(to_numpy(x).astype(np.float64), 3, 2, 1, return_indices=True)
    assert_close(y, want, dtype)
    assert np.array_equal(to_numpy(ind), want_ind)
    assert F.max_pool2d_backward(y, ind, x.shape, 3, 2, 1).shape == x.shape
    a = F.avg_pool2d(x, 2, ceil_mode=True)
    assert_close(a, R.avg_pool2d(to_numpy(x).astype(np.float64), 2, ceil_mode=True), dtype)
    assert F.avg_pool2d_backward(a, x.shape, 2, ceil_mode=True).shape == x.shape
    g = F.adaptive_avg_pool2d(x, (2, 5))
    assert g.shape == (n, 3, 2, 5)
    assert F.adaptive_avg_pool2d_backward(g, x.shape).shape == x.shape


def test_non_contiguous_inputs(xp, dtype):
    rng = np.random.default_rng(12)
    base = rand(rng, (2, 9, 11, 14), dtype, xp)
    x = base[:, ::2, :, 1::2]  # strided view
    xt = base.transpose(0, 1, 3, 2)  # transposed view
    for v in (x, xt):
        v0 = to_numpy(v).astype(np.float64)
        y, ind = F.max_pool2d(v, 3, 2, 1, ceil_mode=True, return_indices=True)
        want, want_ind = R.max_pool2d(v0, 3, 2, 1, ceil_mode=True, return_indices=True)
        assert_close(y, want, dtype)
        assert_close(F.avg_pool2d(v, 2, 1, 1, count_include_pad=False),
                     R.avg_pool2d(v0, 2, 1, 1, count_include_pad=False), dtype)
        assert_close(F.adaptive_avg_pool2d(v, 3), R.adaptive_avg_pool2d(v0, 3), dtype)
        dy = rand(rng, y.shape + (2,), dtype, xp)[..., 0]  # non-contiguous gradient
        assert_close(F.max_pool2d_backward(dy, ind, v.shape, 3, 2, 1, ceil_mode=True),
                     R.max_pool2d_backward(to_numpy(dy).astype(np.float64), want_ind, v.shape, 3, 2, 1,
                                           ceil_mode=True), dtype)
        dya = rand(rng, v.shape[:2] + (v.shape[2] + 1, v.shape[3] + 1, 2), dtype, xp)[..., 1]
        assert_close(F.avg_pool2d_backward(dya, v.shape, 2, 1, 1),
                     R.avg_pool2d_backward(to_numpy(dya).astype(np.float64), v.shape, 2, 1, 1), dtype)


def test_three_d_input_is_one_image(xp, dtype):
    rng = np.random.default_rng(13)
    x = rand(rng, (3, 8, 7), dtype, xp)
    y, ind = F.max_pool2d(x, 2, return_indices=True)
    y4, ind4 = F.max_pool2d(x[None], 2, return_indices=True)
    assert y.shape == (3, 4, 3)
    assert np.array_equal(to_numpy(y), to_numpy(y4)[0]) and np.array_equal(to_numpy(ind), to_numpy(ind4)[0])
    dx = F.max_pool2d_backward(y, ind, x.shape, 2)
    assert dx.shape == x.shape
    a = F.avg_pool2d(x, 3, 2, 1)
    assert_close(a, R.avg_pool2d(to_numpy(x).astype(np.float64), 3, 2, 1), dtype)
    assert F.avg_pool2d_backward(a, x.shape, 3, 2, 1).shape == x.shape
    assert F.global_avg_pool2d(x).shape == (3, 1, 1)
    assert F.global_avg_pool2d_backward(F.global_avg_pool2d(x), x.shape).shape == x.shape


def test_ceil_mode_drops_window_starting_in_padding(xp):
    x = xp.asarray(np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5))
    assert F.max_pool2d(x, 2, 2, 1, ceil_mode=True).shape == (1, 1, 3, 3)
    assert F.avg_pool2d(x, 2, 2, 1, ceil_mode=True).shape == (1, 1, 3, 3)
    assert F.max_pool2d(xp.zeros((1, 1, 6, 6)), 3, 2, 0, ceil_mode=True).shape == (1, 1, 3, 3)
    assert F.max_pool2d(xp.zeros((1, 1, 6, 6)), 3, 2, 0, ceil_mode=False).shape == (1, 1, 2, 2)


# ---------------------------------------------------------------------------- bad arguments

def test_bad_inputs_raise(xp):
    x = xp.zeros((1, 2, 6, 6), dtype=np.float32)
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int32"):
        F.max_pool2d(xp.zeros((1, 2, 6, 6), dtype=np.int32), 2)
    with pytest.raises(TypeError, match="x: expected a numpy.ndarray"):
        F.avg_pool2d([[1.0]], 2)
    with pytest.raises(ValueError, match="x: expected a 3-D or 4-D array"):
        F.max_pool2d(xp.zeros((6, 6), dtype=np.float32), 2)
    with pytest.raises(ValueError, match="padding: expected at most half the kernel size"):
        F.max_pool2d(x, 3, padding=2)
    with pytest.raises(ValueError, match="padding: expected at most half"):
        F.avg_pool2d(x, 2, padding=(0, 2))
    with pytest.raises(ValueError, match="kernel_size: expected an int >= 1, got 0"):
        F.max_pool2d(x, 0)
    with pytest.raises(ValueError, match="stride: expected an int >= 1, got 0"):
        F.avg_pool2d(x, 2, 0)
    with pytest.raises(ValueError, match="dilation: expected an int >= 1"):
        F.max_pool2d(x, 2, dilation=0)
    with pytest.raises(ValueError, match="padding: expected an int >= 0"):
        F.max_pool2d(x, 2, padding=-1)
    with pytest.raises(ValueError, match="output size"):
        F.max_pool2d(x, 7)
    with pytest.raises(ValueError, match="output size"):
        F.avg_pool2d(x, (2, 7))
    with pytest.raises(TypeError, match="kernel_size: expected an int"):
        F.max_pool2d(x, 2.5)
    with pytest.raises(ValueError, match="output_size: expected an int >= 1"):
        F.adaptive_avg_pool2d(x, 0)
    with pytest.raises(ValueError, match="output_size: expected an int or a pair"):
        F.adaptive_avg_pool2d(x, (1, 2, 3))
    with pytest.raises(ValueError, match="divisor_override: expected an int >= 1"):
        F.avg_pool2d(x, 2, divisor_override=0)
    with pytest.raises(ValueError, match="non-empty spatial"):
        F.max_pool2d(xp.zeros((1, 2, 0, 6), dtype=np.float32), 1)


def test_bad_backward_inputs_raise(xp):
    x = xp.zeros((1, 2, 6, 6), dtype=np.float32)
    y, ind = F.max_pool2d(x, 2, return_indices=True)
    with pytest.raises(TypeError, match="indices: expected dtype int64, got int32"):
        F.max_pool2d_backward(y, ind.astype(np.int32), x.shape, 2)
    with pytest.raises(ValueError, match=r"indices: expected shape \(1, 2, 3, 3\)"):
        F.max_pool2d_backward(y, ind[:, :, :2], x.shape, 2)
    with pytest.raises(ValueError, match=r"grad_out: expected shape \(1, 3, 3, 3\)"):
        F.max_pool2d_backward(y, ind, (1, 3, 6, 6), 2)
    if xp is np:  # the GPU gather never reads outside a window, so it has nothing to check
        with pytest.raises(ValueError, match=r"indices out of range"):
            F.max_pool2d_backward(y, ind + 100, x.shape, 2)
    with pytest.raises(TypeError, match="grad_out: expected dtype float32 or float64"):
        F.max_pool2d_backward(ind, ind, x.shape, 2)
    with pytest.raises(ValueError, match=r"grad_out: expected shape \(1, 2, 3, 3\) \(the pooled output\)"):
        F.avg_pool2d_backward(xp.zeros((1, 2, 3, 4), np.float32), x.shape, 2)
    with pytest.raises(ValueError, match="x_shape: expected a 3-D"):
        F.avg_pool2d_backward(y, (6, 6), 2)
    with pytest.raises(ValueError, match=r"grad_out: expected shape \(1, 2, 1, 1\)"):
        F.global_avg_pool2d_backward(y, x.shape)
    with pytest.raises(ValueError, match=r"grad_out: expected shape \(1, 3, 3, 3\)"):
        F.adaptive_avg_pool2d_backward(y, (1, 3, 6, 6))


def _random_window(rng):
    k = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    p = (int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1)))
    d = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(1, 12)), int(rng.integers(1, 12)))
    return shape, k, s, p, d, bool(rng.integers(0, 2))


def test_random_configs_match_reference(xp, dtype):
    # Seeded sweep over windows, strides, paddings, dilations and ceil mode, with ties (small
    # integers): values, argmax and both backwards against the reference.
    rng = np.random.default_rng(14)
    checked = 0
    while checked < 60:
        shape, k, s, p, d, ceil = _random_window(rng)
        try:
            R.max_pool2d(np.zeros(shape), k, s, p, d, ceil)
        except ValueError:
            continue  # the window does not fit: covered by test_bad_inputs_raise
        checked += 1
        x = rng.integers(-3, 4, size=shape).astype(dtype)
        y, ind = F.max_pool2d(xp.asarray(x), k, s, p, d, ceil, return_indices=True)
        want, want_ind = R.max_pool2d(x.astype(np.float64), k, s, p, d, ceil, return_indices=True)
        assert np.array_equal(to_numpy(y), want) and np.array_equal(to_numpy(ind), want_ind)
        assert np.array_equal(to_numpy(F.max_pool2d(xp.asarray(x), k, s, p, d, ceil)), want)
        dy = rng.standard_normal(want.shape)
        dx = F.max_pool2d_backward(xp.asarray(dy.astype(dtype)), ind, shape, k, s, p, d, ceil)
        want_dx = R.max_pool2d_backward(dy.astype(dtype).astype(np.float64), want_ind, shape, k, s, p, d, ceil)
        assert_close(dx, want_dx, dtype)
        inc, div = bool(rng.integers(0, 2)), [None, 3][int(rng.integers(0, 2))]
        a = F.avg_pool2d(xp.asarray(x), k, s, p, ceil, inc, div)
        assert_close(a, R.avg_pool2d(x.astype(np.float64), k, s, p, ceil, inc, div), dtype)
        ga = rng.standard_normal(a.shape).astype(dtype)
        assert_close(F.avg_pool2d_backward(xp.asarray(ga), shape, k, s, p, ceil, inc, div),
                     R.avg_pool2d_backward(ga.astype(np.float64), shape, k, s, p, ceil, inc, div), dtype)


def test_max_pool2d_indices_ties_nans_and_infinities_sweep(xp, dtype):
    # The CPU takes the argmax separably (per column over the window's rows, then over the
    # columns), which must pick what the row-major scan picks: the first maximum, or the last
    # NaN, in every window. Heavy ties, several NaNs and +-inf per window, widths past a few
    # vector lengths, every stride / dilation / padding / ceil mode from the sweep.
    rng = np.random.default_rng(41)
    checked = 0
    while checked < 80:
        shape, k, s, p, d, ceil = _random_window(rng)
        shape = shape[:3] + (int(rng.integers(1, 45)),)
        try:
            R.max_pool2d(np.zeros(shape), k, s, p, d, ceil)
        except ValueError:
            continue
        checked += 1
        x = rng.integers(-2, 3, size=shape).astype(dtype)
        u = rng.random(shape)
        x[u < 0.15] = np.nan
        x[(u >= 0.15) & (u < 0.2)] = -np.inf
        x[(u >= 0.2) & (u < 0.23)] = np.inf
        y, ind = F.max_pool2d(xp.asarray(x), k, s, p, d, ceil, return_indices=True)
        want, want_ind = R.max_pool2d(x.astype(np.float64), k, s, p, d, ceil, return_indices=True)
        assert np.array_equal(to_numpy(ind), want_ind), (shape, k, s, p, d, ceil)
        assert np.array_equal(to_numpy(y), want.astype(dtype), equal_nan=True)
        if torch is not None and xp is np:
            # (A window wholly in the padding gets -1 here; PyTorch's index there means nothing.)
            ty, ti = TF.max_pool2d(torch.from_numpy(x), k, s, p, d, ceil, return_indices=True)
            held = want_ind >= 0
            assert np.array_equal(ti.numpy()[held], want_ind[held]), (shape, k, s, p, d, ceil)


def test_max_pool2d_backward_large_planes_and_arbitrary_indices(xp, dtype):
    # Planes above 4096 elements take the CPU's lazily zeroed scatter: forward indices, then
    # in-range indices in arbitrary order (backward is a pure scatter: each goes where it says).
    rng = np.random.default_rng(15)
    shape = (1, 2, 70, 65)
    x = distinct(rng, shape, dtype, xp)
    y, ind = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    dy = rand(rng, y.shape, dtype, xp)
    want = R.max_pool2d_backward(to_numpy(dy).astype(np.float64), to_numpy(ind), shape, 3, 2, 1)
    assert_close(F.max_pool2d_backward(dy, ind, shape, 3, 2, 1), want, dtype)
    if xp is np:  # the GPU gathers only from the windows covering an element
        shuffled = rng.integers(0, 70 * 65, size=y.shape).astype(np.int64)
        want = R.max_pool2d_backward(to_numpy(dy).astype(np.float64), shuffled, shape, 3, 2, 1)
        assert_close(F.max_pool2d_backward(dy, shuffled, shape, 3, 2, 1), want, dtype)


# The GPU's 3x3 / stride 2 / padding 1 float32 fast path (W == 2 OW, OW % 4 == 0, no indices):
# even and odd heights, the first and last column groups, NaN and -inf taps, a misaligned view
# (which must take the generic kernel) - all against the reference, on both backends and dtypes.
@pytest.mark.parametrize("shape", [(2, 3, 9, 16), (1, 2, 8, 8), (3, 1, 6, 24), (1, 1, 1, 8)])
def test_max_pool2d_3x3_s2_p1_even_widths(xp, dtype, shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[rng.integers(0, x.size, 3)] = np.nan
    x.flat[rng.integers(0, x.size, 3)] = -np.inf
    x[..., 0] = np.where(rng.random(shape[:-1]) < 0.5, 9.0, x[..., 0])  # left-edge maxima
    x[..., -1] = np.where(rng.random(shape[:-1]) < 0.5, 8.0, x[..., -1])  # right-edge maxima
    want = R.max_pool2d(x.astype(np.float64), 3, 2, 1)
    got = to_numpy(F.max_pool2d(xp.asarray(x), 3, 2, 1))
    assert got.dtype == dtype and got.shape == want.shape
    assert np.array_equal(got, want.astype(dtype), equal_nan=True)
    n = x.size
    flat = xp.asarray(np.concatenate([[0.0], x.ravel()]).astype(dtype))
    view = flat[1:].reshape(shape)  # contiguous, 4 bytes off 16-byte alignment
    got2 = to_numpy(F.max_pool2d(view, 3, 2, 1))
    assert np.array_equal(got2, want.astype(dtype), equal_nan=True) and view.size == n


# --- 2x2 windows at stride 2 without padding (float32 takes a vectorized path that decides each
# window as a tree, row pairs first): widths hit its 8-output and 4-output steps and the scalar
# tail; odd sizes leave the last row / column unused; ties, several NaNs per window and -inf ---

@pytest.mark.parametrize("shape", [(2, 3, 6, 2), (1, 2, 4, 7), (2, 1, 5, 8), (1, 2, 6, 17), (3, 2, 7, 24),
                                   (1, 1, 3, 26), (2, 2, 8, 31), (1, 3, 4, 43), (1, 1, 2, 64)])
def test_max_pool2d_2x2_s2_matches_reference_values_and_indices(xp, dtype, shape, simd_level):
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(0, 3, size=shape).astype(dtype)  # ties in most windows
    x.flat[rng.integers(0, x.size, max(2, x.size // 10))] = np.nan
    x.flat[rng.integers(0, x.size, 3)] = -np.inf
    flat = np.concatenate([[0.0], x.ravel()]).astype(dtype)
    for arr in (x, flat[1:].reshape(shape)):  # aligned, and 4 bytes off 16-byte alignment
        y, ind = F.max_pool2d(xp.asarray(arr), 2, 2, return_indices=True)
        yr, ir = R.max_pool2d(x.astype(np.float64), 2, 2, return_indices=True)
        assert np.array_equal(to_numpy(ind), ir)
        assert np.array_equal(to_numpy(y), yr.astype(dtype), equal_nan=True)
        assert np.array_equal(to_numpy(F.max_pool2d(xp.asarray(arr), 2, 2)), yr.astype(dtype), equal_nan=True)
    if torch is not None:
        yt, it = TF.max_pool2d(torch.from_numpy(x), 2, 2, return_indices=True)
        assert np.array_equal(to_numpy(ind), it.numpy())


# Its backward writes each dx element once (dy where the window's index points, 0 elsewhere) while
# every index lies in its own window, and redoes a plane by the general scatter at the first one
# that does not (any in-plane index is legal input); -1 passes nothing, out-of-plane raises.
@pytest.mark.parametrize("shape", [(2, 3, 6, 2), (1, 2, 5, 7), (2, 1, 4, 9), (1, 2, 7, 24), (2, 2, 8, 31)])
def test_max_pool2d_2x2_s2_backward_matches_scatter(xp, dtype, shape, simd_level):
    rng = np.random.default_rng(sum(shape) + 1)
    x = rng.integers(0, 3, size=shape).astype(dtype)
    x.flat[rng.integers(0, x.size, 3)] = np.nan
    y, ind = F.max_pool2d(xp.asarray(x), 2, 2, return_indices=True)
    dy = rand(rng, y.shape, dtype, xp)
    ind_h = to_numpy(ind)
    wild = ind_h.copy()  # plane 0: one index outside its window; plane 1: a -1
    wild[0, 0, -1, -1] = 0
    wild.reshape(-1, *wild.shape[2:])[min(1, wild.shape[0] * wild.shape[1] - 1), 0, 0] = -1
    for ii in (ind_h, wild):
        got = F.max_pool2d_backward(dy, xp.asarray(ii), shape, 2, 2)
        assert_close(got, _scatter_oracle(to_numpy(dy), ii, shape), dtype)
    bad = ind_h.copy()
    bad[-1, -1, 0, 0] = shape[2] * shape[3]
    with pytest.raises(ValueError, match="indices"):
        F.max_pool2d_backward(dy, xp.asarray(bad), shape, 2, 2)


# The 2x2 backward's 8-output step checks each index against its window from the low 32 bits
# plus a zero high half: an index outside its window anywhere in those 8 lanes (in-plane: the
# plane is redone by the scatter; low bits aliasing a window position + 2^32: out of range) must
# not be taken for the window position its low bits name.
@pytest.mark.parametrize("shape", [(1, 2, 4, 16), (2, 1, 6, 35)])
@pytest.mark.parametrize("lane", [0, 3, 4, 7])
def test_max_pool2d_2x2_s2_backward_checks_every_lane_of_8(dtype, shape, lane):
    rng = np.random.default_rng(lane + shape[3])
    x = rand(rng, shape, dtype)
    y, ind = F.max_pool2d(x, 2, 2, return_indices=True)
    dy = rand(rng, y.shape, dtype)
    wild = ind.copy()
    w0 = wild[0, 0, 1, lane]  # output row 1: window origin 2 * W + 2 * lane
    wild[0, 0, 1, lane] = w0 + 2 if (w0 % shape[3]) < shape[3] - 2 else w0 - 2  # the next window over
    got = F.max_pool2d_backward(dy, wild, shape, 2, 2)
    assert_close(got, _scatter_oracle(dy, wild, shape), dtype)
    for off in (1 << 32, -(1 << 32), 1 << 33):
        alias = ind.copy()
        alias[0, -1, 1, lane] += off
        with pytest.raises(ValueError, match="indices"):
            F.max_pool2d_backward(dy, alias, shape, 2, 2)


# --- max-pool backward on a large dx (> 16 MiB, planes past the L1-sized fast path) ---
# Planes built in scratch and streamed out (non-temporal stores) starting at every alignment
# (odd H*W) on several threads, and
# bad indices still raise. Oracle: np.add.at over the argmax indices (independent of the kernel).

def _scatter_oracle(dy, ind, x_shape):
    """grad_x[n, c].flat[ind] += dy, -1 entries skipped, in float64 (np.add.at: independent of the kernel)."""
    planes, hw = x_shape[0] * x_shape[1], x_shape[2] * x_shape[3]
    want = np.zeros((planes, hw))
    rows = np.repeat(np.arange(planes), ind[0, 0].size)
    keep = ind.reshape(-1) >= 0
    np.add.at(want, (rows[keep], ind.reshape(-1)[keep]), dy.reshape(-1).astype(np.float64)[keep])
    return want.reshape(x_shape)


@pytest.mark.parametrize("dtype_", [np.float32, np.float64])
def test_max_pool2d_backward_large_dx_matches_scatter(dtype_):
    rng = np.random.default_rng(31)
    n, c, h, w = (4, 43, 163, 171) if dtype_ == np.float32 else (3, 33, 163, 171)
    assert n * c * h * w * np.dtype(dtype_).itemsize > (16 << 20)
    x = rand(rng, (n, c, h, w), dtype_)
    y, ind = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    dy = rand(rng, y.shape, dtype_)
    dx = F.max_pool2d_backward(dy, ind, x.shape, 3, 2, 1)
    assert_close(dx, _scatter_oracle(dy, ind, x.shape), dtype_)
    bad = ind.copy()
    bad[-1, -1, -1, -1] = h * w
    with pytest.raises(ValueError, match=r"indices out of range"):
        F.max_pool2d_backward(dy, bad, x.shape, 3, 2, 1)


# The streamed path sends each row of dx out once no later output row's window reaches it; an
# index outside its window's rows (legal input: backward is a scatter) must send the plane to the
# build-then-copy path. Geometries: dilation, ceil_mode, stride > kernel (rows in no window),
# stride 1; indices outside their windows in the first, middle and last output rows, and -1.
@pytest.mark.parametrize("k,s,p,d,ceil", [(3, 2, 1, 1, False), (2, 2, 0, 1, True), (3, 3, 1, 2, True),
                                          (2, 3, 0, 1, True), (5, 1, 2, 1, False)])
def test_max_pool2d_backward_streamed_rows_any_indices(k, s, p, d, ceil):
    rng = np.random.default_rng(k * 100 + s * 10 + d)
    n, c, h, w = 2, 41, 227, 231
    assert n * c * h * w * 4 > (16 << 20)
    x = rand(rng, (n, c, h, w), np.float32)
    y, ind = F.max_pool2d(x, k, s, p, d, ceil_mode=ceil, return_indices=True)
    dy = rand(rng, y.shape, np.float32)
    ind = ind.copy()
    oh = y.shape[2]
    for plane, row in [(0, 0), (3, oh // 2), (5, oh - 1), (c + 7, oh // 3)]:
        ind[plane // c, plane % c, row, rng.integers(0, y.shape[3])] = rng.integers(0, h * w)
    ind[1, 1, oh // 2, :5] = -1  # passes nothing
    ind[1, 2, 0, 0] = h * w - 1  # far below its window: the first row must not be streamed early
    dx = F.max_pool2d_backward(dy, ind, x.shape, k, s, p, d, ceil_mode=ceil)
    assert_close(dx, _scatter_oracle(dy, ind, x.shape), np.float32)


# The max-pool backward streams large dx out through a cache-resident plane (chosen by size);
# both it (1) and the direct scatter (2) are forced here on small shapes, ties included.
@pytest.mark.parametrize("mode", [1, 2], ids=["streamed", "direct"])
@pytest.mark.parametrize("shape,k,s,p", [((2, 3, 7, 8), 3, 2, 1), ((1, 5, 13, 11), 2, 2, 0),
                                         ((3, 2, 9, 9), 3, 1, 1), ((1, 1, 1, 1), 1, 1, 0)])
def test_max_pool2d_backward_every_path_forced(dtype, mode, shape, k, s, p):
    from pydl import _backend
    rng = np.random.default_rng(4)
    x = rng.integers(0, 3, size=shape).astype(dtype)  # ties
    y, ind = F.max_pool2d(x, k, s, p, return_indices=True)
    dy = rand(rng, y.shape, dtype, np)
    want = R.max_pool2d_backward(dy.astype(np.float64), ind, shape, k, s, p)
    cpu = _backend.cpu()
    old = cpu._set_max_pool_backward_stream(mode)
    try:
        got = F.max_pool2d_backward(dy, ind, shape, k, s, p)
    finally:
        cpu._set_max_pool_backward_stream(old)
    assert_close(got, want, dtype)
