"""linear against the float64 NumPy reference on both backends and dtypes (shapes that take each
thread split, empty dimensions, views), its backward against finite differences, the 32-bit BLAS
chunking, bad arguments, and nn.Linear over it."""
import numpy as np
import pytest

import pydl.functional as F
import pydl.nn as nn
import pydl.reference as R
from pydl import _backend

from conftest import assert_close, numerical_grad, rand, to_numpy

# (id, x shape, out_features, bias)
CONFIGS = [
    ("2d", (4, 5), 3, True),
    ("3d_nobias", (2, 3, 4), 2, False),
    ("1d", (7,), 3, True),
    ("one", (1, 1), 1, True),
    ("batch0", (0, 5), 3, True),
    ("batch0_3d", (2, 0, 4), 6, True),
    ("in0", (3, 0), 2, True),           # the forward is the bias, the weight gradient empty
    ("in0_nobias", (3, 0), 2, False),   # zeros
    ("out0", (4, 5), 0, True),          # empty output, zero input gradient
    ("cols", (64, 96), 80, True),       # threaded, column blocks (fewer rows than columns)
    ("rows", (300, 40), 30, True),      # threaded, row blocks; weight gradient by columns
    ("wrows", (200, 30), 50, False),    # weight gradient by rows (out_features >= in_features)
    ("bias_cols", (1000, 8), 40, True),  # bias gradient threaded over column blocks
    ("4d", (2, 3, 5, 7), 9, True),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_linear_matches_reference(xp, dtype, cfg):
    _, xs, n_out, has_bias = cfg
    rng = np.random.default_rng(1)
    x = rand(rng, xs, dtype, xp)
    w = rand(rng, (n_out, xs[-1]), dtype, xp)
    b = rand(rng, (n_out,), dtype, xp) if has_bias else None
    x0, w0 = to_numpy(x).copy(), to_numpy(w).copy()
    b0 = None if b is None else to_numpy(b).copy()
    f64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    y = F.linear(x, w, b)
    assert type(y) is type(x) and y.dtype == dtype and y.shape == xs[:-1] + (n_out,)
    assert_close(y, R.linear(f64(x0), f64(w0), f64(b0)), dtype)
    dy = rand(rng, y.shape, dtype, xp)
    dy0 = to_numpy(dy).copy()
    want = R.linear_backward(f64(dy0), f64(x0), f64(w0))
    got = F.linear_backward(dy, x, w)
    for g, e, shape in zip(got, want, (xs, (n_out, xs[-1]), (n_out,))):
        assert g.dtype == dtype and g.shape == shape
        assert_close(g, e, dtype)
    for a, a0 in ((x, x0), (w, w0), (b, b0), (dy, dy0)):
        assert a is None or np.array_equal(to_numpy(a), a0)  # inputs unmodified


def test_linear_noncontiguous(xp, dtype):
    rng = np.random.default_rng(2)
    x = rand(rng, (6, 5, 8), dtype, xp)[::2, :, ::-1]        # (3, 5, 8), strided
    w = xp.asfortranarray(rand(rng, (7, 8), dtype, xp))       # Fortran order
    b = rand(rng, (14,), dtype, xp)[::2]
    y = F.linear(x, w, b)
    f = lambda a: to_numpy(a).astype(np.float64)  # noqa: E731
    assert_close(y, R.linear(f(x), f(w), f(b)), dtype)
    dy = xp.swapaxes(rand(rng, (3, 7, 5), dtype, xp), 1, 2)
    for g, e in zip(F.linear_backward(dy, x, w), R.linear_backward(f(dy), f(x), f(w))):
        assert_close(g, e, dtype)


@pytest.mark.parametrize("mask", [(True, False, False), (False, True, False), (False, False, True),
                                  (False, False, False), (True, True, False)])
def test_linear_backward_output_mask(xp, mask):
    rng = np.random.default_rng(3)
    x, w, dy = rand(rng, (4, 3), np.float64, xp), rand(rng, (5, 3), np.float64, xp), rand(rng, (4, 5), np.float64, xp)
    got = F.linear_backward(dy, x, w, output_mask=mask)
    want = R.linear_backward(to_numpy(dy), to_numpy(x), to_numpy(w))
    for m, g, e in zip(mask, got, want):
        if m:
            assert_close(g, e, np.float64)
        else:
            assert g is None


def test_linear_backward_matches_finite_differences(xp):
    rng = np.random.default_rng(4)
    x, w, b = rng.uniform(-1, 1, (2, 3, 4)), rng.uniform(-1, 1, (5, 4)), rng.uniform(-1, 1, 5)
    dy = rng.uniform(-1, 1, (2, 3, 5))
    gx, gw, gb = F.linear_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(w))
    assert_close(gx, numerical_grad(lambda a: R.linear(a, w, b), x, dy), np.float64, factor=1e3)
    assert_close(gw, numerical_grad(lambda a: R.linear(x, a, b), w, dy), np.float64, factor=1e3)
    assert_close(gb, numerical_grad(lambda a: R.linear(x, w, a), b, dy), np.float64, factor=1e3)


@pytest.mark.parametrize("lim", [1, 3, 7])
def test_linear_blas_chunking(lim):
    """pydl::gemm cuts sizes past 32 bits into chunks; a lowered limit runs those paths here, in
    every GEMM of the op (row/column blocks, transposed weight gradient)."""
    cpu = _backend.cpu()
    rng = np.random.default_rng(5)
    for xs, n_out in (((6, 9), 5), ((64, 96), 80), ((300, 40), 30)):
        x, w, b = rng.standard_normal(xs), rng.standard_normal((n_out, xs[-1])), rng.standard_normal(n_out)
        dy = rng.standard_normal(xs[:-1] + (n_out,))
        want = [F.linear(x, w, b), *F.linear_backward(dy, x, w)]
        old = cpu._set_blas_int_max(lim)
        try:
            got = [F.linear(x, w, b), *F.linear_backward(dy, x, w)]
        finally:
            cpu._set_blas_int_max(old)
        for g, e in zip(got, want):
            np.testing.assert_allclose(g, e, rtol=0, atol=1e-12 * max(1.0, np.abs(e).max()))


def test_linear_deterministic(xp):
    rng = np.random.default_rng(6)
    x, w = rand(rng, (300, 40), np.float32, xp), rand(rng, (30, 40), np.float32, xp)
    dy = rand(rng, (300, 30), np.float32, xp)
    a = [to_numpy(v) for v in F.linear_backward(dy, x, w)]
    b = [to_numpy(v) for v in F.linear_backward(dy, x, w)]
    assert all(np.array_equal(u, v) for u, v in zip(a, b))


def test_linear_bad_inputs(xp):
    x, w, b = xp.zeros((2, 3), np.float32), xp.zeros((4, 3), np.float32), xp.zeros(4, np.float32)
    with pytest.raises(ValueError, match="x: expected last dimension 3"):
        F.linear(xp.zeros((2, 5), np.float32), w)
    with pytest.raises(ValueError, match="weight: expected a 2-D array"):
        F.linear(x, xp.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"bias: expected shape \(4,\)"):
        F.linear(x, w, xp.zeros(3, np.float32))
    with pytest.raises(ValueError, match="bias: expected a 1-D array"):
        F.linear(x, w, xp.zeros((1, 4), np.float32))
    with pytest.raises(TypeError, match="weight: expected dtype float32"):
        F.linear(x, w.astype(np.float64))
    with pytest.raises(TypeError, match="bias: expected dtype float32"):
        F.linear(x, w, b.astype(np.float64))
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
        F.linear(xp.zeros((2, 3), np.int64), w)
    with pytest.raises(ValueError, match="x: expected an array of 1 or more dimensions"):
        F.linear(xp.zeros((), np.float32), w)
    with pytest.raises(TypeError, match="x: expected a numpy.ndarray"):
        F.linear([[1.0, 2.0, 3.0]], w)
    with pytest.raises(ValueError, match=r"grad_out: expected shape \(2, 4\)"):
        F.linear_backward(xp.zeros((2, 3), np.float32), x, w)
    with pytest.raises(TypeError, match="grad_out: expected dtype float32"):
        F.linear_backward(xp.zeros((2, 4), np.float64), x, w)
    with pytest.raises(ValueError, match="output_mask"):
        F.linear_backward(xp.zeros((2, 4), np.float32), x, w, output_mask=(True, True))


def test_linear_layer_3d_and_accumulation(xp):
    nn.init.manual_seed(0)
    lin = nn.Linear(4, 3).double().to("cpu" if xp is np else "cuda")
    rng = np.random.default_rng(7)
    x = rand(rng, (2, 5, 4), np.float64, xp)
    w, b = to_numpy(lin.weight.data), to_numpy(lin.bias.data)
    assert_close(lin(x), R.linear(to_numpy(x), w, b), np.float64)
    dy = rand(rng, (2, 5, 3), np.float64, xp)
    gx, gw, gb = R.linear_backward(to_numpy(dy), to_numpy(x), w)
    assert_close(lin.backward(dy), gx, np.float64)
    lin(x)
    lin.backward(dy)  # gradients accumulate
    assert_close(lin.weight.grad, 2 * gw, np.float64)
    assert_close(lin.bias.grad, 2 * gb, np.float64)
