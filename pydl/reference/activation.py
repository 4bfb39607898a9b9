"""Elementwise activations: the NumPy twins (float64 formulas, written out; the test oracle).

PyTorch's conventions, as pydl.functional documents them: the derivative at a kink is the value
of the branch that PyTorch's comparison picks (relu'(0) = 0, hardtanh' = 0 at min_val and max_val,
leaky_relu' = negative_slope at 0, hardswish' = -1/2 at -3 and 3/2 at 3); NaN inputs give NaN
outputs; in the backward a NaN x fails every comparison. Scalar parameters are first rounded to
x's dtype (PyTorch casts them to the tensor's type). sigmoid_backward and tanh_backward take the
forward output y.
"""
from __future__ import annotations

import numpy as np

__all__ = ["relu", "relu_backward", "relu6", "relu6_backward", "leaky_relu", "leaky_relu_backward",
           "hardtanh", "hardtanh_backward", "silu", "silu_backward", "hardswish", "hardswish_backward",
           "sigmoid", "sigmoid_backward", "tanh", "tanh_backward"]


def _f64(a):
    return np.asarray(a).astype(np.float64)


def _param(v, like):
    """v rounded to like's dtype, as a float64."""
    return float(np.asarray(like).dtype.type(v))


def _finish(y, like, out=None):
    """y (float64) in like's dtype, written into out when given (out is then returned)."""
    y = np.asarray(y).astype(np.asarray(like).dtype)  # (NumPy turns 0-d results into scalars)
    if out is None:
        return y
    out[...] = y
    return out


def _sig(a):
    # exp overflows to inf for very negative a: the result is 0, not an error (callers silence it)
    return 1.0 / (1.0 + np.exp(-a))


def relu(x, inplace=False, *, out=None):
    a = _f64(x)
    return _finish(np.maximum(a, 0.0), x, x if inplace else out)


def relu_backward(grad_out, x, *, out=None):
    a, g = _f64(x), _f64(grad_out)
    return _finish(np.where(a <= 0, 0.0, g), grad_out, out)


def hardtanh(x, min_val=-1.0, max_val=1.0, inplace=False, *, out=None):
    a = _f64(x)
    lo, hi = _param(min_val, x), _param(max_val, x)
    return _finish(np.minimum(np.maximum(a, lo), hi), x, x if inplace else out)


def hardtanh_backward(grad_out, x, min_val=-1.0, max_val=1.0, *, out=None):
    a, g = _f64(x), _f64(grad_out)
    lo, hi = _param(min_val, x), _param(max_val, x)
    return _finish(np.where((a <= lo) | (a >= hi), 0.0, g), grad_out, out)


def relu6(x, inplace=False, *, out=None):
    return hardtanh(x, 0.0, 6.0, inplace, out=out)


def relu6_backward(grad_out, x, *, out=None):
    return hardtanh_backward(grad_out, x, 0.0, 6.0, out=out)


def leaky_relu(x, negative_slope=0.01, inplace=False, *, out=None):
    a, s = _f64(x), _param(negative_slope, x)
    with np.errstate(invalid="ignore"):  # -inf * 0
        return _finish(np.where(a > 0, a, s * a), x, x if inplace else out)


def leaky_relu_backward(grad_out, x, negative_slope=0.01, *, out=None):
    a, g, s = _f64(x), _f64(grad_out), _param(negative_slope, x)
    with np.errstate(invalid="ignore"):
        return _finish(np.where(a > 0, g, s * g), grad_out, out)


def silu(x, inplace=False, *, out=None):
    a = _f64(x)
    with np.errstate(over="ignore", invalid="ignore"):
        return _finish(a / (1.0 + np.exp(-a)), x, x if inplace else out)


def silu_backward(grad_out, x, *, out=None):
    """d/dx [x s(x)] = s + x s (1 - s) = s (1 + x (1 - s))."""
    a, g = _f64(x), _f64(grad_out)
    with np.errstate(over="ignore", invalid="ignore"):
        s = _sig(a)
        return _finish(g * s * (1.0 + a * (1.0 - s)), grad_out, out)


def hardswish(x, inplace=False, *, out=None):
    a = _f64(x)
    with np.errstate(invalid="ignore"):  # -inf * 0
        return _finish(a * np.clip(a + 3.0, 0.0, 6.0) / 6.0, x, x if inplace else out)


def hardswish_backward(grad_out, x, *, out=None):
    """0 below -3; d/dx [x (x + 3) / 6] = x/3 + 1/2 on [-3, 3]; 1 above."""
    a, g = _f64(x), _f64(grad_out)
    with np.errstate(invalid="ignore"):
        return _finish(np.where(a < -3, 0.0, np.where(a <= 3, g * (a / 3.0 + 0.5), g)), grad_out, out)


def sigmoid(x, *, out=None):
    with np.errstate(over="ignore"):
        return _finish(_sig(_f64(x)), x, out)


def sigmoid_backward(grad_out, y, *, out=None):
    """s' = s (1 - s), from the output y = s(x)."""
    b, g = _f64(y), _f64(grad_out)
    with np.errstate(invalid="ignore"):
        return _finish(g * b * (1.0 - b), grad_out, out)


def tanh(x, *, out=None):
    return _finish(np.tanh(_f64(x)), x, out)


def tanh_backward(grad_out, y, *, out=None):
    """tanh' = 1 - tanh^2, from the output y."""
    b, g = _f64(y), _f64(grad_out)
    with np.errstate(invalid="ignore"):
        return _finish(g * (1.0 - b * b), grad_out, out)
