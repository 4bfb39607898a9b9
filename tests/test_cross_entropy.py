"""softmax, log_softmax, cross entropy: forward and backward against the float64 NumPy
reference (and PyTorch when importable), on both backends and both dtypes."""
import itertools

import numpy as np
import pytest

import pydl.functional as F
import pydl.reference as R
from conftest import assert_close, numerical_grad, rand, rel_error, to_numpy

try:
    import torch
    import torch.nn.functional as TF
except Exception:  # pragma: no cover
    torch = None

# (shape, axis): every rank up to 4, first/middle/last and negative axes, empty arrays.
SOFTMAX_CASES = [
    ((), 0), ((7,), 0), ((7,), -1), ((5, 9), -1), ((5, 9), 0), ((3, 4, 5), 1), ((2, 3, 4, 5), -3),
    ((2, 3, 4, 5), 3), ((2, 3, 4, 5), 0), ((3, 70, 6), 1), ((2, 1500, 3), 1), ((40, 1000), 1),
    ((0, 5), 1), ((4, 0, 3), 1), ((4, 0, 3), 2),
]


@pytest.mark.parametrize("shape,axis", SOFTMAX_CASES, ids=[f"{s}-ax{a}" for s, a in SOFTMAX_CASES])
def test_softmax_log_softmax_match_reference(xp, dtype, shape, axis, simd_level):
    rng = np.random.default_rng(len(shape) * 10 + axis)
    x = rand(rng, shape, dtype, xp, -4, 4)
    x0 = to_numpy(x).copy()
    for fn, ref in [(F.softmax, R.softmax), (F.log_softmax, R.log_softmax)]:
        y = fn(x, axis=axis)
        assert type(y) is type(x) and y.dtype == dtype and y.shape == x.shape
        assert_close(y, ref(x0, axis=axis), dtype)
    np.testing.assert_array_equal(to_numpy(x), x0)  # input untouched


def test_softmax_non_contiguous_input(xp, dtype):
    rng = np.random.default_rng(1)
    base = rand(rng, (6, 8, 10), dtype, xp, -3, 3)
    for view, axis in [(base.transpose(2, 0, 1), 1), (base[:, ::2, 1:], -1), (base[::-1].T, 0)]:
        want = to_numpy(view).astype(np.float64)
        assert_close(F.softmax(view, axis=axis), R.softmax(want, axis=axis), dtype)
        assert_close(F.log_softmax(view, axis=axis), R.log_softmax(want, axis=axis), dtype)


def test_softmax_large_magnitude_stays_finite(xp, dtype):
    rng = np.random.default_rng(2)
    x = rand(rng, (6, 33), dtype, xp, -1e4, 1e4)
    x[0, :] = 1e4  # ties at the maximum
    ref = to_numpy(x).astype(np.float64)
    y, ly = F.softmax(x, axis=1), F.log_softmax(x, axis=1)
    assert np.isfinite(to_numpy(y)).all() and np.isfinite(to_numpy(ly)).all()
    assert_close(y, R.softmax(ref, axis=1), dtype)
    assert_close(ly, R.log_softmax(ref, axis=1), dtype)


@pytest.mark.parametrize("shape,axis", [((4, 5), 1), ((3, 4, 2), 1), ((2, 3, 4), -1), ((5,), 0), ((3, 2, 4), 0)])
def test_softmax_backward_finite_differences(xp, shape, axis):
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape)
    dy = rng.normal(size=shape)
    for fwd, bwd, ref in [(F.softmax, F.softmax_backward, R.softmax),
                          (F.log_softmax, F.log_softmax_backward, R.log_softmax)]:
        y = fwd(xp.asarray(x), axis=axis)
        got = bwd(xp.asarray(dy), y, axis=axis)
        want = numerical_grad(lambda v: ref(v, axis=axis), x, dy)
        assert rel_error(got, want) < 1e-7
        # and the reference backward agrees
        assert_close(got, (R.softmax_backward if fwd is F.softmax else R.log_softmax_backward)(
            dy, to_numpy(y), axis=axis), np.float64)


def test_softmax_backward_parity(xp, dtype):
    rng = np.random.default_rng(4)
    for shape, axis in [((6, 11), -1), ((3, 40, 7), 1), ((2, 3, 4, 5), 0)]:
        x = rand(rng, shape, dtype, xp, -3, 3)
        dy = rand(rng, shape, dtype, xp)
        y = F.softmax(x, axis=axis)
        ly = F.log_softmax(x, axis=axis)
        assert_close(F.softmax_backward(dy, y, axis=axis),
                     R.softmax_backward(to_numpy(dy), to_numpy(y), axis=axis), dtype, 10)
        assert_close(F.log_softmax_backward(dy, ly, axis=axis),
                     R.log_softmax_backward(to_numpy(dy), to_numpy(ly), axis=axis), dtype, 10)


# ---------------------------------------------------------------- cross entropy

def make_case(rng, kind, dtype, xp, C=5, scale=2.0, ignore_index=-100):
    """logits and targets for kind in: index (N,), index K-D (N, d1, d2), probabilities
    (N, C, d1), unbatched (C,); some targets set to ignore_index."""
    if kind == "index":
        logits = rand(rng, (7, C), dtype, xp, -scale, scale)
        t = rng.integers(0, C, size=(7,))
    elif kind == "index_kd":
        logits = rand(rng, (3, C, 4, 2), dtype, xp, -scale, scale)
        t = rng.integers(0, C, size=(3, 4, 2))
    elif kind == "prob":
        logits = rand(rng, (4, C, 3), dtype, xp, -scale, scale)
        p = rng.uniform(size=(4, C, 3))
        return logits, xp.asarray((p / p.sum(1, keepdims=True)).astype(dtype))
    else:
        logits = rand(rng, (C,), dtype, xp, -scale, scale)
        t = np.array(rng.integers(0, C))
        return logits, xp.asarray(t.astype(np.int64))
    t.reshape(-1)[::3] = ignore_index
    return logits, xp.asarray(t.astype(np.int64))


KINDS = ["index", "index_kd", "prob", "unbatched"]
OPTIONS = list(itertools.product([False, True], ["none", "mean", "sum"], [0.0, 0.3]))


@pytest.mark.parametrize("kind", KINDS)
def test_cross_entropy_matches_reference(xp, dtype, kind, simd_level):
    rng = np.random.default_rng(KINDS.index(kind))
    for use_weight, reduction, eps in OPTIONS:
        logits, target = make_case(rng, kind, dtype, xp)
        weight = rand(rng, (5,), dtype, xp, 0.2, 2.0) if use_weight else None
        x0, t0 = to_numpy(logits).copy(), to_numpy(target).copy()
        w0 = None if weight is None else to_numpy(weight)
        kw = dict(weight=weight, reduction=reduction, label_smoothing=eps)
        rkw = dict(weight=w0, reduction=reduction, label_smoothing=eps)
        loss, saved = F.cross_entropy_forward(logits, target, **kw)
        want = R.cross_entropy(x0, t0, **rkw)
        assert loss.shape == np.shape(want) and loss.dtype == dtype
        assert_close(loss, want, dtype)
        assert_close(F.cross_entropy(logits, target, **kw), want, dtype)
        g = rand(rng, np.shape(want), dtype, xp, 0.5, 1.5)
        gwant = R.cross_entropy_backward(to_numpy(g), x0, t0, **rkw)
        assert_close(F.cross_entropy_backward(g, logits, target, saved=saved, **kw), gwant, dtype)
        assert_close(F.cross_entropy_backward(g, logits, target, **kw), gwant, dtype)  # recomputes
        np.testing.assert_array_equal(to_numpy(logits), x0)   # inputs untouched
        np.testing.assert_array_equal(to_numpy(target), t0)


@pytest.mark.skipif(torch is None, reason="PyTorch is not importable")
@pytest.mark.parametrize("kind", KINDS)
def test_cross_entropy_matches_torch(xp, kind):
    rng = np.random.default_rng(10 + KINDS.index(kind))
    for (use_weight, reduction, eps), ignore in itertools.product(OPTIONS, [-100, 2]):
        if kind == "prob" and ignore != -100:
            continue  # PyTorch refuses it (and so does pydl: test_bad_inputs_raise)
        logits, target = make_case(rng, kind, np.float64, xp, ignore_index=ignore)
        weight = rand(rng, (5,), np.float64, xp, 0.2, 2.0) if use_weight else None
        tx = torch.tensor(to_numpy(logits), requires_grad=True)
        tl = TF.cross_entropy(tx, torch.tensor(to_numpy(target)),
                              weight=None if weight is None else torch.tensor(to_numpy(weight)),
                              ignore_index=ignore, reduction=reduction, label_smoothing=eps)
        g = rng.uniform(0.5, 1.5, size=tuple(tl.shape))
        tl.backward(torch.tensor(g))
        kw = dict(weight=weight, ignore_index=ignore, reduction=reduction, label_smoothing=eps)
        loss = F.cross_entropy(logits, target, **kw)
        if np.isnan(tl.item() if tl.ndim == 0 else 0.0):   # unbatched target == ignore_index
            assert np.isnan(to_numpy(loss))
        else:
            assert_close(loss, tl.detach().numpy(), np.float64)
        assert_close(F.cross_entropy_backward(xp.asarray(g), logits, target, **kw), tx.grad.numpy(), np.float64)


@pytest.mark.parametrize("C", [1, 3, 1000])
def test_cross_entropy_many_rows_and_classes(xp, dtype, C):
    # Enough work for the threaded path; K-D logits with a long class axis hit the tiles.
    rng = np.random.default_rng(C)
    for shape in [(67, C), (2, C, 37)]:
        logits = rand(rng, shape, dtype, xp, -5, 5)
        target = xp.asarray(rng.integers(0, C, size=(shape[0],) + shape[2:]))
        for reduction in ["none", "mean"]:
            want = R.cross_entropy(to_numpy(logits), to_numpy(target), reduction=reduction, label_smoothing=0.1)
            loss, saved = F.cross_entropy_forward(logits, target, reduction=reduction, label_smoothing=0.1)
            assert_close(loss, want, dtype)
            g = xp.ones(np.shape(want), dtype=dtype)
            assert_close(F.cross_entropy_backward(g, logits, target, reduction=reduction, label_smoothing=0.1,
                                                  saved=saved),
                         R.cross_entropy_backward(np.ones(np.shape(want)), to_numpy(logits), to_numpy(target),
                                                  reduction=reduction, label_smoothing=0.1), dtype)


def test_cross_entropy_non_contiguous(xp, dtype):
    rng = np.random.default_rng(5)
    base = rand(rng, (6, 9), dtype, xp, -3, 3)
    logits = base.T[:, 1:]                      # (9, 5) view, class stride 9
    target = xp.asarray(rng.integers(0, 5, size=(18,)))[::2]
    weight = rand(rng, (10,), dtype, xp, 0.5, 1.5)[::2]
    want = R.cross_entropy(to_numpy(logits), to_numpy(target), to_numpy(weight))
    assert_close(F.cross_entropy(logits, target, weight), want, dtype)
    assert_close(F.cross_entropy_backward(1.0, logits, target, weight),
                 R.cross_entropy_backward(1.0, to_numpy(logits), to_numpy(target), to_numpy(weight)), dtype)


def test_cross_entropy_large_logits_stay_finite_and_accurate(xp, dtype):
    rng = np.random.default_rng(6)
    for kind in ["index", "index_kd", "prob"]:
        logits, target = make_case(rng, kind, dtype, xp, C=5, scale=1e4)
        weight = rand(rng, (5,), dtype, xp, 0.5, 1.5)
        for reduction, eps in [("none", 0.0), ("mean", 0.2), ("sum", 0.0)]:
            kw = dict(weight=weight, reduction=reduction, label_smoothing=eps)
            rkw = dict(weight=to_numpy(weight), reduction=reduction, label_smoothing=eps)
            loss, saved = F.cross_entropy_forward(logits, target, **kw)
            grad = F.cross_entropy_backward(xp.ones(loss.shape, dtype=dtype), logits, target, saved=saved, **kw)
            assert np.isfinite(to_numpy(loss)).all() and np.isfinite(to_numpy(grad)).all()
            assert_close(loss, R.cross_entropy(to_numpy(logits), to_numpy(target), **rkw), dtype)
            assert_close(grad, R.cross_entropy_backward(np.ones(loss.shape), to_numpy(logits),
                                                        to_numpy(target), **rkw), dtype)


def test_cross_entropy_all_ignored_mean_is_nan(xp, dtype):
    rng = np.random.default_rng(7)
    logits = rand(rng, (4, 6), dtype, xp)
    target = xp.full((4,), -100, dtype=np.int64)
    for weight in [None, rand(rng, (6,), dtype, xp, 0.5, 1.5)]:
        for eps in [0.0, 0.4]:
            loss = F.cross_entropy(logits, target, weight, label_smoothing=eps)
            assert loss.shape == () and np.isnan(to_numpy(loss))          # 0 / 0, as PyTorch
            assert float(to_numpy(F.cross_entropy(logits, target, weight, reduction="sum"))) == 0.0
            none = F.cross_entropy(logits, target, weight, reduction="none", label_smoothing=eps)
            np.testing.assert_array_equal(to_numpy(none), np.zeros(4))
            grad = F.cross_entropy_backward(1.0, logits, target, weight, label_smoothing=eps)
            np.testing.assert_array_equal(to_numpy(grad), np.zeros((4, 6)))   # PyTorch's: zero


def test_cross_entropy_batch_zero(xp, dtype):
    logits = xp.zeros((0, 5), dtype=dtype)
    for target in [xp.zeros((0,), dtype=np.int64), xp.zeros((0, 5), dtype=dtype)]:
        assert np.isnan(to_numpy(F.cross_entropy(logits, target)))
        assert float(to_numpy(F.cross_entropy(logits, target, reduction="sum"))) == 0.0
        assert F.cross_entropy(logits, target, reduction="none").shape == (0,)
        assert F.cross_entropy_backward(1.0, logits, target).shape == (0, 5)
    kd = xp.zeros((2, 5, 0), dtype=dtype)
    assert F.cross_entropy(kd, xp.zeros((2, 0), dtype=np.int64), reduction="none").shape == (2, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_cross_entropy_backward_finite_differences(xp, kind):
    rng = np.random.default_rng(20 + KINDS.index(kind))
    for use_weight, reduction, eps in OPTIONS[::2] + OPTIONS[1::4]:
        logits, target = make_case(rng, kind, np.float64, xp, C=4)
        weight = rng.uniform(0.5, 1.5, size=4) if use_weight else None
        t0 = to_numpy(target)
        kw = dict(reduction=reduction, label_smoothing=eps)
        dy = rng.uniform(0.5, 1.5, size=np.shape(R.cross_entropy(to_numpy(logits), t0, weight, **kw)))
        want = numerical_grad(lambda v: R.cross_entropy(v, t0, weight, **kw), to_numpy(logits), dy)
        got = F.cross_entropy_backward(xp.asarray(dy), logits, target,
                                       None if weight is None else xp.asarray(weight), **kw)
        assert rel_error(got, want) < 1e-7


def test_cross_entropy_is_deterministic(xp):
    rng = np.random.default_rng(8)
    logits = rand(rng, (300, 257), np.float32, xp, -5, 5)
    target = xp.asarray(rng.integers(0, 257, size=(300,)))
    a = to_numpy(F.cross_entropy(logits, target))
    b = to_numpy(F.cross_entropy(logits, target))
    assert a.tobytes() == b.tobytes()
    ga = to_numpy(F.cross_entropy_backward(1.0, logits, target))
    assert ga.tobytes() == to_numpy(F.cross_entropy_backward(1.0, logits, target)).tobytes()


@pytest.mark.parametrize("shape", [(6, 4), (3, 5, 7), (70, 3, 40, 30)], ids=["2d", "3d", "chunked"])
def test_backward_with_saved_raises_on_invalid_targets(xp, dtype, shape):
    # With saved= the forward (which checked the targets) is skipped: the backward counts
    # invalid class indices itself, in any chunk of rows (the last shape runs in parallel
    # chunks), and raises; ignore_index and valid targets still pass.
    rng = np.random.default_rng(len(shape))
    logits = rand(rng, shape, dtype, xp)
    C = shape[1]
    tshape = (shape[0],) + shape[2:]
    t = rng.integers(0, C, size=tshape)
    t.flat[rng.integers(0, t.size, 3)] = -100
    weight = xp.asarray(rng.random(C).astype(dtype))
    for kw in [{}, {"weight": weight}]:
        loss, saved = F.cross_entropy_forward(logits, xp.asarray(t), **kw)
        good = F.cross_entropy_backward(1.0, logits, xp.asarray(t), saved=saved, **kw)
        assert_close(good, F.cross_entropy_backward(1.0, logits, xp.asarray(t), **kw), dtype)
        for value, pos in [(C, 0), (-1, t.size - 1), (C + 5, t.size // 2)]:
            bad = t.copy()
            bad.flat[pos] = value
            with pytest.raises(ValueError, match=f"target: .*got {value} \\(at flat position {pos}"):
                F.cross_entropy_backward(1.0, logits, xp.asarray(bad), saved=saved, **kw)


def test_backward_checks_targets_itself_when_the_kernel_does_not_count(monkeypatch):
    # The GPU glue returns None rather than a count (a count costs a sync): the backward then
    # checks the targets itself, but only when saved= skipped the forward that checked them.
    import pydl._backend as B

    real = B.kernels

    class NoCount:
        def __init__(self, k):
            self.k = k

        def __getattr__(self, name):
            return getattr(self.k, name)

        def cross_entropy_backward(self, *a):
            self.k.cross_entropy_backward(*a)
            return None

    monkeypatch.setattr(B, "kernels", lambda xp, op: NoCount(real(xp, op)))
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((5, 4))
    t = np.array([0, 3, -100, 1, 2])
    _, saved = F.cross_entropy_forward(logits, t)
    bad = t.copy()
    bad[3] = 4
    with pytest.raises(ValueError, match=r"target: .*got 4 \(at flat position 3"):
        F.cross_entropy_backward(1.0, logits, bad, saved=saved)
    with pytest.raises(ValueError, match="got 4"):  # the forward's own check
        F.cross_entropy_backward(1.0, logits, bad)
    assert F.cross_entropy_backward(1.0, logits, t, saved=saved).shape == logits.shape


def test_bad_inputs_raise(xp, dtype):
    rng = np.random.default_rng(9)
    logits = rand(rng, (4, 3), dtype, xp)
    target = xp.asarray(np.array([0, 1, 2, -100]))
    other = np.float32 if dtype == np.float64 else np.float64
    with pytest.raises(ValueError, match="target.*got 3"):
        F.cross_entropy(logits, xp.asarray(np.array([0, 3, 1, 1])))
    with pytest.raises(ValueError, match="target.*got -1"):
        F.cross_entropy(logits, xp.asarray(np.array([0, -1, 1, 1])), reduction="none")
    with pytest.raises(ValueError, match="target"):
        F.cross_entropy_backward(1.0, logits, xp.asarray(np.array([0, 1, 7, 1])))
    with pytest.raises(TypeError, match="target.*int32"):
        F.cross_entropy(logits, target.astype(np.int32))
    with pytest.raises(TypeError, match="target"):
        F.cross_entropy(logits, xp.zeros((4, 3), dtype=other))
    with pytest.raises(TypeError, match="logits.*int64"):
        F.cross_entropy(xp.zeros((4, 3), dtype=np.int64), target)
    with pytest.raises(ValueError, match=r"target: expected shape \(4,\)"):
        F.cross_entropy(logits, target[:3])
    with pytest.raises(ValueError, match="target: expected shape"):
        F.cross_entropy(logits, xp.zeros((4, 4), dtype=dtype))
    with pytest.raises(ValueError, match="weight: expected shape"):
        F.cross_entropy(logits, target, weight=xp.ones((4,), dtype=dtype))
    with pytest.raises(TypeError, match="weight"):
        F.cross_entropy(logits, target, weight=xp.ones((3,), dtype=other))
    with pytest.raises(ValueError, match="ignore_index"):
        F.cross_entropy(logits, xp.zeros((4, 3), dtype=dtype), ignore_index=1)
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(logits, target, reduction="average")
    for eps in [-0.1, 1.5]:
        with pytest.raises(ValueError, match="label_smoothing"):
            F.cross_entropy(logits, target, label_smoothing=eps)
    with pytest.raises(ValueError, match="logits"):
        F.cross_entropy(xp.zeros((4, 0), dtype=dtype), target)
    with pytest.raises(ValueError, match="grad_loss"):
        F.cross_entropy_backward(xp.ones((4,), dtype=dtype), logits, target)
    with pytest.raises(ValueError, match="axis"):
        F.softmax(logits, axis=2)
    with pytest.raises(TypeError, match="x"):
        F.log_softmax(xp.zeros((2, 2), dtype=np.int32))
    with pytest.raises(ValueError, match="grad_out"):
        F.softmax_backward(xp.zeros((4, 2), dtype=dtype), logits)
    with pytest.raises(TypeError, match="target"):  # a list, or a NumPy array beside CuPy logits
        F.cross_entropy(logits, np.array([0, 1, 2, 0]) if xp is not np else [0, 1, 2, 0])
