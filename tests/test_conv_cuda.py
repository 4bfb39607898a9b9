"""conv2d on the GPU: behaviour only the CUDA path has (the shared parity suite is
tests/test_conv.py, run for numpy and cupy through the xp fixture).

Each algorithm of pydl.cuda.conv's table (im2col + GEMM, chunked im2col, 1x1 GEMM, Winograd,
direct depthwise / grouped kernels), chosen and forced, against the float64 reference, CuPy
streams, bit-identical reruns, TF32 opt-in, non-contiguous inputs and device mixing. Every test
that runs kernels skips itself without a GPU; the table's rule is checked on any host.
"""
import numpy as np
import pytest

import pydl
import pydl.backends as B
import pydl.functional as F
import pydl.reference as R

from conftest import assert_close, rel_error, to_numpy

DTYPES = [np.float32, np.float64]


@pytest.fixture
def cp():
    if not pydl.cuda_available():
        pytest.skip(f"no GPU: {pydl.cuda_build_error()}")
    import cupy

    return cupy


@pytest.fixture
def G():
    """The glue module (imported only once a GPU is known to be present)."""
    import pydl.cuda.conv as glue

    return glue


@pytest.fixture(autouse=True)
def _restore_tf32():
    yield
    pydl.set_allow_tf32(False)


def _arrays(cp, rng, xs, ws, dtype, bias=True):
    x = rng.uniform(-1, 1, xs).astype(dtype)
    w = rng.uniform(-1, 1, ws).astype(dtype)
    b = rng.uniform(-1, 1, ws[0]).astype(dtype) if bias else None
    return x, w, b, cp.asarray(x), cp.asarray(w), (None if b is None else cp.asarray(b))


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def _check_conv(cp, rng, xs, ws, dtype, stride=1, padding=0, dilation=1, groups=1, bias=True):
    """Forward and all three gradients on the GPU against the float64 reference."""
    x, w, b, gx, gw, gb = _arrays(cp, rng, xs, ws, dtype, bias)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    want = R.conv2d(_f64(x), _f64(w), _f64(b), **kw)
    y = F.conv2d(gx, gw, gb, **kw)
    assert isinstance(y, cp.ndarray) and y.dtype == dtype
    assert_close(y, want, dtype)
    dy = rng.uniform(-1, 1, want.shape).astype(dtype)
    wdx, wdw, wdb = R.conv2d_backward(_f64(dy), _f64(x), _f64(w), **kw)
    dx, dw, db = F.conv2d_backward(cp.asarray(dy), gx, gw, **kw)
    assert_close(dx, wdx, dtype)
    assert_close(dw, wdw, dtype)
    assert_close(db, wdb, dtype)


# (name, x shape, weight shape, kwargs, the forward algorithm pydl.cuda.conv's rule must pick)
PATHS = [
    ("gemm", (2, 3, 9, 7), (5, 3, 3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2)), "im2col"),
    ("gemm_same_even_kernel", (2, 3, 8, 7), (4, 3, 4, 2), dict(padding="same"), "im2col"),
    ("gemm_groups", (2, 12, 8, 9), (6, 6, 3, 3), dict(padding=1, groups=2), "im2col"),
    ("pointwise", (3, 16, 7, 5), (8, 16, 1, 1), {}, "gemm_1x1"),
    ("pointwise_groups", (2, 12, 5, 6), (8, 3, 1, 1), dict(groups=4), "direct"),
    ("pointwise_groups_gemm", (2, 16, 5, 6), (4, 8, 1, 1), dict(groups=2), "gemm_1x1"),
    ("pointwise_strided", (2, 8, 7, 9), (4, 8, 1, 1), dict(stride=2), "im2col"),
    ("winograd", (2, 32, 9, 11), (33, 32, 3, 3), dict(padding=1), "winograd"),
    ("winograd_valid_odd", (1, 40, 7, 6), (32, 40, 3, 3), {}, "winograd"),
    ("winograd_asym_pad", (2, 32, 6, 5), (32, 32, 3, 3), dict(padding=(0, 2)), "winograd"),
    ("depthwise", (2, 8, 37, 45), (8, 1, 3, 3), dict(padding=1, groups=8), "direct"),
    ("depthwise_strided", (2, 6, 19, 34), (6, 1, 5, 3), dict(stride=2, padding=(2, 1), groups=6), "direct"),
    ("depthwise_multiplier", (1, 4, 17, 33), (12, 1, 3, 3), dict(stride=(1, 2), dilation=(2, 1), groups=4),
     "direct"),
    ("depthwise_same", (2, 5, 10, 9), (5, 1, 4, 4), dict(padding="same", groups=5), "direct"),
    ("grouped_direct", (2, 8, 12, 11), (8, 2, 3, 3), dict(padding=1, groups=4), "direct"),
    ("direct_no_smem", (1, 2, 420, 3), (2, 1, 2, 2), dict(dilation=(400, 1), groups=2), "direct"),
    ("direct_large_split", (2, 2, 64, 70), (4, 1, 3, 3), dict(padding=1, groups=2), "direct"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name,xs,ws,kw,plan", PATHS, ids=[p[0] for p in PATHS])
def test_fast_paths_match_reference(cp, name, xs, ws, kw, plan, dtype):
    want_plan = plan if not (plan == "winograd" and dtype == np.float64) else "im2col"
    got = B.conv_algorithm_choice("forward", xs, ws, dtype=dtype, device="cuda", **kw)
    assert got == want_plan, "the configuration no longer covers its path"
    _check_conv(cp, np.random.default_rng(len(name)), xs, ws, dtype, **kw)


def test_cuda_conv_algorithm_rule_and_forcing():
    """The GPU's table and rule, on any host: what the rule picks per direction, forcing one, the
    error for one that does not apply, restoring after the block, and bad names."""
    def choice(direction, xs, ws, dtype="float32", **kw):
        return B.conv_algorithm_choice(direction, xs, ws, dtype=dtype, device="cuda", **kw)

    assert set(B.conv_algorithms("cuda")) == {"auto", "direct", "winograd", "gemm_1x1", "im2col"}
    dirs = ("forward", "input_grad", "weight_grad")
    assert [choice(d, (2, 8, 9, 9), (8, 1, 3, 3), padding=1, groups=8) for d in dirs] == ["direct"] * 3
    assert [choice(d, (2, 32, 9, 9), (32, 32, 3, 3), padding=1) for d in dirs] == ["winograd"] * 3
    assert [choice(d, (2, 32, 9, 9), (32, 32, 3, 3), "float64", padding=1) for d in dirs] == ["im2col"] * 3
    assert [choice(d, (2, 16, 7, 5), (8, 16, 1, 1)) for d in dirs] == ["gemm_1x1", "gemm_1x1", "im2col"]
    assert choice("forward", (2, 16, 9, 9), (8, 16, 3, 3), stride=2) == "im2col"
    with B.conv_algorithm("direct", device="cuda"):
        assert choice("weight_grad", (2, 32, 9, 9), (32, 32, 3, 3), padding=1) == "direct"
        # The CPU's choice is its own.
        assert B.conv_algorithm_choice("forward", (2, 16, 7, 5), (8, 16, 1, 1)) == "gemm_1x1"
    assert choice("weight_grad", (2, 32, 9, 9), (32, 32, 3, 3), padding=1) == "winograd"
    with B.conv_algorithm(weight_grad="gemm_1x1", device="cuda"):
        assert choice("forward", (2, 16, 7, 5), (8, 16, 1, 1)) == "gemm_1x1"
        with pytest.raises(ValueError, match="'gemm_1x1' does not apply to this weight_grad on the GPU"):
            choice("weight_grad", (2, 16, 7, 5), (8, 16, 1, 1))
    with B.conv_algorithm(forward="winograd", device="cuda"):
        assert choice("forward", (1, 2, 9, 9), (3, 2, 3, 3), "float64") == "winograd"
        for kw in (dict(stride=2), dict(dilation=2), dict(groups=2)):
            with pytest.raises(ValueError, match="'winograd' does not apply to this forward on the GPU"):
                choice("forward", (1, 4, 9, 9), (4, 4 // kw.get("groups", 1), 3, 3), **kw)
    with pytest.raises(ValueError, match="algorithm: expected one of"):
        with B.conv_algorithm("im2col_tiled", device="cuda"):
            pass
    with pytest.raises(ValueError, match="device"):
        with B.conv_algorithm("direct", device="gpu"):
            pass
    with pytest.raises(ValueError, match="device"):
        B.conv_algorithms("tpu")


# Geometries for forcing every GPU algorithm: dense, strided, dilated, grouped, depthwise, 1x1,
# 'same' with an even kernel, batch 1, padding > 2 (the Winograd input gradient reads dy at a
# positive offset), a single pixel.
_GPU_ALGO_CASES = [
    ((2, 3, 9, 7), (5, 3, 3, 3), dict(padding=1)),
    ((1, 4, 8, 11), (3, 4, 3, 3), dict(padding=(3, 0))),
    ((2, 3, 1, 1), (2, 3, 3, 3), dict(padding=1)),
    ((2, 3, 10, 9), (4, 3, 3, 2), dict(stride=(2, 3), padding=(1, 0), dilation=(2, 1))),
    ((2, 6, 8, 9), (4, 3, 3, 3), dict(padding=1, groups=2)),
    ((2, 5, 11, 10), (5, 1, 5, 5), dict(stride=2, padding=2, groups=5)),
    ((3, 6, 7, 5), (4, 6, 1, 1), {}),
    ((2, 8, 7, 5), (6, 4, 1, 1), dict(groups=2)),
    ((1, 3, 8, 7), (4, 3, 4, 2), dict(padding="same")),
]
_GPU_EXPECTED_PAIRS = {(a, d) for a in ("direct", "winograd", "im2col") for d in ("forward", "input_grad",
                                                                                   "weight_grad")} | \
    {("gemm_1x1", "forward"), ("gemm_1x1", "input_grad")}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("algorithm", ["direct", "winograd", "gemm_1x1", "im2col"])
def test_every_cuda_conv_algorithm_forced(cp, algorithm, dtype):
    ran = set()
    for i, (xs, ws, kw) in enumerate(_GPU_ALGO_CASES):
        rng = np.random.default_rng(400 + i)
        x, w, b, gx, gw, gb = _arrays(cp, rng, xs, ws, dtype)
        y64 = R.conv2d(_f64(x), _f64(w), _f64(b), **kw)
        dy = rng.uniform(-1, 1, y64.shape).astype(dtype)
        want = dict(zip(("input_grad", "weight_grad"), R.conv2d_backward(_f64(dy), _f64(x), _f64(w), **kw)[:2]),
                    forward=y64)
        for direction in ("forward", "input_grad", "weight_grad"):
            with B.conv_algorithm(**{direction: algorithm}, device="cuda"):
                try:
                    B.conv_algorithm_choice(direction, xs, ws, dtype=dtype, device="cuda", **kw)
                except ValueError:
                    continue
                if direction == "forward":
                    got = F.conv2d(gx, gw, gb, **kw)
                else:
                    mask = (direction == "input_grad", direction == "weight_grad", False)
                    got = F.conv2d_backward(cp.asarray(dy), gx, gw, **kw, output_mask=mask)[
                        0 if direction == "input_grad" else 1]
            assert_close(got, want[direction], dtype, factor=4)
            ran.add((algorithm, direction))
    assert ran == {p for p in _GPU_EXPECTED_PAIRS if p[0] == algorithm}, ran


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("limit", [1, 3000])
def test_chunked_im2col_matches_reference(cp, G, monkeypatch, dtype, limit):
    # A tiny workspace limit: one image per chunk (1 byte) or a few, with a remainder.
    monkeypatch.setattr(G, "_WORKSPACE_LIMIT", limit)
    rng = np.random.default_rng(limit)
    _check_conv(cp, rng, (5, 3, 6, 7), (4, 3, 2, 3), dtype, stride=(1, 2), padding=1)
    _check_conv(cp, rng, (5, 32, 6, 7), (32, 32, 3, 3), dtype, padding=1)  # Winograd in f32


@pytest.mark.parametrize("slice_tiles", [7, 512])
def test_winograd_weight_gradient_slices(cp, G, monkeypatch, slice_tiles):
    # The Winograd weight gradient cuts the tiles into slices (the last one partly empty)
    # whose partial sums are reduced in order; small slices exercise many of them.
    monkeypatch.setattr(G, "_WINO_SLICE_TILES", slice_tiles)
    rng = np.random.default_rng(slice_tiles)
    _check_conv(cp, rng, (3, 32, 9, 7), (40, 32, 3, 3), np.float32, padding=1)
    monkeypatch.setattr(G, "_WORKSPACE_LIMIT", 1)  # and chunks of one image
    _check_conv(cp, rng, (3, 32, 9, 7), (40, 32, 3, 3), np.float32, padding=(2, 0))


def test_conv_transpose2d_matches_reference(cp):
    rng = np.random.default_rng(7)
    x, w, _, gx, gw, _ = _arrays(cp, rng, (2, 6, 5, 7), (6, 4, 3, 3), np.float32, bias=False)
    b = rng.uniform(-1, 1, 4).astype(np.float32)  # weight (C_in, C_out, kh, kw): C_out = 4
    gb = cp.asarray(b)
    kw = dict(stride=2, padding=1, output_padding=1)
    assert_close(F.conv_transpose2d(gx, gw, gb, **kw), R.conv_transpose2d(_f64(x), _f64(w), _f64(b), **kw),
                 np.float32)


# ---------------------------------------------------------------- glue, without pydl.functional

def _naive_conv(x, w, b, s, p, d, groups, out_hw):
    """Float64 y[n,k,oh,ow] by the definition (zero padding; p = top/left padding)."""
    N, C, H, W = x.shape
    K, Cg, kh, kw = w.shape
    Ho, Wo = out_hw
    Kg = K // groups
    y = np.zeros((N, K, Ho, Wo)) + (0 if b is None else b[None, :, None, None])
    oh = np.arange(Ho)[:, None]
    ow = np.arange(Wo)[None, :]
    for k in range(K):
        g = k // Kg
        for c in range(Cg):
            for ki in range(kh):
                for kj in range(kw):
                    ih, iw = oh * s[0] - p[0] + ki * d[0], ow * s[1] - p[1] + kj * d[1]
                    ok = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                    vals = x[:, g * Cg + c, np.clip(ih, 0, H - 1), np.clip(iw, 0, W - 1)]
                    y[:, k] += w[k, c, ki, kj] * np.where(ok, vals, 0.0)
    return y


def _naive_grads(x, w, dy, s, p, d, groups):
    """Float64 (dx, dw) by the definition: every product x[..] * w[..] that feeds
    y[n,k,oh,ow] sends dy[n,k,oh,ow] back to both factors."""
    N, C, H, W = x.shape
    K, Cg, kh, kw = w.shape
    Ho, Wo = dy.shape[2:]
    Kg = K // groups
    dx, dw = np.zeros(x.shape), np.zeros(w.shape)
    oh = np.arange(Ho)[:, None]
    ow = np.arange(Wo)[None, :]
    for k in range(K):
        g = k // Kg
        for c in range(Cg):
            for ki in range(kh):
                for kj in range(kw):
                    ih = np.broadcast_to(oh * s[0] - p[0] + ki * d[0], (Ho, Wo))
                    iw = np.broadcast_to(ow * s[1] - p[1] + kj * d[1], (Ho, Wo))
                    ok = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                    g_dy = dy[:, k][:, ok]  # (N, valid positions)
                    dw[k, c, ki, kj] = np.sum(g_dy * x[:, g * Cg + c][:, ih[ok], iw[ok]])
                    np.add.at(dx[:, g * Cg + c], (slice(None), ih[ok], iw[ok]), w[k, c, ki, kj] * g_dy)
    return dx, dw


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", [
    # x shape, w shape, stride, top/left pad, dilation, groups, (Ho, Wo)
    ((2, 3, 7, 6), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1, (7, 6)),
    ((2, 4, 9, 7), (6, 2, 3, 2), (2, 1), (1, 0), (1, 2), 2, (5, 5)),
    ((2, 6, 11, 9), (6, 1, 3, 3), (1, 1), (1, 1), (1, 1), 6, (11, 9)),
    ((2, 3, 6, 5), (2, 3, 4, 2), (1, 1), (1, 0), (1, 1), 1, (6, 5)),  # asymmetric 'same'
    ((1, 32, 6, 5), (32, 32, 3, 3), (1, 1), (1, 1), (1, 1), 1, (6, 5)),
])
def test_glue_matches_naive_numpy(cp, G, monkeypatch, dtype, cfg):
    """pydl.cuda.conv's four kernels, called directly, against the definition."""
    monkeypatch.setattr(G, "_WORKSPACE_LIMIT", 1)
    xs, ws, s, p, d, groups, out_hw = cfg
    rng = np.random.default_rng(3)
    x, w, b, gx, gw, gb = _arrays(cp, rng, xs, ws, dtype)
    y = cp.full((xs[0], ws[0]) + out_hw, np.nan, dtype=dtype)
    G.conv2d_forward(gx, gw, gb, y, s[0], s[1], p[0], p[1], d[0], d[1], groups)
    assert_close(y, _naive_conv(_f64(x), _f64(w), _f64(b), s, p, d, groups, out_hw), dtype)
    dy = rng.uniform(-1, 1, y.shape).astype(dtype)
    dx = cp.full(xs, np.nan, dtype=dtype)
    dw = cp.full(ws, np.nan, dtype=dtype)
    db = cp.full(ws[0], np.nan, dtype=dtype)
    G.conv2d_backward_input(cp.asarray(dy), gw, dx, s[0], s[1], p[0], p[1], d[0], d[1], groups)
    G.conv2d_backward_weight(cp.asarray(dy), gx, dw, s[0], s[1], p[0], p[1], d[0], d[1], groups)
    G.conv2d_backward_bias(cp.asarray(dy), db)
    want_dx, want_dw = _naive_grads(_f64(x), _f64(w), _f64(dy), s, p, d, groups)
    assert_close(dx, want_dx, dtype)
    assert_close(dw, want_dw, dtype)
    assert_close(db, _f64(dy).sum(axis=(0, 2, 3)), dtype)


def test_glue_empty_batch_writes_zero_gradients(cp, G):
    gx = cp.zeros((0, 4, 5, 5), dtype=np.float32)
    gw = cp.ones((4, 1, 3, 3), dtype=np.float32)
    dy = cp.zeros((0, 4, 5, 5), dtype=np.float32)
    for groups, ws in ((4, (4, 1, 3, 3)), (1, (4, 4, 3, 3))):
        dw = cp.full(ws, np.nan, dtype=np.float32)
        G.conv2d_backward_weight(dy, gx, dw, 1, 1, 1, 1, 1, 1, groups)
        assert float(cp.abs(dw).max()) == 0.0
    db = cp.full(4, np.nan, dtype=np.float32)
    G.conv2d_backward_bias(dy, db)
    assert float(cp.abs(db).max()) == 0.0
    y = cp.zeros((0, 4, 5, 5), dtype=np.float32)
    G.conv2d_forward(gx, gw, None, y, 1, 1, 1, 1, 1, 1, 4)  # nothing to do, no error


# ---------------------------------------------------------------- streams and determinism

@pytest.mark.parametrize("name,xs,ws,kw", [
    ("gemm", (8, 16, 24, 20), (24, 16, 3, 3), dict(stride=2, padding=1)),
    ("winograd", (8, 64, 20, 20), (64, 64, 3, 3), dict(padding=1)),
    ("depthwise", (8, 32, 24, 20), (32, 1, 3, 3), dict(padding=1, groups=32)),
])
def test_non_default_stream(cp, name, xs, ws, kw):
    """pydl launches on CuPy's current stream, ordered with the CuPy work around it."""
    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 1, xs).astype(np.float32)
    w = rng.uniform(-1, 1, ws).astype(np.float32)
    dy = rng.uniform(-1, 1, R.conv2d(x.astype(np.float64), w.astype(np.float64), **kw).shape).astype(np.float32)
    want = R.conv2d(x.astype(np.float64) * 2, w.astype(np.float64), **kw) + 1
    wdx, wdw, _ = R.conv2d_backward(dy.astype(np.float64), x.astype(np.float64) * 2, w.astype(np.float64), **kw)
    hx, hw, hdy = cp.asarray(x), cp.asarray(w), cp.asarray(dy)
    cp.cuda.Device().synchronize()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        x2 = hx * 2  # produced on the stream just before the convolution
        y = F.conv2d(x2, hw, **kw) + 1  # consumed on the stream right after it
        dx, dw, _ = F.conv2d_backward(hdy, x2, hw, **kw)
        dx, dw = dx * 1, dw * 1
    stream.synchronize()
    assert_close(y, want, np.float32)
    assert_close(dx, wdx, np.float32)
    assert_close(dw, wdw, np.float32)


@pytest.mark.parametrize("name,xs,ws,kw", [
    ("gemm", (6, 16, 15, 13), (24, 16, 3, 3), dict(stride=2, padding=1)),
    ("pointwise", (6, 32, 9, 9), (16, 32, 1, 1), {}),
    ("winograd", (6, 64, 14, 14), (64, 64, 3, 3), dict(padding=1)),
    ("depthwise", (6, 32, 40, 36), (32, 1, 3, 3), dict(padding=1, groups=32)),
])
def test_backward_is_bit_identical_across_runs(cp, name, xs, ws, kw):
    rng = np.random.default_rng(5)
    x, w, _, gx, gw, _ = _arrays(cp, rng, xs, ws, np.float32, bias=False)
    dy = cp.asarray(rng.uniform(-1, 1, R.conv2d(_f64(x), _f64(w), **kw).shape).astype(np.float32))
    first = [to_numpy(a) for a in F.conv2d_backward(dy, gx, gw, **kw)]
    second = [to_numpy(a) for a in F.conv2d_backward(dy, gx, gw, **kw)]
    for a, b in zip(first, second):
        assert np.array_equal(a, b)
    assert np.array_equal(to_numpy(F.conv2d(gx, gw, **kw)), to_numpy(F.conv2d(gx, gw, **kw)))


# ---------------------------------------------------------------- TF32

def test_tf32_is_off_by_default_and_opt_in_stays_close(cp):
    assert pydl.get_allow_tf32() is False
    rng = np.random.default_rng(2)
    for xs, ws, kw in (((4, 64, 12, 12), (64, 64, 3, 3), dict(padding=1)),  # Winograd
                       ((4, 64, 12, 12), (48, 64, 3, 3), dict(stride=2, padding=1)),  # im2col
                       ((4, 128, 8, 8), (64, 128, 1, 1), {})):  # 1x1
        x, w, _, gx, gw, _ = _arrays(cp, rng, xs, ws, np.float32, bias=False)
        want = R.conv2d(_f64(x), _f64(w), **kw)
        assert rel_error(F.conv2d(gx, gw, **kw), want) <= 1e-5  # exact float32 GEMMs
        pydl.set_allow_tf32(True)
        try:
            assert rel_error(F.conv2d(gx, gw, **kw), want) <= 1e-2
            dy = rng.uniform(-1, 1, want.shape)
            _, wdw, _ = R.conv2d_backward(dy, _f64(x), _f64(w), **kw)
            _, dw, _ = F.conv2d_backward(cp.asarray(dy.astype(np.float32)), gx, gw, **kw)
            assert rel_error(dw, wdw) <= 1e-2
        finally:
            pydl.set_allow_tf32(False)
        assert rel_error(F.conv2d(gx, gw, **kw), want) <= 1e-5


# ---------------------------------------------------------------- arrays

@pytest.mark.parametrize("groups", [1, 4])
def test_non_contiguous_inputs_are_not_modified(cp, groups):
    rng = np.random.default_rng(9)
    xb = rng.uniform(-1, 1, (3, 8, 14, 17)).astype(np.float32)
    wb = rng.uniform(-1, 1, (3, 3, 8 // groups, 8)).astype(np.float32)  # (kh, kw, C/g, K)
    gxb, gwb = cp.asarray(xb), cp.asarray(wb)
    gx = gxb[:, :, ::2, 1::2]
    gw = gwb.transpose(3, 2, 0, 1)
    assert not gx.flags.c_contiguous and not gw.flags.c_contiguous
    x, w = xb[:, :, ::2, 1::2], wb.transpose(3, 2, 0, 1)
    kw = dict(padding=1, groups=groups)
    assert_close(F.conv2d(gx, gw, **kw), R.conv2d(_f64(x), _f64(w), **kw), np.float32)
    dy_shape = R.conv2d(_f64(x), _f64(w), **kw).shape
    dyb = rng.uniform(-1, 1, dy_shape + (2,)).astype(np.float32)
    gdy = cp.asarray(dyb)[..., 0]
    wdx, wdw, wdb = R.conv2d_backward(_f64(dyb[..., 0]), _f64(x), _f64(w), **kw)
    dx, dw, db = F.conv2d_backward(gdy, gx, gw, **kw)
    assert_close(dx, wdx, np.float32)
    assert_close(dw, wdw, np.float32)
    assert_close(db, wdb, np.float32)
    assert np.array_equal(to_numpy(gxb), xb) and np.array_equal(to_numpy(gwb), wb)
    assert np.array_equal(to_numpy(cp.asarray(dyb)), dyb)


def test_numpy_cupy_mix_is_a_type_error(cp):
    x = np.zeros((1, 2, 4, 4), dtype=np.float32)
    w = np.zeros((2, 2, 3, 3), dtype=np.float32)
    with pytest.raises(TypeError, match="weight"):
        F.conv2d(x, cp.asarray(w))
    with pytest.raises(TypeError):
        F.conv2d(cp.asarray(x), w)
    with pytest.raises(TypeError):
        F.conv2d(cp.asarray(x), cp.asarray(w), np.zeros(2, dtype=np.float32))
    with pytest.raises(TypeError):
        F.conv2d_backward(np.zeros((1, 2, 2, 2), dtype=np.float32), cp.asarray(x), cp.asarray(w))


def test_arrays_on_different_devices_are_a_type_error(cp):
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    with cp.cuda.Device(0):
        x = cp.zeros((1, 2, 4, 4), dtype=np.float32)
    with cp.cuda.Device(1):
        w = cp.zeros((2, 2, 3, 3), dtype=np.float32)
    with pytest.raises(TypeError, match="GPU"):
        F.conv2d(x, w)


def test_runs_on_the_arrays_device(cp):
    """With another device current, the work still happens on the arrays' device."""
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    rng = np.random.default_rng(4)
    with cp.cuda.Device(1):
        x, w, b, gx, gw, gb = _arrays(cp, rng, (2, 4, 9, 9), (6, 4, 3, 3), np.float32)
    with cp.cuda.Device(0):
        y = F.conv2d(gx, gw, gb, padding=1)
    assert y.device.id == 1
    assert_close(y, R.conv2d(_f64(x), _f64(w), _f64(b), padding=1), np.float32)
