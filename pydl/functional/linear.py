"""linear: ``y = x W^T + b`` over the last axis (PyTorch's F.linear), and its backward.

The CPU kernels are pydl's own OpenBLAS GEMMs (csrc/linear.cpp, with the derivation); the GPU path
is CuPy's matmul (cuBLAS). Leading axes of x are flattened into rows: x (..., in) is an (M, in)
matrix, M = prod(x.shape[:-1]).
"""
from __future__ import annotations

from .. import _backend
from .conv import _mask

__all__ = ["linear", "linear_backward"]


def _check(x, weight, bias):
    _backend.check_float("x", x)
    _backend.check_float("weight", weight, 2)
    _backend.check_same_dtype("x", x, weight=weight)
    if x.ndim < 1:
        raise ValueError(f"x: expected an array of 1 or more dimensions (..., in_features), got shape {tuple(x.shape)}")
    n_out, n_in = weight.shape
    if x.shape[-1] != n_in:
        raise ValueError(f"x: expected last dimension {n_in} (weight's in_features), got shape {tuple(x.shape)}")
    if bias is not None:
        _backend.check_float("bias", bias, 1)
        _backend.check_same_dtype("x", x, bias=bias)
        _backend.check_shape("bias", bias, (n_out,))
    return n_out, n_in


def _rows(a, n, xp):
    """a (..., n) as a C-contiguous (M, n) matrix (M counted, not -1: n may be 0)."""
    a = _backend.contiguous(a, xp)
    if a.ndim == 2:
        return a
    m = 1
    for s in a.shape[:-1]:
        m *= int(s)
    return a.reshape(m, n)


def linear(x, weight, bias=None):
    """``x @ weight.T + bias``, as ``torch.nn.functional.linear``.

    Parameters
    ----------
    x : ndarray, shape (..., in_features), float32 or float64
    weight : ndarray, shape (out_features, in_features), same dtype
    bias : ndarray, shape (out_features,), optional

    Returns
    -------
    y : ndarray, shape (..., out_features)
    """
    xp = _backend.array_module(x=x, weight=weight, bias=bias)
    n_out, n_in = _check(x, weight, bias)
    x2 = _rows(x, n_in, xp)
    y = _backend.empty(x.shape[:-1] + (n_out,), x.dtype, xp)
    b = None if bias is None else _backend.contiguous(bias, xp)
    _backend.kernels(xp, "linear").linear_forward(x2, _backend.contiguous(weight, xp), b, _rows(y, n_out, xp))
    return y


def linear_backward(grad_out, x, weight, output_mask=(True, True, True)):
    """Gradients of :func:`linear`.

    Parameters
    ----------
    grad_out : ndarray, shape (..., out_features)
    x : ndarray, shape (..., in_features), the forward input
    weight : ndarray, shape (out_features, in_features)
    output_mask : three bools
        Which of (grad_x, grad_weight, grad_bias) to compute.

    Returns
    -------
    grad_x : ndarray, x's shape, ``grad_out @ weight``, or None
    grad_weight : ndarray, weight's shape, ``grad_out^T @ x`` over all leading axes, or None
    grad_bias : ndarray, shape (out_features,), ``grad_out`` summed over all leading axes, or None
    """
    xp = _backend.array_module(grad_out=grad_out, x=x, weight=weight)
    n_out, n_in = _check(x, weight, None)
    _backend.check_float("grad_out", grad_out)
    _backend.check_same_dtype("x", x, grad_out=grad_out)
    _backend.check_shape("grad_out", grad_out, x.shape[:-1] + (n_out,))
    mask = _mask(output_mask)
    K = _backend.kernels(xp, "linear")
    dy = _rows(grad_out, n_out, xp)
    gx = gw = gb = None
    if mask[0]:
        gx = _backend.empty(x.shape, x.dtype, xp)
        K.linear_backward_input(dy, _backend.contiguous(weight, xp), _rows(gx, n_in, xp))
    if mask[1]:
        gw = _backend.empty(weight.shape, x.dtype, xp)
        K.linear_backward_weight(dy, _rows(x, n_in, xp), gw)
    if mask[2]:
        gb = _backend.empty((n_out,), x.dtype, xp)
        K.linear_backward_bias(dy, gb)
    return gx, gw, gb
