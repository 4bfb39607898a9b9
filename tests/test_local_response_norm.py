"""local_response_norm against the float64 NumPy reference and PyTorch, on both backends and dtypes;
the backward against finite differences of the reference; nn.LocalResponseNorm."""
import numpy as np
import pytest

import pydl.functional as F
import pydl.nn as nn
import pydl.reference as R  # (the submodule name is shadowed by its function)
from pydl import testing

from conftest import assert_close, numerical_grad, rand, to_numpy

# (x shape, size, alpha, beta, k)
CONFIGS = [
    ((2, 7, 5), 3, 1e-4, 0.75, 1.0),             # 3-D input
    ((2, 9, 4, 3), 5, 0.5, 0.75, 2.0),            # 4-D, the AlexNet exponent (sqrt path)
    ((1, 6, 3, 5), 2, 0.3, 0.6, 1.5),             # even size: window c-1 .. c
    ((3, 4, 2, 2), 1, 0.9, 0.5, 1.0),             # size 1, beta 0.5
    ((2, 5, 3, 2), 4, 0.7, 1.0, 0.5),             # beta 1
    ((1, 3, 7, 1), 9, 2.0, 0.8, 1.0),             # window wider than C
    ((2, 1, 6), 3, 0.4, 0.75, 1.0),               # one channel
    ((1, 12, 70), 5, 0.6, 0.7, 1.2),              # several lane blocks (CPU block of 64 columns)
    ((2, 8, 2, 3, 2), 3, 0.5, 0.9, 1.0),          # 5-D
    ((1, 200, 2), 7, 0.8, 0.75, 1.0),             # long channel axis: sliding sums stay exact enough
    ((0, 4, 3, 3), 3, 1e-4, 0.75, 1.0),           # empty batch
    ((2, 5, 0), 3, 1e-4, 0.75, 1.0),              # empty trailing axis
]


def ids(configs):
    return [str(i) for i in range(len(configs))]


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids(CONFIGS))
def test_local_response_norm_matches_reference(xp, dtype, cfg):
    shape, size, alpha, beta, k = cfg
    rng = np.random.default_rng(1)
    x = rand(rng, shape, dtype, xp, low=-2, high=2)
    x0 = to_numpy(x).copy()
    y = F.local_response_norm(x, size, alpha, beta, k)
    assert type(y) is type(x) and y.dtype == dtype and y.shape == x.shape
    assert_close(y, R.local_response_norm(x0.astype(np.float64), size, alpha, beta, k), dtype)
    dy = rand(rng, shape, dtype, xp)
    dy0 = to_numpy(dy).copy()
    dx = F.local_response_norm_backward(dy, x, size, alpha, beta, k)
    assert dx.dtype == dtype and dx.shape == x.shape
    want = R.local_response_norm_backward(dy0.astype(np.float64), x0.astype(np.float64), size, alpha, beta, k)
    assert_close(dx, want, dtype)
    assert np.array_equal(to_numpy(x), x0) and np.array_equal(to_numpy(dy), dy0)  # inputs unmodified


def test_local_response_norm_defaults_and_noncontiguous(xp, dtype):
    rng = np.random.default_rng(2)
    base = rand(rng, (3, 10, 6, 7), dtype, xp, low=-30, high=30)  # large values: the scale matters
    x = base[::2, 1::2, :, ::-1]
    y = F.local_response_norm(x, 3)
    assert_close(y, R.local_response_norm(to_numpy(x).astype(np.float64), 3), dtype)
    dy = xp.swapaxes(rand(rng, (2, 5, 7, 6), dtype, xp), 2, 3)
    dx = F.local_response_norm_backward(dy, x, 3)
    want = R.local_response_norm_backward(to_numpy(dy).astype(np.float64), to_numpy(x).astype(np.float64), 3)
    assert_close(dx, want, dtype)


@pytest.mark.parametrize("cfg", [((2, 6, 3), 3, 0.5, 0.75, 1.0), ((1, 5, 2, 2), 4, 0.8, 0.6, 0.7),
                                 ((1, 4, 3), 6, 1.5, 1.3, 2.0)], ids=["odd", "even", "wide"])
def test_local_response_norm_backward_matches_finite_differences(xp, cfg):
    shape, size, alpha, beta, k = cfg
    rng = np.random.default_rng(3)
    x = rng.uniform(-1.5, 1.5, shape)
    dy = rng.uniform(-1, 1, shape)
    want = numerical_grad(lambda a: R.local_response_norm(a, size, alpha, beta, k), x, dy)
    got = F.local_response_norm_backward(xp.asarray(dy), xp.asarray(x), size, alpha, beta, k)
    assert_close(got, want, np.float64, factor=1e3)
    assert_close(R.local_response_norm_backward(dy, x, size, alpha, beta, k), want, np.float64, factor=1e3)


def test_local_response_norm_torch_parity(xp):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    for shape, size, alpha, beta, k in CONFIGS:
        if 0 in shape:
            continue
        x = rng.uniform(-2, 2, shape)
        xt = torch.from_numpy(x).requires_grad_()
        yt = torch.nn.functional.local_response_norm(xt, size, alpha, beta, k)
        dy = rng.uniform(-1, 1, shape)
        yt.backward(torch.from_numpy(dy))
        assert_close(F.local_response_norm(xp.asarray(x), size, alpha, beta, k), yt.detach().numpy(), np.float64)
        assert_close(F.local_response_norm_backward(xp.asarray(dy), xp.asarray(x), size, alpha, beta, k),
                     xt.grad.numpy(), np.float64)


def test_local_response_norm_deterministic(xp, dtype):
    rng = np.random.default_rng(5)
    x = rand(rng, (4, 16, 9, 11), dtype, xp)
    dy = rand(rng, x.shape, dtype, xp)
    a = to_numpy(F.local_response_norm_backward(dy, x, 5, 0.1, 0.75, 1.0))
    b = to_numpy(F.local_response_norm_backward(dy, x, 5, 0.1, 0.75, 1.0))
    assert np.array_equal(a, b)


def test_local_response_norm_bad_inputs(xp):
    x = xp.zeros((2, 3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="x: expected an array of 3 or more"):
        F.local_response_norm(xp.zeros((2, 3), dtype=np.float32), 3)
    with pytest.raises(TypeError, match="x: expected dtype"):
        F.local_response_norm(xp.zeros((2, 3, 4), dtype=np.int64), 3)
    with pytest.raises(ValueError, match="size"):
        F.local_response_norm(x, 0)
    with pytest.raises(TypeError, match="size"):
        F.local_response_norm(x, 2.5)
    with pytest.raises(TypeError, match="alpha"):
        F.local_response_norm(x, 3, alpha="a")
    with pytest.raises(ValueError, match="beta"):
        F.local_response_norm(x, 3, beta=float("inf"))
    with pytest.raises(ValueError, match="grad_out: expected shape"):
        F.local_response_norm_backward(xp.zeros((2, 3, 5), dtype=np.float32), x, 3)
    with pytest.raises(TypeError, match="grad_out: expected dtype float32"):
        F.local_response_norm_backward(xp.zeros((2, 3, 4), dtype=np.float64), x, 3)
    with pytest.raises(TypeError, match="x: expected a numpy.ndarray"):
        F.local_response_norm([[[1.0]]], 3)


def _dev(xp):
    return "cpu" if xp is np else "cuda"


def test_local_response_norm_layer(xp):
    layer = nn.LocalResponseNorm(3, alpha=0.5, beta=0.75, k=1.0).to(_dev(xp))
    x = rand(np.random.default_rng(6), (2, 5, 3, 2), np.float64, xp, low=-2, high=2)
    y = layer(x)
    assert_close(y, R.local_response_norm(to_numpy(x), 3, 0.5, 0.75, 1.0), np.float64)
    dy = rand(np.random.default_rng(7), y.shape, np.float64, xp)
    want = R.local_response_norm_backward(to_numpy(dy), to_numpy(x), 3, 0.5, 0.75, 1.0)
    assert_close(layer.backward(dy), want, np.float64)
    assert testing.gradcheck(layer, x)
    assert "LocalResponseNorm(3" in repr(layer)
    with pytest.raises(RuntimeError, match="forward first"):
        nn.LocalResponseNorm(3).backward(dy)
    with pytest.raises(ValueError, match="size"):
        nn.LocalResponseNorm(0)
