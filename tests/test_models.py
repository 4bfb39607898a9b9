"""pydl.models and pydl.nn.utils: each network's forward against a pure-NumPy composition of
pydl.reference kernels read from its state_dict (float64), fused against unfused inference
(pydl.nn.utils.fuse), every block's backward by finite differences, whole-network backward
along random directions, one SGD run, state_dict keys, conv + batch norm folding, and the same
networks side by side with torchvision when it is installed."""
import numpy as np
import pytest

import pydl.models as models
import pydl.nn as nn
from pydl import optim, testing
from pydl import reference as R
from pydl.nn import utils as nnu
from conftest import assert_close, rand, to_numpy


def _dev(xp):
    return "cpu" if xp is np else "cuda"


# (id, factory, torchvision constructor name and kwargs); inputs are (2, 3, 32, 32): the total
# stride is 32, so the last stage runs on 1x1 maps (2x2... with the dilated variant).
MODELS = [
    ("resnet18", "resnet18", dict(num_classes=5)),
    ("resnet34", "resnet34", dict(num_classes=5)),
    ("resnet50", "resnet50", dict(num_classes=5)),
    ("resnet50_dilated", "resnet50", dict(num_classes=5, replace_stride_with_dilation=[False, True, True])),
    ("resnext50_32x4d", "resnext50_32x4d", dict(num_classes=5)),
    ("mobilenet_v2", "mobilenet_v2", dict(num_classes=5, width_mult=0.25)),
    ("mobilenet_v2_w35", "mobilenet_v2", dict(num_classes=4, width_mult=0.35, round_nearest=4)),
]
IDS = [m[0] for m in MODELS]
X_SHAPE = (2, 3, 32, 32)
X_SHAPE_TRAIN = (2, 3, 64, 64)


def _randomize_norms(model, rng):
    """Batch norms away from their identity start, so that folding them means something."""
    sd = model.state_dict()
    for k in sd:
        if k.endswith("running_mean"):
            p = k[:-len("running_mean")]
            C = sd[k].shape[0]
            sd[k] = rng.normal(0, 0.2, C)
            sd[p + "running_var"] = rng.uniform(0.5, 1.5, C)
            sd[p + "weight"] = rng.uniform(0.5, 1.5, C)
            sd[p + "bias"] = rng.normal(0, 0.2, C)
    model.load_state_dict(sd)
    return model


def _build(name, kwargs, seed=0):
    nn.init.manual_seed(seed)
    return _randomize_norms(getattr(models, name)(**kwargs), np.random.default_rng(seed))


# ---------------------------------------------------------------- the reference networks

def _cbn(sd, conv, bn, x, stride=1, padding=0, dilation=1, training=False, stats=None):
    """bn(conv(x)) from state_dict entries; groups from the weight's shape. Training mode
    normalizes with batch statistics and updates copies of the running buffers in stats."""
    w = sd[conv + ".weight"]
    y = R.conv2d(x, w, sd.get(conv + ".bias"), stride, padding, dilation, x.shape[1] // w.shape[1])
    rm, rv = sd[bn + ".running_mean"].copy(), sd[bn + ".running_var"].copy()
    y = R.batch_norm(y, rm, rv, sd[bn + ".weight"], sd[bn + ".bias"], training=training)
    if stats is not None:
        stats[bn + ".running_mean"], stats[bn + ".running_var"] = rm, rv
    return y


def _relu(x):
    return np.maximum(x, 0)


def _relu6(x):
    return np.clip(x, 0, 6)


def _ref_resnet(sd, x, replace_stride_with_dilation=(False, False, False), **bn):
    """ResNet v1.5 from its published structure: stem, 4 stages of blocks, pool, fc."""
    h = _relu(_cbn(sd, "conv1", "bn1", x, 2, 3, **bn))
    h = R.max_pool2d(h, 3, 2, 1)
    dilation = 1
    for stage in range(1, 5):
        stride, first_dilation = (1 if stage == 1 else 2), dilation
        if stage > 1 and replace_stride_with_dilation[stage - 2]:
            dilation, stride = dilation * stride, 1
        j = 0
        while f"layer{stage}.{j}.conv1.weight" in sd:
            p = f"layer{stage}.{j}."
            s, d = (stride, first_dilation) if j == 0 else (1, dilation)
            if p + "conv3.weight" in sd:  # bottleneck: 1x1, 3x3 (stride, dilation), 1x1
                o = _relu(_cbn(sd, p + "conv1", p + "bn1", h, **bn))
                o = _relu(_cbn(sd, p + "conv2", p + "bn2", o, s, d, d, **bn))
                o = _cbn(sd, p + "conv3", p + "bn3", o, **bn)
            else:  # basic: 3x3 (stride), 3x3
                o = _relu(_cbn(sd, p + "conv1", p + "bn1", h, s, 1, **bn))
                o = _cbn(sd, p + "conv2", p + "bn2", o, 1, 1, **bn)
            if p + "downsample.0.weight" in sd:
                h = _cbn(sd, p + "downsample.0", p + "downsample.1", h, s, **bn)
            h = _relu(o + h)
            j += 1
    h = R.adaptive_avg_pool2d(h, (1, 1)).reshape(len(x), -1)
    return h @ sd["fc.weight"].T + sd["fc.bias"]


MOBILENET_V2_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                        (6, 160, 3, 2), (6, 320, 1, 1)]


def _ref_mobilenet_v2(sd, x, **bn):
    """MobileNetV2: stem, inverted residuals (expand, depthwise, linear projection), 1x1, pool, fc."""
    h = _relu6(_cbn(sd, "features.0.0", "features.0.1", x, 2, 1, **bn))
    i = 1
    for t, _, n, s in MOBILENET_V2_SETTING:
        for k in range(n):
            stride, p, o, j = (s if k == 0 else 1), f"features.{i}.conv.", h, 0
            if t != 1:
                o, j = _relu6(_cbn(sd, p + "0.0", p + "0.1", o, **bn)), 1
            o = _relu6(_cbn(sd, p + f"{j}.0", p + f"{j}.1", o, stride, 1, **bn))  # depthwise
            o = _cbn(sd, p + f"{j + 1}", p + f"{j + 2}", o, **bn)
            h = h + o if stride == 1 and o.shape == h.shape else o
            i += 1
    h = _relu6(_cbn(sd, f"features.{i}.0", f"features.{i}.1", h, **bn))
    return h.mean(axis=(2, 3)) @ sd["classifier.1.weight"].T + sd["classifier.1.bias"]


def _reference(name, kwargs, sd, x, **bn):
    if name == "mobilenet_v2":
        return _ref_mobilenet_v2(sd, x, **bn)
    return _ref_resnet(sd, x, kwargs.get("replace_stride_with_dilation", (False,) * 3), **bn)


@pytest.mark.parametrize("case", MODELS, ids=IDS)
def test_forward_matches_reference(case):
    _, name, kwargs = case
    model = _build(name, kwargs).double()
    if name == "mobilenet_v2":
        model.classifier[0].p = 0.0  # the training-mode comparison below needs no dropout
    sd = model.state_dict()
    x = np.random.default_rng(1).standard_normal(X_SHAPE)
    want = _reference(name, kwargs, sd, x)
    model.eval()
    y = model(x)
    assert y.shape == (2, kwargs["num_classes"])
    assert_close(y, want, np.float64, factor=100)
    assert np.array_equal(model(x), y)  # evaluation forwards change nothing (no fusion, no stats)
    for k, v in model.state_dict().items():
        assert np.array_equal(v, sd[k]), k
    # Training mode: batch statistics, and the running buffers move as the reference's do; 64x64
    # so that the last norms see 8 values (2 make their output ill-conditioned in the input).
    x = np.random.default_rng(1).standard_normal(X_SHAPE_TRAIN)
    stats = {}
    want = _reference(name, kwargs, sd, x, training=True, stats=stats)
    model.train()
    assert_close(model(x), want, np.float64, factor=100)
    after = model.state_dict()
    for k, v in stats.items():
        assert_close(after[k], v, np.float64, factor=100)
    assert all(v == 1 for k, v in after.items() if k.endswith("num_batches_tracked"))


# ---------------------------------------------------------------- fused inference

@pytest.mark.parametrize("case", MODELS, ids=IDS)
def test_fused_matches_unfused(xp, dtype, case):
    _, name, kwargs = case
    model = _build(name, kwargs).double().eval()
    x64 = np.random.default_rng(2).standard_normal(X_SHAPE)
    want = model(x64)
    model.to(_dev(xp)).to(dtype)
    x = xp.asarray(x64.astype(dtype))
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    before = model.state_dict()
    fused = nnu.fuse(model)
    assert fused is not model
    kinds = [type(m) for m in fused.modules()]
    assert nn.BatchNorm2d not in kinds and nn.Conv2d not in kinds
    assert not any(type(m).__name__ in ("ReLU", "ReLU6") for m in fused.modules())
    assert kinds.count(nnu.FusedConv2d) == n_convs
    blocks = [m for m in fused.modules() if isinstance(m, (models.BasicBlock, models.Bottleneck))]
    blocks += [m for m in fused.modules() if isinstance(m, models.InvertedResidual) and m.use_res_connect]
    assert blocks and all(b._fused for b in blocks)  # the residual adds happen in the convolutions
    assert not any("running" in k or "bn" in k for k in fused.state_dict())
    y = fused(x)
    assert type(y) is type(x) and y.dtype == dtype
    assert_close(y, want, dtype, factor=10)
    # The original is untouched and still trains.
    assert all(np.array_equal(v, before[k]) for k, v in model.state_dict().items())
    assert_close(model(x), want, dtype, factor=10)
    model.train()
    model.backward(model(x))
    with pytest.raises(RuntimeError, match="inference"):
        fused.backward(y)


def test_fuse_inplace_and_training_model():
    model = _build("resnet18", dict(num_classes=3))
    assert model.training
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    want = model.eval()(x)
    model.train()
    fused = nnu.fuse(model, inplace=True)
    assert fused is model and not model.training  # an inference model: evaluation mode
    assert isinstance(model.conv1, nnu.FusedConv2d) and model.conv1.activation == "relu"
    assert isinstance(model.layer1[0].conv2, nnu.FusedConv2d) and isinstance(model.layer1[0].bn2, nn.Identity)
    assert list(model._modules)[:4] == ["conv1", "bn1", "relu", "maxpool"]  # replacements keep their place
    assert_close(model(x), want, np.float32, factor=10)
    assert nnu.fuse(model) is not model and np.array_equal(nnu.fuse(model)(x), model(x))  # fusing again: a no-op


# ---------------------------------------------------------------- blocks: finite differences

def _downsample(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


BLOCKS = [
    ("basic", lambda: models.BasicBlock(4, 4), (2, 4, 5, 5)),
    ("basic_downsample", lambda: models.BasicBlock(4, 6, 2, _downsample(4, 6, 2)), (2, 4, 5, 6)),
    ("bottleneck", lambda: models.Bottleneck(8, 2), (2, 8, 4, 4)),
    ("bottleneck_grouped_downsample",
     lambda: models.Bottleneck(4, 2, 2, _downsample(4, 8, 2), groups=2, base_width=64), (2, 4, 5, 5)),
    ("bottleneck_dilated", lambda: models.Bottleneck(8, 2, dilation=2, base_width=128), (2, 8, 5, 4)),
    ("inverted_residual", lambda: models.InvertedResidual(4, 4, 1, expand_ratio=2), (2, 4, 4, 5)),
    ("inverted_residual_t1", lambda: models.InvertedResidual(4, 4, 1, expand_ratio=1), (2, 4, 4, 4)),
    ("inverted_no_residual", lambda: models.InvertedResidual(4, 6, 2, expand_ratio=3), (2, 4, 5, 5)),
]


@pytest.mark.parametrize("name,factory,shape", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_block_gradcheck(xp, name, factory, shape):
    nn.init.manual_seed(3)
    block = _randomize_norms(factory(), np.random.default_rng(3)).double().to(_dev(xp)).train()
    assert getattr(block, "use_res_connect", True) == ("no_residual" not in name)
    x = rand(np.random.default_rng(4), shape, np.float64, xp)
    assert testing.gradcheck(block, x)


def _directional_check(model, x, rng, eps=1e-5):
    """d/dt sum(f(x + t v, p + t u) * dy) at 0 by central differences against the backward's
    <dx, v> + <dp, u>: the whole network's backward, checked along one random unit direction
    (short steps in all 11 M coordinates cross no ReLU kink)."""
    params = list(model.parameters())
    dy = rng.standard_normal(model(x).shape)
    model.zero_grad()
    model(x)
    dx = model.backward(dy)
    v = rng.standard_normal(x.shape)
    us = [rng.standard_normal(p.shape) for p in params]
    norm = np.sqrt((v * v).sum() + sum((u * u).sum() for u in us))
    v, us = v / norm, [u / norm for u in us]
    analytic = float((dx * v).sum()) + sum(float((p.grad * u).sum()) for p, u in zip(params, us))

    def objective(t):
        for p, u, p0 in zip(params, us, base):
            p.data = p0 + t * u
        return float((model(x + t * v) * dy).sum())

    base = [p.data.copy() for p in params]
    numerical = (objective(eps) - objective(-eps)) / (2 * eps)
    objective(0.0)
    assert abs(analytic - numerical) <= 1e-6 * abs(numerical), (analytic, numerical)


@pytest.mark.parametrize("case", [MODELS[0], MODELS[5]], ids=[IDS[0], IDS[5]])
def test_network_backward_directional(case):
    _, name, kwargs = case
    model = _build(name, kwargs).double().train()
    if name == "mobilenet_v2":
        model.classifier[0].p = 0.0
    rng = np.random.default_rng(5)
    _directional_check(model, rng.standard_normal(X_SHAPE_TRAIN), rng)


# ---------------------------------------------------------------- training

@pytest.mark.parametrize("name,kwargs,lr,drop", [
    ("resnet18", dict(num_classes=3), 0.01, 0.5),
    # MobileNetV2's last batch norms see 6 values each on this batch: a rough loss surface, so a
    # small step, no dropout, and only a first-order decrease is asked of it.
    ("mobilenet_v2", dict(num_classes=3, width_mult=0.25, dropout=0.0), 1e-3, 0.95)],
    ids=["resnet18", "mobilenet_v2"])
def test_sgd_steps_decrease_loss(name, kwargs, lr, drop):
    nn.init.manual_seed(0)
    model = getattr(models, name)(**kwargs)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 32, 32)).astype(np.float32)
    t = np.array([0, 1, 2, 0, 1, 2])
    crit = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(5):
        losses.append(crit(model(x), t))
        opt.zero_grad()
        model.backward(crit.backward())
        opt.step()
    assert all(np.isfinite(losses)) and losses[1] < losses[0] and min(losses) < drop * losses[0], losses


# ---------------------------------------------------------------- state_dict keys

def _resnet18_keys():
    """resnet18's state_dict keys in PyTorch's order, from its structure: stem, 4 stages of 2
    BasicBlocks (the first of stages 2-4 with a downsample), fc."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{b}" for b in bn]
    for stage in range(1, 5):
        for j in range(2):
            p = f"layer{stage}.{j}."
            keys += [p + "conv1.weight"] + [p + f"bn1.{b}" for b in bn]
            keys += [p + "conv2.weight"] + [p + f"bn2.{b}" for b in bn]
            if stage > 1 and j == 0:
                keys += [p + "downsample.0.weight"] + [p + f"downsample.1.{b}" for b in bn]
    return keys + ["fc.weight", "fc.bias"]


def test_resnet18_state_dict_keys():
    sd = models.resnet18(num_classes=7).state_dict()
    assert list(sd) == _resnet18_keys() and len(sd) == 122
    assert sd["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1) and sd["fc.weight"].shape == (7, 512)
    assert sd["bn1.num_batches_tracked"].shape == () and sd["bn1.num_batches_tracked"].dtype == np.int64
    sd = models.mobilenet_v2().state_dict()
    assert list(sd)[:6] == ["features.0.0.weight"] + [f"features.0.1.{b}" for b in
                                                        ["weight", "bias", "running_mean", "running_var",
                                                         "num_batches_tracked"]]
    assert "features.1.conv.0.0.weight" in sd and "features.2.conv.3.running_var" in sd
    assert list(sd)[-2:] == ["classifier.1.weight", "classifier.1.bias"] and sd["classifier.1.weight"].shape == \
        (1000, 1280)


def test_weights_and_arguments_errors():
    with pytest.raises(ValueError, match="(?s)no weights from the network.*load_state_dict"):
        models.resnet18(weights="DEFAULT")
    with pytest.raises(ValueError, match="mobilenet_v2"):
        models.mobilenet_v2(weights="IMAGENET1K_V2")
    with pytest.raises(ValueError, match="groups"):
        models.resnext50_32x4d(groups=8)
    with pytest.raises(ValueError, match="replace_stride_with_dilation"):
        models.resnet50(replace_stride_with_dilation=[True])
    with pytest.raises(NotImplementedError, match="Dilation"):
        models.resnet18(replace_stride_with_dilation=[False, False, True])
    with pytest.raises(ValueError, match="BasicBlock"):
        models.resnet18(width_per_group=32)
    with pytest.raises(ValueError, match="stride"):
        models.InvertedResidual(4, 4, 3, 2)
    model = models.resnet18(num_classes=3)
    sd = model.state_dict()
    sd["fc.extra"] = sd.pop("fc.bias")
    with pytest.raises(KeyError, match=r"(?s)Missing key\(s\).*fc\.bias.*Unexpected key\(s\).*fc\.extra"):
        model.load_state_dict(sd)
    with pytest.raises(ValueError, match="fc.weight"):
        model.load_state_dict(models.resnet18(num_classes=4).state_dict())


def test_zero_init_residual():
    model = models.resnet50(num_classes=3, zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, models.Bottleneck)]
    assert len(blocks) == 16 and all((b.bn3.weight.data == 0).all() and (b.bn2.weight.data == 1).all()
                                     for b in blocks)
    model = models.resnet18(num_classes=3, zero_init_residual=True)
    assert all((b.bn2.weight.data == 0).all() for b in model.modules() if isinstance(b, models.BasicBlock))


# ---------------------------------------------------------------- conv + batch norm folding

def _bn_arrays(rng, C, dtype, affine=True):
    rm, rv = rng.normal(0, 0.5, C).astype(dtype), rng.uniform(0.2, 2.0, C).astype(dtype)
    w, b = (rng.uniform(0.5, 1.5, C).astype(dtype), rng.normal(0, 0.5, C).astype(dtype)) if affine else (None, None)
    return rm, rv, w, b


@pytest.mark.parametrize("conv_bias,affine", [(True, True), (False, True), (True, False), (False, False)])
def test_fuse_conv_bn_weights(xp, dtype, conv_bias, affine):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 4, 6, 5))
    w = rng.standard_normal((6, 2, 3, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype) if conv_bias else None
    rm, rv, gw, gb = _bn_arrays(rng, 6, dtype, affine)
    eps = 1e-3
    # Direct float64: the convolution, then the evaluation-mode batch norm.
    want = R.batch_norm(R.conv2d(x, w.astype(np.float64), b, 2, 1, 1, 2), rm, rv, gw, gb, eps=eps)
    dev = [None if a is None else xp.asarray(a) for a in (w, b, rm, rv, gw, gb)]
    fw, fb = nnu.fuse_conv_bn_weights(dev[0], dev[1], dev[2], dev[3], eps, dev[4], dev[5])
    assert type(fw) is type(dev[0]) and fw.dtype == dtype and fb.dtype == dtype and fb.shape == (6,)
    assert_close(R.conv2d(x, to_numpy(fw), to_numpy(fb), 2, 1, 1, 2), want, dtype, factor=10)
    pw, pb = nnu.fuse_conv_bn_weights(nn.Parameter(dev[0]), dev[1], dev[2], dev[3], eps, dev[4], dev[5])
    assert isinstance(pw, nn.Parameter) and isinstance(pb, nn.Parameter)  # as PyTorch returns Parameters


def test_fuse_conv_bn_weights_dtypes_and_errors():
    rng = np.random.default_rng(7)
    rm, rv, gw, gb = _bn_arrays(rng, 3, np.float64)
    fw, fb = nnu.fuse_conv_bn_weights(np.ones((3, 2, 1, 1), np.float32), np.zeros(3), rm, rv, 1e-5, gw, gb)
    assert fw.dtype == np.float32 and fb.dtype == np.float64  # as PyTorch: each keeps the conv's own dtype
    with pytest.raises(ValueError, match="bn_rm"):
        nnu.fuse_conv_bn_weights(np.ones((4, 2, 1, 1)), None, rm, rv, 1e-5, gw, gb)
    with pytest.raises(ValueError, match="bn_w"):
        nnu.fuse_conv_bn_weights(np.ones((3, 2, 1, 1)), None, rm, rv, 1e-5, gw[:2], gb)


@pytest.mark.parametrize("groups", [1, 2])
def test_fuse_conv_bn_eval_transpose(groups):
    nn.init.manual_seed(8)
    rng = np.random.default_rng(8)
    conv = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=groups).double().eval()
    bn = _randomize_norms(nn.Sequential(nn.BatchNorm2d(6)), rng)[0].double().eval()
    x = rng.standard_normal((2, 4, 3, 4))
    want = bn(conv(x))
    fused = nnu.fuse_conv_bn_eval(conv, bn, transpose=True)
    assert type(fused) is nn.ConvTranspose2d and fused is not conv and fused.bias is not None
    assert_close(fused(x), want, np.float64, factor=10)


def test_fuse_conv_bn_eval(xp):
    nn.init.manual_seed(9)
    rng = np.random.default_rng(9)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False).double().to(_dev(xp)).eval()
    bn = _randomize_norms(nn.Sequential(nn.BatchNorm2d(4)), rng)[0].double().to(_dev(xp))
    with pytest.raises(ValueError, match="evaluation mode"):
        nnu.fuse_conv_bn_eval(conv, bn)
    bn.eval()
    x = rand(rng, (2, 3, 5, 4), np.float64, xp)
    w0 = to_numpy(conv.weight.data).copy()
    fused = nnu.fuse_conv_bn_eval(conv, bn)
    assert type(fused) is nn.Conv2d and fused.bias is not None and conv.bias is None
    assert np.array_equal(to_numpy(conv.weight.data), w0)
    assert_close(fused(x), to_numpy(bn(conv(x))), np.float64, factor=10)
    with pytest.raises(ValueError, match="transpose"):
        nnu.fuse_conv_bn_eval(conv, bn, transpose=True)


# ---------------------------------------------------------------- fused convolution and Sequential fusion

ACTS = {None: lambda z: z, "relu": _relu, "relu6": _relu6, "leaky_relu": lambda z: np.where(z > 0, z, 0.2 * z),
        "silu": lambda z: z / (1 + np.exp(-z)), "hardswish": lambda z: z * np.clip(z + 3, 0, 6) / 6}


@pytest.mark.parametrize("activation", list(ACTS), ids=[str(a) for a in ACTS])
def test_fused_conv2d_activation_residual(xp, dtype, activation):
    rng = np.random.default_rng(10)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1).to(_dev(xp)).to(dtype)
    nn.init.uniform_(conv.weight, -2, 2)  # outputs across the kinks of relu6 and hardswish (+-3)
    x = rand(rng, (2, 3, 7, 6), dtype, xp, -2, 2)
    r = rand(rng, (2, 4, 4, 3), dtype, xp, -3, 3)
    fc = nnu.FusedConv2d(conv, activation, negative_slope=0.2)
    z = R.conv2d(to_numpy(x), to_numpy(conv.weight.data), to_numpy(conv.bias.data), 2, 1)
    assert_close(fc(x), ACTS[activation](z), dtype, factor=10)
    assert_close(fc(x, residual=r), ACTS[activation](z + to_numpy(r)), dtype, factor=10)
    with pytest.raises(ValueError, match="residual"):
        fc(x, residual=r[:, :2])
    with pytest.raises(ValueError, match="activation"):
        nnu.FusedConv2d(conv, "gelu")


def test_fuse_sequential_chains():
    nn.init.manual_seed(11)
    rng = np.random.default_rng(11)
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.3),  # all three
                        nn.Conv2d(4, 4, 1), nn.ReLU(),                                        # no norm
                        nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5),                                # no activation
                        nn.Tanh(),                                                            # not fusable
                        nn.Conv2d(5, 2, 1), nn.Flatten())                                     # alone: kept
    _randomize_norms(seq, rng).double().eval()
    x = rng.standard_normal((2, 3, 6, 6))
    want = seq(x)
    fused = nnu.fuse(seq)
    kinds = [type(m).__name__ for m in fused]
    assert kinds == ["FusedConv2d", "Identity", "Identity", "FusedConv2d", "Identity", "FusedConv2d", "Identity",
                     "Tanh", "Conv2d", "Flatten"]
    assert (fused[0].activation, fused[0].negative_slope, fused[3].activation, fused[5].activation) == \
        ("leaky_relu", 0.3, "relu", None)
    assert_close(fused(x), want, np.float64, factor=10)
    assert [type(m).__name__ for m in seq][:2] == ["Conv2d", "BatchNorm2d"]  # the original keeps its layers


# ---------------------------------------------------------------- against torchvision

def _torchvision_pair(name, kwargs):
    torch = pytest.importorskip("torch")
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    tv = getattr(tvm, name)(weights=None, **kwargs).double()
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.2, generator=g)
    ours = getattr(models, name)(**kwargs).double()
    assert list(ours.state_dict()) == list(tv.state_dict())  # the same keys in the same order
    ours.load_state_dict({k: v.numpy() for k, v in tv.state_dict().items()})  # the documented recipe
    return torch, ours, tv


@pytest.mark.parametrize("case", MODELS, ids=IDS)
def test_against_torchvision(case):
    _, name, kwargs = case
    torch, ours, tv = _torchvision_pair(name, kwargs)
    rng = np.random.default_rng(12)
    x = rng.standard_normal(X_SHAPE_TRAIN)
    ours.eval(), tv.eval()
    with torch.no_grad():
        want = tv(torch.from_numpy(x)).numpy()
    assert_close(ours(x), want, np.float64, factor=100)
    assert_close(nnu.fuse(ours)(x), want, np.float64, factor=100)
    # Training mode: forward, every gradient, and the running statistics.
    ours.train(), tv.train()
    if name == "mobilenet_v2":
        ours.classifier[0].p = 0.0
        tv.classifier[0].p = 0.0
    xt = torch.from_numpy(x).requires_grad_()
    yt = tv(xt)
    dy = rng.standard_normal(yt.shape)
    yt.backward(torch.from_numpy(dy))
    y = ours(x)
    assert_close(y, yt.detach().numpy(), np.float64, factor=100)
    assert_close(ours.backward(dy), xt.grad.numpy(), np.float64, factor=100)
    tgrads = {k: p.grad.numpy() for k, p in tv.named_parameters()}
    scale = max(np.abs(g).max() for g in tgrads.values())
    for k, p in ours.named_parameters():
        # A floor for gradients that vanish (a norm's bias before a training-mode norm: ~1e-14).
        assert np.abs(p.grad - tgrads[k]).max() <= 1e-9 * max(np.abs(tgrads[k]).max(), 1e-3 * scale), k
    tsd = tv.state_dict()
    for k, v in ours.state_dict().items():
        assert np.allclose(v, tsd[k].numpy(), rtol=1e-10, atol=1e-12), k


def test_torchvision_loads_ours():
    torch, ours, tv = _torchvision_pair("resnet18", dict(num_classes=3))
    nn.init.manual_seed(13)
    fresh = _randomize_norms(models.resnet18(num_classes=3), np.random.default_rng(13))
    tv.load_state_dict({k: torch.from_numpy(v) for k, v in fresh.state_dict().items()})  # strict
    x = np.random.default_rng(14).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = tv.float().eval()(torch.from_numpy(x)).numpy()
    assert_close(fresh.eval()(x), want, np.float32, factor=100)
