"""interpolate (nearest, bilinear) against the float64 NumPy reference and PyTorch, on both backends
and dtypes; the backward against finite differences of the reference; nn.Upsample."""
import numpy as np
import pytest

import pydl.functional as F
import pydl.nn as nn
import pydl.reference as R  # (the submodule name is shadowed by its function)
from pydl import testing

from conftest import assert_close, numerical_grad, rand, to_numpy

# (x shape, interpolate keyword arguments)
CONFIGS = [
    ((2, 3, 5, 7), dict(scale_factor=2)),                                  # nearest x2 (o >> 1 shortcut)
    ((2, 3, 5, 7), dict(scale_factor=2, mode="bilinear")),
    ((2, 3, 5, 7), dict(scale_factor=2, mode="bilinear", align_corners=True)),
    ((1, 2, 9, 11), dict(size=(4, 5))),                                    # nearest downsample
    ((1, 2, 9, 11), dict(size=(4, 5), mode="bilinear")),
    ((1, 2, 9, 11), dict(size=(4, 5), mode="bilinear", align_corners=True)),
    ((2, 2, 6, 4), dict(size=7, mode="bilinear")),                         # size as an int
    ((2, 2, 6, 4), dict(size=7)),
    ((1, 3, 7, 5), dict(scale_factor=(1.7, 0.6))),                         # non-integer factors
    ((1, 3, 7, 5), dict(scale_factor=(1.7, 0.6), mode="bilinear")),
    ((1, 3, 7, 5), dict(scale_factor=(2.3, 3.1), mode="bilinear", align_corners=True)),
    ((1, 3, 7, 5), dict(scale_factor=(2.3, 3.1), mode="bilinear", recompute_scale_factor=True)),
    ((1, 3, 7, 5), dict(scale_factor=(2.3, 0.45), recompute_scale_factor=True)),
    ((2, 1, 5, 5), dict(scale_factor=(1.1, 2.1))),                         # same size / doubled, factor != 1, 2
    ((2, 1, 5, 5), dict(scale_factor=(1.1, 2.1), mode="bilinear")),
    ((1, 1, 1, 1), dict(size=(3, 4), mode="bilinear")),                    # 1x1 input
    ((1, 1, 1, 1), dict(size=(3, 4), mode="bilinear", align_corners=True)),
    ((1, 1, 1, 1), dict(scale_factor=3)),
    ((2, 2, 6, 5), dict(size=1, mode="bilinear", align_corners=True)),      # 1x1 output
    ((2, 2, 6, 5), dict(size=1, mode="bilinear")),
    ((2, 2, 6, 5), dict(size=1)),
    ((1, 2, 8, 3), dict(size=(8, 3), mode="bilinear")),                    # identity
    ((1, 2, 13, 10), dict(scale_factor=0.3, mode="bilinear")),             # strong downsampling
    ((1, 2, 13, 10), dict(scale_factor=0.3)),
    ((3, 2, 4, 6), dict(size=(11, 2), mode="bilinear", align_corners=False)),
    ((0, 2, 4, 6), dict(scale_factor=2, mode="bilinear")),                 # empty batch
]


def _random_configs(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        H, W = (int(v) for v in rng.integers(1, 10, 2))
        mode = ["nearest", "bilinear"][len(out) % 2]
        kw = dict(mode=mode)
        if mode == "bilinear":
            kw["align_corners"] = bool(rng.integers(2))
        if rng.integers(2):
            kw["size"] = tuple(int(v) for v in rng.integers(1, 14, 2))
        else:
            sf = tuple(round(float(v), 3) for v in rng.uniform(0.25, 3.5, 2))
            if int(H * sf[0]) < 1 or int(W * sf[1]) < 1:
                continue
            kw["scale_factor"] = sf
        out.append(((int(rng.integers(1, 3)), int(rng.integers(1, 3)), H, W), kw))
    return out


RANDOM = _random_configs(40, 7)


def ids(configs):
    return [str(i) for i in range(len(configs))]


def _check(xp, dtype, shape, kw, seed=1):
    rng = np.random.default_rng(seed)
    x = rand(rng, shape, dtype, xp)
    x0 = to_numpy(x).copy()
    y = F.interpolate(x, **kw)
    want = R.interpolate(x0.astype(np.float64), **kw)
    assert type(y) is type(x) and y.dtype == dtype
    if kw.get("mode", "nearest") == "nearest":
        assert np.array_equal(to_numpy(y), want.astype(dtype))  # pure data movement: exact
    else:
        assert_close(y, want, dtype)
    dy = rand(rng, y.shape, dtype, xp)
    dy0 = to_numpy(dy).copy()
    dx = F.interpolate_backward(dy, shape, **kw)
    assert dx.dtype == dtype
    assert_close(dx, R.interpolate_backward(dy0.astype(np.float64), shape, **kw), dtype)
    assert np.array_equal(to_numpy(x), x0) and np.array_equal(to_numpy(dy), dy0)  # inputs unmodified


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids(CONFIGS))
def test_interpolate_matches_reference(xp, dtype, cfg):
    _check(xp, dtype, *cfg)


@pytest.mark.parametrize("cfg", RANDOM, ids=ids(RANDOM))
def test_interpolate_random_configs(xp, dtype, cfg):
    _check(xp, dtype, *cfg, seed=3)


def test_interpolate_noncontiguous_input(xp, dtype):
    rng = np.random.default_rng(4)
    base = rand(rng, (2, 6, 9, 8), dtype, xp)
    x = base[:, ::2, 1:, ::-1]  # strided, offset and reversed
    for kw in (dict(scale_factor=1.5, mode="bilinear"), dict(size=(4, 11))):
        y = F.interpolate(x, **kw)
        assert_close(y, R.interpolate(to_numpy(x).astype(np.float64), **kw), dtype)
        dy = rand(rng, y.shape, dtype, xp)
        dyv = xp.asarray(np.ascontiguousarray(np.swapaxes(to_numpy(dy), 2, 3)))
        dyv = xp.swapaxes(dyv, 2, 3)  # same values, non-contiguous
        dx = F.interpolate_backward(dyv, x.shape, **kw)
        assert_close(dx, R.interpolate_backward(to_numpy(dy).astype(np.float64), x.shape, **kw), dtype)


GRAD_CONFIGS = [
    ((1, 2, 4, 5), dict(scale_factor=(1.6, 2.2), mode="bilinear")),
    ((2, 1, 5, 4), dict(size=(3, 7), mode="bilinear", align_corners=True)),
    ((1, 1, 6, 6), dict(scale_factor=0.4, mode="bilinear")),
    ((1, 2, 4, 5), dict(size=(7, 3))),
]


@pytest.mark.parametrize("cfg", GRAD_CONFIGS, ids=ids(GRAD_CONFIGS))
def test_interpolate_backward_matches_finite_differences(xp, cfg):
    shape, kw = cfg
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, shape)
    y = R.interpolate(x, **kw)
    dy = rng.uniform(-1, 1, y.shape)
    want = numerical_grad(lambda a: R.interpolate(a, **kw), x, dy)
    assert_close(F.interpolate_backward(xp.asarray(dy), shape, **kw), want, np.float64, factor=1e3)
    assert_close(R.interpolate_backward(dy, shape, **kw), want, np.float64, factor=1e3)


def test_interpolate_torch_parity(xp):
    torch = pytest.importorskip("torch")
    TF = torch.nn.functional
    rng = np.random.default_rng(6)
    for shape, kw in CONFIGS + RANDOM:
        if shape[0] == 0:
            continue
        x = rng.uniform(-1, 1, shape)
        xt = torch.from_numpy(x).requires_grad_()
        yt = TF.interpolate(xt, **kw)
        y = F.interpolate(xp.asarray(x), **kw)
        dy = rng.uniform(-1, 1, y.shape)
        yt.backward(torch.from_numpy(dy))
        dx = F.interpolate_backward(xp.asarray(dy), shape, **kw)
        assert_close(y, yt.detach().numpy(), np.float64)
        assert_close(dx, xt.grad.numpy(), np.float64)
        if kw.get("mode", "nearest") == "nearest":  # exact source indices, also in float32
            x32 = x.astype(np.float32)
            assert np.array_equal(to_numpy(F.interpolate(xp.asarray(x32), **kw)),
                                  TF.interpolate(torch.from_numpy(x32), **kw).numpy()), kw


def test_nearest_float32_index_rule(xp):
    # 0.1 * 30 rounds differently in float32 and float64: floor(o * float32(1/s)) decides the index.
    x = xp.asarray(np.arange(10, dtype=np.float64).reshape(1, 1, 1, 10))
    for sf in (0.7, 1.3, 2.9, 3.3, 0.1 * 3):
        got = to_numpy(F.interpolate(x, scale_factor=(1, sf)))
        want = R.interpolate(to_numpy(x), scale_factor=(1, sf))
        assert np.array_equal(got, want), sf


def test_interpolate_backward_deterministic(xp, dtype):
    rng = np.random.default_rng(8)
    shape = (3, 4, 10, 16)
    for kw in (dict(scale_factor=(2.3, 1.7), mode="bilinear"), dict(size=(23, 37)), dict(size=(23, 37), mode="bilinear")):
        dy = rand(rng, F.interpolate(xp.zeros(shape, dtype), **kw).shape, dtype, xp)
        a = to_numpy(F.interpolate_backward(dy, (3, 4, 10, 16), **kw))
        b = to_numpy(F.interpolate_backward(dy, (3, 4, 10, 16), **kw))
        assert np.array_equal(a, b)


def test_interpolate_bad_inputs(xp):
    x = xp.zeros((1, 2, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="size and scale_factor"):
        F.interpolate(x, size=3, scale_factor=2)
    with pytest.raises(ValueError, match="size and scale_factor"):
        F.interpolate(x)
    with pytest.raises(ValueError, match="align_corners"):
        F.interpolate(x, size=3, align_corners=False)
    with pytest.raises(ValueError, match="align_corners"):
        F.interpolate(x, size=3, mode="nearest", align_corners=True)
    with pytest.raises(ValueError, match="mode"):
        F.interpolate(x, size=3, mode="bicubic")
    with pytest.raises(TypeError, match="x: expected dtype"):
        F.interpolate(xp.zeros((1, 2, 4, 4), dtype=np.int32), size=3)
    with pytest.raises(ValueError, match="x: expected a 4-D"):
        F.interpolate(xp.zeros((2, 4, 4), dtype=np.float32), size=3)
    with pytest.raises(ValueError, match="size"):
        F.interpolate(x, size=0)
    with pytest.raises(ValueError, match="size"):
        F.interpolate(x, size=(2, 3, 4))
    with pytest.raises(ValueError, match="scale_factor"):
        F.interpolate(x, scale_factor=0.1)  # output 0 x 0
    with pytest.raises(ValueError, match="scale_factor"):
        F.interpolate(x, scale_factor=-2)
    with pytest.raises(ValueError, match="scale_factor"):
        F.interpolate(x, scale_factor=float("nan"))
    with pytest.raises(TypeError, match="scale_factor"):
        F.interpolate(x, scale_factor="2")
    with pytest.raises(TypeError, match="align_corners"):
        F.interpolate(x, size=3, mode="bilinear", align_corners=1)
    with pytest.raises(TypeError, match="x: expected a numpy.ndarray"):
        F.interpolate([[1.0]], size=3)
    dy = xp.zeros((1, 2, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="grad_out: expected shape"):
        F.interpolate_backward(dy, (1, 2, 4, 4), size=7)
    with pytest.raises(ValueError, match="input_size"):
        F.interpolate_backward(dy, (2, 4, 4), scale_factor=2)
    with pytest.raises(ValueError, match="input_size"):
        F.interpolate_backward(dy, (1, 2, 0, 4), scale_factor=2)
    with pytest.raises(TypeError, match="grad_out: expected dtype"):
        F.interpolate_backward(dy.astype(np.int64), (1, 2, 4, 4), scale_factor=2)
    assert F.interpolate_backward(dy, (1, 2, 4, 4), scale_factor=2).shape == (1, 2, 4, 4)


# ------------------------------------------------------------------------------ nn.Upsample

def _dev(xp):
    return "cpu" if xp is np else "cuda"


@pytest.mark.parametrize("kw", [dict(scale_factor=2), dict(size=(5, 3), mode="bilinear"),
                                dict(scale_factor=1.5, mode="bilinear", align_corners=True)])
def test_upsample_layer(xp, kw):
    layer = nn.Upsample(**kw).to(_dev(xp))
    x = rand(np.random.default_rng(9), (2, 2, 4, 3), np.float64, xp)
    y = layer(x)
    assert_close(y, R.interpolate(to_numpy(x), **kw), np.float64)
    dy = rand(np.random.default_rng(10), y.shape, np.float64, xp)
    assert_close(layer.backward(dy), R.interpolate_backward(to_numpy(dy), x.shape, **kw), np.float64)
    assert testing.gradcheck(layer, x)
    assert "Upsample" in repr(layer)
    with pytest.raises(RuntimeError, match="forward first"):
        nn.Upsample(**kw).backward(dy)
