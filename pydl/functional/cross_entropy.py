"""softmax, log_softmax and softmax cross entropy: forward and backward.

Semantics are PyTorch's (``torch.softmax``, ``torch.log_softmax``,
``torch.nn.functional.cross_entropy``) with ``axis=`` for ``dim=``. The kernels see
every input as ``(outer, L, inner)`` with the reduced axis (softmax's ``axis``, the
class axis 1 of cross entropy) in the middle; see csrc/cross_entropy.cpp.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from .. import _backend

__all__ = ["softmax", "log_softmax", "softmax_backward", "log_softmax_backward",
           "cross_entropy", "cross_entropy_forward", "cross_entropy_backward"]

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_INT64 = np.dtype(np.int64)

CrossEntropySaved = namedtuple("CrossEntropySaved", ["stats", "norm"])
CrossEntropySaved.__doc__ = """What cross_entropy_forward hands to cross_entropy_backward.

stats : ndarray, shape (R, 3), logits' dtype
    Per element (R = N * d1 * ...): the row max m, ls = log sum_c exp(x_c - m) (so
    logsumexp = m + ls, kept apart to stay exact in float32) and S = sum_c q_c, the
    total mass of the (weighted, smoothed) target distribution q (0 where ignored).
norm : ndarray, shape (2,), float64
    [gradient scale (1 / divisor for reduction='mean', else 1), number of invalid targets].
"""


def _split(shape, axis):
    """(outer, L, inner) of shape around axis; a 0-d array is one row of length 1."""
    nd = max(len(shape), 1)
    a = _backend.int_arg("axis", axis)
    if not -nd <= a < nd:
        raise ValueError(f"axis: expected an int in [{-nd}, {nd - 1}] for a {len(shape)}-D array, got {a}")
    if len(shape) == 0:
        return 1, 1, 1
    a %= nd
    outer = 1
    for s in shape[:a]:
        outer *= s
    inner = 1
    for s in shape[a + 1:]:
        inner *= s
    return outer, shape[a], inner


def _softmax(x, axis, log):
    xp = _backend.array_module(x=x)
    _backend.check_float("x", x)
    shape = x.shape  # (ascontiguousarray makes a 0-d array 1-d)
    outer, L, inner = _split(shape, axis)
    x = _backend.contiguous(x, xp)
    y = _backend.empty(shape, x.dtype, xp)
    _backend.kernels(xp, "cross_entropy").softmax_forward(x, y, outer, L, inner, log)
    return y


def softmax(x, axis=-1):
    """Softmax along ``axis``: ``y = exp(x - max) / sum(exp(x - max))``.

    Parameters
    ----------
    x : ndarray, any shape, float32 or float64
    axis : int
        The axis to normalize over (negative counts from the end).

    Returns
    -------
    y : ndarray, shape of x, dtype of x
        Non-negative, summing to 1 along ``axis``. Stable for any finite magnitude.
    """
    return _softmax(x, axis, False)


def log_softmax(x, axis=-1):
    """Log of the softmax along ``axis``: ``y = (x - max) - log(sum(exp(x - max)))``.

    Parameters
    ----------
    x : ndarray, any shape, float32 or float64
    axis : int

    Returns
    -------
    y : ndarray, shape of x, dtype of x
        At most 0; accurate (never ``-inf`` from an underflowed exp) for any finite x.
    """
    return _softmax(x, axis, True)


def _softmax_backward(grad_out, y, axis, log):
    xp = _backend.array_module(grad_out=grad_out, y=y)
    _backend.check_float("y", y)
    _backend.check_same_dtype("y", y, grad_out=grad_out)
    _backend.check_shape("grad_out", grad_out, y.shape)
    shape = y.shape
    outer, L, inner = _split(shape, axis)
    grad_out = _backend.contiguous(grad_out, xp)
    y = _backend.contiguous(y, xp)
    dx = _backend.empty(shape, y.dtype, xp)
    _backend.kernels(xp, "cross_entropy").softmax_backward(grad_out, y, dx, outer, L, inner, log)
    return dx


def softmax_backward(grad_out, y, axis=-1):
    """Gradient of :func:`softmax` from its output: ``dx = y * (dy - sum(dy * y, axis))``.

    Parameters
    ----------
    grad_out : ndarray, shape of y
        d loss / d y.
    y : ndarray, any shape
        The forward output ``softmax(x, axis)``.
    axis : int
        The axis the forward normalized over.

    Returns
    -------
    grad_x : ndarray, shape of y
    """
    return _softmax_backward(grad_out, y, axis, False)


def log_softmax_backward(grad_out, y, axis=-1):
    """Gradient of :func:`log_softmax` from its output: ``dx = dy - exp(y) * sum(dy, axis)``.

    Parameters
    ----------
    grad_out : ndarray, shape of y
        d loss / d y.
    y : ndarray, any shape
        The forward output ``log_softmax(x, axis)``.
    axis : int

    Returns
    -------
    grad_x : ndarray, shape of y
    """
    return _softmax_backward(grad_out, y, axis, True)


# ---------------------------------------------------------------- cross entropy

def _ce_args(logits, target, weight, ignore_index, reduction, label_smoothing, **more):
    """Checks every argument; returns the normalized call of the kernels."""
    xp = _backend.array_module(logits=logits, target=target, weight=weight, **more)
    _backend.check_float("logits", logits)
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected 'none', 'mean' or 'sum', got {reduction!r}")
    eps = _backend.float_arg("label_smoothing", label_smoothing, 0.0, 1.0)
    ignore_index = _backend.int_arg("ignore_index", ignore_index)
    if target is None:
        raise TypeError("target: expected an int64 or float array, got None")
    if target.dtype == _INT64:
        prob = False
    elif target.dtype == logits.dtype:
        prob = True
    else:
        raise TypeError(f"target: expected dtype int64 (class indices) or {logits.dtype} (class "
                        f"probabilities, the dtype of logits), got {_backend._dtype_str(target.dtype)}")
    if prob and ignore_index != -100:
        raise ValueError(f"ignore_index: not supported with class-probability targets (as in PyTorch), "
                         f"expected the default -100, got {ignore_index}")
    shape = tuple(logits.shape)
    if len(shape) == 0:
        raise ValueError("logits: expected shape (C,), (N, C) or (N, C, d1, ...), got shape ()")
    unbatched = len(shape) == 1
    C = shape[0] if unbatched else shape[1]
    if C < 1:
        raise ValueError(f"logits: expected at least one class (axis {0 if unbatched else 1}), got shape {shape}")
    elem_shape = () if unbatched else (shape[0],) + shape[2:]   # one loss per element
    want = shape if prob else elem_shape
    if tuple(target.shape) != want:
        kind = "class probabilities (the shape of logits)" if prob else "class indices"
        raise ValueError(f"target: expected shape {want} for {kind} with logits of shape {shape}, "
                         f"got {tuple(target.shape)}")
    if weight is not None:
        _backend.check_float("weight", weight, 1)
        _backend.check_same_dtype("logits", logits, weight=weight)
        _backend.check_shape("weight", weight, (C,))
        weight = _backend.contiguous(weight, xp)
    outer = 1 if unbatched else shape[0]
    inner = 1
    for s in shape[2:]:
        inner *= s
    return (xp, _backend.contiguous(logits, xp), _backend.contiguous(target, xp), weight, prob,
            outer, C, inner, ignore_index, eps, _REDUCTIONS[reduction], elem_shape)


def _invalid_targets(t, C, ignore_index):
    return ((t < 0) | (t >= C)) & (t != ignore_index)


def _bad_target(target, C, ignore_index):
    t = target.reshape(-1)
    bad = _invalid_targets(t, C, ignore_index)
    i = int(bad.argmax())
    return ValueError(f"target: expected class indices in [0, {C - 1}] or ignore_index={ignore_index}, "
                      f"got {int(t[i])} (at flat position {i}, {int(bad.sum())} invalid in all)")


def cross_entropy_forward(logits, target, weight=None, ignore_index=-100, reduction="mean",
                          label_smoothing=0.0):
    """:func:`cross_entropy` that also returns what :func:`cross_entropy_backward` needs.

    Returns
    -------
    loss : ndarray
        As :func:`cross_entropy`.
    saved : CrossEntropySaved
        Per-element (max, log-sum-exp, target mass) and the reduction's scale; pass it as
        ``saved=`` to :func:`cross_entropy_backward` with the same other arguments, and the
        backward reads the logits once more and writes the gradient, with nothing else
        recomputed.
    """
    (xp, x, t, w, prob, outer, C, inner, ignore_index, eps, red,
     elem_shape) = _ce_args(logits, target, weight, ignore_index, reduction, label_smoothing)
    rows = outer * inner
    loss = _backend.empty(elem_shape if red == 0 else (), x.dtype, xp)
    stats = _backend.empty((rows, 3), x.dtype, xp)
    norm = _backend.empty((2,), np.float64, xp)
    k = _backend.kernels(xp, "cross_entropy")
    fn = k.cross_entropy_prob_forward if prob else k.cross_entropy_forward
    bad = fn(x, t, x if w is None else w, loss, stats, norm, outer, C, inner, ignore_index, eps, red,
             w is not None)
    # The GPU glue returns the invalid-target count it read back; the CPU writes it to norm[1].
    if not prob and (float(norm[1]) if bad is None else bad) != 0:
        raise _bad_target(t, C, ignore_index)
    return loss, CrossEntropySaved(stats, norm)


def cross_entropy(logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Softmax cross entropy between logits and targets, as ``torch.nn.functional.cross_entropy``.

    Parameters
    ----------
    logits : ndarray, shape (N, C), (N, C, d1, d2, ...) or (C,), float32 or float64
        Unnormalized scores; the class axis is axis 1 (axis 0 for unbatched (C,)).
    target : ndarray
        Either class indices, int64 of shape (N,), (N, d1, ...) or () (unbatched), each in
        [0, C) or equal to ``ignore_index``; or class probabilities of logits' shape and
        dtype (not checked to sum to 1).
    weight : ndarray, shape (C,), logits' dtype, optional
        Per-class weight w_c (a rescaling of each class's loss).
    ignore_index : int
        Class-index targets equal to it contribute 0 and do not count in 'mean'.
        Must stay -100 with probability targets (PyTorch's rule).
    reduction : {'none', 'mean', 'sum'}
    label_smoothing : float in [0, 1]
        e: the target becomes (1 - e) * target + e / C over the C classes.

    Returns
    -------
    loss : ndarray
        'none': shape (N, d1, ...) (() unbatched), the per-element loss; 'mean', 'sum': shape ().

    Notes
    -----
    With log p = log_softmax(logits, axis=1), per element (PyTorch's formulas exactly):

    - class indices t: ``l = (1-e) w_t (-log p_t) + (e/C) sum_c w_c (-log p_c)``, 0 where
      t == ignore_index. 'mean' divides the sum by ``sum of w_t over non-ignored elements``
      (their number without weights); when every target is ignored that is 0 / 0 = NaN,
      as PyTorch (the gradient is then 0).
    - probabilities y: ``l = -sum_c w_c ((1-e) y_c + e/C) log p_c``; 'mean' divides by the
      number of elements N * d1 * ... (not by the weights).

    Batch 0 gives NaN for 'mean' and 0 for 'sum'. Stable for logits of any finite
    magnitude (max-shifted log-sum-exp). Invalid class indices raise ValueError: the
    kernel counts them as it goes (treating them as ignored, never reading out of
    bounds), so on the GPU the forward waits for that count (one synchronization).
    """
    return cross_entropy_forward(logits, target, weight, ignore_index, reduction, label_smoothing)[0]


def cross_entropy_backward(grad_loss, logits, target, weight=None, ignore_index=-100, reduction="mean",
                           label_smoothing=0.0, saved=None):
    """Gradient of :func:`cross_entropy` with respect to the logits.

    With q the per-element target distribution of the forward (``q_c = (1-e) w_t [c == t] +
    (e/C) w_c`` for class index t, 0 for ignored elements; ``q_c = w_c ((1-e) y_c + e/C)``
    for probabilities y) the loss is ``-sum_c q_c log p_c``, and since
    ``d log p_k / d x_c = [k == c] - p_c``: ``d loss / d x_c = p_c sum_k q_k - q_c``, times
    grad_loss (divided by the forward's divisor for 'mean').

    Parameters
    ----------
    grad_loss : ndarray or float
        d L / d loss: shape of the forward's loss ('none': (N, d1, ...); else () or a float).
    logits, target, weight, ignore_index, reduction, label_smoothing
        As in the forward.
    saved : CrossEntropySaved, optional
        From :func:`cross_entropy_forward` with the same arguments: skips recomputing the
        forward (log-sum-exp per element and the divisor of 'mean').

    Returns
    -------
    grad_logits : ndarray, shape and dtype of logits
    """
    (xp, x, t, w, prob, outer, C, inner, ignore_index, eps, red,
     elem_shape) = _ce_args(logits, target, weight, ignore_index, reduction, label_smoothing)
    if isinstance(grad_loss, (bool, np.bool_)):  # an int subclass, but no gradient
        raise TypeError(f"grad_loss: expected a float or a float array, got {type(grad_loss).__name__}")
    if isinstance(grad_loss, (int, float, np.integer, np.floating)) and red != 0:
        grad_loss = xp.asarray(grad_loss, dtype=x.dtype)
    else:
        _backend.array_module(logits=logits, grad_loss=grad_loss)
        _backend.check_float("grad_loss", grad_loss)
        _backend.check_same_dtype("logits", x, grad_loss=grad_loss)
        _backend.check_shape("grad_loss", grad_loss, elem_shape if red == 0 else ())
        grad_loss = _backend.contiguous(grad_loss, xp)
    rows = outer * inner
    checked = saved is None  # the forward checks the targets
    if checked:
        _, saved = cross_entropy_forward(logits, target, weight, ignore_index, reduction, label_smoothing)
    if not (isinstance(saved, tuple) and len(saved) == 2):
        raise TypeError(f"saved: expected the CrossEntropySaved pair from cross_entropy_forward, "
                        f"got {type(saved).__name__}")
    stats, norm = saved
    _backend.array_module(logits=logits, **{"saved.stats": stats, "saved.norm": norm})
    _backend.check_same_dtype("logits", x, **{"saved.stats": stats})
    _backend.check_shape("saved.stats", stats, (rows, 3))
    _backend.check_shape("saved.norm", norm, (2,))
    if norm.dtype != np.float64:
        raise TypeError(f"saved.norm: expected dtype float64, got {_backend._dtype_str(norm.dtype)}")
    dx = _backend.empty(x.shape, x.dtype, xp)
    k = _backend.kernels(xp, "cross_entropy")
    fn = k.cross_entropy_prob_backward if prob else k.cross_entropy_backward
    # With saved= the forward that checked the targets is skipped: an invalid one would pass
    # silently. The CPU kernel counts them as it reads them; the GPU glue returns None (a
    # count costs a sync), so they are checked here only when the forward was skipped.
    bad = fn(grad_loss, x, t, x if w is None else w, _backend.contiguous(stats, xp),
             _backend.contiguous(norm, xp), dx, outer, C, inner, ignore_index, eps, red, w is not None)
    if bad is None and not checked and not prob and t.size:
        bad = int(_invalid_targets(t, C, ignore_index).sum())
    if bad:
        raise _bad_target(t, C, ignore_index)
    return dx
