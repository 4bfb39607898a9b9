"""Elementwise activations (PyTorch semantics): relu, relu6, leaky_relu, hardtanh, silu, hardswish,
sigmoid, tanh, each with its backward.

Every forward takes ``x`` of any shape (float32 or float64) and returns ``y`` of x's shape and dtype.
Every backward returns ``grad_x = grad_out * f'(x)``; it takes the forward input ``x``, except
``sigmoid_backward`` and ``tanh_backward``, which take the forward output ``y`` (as PyTorch's
``sigmoid_backward``/``tanh_backward``: the derivative is a function of ``y``). For relu, relu6,
hardtanh and leaky_relu with ``negative_slope >= 0`` the output gives the same gradient as the
input, so a layer that ran in place may pass ``y``.

Writing the result
    ``out=`` (keyword) names an array of x's shape and dtype to receive the result, which is then
    returned. It may be the input itself: ``relu(x, out=x)`` computes in place without allocating
    (the kernels read each element before writing it); a backward may likewise write into
    ``grad_out`` or ``x``. An ``out`` that is not C-contiguous (or, NumPy, not aligned), or that
    overlaps an input other than exactly, is still filled correctly, through a temporary.
    ``inplace=True`` (PyTorch's argument, where PyTorch has it) is ``out=x``.

Kinks and NaN (PyTorch's CPU kernels)
    relu'(0) = 0; hardtanh' is 0 at and beyond ``min_val`` and ``max_val`` (relu6 = hardtanh(0, 6));
    leaky_relu' is ``negative_slope`` at 0; hardswish' is -1/2 at -3 and 3/2 at 3. A NaN input gives
    a NaN output (relu(NaN) = NaN). In the backward a NaN ``x`` passes ``grad_out`` through for relu,
    relu6, hardtanh and hardswish (their zero branches test ``x <= ...``, false for NaN), scales it by
    ``negative_slope`` for leaky_relu, and gives NaN for silu. ``min_val``, ``max_val`` and
    ``negative_slope`` are rounded to x's dtype, as PyTorch does with its scalars.

The math and its derivations: csrc/activation.h (one definition for the CPU and CUDA kernels).
"""
from __future__ import annotations

import numpy as np

from .. import _backend

__all__ = ["relu", "relu_backward", "relu6", "relu6_backward", "leaky_relu", "leaky_relu_backward",
           "hardtanh", "hardtanh_backward", "silu", "silu_backward", "hardswish", "hardswish_backward",
           "sigmoid", "sigmoid_backward", "tanh", "tanh_backward"]


# ---------------------------------------------------------------- shared machinery

def _bool_arg(name, v):
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(v).__name__} {v!r}")
    return bool(v)


def _start(a, xp):
    return a.data.ptr if xp is not np else a.__array_interface__["data"][0]


def _direct(out, srcs, xp):
    """Whether the kernel may write into out itself: C-contiguous (NumPy: aligned) and either
    exactly one of the (contiguous) inputs or disjoint from all of them."""
    if not out.flags.c_contiguous or (xp is np and not out.flags.aligned):
        return False
    for s in srcs:
        if s is out:
            continue
        if xp.may_share_memory(out, s) and not (_start(out, xp) == _start(s, xp) and out.nbytes == s.nbytes):
            return False
    return True


def _check_out(out, name, like, like_name, xp):
    _backend.check_same_dtype(like_name, like, **{name: out})
    _backend.check_shape(name, out, like.shape)
    if xp is np and not out.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array, got a read-only one")


def _run(xp, fn, srcs, like, like_name, out, out_name, params):
    """fn(*flat srcs, flat result, *params) into a fresh array, or into out (returned)."""
    K = getattr(_backend.kernels(xp, "activation"), fn)
    flat = [s.reshape(-1) for s in srcs]
    if out is None:
        y = _backend.empty(like.shape, like.dtype, xp)
        K(*flat, y.reshape(-1), *params)
        return y
    _check_out(out, out_name, like, like_name, xp)
    if _direct(out, srcs, xp):
        K(*flat, out.reshape(-1), *params)
    else:
        tmp = _backend.empty(like.shape, like.dtype, xp)
        K(*flat, tmp.reshape(-1), *params)
        out[...] = tmp
    return out


def _forward(fn, x, out, inplace, params=()):
    xp = _backend.array_module(x=x, out=out)
    _backend.check_float("x", x)
    out_name = "out"
    if inplace is not False and _bool_arg("inplace", inplace):
        if out is not None and out is not x:
            _check_out(out, "out", x, "x", xp)  # a wrong dtype or shape reads as such first
            raise ValueError("out: expected None or x itself with inplace=True, got another array")
        out, out_name = x, "x"
    return _run(xp, fn, [_backend.contiguous(x, xp)], x, "x", out, out_name, params)


def _backward(fn, grad_out, v, v_name, out, params=()):
    xp = _backend.array_module(grad_out=grad_out, **{v_name: v}, out=out)
    _backend.check_float(v_name, v)
    _backend.check_float("grad_out", grad_out)
    _backend.check_same_dtype(v_name, v, grad_out=grad_out)
    _backend.check_shape("grad_out", grad_out, v.shape)
    srcs = [_backend.contiguous(grad_out, xp), _backend.contiguous(v, xp)]
    return _run(xp, fn, srcs, v, v_name, out, "out", params)


def _slope(negative_slope):
    return _backend.float_arg("negative_slope", negative_slope)


def _bounds(min_val, max_val):
    lo = _backend.float_arg("min_val", min_val)
    hi = _backend.float_arg("max_val", max_val)
    if hi < lo:
        raise ValueError(f"max_val: expected a float >= min_val={lo}, got {hi}")
    return lo, hi


# ---------------------------------------------------------------- relu, relu6, hardtanh, leaky_relu

def relu(x, inplace=False, *, out=None):
    """``max(x, 0)``, NaN kept.

    Parameters
    ----------
    x : ndarray, any shape, float32 or float64
    inplace : bool
        Write the result into x (same as ``out=x``).
    out : ndarray, x's shape and dtype, optional
        Receives the result (may be x).

    Returns
    -------
    y : ndarray, x's shape and dtype (``out`` when given)
    """
    return _forward("relu_forward", x, out, inplace)


def relu_backward(grad_out, x, *, out=None):
    """Gradient of :func:`relu`: ``grad_out`` where ``x > 0``, else 0 (0 at x = 0; grad_out at NaN).

    Parameters
    ----------
    grad_out : ndarray, x's shape and dtype
    x : ndarray
        The forward input (its output gives the same result).
    out : ndarray, optional
        Receives grad_x (may be grad_out or x).

    Returns
    -------
    grad_x : ndarray, x's shape and dtype
    """
    return _backward("relu_backward", grad_out, x, "x", out)


def relu6(x, inplace=False, *, out=None):
    """``min(max(x, 0), 6)`` (= ``hardtanh(x, 0, 6)``), NaN kept.

    Parameters
    ----------
    x : ndarray, any shape, float32 or float64
    inplace : bool
    out : ndarray, x's shape and dtype, optional

    Returns
    -------
    y : ndarray, x's shape and dtype
    """
    return _forward("hardtanh_forward", x, out, inplace, (0.0, 6.0))


def relu6_backward(grad_out, x, *, out=None):
    """Gradient of :func:`relu6`: ``grad_out`` where ``0 < x < 6``, else 0.

    Parameters
    ----------
    grad_out : ndarray, x's shape and dtype
    x : ndarray
        The forward input (its output gives the same result).
    out : ndarray, optional

    Returns
    -------
    grad_x : ndarray, x's shape and dtype
    """
    return _backward("hardtanh_backward", grad_out, x, "x", out, (0.0, 6.0))


def hardtanh(x, min_val=-1.0, max_val=1.0, inplace=False, *, out=None):
    """``min(max(x, min_val), max_val)``, NaN kept.

    Parameters
    ----------
    x : ndarray, any shape, float32 or float64
    min_val, max_val : float
        Finite, ``max_val >= min_val``.
    inplace : bool
    out : ndarray, x's shape and dtype, optional

    Returns
    -------
    y : ndarray, x's shape and dtype
    """
    return _forward("hardtanh_forward", x, out, inplace, _bounds(min_val, max_val))


def hardtanh_backward(grad_out, x, min_val=-1.0, max_val=1.0, *, out=None):
    """Gradient of :func:`hardtanh`: ``grad_out`` where ``min_val < x < max_val``, else 0.

    Parameters
    ----------
    grad_out : ndarray, x's shape and dtype
    x : ndarray
        The forward input (its output gives the same result).
    min_val, max_val : float
        As given to the forward.
    out : ndarray, optional

    Returns
    -------
    grad_x : ndarray, x's shape and dtype
    """
    return _backward("hardtanh_backward", grad_out, x, "x", out, _bounds(min_val, max_val))


def leaky_relu(x, negative_slope=0.01, inplace=False, *, out=None):
    """``x`` where ``x > 0``, else ``negative_slope * x``.

    Parameters
    ----------
    x : ndarray, any shape, float32 or float64
    negative_slope : float
    inplace : bool
    out : ndarray, x's shape and dtype, optional

    Returns
    -------
    y : ndarray, x's shape and dtype
    """
    return _forward("leaky_relu_forward", x, out, inplace, (_slope(negative_slope),))


def leaky_relu_backward(grad_out, x, negative_slope=0.01, *, out=None):
    """Gradient of :func:`leaky_relu`: ``grad_out`` where ``x > 0``, else ``negative_slope * grad_out``.

    Parameters
    ----------
    grad_out : ndarray, x's shape and dtype
    x : ndarray
        The forward input (the output gives the same result when ``negative_slope >= 0``).
    negative_slope : float
    out : ndarray, optional

    Returns
    -------
    grad_x : ndarray, x's shape and dtype
    """
    return _backward("leaky_relu_backward", grad_out, x, "x", out, (_slope(negative_slope),))


# ---------------------------------------------------------------- silu, hardswish

def silu(x, inplace=False, *, out=None):
    """``x * sigmoid(x) = x / (1 + exp(-x))``.

    Parameters
    ----------
    x : ndarray, any shape, float32 or float64
    inplace : bool
    out : ndarray, x's shape and dtype, optional

    Returns
    -------
    y : ndarray, x's shape and dtype
    """
    return _forward("silu_forward", x, out, inplace)


def silu_backward(grad_out, x, *, out=None):
    """Gradient of :func:`silu`: ``grad_out * s * (1 + x * (1 - s))`` with ``s = sigmoid(x)``.

    Parameters
    ----------
    grad_out : ndarray, x's shape and dtype
    x : ndarray
        The forward input.
    out : ndarray, optional

    Returns
    -------
    grad_x : ndarray, x's shape and dtype
    """
    return _backward("silu_backward", grad_out, x, "x", out)


def hardswish(x, inplace=False, *, out=None):
    """``x * min(max(x + 3, 0), 6) / 6``.

    Parameters
    ----------
    x : ndarray, any shape, float32 or float64
    inplace : bool
    out : ndarray, x's shape and dtype, optional

    Returns
    -------
    y : ndarray, x's shape and dtype
    """
    return _forward("hardswish_forward", x, out, inplace)


def hardswish_backward(grad_out, x, *, out=None):
    """Gradient of :func:`hardswish`: 0 for ``x < -3``, ``grad_out * (x / 3 + 1/2)`` for
    ``-3 <= x <= 3``, ``grad_out`` above (PyTorch's values at the kinks).

    Parameters
    ----------
    grad_out : ndarray, x's shape and dtype
    x : ndarray
        The forward input.
    out : ndarray, optional

    Returns
    -------
    grad_x : ndarray, x's shape and dtype
    """
    return _backward("hardswish_backward", grad_out, x, "x", out)


# ---------------------------------------------------------------- sigmoid, tanh

def sigmoid(x, *, out=None):
    """``1 / (1 + exp(-x))`` (0 without overflow warnings for very negative x).

    Parameters
    ----------
    x : ndarray, any shape, float32 or float64
    out : ndarray, x's shape and dtype, optional

    Returns
    -------
    y : ndarray, x's shape and dtype
    """
    return _forward("sigmoid_forward", x, out, False)


def sigmoid_backward(grad_out, y, *, out=None):
    """Gradient of :func:`sigmoid` from its OUTPUT: ``grad_out * y * (1 - y)``.

    Parameters
    ----------
    grad_out : ndarray, y's shape and dtype
    y : ndarray
        The forward output ``sigmoid(x)``.
    out : ndarray, optional
        Receives grad_x (may be grad_out or y).

    Returns
    -------
    grad_x : ndarray, y's shape and dtype
    """
    return _backward("sigmoid_backward", grad_out, y, "y", out)


def tanh(x, *, out=None):
    """``tanh(x)``.

    Parameters
    ----------
    x : ndarray, any shape, float32 or float64
    out : ndarray, x's shape and dtype, optional

    Returns
    -------
    y : ndarray, x's shape and dtype
    """
    return _forward("tanh_forward", x, out, False)


def tanh_backward(grad_out, y, *, out=None):
    """Gradient of :func:`tanh` from its OUTPUT: ``grad_out * (1 - y**2)``.

    Parameters
    ----------
    grad_out : ndarray, y's shape and dtype
    y : ndarray
        The forward output ``tanh(x)``.
    out : ndarray, optional
        Receives grad_x (may be grad_out or y).

    Returns
    -------
    grad_x : ndarray, y's shape and dtype
    """
    return _backward("tanh_backward", grad_out, y, "y", out)
