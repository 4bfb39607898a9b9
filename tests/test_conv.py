"""conv2d / conv_transpose2d: forward and backward parity with the float64 NumPy reference
on seeded sweeps of awkward configurations, finite-difference checks, the bounded
workspace, and bad-input errors. One body per test, parametrized by backend and dtype."""
import numpy as np
import pytest

import pydl.backends
import pydl.functional as F
import pydl.reference as R
from pydl import _backend

from conftest import assert_close, numerical_grad, rand, to_numpy

DEFAULT_LIMIT = 64 << 20


@pytest.fixture(autouse=True)
def restore_workspace_limit():
    yield
    F.set_conv_workspace_limit(DEFAULT_LIMIT)


def _random_config(rng):
    """A random valid conv2d configuration: (x shape, weight shape, kwargs)."""
    while True:
        kind = rng.choice(["dense", "grouped", "depthwise", "depthwise_mult", "pointwise"])
        g = 1
        if kind == "dense":
            c, k = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        elif kind == "grouped":
            g = int(rng.integers(2, 4))
            c, k = g * int(rng.integers(1, 3)), g * int(rng.integers(1, 3))
        else:
            c = g = int(rng.integers(1, 5))
            k = c * (2 if kind == "depthwise_mult" else 1)
        kh, kw = (1, 1) if kind == "pointwise" else (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        pk = rng.choice(["int", "pair", "same", "valid"])
        if kind == "pointwise" and rng.random() < 0.7:
            stride, dilation, pk = (1, 1), (1, 1), "valid"
        if pk == "same":
            padding, stride = "same", (1, 1)
        elif pk == "valid":
            padding = "valid"
        elif pk == "int":
            padding = int(rng.integers(0, 3))
        else:
            padding = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        n = int(rng.choice([0, 1, 2, 3]))
        h, w = int(rng.integers(1, 11)), int(rng.integers(1, 11))
        kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=g)
        try:
            R.conv2d(np.zeros((1, c, h, w)), np.zeros((k, c // g, kh, kw)), **kwargs)
        except ValueError:
            continue
        return (n, c, h, w), (k, c // g, kh, kw), kwargs


def _configs(seed, count):
    rng = np.random.default_rng(seed)
    named = [
        ((2, 3, 7, 5), (4, 3, 3, 3), dict(stride=1, padding=1)),
        ((1, 4, 9, 8), (4, 1, 3, 3), dict(padding=1, groups=4)),                  # depthwise
        ((2, 3, 6, 7), (6, 1, 3, 2), dict(padding=(1, 0), groups=3)),             # depthwise multiplier 2
        ((2, 6, 5, 7), (4, 6, 1, 1), dict()),                                     # 1x1 fast path
        ((2, 6, 5, 7), (4, 3, 1, 1), dict(groups=2)),                             # grouped 1x1
        ((1, 2, 8, 9), (3, 2, 2, 4), dict(padding="same", dilation=(2, 1))),     # even kernel 'same'
        ((1, 2, 8, 9), (3, 2, 4, 2), dict(padding="valid")),
        ((2, 2, 11, 10), (3, 2, 2, 2), dict(stride=(4, 3), padding=1)),           # stride > kernel
        ((0, 3, 5, 5), (2, 3, 3, 3), dict(padding=1)),                            # empty batch
        ((1, 5, 4, 13), (5, 1, 3, 3), dict(stride=2, padding=2, dilation=2, groups=5)),
    ]
    return named + [_random_config(rng) for _ in range(count)]


def _make(rng, xs, ws, dtype, xp, bias=True):
    x = rand(rng, xs, dtype, xp)
    w = rand(rng, ws, dtype, xp)
    b = rand(rng, (ws[0],), dtype, xp) if bias else None
    return x, w, b


# ---------------------------------------------------------------- conv2d parity

@pytest.mark.parametrize("seed", [0, 1])
def test_conv2d_forward_matches_reference(xp, dtype, seed):
    rng = np.random.default_rng(100 + seed)
    for xs, ws, kw in _configs(seed, 30):
        x, w, b = _make(rng, xs, ws, dtype, xp, bias=rng.random() < 0.7)
        y = F.conv2d(x, w, b, **kw)
        assert y.dtype == dtype and type(y) is type(x)
        want = R.conv2d(to_numpy(x), to_numpy(w), to_numpy(b), **kw)
        assert_close(y, want, dtype)


@pytest.mark.parametrize("seed", [0, 1])
def test_conv2d_backward_matches_reference(xp, dtype, seed):
    rng = np.random.default_rng(200 + seed)
    for xs, ws, kw in _configs(seed, 30):
        x, w, _ = _make(rng, xs, ws, dtype, xp, bias=False)
        yshape = R.conv2d(np.zeros(xs), np.zeros(ws), **kw).shape
        dy = rand(rng, yshape, dtype, xp)
        mask = tuple(bool(v) for v in rng.random(3) < 0.8)
        got = F.conv2d_backward(dy, x, w, output_mask=mask, **kw)
        want = R.conv2d_backward(to_numpy(dy), to_numpy(x), to_numpy(w), **kw)
        for m, g, wnt in zip(mask, got, want):
            if m:
                assert g.dtype == dtype
                assert_close(g, wnt, dtype)
            else:
                assert g is None


def test_conv2d_chunked_workspace_matches_reference(xp, dtype):
    """Tiny workspace caps force batch chunks and, below one image, pixel-range tiles."""
    rng = np.random.default_rng(3)
    configs = [((5, 3, 9, 7), (4, 3, 3, 2), dict(padding=1)),
               ((4, 4, 6, 11), (6, 2, 2, 3), dict(stride=(2, 1), padding=(0, 2), dilation=(1, 2), groups=2)),
               ((3, 2, 8, 8), (3, 2, 4, 4), dict(padding="same"))]
    for xs, ws, kw in configs:
        x, w, b = _make(rng, xs, ws, dtype, xp)
        yshape = R.conv2d(np.zeros(xs), np.zeros(ws), **kw).shape
        dy = rand(rng, yshape, dtype, xp)
        want_y = R.conv2d(to_numpy(x), to_numpy(w), to_numpy(b), **kw)
        want_g = R.conv2d_backward(to_numpy(dy), to_numpy(x), to_numpy(w), **kw)
        for limit in (1, 300, 2000, 9000, 12000, 24000):  # 12000/24000: a last, smaller batch chunk
            F.set_conv_workspace_limit(limit)
            assert F.get_conv_workspace_limit() == limit
            assert_close(F.conv2d(x, w, b, **kw), want_y, dtype)
            for g, wnt in zip(F.conv2d_backward(dy, x, w, **kw), want_g):
                assert_close(g, wnt, dtype)


def test_conv2d_workspace_peak_stays_under_cap():
    """The CPU column buffer never exceeds the cap, whatever the batch size."""
    cpu = _backend.cpu()
    rng = np.random.default_rng(4)
    x = rand(rng, (64, 8, 20, 20), np.float32)
    w = rand(rng, (8, 8, 3, 3), np.float32)
    for limit in (64 << 10, 256 << 10):
        F.set_conv_workspace_limit(limit)
        cpu.conv_workspace_peak_bytes(True)
        y = F.conv2d(x, w, padding=1)
        F.conv2d_backward(y, x, w, padding=1)
        F.conv_transpose2d(x, w, padding=1)
        peak = cpu.conv_workspace_peak_bytes()
        # one image's columns (8*9 rows x 400 pixels x 4 B = 115 KB) needs chunking at 64 KiB
        assert 0 < peak <= limit
    assert_close(y, R.conv2d(x, w, padding=1), np.float32)


def test_conv2d_noncontiguous_inputs(xp, dtype):
    rng = np.random.default_rng(5)
    xb = rand(rng, (3, 8, 9, 14), dtype, xp)
    wb = rand(rng, (6, 5, 3, 4), dtype, xp)
    x = xb[::2, ::2, :, ::2]          # (2, 4, 9, 7), strided
    w = wb[:, ::2].transpose(0, 1, 3, 2)[:, :, :3, :]  # (6, 3, 3, 3), permuted view
    w = w[:, :2]                      # (6, 2, 3, 3) for groups=2
    b = rand(rng, (12,), dtype, xp)[::2]
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    kw = dict(stride=(1, 2), padding=1, groups=2)
    y = F.conv2d(x, w, b, **kw)
    assert_close(y, R.conv2d(to_numpy(x), to_numpy(w), to_numpy(b), **kw), dtype)
    dy = xp.asarray(rand(rng, (y.shape[0], y.shape[1], y.shape[3], y.shape[2]), dtype, xp)).transpose(0, 1, 3, 2)
    got = F.conv2d_backward(dy, x, w, **kw)
    want = R.conv2d_backward(to_numpy(dy), to_numpy(x), to_numpy(w), **kw)
    for g, wnt in zip(got, want):
        assert_close(g, wnt, dtype)


def test_conv2d_inputs_unmodified(xp, dtype):
    rng = np.random.default_rng(6)
    for xs, ws, kw in [((2, 4, 6, 5), (4, 1, 3, 3), dict(padding=1, groups=4)),
                       ((2, 3, 6, 5), (2, 3, 2, 3), dict(stride=2)),
                       ((2, 3, 6, 5), (2, 3, 1, 1), dict())]:
        x, w, b = _make(rng, xs, ws, dtype, xp)
        copies = [to_numpy(a).copy() for a in (x, w, b)]
        y = F.conv2d(x, w, b, **kw)
        dy = rand(rng, y.shape, dtype, xp)
        dyc = to_numpy(dy).copy()
        F.conv2d_backward(dy, x, w, **kw)
        F.conv_transpose2d(x, w.transpose(1, 0, 2, 3) if kw.get("groups", 1) == 1 else w, None,
                           **({} if kw.get("groups", 1) == 1 else dict(groups=4)))
        for a, c in zip((x, w, b, dy), copies + [dyc]):
            np.testing.assert_array_equal(to_numpy(a), c)


def test_same_padding_puts_extra_on_bottom_right(xp, dtype):
    """'same' with an even kernel pads (k-1)//2 on top/left and the rest bottom/right, as PyTorch."""
    x = xp.zeros((1, 1, 4, 4), dtype=dtype)
    x[0, 0, 0, 0] = 1  # a delta at the top-left corner
    w = xp.asarray(np.arange(1, 5, dtype=dtype).reshape(1, 1, 2, 2))
    y = to_numpy(F.conv2d(x, w, padding="same"))
    assert y.shape == (1, 1, 4, 4)
    # pad top/left 0: the delta is seen only by output (0, 0) through tap (0, 0).
    want = np.zeros((1, 1, 4, 4))
    want[0, 0, 0, 0] = 1
    np.testing.assert_array_equal(y, want)


# ---------------------------------------------------------------- conv_transpose2d parity

def _transpose_configs(seed, count):
    rng = np.random.default_rng(seed)
    out = [((2, 4, 5, 3), (4, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
           ((1, 4, 4, 4), (4, 1, 3, 3), dict(stride=1, padding=1, groups=4)),
           ((2, 4, 3, 5), (4, 2, 2, 3), dict(stride=(3, 2), padding=(0, 1), output_padding=(2, 0), groups=2)),
           ((1, 3, 4, 4), (3, 2, 1, 1), dict(output_padding=1, dilation=2)),   # output_padding < dilation
           ((0, 2, 3, 3), (2, 2, 3, 3), dict())]
    while len(out) < count + 5:
        g = int(rng.integers(1, 3))
        cin, cog = g * int(rng.integers(1, 3)), int(rng.integers(1, 3))
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        d = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        p = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        op = (int(rng.integers(0, max(s[0], d[0]))), int(rng.integers(0, max(s[1], d[1]))))
        xs = (int(rng.integers(0, 3)), cin, int(rng.integers(1, 7)), int(rng.integers(1, 7)))
        kwargs = dict(stride=s, padding=p, output_padding=op, groups=g, dilation=d)
        try:
            R.conv_transpose2d(np.zeros((1,) + xs[1:]), np.zeros((cin, cog, kh, kw)), **kwargs)
        except ValueError:
            continue
        out.append((xs, (cin, cog, kh, kw), kwargs))
    return out


def test_conv_transpose2d_matches_reference(xp, dtype):
    rng = np.random.default_rng(7)
    for xs, ws, kw in _transpose_configs(7, 25):
        x, w, _ = _make(rng, xs, ws, dtype, xp, bias=False)
        b = rand(rng, (ws[1] * kw.get("groups", 1),), dtype, xp)
        y = F.conv_transpose2d(x, w, b, **kw)
        want = R.conv_transpose2d(to_numpy(x), to_numpy(w), to_numpy(b), **kw)
        assert_close(y, want, dtype)
        dy = rand(rng, want.shape, dtype, xp)
        got = F.conv_transpose2d_backward(dy, x, w, **kw)
        wantg = R.conv_transpose2d_backward(to_numpy(dy), to_numpy(x), to_numpy(w), **kw)
        for g, wnt in zip(got, wantg):
            assert_close(g, wnt, dtype)


# ---------------------------------------------------------------- finite differences

FD_CONV = [((1, 2, 5, 4), (3, 2, 3, 2), dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))),
           ((2, 4, 4, 5), (4, 1, 3, 3), dict(padding=1, groups=4)),
           ((1, 2, 4, 4), (2, 2, 2, 2), dict(padding="same")),
           ((1, 4, 5, 6), (4, 2, 3, 3), dict(stride=2, padding=1, groups=2)),   # grouped_direct, strided
           ((2, 3, 6, 5), (3, 1, 3, 3), dict(stride=2, padding=1, groups=3))]   # depthwise_blocked
FD_TRANSPOSE = [((1, 2, 3, 2), (2, 3, 3, 2), dict(stride=2, padding=1, output_padding=(1, 0))),
                ((1, 4, 3, 3), (4, 1, 2, 3), dict(stride=(1, 2), groups=2, dilation=(2, 1)))]


def _fd_check(fwd, xs, ws, bshape, kw, grads_fn_backend, xp):
    rng = np.random.default_rng(8)
    x, w = rng.uniform(-1, 1, xs), rng.uniform(-1, 1, ws)
    b = rng.uniform(-1, 1, bshape)
    dy = rng.uniform(-1, 1, fwd(x, w, b, **kw).shape)
    num = (numerical_grad(lambda v: fwd(v, w, b, **kw), x, dy),
           numerical_grad(lambda v: fwd(x, v, b, **kw), w, dy),
           numerical_grad(lambda v: fwd(x, w, v, **kw), b, dy))
    got = grads_fn_backend(xp.asarray(dy), xp.asarray(x), xp.asarray(w), **kw)
    for g, n in zip(got, num):
        assert_close(g, n, np.float64, factor=1e4)  # central differences: O(eps^2) + rounding


@pytest.mark.parametrize("case", range(len(FD_CONV)))
def test_conv2d_reference_backward_matches_finite_differences(case):
    xs, ws, kw = FD_CONV[case]
    _fd_check(R.conv2d, xs, ws, (ws[0],), kw, R.conv2d_backward, np)


@pytest.mark.parametrize("case", range(len(FD_CONV)))
def test_conv2d_backward_matches_finite_differences(xp, case):
    xs, ws, kw = FD_CONV[case]
    fwd = lambda x, w, b, **k: to_numpy(F.conv2d(xp.asarray(x), xp.asarray(w), xp.asarray(b), **k))  # noqa: E731
    _fd_check(fwd, xs, ws, (ws[0],), kw, F.conv2d_backward, xp)


@pytest.mark.parametrize("case", range(len(FD_TRANSPOSE)))
def test_conv_transpose2d_reference_backward_matches_finite_differences(case):
    xs, ws, kw = FD_TRANSPOSE[case]
    bshape = (ws[1] * kw.get("groups", 1),)
    _fd_check(R.conv_transpose2d, xs, ws, bshape, kw, R.conv_transpose2d_backward, np)


@pytest.mark.parametrize("case", range(len(FD_TRANSPOSE)))
def test_conv_transpose2d_backward_matches_finite_differences(xp, case):
    xs, ws, kw = FD_TRANSPOSE[case]
    bshape = (ws[1] * kw.get("groups", 1),)
    fwd = lambda x, w, b, **k: to_numpy(F.conv_transpose2d(xp.asarray(x), xp.asarray(w), xp.asarray(b), **k))  # noqa: E731
    _fd_check(fwd, xs, ws, bshape, kw, F.conv_transpose2d_backward, xp)


def test_reference_matches_pytorch():
    """The oracle itself against PyTorch (when installed), float64."""
    torch = pytest.importorskip("torch")
    tF = torch.nn.functional
    rng = np.random.default_rng(9)
    for xs, ws, kw in _configs(9, 20):
        if kw.get("padding") == "same" and (ws[2] % 2 == 0 or ws[3] % 2 == 0):
            continue  # PyTorch warns (and tests run with -W error)
        x, w, b = rng.uniform(-1, 1, xs), rng.uniform(-1, 1, ws), rng.uniform(-1, 1, ws[0])
        np.testing.assert_allclose(R.conv2d(x, w, b, **kw), tF.conv2d(*map(torch.from_numpy, (x, w, b)), **kw).numpy(),
                                   rtol=1e-10, atol=1e-10)
    for xs, ws, kw in _transpose_configs(10, 10):
        x, w = rng.uniform(-1, 1, xs), rng.uniform(-1, 1, ws)
        np.testing.assert_allclose(R.conv_transpose2d(x, w, **kw),
                                   tF.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), **kw).numpy(),
                                   rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- bad input

def test_bad_inputs_raise(xp, dtype):
    rng = np.random.default_rng(11)
    x = rand(rng, (2, 4, 5, 5), dtype, xp)
    w = rand(rng, (6, 4, 3, 3), dtype, xp)
    other = np.float64 if dtype == np.float32 else np.float32

    def raises(exc, match, fn, *a, **k):
        with pytest.raises(exc, match=match):
            fn(*a, **k)

    raises(TypeError, "x: expected dtype float32 or float64, got int64", F.conv2d, xp.zeros((1, 4, 5, 5), dtype=np.int64), w)
    raises(TypeError, "weight: expected dtype", F.conv2d, x, w.astype(other))
    raises(TypeError, "bias: expected dtype", F.conv2d, x, w, xp.zeros(6, dtype=other))
    raises(TypeError, "x: expected a numpy.ndarray", F.conv2d, [[1.0]], w)
    raises(TypeError, "stride: expected an int", F.conv2d, x, w, stride=1.5)
    raises(ValueError, "x: expected a 4-D array", F.conv2d, x[0], w)
    raises(ValueError, "weight: expected a 4-D array", F.conv2d, x, w[0])
    raises(ValueError, r"weight: expected shape \(K, 4, kh, kw\)", F.conv2d, x, w[:, :3])
    raises(ValueError, "x: expected channels divisible by groups=3", F.conv2d, x, w, groups=3)
    raises(ValueError, "weight: expected out channels divisible by groups=4", F.conv2d, x, w[:, :1], groups=4)
    raises(ValueError, "groups: expected an int >= 1", F.conv2d, x, w, groups=0)
    raises(ValueError, r"bias: expected shape \(6,\)", F.conv2d, x, w, xp.zeros(5, dtype=dtype))
    raises(ValueError, "padding: expected an int >= 0, got -1", F.conv2d, x, w, padding=-1)
    raises(ValueError, "stride: expected an int >= 1, got 0", F.conv2d, x, w, stride=0)
    raises(ValueError, "padding: 'same' is not supported for strided", F.conv2d, x, w, stride=2, padding="same")
    raises(ValueError, "padding: expected an int, a pair, 'same' or 'valid'", F.conv2d, x, w, padding="full")
    raises(ValueError, r"x: input size \(H=5, W=5\) with padding 0 and dilated kernel 7x7 gives output size",
           F.conv2d, x, w, dilation=3)
    raises(ValueError, r"grad_out: expected shape \(2, 6, 3, 3\)", F.conv2d_backward, xp.zeros((2, 6, 3, 4), dtype=dtype), x, w)
    raises(TypeError, "grad_out: expected dtype", F.conv2d_backward, xp.zeros((2, 6, 3, 3), dtype=other), x, w)
    raises(ValueError, "output_mask: expected three bools", F.conv2d_backward, xp.zeros((2, 6, 3, 3), dtype=dtype), x, w,
           output_mask=(True, False))
    wt = rand(rng, (4, 3, 3, 3), dtype, xp)
    raises(ValueError, "output_padding: expected a value smaller than either stride or dilation",
           F.conv_transpose2d, x, wt, stride=2, output_padding=2)
    raises(ValueError, r"weight: expected shape \(4, C_out / groups", F.conv_transpose2d, x, w)
    raises(ValueError, r"x: input size \(H=5, W=5\).*gives output size", F.conv_transpose2d, x, wt, padding=5)
    raises(ValueError, r"bias: expected shape \(6,\)", F.conv_transpose2d, x, rand(rng, (4, 3, 3, 3), dtype, xp),
           xp.zeros(5, dtype=dtype), groups=2)
    raises(ValueError, "nbytes: expected an int >= 1", F.set_conv_workspace_limit, 0)


# ---------------------------------------------------------------- Winograd path
# Dense 3x3, stride 1, dilation 1, groups 1 convolutions (forward and grad input) may run
# Winograd F(2x2, 3x3) on the CPU (csrc/conv_winograd.cpp), stride 1 and 2. The tests force it
# with pydl.backends.conv_algorithm("winograd") on shapes too small for the automatic choice;
# _cpu._conv_winograd_calls() proves the path ran. At stride 2 the input gradient is the
# forward's adjoint. CPU-only: the counter belongs to the C++ kernels.

@pytest.fixture
def wino():
    return _backend.cpu()


# (x shape, K, padding): odd and tile-unaligned sizes, all paddings, batch 0 and 1, K != C.
WINO_CONFIGS = [
    ((2, 3, 7, 9), 5, 1),
    ((1, 1, 3, 3), 2, 0),
    ((1, 4, 4, 4), 2, 0),
    ((2, 5, 5, 8), 3, 2),
    ((3, 2, 6, 5), 7, "same"),
    ((1, 6, 1, 1), 4, 1),          # a single pixel: every tap but the centre is padding
    ((1, 3, 2, 11), 2, (2, 0)),
    ((2, 4, 9, 4), 3, (3, 1)),      # padding > 2: grad input reads dy at a positive offset
    ((1, 17, 10, 13), 19, 1),
    ((0, 3, 5, 5), 2, 1),
    ((1, 2, 12, 3), 3, "valid"),
]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("case", range(len(WINO_CONFIGS)))
def test_winograd_matches_reference(wino, dtype, case, stride):
    xs, k, pad = WINO_CONFIGS[case]
    if stride == 2 and pad == "same":
        pad = 1
    rng = np.random.default_rng(100 + case)
    x64, w64, b64 = rng.uniform(-1, 1, xs), rng.uniform(-1, 1, (k, xs[1], 3, 3)), rng.uniform(-1, 1, k)
    x, w, b = (a.astype(dtype) for a in (x64, w64, b64))
    want = R.conv2d(x64, w64, b64, stride=stride, padding=pad)
    dy64 = rng.uniform(-1, 1, want.shape)
    dy = dy64.astype(dtype)
    saved = [a.copy() for a in (x, w, b, dy)]
    before = wino._conv_winograd_calls()
    with pydl.backends.conv_algorithm("winograd"):
        y = F.conv2d(x, w, b, stride=stride, padding=pad)
        gx, gw, gb = F.conv2d_backward(dy, x, w, stride=stride, padding=pad)
    assert wino._conv_winograd_calls() - before == (3 if xs[0] > 0 else 0)  # y, gx, gw
    rx, rw, rb = R.conv2d_backward(dy64, x64, w64, stride=stride, padding=pad)
    assert_close(y, want, dtype)
    assert_close(gx, rx, dtype)
    assert_close(gw, rw, dtype)
    assert_close(gb, rb, dtype)
    for a, s in zip((x, w, b, dy), saved):
        np.testing.assert_array_equal(a, s)


def test_winograd_noncontiguous_inputs(wino, dtype):
    rng = np.random.default_rng(120)
    x = rand(rng, (2, 3, 8, 14), dtype)[:, :, :, ::2]      # (2, 3, 8, 7), strided
    w = rand(rng, (3, 4, 3, 3), dtype).transpose(1, 0, 2, 3)  # (4, 3, 3, 3), transposed
    dy = rand(rng, (2, 4, 8, 7), dtype)
    before = wino._conv_winograd_calls()
    with pydl.backends.conv_algorithm("winograd"):
        y = F.conv2d(x, w, padding="same")
        (gx, _, _) = F.conv2d_backward(dy, x, w, padding="same", output_mask=(True, False, False))
    assert wino._conv_winograd_calls() - before == 2
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    assert_close(y, R.conv2d(x64, w64, padding="same"), dtype)
    assert_close(gx, R.conv2d_backward(dy.astype(np.float64), x64, w64, padding="same")[0], dtype)


def test_winograd_auto_choice_agrees_with_im2col(wino, dtype):
    """The automatic rule takes Winograd for >= 16 channels and >= 192 tiles; the result agrees
    with the im2col path."""
    rng = np.random.default_rng(121)
    # 20 and 18 channels: not in 16-channel lane blocks (winograd_blocked)
    x, w, b = rand(rng, (2, 20, 24, 21), dtype), rand(rng, (18, 20, 3, 3), dtype), rand(rng, (18,), dtype)
    dy = rand(rng, (2, 18, 24, 21), dtype)
    before = wino._conv_winograd_calls()
    y = F.conv2d(x, w, b, padding=1)
    gx = F.conv2d_backward(dy, x, w, padding=1, output_mask=(True, False, False))[0]
    assert wino._conv_winograd_calls() - before == 2
    with pydl.backends.conv_algorithm("im2col_tiled"):
        y0 = F.conv2d(x, w, b, padding=1)
        gx0 = F.conv2d_backward(dy, x, w, padding=1, output_mask=(True, False, False))[0]
    assert wino._conv_winograd_calls() - before == 2
    x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x, w, b, dy))
    for got in (y, y0):
        assert_close(got, R.conv2d(x64, w64, b64, padding=1), dtype)
    for got in (gx, gx0):
        assert_close(got, R.conv2d_backward(dy64, x64, w64, padding=1)[0], dtype)
    # Thin layers and small images stay on im2col.
    F.conv2d(x[:, :3], w[:, :3], padding=1)
    F.conv2d(x[:1, :, :8, :8], w, padding=1)
    assert wino._conv_winograd_calls() - before == 2


@pytest.mark.parametrize("xs,k,takes_fwd,takes_wgrad", [
    ((4, 64, 28, 28), 64, True, True),     # 196 tiles of a 14x14 output
    ((4, 16, 28, 28), 32, False, True),    # too few input channels for the forward
    ((16, 64, 14, 14), 64, False, False),  # 7x7 output: 2x2 tiles overhang it by 64/49
    ((1, 64, 28, 28), 64, False, False),   # 49 tiles
])
def test_winograd_stride2_auto_choice(wino, dtype, xs, k, takes_fwd, takes_wgrad):
    """The automatic rule at stride 2: the forward needs >= 64 channels, both need >= 192 tiles that
    cover the output with little overhang; taken or not, the results match the reference."""
    rng = np.random.default_rng(123)
    x, w, b = rand(rng, xs, dtype), rand(rng, (k, xs[1], 3, 3), dtype), rand(rng, (k,), dtype)
    kw = dict(stride=2, padding=1)
    x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
    want = R.conv2d(x64, w64, b64, **kw)
    dy = rand(rng, want.shape, dtype)
    before = wino._conv_winograd_calls()
    y = F.conv2d(x, w, b, **kw)
    assert wino._conv_winograd_calls() - before == takes_fwd
    gx, gw, gb = F.conv2d_backward(dy, x, w, **kw)
    assert wino._conv_winograd_calls() - before == 2 * takes_fwd + takes_wgrad  # gx: the forward's rule
    assert_close(y, want, dtype)
    for got, ref in zip((gx, gw, gb), R.conv2d_backward(dy.astype(np.float64), x64, w64, **kw)):
        assert_close(got, ref, dtype)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape,k,tiles,threads", [
    ((1, 3, 5, 70), 4, 4, 1),     # a tile row (35 tiles at stride 1) is cut into segments of <= 4 tiles
    ((3, 2, 9, 6), 3, 7, 1),      # chunks of whole tile rows
    ((2, 16, 24, 24), 16, 9, 2),  # big enough for threads: each thread gets its own slice
])
def test_winograd_chunks_stay_under_workspace_cap(wino, dtype, shape, k, tiles, threads, stride):
    """A cap of the transformed weights plus `tiles` tiles (per thread) forces many chunks;
    the workspace peak stays under it (the weight gradient keeps a 16*C*K accumulator per
    thread, so it takes fewer tiles). Forced under a cap below one tile, it raises the cap error."""
    rng = np.random.default_rng(122)
    c = shape[1]
    x, w, b = rand(rng, shape, dtype), rand(rng, (k, c, 3, 3), dtype), rand(rng, (k,), dtype)
    dy = rand(rng, (shape[0], k) + shape[2:], dtype)
    x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x, w, b, dy))
    kw = dict(stride=stride, padding=1)
    want = R.conv2d(x64, w64, b64, **kw)
    dy, dy64 = dy[:, :, ::stride, ::stride], dy64[:, :, ::stride, ::stride]
    want_gx, want_gw, _ = R.conv2d_backward(dy64, x64, w64, **kw)
    item = np.dtype(dtype).itemsize
    values = 16 if stride == 1 else 25  # transformed values per tile and channel
    per_tile = (values * (c + k) + (16 if stride == 1 else 30)) * item  # + row buffers
    cpu = _backend.cpu()
    strides_pad = 32 * (4096 + 320)  # per thread: the 4 KiB-staggered strides of the transforms
    u_bytes = 16 * ((c * k * item + 4095) // 4096 * 4096 + 320)  # the 16 transformed weights, staggered
    room = u_bytes + threads * (strides_pad + tiles * per_tile)
    F.set_conv_workspace_limit(room)
    before = wino._conv_winograd_calls()
    cpu.conv_workspace_peak_bytes(True)
    # At stride 2 the input gradient needs whole tile rows per chunk (else it declines: im2col).
    whole_rows = stride == 1 or tiles >= (want.shape[3] + 1) // 2
    with pydl.backends.conv_algorithm(forward="winograd", weight_grad="winograd"):
        y = F.conv2d(x, w, b, **kw)
        assert 0 < cpu.conv_workspace_peak_bytes() <= room
        gw = F.conv2d_backward(dy, x, w, **kw, output_mask=(False, True, False))[1]
        assert 0 < cpu.conv_workspace_peak_bytes() <= room
    with pydl.backends.conv_algorithm(input_grad="winograd" if whole_rows else "im2col_tiled"):
        gx = F.conv2d_backward(dy, x, w, **kw, output_mask=(True, False, False))[0]
    assert wino._conv_winograd_calls() - before == (3 if whole_rows else 2)
    assert_close(y, want, dtype)
    assert_close(gx, want_gx, dtype)
    assert_close(gw, want_gw, dtype)
    F.set_conv_workspace_limit(16 * c * k * item)
    with pydl.backends.conv_algorithm("winograd"):
        for call in (lambda: F.conv2d(x, w, b, **kw), lambda: F.conv2d_backward(dy, x, w, **kw)):
            with pytest.raises(ValueError, match="'winograd' does not fit the workspace cap"):
                call()


def test_winograd_declined_falls_back_to_im2col(wino, dtype):
    """A shape the automatic rule gives Winograd, under a cap below one Winograd chunk: the call
    declines it at run time and takes the im2col algorithm instead, with the same results."""
    rng = np.random.default_rng(124)
    xs, k = (4, 20, 28, 28), 20  # not in 16-channel lane blocks (winograd_blocked)
    x, w, b = rand(rng, xs, dtype), rand(rng, (k, xs[1], 3, 3), dtype), rand(rng, (k,), dtype)
    for direction in ("forward", "input_grad", "weight_grad"):
        assert pydl.backends.conv_algorithm_choice(direction, xs, w.shape, padding=1, dtype=dtype) == "winograd"
    x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
    want = R.conv2d(x64, w64, b64, padding=1)
    dy = rand(rng, want.shape, dtype)
    F.set_conv_workspace_limit(16 * xs[1] * k * np.dtype(dtype).itemsize)
    before = wino._conv_winograd_calls()
    y = F.conv2d(x, w, b, padding=1)
    gx, gw, _ = F.conv2d_backward(dy, x, w, padding=1)
    assert wino._conv_winograd_calls() == before
    assert_close(y, want, dtype)
    for got, ref in zip((gx, gw), R.conv2d_backward(dy.astype(np.float64), x64, w64, padding=1)):
        assert_close(got, ref, dtype)


@pytest.mark.parametrize("xs,k,kw", [((2, 3, 5, 4), 2, dict(padding=1)), ((1, 2, 4, 5), 3, dict(padding=(2, 0))),
                                     ((2, 3, 7, 6), 2, dict(stride=2, padding=1)),
                                     ((1, 2, 6, 9), 3, dict(stride=2, padding=(0, 2))),
                                     ((1, 2, 7, 8), 2, dict(padding=(2, 6), dilation=(2, 3)))])
def test_winograd_backward_matches_finite_differences(wino, xs, k, kw):
    fwd = lambda x, w, b, **kw: F.conv2d(x, w, b, **kw)  # noqa: E731
    before = wino._conv_winograd_calls()
    with pydl.backends.conv_algorithm("winograd"):
        _fd_check(fwd, xs, (k, xs[1], 3, 3), (k,), kw, F.conv2d_backward, np)
    assert wino._conv_winograd_calls() > before


# Dilated 3x3 convolutions of stride 1 whose padding is a multiple of the dilation run the
# stride-1 Winograd on the dh * dw phases of every image (space-to-batch); the epilogue is applied
# in y's layout as the phases go back. Sizes not multiples of the dilation, smaller than it,
# padding d and 2d, batch 1 and 3, dh != dw.
WINO_DILATED = [
    ((1, 3, 11, 10), 4, 2, 2),
    ((3, 4, 13, 7), 5, 3, 3),
    ((1, 5, 9, 14), 3, 8, 4),
    ((3, 3, 5, 11), 2, (12, 6), 6),
    ((1, 2, 1, 3), 3, 4, 4),          # a single row: every phase but the first is all padding
    ((2, 3, 10, 9), 4, (4, 3), (2, 3)),
    ((3, 17, 30, 29), 18, 2, 2),       # big enough to run the permutes on threads
]


@pytest.mark.parametrize("case", range(len(WINO_DILATED)))
def test_winograd_dilated_matches_reference(wino, dtype, case):
    """Forward with bias, residual and activation, input and weight gradients, forced onto the
    Winograd path (three calls), against the float64 reference."""
    xs, k, pad, dil = WINO_DILATED[case]
    rng = np.random.default_rng(130 + case)
    kw = dict(padding=pad, dilation=dil)
    x64, w64, b64 = rng.uniform(-1, 1, xs), rng.uniform(-1, 1, (k, xs[1], 3, 3)), rng.uniform(-1, 1, k)
    conv = R.conv2d(x64, w64, b64, **kw)
    r64, dy64 = rng.uniform(-1, 1, conv.shape), rng.uniform(-1, 1, conv.shape)
    x, w, b, r, dy = (a.astype(dtype) for a in (x64, w64, b64, r64, dy64))
    saved = [a.copy() for a in (x, w, b, r, dy)]
    before = wino._conv_winograd_calls()
    with pydl.backends.conv_algorithm("winograd"):
        y = F.conv2d(x, w, b, **kw, residual=r, activation="leaky_relu", negative_slope=0.2)
        gx, gw, gb = F.conv2d_backward(dy, x, w, **kw)
    assert wino._conv_winograd_calls() - before == 3
    rx, rw, rb = R.conv2d_backward(dy64, x64, w64, **kw)
    assert_close(y, R.leaky_relu(conv + r64, 0.2), dtype)
    assert_close(gx, rx, dtype)
    assert_close(gw, rw, dtype)
    assert_close(gb, rb, dtype)
    for a, s in zip((x, w, b, r, dy), saved):
        np.testing.assert_array_equal(a, s)


# Grouped layers: the weights transformed per group and the 16 GEMMs run per group, in every
# direction (stride 1's input gradient takes the flipped forward, stride 2's the adjoint).
# Channels per group differ between input and output.
WINO_GROUPED = [
    ((2, 8, 9, 8), 8, dict(padding=1, groups=2)),
    ((2, 6, 7, 9), 9, dict(padding=1, groups=3)),                    # 2 in, 3 out per group
    ((2, 12, 10, 9), 6, dict(stride=2, padding=1, groups=3)),        # stride 2: 4 in, 2 out per group
    ((1, 16, 11, 10), 32, dict(padding=2, dilation=2, groups=4)),    # dilated: the phases per group
]


@pytest.mark.parametrize("case", range(len(WINO_GROUPED)))
def test_winograd_grouped_matches_reference(wino, dtype, case):
    xs, k, kw = WINO_GROUPED[case]
    rng = np.random.default_rng(150 + case)
    x64, w64 = rng.uniform(-1, 1, xs), rng.uniform(-1, 1, (k, xs[1] // kw["groups"], 3, 3))
    b64 = rng.uniform(-1, 1, k)
    conv = R.conv2d(x64, w64, b64, **kw)
    r64, dy64 = rng.uniform(-1, 1, conv.shape), rng.uniform(-1, 1, conv.shape)
    x, w, b, r, dy = (a.astype(dtype) for a in (x64, w64, b64, r64, dy64))
    before = wino._conv_winograd_calls()
    with pydl.backends.conv_algorithm("winograd"):
        y = F.conv2d(x, w, b, **kw, residual=r, activation="relu")
        gx, gw, _ = F.conv2d_backward(dy, x, w, **kw)
    assert wino._conv_winograd_calls() - before == 3
    rx, rw, _ = R.conv2d_backward(dy64, x64, w64, **kw)
    assert_close(y, R.relu(conv + r64), dtype)
    assert_close(gx, rx, dtype)
    assert_close(gw, rw, dtype)


def test_winograd_dilated_padding_not_a_multiple_raises():
    """Space-to-batch needs the padding to be a multiple of the dilation (each phase of y then
    reads one phase of x); forcing Winograd otherwise raises, naming padding and dilation."""
    x, w = np.ones((1, 2, 9, 9), np.float32), np.ones((3, 2, 3, 3), np.float32)
    for direction in ("forward", "input_grad", "weight_grad"):
        with pydl.backends.conv_algorithm(**{direction: "winograd"}):
            for kw in (dict(padding=(1, 2), dilation=2), dict(padding=(2, 4), dilation=(2, 3))):
                msg = (f"'winograd' does not apply to this {direction} .*padding {kw['padding'][0]}x"
                       f"{kw['padding'][1]}, dilation")
                with pytest.raises(ValueError, match=msg):
                    pydl.backends.conv_algorithm_choice(direction, x.shape, w.shape, **kw)
                with pytest.raises(ValueError, match=msg):
                    if direction == "forward":
                        F.conv2d(x, w, **kw)
                    else:
                        F.conv2d_backward(R.conv2d(x, w, **kw).astype(np.float32), x, w, **kw)


@pytest.mark.parametrize("xs,k,kw,takes", [
    ((1, 256, 28, 28), 256, dict(padding=2, dilation=2), True),    # 4 phases of 14x14: 196 tiles
    ((1, 16, 33, 33), 16, dict(padding=3, dilation=3), True),      # 9 phases of 11x11, tiled 12x12
    ((8, 128, 28, 28), 128, dict(padding=6, dilation=6), False),   # 36 phases of 5x5 tiled 6x6: 1.65x the outputs
    ((1, 256, 14, 14), 256, dict(padding=2, dilation=2), "fwd"),   # 64 tiles: too few for the weight grad
    ((1, 256, 6, 6), 256, dict(padding=2, dilation=2), False),     # 36 tiles
    ((4, 8, 28, 28), 8, dict(padding=2, dilation=2), False),       # too few channels
    ((4, 64, 28, 28), 64, dict(padding=1, dilation=2), False),     # padding not a multiple of the dilation
])
def test_winograd_dilated_auto_choice(xs, k, kw, takes):
    """The automatic rule judges a dilated layer on its phase batch: enough channels and tiles (48
    for the forward and input gradient, 192 for the weight gradient), and tiles that do not
    overhang the phases much."""
    for direction in ("forward", "input_grad", "weight_grad"):
        got = pydl.backends.conv_algorithm_choice(direction, xs, (k, xs[1], 3, 3), **kw)
        want = takes is True or (takes == "fwd" and direction != "weight_grad")
        assert (got == "winograd") == want, (direction, got)


def _phase_bytes(n, c, h, w, k, ho, wo, d, item):
    """The dilated Winograd path's phase copies (x and y, or dy and dx), each rounded up to 64
    elements (conv_winograd.cpp)."""
    q = lambda m, b, cc: -(-(n * d * d * cc * -(-m // d) * -(-b // d)) // 64) * 64  # noqa: E731
    return (q(h, w, c) + q(ho, wo, k)) * item


def test_winograd_dilated_phases_count_against_workspace_cap(wino, dtype):
    """The phase copies count against the cap with Winograd's own workspace: with room for both
    the Winograd workspace peak stays under the cap less the phases; with room for the phases and
    the transformed weights only (less than one Winograd chunk), or for the phases alone, the path
    declines (forced: the cap error; otherwise im2col)."""
    rng = np.random.default_rng(140)
    xs, k, d = (2, 16, 60, 58), 16, 2
    kw = dict(padding=d, dilation=d)
    x, w, b = rand(rng, xs, dtype), rand(rng, (k, xs[1], 3, 3), dtype), rand(rng, (k,), dtype)
    x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
    want = R.conv2d(x64, w64, b64, **kw)
    dy = rand(rng, want.shape, dtype)
    want_g = R.conv2d_backward(dy.astype(np.float64), x64, w64, **kw)
    item = np.dtype(dtype).itemsize
    phases = _phase_bytes(*xs, k, *want.shape[2:], d, item)
    # Winograd's own workspace (as in test_winograd_chunks_stay_under_workspace_cap): the 16
    # transformed weights (the weight gradient: an accumulator per thread) and, per thread, the
    # staggered transform strides and its tiles. Its smallest chunk needs more than u_bytes.
    u_bytes = 16 * ((xs[1] * k * item + 4095) // 4096 * 4096 + 320)
    per_tile = (16 * (xs[1] + k) + 16) * item
    room = 3 * u_bytes + 2 * (32 * (4096 + 320) + 24 * per_tile)
    assert phases > room  # without counting the phases Winograd would fit in every case below
    cpu = _backend.cpu()
    for direction in ("forward", "input_grad", "weight_grad"):  # the automatic rule takes it
        assert pydl.backends.conv_algorithm_choice(direction, xs, w.shape, **kw, dtype=dtype) == "winograd"
    for limit, takes in ((phases + room, True), (phases + u_bytes, False), (phases, False)):
        F.set_conv_workspace_limit(limit)
        before = wino._conv_winograd_calls()
        cpu.conv_workspace_peak_bytes(True)
        y = F.conv2d(x, w, b, **kw)
        gx, gw, _ = F.conv2d_backward(dy, x, w, **kw)
        assert wino._conv_winograd_calls() - before == (3 if takes else 0)
        if takes:
            assert 0 < cpu.conv_workspace_peak_bytes() <= limit - phases
        assert_close(y, want, dtype)
        assert_close(gx, want_g[0], dtype)
        assert_close(gw, want_g[1], dtype)
        if not takes:
            for direction in ("forward", "input_grad", "weight_grad"):
                with pydl.backends.conv_algorithm(**{direction: "winograd"}):
                    with pytest.raises(ValueError, match="'winograd' does not fit the workspace cap"):
                        _run_direction(direction, x, w, b, dy, kw)

# --- depthwise (the automatic choice: depthwise_blocked) ---
# Depthwise (groups == C == K) interleaves 8 float / 4 double channels: widths around the vector
# width, W < 8, padding 0..2, dilation, stride 2, even kernels, and the multiplier (K = 2C, the
# grouped paths).

_DW_CASES = [
    ((2, 3, 7, 5), 3, dict(padding=1)),
    ((1, 2, 5, 3), 3, dict(padding=0)),                 # W < 8, Wo = 1
    ((2, 3, 9, 4), 3, dict(padding=1)),                 # Wo = 4: a float vector spans 2 rows
    ((2, 4, 9, 17), 3, dict(padding=2)),                # output wider than the input
    ((1, 3, 12, 8), 3, dict(padding=1)),                # W a multiple of 8
    ((1, 3, 6, 16), 3, dict(padding=(0, 1))),
    ((2, 2, 11, 9), 3, dict(padding=2, dilation=2)),
    ((1, 2, 10, 13), 5, dict(padding=2)),
    ((1, 3, 9, 23), 5, dict(padding=(1, 2), dilation=(2, 1))),
    ((1, 2, 4, 4), 5, dict(padding=2)),                 # kernel larger than the image
    ((2, 3, 9, 12), 3, dict(stride=2, padding=1)),      # stride 2: generic loops
    ((1, 2, 7, 9), 3, dict(stride=(1, 2), padding=1)),
    ((1, 4, 8, 10), 2, dict(padding=1)),                # even kernel: generic loops
    ((0, 3, 5, 5), 3, dict(padding=1)),                 # empty batch
    ((1, 1, 1, 1), 3, dict(padding=1)),
    ((3, 40, 6, 9), 3, dict(padding=1)),                # big enough to run on threads
]


@pytest.mark.parametrize("case", range(len(_DW_CASES)))
def test_conv2d_depthwise_matches_reference(xp, dtype, case):
    xs, k, kw = _DW_CASES[case]
    for mult in (1, 2):
        rng = np.random.default_rng(700 + case + 50 * mult)
        c = xs[1]
        x, w, b = _make(rng, xs, (c * mult, 1, k, k), dtype, xp)
        kw = dict(kw, groups=c)
        y = F.conv2d(x, w, b, **kw)
        assert_close(y, R.conv2d(to_numpy(x), to_numpy(w), to_numpy(b), **kw), dtype)
        dy = rand(rng, y.shape, dtype, xp)
        got = F.conv2d_backward(dy, x, w, **kw)
        want = R.conv2d_backward(to_numpy(dy), to_numpy(x), to_numpy(w), **kw)
        for g, wnt in zip(got, want):
            assert_close(g, wnt, dtype)


# Each thread's scratch holds a padded plane from call to call: calls whose outputs have one size
# but whose inputs or padding differ must not see each other's border.
@pytest.mark.parametrize("dtype_", [np.float32, np.float64])
def test_conv2d_depthwise_border_follows_geometry(dtype_):
    rng = np.random.default_rng(5)
    calls = [((1, 2, 10, 12), dict(padding=0)), ((1, 2, 8, 10), dict(padding=1)),
             ((1, 2, 8, 12), dict(padding=(1, 0))), ((1, 2, 8, 10), dict(padding=(1, 2), dilation=(1, 2))),
             ((1, 2, 10, 12), dict(padding=0)), ((1, 2, 8, 10), dict(padding=1))]
    for xs, kw in calls + calls[::-1]:
        x, w, b = _make(rng, xs, (2, 1, 3, 3), dtype_, np)
        kw = dict(kw, groups=2)
        y = F.conv2d(x, w, b, **kw)
        assert y.shape[2:] == (8, 10)
        assert_close(y, R.conv2d(x, w, b, **kw), dtype_)
        dy = rand(rng, y.shape, dtype_, np)
        for g, want in zip(F.conv2d_backward(dy, x, w, **kw), R.conv2d_backward(dy, x, w, **kw)):
            assert_close(g, want, dtype_)


@pytest.mark.parametrize("k,kw", [(3, dict(padding=1)), (5, dict(padding=(2, 1), dilation=(1, 2))),
                                  (3, dict(padding=0))])
def test_conv2d_depthwise_finite_differences(k, kw):
    rng = np.random.default_rng(11)
    x, w, _ = _make(rng, (1, 2, 6, 11), (2, 1, k, k), np.float64, np)
    kw = dict(kw, groups=2)
    dy = rand(rng, R.conv2d(x, w, **kw).shape, np.float64)
    gx, gw, _ = F.conv2d_backward(dy, x, w, **kw)
    assert_close(gx, numerical_grad(lambda v: R.conv2d(v, w, **kw), x, dy), np.float64, factor=1e4)
    assert_close(gw, numerical_grad(lambda v: R.conv2d(x, v, **kw), w, dy), np.float64, factor=1e4)


def test_conv2d_depthwise_weight_grad_is_deterministic():
    """Per-block partials are summed in image order: repeated calls agree bit for bit."""
    rng = np.random.default_rng(12)
    x, w, _ = _make(rng, (6, 64, 14, 15), (64, 1, 3, 3), np.float32, np)
    dy = rand(rng, (6, 64, 14, 15), np.float32)
    first = F.conv2d_backward(dy, x, w, padding=1, groups=64)[1]
    for _ in range(3):
        assert np.array_equal(F.conv2d_backward(dy, x, w, padding=1, groups=64)[1], first)


# --- image-parallel im2col forward (C/groups*kh*kw >= 16, Ho*Wo >= 64); unless stride 1 keeps
# the width, its im2col goes through a zero-padded copy of each plane ---

PER_IMAGE_CASES = [
    ((3, 32, 17, 16), (5, 32, 3, 3), dict(stride=2, padding=1)),
    ((2, 24, 14, 13), (4, 12, 5, 5), dict(groups=2)),
    ((1, 16, 20, 19), (3, 16, 4, 4), dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))),
    ((4, 40, 18, 18), (7, 40, 3, 3), dict(stride=2, padding=0)),
    ((3, 1, 28, 27), (6, 1, 5, 5), dict()),                                   # shallow, 'valid'
    ((2, 3, 31, 29), (4, 3, 3, 3), dict(stride=3, padding=(4, 0))),           # pad > kernel; rows past the last window
    ((3, 4, 25, 26), (5, 4, 3, 2), dict(stride=(2, 3), padding=(3, 1), dilation=(2, 3))),
    ((2, 6, 19, 23), (4, 3, 3, 3), dict(stride=2, padding=1, groups=2)),
    ((2, 2, 40, 9), (3, 2, 3, 3), dict(stride=(1, 2), padding=(0, 1))),         # stride 1 rows, stride 2 columns
    # Strided im2col copies a tap row / column that repeats an earlier one shifted by one output:
    ((2, 8, 21, 22), (3, 8, 3, 3), dict(stride=2, padding=2, dilation=2)),      # shift by 1 tap each way
    ((2, 4, 30, 31), (3, 4, 5, 5), dict(stride=3, padding=2)),                  # by 3: taps 3, 4 from 0, 1
    ((1, 8, 3, 131), (2, 8, 3, 3), dict(stride=2)),                             # one output row: columns only
    ((1, 8, 131, 3), (2, 8, 3, 3), dict(stride=2)),                             # one output column: rows only
    ((2, 4, 23, 35), (3, 4, 4, 3), dict(stride=(2, 3), padding=1, dilation=(1, 3))),  # by 2 rows, 1 column
]


@pytest.mark.parametrize("xs,ws,kw", PER_IMAGE_CASES)
def test_conv2d_per_image_forward_matches_reference(xp, dtype, xs, ws, kw):
    rng = np.random.default_rng(21)
    x, w, b = _make(rng, xs, ws, dtype, xp)
    want = R.conv2d(to_numpy(x), to_numpy(w), to_numpy(b), **kw)
    assert_close(F.conv2d(x, w, b, **kw), want, dtype)
    assert_close(F.conv2d(x, w, None, **kw), R.conv2d(to_numpy(x), to_numpy(w), None, **kw), dtype)
    F.set_conv_workspace_limit(4096)  # below one image's columns: the tiled path
    assert_close(F.conv2d(x, w, b, **kw), want, dtype)


# The same shapes backward: strided ones take the image-parallel grad input, which sums each
# image's columns through a padded plane (input rows and columns past the last window get 0).
@pytest.mark.parametrize("xs,ws,kw", PER_IMAGE_CASES)
def test_conv2d_per_image_backward_matches_reference(xp, dtype, xs, ws, kw):
    rng = np.random.default_rng(22)
    x, w, _ = _make(rng, xs, ws, dtype, xp, bias=False)
    dy = rand(rng, R.conv2d(np.zeros(xs), np.zeros(ws), **kw).shape, dtype, xp)
    want = R.conv2d_backward(to_numpy(dy), to_numpy(x), to_numpy(w), **kw)
    for limit in (None, 4096):  # 4096 bytes: below one image's columns, the tiled path
        if limit:
            F.set_conv_workspace_limit(limit)
        for got, wnt in zip(F.conv2d_backward(dy, x, w, **kw), want):
            assert_close(got, wnt, dtype)


def test_conv2d_weight_and_bias_grads_identical_across_thread_counts(tmp_path):
    """Weight and bias gradients are reduced in a fixed order: 1 and 2 OpenMP threads agree bit for bit
    (depthwise, direct_blocked)."""
    import os
    import subprocess
    import sys
    script = (
        "import sys, numpy as np, pydl.functional as F\n"
        "r = np.random.default_rng(5)\n"
        "x = r.standard_normal((4, 96, 20, 23)).astype(np.float32)\n"
        "w = r.standard_normal((96, 1, 3, 3)).astype(np.float32)\n"
        "dy = r.standard_normal((4, 96, 20, 23)).astype(np.float32)\n"
        "g = F.conv2d_backward(dy, x, w, padding=1, groups=96)\n"
        # direct_blocked's weight gradient: a grouped 7x7 layer, and a stem (its lane blocks split)
        "xg, wg = r.standard_normal((5, 64, 7, 7)).astype(np.float32), r.standard_normal((64, 32, 3, 3))\n"
        "g += F.conv2d_backward(np.ones((5, 64, 7, 7), np.float32), xg, wg.astype(np.float32), padding=1, "
        "groups=2)[1:2]\n"
        "xs, ws = r.standard_normal((3, 3, 40, 37)).astype(np.float32), r.standard_normal((32, 3, 7, 7))\n"
        "g += F.conv2d_backward(r.standard_normal((3, 32, 20, 19)).astype(np.float32), xs, ws.astype(np.float32), "
        "stride=2, padding=3)[1:2]\n"
        "np.savez(sys.argv[1], *g)\n")
    outs = []
    for nt in ("1", "2"):
        path = str(tmp_path / f"g{nt}.npz")
        # The child imports the pydl this process imported (installed or in-tree build) and
        # starts in tmp_path, so a source checkout in the current directory cannot shadow it.
        here = os.path.dirname(os.path.dirname(_backend.__file__))
        env = dict(os.environ, OMP_NUM_THREADS=nt, PYTHONPATH=os.pathsep.join([here, *sys.path]))
        subprocess.run([sys.executable, "-c", script, path], check=True, env=env, cwd=tmp_path)
        outs.append(np.load(path))
    for k in outs[0]:
        assert np.array_equal(outs[0][k], outs[1][k])


# ---------------------------------------------------------------- fused epilogue (inference)
# conv2d(..., activation=, residual=) applies y = act(conv + bias + residual) inside every
# forward path: each case below takes one path (forced where a knob exists).

_ACT_REF = {  # the float64 oracles of pydl.reference (leaky_relu at slope 0.2)
    None: lambda v: v,
    "relu": R.relu,
    "relu6": R.relu6,
    "leaky_relu": lambda v: R.leaky_relu(v, 0.2),
    "silu": R.silu,
    "hardswish": R.hardswish,
}

# (x shape, w shape, conv kwargs, forced forward algorithm (None: the automatic rule), workspace
# limit or None)
_FUSED_PATHS = {
    "depthwise": ((2, 3, 9, 12), (3, 1, 3, 3), dict(stride=2, padding=1, groups=3), "depthwise", None),
    "depthwise blocked": ((2, 11, 9, 12), (11, 1, 3, 3), dict(stride=2, padding=1, groups=11),
                          "depthwise_blocked", None),
    "depthwise blocked rows": ((2, 16, 7, 7), (16, 1, 7, 7), dict(padding=3, groups=16), "depthwise_blocked", None),
    "winograd s1": ((2, 3, 7, 9), (5, 3, 3, 3), dict(padding=1), "winograd", None),
    "winograd s2": ((2, 3, 7, 9), (5, 3, 3, 3), dict(stride=2, padding=1), "winograd", None),
    "winograd dilated": ((2, 3, 7, 9), (5, 3, 3, 3), dict(padding=(4, 2), dilation=2), "winograd", None),
    "1x1": ((2, 6, 5, 7), (4, 6, 1, 1), dict(), "gemm_1x1", None),
    "grouped 1x1": ((2, 6, 5, 7), (4, 3, 1, 1), dict(groups=2), "gemm_1x1", None),
    "per image": ((3, 2, 28, 27), (6, 2, 5, 5), dict(), "im2col_per_image", None),
    "tiles of images": ((5, 3, 5, 5), (4, 3, 3, 3), dict(padding=1), "im2col_tiled", None),
    "tile rows of one image": ((1, 5, 6, 7), (72, 5, 3, 3), dict(padding=1), "im2col_tiled", None),
    "tiles of pixels": ((1, 4, 25, 26), (5, 4, 3, 2), dict(stride=(2, 3), padding=(3, 1), dilation=(2, 3)),
                        "im2col_tiled", 4096),
    "grouped": ((2, 6, 19, 23), (4, 3, 3, 3), dict(stride=2, padding=1, groups=2), "im2col_tiled", None),
    "grouped direct": ((2, 8, 9, 11), (12, 2, 3, 3), dict(padding=1, groups=4), "grouped_direct", None),
    "direct blocked": ((2, 32, 7, 6), (32, 16, 3, 3), dict(stride=(1, 2), padding=1, groups=2), "direct_blocked",
                       None),
}


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("activation", list(_ACT_REF), ids=str)
@pytest.mark.parametrize("path", list(_FUSED_PATHS))
def test_conv2d_fused_epilogue_matches_reference(xp, dtype, path, activation, residual):
    xs, ws, kw, algorithm, limit = _FUSED_PATHS[path]
    rng = np.random.default_rng(list(_FUSED_PATHS).index(path))
    x64, w64, b64 = rng.uniform(-1, 1, xs), rng.uniform(-1, 1, ws), rng.uniform(-1, 1, ws[0])
    conv = R.conv2d(x64, w64, b64, **kw)
    r64 = rng.uniform(-1, 1, conv.shape) if residual else None
    want = _ACT_REF[activation](conv + (r64 if residual else 0))
    x, w, b = (xp.asarray(a.astype(dtype)) for a in (x64, w64, b64))
    r = xp.asarray(r64.astype(dtype)) if residual else None
    saved = [to_numpy(a).copy() for a in (x, w, b) + ((r,) if residual else ())]
    cpu = _backend.cpu()
    old_limit = F.get_conv_workspace_limit()
    try:
        if limit:
            F.set_conv_workspace_limit(limit)
        calls = cpu._conv_winograd_calls()
        with pydl.backends.conv_algorithm(forward=algorithm if algorithm and xp is np else "auto"):
            got = F.conv2d(x, w, b, **kw, activation=activation, residual=r, negative_slope=0.2)
        if xp is np and algorithm == "winograd":
            assert cpu._conv_winograd_calls() == calls + 1, "the Winograd path did not run"
    finally:
        F.set_conv_workspace_limit(old_limit)
    assert_close(got, want, dtype)
    for a, s in zip((x, w, b) + ((r,) if residual else ()), saved):
        assert np.array_equal(to_numpy(a), s), "an input was modified"


def test_conv2d_fused_bad_arguments():
    x, w = np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3))
    with pytest.raises(ValueError, match="activation"):
        F.conv2d(x, w, activation="gelu")
    with pytest.raises(ValueError, match="activation"):
        F.conv2d(x, w, activation=1)
    with pytest.raises(ValueError, match="residual"):
        F.conv2d(x, w, residual=np.ones((1, 3, 5, 5)))
    with pytest.raises(TypeError, match="residual"):
        F.conv2d(x, w, residual=np.ones((1, 3, 3, 3), np.float32))
    with pytest.raises(TypeError, match="residual"):
        F.conv2d(x, w, residual=[[1.0]])
    with pytest.raises(ValueError, match="negative_slope"):
        F.conv2d(x, w, activation="leaky_relu", negative_slope=float("nan"))
    with pytest.raises(TypeError, match="fused"):
        F.conv2d_backward(np.ones((1, 3, 3, 3)), x, w, activation="relu")


def test_conv2d_fused_nan_propagates():
    """NaN from the convolution stays NaN through every activation, as in PyTorch."""
    x = np.ones((1, 1, 3, 3))
    x[0, 0, 1, 1] = np.nan
    for act in _ACT_REF:
        y = F.conv2d(x, np.ones((1, 1, 1, 1)), activation=act)
        assert np.isnan(y[0, 0, 1, 1]) and np.isfinite(np.delete(y.ravel(), 4)).all(), act


# ---------------------------------------------------------------- the algorithm table
# Every CPU algorithm forced (pydl.backends.conv_algorithm) on every shape of this list in each
# direction: where it applies it must match the reference; where it does not, the call raises
# a ValueError naming it (conv_algorithm_choice and the call agree). Every (algorithm,
# direction) pair of the table runs somewhere in this list.

_ALGO_CASES = [
    ((2, 4, 9, 8), (5, 4, 3, 3), dict(padding=1)),                      # dense 3x3
    ((2, 4, 9, 8), (5, 4, 3, 3), dict(stride=2, padding=1)),            # dense 3x3 stride 2
    ((3, 2, 28, 27), (6, 2, 5, 5), dict()),                             # deep reduction, valid
    ((2, 6, 5, 7), (4, 6, 1, 1), dict()),                               # 1x1
    ((2, 6, 5, 7), (4, 3, 1, 1), dict(groups=2)),                       # grouped 1x1
    ((2, 3, 7, 5), (3, 1, 3, 3), dict(padding=1, groups=3)),            # depthwise
    ((2, 3, 9, 12), (6, 1, 3, 3), dict(stride=2, padding=1, groups=3)),  # depthwise multiplier 2, s2
    ((1, 3, 11, 10), (4, 3, 3, 3), dict(padding=2, dilation=2)),        # dilated
    ((1, 3, 11, 10), (4, 3, 3, 3), dict(padding=1, dilation=2)),        # dilated, padding not a multiple
    ((3, 4, 13, 7), (5, 4, 3, 3), dict(padding=3, dilation=3)),         # dilated 3, sizes not multiples
    ((1, 2, 9, 14), (3, 2, 3, 3), dict(padding=8, dilation=4)),         # dilated 4, padding 2d
    ((3, 3, 5, 11), (2, 3, 3, 3), dict(padding=(12, 6), dilation=6)),   # dilated 6, H < d, padding 2d x d
    ((2, 3, 10, 9), (4, 3, 3, 3), dict(padding=(4, 1), dilation=(2, 1))),  # dilated rows only
    ((2, 6, 13, 11), (4, 3, 3, 3), dict(stride=2, padding=1, groups=2)),  # grouped 3x3
    ((1, 4, 17, 16), (3, 4, 5, 5), dict(stride=3, padding=2)),          # stride > 1, pad 2
    ((2, 12, 9, 13), (18, 4, 3, 3), dict(padding=1, groups=3)),          # grouped: a 4-channel block + 2
    ((1, 8, 7, 40), (12, 2, 3, 2), dict(padding=(2, 0), dilation=(1, 3), groups=4)),  # dilated, wide rows
    ((2, 4, 5, 5), (8, 1, 3, 3), dict(padding=1, groups=4)),            # depthwise multiplier 2
    ((1, 6, 15, 13), (9, 2, 3, 3), dict(stride=2, padding=1, dilation=2, groups=3)),  # grouped s2 dilated
    ((2, 8, 10, 9), (8, 4, 5, 3), dict(stride=(3, 2), padding=(2, 1), groups=2)),   # grouped, stride 3x2
    ((1, 4, 10, 10), (4, 2, 3, 3), dict(stride=2, groups=2)),           # s2: the last pixels unread
    ((2, 5, 12, 11), (5, 1, 5, 5), dict(stride=2, padding=2, groups=5)),  # depthwise 5x5 s2
    ((1, 3, 14, 13), (3, 1, 3, 3), dict(stride=3, padding=2, dilation=2, groups=3)),  # depthwise s3 d2
    ((2, 11, 9, 10), (11, 1, 3, 3), dict(stride=2, padding=1, groups=11)),  # depthwise: a part-filled block
    # depthwise_blocked's row kernels (3, 5, 7 wide; full register blocks and every shorter one),
    # planes narrower than a vector, pixels off the grid, and the stride-1 input gradient as a
    # forward with the flipped kernel (its padding negative when the padding exceeds the reach)
    ((2, 16, 7, 7), (16, 1, 7, 7), dict(padding=3, groups=16)),
    ((1, 8, 6, 21), (8, 1, 5, 5), dict(padding=2, groups=8)),
    ((1, 8, 11, 23), (8, 1, 5, 5), dict(stride=2, padding=2, groups=8)),
    ((1, 8, 12, 5), (8, 1, 3, 3), dict(stride=2, groups=8)),
    ((1, 8, 3, 2), (8, 1, 3, 3), dict(padding=3, groups=8)),
    ((1, 8, 9, 9), (8, 1, 3, 3), dict(padding=2, dilation=2, groups=8)),
    ((2, 8, 9, 10), (8, 1, 4, 4), dict(padding=1, groups=8)),
    ((2, 26, 11, 9), (26, 13, 3, 3), dict(padding=1, groups=2)),       # grouped: 8 + 4 + 1 channel blocks
    ((1, 77, 5, 7), (72, 77, 1, 1), {}),  # 1x1, one small image: channels split over the threads
    ((1, 8, 6, 7), (136, 4, 3, 3), dict(padding=1, groups=2)),  # one small image: GEMM rows per thread
    ((2, 16, 7, 7), (24, 8, 3, 3), dict(padding=1, groups=2)),  # grouped 7x7: 2-vector blocks (AVX-512)
    ((1, 12, 6, 6), (12, 6, 3, 3), dict(padding=1, groups=2)),  # grouped 6x6: 2-vector input-grad blocks
    ((2, 32, 7, 7), (32, 16, 3, 3), dict(padding=1, groups=2)),  # 16-channel blocks: 49 = 8 x 6 + 1 pixels
    ((1, 32, 10, 9), (32, 16, 3, 3), dict(stride=2, groups=2)),  # input-grad phases
    ((1, 32, 7, 8), (32, 16, 2, 2), dict(stride=3, groups=2)),  # stride > kernel: the last row unread
    # stride 3 x 2, dilation 2 across: one column phase of dx has no taps
    ((2, 32, 13, 11), (32, 16, 5, 3), dict(stride=(3, 2), padding=(2, 1), dilation=(1, 2), groups=2)),
    ((1, 3, 23, 21), (16, 3, 7, 7), dict(stride=2, padding=3)),  # an RGB stem
    ((2, 16, 8, 9), (32, 16, 5, 5), dict(padding=2)),  # dense 5x5, 16-channel blocks both ways
    # winograd_blocked: 12 input channels (a part-filled channel block) into two 16-lane blocks,
    # odd output sizes; the input gradient at padding 2 and 0 (its adjoint's padding 0 and 2);
    # with 2 threads, items of 5 tile rows that start and end inside an image
    ((3, 12, 9, 7), (32, 12, 3, 3), dict(padding=1)),
    ((2, 32, 6, 11), (20, 16, 3, 3), dict(padding=2, groups=2)),
    ((2, 32, 5, 8), (32, 16, 3, 3), dict(groups=2)),
    ((5, 48, 5, 4), (48, 16, 3, 3), dict(padding=1, groups=3)),
    # part-filled lane blocks: 36 output channels a group (16 + 16 + 4 lanes), 24 input channels
    # (the input gradient's lanes, 16 + 8)
    ((2, 48, 7, 9), (72, 24, 3, 3), dict(padding=1, groups=2)),
    ((2, 48, 11, 10), (40, 24, 3, 3), dict(stride=2, padding=1, groups=2)),  # the same, strided (direct_blocked)
]
_ALGOS = [a for a in pydl.backends.conv_algorithms() if a != "auto"]
_EXPECTED_PAIRS = {("depthwise", d) for d in ("forward", "input_grad", "weight_grad")} | \
    {("winograd", d) for d in ("forward", "input_grad", "weight_grad")} | \
    {("gemm_1x1", d) for d in ("forward", "input_grad", "weight_grad")} | \
    {("im2col_per_image", "forward"), ("im2col_per_image", "input_grad")} | \
    {("im2col_tiled", d) for d in ("forward", "input_grad", "weight_grad")} | \
    {(a, d) for a in ("grouped_direct", "depthwise_blocked", "direct_blocked")
     for d in ("forward", "input_grad", "weight_grad")}
_EXPECTED_PAIRS |= {("winograd_blocked", d) for d in ("forward", "input_grad", "weight_grad")}


def _run_direction(direction, x, w, b, dy, kw):
    if direction == "forward":
        return (F.conv2d(x, w, b, **kw),)
    mask = (True, False, False) if direction == "input_grad" else (False, True, False)
    gx, gw, _ = F.conv2d_backward(dy, x, w, **kw, output_mask=mask)
    return (gx if direction == "input_grad" else gw,)


@pytest.mark.parametrize("algorithm", _ALGOS)
def test_every_conv_algorithm_forced(dtype, algorithm, simd_level):
    ran = set()
    for i, (xs, ws, kw) in enumerate(_ALGO_CASES):
        rng = np.random.default_rng(300 + i)
        x64, w64, b64 = rng.uniform(-1, 1, xs), rng.uniform(-1, 1, ws), rng.uniform(-1, 1, ws[0])
        y64 = R.conv2d(x64, w64, b64, **kw)
        dy64 = rng.uniform(-1, 1, y64.shape)
        gx64, gw64, _ = R.conv2d_backward(dy64, x64, w64, **kw)
        want = {"forward": y64, "input_grad": gx64, "weight_grad": gw64}
        x, w, b, dy = (a.astype(dtype) for a in (x64, w64, b64, dy64))
        for direction in ("forward", "input_grad", "weight_grad"):
            with pydl.backends.conv_algorithm(**{direction: algorithm}):
                try:
                    chosen = pydl.backends.conv_algorithm_choice(direction, xs, ws, dtype=dtype, **kw)
                except ValueError as e:
                    assert algorithm in str(e) and "does not apply" in str(e)
                    with pytest.raises(ValueError, match=f"'{algorithm}' does not apply"):
                        _run_direction(direction, x, w, b, dy, kw)
                    continue
                assert chosen == algorithm
                (got,) = _run_direction(direction, x, w, b, dy, kw)
            assert_close(got, want[direction], dtype, factor=4)
            ran.add((algorithm, direction))
    assert ran == {p for p in _EXPECTED_PAIRS if p[0] == algorithm}, ran


@pytest.mark.parametrize("algorithm,stride", [("direct_blocked", 2), ("winograd_blocked", 1)])
def test_blocked_weight_grad_counts_its_shared_buffer_against_the_cap(algorithm, stride):
    """The blocked weight gradients keep per-run partial sums (direct_blocked 590 KB here,
    winograd_blocked 1 MB) beside the threads' scratch: under a 300 KB cap they do not apply,
    forced or automatic."""
    xs, ws, kw = (8, 64, 7, 7), (64, 32, 3, 3), dict(stride=stride, padding=1, groups=2)
    assert pydl.backends.conv_algorithm_choice("weight_grad", xs, ws, **kw) == algorithm
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
    ho = (7 + 2 - 3) // stride + 1
    dy = rng.standard_normal((8, 64, ho, ho)).astype(np.float32)
    want = R.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), **kw)[1]
    old = F.get_conv_workspace_limit()
    try:
        F.set_conv_workspace_limit(300_000)
        assert pydl.backends.conv_algorithm_choice("weight_grad", xs, ws, **kw) != algorithm
        assert_close(F.conv2d_backward(dy, x, w, **kw, output_mask=(False, True, False))[1], want, np.float32)
        with pydl.backends.conv_algorithm(weight_grad=algorithm):
            with pytest.raises(ValueError, match=f"'{algorithm}' does not apply"):
                F.conv2d_backward(dy, x, w, **kw, output_mask=(False, True, False))
    finally:
        F.set_conv_workspace_limit(old)


def test_conv_algorithm_auto_choice_and_restore():
    """The automatic rule picks what the table says for plain cases; the context manager restores
    the previous setting, also after an exception; bad names raise naming the argument."""
    B = pydl.backends
    assert B.conv_algorithm_choice("forward", (2, 6, 5, 7), (4, 6, 1, 1)) == "gemm_1x1"
    # 1x1 on 7x7 planes with a batch: one GEMM over several images
    assert B.conv_algorithm_choice("forward", (8, 512, 7, 7), (2048, 512, 1, 1)) == "im2col_tiled"
    assert B.conv_algorithm_choice("input_grad", (8, 512, 7, 7), (2048, 512, 1, 1)) == "gemm_1x1"
    assert B.conv_algorithm_choice("forward", (1, 512, 7, 7), (2048, 512, 1, 1)) == "gemm_1x1"
    # depthwise: channels interleaved, per plane only for planes too big for the workspace cap
    for d in ("forward", "input_grad", "weight_grad"):
        assert B.conv_algorithm_choice(d, (8, 960, 7, 7), (960, 1, 3, 3), padding=1, groups=960) == "depthwise_blocked"
        assert B.conv_algorithm_choice(d, (1, 8, 1500, 1500), (8, 1, 3, 3), padding=1, groups=8) == "depthwise"
    assert B.conv_algorithm_choice("weight_grad", (1, 3, 11, 10), (4, 3, 3, 3), padding=2,
                                   dilation=2) == "im2col_tiled"
    # winograd_blocked: stride-1 3x3 layers of 16+ channel groups (and dense ones of up to 128
    # channels but for their weight gradient), while the batch has as many 2x2 tiles as a group
    # has inputs
    for d in ("forward", "input_grad", "weight_grad"):
        assert B.conv_algorithm_choice(d, (8, 1024, 7, 7), (1024, 32, 3, 3), padding=1, groups=32) == "winograd_blocked"
        assert B.conv_algorithm_choice(d, (8, 512, 28, 28), (512, 16, 3, 3), padding=1, groups=32) == "winograd_blocked"
        # 16 tiles for 64 input channels a group: the kernels' transform does not pay back
        assert B.conv_algorithm_choice(d, (1, 2048, 7, 7), (2048, 64, 3, 3), padding=1, groups=32) == "direct_blocked"
    for d in ("forward", "input_grad"):
        assert B.conv_algorithm_choice(d, (8, 128, 28, 28), (128, 64, 3, 3), padding=1, groups=2) == "winograd_blocked"
        dense = "winograd" if _backend.cpu()._simd_level() >= 2 else "winograd_blocked"  # AVX-512: OpenBLAS
        assert B.conv_algorithm_choice(d, (1, 64, 56, 56), (64, 64, 3, 3), padding=1) == dense
        assert B.conv_algorithm_choice(d, (8, 256, 14, 14), (256, 256, 3, 3), padding=1) == "winograd"
    # the weight gradient of few wide groups (large partial sums per run): Winograd per group
    assert B.conv_algorithm_choice("weight_grad", (8, 128, 28, 28), (128, 64, 3, 3), padding=1, groups=2) == "winograd"
    assert B.conv_algorithm_choice("weight_grad", (1, 64, 56, 56), (64, 64, 3, 3), padding=1) == "winograd"
    # 24 channels a group fill 3/4 of two lane blocks; 8 (half of one) stay on grouped_direct
    for d in ("forward", "input_grad", "weight_grad"):
        assert B.conv_algorithm_choice(d, (8, 336, 14, 14), (336, 24, 3, 3), padding=1, groups=14) == "winograd_blocked"
    assert B.conv_algorithm_choice("forward", (8, 256, 28, 28), (256, 8, 3, 3), padding=1,
                                   groups=32) == "grouped_direct"
    # direct_blocked: an RGB 7x7 stem
    for d in ("forward", "weight_grad"):
        assert B.conv_algorithm_choice(d, (1, 3, 224, 224), (64, 3, 7, 7), stride=2, padding=3) == "direct_blocked"
        assert B.conv_algorithm_choice(d, (1, 3, 224, 224), (32, 3, 3, 3), stride=2, padding=1) != "direct_blocked"
    for d in ("forward", "input_grad", "weight_grad"):  # dense 5x5: no im2col
        assert B.conv_algorithm_choice(d, (8, 48, 35, 35), (64, 48, 5, 5), padding=2) == "direct_blocked"
        assert B.conv_algorithm_choice(d, (8, 512, 28, 28), (512, 512, 5, 5), padding=2) != "direct_blocked"
        assert B.conv_algorithm_choice(d, (8, 64, 56, 56), (128, 64, 3, 3), stride=2, padding=1) != "direct_blocked"
    with pytest.raises(RuntimeError):
        with B.conv_algorithm("im2col_tiled"):
            assert B.conv_algorithm_choice("forward", (2, 6, 5, 7), (4, 6, 1, 1)) == "im2col_tiled"
            raise RuntimeError
    assert B.conv_algorithm_choice("forward", (2, 6, 5, 7), (4, 6, 1, 1)) == "gemm_1x1"
    with pytest.raises(ValueError, match="algorithm"):
        with B.conv_algorithm("fft"):
            pass
    with pytest.raises(ValueError, match="forward"):
        with B.conv_algorithm(forward=3):
            pass
    with pytest.raises(ValueError, match="direction"):
        B.conv_algorithm_choice("backward", (1, 1, 3, 3), (1, 1, 1, 1))
