"""Loss modules: ``loss = crit(input, target)`` returns a Python float ('mean' or 'sum'; an
array for reduction='none') and ``crit.backward(grad_loss=1.0)`` returns d loss / d input.

CrossEntropyLoss runs the C++/CUDA kernels (``cross_entropy_forward`` saves the per-row
log-sum-exp so the backward recomputes nothing); the others are NumPy/CuPy expressions.
"""
from __future__ import annotations

import numpy as np

from .. import _backend
from .. import functional as F
from .module import Module

__all__ = ["CrossEntropyLoss", "MSELoss", "L1Loss", "SmoothL1Loss", "BCEWithLogitsLoss"]

_REDUCTIONS = ("none", "mean", "sum")


def _reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


class _Loss(Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = _reduction(reduction)
        self._cache = None

    def extra_repr(self):
        return f"reduction={self.reduction!r}"

    def _out(self, loss):
        return loss if self.reduction == "none" else float(loss)

    def _grad_loss(self, grad_loss, xp, dtype, shape):
        """grad_loss as an array broadcastable to the per-element loss."""
        if grad_loss is None:
            grad_loss = 1.0
        if self.reduction == "none":
            g = xp.asarray(grad_loss, dtype=dtype)
            if g.ndim and tuple(g.shape) != tuple(shape):
                raise ValueError(f"grad_loss: expected shape {tuple(shape)}, got {tuple(g.shape)}")
            return g
        g = float(grad_loss)
        if self.reduction == "mean":
            n = int(np.prod(shape))
            g = g / n if n else float("nan")
        return dtype.type(g)


class _Elementwise(_Loss):
    """Losses l(d) of d = input - target elementwise; subclasses give l and dl/dd."""

    def forward(self, input, target):
        xp = _backend.array_module(input=input, target=target)
        _backend.check_float("input", input)
        _backend.check_same_dtype("input", input, target=target)
        _backend.check_shape("target", target, input.shape)
        d = input - target
        elem = self._elem(d, xp)
        self._cache = (d, xp)
        if self.reduction == "none":
            return elem
        if self.reduction == "sum":
            return float(elem.sum())
        return float(elem.mean()) if elem.size else float("nan")

    def backward(self, grad_loss=None):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward: call forward first")
        d, xp = self._cache
        g = self._grad_loss(grad_loss, xp, d.dtype, d.shape)
        return (self._delem(d, xp) * g).astype(d.dtype, copy=False)


class MSELoss(_Elementwise):
    """(input - target)^2, reduced."""

    def _elem(self, d, xp):
        return d * d

    def _delem(self, d, xp):
        return 2 * d


class L1Loss(_Elementwise):
    """|input - target|, reduced; gradient sign(d) (0 at d = 0, as PyTorch)."""

    def _elem(self, d, xp):
        return xp.abs(d)

    def _delem(self, d, xp):
        return xp.sign(d)


class SmoothL1Loss(_Elementwise):
    """0.5 d^2 / beta for |d| < beta, |d| - 0.5 beta otherwise (beta = 0: L1)."""

    def __init__(self, reduction="mean", beta=1.0):
        super().__init__(reduction)
        self.beta = _backend.float_arg("beta", beta, 0.0)

    def _elem(self, d, xp):
        a = xp.abs(d)
        if self.beta == 0:
            return a
        return xp.where(a < self.beta, 0.5 * d * d / self.beta, a - 0.5 * self.beta).astype(d.dtype, copy=False)

    def _delem(self, d, xp):
        if self.beta == 0:
            return xp.sign(d)
        return xp.where(xp.abs(d) < self.beta, d / self.beta, xp.sign(d)).astype(d.dtype, copy=False)


class BCEWithLogitsLoss(_Loss):
    """Binary cross entropy on logits x, targets y in [0, 1], stable for any x:
    ``l = w (p y softplus(-x) + (1 - y) softplus(x))`` (p = pos_weight, broadcast over the last
    axis), with softplus(x) = max(x, 0) + log1p(exp(-|x|)). Since softplus' = sigmoid:
    ``dl/dx = w (p y (sigmoid(x) - 1) + (1 - y) sigmoid(x))``.
    """

    def __init__(self, weight=None, reduction="mean", pos_weight=None):
        super().__init__(reduction)
        self.weight, self.pos_weight = weight, pos_weight

    def forward(self, input, target):
        xp = _backend.array_module(input=input, target=target, weight=self.weight, pos_weight=self.pos_weight)
        _backend.check_float("input", input)
        _backend.check_same_dtype("input", input, target=target, weight=self.weight, pos_weight=self.pos_weight)
        _backend.check_shape("target", target, input.shape)
        x, y = input, target
        sp_pos = xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))  # softplus(x)
        sp_neg = sp_pos - x                                         # softplus(-x)
        py = y if self.pos_weight is None else self.pos_weight * y
        elem = py * sp_neg + (1 - y) * sp_pos
        if self.weight is not None:
            elem = elem * self.weight
        self._cache = (x, y, xp)
        if self.reduction == "none":
            return elem.astype(x.dtype, copy=False)
        if self.reduction == "sum":
            return float(elem.sum())
        return float(elem.mean()) if elem.size else float("nan")

    def backward(self, grad_loss=None):
        if self._cache is None:
            raise RuntimeError("BCEWithLogitsLoss.backward: call forward first")
        x, y, xp = self._cache
        s = F.sigmoid(x)
        py = y if self.pos_weight is None else self.pos_weight * y
        d = py * (s - 1) + (1 - y) * s
        if self.weight is not None:
            d = d * self.weight
        g = self._grad_loss(grad_loss, xp, x.dtype, x.shape)
        return (d * g).astype(x.dtype, copy=False)


class CrossEntropyLoss(_Loss):
    """Softmax cross entropy on logits (class axis 1), as ``torch.nn.CrossEntropyLoss``.

    See ``pydl.functional.cross_entropy`` for the formulas. ``backward(grad_loss=1.0)``
    uses the state that ``cross_entropy_forward`` saved.
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(reduction)
        self.weight, self.ignore_index, self.label_smoothing = weight, ignore_index, label_smoothing

    def _args(self):
        return self.weight, self.ignore_index, self.reduction, self.label_smoothing

    def forward(self, input, target):
        loss, saved = F.cross_entropy_forward(input, target, *self._args())
        self._cache = (input, target, saved)
        return self._out(loss)

    def backward(self, grad_loss=None):
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss.backward: call forward first")
        x, t, saved = self._cache
        if grad_loss is None:
            grad_loss = 1.0
        if self.reduction == "none" and isinstance(grad_loss, (int, float)):
            xp = _backend.array_module(input=x)
            shape = tuple(x.shape[:1]) + tuple(x.shape[2:]) if x.ndim > 1 else ()
            grad_loss = xp.full(shape, grad_loss, dtype=x.dtype)
        return F.cross_entropy_backward(grad_loss, x, t, *self._args(), saved=saved)
