"""batch_norm: parity with the float64 NumPy reference (and PyTorch where installed),
running-buffer updates, numerics on offset data, finite-difference gradients, errors."""
import numpy as np
import pytest
from conftest import assert_close, numerical_grad, rand, rel_error, to_numpy

import pydl.functional as F
import pydl.reference as R

# (N, C), (N, C, L), (N, C, H, W): odd sizes, batch 1 with H*W > 1, batch 0, an (N, C)
# case wider than one channel block of the CPU kernel, H*W both multiple of 4 and not
# (vector and scalar paths of the GPU kernels), and one big enough for several GPU
# blocks per channel (the two-stage reduction).
SHAPES = [(5, 7), (4, 3, 5, 6), (1, 3, 4, 5), (3, 4, 7), (2, 5, 3, 1), (6, 300), (0, 3, 4, 4),
          (3, 2, 9, 17), (16, 2, 32, 36), (5, 3, 47, 53)]  # the last two run on threads; 15 planes split mid-channel


def _params(rng, C, dtype, xp, affine=True):
    w = rand(rng, (C,), dtype, xp, 0.5, 2.0) if affine else None
    b = rand(rng, (C,), dtype, xp) if affine else None
    rm = rand(rng, (C,), dtype, xp)
    rv = rand(rng, (C,), dtype, xp, 0.5, 2.0)
    return w, b, rm, rv


def _f64(a):
    return None if a is None else np.array(to_numpy(a), dtype=np.float64)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_forward_parity(xp, dtype, shape, affine, training, simd_level):
    rng = np.random.default_rng(hash((shape, affine, training)) % 2**32)
    x = rand(rng, shape, dtype, xp, -2.0, 3.0)
    w, b, rm, rv = _params(rng, shape[1], dtype, xp, affine)
    rm64, rv64 = _f64(rm), _f64(rv)
    y, mean, invstd = F.batch_norm_forward(x, rm, rv, w, b, training=training, momentum=0.3, eps=1e-3)
    yr, meanr, invstdr = R.batch_norm_forward(_f64(x), rm64, rv64, _f64(w), _f64(b), training=training,
                                              momentum=0.3, eps=1e-3)
    assert type(y) is type(x) and y.dtype == dtype and y.shape == x.shape
    assert_close(y, yr, dtype)
    assert_close(mean, meanr, dtype)
    assert_close(invstd, invstdr, dtype)
    # Running buffers: updated in training (as the reference), untouched in evaluation.
    assert_close(rm, rm64, dtype)
    assert_close(rv, rv64, dtype)
    # batch_norm returns y alone, the same y.
    y2 = F.batch_norm(x, xp.asarray(rm64.astype(dtype)), xp.asarray(rv64.astype(dtype)), w, b,
                      training=training, momentum=0.3, eps=1e-3)
    assert not isinstance(y2, tuple) and y2.shape == x.shape


def test_non_contiguous_inputs_and_strided_running_buffers(xp, dtype):
    rng = np.random.default_rng(1)
    base = rand(rng, (4, 10, 6, 5), dtype, xp)
    x = base[:, ::2, :, ::-1]  # non-contiguous view, C = 5
    big = rand(rng, (10,), dtype, xp, 0.5, 2.0)
    rm, rv = big[::2].copy(), big[1::2]  # rv is a strided view: updated in place all the same
    w = rand(rng, (10,), dtype, xp)[::2]
    rm64, rv64 = _f64(rm), _f64(rv)
    y = F.batch_norm(x, rm, rv, w, None, training=True)
    yr = R.batch_norm(_f64(x), rm64, rv64, _f64(w), None, training=True)
    assert_close(y, yr, dtype)
    assert_close(rm, rm64, dtype)
    assert_close(rv, rv64, dtype)
    assert_close(big[1::2], rv64, dtype)


@pytest.mark.parametrize("training", [True, False])
def test_misaligned_contiguous_views(xp, dtype, training):
    # Contiguous views starting one element into a buffer: no 16-byte alignment.
    rng = np.random.default_rng(9)
    shape = (3, 4, 4, 8)
    n = int(np.prod(shape))
    x = rand(rng, (n + 1,), dtype, xp)[1:].reshape(shape)
    dy = rand(rng, (n + 1,), dtype, xp)[1:].reshape(shape)
    w, b, rm, rv = _params(rng, 4, dtype, xp)
    rm64, rv64 = _f64(rm), _f64(rv)
    y, mean, invstd = F.batch_norm_forward(x, rm, rv, w, b, training=training)
    assert_close(y, R.batch_norm(_f64(x), rm64, rv64, _f64(w), _f64(b), training=training), dtype)
    got = F.batch_norm_backward(dy, x, w, mean, invstd, training=training)
    want = R.batch_norm_backward(_f64(dy), _f64(x), _f64(w), _f64(mean), _f64(invstd), training=training)
    for g, r in zip(got, want):
        assert_close(g, r, dtype, factor=4)


def test_running_buffers_match_torch(xp, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = rand(rng, (6, 4, 3, 5), dtype, xp, -1.0, 4.0)
    w, b, rm, rv = _params(rng, 4, dtype, xp)
    trm, trv = torch.from_numpy(to_numpy(rm).copy()), torch.from_numpy(to_numpy(rv).copy())
    for momentum in (0.1, 0.7):
        y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum)
        ty = torch.nn.functional.batch_norm(torch.from_numpy(to_numpy(x)), trm, trv,
                                            torch.from_numpy(to_numpy(w)), torch.from_numpy(to_numpy(b)),
                                            training=True, momentum=momentum)
        assert_close(y, ty.double().numpy(), dtype, factor=4)
    assert_close(rm, trm.double().numpy(), dtype, factor=4)
    assert_close(rv, trv.double().numpy(), dtype, factor=4)
    ye = F.batch_norm(x, rm, rv, w, b, training=False)
    tye = torch.nn.functional.batch_norm(torch.from_numpy(to_numpy(x)), trm, trv,
                                         torch.from_numpy(to_numpy(w)), torch.from_numpy(to_numpy(b)))
    assert_close(ye, tye.double().numpy(), dtype, factor=4)


def test_large_offset_data_keeps_accuracy(xp, dtype):
    # Unit noise on a large offset: 1e4 in float32, 1e9 in float64, where E[x^2] - E[x]^2
    # (even accumulated in float64 for the float64 case) would lose the variance.
    # A naive float64 E[x^2] at 1e9 is off by ~1e2 (x^2 ~ 1e18), so 1e-6 still catches it
    # while leaving room for the GPU's Chan merge of per-block partials (~1e-8 seen).
    offset, var_tol = (1e4, 1e-5) if dtype == np.float32 else (1e9, 1e-6)
    rng = np.random.default_rng(3)
    x = xp.asarray((offset + rng.standard_normal((16, 3, 12, 11))).astype(dtype))
    rm, rv = xp.zeros(3, dtype), xp.ones(3, dtype)
    y, mean, invstd = F.batch_norm_forward(x, rm, rv, training=True, momentum=1.0, eps=0.0)
    x64 = to_numpy(x).astype(np.float64)
    mean_ref = x64.mean(axis=(0, 2, 3))
    var_ref = ((x64 - mean_ref[:, None, None]) ** 2).mean(axis=(0, 2, 3))
    m = x64.size // 3
    var = 1.0 / to_numpy(invstd).astype(np.float64) ** 2
    assert np.all(np.abs(var - var_ref) <= var_tol * var_ref)
    assert np.all(np.abs(to_numpy(rv) - var_ref * m / (m - 1)) <= var_tol * var_ref)
    assert np.all(np.abs(to_numpy(mean) - mean_ref) <= 1e-7 * np.abs(mean_ref))  # float32 rounding
    yr = (x64 - mean_ref[:, None, None]) / np.sqrt(var_ref)[:, None, None]
    # y is as accurate as the rounding of the mean allows (offset * eps relative to the noise).
    assert_close(y, yr, dtype, factor=1.0 if dtype == np.float32 else 1e6)


def test_large_offset_backward_keeps_accuracy(xp, dtype):
    # The float32 backward sums dy * (x - mean) in short float partials: on 1e4-offset data
    # x - mean must be taken before the product (dy * x summed, then minus mean * sum(dy),
    # would cancel away the unit noise), and the partials must not drift over long rows.
    offset = 1e4 if dtype == np.float32 else 1e9
    rng = np.random.default_rng(4)
    x = xp.asarray((offset + rng.standard_normal((6, 3, 40, 37))).astype(dtype))
    dy = xp.asarray(rng.standard_normal(x.shape).astype(dtype))
    w = xp.asarray(rng.uniform(0.5, 2.0, 3).astype(dtype))
    _, mean, invstd = F.batch_norm_forward(x, None, None, w, None, training=True)
    got = F.batch_norm_backward(dy, x, w, mean, invstd, training=True)
    want = R.batch_norm_backward(_f64(dy), _f64(x), _f64(w), _f64(mean), _f64(invstd), training=True)
    for g, r in zip(got, want):
        assert_close(g, r, dtype, factor=4)


def test_training_with_one_value_per_channel_raises(xp, dtype):
    for shape in [(1, 3), (1, 3, 1, 1), (1, 2, 1)]:
        x = xp.ones(shape, dtype)
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            F.batch_norm(x, xp.zeros(shape[1], dtype), xp.ones(shape[1], dtype), training=True)
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            F.batch_norm(x, None, None, training=True)


def test_eval_mode_with_batch_one_works(xp, dtype):
    rng = np.random.default_rng(4)
    x = rand(rng, (1, 3), dtype, xp)
    w, b, rm, rv = _params(rng, 3, dtype, xp)
    y = F.batch_norm(x, rm, rv, w, b, training=False)
    assert_close(y, R.batch_norm(_f64(x), _f64(rm), _f64(rv), _f64(w), _f64(b)), dtype)


def test_training_without_running_buffers(xp, dtype):
    rng = np.random.default_rng(5)
    x = rand(rng, (4, 3, 2, 5), dtype, xp)
    y = F.batch_norm(x, None, None, training=True)
    assert_close(y, R.batch_norm(_f64(x), None, None, training=True), dtype)


def test_batch_zero_leaves_running_buffers(xp, dtype):
    rm, rv = xp.full(3, 0.5, dtype), xp.full(3, 2.0, dtype)
    y, mean, invstd = F.batch_norm_forward(xp.ones((0, 3, 4, 4), dtype), rm, rv, training=True)
    assert y.shape == (0, 3, 4, 4)
    assert np.all(to_numpy(rm) == 0.5) and np.all(to_numpy(rv) == 2.0)
    gx, gw, gb = F.batch_norm_backward(xp.ones((0, 3, 4, 4), dtype), xp.ones((0, 3, 4, 4), dtype),
                                       None, mean, invstd, training=True)
    assert gx.shape == (0, 3, 4, 4)
    assert np.all(to_numpy(gw) == 0) and np.all(to_numpy(gb) == 0)


@pytest.mark.parametrize("shape", [(5, 7), (4, 3, 5, 6), (1, 3, 4, 5), (3, 4, 7), (6, 300), (3, 2, 9, 17),
                                   (16, 2, 32, 36)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_backward_parity(xp, dtype, shape, training, affine, simd_level):
    rng = np.random.default_rng(hash((shape, training, affine)) % 2**32)
    x = rand(rng, shape, dtype, xp, -2.0, 3.0)
    dy = rand(rng, shape, dtype, xp)
    w, b, rm, rv = _params(rng, shape[1], dtype, xp, affine)
    _, mean, invstd = F.batch_norm_forward(x, rm, rv, w, b, training=training)
    gx, gw, gb = F.batch_norm_backward(dy, x, w, mean, invstd, training=training)
    # The reference gets the same saved statistics: this checks the backward alone.
    rx, rw, rb = R.batch_norm_backward(_f64(dy), _f64(x), _f64(w), _f64(mean), _f64(invstd),
                                       training=training)
    for got, want in ((gx, rx), (gw, rw), (gb, rb)):
        assert type(got) is type(x) and got.dtype == dtype
        assert_close(got, want, dtype, factor=4)
    # output_mask: only what is asked for.
    gx2, gw2, gb2 = F.batch_norm_backward(dy, x, w, mean, invstd, training=training,
                                          output_mask=(False, True, False))
    assert gx2 is None and gb2 is None
    assert rel_error(gw2, to_numpy(gw)) == 0.0
    gx3, gw3, gb3 = F.batch_norm_backward(dy, x, w, mean, invstd, training=training,
                                          output_mask=(True, False, False))
    assert gw3 is None and gb3 is None
    assert rel_error(gx3, to_numpy(gx)) == 0.0


@pytest.mark.parametrize("training", [True, False])
def test_backward_parity_past_the_cache_threshold(xp, training):
    # x, dy and dx over 24 MiB take the CPU's block-by-block apply, smaller ones the streaming
    # apply after all sums (batch_norm.cpp): both must give the same gradients.
    rng = np.random.default_rng(8)
    for shape in [(3, 5, 400, 401), (2, 3, 7, 9)]:
        x = rand(rng, shape, np.float32, xp, -2.0, 3.0)
        dy = rand(rng, shape, np.float32, xp)
        w = xp.asarray(rng.uniform(0.5, 2.0, shape[1]).astype(np.float32))
        _, mean, invstd = F.batch_norm_forward(x, None, None, w, None, training=True)
        got = F.batch_norm_backward(dy, x, w, mean, invstd, training=training)
        want = R.batch_norm_backward(_f64(dy), _f64(x), _f64(w), _f64(mean), _f64(invstd),
                                     training=training)
        for g, r in zip(got, want):
            assert_close(g, r, np.float32, factor=4)


@pytest.mark.parametrize("dtype,shape", [(np.float32, (8, 61, 53, 59)), (np.float64, (4, 61, 53, 59)),
                                         (np.float32, (32, 253, 13, 15)), (np.float64, (16, 253, 13, 15))])
def test_backward_parity_streamed_past_the_last_level_cache(xp, dtype, shape):
    # x, dy and dx of 18.3-18.9 MB: over a 16 MiB last-level cache the CPU writes dx a 16 KiB
    # chunk at a time with non-temporal stores (chunks ending on 64-byte boundaries, planes of an
    # odd 53 * 59 or 13 * 15 crossing them). The 53 x 59 planes go block by block (each sample's
    # run of a block is 12.5 or 25 KB, unaligned, and neighbouring blocks' runs share cache
    # lines); the 13 x 15 ones (runs under 8 KiB) through the apply in memory order. With a
    # larger cache, both take the plain apply.
    rng = np.random.default_rng(9)
    x = rand(rng, shape, dtype, xp, -2.0, 3.0)
    dy = rand(rng, shape, dtype, xp)
    w = xp.asarray(rng.uniform(0.5, 2.0, shape[1]).astype(dtype))
    _, mean, invstd = F.batch_norm_forward(x, None, None, w, None, training=True)
    for training in (True, False):
        got = F.batch_norm_backward(dy, x, w, mean, invstd, training=training)
        want = R.batch_norm_backward(_f64(dy), _f64(x), _f64(w), _f64(mean), _f64(invstd),
                                     training=training)
        for g, r in zip(got, want):
            assert_close(g, r, dtype, factor=4)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(3, 2, 2, 3), (5, 3)])
def test_backward_matches_finite_differences(xp, training, shape):
    rng = np.random.default_rng(6)
    C = shape[1]
    x = rng.uniform(-1, 2, shape)
    dy = rng.uniform(-1, 1, shape)
    w = rng.uniform(0.5, 2, C)
    b = rng.uniform(-1, 1, C)
    rm = rng.uniform(-1, 1, C)
    rv = rng.uniform(0.5, 2, C)

    def f(x_, w_=w, b_=b):
        return R.batch_norm(x_, rm.copy(), rv.copy(), w_, b_, training=training, eps=1e-3)

    _, mean, invstd = F.batch_norm_forward(xp.asarray(x), xp.asarray(rm.copy()), xp.asarray(rv.copy()),
                                           xp.asarray(w), xp.asarray(b), training=training, eps=1e-3)
    gx, gw, gb = F.batch_norm_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(w), mean, invstd,
                                       training=training)
    tol = 1e-7
    assert rel_error(gx, numerical_grad(f, x, dy)) < tol
    assert rel_error(gw, numerical_grad(lambda w_: f(x, w_=w_), w, dy)) < tol
    assert rel_error(gb, numerical_grad(lambda b_: f(x, b_=b_), b, dy)) < tol


def test_bad_inputs_raise(xp, dtype):
    other = np.float64 if dtype == np.float32 else np.float32
    x = xp.ones((4, 3, 2, 2), dtype)
    rm, rv = xp.zeros(3, dtype), xp.ones(3, dtype)
    with pytest.raises(TypeError, match="x: .*int64"):
        F.batch_norm(xp.ones((4, 3), np.int64), rm, rv)
    with pytest.raises(TypeError, match="running_mean"):
        F.batch_norm(x, xp.zeros(3, other), rv)
    with pytest.raises(TypeError, match="weight"):
        F.batch_norm(x, rm, rv, weight=xp.ones(3, other))
    with pytest.raises(TypeError, match="x"):
        F.batch_norm(np.ones((4, 3)).tolist(), rm, rv)
    with pytest.raises(ValueError, match=r"running_var: expected shape \(3,\), got \(4,\)"):
        F.batch_norm(x, rm, xp.ones(4, dtype))
    with pytest.raises(ValueError, match="bias"):
        F.batch_norm(x, rm, rv, bias=xp.ones((3, 1), dtype))
    with pytest.raises(ValueError, match="x: expected"):
        F.batch_norm(xp.ones(3, dtype), rm, rv)
    with pytest.raises(ValueError, match="x: expected"):
        F.batch_norm(xp.ones((2, 3, 1, 1, 1), dtype), rm, rv)
    for momentum in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="momentum"):
            F.batch_norm(x, rm, rv, training=True, momentum=momentum)
    for eps in (-1e-5, float("inf")):
        with pytest.raises(ValueError, match="eps"):
            F.batch_norm(x, rm, rv, eps=eps)
    with pytest.raises(TypeError, match="momentum"):
        F.batch_norm(x, rm, rv, momentum="0.1")
    with pytest.raises(TypeError, match="training"):
        F.batch_norm(x, rm, rv, training="yes")
    with pytest.raises(ValueError, match="evaluation mode"):
        F.batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match="both or neither"):
        F.batch_norm(x, rm, None, training=True)
    _, mean, invstd = F.batch_norm_forward(x, rm, rv, training=True)
    with pytest.raises(ValueError, match="grad_out"):
        F.batch_norm_backward(xp.ones((4, 3, 2, 1), dtype), x, None, mean, invstd)
    with pytest.raises(TypeError, match="grad_out"):
        F.batch_norm_backward(xp.ones((4, 3, 2, 2), other), x, None, mean, invstd)
    with pytest.raises(ValueError, match="save_invstd"):
        F.batch_norm_backward(x, x, None, mean, xp.ones(2, dtype))
    with pytest.raises(ValueError, match="output_mask"):
        F.batch_norm_backward(x, x, None, mean, invstd, output_mask=(True, True))
    if xp is np:
        ro_mean = np.zeros(3, dtype)
        ro_mean.flags.writeable = False
        with pytest.raises(ValueError, match="running_mean: expected a writeable"):
            F.batch_norm(x, ro_mean, rv, training=True)
        with pytest.raises(TypeError, match="running_mean"):
            F.batch_norm(x, [0.0, 0.0, 0.0], rv)


def test_inputs_unmodified(xp, dtype):
    rng = np.random.default_rng(7)
    x = rand(rng, (3, 4, 5, 2), dtype, xp)
    dy = rand(rng, (3, 4, 5, 2), dtype, xp)
    w, b, rm, rv = _params(rng, 4, dtype, xp)
    saved = [to_numpy(a).copy() for a in (x, dy, w, b, rm, rv)]
    F.batch_norm(x, rm, rv, w, b, training=False)  # evaluation: running buffers untouched too
    _, mean, invstd = F.batch_norm_forward(x, None, None, w, b, training=True)
    saved_stats = [to_numpy(mean).copy(), to_numpy(invstd).copy()]
    F.batch_norm_backward(dy, x, w, mean, invstd, training=True)
    for a, s in zip((x, dy, w, b, rm, rv), saved):
        assert np.array_equal(to_numpy(a), s)
    for a, s in zip((mean, invstd), saved_stats):
        assert np.array_equal(to_numpy(a), s)


def test_deterministic(xp, dtype):
    rng = np.random.default_rng(8)
    x = rand(rng, (8, 6, 13, 11), dtype, xp, -5, 5)
    dy = rand(rng, (8, 6, 13, 11), dtype, xp)
    runs = []
    for _ in range(2):
        rm, rv = xp.zeros(6, dtype), xp.ones(6, dtype)
        y, mean, invstd = F.batch_norm_forward(x, rm, rv, training=True)
        grads = F.batch_norm_backward(dy, x, None, mean, invstd, training=True)
        runs.append([to_numpy(a) for a in (y, mean, invstd, rm, rv, *grads)])
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


# GPU kernel paths by per-channel size: one block per channel holding it in shared memory
# (the small SHAPES), clusters of 2 / 4 / 8 blocks sharing a channel, and channels too big
# for a cluster's shared memory (the multi-pass path). The CPU runs the same checks.
@pytest.mark.parametrize("shape", [(8, 2, 32, 32), (4, 1, 64, 128), (2, 2, 240000)])
@pytest.mark.parametrize("training", [True, False])
def test_channel_size_paths(xp, dtype, shape, training):
    rng = np.random.default_rng(hash((shape, training)) % 2**32)
    x = rand(rng, shape, dtype, xp, -2.0, 3.0) + 4.0  # offset data: the variance is two-pass
    dy = rand(rng, shape, dtype, xp)
    w, b, rm, rv = _params(rng, shape[1], dtype, xp)
    rm64, rv64 = _f64(rm), _f64(rv)
    y, mean, invstd = F.batch_norm_forward(x, rm, rv, w, b, training=training, momentum=0.2)
    yr, meanr, invstdr = R.batch_norm_forward(_f64(x), rm64, rv64, _f64(w), _f64(b), training=training,
                                              momentum=0.2)
    for got, want in ((y, yr), (mean, meanr), (invstd, invstdr), (rm, rm64), (rv, rv64)):
        assert_close(got, want, dtype)
    grads = F.batch_norm_backward(dy, x, w, mean, invstd, training=training)
    want = R.batch_norm_backward(_f64(dy), _f64(x), _f64(w), _f64(mean), _f64(invstd), training=training)
    for got, r in zip(grads, want):
        assert_close(got, r, dtype, factor=4)
    # dw alone is bit-identical to dw computed along with dx.
    _, gw, _ = F.batch_norm_backward(dy, x, w, mean, invstd, training=training,
                                     output_mask=(False, True, False))
    assert rel_error(gw, to_numpy(grads[1])) == 0.0


# The backward's three applies of dx are chosen by the host's last-level cache (sysfs): each is
# forced here (1 stream, 2 block_stream, 3 block) so every host runs all three.
@pytest.mark.parametrize("apply", [1, 2, 3], ids=["stream", "block_stream", "block"])
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 37, 13, 15), (4, 3, 53, 59), (6, 4)])
def test_backward_every_apply_forced(dtype, apply, shape):
    from pydl import _backend
    rng = np.random.default_rng(10)
    x = rand(rng, shape, dtype, np, -2.0, 3.0)
    dy = rand(rng, shape, dtype, np)
    w = rng.uniform(0.5, 2.0, shape[1]).astype(dtype)
    _, mean, invstd = F.batch_norm_forward(x, None, None, w, None, training=True)
    cpu = _backend.cpu()
    old = cpu._set_batch_norm_backward_apply(apply)
    try:
        for training in (True, False):
            got = F.batch_norm_backward(dy, x, w, mean, invstd, training=training)
            want = R.batch_norm_backward(_f64(dy), _f64(x), _f64(w), _f64(mean), _f64(invstd), training=training)
            for g, r in zip(got, want):
                assert_close(g, r, dtype, factor=4)
    finally:
        cpu._set_batch_norm_backward_apply(old)
