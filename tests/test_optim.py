"""pydl.optim against torch.optim (same parameters, same gradients, several steps) and against
the update rules written out by hand; the schedulers against torch's."""
import math

import numpy as np
import pytest

import pydl
import pydl.nn as nn
from pydl import optim
from pydl.optim import lr_scheduler
from conftest import assert_close, to_numpy

CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, maximize=True)),
    ("Adagrad", dict()),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.5)),
    ("RMSprop", dict()),
    ("RMSprop", dict(lr=0.01, alpha=0.9, weight_decay=0.1, momentum=0.5, centered=True)),
    ("Adadelta", dict()),
    ("Adadelta", dict(lr=0.5, rho=0.8, weight_decay=0.05)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.02, weight_decay=0.3, amsgrad=True)),
]


def _params(xp, rng, dtype=np.float64):
    shapes = [(3, 4), (5,), (2, 1, 3)]
    return [nn.Parameter(xp.asarray(rng.standard_normal(s).astype(dtype))) for s in shapes]


@pytest.mark.parametrize("name,kw", CONFIGS, ids=[f"{c[0]}-{i}" for i, c in enumerate(CONFIGS)])
def test_optimizer_matches_torch(xp, name, kw):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    ps = _params(xp, rng)
    tps = [torch.tensor(to_numpy(p.data), requires_grad=True) for p in ps]
    opt = getattr(optim, name)(ps, **kw)
    topt = getattr(torch.optim, name)(tps, **kw)
    for step in range(6):
        grads = [rng.standard_normal(p.shape) for p in ps]
        opt.zero_grad()
        topt.zero_grad()
        for p, tp, g in zip(ps, tps, grads):
            p.grad = xp.asarray(g)
            tp.grad = torch.tensor(g)
        if step == 3:  # a parameter without a gradient is left alone by both
            ps[1].grad, tps[1].grad = None, None
        opt.step()
        topt.step()
        for p, tp in zip(ps, tps):
            assert_close(p.data, tp.detach().numpy(), np.float64, 100)


def test_defaults_match_torch():
    torch = pytest.importorskip("torch")
    for name in ("SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW"):
        ours = getattr(optim, name)([nn.Parameter(np.zeros(2))]).defaults
        theirs = getattr(torch.optim, name)([torch.zeros(2, requires_grad=True)]).defaults
        for k, v in ours.items():
            assert theirs[k] == v, (name, k)


def test_sgd_momentum_by_hand(xp):
    p = nn.Parameter(xp.asarray(np.array([1.0, -2.0], np.float32)))
    opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5)
    w = np.array([1.0, -2.0])
    buf = None
    for g in ([0.5, 1.0], [-1.0, 2.0], [0.25, 0.0]):
        p.grad = xp.asarray(np.array(g, np.float32))
        opt.step()
        d = np.array(g) + 0.5 * w
        buf = d if buf is None else 0.9 * buf + d
        w = w - 0.1 * buf
        assert p.data.dtype == np.float32
        assert_close(p.data, w, np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [dict(momentum=0.9), dict(momentum=0.9, dampening=0.3, weight_decay=0.1),
                                dict(momentum=0.8, nesterov=True), dict()])
def test_sgd_blas_and_numpy_updates_agree(dtype, kw):
    """SGD's one-pass BLAS update (contiguous NumPy arrays, 70,001 elements: threaded) and its NumPy
    fallback (a strided grad) agree with a float64 evaluation of PyTorch's rule."""
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal(70001)
    grads = [rng.standard_normal(70001) for _ in range(3)]
    fast = nn.Parameter(w0.astype(dtype))
    slow = nn.Parameter(w0.astype(dtype))
    opts = [optim.SGD([p], lr=0.05, **kw) for p in (fast, slow)]
    w, buf = w0.copy(), None
    m, d, wd = kw.get("momentum", 0), kw.get("dampening", 0), kw.get("weight_decay", 0)
    for g in grads:
        fast.grad = g.astype(dtype)
        slow.grad = np.repeat(g.astype(dtype), 2)[::2]  # not contiguous: NumPy's expressions
        for o in opts:
            o.step()
        gd = g + wd * w
        if m:
            buf = gd.copy() if buf is None else m * buf + (1 - d) * gd
            gd = gd + m * buf if kw.get("nesterov") else buf
        w = w - 0.05 * gd
    for p in (fast, slow):
        assert p.data.dtype == dtype
        assert_close(p.data, w, np.dtype(dtype), factor=4)


def test_axpby_refuses_bad_arrays():
    """SGD's BLAS helper: arrays of different sizes or overlapping ones raise; a dtype mismatch or a
    non-contiguous array is refused by the binding (never silently copied)."""
    cpu = pydl._backend.cpu()
    x, y = np.ones(10, np.float32), np.ones(10, np.float32)
    cpu._axpby(2.0, x, 0.5, y)
    np.testing.assert_array_equal(y, np.full(10, 2.5, np.float32))
    with pytest.raises(ValueError, match="differ in size"):
        cpu._axpby(1.0, np.ones(9, np.float32), 1.0, y)
    with pytest.raises(ValueError, match="overlap"):
        cpu._axpby(1.0, y[:5], 1.0, y[2:7])
    with pytest.raises(TypeError):
        cpu._axpby(1.0, np.ones(10, np.float64), 1.0, y)
    with pytest.raises(TypeError):
        cpu._axpby(1.0, np.ones(20, np.float32)[::2], 1.0, y)


def test_adam_by_hand(xp):
    p = nn.Parameter(xp.asarray(np.array([0.3, -0.7])))
    opt = optim.Adam([p], lr=0.01, betas=(0.9, 0.99), eps=1e-6)
    w, m, v = np.array([0.3, -0.7]), 0.0, 0.0
    for t, g in enumerate(([0.5, 1.0], [-1.0, 2.0], [0.25, -3.0]), start=1):
        g = np.array(g)
        p.grad = xp.asarray(g)
        opt.step()
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g * g
        w = w - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.99 ** t)) + 1e-6)
        assert_close(p.data, w, np.float64)


def test_zero_grad_and_param_groups():
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(3))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    a.grad, b.grad = np.ones(2), np.ones(3)
    opt.step()
    assert np.allclose(a.data, 0.9) and np.allclose(b.data, 0.5)
    opt.zero_grad(set_to_none=False)
    assert (a.grad == 0).all() and (b.grad == 0).all()
    opt.zero_grad()
    assert a.grad is None and b.grad is None
    with pytest.raises(ValueError, match="params"):
        optim.Adam([])
    with pytest.raises(TypeError, match="Parameter"):
        optim.Adam([np.zeros(2)])
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([a], nesterov=True)
    with pytest.raises(ValueError, match="lr"):
        optim.Adam([a], lr=-1.0)


def test_training_reduces_loss():
    nn.init.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5], [0.0]], np.float32)).astype(np.float32)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    crit = nn.MSELoss()
    opt = optim.Adam(model.parameters(), lr=0.01)
    first = None
    for _ in range(200):
        loss = crit(model(x), y)
        first = first if first is not None else loss
        opt.zero_grad()
        model.backward(crit.backward())
        opt.step()
    assert loss < 0.05 * first


# ---------------------------------------------------------------- schedulers

@pytest.mark.parametrize("name,kw", [("StepLR", dict(step_size=3, gamma=0.5)),
                                     ("ExponentialLR", dict(gamma=0.9)),
                                     ("CosineAnnealingLR", dict(T_max=7, eta_min=0.01))])
def test_scheduler_matches_torch(name, kw):
    torch = pytest.importorskip("torch")
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.2)
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    s = getattr(lr_scheduler, name)(opt, **kw)
    ts = getattr(torch.optim.lr_scheduler, name)(topt, **kw)
    for _ in range(12):
        assert s.get_last_lr()[0] == pytest.approx(ts.get_last_lr()[0], rel=1e-12, abs=1e-15)
        assert opt.param_groups[0]["lr"] == s.get_last_lr()[0]
        topt.step()
        s.step()
        ts.step()


def test_schedulers_by_hand():
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    s = lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    lrs = [s.get_last_lr()[0]]
    for _ in range(4):
        s.step()
        lrs.append(s.get_last_lr()[0])
    assert lrs == pytest.approx([(1 + math.cos(math.pi * e / 4)) / 2 for e in range(5)])
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    s = lr_scheduler.StepLR(opt, step_size=2)
    for _ in range(5):
        s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)


def test_reduce_on_plateau_matches_torch():
    torch = pytest.importorskip("torch")
    metrics = [5, 4, 4, 4.0001, 4, 3.9, 3.9, 3.9, 3.9, 3.9, 3.9, 2, 2, 2, 2, 2, 2, 2]
    for kw in (dict(patience=1), dict(mode="max", factor=0.5, patience=0, cooldown=2, min_lr=0.02),
               dict(patience=2, threshold=0.1, threshold_mode="abs")):
        opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.1)
        topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        s = lr_scheduler.ReduceLROnPlateau(opt, **kw)
        ts = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kw)
        for m in metrics:
            s.step(m)
            ts.step(m)
            assert opt.param_groups[0]["lr"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.1)
    s = lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    s.step(1.0)
    s.step(1.0)
    assert s.get_last_lr() == [pytest.approx(0.01)]


def _readonly(a):
    a.flags.writeable = False
    return a


def _memmap(a, tmp_path):
    np.save(tmp_path / "p.npy", a)
    return np.load(tmp_path / "p.npy", mmap_mode="r")


@pytest.mark.parametrize("bad", ["readonly data", "memmap data", "int grad", "grad shape", "readonly state"])
@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_step_rejects_unwritable_state_before_writing(name, bad, tmp_path):
    """A read-only (or np.load mmap_mode='r') parameter, a grad of the wrong kind, or read-only
    optimizer state is a clear error naming it, raised before any parameter is updated."""
    rng = np.random.default_rng(0)
    ps = [nn.Parameter(rng.standard_normal((3, 2))) for _ in range(3)]
    for p in ps:
        p.grad = rng.standard_normal(p.data.shape)
    opt = getattr(optim, name)(ps, lr=0.1, **({"momentum": 0.9} if name == "SGD" else {}))
    opt.step()  # creates the state
    before = [p.data.copy() for p in ps]
    if bad == "readonly data":
        ps[2].data = _readonly(ps[2].data.copy())
    elif bad == "memmap data":
        ps[2].data = _memmap(ps[2].data, tmp_path)
    elif bad == "int grad":
        ps[2].grad = ps[2].grad.astype(np.int64)
    elif bad == "grad shape":
        ps[2].grad = ps[2].grad[:2]
    else:
        st = opt.state[ps[2]]
        k = next(k for k, v in st.items() if isinstance(v, np.ndarray) and v.ndim)
        st[k] = _readonly(st[k].copy())
    before = [p.data.copy() for p in ps]
    with pytest.raises((TypeError, ValueError), match=r"params\[2\]"):
        opt.step()
    for p, b in zip(ps, before):
        assert np.array_equal(np.asarray(p.data), b), "a parameter was updated before the error"
