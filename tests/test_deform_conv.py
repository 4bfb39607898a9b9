"""deform_conv2d: parity with the float64 NumPy reference (and torchvision where importable),
on both backends and dtypes; gradients by finite differences of the reference."""
import numpy as np
import pytest

import pydl.functional as F
import pydl.ops as O
import pydl.reference.deform_conv as R

from conftest import assert_close, numerical_grad, rand, to_numpy


def _out(h, k, s, p, d):
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


# (N, C, H, W, K, kh, kw, groups, offset_groups, stride, padding, dilation)
CONFIGS = [
    (2, 4, 5, 6, 6, 2, 3, 2, 2, (2, 1), (1, 2), (1, 2)),
    (3, 6, 7, 5, 4, 3, 3, 1, 3, 1, 1, 1),
    (1, 8, 9, 9, 8, 3, 3, 4, 1, 1, 1, 1),
    (1, 3, 4, 7, 5, 1, 1, 1, 1, 1, 0, 1),
    (2, 4, 6, 6, 4, 3, 2, 4, 4, 2, 2, (2, 1)),
    (1, 2, 1, 5, 3, 1, 3, 1, 2, 1, (0, 1), 1),
    (4, 5, 3, 3, 2, 2, 2, 1, 5, (1, 2), 0, 1),
    (2, 16, 8, 10, 12, 3, 3, 2, 2, 1, 1, 1),
]


def _make(rng, cfg, dtype, xp, use_mask, use_bias, spread=3.0):
    N, C, H, W, K, kh, kw, G, OG, s, p, d = cfg
    s2, p2, d2 = (v if isinstance(v, tuple) else (v, v) for v in (s, p, d))
    ho, wo = _out(H, kh, s2[0], p2[0], d2[0]), _out(W, kw, s2[1], p2[1], d2[1])
    x = rand(rng, (N, C, H, W), dtype, xp)
    off = rand(rng, (N, 2 * OG * kh * kw, ho, wo), dtype, xp, -spread, spread)
    w = rand(rng, (K, C // G, kh, kw), dtype, xp)
    b = rand(rng, (K,), dtype, xp) if use_bias else None
    m = rand(rng, (N, OG * kh * kw, ho, wo), dtype, xp, 0.0, 1.0) if use_mask else None
    return x, off, w, b, m, (s, p, d)


def _h(a):
    return None if a is None else to_numpy(a)


@pytest.mark.parametrize("ci", range(len(CONFIGS)))
@pytest.mark.parametrize("use_mask", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("use_bias", [False, True], ids=["nobias", "bias"])
def test_forward_matches_reference(xp, dtype, ci, use_mask, use_bias):
    rng = np.random.default_rng(100 + ci)
    x, off, w, b, m, (s, p, d) = _make(rng, CONFIGS[ci], dtype, xp, use_mask, use_bias)
    y = O.deform_conv2d(x, off, w, b, s, p, d, m)
    assert y.dtype == dtype and type(y) is type(x)
    assert_close(y, R.deform_conv2d(_h(x), _h(off), _h(w), _h(b), s, p, d, _h(m)), dtype)


@pytest.mark.parametrize("ci", range(len(CONFIGS)))
@pytest.mark.parametrize("use_mask", [False, True], ids=["v1", "v2"])
def test_backward_matches_reference(xp, dtype, ci, use_mask):
    rng = np.random.default_rng(200 + ci)
    x, off, w, _, m, (s, p, d) = _make(rng, CONFIGS[ci], dtype, xp, use_mask, False)
    y = O.deform_conv2d(x, off, w, None, s, p, d, m)
    dy = rand(rng, y.shape, dtype, xp)
    got = O.deform_conv2d_backward(dy, x, off, w, m, s, p, d)
    want = R.deform_conv2d_backward(_h(dy), _h(x), _h(off), _h(w), _h(m), s, p, d)
    for name, g, wv in zip(["dx", "doffset", "dweight", "dbias", "dmask"], got, want):
        if wv is None:
            assert g is None, name
            continue
        assert g.shape == wv.shape and g.dtype == dtype, name
        assert_close(g, wv, dtype, factor=2.0)


def test_backward_output_mask(xp, dtype):
    rng = np.random.default_rng(3)
    x, off, w, _, m, (s, p, d) = _make(rng, CONFIGS[0], dtype, xp, True, False)
    dy = rand(rng, O.deform_conv2d(x, off, w, None, s, p, d, m).shape, dtype, xp)
    full = O.deform_conv2d_backward(dy, x, off, w, m, s, p, d)
    for i in range(5):
        mask = [False] * 5
        mask[i] = True
        part = O.deform_conv2d_backward(dy, x, off, w, m, s, p, d, output_mask=mask)
        assert all(part[j] is None for j in range(5) if j != i)
        np.testing.assert_array_equal(to_numpy(part[i]), to_numpy(full[i]))


def test_zero_offsets_equal_conv2d(xp, dtype):
    """With zero offsets and no mask (or an all-ones mask) it is a plain grouped convolution."""
    rng = np.random.default_rng(4)
    for cfg in CONFIGS[:5]:
        x, off, w, b, _, (s, p, d) = _make(rng, cfg, dtype, xp, False, True)
        off = off * 0
        want = F.conv2d(x, w, b, s, p, d, groups=cfg[0 + 1] // w.shape[1])
        assert_close(O.deform_conv2d(x, off, w, b, s, p, d), to_numpy(want).astype(np.float64), dtype, 2.0)
        ones = xp.ones((x.shape[0], off.shape[1] // 2) + off.shape[2:], dtype=dtype)
        assert_close(O.deform_conv2d(x, off, w, b, s, p, d, ones), to_numpy(want).astype(np.float64), dtype, 2.0)


def test_offsets_outside_image(xp, dtype):
    """Samples far outside read 0 (bias only); points in (-1, 0) blend with zero padding."""
    rng = np.random.default_rng(5)
    x, off, w, b, m, (s, p, d) = _make(rng, CONFIGS[1], dtype, xp, True, True)
    far = off * 0 + 100
    y = O.deform_conv2d(x, far, w, b, s, p, d, m)
    np.testing.assert_allclose(to_numpy(y), np.broadcast_to(to_numpy(b)[None, :, None, None], y.shape),
                               rtol=0, atol=0)
    gx, goff, gw, _, gm = O.deform_conv2d_backward(y * 0 + 1, x, far, w, m, s, p, d)
    for g in (gx, goff, gw, gm):
        assert not np.any(to_numpy(g))
    # Offsets that straddle the border, both signs, large spread.
    x, off, w, b, m, (s, p, d) = _make(rng, CONFIGS[2], dtype, xp, True, True, spread=8.0)
    assert_close(O.deform_conv2d(x, off, w, b, s, p, d, m),
                 R.deform_conv2d(_h(x), _h(off), _h(w), _h(b), s, p, d, _h(m)), dtype)


def test_integer_offsets_border(xp, dtype):
    """Integer and half-integer sampling points, including -1 and H exactly (excluded)."""
    rng = np.random.default_rng(6)
    x, off, w, b, m, (s, p, d) = _make(rng, CONFIGS[2], dtype, xp, True, True)
    off = xp.asarray(np.round(to_numpy(off) * 2) / 2)
    assert_close(O.deform_conv2d(x, off, w, b, s, p, d, m),
                 R.deform_conv2d(_h(x), _h(off), _h(w), _h(b), s, p, d, _h(m)), dtype)


def test_batch_zero(xp, dtype):
    x = xp.zeros((0, 4, 5, 5), dtype)
    off = xp.zeros((0, 18, 5, 5), dtype)
    w = xp.ones((3, 4, 3, 3), dtype)
    b = xp.ones((3,), dtype)
    y = O.deform_conv2d(x, off, w, b, padding=1)
    assert y.shape == (0, 3, 5, 5)
    gx, goff, gw, gb, gm = O.deform_conv2d_backward(y, x, off, w, padding=1)
    assert gx.shape == x.shape and goff.shape == off.shape and gm is None
    assert not np.any(to_numpy(gw)) and not np.any(to_numpy(gb))


def test_non_contiguous_inputs(xp, dtype):
    rng = np.random.default_rng(7)
    x, off, w, b, m, (s, p, d) = _make(rng, CONFIGS[1], dtype, xp, True, True)
    xt = xp.asarray(np.asfortranarray(to_numpy(x)))
    offt = xp.concatenate([off, off], axis=3)[..., ::2]
    offt[...] = off
    mt = xp.asarray(np.asfortranarray(to_numpy(m)))
    wt = xp.asarray(np.asfortranarray(to_numpy(w)))
    want = R.deform_conv2d(_h(x), _h(off), _h(w), _h(b), s, p, d, _h(m))
    assert_close(O.deform_conv2d(xt, offt, wt, b, s, p, d, mt), want, dtype)
    dy = rand(rng, want.shape, dtype, xp)
    dyt = xp.asarray(np.asfortranarray(to_numpy(dy)))
    got = O.deform_conv2d_backward(dyt, xt, offt, wt, mt, s, p, d)
    ref = R.deform_conv2d_backward(_h(dy), _h(x), _h(off), _h(w), _h(m), s, p, d)
    for g, r in zip(got, ref):
        assert_close(g, r, dtype, 2.0)


def test_inputs_unmodified_and_deterministic(xp, dtype):
    rng = np.random.default_rng(8)
    x, off, w, b, m, (s, p, d) = _make(rng, CONFIGS[7], dtype, xp, True, True)
    dy = rand(rng, (2, 12, 8, 10), dtype, xp)
    copies = [a.copy() for a in (x, off, w, b, m, dy)]
    y1 = O.deform_conv2d(x, off, w, b, s, p, d, m)
    g1 = O.deform_conv2d_backward(dy, x, off, w, m, s, p, d)
    y2 = O.deform_conv2d(x, off, w, b, s, p, d, m)
    g2 = O.deform_conv2d_backward(dy, x, off, w, m, s, p, d)
    for a, c in zip((x, off, w, b, m, dy), copies):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(c))
    np.testing.assert_array_equal(to_numpy(y1), to_numpy(y2))
    for a, c in zip(g1, g2):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(c))


def _away_from_kinks(rng, shape):
    """Offsets whose fractional parts avoid 0 (bilinear kinks at integer sample positions)."""
    whole = rng.integers(-2, 2, size=shape)
    frac = rng.uniform(0.2, 0.8, size=shape)
    return whole + frac


@pytest.mark.parametrize("cfg", [
    (2, 4, 4, 5, 4, 2, 2, 2, 2, 1, 1, 1),
    (1, 3, 5, 4, 2, 3, 2, 1, 3, (2, 1), (1, 0), (1, 2)),
])
@pytest.mark.parametrize("use_mask", [False, True], ids=["v1", "v2"])
def test_reference_gradients_finite_differences(cfg, use_mask):
    """The reference backward is the derivative of the reference forward (float64)."""
    rng = np.random.default_rng(9)
    x, off, w, b, m, (s, p, d) = _make(rng, cfg, np.float64, np, use_mask, True)
    off = _away_from_kinks(rng, off.shape)
    y = R.deform_conv2d(x, off, w, b, s, p, d, m)
    dy = rng.standard_normal(y.shape)
    gx, goff, gw, gb, gm = R.deform_conv2d_backward(dy, x, off, w, m, s, p, d)
    tol = dict(rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gx, numerical_grad(lambda a: R.deform_conv2d(a, off, w, b, s, p, d, m), x, dy), **tol)
    np.testing.assert_allclose(goff, numerical_grad(lambda a: R.deform_conv2d(x, a, w, b, s, p, d, m), off, dy),
                               **tol)
    np.testing.assert_allclose(gw, numerical_grad(lambda a: R.deform_conv2d(x, off, a, b, s, p, d, m), w, dy), **tol)
    np.testing.assert_allclose(gb, numerical_grad(lambda a: R.deform_conv2d(x, off, w, a, s, p, d, m), b, dy), **tol)
    if use_mask:
        np.testing.assert_allclose(gm, numerical_grad(lambda a: R.deform_conv2d(x, off, w, b, s, p, d, a), m, dy),
                                   **tol)
    else:
        assert gm is None


@pytest.mark.parametrize("use_mask", [False, True], ids=["v1", "v2"])
def test_gradients_finite_differences(xp, use_mask):
    """pydl's float64 backward against central differences of the reference forward."""
    rng = np.random.default_rng(10)
    cfg = (2, 4, 5, 4, 4, 2, 3, 2, 2, (1, 2), 1, 1)
    x, off, w, b, m, (s, p, d) = _make(rng, cfg, np.float64, np, use_mask, True)
    off = _away_from_kinks(rng, off.shape)
    dy = rng.standard_normal(R.deform_conv2d(x, off, w, b, s, p, d, m).shape)
    dev = [None if a is None else xp.asarray(a) for a in (dy, x, off, w, m)]
    gx, goff, gw, gb, gm = O.deform_conv2d_backward(*dev, s, p, d)
    f = R.deform_conv2d
    assert_close(gx, numerical_grad(lambda a: f(a, off, w, b, s, p, d, m), x, dy), np.float64, 1e4)
    assert_close(goff, numerical_grad(lambda a: f(x, a, w, b, s, p, d, m), off, dy), np.float64, 1e4)
    assert_close(gw, numerical_grad(lambda a: f(x, off, a, b, s, p, d, m), w, dy), np.float64, 1e4)
    assert_close(gb, numerical_grad(lambda a: f(x, off, w, a, s, p, d, m), b, dy), np.float64, 1e4)
    if use_mask:
        assert_close(gm, numerical_grad(lambda a: f(x, off, w, b, s, p, d, a), m, dy), np.float64, 1e4)
    else:
        assert gm is None


@pytest.mark.parametrize("ci", [0, 1, 4, 7])
@pytest.mark.parametrize("use_mask", [False, True], ids=["v1", "v2"])
def test_matches_torchvision(ci, use_mask):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    rng = np.random.default_rng(300 + ci)
    x, off, w, b, m, (s, p, d) = _make(rng, CONFIGS[ci], np.float64, np, use_mask, True)
    ts = [None if a is None else torch.tensor(a, requires_grad=True) for a in (x, off, w, b, m)]
    yt = tv.ops.deform_conv2d(ts[0], ts[1], ts[2], ts[3], s, p, d, ts[4])
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(dy))
    assert_close(O.deform_conv2d(x, off, w, b, s, p, d, m), yt.detach().numpy(), np.float64)
    got = O.deform_conv2d_backward(dy, x, off, w, m, s, p, d)
    for g, t in zip(got, ts[:4] + ts[4:]):
        if t is None:
            assert g is None
            continue
        assert_close(g, t.grad.numpy(), np.float64, 10.0)


def test_layer(xp):
    rng = np.random.default_rng(11)
    layer = O.DeformConv2d(4, 6, 3, padding=1, groups=2, dtype="float64", seed=0)
    layer.weight = xp.asarray(layer.weight)
    layer.bias = xp.asarray(layer.bias)
    x = rand(rng, (2, 4, 5, 5), np.float64, xp)
    off = rand(rng, (2, 18, 5, 5), np.float64, xp)
    y = layer(x, off)
    assert_close(y, R.deform_conv2d(_h(x), _h(off), _h(layer.weight), _h(layer.bias), 1, 1, 1), np.float64)
    gx, goff, gm = layer.backward(y * 0 + 1)
    assert gx.shape == x.shape and goff.shape == off.shape and gm is None
    assert layer.grad_weight.shape == layer.weight.shape and layer.grad_bias.shape == (6,)


def test_bad_inputs(xp):
    dt = np.float32
    x = xp.zeros((2, 4, 5, 5), dt)
    w = xp.zeros((6, 2, 3, 3), dt)
    off = xp.zeros((2, 18, 3, 3), dt)
    m = xp.zeros((2, 9, 3, 3), dt)
    with pytest.raises(ValueError, match="offset"):
        O.deform_conv2d(x, xp.zeros((2, 17, 3, 3), dt), w)
    with pytest.raises(ValueError, match="offset"):
        O.deform_conv2d(x, xp.zeros((2, 18, 4, 3), dt), w)
    with pytest.raises(ValueError, match="offset"):
        O.deform_conv2d(x, xp.zeros((1, 18, 3, 3), dt), w)
    with pytest.raises(ValueError, match="offset"):
        O.deform_conv2d(x, xp.zeros((2, 0, 3, 3), dt), w)
    with pytest.raises(ValueError, match="mask"):
        O.deform_conv2d(x, off, w, mask=xp.zeros((2, 18, 3, 3), dt))
    with pytest.raises(ValueError, match="weight"):
        O.deform_conv2d(x, off, xp.zeros((6, 3, 3, 3), dt))
    with pytest.raises(ValueError, match="weight"):
        O.deform_conv2d(x, off, xp.zeros((5, 2, 3, 3), dt))
    with pytest.raises(ValueError, match="offset_groups"):
        O.deform_conv2d(x, xp.zeros((2, 54, 3, 3), dt), w)
    with pytest.raises(ValueError, match="bias"):
        O.deform_conv2d(x, off, w, xp.zeros((5,), dt))
    with pytest.raises(ValueError, match="output size"):
        O.deform_conv2d(xp.zeros((2, 4, 1, 1), dt), off, w)
    with pytest.raises(ValueError, match="stride"):
        O.deform_conv2d(x, off, w, stride=0)
    with pytest.raises(TypeError, match="offset.*float64"):
        O.deform_conv2d(x, off.astype(np.float64), w)
    with pytest.raises(TypeError, match="mask.*float64"):
        O.deform_conv2d(x, off, w, mask=m.astype(np.float64))
    with pytest.raises(TypeError, match="input.*int32"):
        O.deform_conv2d(x.astype(np.int32), off, w)
    with pytest.raises(TypeError, match="mask"):
        O.deform_conv2d(x, off, w, mask=[1.0])
    with pytest.raises(ValueError, match="input"):
        O.deform_conv2d(x[0], off, w)
    y = O.deform_conv2d(x, off, w, mask=m)
    with pytest.raises(ValueError, match="grad_out"):
        O.deform_conv2d_backward(y[:, :3], x, off, w, m)
    with pytest.raises(TypeError, match="grad_out"):
        O.deform_conv2d_backward(y.astype(np.float64), x, off, w, m)
    with pytest.raises(ValueError, match="output_mask"):
        O.deform_conv2d_backward(y, x, off, w, m, output_mask=(True,))
    if xp is not np:
        with pytest.raises(TypeError, match="offset"):
            O.deform_conv2d(x, to_numpy(off), w)


def test_chunked_batches(xp, dtype):
    """A tiny workspace cap forces one image per chunk (dW accumulated over chunks in order)."""
    rng = np.random.default_rng(12)
    x, off, w, b, m, (s, p, d) = _make(rng, CONFIGS[1], dtype, xp, True, True)
    if xp is np:
        get, set_ = F.get_conv_workspace_limit, F.set_conv_workspace_limit
    else:
        import pydl.cuda.conv as cuconv

        get, set_ = cuconv.get_workspace_limit, cuconv.set_workspace_limit
    old = get()
    set_(1)
    try:
        y = O.deform_conv2d(x, off, w, b, s, p, d, m)
        dy = rand(rng, y.shape, dtype, xp)
        got = O.deform_conv2d_backward(dy, x, off, w, m, s, p, d)
    finally:
        set_(old)
    assert_close(y, R.deform_conv2d(_h(x), _h(off), _h(w), _h(b), s, p, d, _h(m)), dtype)
    want = R.deform_conv2d_backward(_h(dy), _h(x), _h(off), _h(w), _h(m), s, p, d)
    for g, r in zip(got, want):
        assert_close(g, r, dtype, 2.0)
