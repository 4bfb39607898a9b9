"""pydl.nn.utils: inference fusion of convolution, batch norm, activation and residual add.

- ``fuse_conv_bn_weights`` / ``fuse_conv_bn_eval``: as ``torch.nn.utils.fusion``. A batch
  norm in evaluation mode is an affine map per channel, ``y = (z - mean) s + beta`` with
  ``s = gamma / sqrt(var + eps)``, so it folds into the preceding convolution:
  ``W' = W s`` (per output channel) and ``b' = (b - mean) s + beta``.
- ``FusedConv2d``: ``act(conv2d(x, W', b') + residual)`` in one convolution call.
- ``fuse(model)``: an inference copy of a model with every Conv2d -> BatchNorm2d -> activation
  chain folded into FusedConv2d, and the residual add of ``pydl.models`` blocks moved into
  the convolution that ends their branch.

>>> import pydl.nn as nn, pydl.models as models
>>> net = models.resnet18(num_classes=10).eval()
>>> fast = nn.utils.fuse(net)   # a new model; net is unchanged and still trainable
"""
from __future__ import annotations

import copy

import numpy as np

from .. import _backend
from .. import functional as F
from ..functional.conv import ACTIVATIONS as _CONV_ACTIVATIONS
from .layers import BatchNorm2d, Conv2d, ConvTranspose2d, Identity, LeakyReLU
from .module import Module, Parameter, Sequential

__all__ = ["fuse_conv_bn_weights", "fuse_conv_bn_eval", "FusedConv2d", "fuse"]

ACTIVATIONS = tuple(_CONV_ACTIVATIONS)  # those conv2d's epilogue applies


# ---------------------------------------------------------------- conv + batch norm

def _data(a):
    return a.data if isinstance(a, Parameter) else a


def fuse_conv_bn_weights(conv_w, conv_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b, transpose=False):
    """Fold an evaluation-mode batch norm into the convolution before it, as ``torch.nn.utils.fusion``.

    Parameters
    ----------
    conv_w : ndarray, shape (K, C / groups, kh, kw), or (C, K / groups, kh, kw) when transpose
    conv_b : ndarray, shape (K,), or None (zero)
    bn_rm, bn_rv : ndarray, shape (K,)
        The batch norm's running mean and variance.
    bn_eps : float
    bn_w, bn_b : ndarray, shape (K,), or None (one and zero: a batch norm without affine)
    transpose : bool
        conv_w is a transposed convolution's weight (output channels on axis 1; grouped
        weights too, where PyTorch's reshape handles one group only).

    Returns
    -------
    (fused_w, fused_b) : ``W * s`` per output channel and ``(b - mean) * s + beta`` with
        ``s = gamma / sqrt(var + eps)``; NumPy or CuPy like conv_w, fused_w of conv_w's dtype and
        fused_b of conv_b's (conv_w's when conv_b is None), computed in float64. Parameters
        when conv_w is a Parameter (as PyTorch returns Parameters), arrays otherwise.
    """
    as_param = isinstance(conv_w, Parameter)
    w, b, rm, rv, gw, gb = (_data(a) for a in (conv_w, conv_b, bn_rm, bn_rv, bn_w, bn_b))
    xp = _backend.array_module(conv_w=w, conv_b=b, bn_rm=rm, bn_rv=rv, bn_w=gw, bn_b=gb)
    _backend.check_float("conv_w", w)
    if w.ndim < 2:
        raise ValueError(f"conv_w: expected a convolution weight (at least 2-D), got shape {tuple(w.shape)}")
    K = w.shape[1] if transpose else w.shape[0]
    if rm.ndim != 1:
        raise ValueError(f"bn_rm: expected a 1-D array, got shape {tuple(rm.shape)}")
    C = rm.shape[0]
    groups = C // K if K and C % K == 0 else 0  # of a transposed convolution, whose weight has K = C / groups
    if not transpose and C != K:
        raise ValueError(f"bn_rm: expected {K} channels for conv_w of shape {tuple(w.shape)}, got {C}")
    if transpose and (not groups or w.shape[0] % groups):
        raise ValueError(f"bn_rm: expected channels a multiple of {K} dividing the groups of conv_w of shape "
                         f"{tuple(w.shape)} (transpose=True), got {C}")
    for name, a in (("conv_b", b), ("bn_rv", rv), ("bn_w", gw), ("bn_b", gb)):
        if a is not None and tuple(a.shape) != (C,):
            raise ValueError(f"{name}: expected shape ({C},), got {tuple(a.shape)}")
    f64 = np.float64
    scale = xp.asarray(rv, dtype=f64) + float(bn_eps)
    scale = 1.0 / xp.sqrt(scale)
    if gw is not None:
        scale = scale * xp.asarray(gw, dtype=f64)
    shift = -xp.asarray(rm, dtype=f64) * scale
    if b is not None:
        shift = shift + xp.asarray(b, dtype=f64) * scale
    if gb is not None:
        shift = shift + xp.asarray(gb, dtype=f64)
    tail = (1,) * (w.ndim - 2)
    if transpose:
        # Output channel g * K + j is column j of the input channels of group g.
        cin_g = w.shape[0] // groups
        s = xp.broadcast_to(scale.reshape(groups, 1, K), (groups, cin_g, K)).reshape((w.shape[0], K) + tail)
    else:
        s = scale.reshape((K, 1) + tail)
    fused_w = (xp.asarray(w, dtype=f64) * s).astype(w.dtype)
    fused_b = shift.astype(w.dtype if b is None else b.dtype)
    if as_param:
        return Parameter(fused_w), Parameter(fused_b)
    return fused_w, fused_b


def _copy_module(module):
    """A deep copy without the arrays cached by the last forward (they are not state)."""
    saved = [(m, m.__dict__["_cache"]) for m in module.modules() if "_cache" in m.__dict__]
    try:
        for m, _ in saved:
            object.__setattr__(m, "_cache", None)
        return copy.deepcopy(module)
    finally:
        for m, cache in saved:  # the original keeps what its backward needs
            object.__setattr__(m, "_cache", cache)


def fuse_conv_bn_eval(conv, bn, transpose=False):
    """A new convolution computing ``bn(conv(x))`` for an evaluation-mode batch norm, as PyTorch.

    Parameters
    ----------
    conv : Conv2d (ConvTranspose2d when transpose)
    bn : BatchNorm2d with running statistics
    transpose : bool

    Returns
    -------
    A copy of conv (with a bias) whose weight and bias are ``fuse_conv_bn_weights``'s; conv and
    bn are unchanged. Both must be in evaluation mode (``.eval()``): a training-mode batch
    norm normalizes with batch statistics, which no weight can fold.
    """
    if conv.training or bn.training:
        raise ValueError("fuse_conv_bn_eval: expected conv and bn in evaluation mode (call .eval()), "
                         f"got conv.training={conv.training}, bn.training={bn.training}")
    if transpose != isinstance(conv, ConvTranspose2d):
        raise ValueError(f"transpose: expected {not transpose} for a {type(conv).__name__}, got {transpose}")
    if getattr(bn, "running_mean", None) is None:
        raise ValueError("bn: expected running statistics (track_running_stats=True) to fold")
    fused = _copy_module(conv)
    w, b = fuse_conv_bn_weights(conv.weight.data, None if conv.bias is None else conv.bias.data,
                                bn.running_mean, bn.running_var, bn.eps,
                                None if bn.weight is None else bn.weight.data,
                                None if bn.bias is None else bn.bias.data, transpose)
    fused.weight = Parameter(w)
    fused.bias = Parameter(b)
    return fused


# ---------------------------------------------------------------- fused convolution

class FusedConv2d(Module):
    """Inference convolution ``act(conv2d(x, weight, bias) + residual)`` in one call.

    Built from a Conv2d (sharing its Parameters): ``FusedConv2d(conv, activation='relu')``.
    ``forward(x, residual=None)``; residual has the output's shape. Evaluation only: its
    backward raises (train the unfused model, then ``fuse`` it again).
    """

    def __init__(self, conv, activation=None, negative_slope=0.01):
        super().__init__()
        if not isinstance(conv, Conv2d):
            raise TypeError(f"conv: expected a pydl.nn.Conv2d, got {type(conv).__name__}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        for k in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
            setattr(self, k, getattr(conv, k))
        self.weight = conv.weight
        self.bias = conv.bias
        self.activation = activation
        self.negative_slope = float(negative_slope)

    def extra_repr(self):
        act = f", activation={self.activation!r}" if self.activation else ""
        slope = f", negative_slope={self.negative_slope}" if self.activation == "leaky_relu" else ""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}{act}{slope}")

    def forward(self, x, residual=None):
        b = None if self.bias is None else self.bias.data
        return F.conv2d(x, self.weight.data, b, self.stride, self.padding, self.dilation, self.groups,
                             activation=self.activation, residual=residual, negative_slope=self.negative_slope)

    def backward(self, grad_out):
        raise RuntimeError("FusedConv2d is inference-only (no backward): train the unfused model and "
                           "call pydl.nn.utils.fuse on it again")


# ---------------------------------------------------------------- fuse(model)

# Activation layers the fused convolution applies itself; matched by class name among pydl's
# own classes, so that layers defined in pydl.models until pydl.nn has them also match.
_ACTIVATION_CLASSES = {"ReLU": "relu", "ReLU6": "relu6", "LeakyReLU": "leaky_relu", "SiLU": "silu",
                       "Hardswish": "hardswish"}


def _activation_of(m):
    """(name, negative_slope) of a fusable activation layer, else None."""
    cls = type(m)
    if not cls.__module__.startswith("pydl.") or cls.__name__ not in _ACTIVATION_CLASSES:
        return None
    slope = m.negative_slope if isinstance(m, LeakyReLU) else 0.01
    return _ACTIVATION_CLASSES[cls.__name__], slope


def _foldable_bn(m):
    return isinstance(m, BatchNorm2d) and m.running_mean is not None


def _fuse_chain(conv, bn=None, act=None):
    """FusedConv2d for ``act(bn(conv(x)))`` (bn, act optional; evaluation mode), or None when
    conv is not a plain Conv2d, bn cannot fold or act is not fusable."""
    if type(conv) is not Conv2d or (bn is not None and not _foldable_bn(bn)):
        return None
    activation, slope = (None, 0.01)
    if act is not None:
        found = _activation_of(act)
        if found is None:
            return None
        activation, slope = found
    if bn is not None:
        conv = fuse_conv_bn_eval(conv, bn)
    return FusedConv2d(conv, activation, slope)


def _fuse_sequential(seq):
    """Conv2d [BatchNorm2d] [activation] runs of a Sequential -> FusedConv2d, Identity..."""
    names = list(seq._modules)
    mods = list(seq._modules.values())
    i = 0
    while i < len(mods):
        if type(mods[i]) is not Conv2d:
            i += 1
            continue
        j = i + 1
        bn = mods[j] if j < len(mods) and _foldable_bn(mods[j]) else None
        j += bn is not None
        act = mods[j] if j < len(mods) and _activation_of(mods[j]) is not None else None
        j += act is not None
        if bn is not None or act is not None:
            setattr(seq, names[i], _fuse_chain(mods[i], bn, act))
            for k in range(i + 1, j):
                setattr(seq, names[k], Identity())
        i = j


def _fuse_tree(m):
    for child in list(m.children()):  # children first: a block sees its fused Sequentials
        _fuse_tree(child)
    if isinstance(m, Sequential):
        _fuse_sequential(m)
    hook = getattr(m, "_fuse", None)
    if callable(hook):
        hook()


def fuse(model, inplace=False):
    """An inference-ready model: batch norms folded, activations and residual adds in the convolutions.

    Parameters
    ----------
    model : Module
    inplace : bool
        False (default, as ``torch.ao.quantization.fuse_modules``): fuse a deep copy and
        leave model untouched (still trainable). True: rewrite model itself.

    Returns
    -------
    The fused model, in evaluation mode. Its outputs equal ``model.eval()``'s up to
    rounding; it has no backward (its FusedConv2d layers raise).

    What is fused: in every Sequential, each Conv2d followed by a BatchNorm2d with running
    statistics and/or a ReLU, ReLU6, LeakyReLU, SiLU or Hardswish becomes one FusedConv2d
    (the folded layers become Identity, as in PyTorch's fuse_modules). Other modules whose
    convolutions are attributes rather than Sequential entries fuse themselves in a
    ``_fuse()`` method, called after their children are fused: the ``pydl.models`` networks
    and blocks do so, the blocks moving the residual add and the final ReLU into the
    convolution that ends their branch. State-dict keys change accordingly (no ``bn``
    entries; convolutions gain a ``bias``).
    """
    if not isinstance(model, Module):
        raise TypeError(f"model: expected a pydl.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = _copy_module(model)
    model.eval()
    _fuse_tree(model)
    return model
