"""cross_entropy: the NumPy twin (oracle for tests, baseline for benchmarks).

Textbook float64 NumPy, written for clarity: softmax and log_softmax through the max
shift, cross entropy as -sum_c q_c log p_c with an explicit, dense target distribution
q (class weights, label smoothing and ignored targets folded into q), and the gradient
of that as (p * sum_c q_c - q), scaled by the reduction. Never calls pydl kernels.
"""
import numpy as np

__all__ = ["softmax", "log_softmax", "softmax_backward", "log_softmax_backward",
           "cross_entropy", "cross_entropy_backward"]


def softmax(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True, initial=-np.inf))
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    z = x - np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    with np.errstate(divide="ignore"):  # log(0) only for an empty axis (empty result)
        return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def softmax_backward(grad_out, y, axis=-1):
    """dx = y * (dy - sum(dy * y)), y = softmax(x)."""
    g = np.asarray(grad_out, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return y * (g - np.sum(g * y, axis=axis, keepdims=True))


def log_softmax_backward(grad_out, y, axis=-1):
    """dx = dy - exp(y) * sum(dy), y = log_softmax(x)."""
    g = np.asarray(grad_out, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return g - np.exp(y) * np.sum(g, axis=axis, keepdims=True)


def _distribution(logits, target, weight, ignore_index, label_smoothing):
    """(q, denom): q of logits' shape with loss = -sum_c q_c log p_c per element, and the
    divisor of reduction='mean' (PyTorch's: the summed target weights of the non-ignored
    elements for class indices, the number of elements for probabilities)."""
    x = np.asarray(logits, dtype=np.float64)
    C = x.shape[1]
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    wb = w.reshape((1, C) + (1,) * (x.ndim - 2))   # broadcast over (N, C, d1, ...)
    eps = float(label_smoothing)
    target = np.asarray(target)
    if target.dtype.kind == "f":                    # class probabilities
        t = target.astype(np.float64) * (1.0 - eps) + eps / C
        return wb * t, float(x.size // C if C else 0)
    keep = target != ignore_index
    safe = np.where(keep, target, 0)
    onehot = np.zeros(x.shape)
    np.put_along_axis(onehot, safe[:, None], 1.0, axis=1)
    w_t = w[safe] * keep                            # weight of each element's target class
    q = (1.0 - eps) * onehot * np.expand_dims(w_t, 1) + (eps / C) * wb * np.expand_dims(keep, 1)
    return q, float(np.sum(w_t))


def _as_batched(logits, target):
    logits = np.asarray(logits)
    target = np.asarray(target)
    if logits.ndim == 1:                            # unbatched: (C,) with target () or (C,)
        return logits[None], target[None], True
    return logits, target, False


def cross_entropy(logits, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """PyTorch's F.cross_entropy in float64: logits (N, C, d1, ...), target int64 (N, d1, ...)
    or probabilities of logits' shape."""
    x, target, unbatched = _as_batched(logits, target)
    q, denom = _distribution(x, target, weight, ignore_index, label_smoothing)
    loss = -np.sum(q * log_softmax(x, axis=1), axis=1)
    if reduction == "none":
        return loss[0] if unbatched else loss
    total = np.sum(loss)
    if reduction == "sum":
        return total
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.float64(total) / np.float64(denom)   # 0 / 0 -> NaN, as PyTorch


def cross_entropy_backward(grad_loss, logits, target, weight=None, ignore_index=-100,
                           reduction="mean", label_smoothing=0.0):
    """d loss / d logits. With loss_i = -sum_c q_ic log p_ic and d log p_ik / d x_ic =
    delta_kc - p_ic: d loss_i / d x_ic = p_ic * sum_k q_ik - q_ic."""
    x, target, unbatched = _as_batched(logits, target)
    q, denom = _distribution(x, target, weight, ignore_index, label_smoothing)
    p = softmax(x, axis=1)
    g = np.asarray(grad_loss, dtype=np.float64)
    if reduction == "none":
        g = np.expand_dims(g.reshape((x.shape[0],) + x.shape[2:]), 1)
    elif reduction == "mean":
        # Every target ignored: no element contributes, the gradient is 0 (PyTorch's).
        g = g / denom if denom != 0 else np.zeros_like(g)
    return (g * (p * np.sum(q, axis=1, keepdims=True) - q))[0 if unbatched else slice(None)]
