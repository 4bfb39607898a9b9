"""Elementwise activations (relu, relu6, leaky_relu, hardtanh, silu, hardswish, sigmoid, tanh) against
their float64 NumPy twins on both backends and dtypes; backwards against finite differences; PyTorch's
values at the kinks and for NaN; ``out=`` / ``inplace=`` (aliasing, views, overlap); bad arguments;
the pydl.nn layers over them."""
import zlib

import numpy as np
import pytest

import pydl.functional as F
import pydl.nn as nn
import pydl.reference as R
from pydl import testing

from conftest import assert_close, numerical_grad, rand, to_numpy

# (id, name, params, what the backward takes: "x" (the input) or "y" (the output))
ACTS = [
    ("relu", "relu", {}, "x"),
    ("relu6", "relu6", {}, "x"),
    ("leaky_relu", "leaky_relu", {"negative_slope": 0.2}, "x"),
    ("leaky_relu_default", "leaky_relu", {}, "x"),
    ("leaky_relu_negative", "leaky_relu", {"negative_slope": -0.3}, "x"),
    ("hardtanh", "hardtanh", {"min_val": -0.5, "max_val": 2.0}, "x"),
    ("hardtanh_default", "hardtanh", {}, "x"),
    ("silu", "silu", {}, "x"),
    ("hardswish", "hardswish", {}, "x"),
    ("sigmoid", "sigmoid", {}, "y"),
    ("tanh", "tanh", {}, "y"),
]
ACT_IDS = [a[0] for a in ACTS]
NAMES = ["relu", "relu6", "leaky_relu", "hardtanh", "silu", "hardswish", "sigmoid", "tanh"]

# 0-size, 0-d, one element, odd sizes; 21594 elements take the threaded path of the exp/tanh
# activations (2**14), 75579 that of all of them (2**16), with a ragged last slice.
SHAPES = [(0,), (2, 0, 3), (), (1,), (7,), (3, 5, 7), (2, 3, 61, 59), (3, 7, 61, 59)]


def fns(name):
    return getattr(F, name), getattr(F, name + "_backward"), getattr(R, name), getattr(R, name + "_backward")


def _x(rng, shape, dtype, xp):
    # [-8, 8] crosses every kink (0, +-3, 6, the hardtanh bounds) and saturates sigmoid/tanh
    return rand(rng, shape, dtype, xp, -8.0, 8.0)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_activation_matches_reference(xp, dtype, act, shape):
    _, name, params, takes = act
    f, fb, rf, rb = fns(name)
    rng = np.random.default_rng(zlib.crc32(f"{act[0]} {shape}".encode()))
    x = _x(rng, shape, dtype, xp)
    x0 = to_numpy(x).copy()
    y = f(x, **params)
    assert type(y) is type(x) and y.dtype == dtype and y.shape == x.shape
    assert_close(y, rf(x0.astype(np.float64), **params), dtype)
    g = rand(rng, shape, dtype, xp)
    g0 = to_numpy(g).copy()
    v = y if takes == "y" else x
    v0 = to_numpy(v).copy()
    dx = fb(g, v, **params)
    assert type(dx) is type(x) and dx.dtype == dtype and dx.shape == x.shape
    assert_close(dx, rb(g0.astype(np.float64), v0.astype(np.float64), **params), dtype)
    # inputs never modified
    assert np.array_equal(to_numpy(x), x0) and np.array_equal(to_numpy(g), g0)
    assert np.array_equal(to_numpy(v), v0)


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_activation_noncontiguous(xp, dtype, act):
    _, name, params, takes = act
    f, fb, rf, rb = fns(name)
    rng = np.random.default_rng(2)
    base = _x(rng, (5, 9, 8, 7), dtype, xp)
    x = base[::2, 1::3, :, ::-1]  # strided, negative stride
    y = f(x, **params)
    assert y.shape == x.shape
    xn = to_numpy(x).astype(np.float64)
    assert_close(y, rf(xn, **params), dtype)
    g = xp.swapaxes(rand(rng, (3, 3, 7, 8), dtype, xp), 2, 3)  # transposed
    v = xp.asfortranarray(y) if takes == "y" else x
    dx = fb(g, v, **params)
    assert_close(dx, rb(to_numpy(g).astype(np.float64), to_numpy(v).astype(np.float64), **params), dtype)


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_activation_threaded_path_matches_serial(act):
    """The threaded path (one slice per thread) gives the same bits as small single-thread calls."""
    _, name, params, takes = act
    f, fb, _, _ = fns(name)
    rng = np.random.default_rng(3)
    for dt in (np.float32, np.float64):
        x = _x(rng, (3 * 2**16 + 5,), dt, np)
        g = rand(rng, x.shape, dt)
        y = f(x, **params)
        v = y if takes == "y" else x
        dx = fb(g, v, **params)
        parts = [(f(x[i:i + 999], **params), fb(g[i:i + 999], v[i:i + 999], **params))
                 for i in range(0, x.size, 999)]
        assert np.array_equal(y, np.concatenate([p[0] for p in parts]))
        assert np.array_equal(dx, np.concatenate([p[1] for p in parts]))


def _away_from_kinks(rng, shape, params):
    kinks = [0.0, -3.0, 3.0, 6.0, params.get("min_val", -1.0), params.get("max_val", 1.0)]
    x = rng.uniform(-7, 7, shape)
    for k in kinks:
        near = np.abs(x - k) < 1e-3
        x[near] += 2e-3
    return x


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_activation_backward_matches_finite_differences(xp, act):
    _, name, params, takes = act
    f, fb, rf, rb = fns(name)
    rng = np.random.default_rng(4)
    x = _away_from_kinks(rng, (4, 9), params)
    dy = rng.uniform(-1, 1, x.shape)
    want = numerical_grad(lambda a: rf(a, **params), x, dy)
    v = rf(x, **params) if takes == "y" else x
    assert_close(fb(xp.asarray(dy), xp.asarray(v), **params), want, np.float64, factor=1e3)
    assert_close(rb(dy, v, **params), want, np.float64, factor=1e3)


def test_activation_kinks_follow_pytorch(xp, dtype):
    """The derivative at a kink is PyTorch's: relu'(0) = 0, relu6' and hardtanh' 0 at both bounds,
    leaky_relu'(0) = negative_slope, hardswish'(-3) = -1/2 and hardswish'(3) = 3/2."""
    def grad(name, x, **p):
        xa = xp.asarray(np.array(x, dtype))
        return to_numpy(getattr(F, name + "_backward")(xp.ones_like(xa) * 2, xa, **p))

    assert np.array_equal(grad("relu", [0.0, -0.0, 1e-30]), [0, 0, 2])
    assert np.array_equal(grad("relu6", [0.0, 6.0, 5.5]), [0, 0, 2])
    assert np.array_equal(grad("hardtanh", [-1.0, 1.0, 0.0]), [0, 0, 2])
    assert np.array_equal(grad("hardtanh", [-0.5, 2.0], min_val=-0.5, max_val=2.0), [0, 0])
    assert np.array_equal(grad("hardtanh", [0.25, 0.5], min_val=0.25, max_val=0.25), [0, 0])
    assert np.array_equal(grad("leaky_relu", [0.0, 1e-30], negative_slope=0.25), [0.5, 2])
    assert np.array_equal(grad("hardswish", [-3.0, 3.0, -3.5, 3.5]), [-1, 3, 0, 2])
    # the forward at the kinks
    x = xp.asarray(np.array([-3.0, 3.0, 0.0, 6.0], dtype))
    assert np.array_equal(to_numpy(F.hardswish(x)), [0, 3, 0, 6])
    assert np.array_equal(to_numpy(F.relu6(x)), [0, 3, 0, 6])


def test_activation_nan_and_inf_as_pytorch(xp, dtype):
    nan, inf = float("nan"), float("inf")
    x = xp.asarray(np.array([nan, -inf, inf, 0.0, -50.0, 50.0, -1e4, 1e4], dtype))
    g = xp.asarray(np.full(8, 2.0, dtype))
    for name in NAMES:
        y = to_numpy(getattr(F, name)(x))
        assert np.isnan(y[0]), name  # relu(NaN) = NaN, and every other one
        want = getattr(R, name)(to_numpy(x))
        assert np.array_equal(np.isnan(y), np.isnan(want)), name
        fin = ~np.isnan(want)
        np.testing.assert_allclose(y[fin], want[fin], rtol=1e-6, atol=1e-30, err_msg=name)
    # backward at NaN: the comparisons are false, as in PyTorch's kernels
    xn = xp.asarray(np.array([nan], dtype))
    gn = xp.asarray(np.array([2.0], dtype))
    assert to_numpy(F.relu_backward(gn, xn))[0] == 2
    assert to_numpy(F.relu6_backward(gn, xn))[0] == 2
    assert to_numpy(F.hardtanh_backward(gn, xn))[0] == 2
    assert to_numpy(F.hardswish_backward(gn, xn))[0] == 2
    assert to_numpy(F.leaky_relu_backward(gn, xn, 0.25))[0] == 0.5
    for name in ("silu", "sigmoid", "tanh"):
        assert np.isnan(to_numpy(getattr(F, name + "_backward")(gn, xn))[0]), name
    # finite gradients at large |x|
    for name in ("silu", "hardswish"):
        d = to_numpy(getattr(F, name + "_backward")(g[3:], x[3:]))
        assert np.isfinite(d).all(), name


def test_exp_activations_over_floats_whole_range(xp, dtype):
    """silu and sigmoid (float32 on the CPU: a vectorized e^x of its own) against float64 over the
    range where e^-x goes from overflow to underflow, both clamps and their neighbours included,
    with a fine grid around 0 where the reduction's n is 0 and +-1."""
    edges = np.array([-110, -104, -103.9, -89, -88.8, -88.7, -87.4, 87.4, 88.7, 88.8, 89, 104, 110])
    x64 = np.concatenate([np.linspace(-110, 110, 20011), np.linspace(-1.5, 1.5, 3001), edges])
    x = xp.asarray(x64.astype(dtype))
    xr = to_numpy(x).astype(np.float64)
    with np.errstate(over="ignore"):
        for name in ("silu", "sigmoid"):
            y, want = to_numpy(getattr(F, name)(x)), getattr(R, name)(xr)
            # silu(x) = x / (1 + e^-x) is -0 where e^-x overflows (x < -88.7, as with libm's expf):
            # below 1e-35 the error is absolute
            np.testing.assert_allclose(y, want, rtol=4 * np.finfo(dtype).eps, atol=1e-35, err_msg=name)


# ---------------------------------------------------------------- out= and inplace=

@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_activation_out_aliases_input(xp, dtype, act):
    _, name, params, takes = act
    f, fb, rf, rb = fns(name)
    rng = np.random.default_rng(5)
    x = _x(rng, (3, 70001), dtype, xp)  # threaded, in place
    want = rf(to_numpy(x).astype(np.float64), **params)
    buf = x.copy()
    assert f(buf, out=buf, **params) is buf
    assert_close(buf, want, dtype)
    if name not in ("sigmoid", "tanh"):  # PyTorch's own inplace argument
        buf = x.copy()
        assert f(buf, inplace=True, **params) is buf
        assert_close(buf, want, dtype)
    # backward into grad_out, and into the saved array
    g = rand(rng, x.shape, dtype, xp)
    v = f(x, **params) if takes == "y" else x
    want = rb(to_numpy(g).astype(np.float64), to_numpy(v).astype(np.float64), **params)
    gg = g.copy()
    assert fb(gg, v, out=gg, **params) is gg
    assert_close(gg, want, dtype)
    vv = v.copy()
    assert fb(g, vv, out=vv, **params) is vv
    assert_close(vv, want, dtype)


@pytest.mark.parametrize("name", NAMES)
def test_activation_out_views_and_overlap(xp, dtype, name):
    f, fb, rf, rb = fns(name)
    rng = np.random.default_rng(6)
    x = _x(rng, (4, 6, 5), dtype, xp)
    want = rf(to_numpy(x).astype(np.float64))
    # a separate contiguous out
    out = xp.empty_like(x)
    assert f(x, out=out) is out
    assert_close(out, want, dtype)
    # a strided out
    big = xp.zeros((4, 6, 10), dtype)
    out = big[:, :, ::2]
    assert f(x, out=out) is out
    assert_close(out, want, dtype)
    assert (to_numpy(big)[:, :, 1::2] == 0).all()
    # inplace on a non-contiguous input writes into the view
    base = x.copy()
    view = base.transpose(2, 0, 1)
    if name not in ("sigmoid", "tanh"):
        assert f(view, inplace=True) is view
        assert_close(base, want, dtype)
    # out overlapping the input, shifted by one element: computed from the original x
    flat = xp.zeros(x.size + 1, dtype)
    flat[:-1] = x.reshape(-1)
    src, dst = flat[:-1], flat[1:]
    assert f(src, out=dst) is dst
    assert_close(dst, want.reshape(-1), dtype)


def test_activation_out_rejected(xp):
    x = xp.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="out: expected dtype float32"):
        F.relu(x, out=xp.zeros((2, 3), np.float64))
    with pytest.raises(ValueError, match=r"out: expected shape \(2, 3\)"):
        F.silu(x, out=xp.zeros((3, 2), np.float32))
    with pytest.raises(TypeError, match="out: expected a numpy.ndarray"):
        F.tanh(x, out=[0.0] * 6)
    with pytest.raises(ValueError, match="out: expected None or x itself"):
        F.relu(x, True, out=xp.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="inplace: expected a bool"):
        F.relu6(x, 1)
    with pytest.raises(TypeError, match="out: expected dtype float32"):
        F.relu_backward(x, x, out=xp.zeros((2, 3), np.float64))
    if xp is np:
        ro = np.zeros((2, 3), np.float32)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match="out: expected a writeable array"):
            F.hardswish(x, out=ro)
        with pytest.raises(ValueError, match="x: expected a writeable array"):
            F.relu(ro, inplace=True)
        assert (ro == 0).all()


def test_activation_bad_inputs(xp):
    x = xp.zeros((2, 3), np.float32)
    for name in NAMES:
        f, fb = getattr(F, name), getattr(F, name + "_backward")
        with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
            f(xp.zeros((2, 3), np.int64))
        with pytest.raises(TypeError, match="x: expected a numpy.ndarray"):
            f([1.0, 2.0])
        v = "y" if name in ("sigmoid", "tanh") else "x"
        with pytest.raises(ValueError, match=r"grad_out: expected shape \(2, 3\)"):
            fb(xp.zeros((3, 2), np.float32), x)
        with pytest.raises(TypeError, match=rf"grad_out: expected dtype float32 \(the dtype of {v}\)"):
            fb(xp.zeros((2, 3), np.float64), x)
        with pytest.raises(TypeError, match=f"{v}: expected"):
            fb(x, None)
    with pytest.raises(ValueError, match="negative_slope"):
        F.leaky_relu(x, float("nan"))
    with pytest.raises(TypeError, match="negative_slope"):
        F.leaky_relu_backward(x, x, "0.1")
    with pytest.raises(ValueError, match="max_val: expected a float >= min_val"):
        F.hardtanh(x, 1.0, -1.0)
    with pytest.raises(TypeError, match="min_val"):
        F.hardtanh_backward(x, x, None)
    with pytest.raises(ValueError, match="max_val"):
        F.hardtanh(x, max_val=float("inf"))


def test_activation_defaults_are_pytorchs():
    import inspect

    sig = {n: inspect.signature(getattr(F, n)).parameters for n in NAMES}
    assert sig["leaky_relu"]["negative_slope"].default == 0.01
    assert (sig["hardtanh"]["min_val"].default, sig["hardtanh"]["max_val"].default) == (-1.0, 1.0)
    for n in ("relu", "relu6", "leaky_relu", "hardtanh", "silu", "hardswish"):
        assert sig[n]["inplace"].default is False
        assert sig[n]["out"].kind is inspect.Parameter.KEYWORD_ONLY


def test_activation_torch_parity(xp):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.uniform(-8, 8, 200), [0.0, -3.0, 3.0, 6.0, -1.0, 1.0]])
    dy = rng.uniform(-1, 1, x.shape)
    pairs = [("relu", tf.relu, {}), ("relu6", tf.relu6, {}), ("leaky_relu", tf.leaky_relu, {"negative_slope": 0.1}),
             ("hardtanh", tf.hardtanh, {"min_val": -1.0, "max_val": 1.0}), ("silu", tf.silu, {}),
             ("hardswish", tf.hardswish, {}), ("sigmoid", torch.sigmoid, {}), ("tanh", torch.tanh, {})]
    for name, tfn, params in pairs:
        xt = torch.from_numpy(x).requires_grad_()
        yt = tfn(xt, **params)
        yt.backward(torch.from_numpy(dy))
        y = getattr(F, name)(xp.asarray(x), **params)
        assert_close(y, yt.detach().numpy(), np.float64)
        v = y if name in ("sigmoid", "tanh") else xp.asarray(x)
        assert_close(getattr(F, name + "_backward")(xp.asarray(dy), v, **params), xt.grad.numpy(), np.float64)


# ---------------------------------------------------------------- layers

def _dev(xp):
    return "cpu" if xp is np else "cuda"


LAYERS = [
    ("ReLU", lambda ip: nn.ReLU(ip), "relu", {}),
    ("ReLU6", lambda ip: nn.ReLU6(ip), "relu6", {}),
    ("Hardtanh", lambda ip: nn.Hardtanh(-0.5, 2.0, ip), "hardtanh", {"min_val": -0.5, "max_val": 2.0}),
    ("LeakyReLU", lambda ip: nn.LeakyReLU(0.2, ip), "leaky_relu", {"negative_slope": 0.2}),
    ("LeakyReLU_negative", lambda ip: nn.LeakyReLU(-0.3, ip), "leaky_relu", {"negative_slope": -0.3}),
    ("SiLU", lambda ip: nn.SiLU(ip), "silu", {}),
    ("Hardswish", lambda ip: nn.Hardswish(ip), "hardswish", {}),
    ("Sigmoid", lambda ip: nn.Sigmoid(), "sigmoid", {}),
    ("Tanh", lambda ip: nn.Tanh(), "tanh", {}),
]


# Sigmoid and Tanh have no inplace argument (as in PyTorch).
LAYER_CASES = [(c, ip) for c in LAYERS for ip in (False, True) if not ip or c[2] not in ("sigmoid", "tanh")]


@pytest.mark.parametrize("case,inplace", LAYER_CASES,
                         ids=[f"{c[0]}-{'inplace' if ip else 'copy'}" for c, ip in LAYER_CASES])
def test_activation_layers(xp, case, inplace):
    _, make, name, params = case
    has_inplace = name not in ("sigmoid", "tanh")
    layer = make(inplace).to(_dev(xp))
    rng = np.random.default_rng(8)
    x = xp.asarray(_away_from_kinks(rng, (3, 4, 5), params))
    x0 = to_numpy(x).copy()
    y = layer(x)
    assert_close(y, getattr(R, name)(x0, **params), np.float64)
    if inplace:
        assert y is x  # PyTorch semantics: the input holds the result
    else:
        assert np.array_equal(to_numpy(x), x0)
    dy = rand(rng, x.shape, np.float64, xp)
    v = getattr(R, name)(x0, **params) if name in ("sigmoid", "tanh") else x0
    assert_close(layer.backward(dy), getattr(R, name + "_backward")(to_numpy(dy), v, **params), np.float64)
    if not inplace:
        assert testing.gradcheck(layer, xp.asarray(x0))
    if has_inplace:
        assert ("inplace=True" in repr(layer)) == inplace


def test_activation_layer_errors():
    with pytest.raises(ValueError, match="max_val"):
        nn.Hardtanh(1.0, -1.0)
    with pytest.raises(RuntimeError, match="forward first"):
        nn.SiLU().backward(np.zeros(3))
    with pytest.raises(TypeError, match="input"):
        nn.SiLU(inplace=True)([1.0])
    assert "min_val=-1.0, max_val=1.0" in repr(nn.Hardtanh())

