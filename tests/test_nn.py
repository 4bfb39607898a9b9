"""pydl.nn: every layer's backward against finite differences (pydl.testing.gradcheck, float64,
both backends), losses, Module mechanics (state_dict, train/eval, accumulation, devices),
initialization, and a small CNN trained side by side with PyTorch."""
import numpy as np
import pytest

import pydl.nn as nn
from pydl import testing
from conftest import assert_close, rand, to_numpy


def _dev(xp):
    return "cpu" if xp is np else "cuda"


# (id, layer factory, input shape); inputs are uniform(-1, 1) float64 (no ties, no kinks).
LAYERS = [
    ("linear", lambda: nn.Linear(5, 3), (4, 5)),
    ("linear_3d_nobias", lambda: nn.Linear(4, 2, bias=False), (2, 3, 4)),
    ("conv", lambda: nn.Conv2d(2, 3, 3), (2, 2, 5, 6)),
    ("conv_stride_pad", lambda: nn.Conv2d(2, 4, (3, 2), stride=(2, 1), padding=(1, 2)), (2, 2, 5, 4)),
    ("conv_groups_dil", lambda: nn.Conv2d(4, 2, 3, padding=2, dilation=2, groups=2, bias=False), (1, 4, 5, 5)),
    ("conv_same", lambda: nn.Conv2d(1, 2, 3, padding="same"), (2, 1, 4, 5)),
    ("conv_t", lambda: nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1), (2, 2, 3, 4)),
    ("conv_t_groups", lambda: nn.ConvTranspose2d(4, 2, (2, 3), groups=2), (1, 4, 3, 3)),
    ("maxpool", lambda: nn.MaxPool2d(2), (2, 3, 4, 6)),
    ("maxpool_pad_ceil", lambda: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), (1, 2, 6, 5)),
    ("avgpool", lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (2, 2, 5, 6)),
    ("adaptive_avgpool", lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 2, 5, 7)),
    ("bn1d", lambda: nn.BatchNorm1d(3), (5, 3)),
    ("bn1d_3d", lambda: nn.BatchNorm1d(3), (4, 3, 2)),
    ("bn2d", lambda: nn.BatchNorm2d(3), (2, 3, 3, 4)),
    ("bn2d_noaffine", lambda: nn.BatchNorm2d(2, affine=False), (3, 2, 2, 2)),
    ("bn2d_no_running", lambda: nn.BatchNorm2d(2, track_running_stats=False), (3, 2, 2, 2)),
    ("relu", lambda: nn.ReLU(), (3, 7)),
    ("leaky_relu", lambda: nn.LeakyReLU(0.2), (3, 7)),
    ("elu", lambda: nn.ELU(0.7), (3, 7)),
    ("prelu_shared", lambda: nn.PReLU(), (3, 4, 2)),
    ("prelu_channels", lambda: nn.PReLU(4, init=0.1), (3, 4, 2)),
    ("sigmoid", lambda: nn.Sigmoid(), (3, 7)),
    ("tanh", lambda: nn.Tanh(), (3, 7)),
    ("relu6", lambda: nn.ReLU6(), (3, 7)),
    ("hardtanh", lambda: nn.Hardtanh(-0.5, 0.25), (3, 7)),
    ("silu", lambda: nn.SiLU(), (3, 7)),
    ("hardswish", lambda: nn.Hardswish(), (3, 7)),
    ("flatten", lambda: nn.Flatten(), (2, 3, 2, 2)),
    ("dropout_eval", lambda: nn.Dropout(0.3).eval(), (3, 5)),
    ("sequential", lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 4), nn.Tanh()),
     (3, 2, 4, 4)),
]


@pytest.mark.parametrize("name,factory,shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_layer_gradcheck(xp, name, factory, shape):
    nn.init.manual_seed(1)
    layer = factory().double().to(_dev(xp))
    x = rand(np.random.default_rng(2), shape, np.float64, xp)
    x0 = x.copy()
    assert testing.gradcheck(layer, x)
    assert (to_numpy(x) == to_numpy(x0)).all()  # inputs never modified


def test_bn_eval_gradcheck(xp):
    bn = nn.BatchNorm2d(3).double().to(_dev(xp))
    rng = np.random.default_rng(3)
    bn(rand(rng, (4, 3, 2, 2), np.float64, xp, 1.0, 3.0))  # move the running stats off (0, 1)
    bn.eval()
    assert testing.gradcheck(bn, rand(rng, (2, 3, 2, 3), np.float64, xp))


def test_dropout_train(xp):
    nn.init.manual_seed(0)
    d = nn.Dropout(0.25).to(_dev(xp))
    x = rand(np.random.default_rng(0), (200, 50), np.float32, xp, 1.0, 2.0)
    y = to_numpy(d(x))
    kept = y != 0
    assert 0.70 < kept.mean() < 0.80
    np.testing.assert_allclose(y[kept], to_numpy(x)[kept] / 0.75, rtol=1e-6)
    g = to_numpy(d.backward(xp.ones_like(x)))
    np.testing.assert_allclose(g, kept / 0.75, rtol=1e-6)  # the same mask scales the gradient
    d.eval()
    assert (to_numpy(d(x)) == to_numpy(x)).all()
    assert (to_numpy(nn.Dropout(1.0)(x)) == 0).all()


def test_bn_train_eval_switch(xp):
    bn = nn.BatchNorm2d(2, momentum=0.5).to(_dev(xp))
    x = rand(np.random.default_rng(0), (8, 2, 3, 3), np.float32, xp, 2.0, 4.0)
    xn = to_numpy(x).astype(np.float64)
    y = to_numpy(bn(x))
    mean, var = xn.mean(axis=(0, 2, 3)), xn.var(axis=(0, 2, 3))
    want = (xn - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    assert_close(y, want, np.float32, 10)
    nb = xn.size // 2
    assert_close(bn.running_mean, 0.5 * mean, np.float32)
    assert_close(bn.running_var, 0.5 + 0.5 * var * nb / (nb - 1), np.float32)
    assert int(bn.num_batches_tracked) == 1 and "num_batches_tracked" in bn._buffers
    bn.eval()
    rm, rv = to_numpy(bn.running_mean).copy(), to_numpy(bn.running_var).copy()
    y = to_numpy(bn(x))
    assert_close(y, (xn - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5), np.float32, 10)
    assert (to_numpy(bn.running_mean) == rm).all()  # eval leaves the buffers alone
    bn.train()
    assert bn.training
    with pytest.raises(ValueError, match="input"):
        bn(rand(np.random.default_rng(0), (8, 2), np.float32, xp))


def test_bn_cumulative_momentum():
    bn = nn.BatchNorm1d(2, momentum=None)
    rng = np.random.default_rng(0)
    xs = [rng.uniform(0, 2, (6, 2)).astype(np.float32) for _ in range(3)]
    for x in xs:
        bn(x)
    assert_close(bn.running_mean, np.mean([x.astype(np.float64).mean(0) for x in xs], axis=0), np.float32)


# ---------------------------------------------------------------- losses

def _loss_pair(crit, target):
    def fwd(x):
        return crit(x, target)

    def bwd(dy, x):
        crit(x, target)
        return crit.backward(dy)

    return fwd, bwd


LOSSES = [
    ("ce_mean", lambda xp: nn.CrossEntropyLoss(), "class"),
    ("ce_sum_smooth", lambda xp: nn.CrossEntropyLoss(reduction="sum", label_smoothing=0.1), "class"),
    ("ce_none_ignore", lambda xp: nn.CrossEntropyLoss(reduction="none", ignore_index=1), "class"),
    ("ce_weight", lambda xp: nn.CrossEntropyLoss(weight=xp.asarray([0.5, 1.0, 2.0, 1.5])), "class"),
    ("mse", lambda xp: nn.MSELoss(), "real"),
    ("mse_none", lambda xp: nn.MSELoss(reduction="none"), "real"),
    ("l1_sum", lambda xp: nn.L1Loss(reduction="sum"), "real"),
    ("smooth_l1", lambda xp: nn.SmoothL1Loss(beta=0.5), "real"),
    ("bce", lambda xp: nn.BCEWithLogitsLoss(), "prob"),
    ("bce_pos_weight", lambda xp: nn.BCEWithLogitsLoss(weight=xp.asarray([1.0, 2.0, 0.5, 1.0]),
                                                       pos_weight=xp.asarray([3.0, 1.0, 0.5, 2.0]),
                                                       reduction="sum"), "prob"),
]


@pytest.mark.parametrize("name,factory,kind", LOSSES, ids=[c[0] for c in LOSSES])
def test_loss_gradcheck(xp, name, factory, kind):
    rng = np.random.default_rng(4)
    x = rand(rng, (5, 4), np.float64, xp, -3, 3)
    if kind == "class":
        t = xp.asarray(rng.integers(0, 4, 5))
    elif kind == "prob":
        t = rand(rng, (5, 4), np.float64, xp, 0, 1)
    else:
        t = x + rand(rng, (5, 4), np.float64, xp, -2, 2)  # |d| away from 0 and beta
    crit = factory(xp)
    out = crit(x, t)
    assert isinstance(out, float) == (crit.reduction != "none")
    assert testing.gradcheck(_loss_pair(crit, t), x)


@pytest.mark.parametrize("name", ["ce", "mse", "l1", "smooth_l1", "bce"])
def test_loss_vs_torch(name):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.uniform(-4, 4, (6, 3))
    if name == "ce":
        t = rng.integers(0, 3, 6)
        ours, theirs = nn.CrossEntropyLoss(label_smoothing=0.05), torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    else:
        t = rng.uniform(0, 1, (6, 3)) if name == "bce" else x + rng.uniform(-2, 2, (6, 3))
        ours, theirs = {"mse": (nn.MSELoss(), torch.nn.MSELoss()), "l1": (nn.L1Loss(), torch.nn.L1Loss()),
                        "smooth_l1": (nn.SmoothL1Loss(beta=0.7), torch.nn.SmoothL1Loss(beta=0.7)),
                        "bce": (nn.BCEWithLogitsLoss(pos_weight=np.array([2.0, 1.0, 0.5])),
                                torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0, 1.0, 0.5],
                                                                                   dtype=torch.float64)))}[name]
    xt = torch.tensor(x, requires_grad=True)
    lt = theirs(xt, torch.tensor(t))
    lt.backward()
    assert abs(ours(x, t) - lt.item()) <= 1e-12 * max(1.0, abs(lt.item()))
    assert_close(ours.backward(), xt.grad.numpy(), np.float64)


def test_ce_returns_float_and_backward_needs_forward():
    crit = nn.CrossEntropyLoss()
    with pytest.raises(RuntimeError, match="forward first"):
        crit.backward()
    with pytest.raises(ValueError, match="reduction"):
        nn.MSELoss(reduction="avg")


# ---------------------------------------------------------------- gradcheck itself

class _BrokenSquare(nn.Module):
    def forward(self, x):
        self._x = x
        return x * x

    def backward(self, grad_out):
        return grad_out * self._x  # wrong: misses the factor 2


def test_gradcheck_catches_wrong_backward():
    x = np.random.default_rng(0).uniform(-1, 1, (3, 2))
    with pytest.raises(testing.GradcheckError, match=r"inputs\[0\]"):
        testing.gradcheck(_BrokenSquare(), x)
    assert testing.gradcheck(_BrokenSquare(), x, raise_exception=False) is False
    assert testing.gradcheck((lambda a: a * a, lambda dy, a: 2 * dy * a), x)
    with pytest.raises(TypeError, match="float64"):
        testing.gradcheck(nn.Linear(2, 2), x.astype(np.float32))
    with pytest.raises(TypeError, match="float64"):
        testing.gradcheck(nn.Linear(2, 2), x)  # float32 parameters


def test_gradcheck_catches_wrong_param_grad():
    lin = nn.Linear(3, 2).double()
    orig = lin.backward

    def bad_backward(dy):
        gx = orig(dy)
        lin.bias.grad *= 1.5
        return gx

    lin.backward = bad_backward
    with pytest.raises(testing.GradcheckError, match="bias"):
        testing.gradcheck(lin, np.random.default_rng(0).uniform(-1, 1, (4, 3)))


# ---------------------------------------------------------------- module mechanics

def _small_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16, 5), nn.Dropout(0.2), nn.Linear(5, 3))


def test_state_dict_npz_roundtrip(tmp_path, xp):
    nn.init.manual_seed(0)
    a = _small_cnn().to(_dev(xp))
    a(rand(np.random.default_rng(0), (4, 1, 4, 4), np.float32, xp))  # BN buffers move
    sd = a.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                        "1.num_batches_tracked", "5.weight", "5.bias", "7.weight", "7.bias"]  # PyTorch's order
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    path = tmp_path / "m.npz"
    a.save(path)
    nn.init.manual_seed(1)
    b = _small_cnn().to(_dev(xp))
    assert not np.array_equal(to_numpy(b[0].weight.data), sd["0.weight"])
    b.load(path)
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and np.array_equal(v, v2) and v.dtype == v2.dtype
    assert type(b[0].weight.data) is type(a[0].weight.data)
    a.eval(), b.eval()
    x = rand(np.random.default_rng(1), (2, 1, 4, 4), np.float32, xp)
    assert np.array_equal(to_numpy(a(x)), to_numpy(b(x)))
    sd.pop("0.bias")
    with pytest.raises(KeyError, match="0.bias"):
        b.load_state_dict(sd)
    sd["0.bias"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="0.bias"):
        b.load_state_dict(sd)


def test_load_state_dict_keys_as_pytorch():
    a = _small_cnn()
    sd = a.state_dict()
    assert a.load_state_dict(sd) == ([], [])  # (missing_keys, unexpected_keys), as PyTorch returns
    del sd["1.num_batches_tracked"]  # absent from checkpoints older than PyTorch 0.4.1: accepted, kept
    a[1].num_batches_tracked = np.array(7)
    assert a.load_state_dict(sd).missing_keys == [] and int(a[1].num_batches_tracked) == 7
    w0 = a[0].weight.data.copy()
    bad = dict(sd, extra=np.zeros(1))
    bad["0.weight"] = np.ones_like(w0)
    bad.pop("5.bias")
    with pytest.raises(nn.StateDictKeyError) as err:
        a.load_state_dict(bad)
    msg = str(err.value)  # readable, not KeyError's quoted repr
    assert msg.startswith("Error(s) in loading state_dict for Sequential:\n")
    assert "Missing key(s) in state_dict (1): 5.bias" in msg and "Unexpected key(s) in state_dict (1): extra" in msg
    assert isinstance(err.value, KeyError) and err.value.unexpected_keys == ["extra"]
    assert np.array_equal(a[0].weight.data, w0)  # nothing copied
    assert a.load_state_dict(bad, strict=False) == (["5.bias"], ["extra"])
    assert (a[0].weight.data == 1).all()
    bad["0.bias"] = np.zeros(3)
    w0 = a[1].weight.data.copy()
    bad["1.weight"] = w0 + 1
    with pytest.raises(ValueError, match="0.bias: expected shape"):
        a.load_state_dict(bad, strict=False)
    assert np.array_equal(a[1].weight.data, w0)  # shapes are all checked before anything is copied


def test_module_tree_as_pytorch():
    seq = _small_cnn()
    order = list(seq._modules)
    seq[2] = nn.Identity()  # a replaced child keeps its place (Sequential order)
    setattr(seq, "3", nn.AvgPool2d(2))
    assert list(seq._modules) == order and type(seq[2]) is nn.Identity and type(seq[3]) is nn.AvgPool2d
    with pytest.raises(TypeError, match="Module"):
        seq[0] = "conv"
    seq.add_module("8", nn.ReLU())
    assert list(seq._modules)[-1] == "8" and seq.get_submodule("8") is seq[8]
    assert [n for n, _ in seq.named_children()] == order + ["8"]
    assert [n for n, _ in seq.named_buffers()] == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert len(list(seq.buffers())) == 3
    seen = []
    seq.apply(lambda m: seen.append(type(m).__name__))
    assert seen[-1] == "Sequential" and seen.count("Linear") == 2
    with pytest.raises(AttributeError, match="nope"):
        seq.get_submodule("1.nope")


def test_sequential_composition():
    lin1, act, lin2 = nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)
    seq = nn.Sequential(lin1, act, lin2)
    assert len(seq) == 3 and seq[0] is lin1 and seq[-1] is lin2 and list(seq) == [lin1, act, lin2]
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    nested = nn.Sequential(seq, nn.ReLU())
    assert [n for n, _ in nested.named_parameters()][0] == "0.0.weight"
    x = np.random.default_rng(0).uniform(-1, 1, (5, 3)).astype(np.float32)
    y = nested(x)
    manual = np.maximum(lin2(act(lin1(x))), 0)
    assert np.array_equal(y, manual)
    dy = np.ones_like(y)
    g_seq = nested.backward(dy)
    g_manual = lin1.backward(act.backward(lin2.backward(dy * (manual > 0))))
    assert np.allclose(g_seq, g_manual)
    assert seq[1:][0] is act
    with pytest.raises(TypeError, match="Module"):
        nn.Sequential(lin1, "relu")
    assert "Linear(in_features=3" in repr(nested)


def test_grad_accumulation_and_zero_grad():
    nn.init.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    rng = np.random.default_rng(0)
    x1, x2 = rng.uniform(-1, 1, (5, 3)), rng.uniform(-1, 1, (6, 3))
    assert all(p.grad is None for p in model.parameters())
    single = []
    for x in (x1, x2):
        model.zero_grad()
        model.backward(model(x) * 0 + 1.0)
        single.append([p.grad.copy() for p in model.parameters()])
    model.zero_grad()
    for x in (x1, x2):
        model(x)
        model.backward(np.ones((len(x), 2)))
    for p, g1, g2 in zip(model.parameters(), *single):
        assert_close(p.grad, g1 + g2, np.float64)
    model.zero_grad(set_to_none=False)
    assert all((p.grad == 0).all() for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_to_device_and_dtype(xp):
    m = _small_cnn()
    assert m[0].weight.dtype == np.float32
    m.double()
    assert all(p.dtype == np.float64 for p in m.parameters()) and m[1].running_mean.dtype == np.float64
    assert m[1].num_batches_tracked.dtype == np.int64
    m.to(_dev(xp)).to(np.float32)
    assert all(type(p.data) is type(xp.zeros(1)) for p in m.parameters())
    m.eval()
    y = m(rand(np.random.default_rng(0), (2, 1, 4, 4), np.float32, xp))
    assert type(y) is type(xp.zeros(1)) and y.dtype == np.float32
    m.to("cpu")
    assert all(isinstance(p.data, np.ndarray) for p in m.parameters())
    with pytest.raises(ValueError, match="device"):
        m.to("tpu")
    with pytest.raises(TypeError, match="dtype"):
        m.to(np.int32)


def test_errors():
    lin = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="last dimension 3"):
        lin(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="float64"):
        lin(np.zeros((2, 3), np.float64))
    with pytest.raises(RuntimeError, match="forward first"):
        nn.Conv2d(1, 1, 1).backward(np.zeros((1, 1, 1, 1), np.float32))
    with pytest.raises(ValueError, match="groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(TypeError, match="int"):
        nn.Linear(2.5, 3)
    with pytest.raises(ValueError, match="p"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match="channels"):
        nn.PReLU(3)(np.zeros((2, 4), np.float32))


# ---------------------------------------------------------------- initialization

def test_default_init_matches_pytorch_bounds():
    nn.init.manual_seed(0)
    for layer, fan_in in [(nn.Linear(200, 300), 200), (nn.Conv2d(8, 300, 5), 200),
                          (nn.ConvTranspose2d(300, 8, 5), 200)]:
        b = 1 / np.sqrt(fan_in)
        for p in (layer.weight.data, layer.bias.data):
            assert np.abs(p).max() <= b  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            assert p.size < 100 or np.abs(p).max() > 0.95 * b
        assert abs(layer.weight.data.std() - b / np.sqrt(3)) < 0.02 * b
    bn = nn.BatchNorm2d(3)
    assert (bn.weight.data == 1).all() and (bn.bias.data == 0).all() and (bn.running_var == 1).all()
    assert (nn.PReLU().weight.data == 0.25).all()


@pytest.mark.parametrize("fn,kw,std", [
    ("xavier_uniform_", {}, np.sqrt(2 / (400 + 300))),
    ("xavier_normal_", {"gain": 2.0}, 2 * np.sqrt(2 / (400 + 300))),
    ("kaiming_uniform_", {"nonlinearity": "relu"}, np.sqrt(2 / 400)),
    ("kaiming_normal_", {"mode": "fan_out", "nonlinearity": "relu"}, np.sqrt(2 / 300)),
    ("kaiming_normal_", {"a": 0.1}, np.sqrt(2 / (1 + 0.01) / 400)),
])
def test_init_std(xp, fn, kw, std):
    w = xp.zeros((300, 400), np.float64)
    out = getattr(nn.init, fn)(w, rng=np.random.default_rng(0), **kw)
    assert out is w
    w = to_numpy(w)
    assert abs(w.std() - std) < 0.01 * std and abs(w.mean()) < 0.01 * std
    if "uniform" in fn:
        assert np.abs(w).max() <= np.sqrt(3) * std
    p = nn.Parameter(np.zeros((30, 20), np.float32))
    assert getattr(nn.init, fn)(p, **kw) is p and p.data.std() > 0


def test_init_fans_and_gain():
    assert nn.init.calculate_gain("tanh") == pytest.approx(5 / 3)
    with pytest.raises(ValueError, match="2 dimensions"):
        nn.init.xavier_uniform_(np.zeros(5))
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.init.calculate_gain("swish")


# ---------------------------------------------------------------- against PyTorch

def test_cnn_sgd_matches_pytorch():
    torch = pytest.importorskip("torch")
    nn.init.manual_seed(0)
    ours = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(24, 10), nn.ReLU(), nn.Linear(10, 3))
    theirs = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                 torch.nn.MaxPool2d(2), torch.nn.Conv2d(4, 6, 3), torch.nn.BatchNorm2d(6),
                                 torch.nn.ReLU(), torch.nn.AvgPool2d(2), torch.nn.Flatten(),
                                 torch.nn.Linear(24, 10), torch.nn.ReLU(), torch.nn.Linear(10, 3))
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    from pydl import optim

    opt = optim.SGD(ours.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    crit, tcrit = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    for step in range(20):
        x = rng.standard_normal((8, 1, 12, 12)).astype(np.float32)
        t = rng.integers(0, 3, 8)
        loss = crit(ours(x), t)
        opt.zero_grad()
        ours.backward(crit.backward())
        opt.step()
        tloss = tcrit(theirs(torch.from_numpy(x)), torch.from_numpy(t))
        topt.zero_grad()
        tloss.backward()
        topt.step()
        assert abs(loss - tloss.item()) <= 1e-4 * abs(tloss.item()), f"step {step}: {loss} vs {tloss.item()}"
    for k, v in ours.state_dict().items():
        tv = theirs.state_dict()[k].numpy()
        assert np.allclose(v, tv, rtol=1e-3, atol=1e-4), k
