"""pool: 2-D max, average and adaptive average pooling, forward and backward (PyTorch semantics).

Inputs are NCHW (or CHW, treated as a batch of one and returned without it). Output sizes come
from ``pydl._geometry.pool_out_size``: floor mode, or ceil mode where a last window that would
start in the right padding is dropped (PyTorch's rule). Padding is at most half the kernel.

Max pooling hands back its argmax (``return_indices=True``): int64, flat within each (n, c) plane
(``h * W + w``), the first maximum in the window's row-major scan order; a NaN in the window wins
and propagates. ``max_pool2d_backward`` sends each gradient to exactly that element.
"""
from __future__ import annotations

import numpy as np

from .. import _backend, _geometry

__all__ = [
    "max_pool2d", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_backward",
    "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward",
    "global_avg_pool2d", "global_avg_pool2d_backward",
]


# ------------------------------------------------------------------------------ validation

def _as4d(name, x):
    """(x as 4-D, squeeze) for a 3-D (C, H, W) or 4-D (N, C, H, W) float array."""
    _backend.check_float(name, x, ndim=(3, 4))
    if x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ValueError(f"{name}: expected non-empty spatial dimensions (H, W >= 1), got shape {tuple(x.shape)}")
    if x.ndim == 3:
        return x[None], True
    return x, False


def _shape4(name, shape):
    """A 3-D or 4-D shape tuple (``x.shape``, or the array x itself) as (4-tuple, squeeze)."""
    if hasattr(shape, "shape") and hasattr(shape, "dtype"):
        shape = shape.shape
    try:
        shape = tuple(int(_backend.int_arg(name, s, 0)) for s in shape)
    except TypeError as e:
        if "expected an int" in str(e):
            raise
        raise TypeError(f"{name}: expected a shape tuple, got {type(shape).__name__}") from None
    if len(shape) not in (3, 4):
        raise ValueError(f"{name}: expected a 3-D (C, H, W) or 4-D (N, C, H, W) shape, got {shape}")
    if shape[-1] < 1 or shape[-2] < 1:
        raise ValueError(f"{name}: expected non-empty spatial dimensions (H, W >= 1), got {shape}")
    if len(shape) == 3:
        return (1,) + shape, True
    return shape, False


def _window(in_hw, kernel_size, stride, padding, dilation, ceil_mode):
    """Checked (k, s, p, d) pairs and the output size (OH, OW)."""
    k = _backend.pair("kernel_size", kernel_size, 1)
    s = k if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else \
        _backend.pair("stride", stride, 1)
    p = _backend.pair("padding", padding, 0)
    d = _backend.pair("dilation", dilation, 1)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"padding: expected at most half the kernel size (kernel_size={k}), got {p}")
    out = tuple(_geometry.pool_out_size(in_hw[a], k[a], s[a], p[a], d[a], bool(ceil_mode)) for a in range(2))
    if out[0] < 1 or out[1] < 1:
        raise ValueError(
            f"kernel_size: expected a window that fits the padded input {tuple(in_hw)} "
            f"(kernel_size={k}, stride={s}, padding={p}, dilation={d}), got output size {out}")
    return k, s, p, d, out


def _grad(name, dy, shape4, out_hw, squeeze):
    """Checks grad_out against the expected output shape and returns it 4-D, contiguous."""
    _backend.check_float(name, dy, ndim=3 if squeeze else 4)
    want = shape4[:2] + tuple(out_hw)
    got = (1,) + tuple(dy.shape) if squeeze else tuple(dy.shape)
    if got != want:
        expected = want[1:] if squeeze else want
        raise ValueError(f"{name}: expected shape {expected} (the pooled output), got {tuple(dy.shape)}")
    return dy.reshape(want)


def _ret(y, squeeze):
    return y[0] if squeeze else y


# ------------------------------------------------------------------------------ max pooling

def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """2-D max pooling.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W) or (C, H, W), float32 or float64
    kernel_size, stride, padding, dilation : int or pair of ints
        ``stride`` defaults to ``kernel_size``; ``padding`` (implicit -inf) at most half the kernel.
    ceil_mode : bool
        Round the output size up; a window that would start in the right padding is dropped.
    return_indices : bool
        Also return the argmax (what ``max_pool2d_backward`` needs).

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
    indices : ndarray of int64, shape (N, C, OH, OW), only with ``return_indices``
        Flat position ``h * W + w`` within the plane of the first maximum in row-major scan
        order of the window; a NaN wins (PyTorch's rule). -1 where a (dilated) window holds no
        input element (its output is -inf).
    """
    xp = _backend.array_module(x=x)
    x4, squeeze = _as4d("x", x)
    k, s, p, d, out = _window(x4.shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    x4 = _backend.contiguous(x4, xp)
    shape = x4.shape[:2] + out
    y = _backend.empty(shape, x4.dtype, xp)
    ind = _backend.empty(shape, np.int64, xp) if return_indices else None
    _backend.kernels(xp, "pool").max_pool2d_forward(x4, y, ind, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1])
    if return_indices:
        return _ret(y, squeeze), _ret(ind, squeeze)
    return _ret(y, squeeze)


def max_pool2d_backward(grad_out, indices, x_shape, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False):
    """Gradient of ``max_pool2d`` with respect to its input (PyTorch's
    ``max_pool2d_with_indices_backward``).

    Parameters
    ----------
    grad_out : ndarray, shape (N, C, OH, OW) or (C, OH, OW)
    indices : ndarray of int64, grad_out's shape
        The argmax that ``max_pool2d(..., return_indices=True)`` returned with this geometry.
    x_shape : tuple
        ``x.shape`` of the forward input, (N, C, H, W) or (C, H, W).
    kernel_size, stride, padding, dilation, ceil_mode
        As given to ``max_pool2d`` (the GPU gathers, for every input element, over the outputs
        whose window covers it, and needs the geometry for that).

    Returns
    -------
    grad_x : ndarray, shape ``x_shape``
        ``grad_x[n, c].flat[indices[n, c, i, j]] += grad_out[n, c, i, j]``: every output's gradient
        goes to the element its forward chose (entries -1, empty windows, pass nothing). Indices
        out of range raise ValueError on the CPU; the GPU never reads or writes out of bounds but
        ignores an index that lies outside its window instead of raising.
    """
    xp = _backend.array_module(grad_out=grad_out, indices=indices)
    shape4, squeeze = _shape4("x_shape", x_shape)
    k, s, p, d, out = _window(shape4[2:], kernel_size, stride, padding, dilation, ceil_mode)
    dy = _backend.contiguous(_grad("grad_out", grad_out, shape4, out, squeeze), xp)
    if indices is None:
        raise TypeError("indices: expected an int64 array, got None")
    if indices.dtype != np.int64:
        raise TypeError(f"indices: expected dtype int64, got {_backend._dtype_str(indices.dtype)}")
    _backend.check_shape("indices", indices, grad_out.shape)
    ind = _backend.contiguous(indices.reshape(dy.shape), xp)
    dx = _backend.empty(shape4, dy.dtype, xp)
    bad = _backend.kernels(xp, "pool").max_pool2d_backward(dy, ind, dx, k[0], k[1], s[0], s[1], p[0], p[1],
                                                           d[0], d[1])
    if bad:  # the CPU kernel counts them; the GPU gather returns None
        raise ValueError(f"indices: {bad} entries out of range [0, H*W) for x_shape {tuple(shape4)} "
                         "(max_pool2d_backward: indices out of range)")
    return _ret(dx, squeeze)


# -------------------------------------------------------------------------- average pooling

def _divisor(divisor_override):
    if divisor_override is None:
        return 0
    return _backend.int_arg("divisor_override", divisor_override, 1)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """2-D average pooling.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W) or (C, H, W), float32 or float64
    kernel_size, stride, padding : int or pair of ints
        ``stride`` defaults to ``kernel_size``; zero ``padding`` at most half the kernel.
    ceil_mode : bool
        Round the output size up; a window that would start in the right padding is dropped.
    count_include_pad : bool
        Divide by the window size clipped to the padded image (True) or by the number of
        input elements in the window (False).
    divisor_override : int, optional
        Divide every window sum by this instead.

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
    """
    xp = _backend.array_module(x=x)
    x4, squeeze = _as4d("x", x)
    k, s, p, _, out = _window(x4.shape[2:], kernel_size, stride, padding, 1, ceil_mode)
    div = _divisor(divisor_override)
    x4 = _backend.contiguous(x4, xp)
    y = _backend.empty(x4.shape[:2] + out, x4.dtype, xp)
    _backend.kernels(xp, "pool").avg_pool2d_forward(x4, y, k[0], k[1], s[0], s[1], p[0], p[1],
                                                    bool(count_include_pad), div)
    return _ret(y, squeeze)


def avg_pool2d_backward(grad_out, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None):
    """Gradient of ``avg_pool2d`` with respect to its input.

    Parameters
    ----------
    grad_out : ndarray, shape (N, C, OH, OW) or (C, OH, OW)
    x_shape : tuple
        ``x.shape`` of the forward input.
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        As given to ``avg_pool2d``.

    Returns
    -------
    grad_x : ndarray, shape ``x_shape``
        ``grad_x[h, w] = sum over the windows covering (h, w) of grad_out / divisor``.
    """
    xp = _backend.array_module(grad_out=grad_out)
    shape4, squeeze = _shape4("x_shape", x_shape)
    k, s, p, _, out = _window(shape4[2:], kernel_size, stride, padding, 1, ceil_mode)
    div = _divisor(divisor_override)
    dy = _backend.contiguous(_grad("grad_out", grad_out, shape4, out, squeeze), xp)
    dx = _backend.empty(shape4, dy.dtype, xp)
    _backend.kernels(xp, "pool").avg_pool2d_backward(dy, dx, k[0], k[1], s[0], s[1], p[0], p[1],
                                                     bool(count_include_pad), div)
    return _ret(dx, squeeze)


# ----------------------------------------------------------------- adaptive average pooling

def _adaptive_size(output_size, hw):
    if output_size is None or isinstance(output_size, (tuple, list)):
        if output_size is None:
            output_size = (None, None)
        if len(output_size) != 2:
            raise ValueError(f"output_size: expected an int or a pair (entries may be None), got {output_size!r}")
        return tuple(hw[a] if output_size[a] is None else _backend.int_arg("output_size", output_size[a], 1)
                     for a in range(2))
    v = _backend.int_arg("output_size", output_size, 1)
    return (v, v)


def adaptive_avg_pool2d(x, output_size):
    """Adaptive 2-D average pooling to a fixed output size.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W) or (C, H, W), float32 or float64
    output_size : int or pair
        (OH, OW); a None entry keeps that input size.

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
        ``y[oh, ow]`` is the mean of rows ``[floor(oh*H/OH), ceil((oh+1)*H/OH))`` and likewise
        for columns.
    """
    xp = _backend.array_module(x=x)
    x4, squeeze = _as4d("x", x)
    out = _adaptive_size(output_size, x4.shape[2:])
    x4 = _backend.contiguous(x4, xp)
    y = _backend.empty(x4.shape[:2] + out, x4.dtype, xp)
    _backend.kernels(xp, "pool").adaptive_avg_pool2d_forward(x4, y)
    return _ret(y, squeeze)


def adaptive_avg_pool2d_backward(grad_out, x_shape):
    """Gradient of ``adaptive_avg_pool2d``; the output size is ``grad_out.shape[-2:]``.

    Parameters
    ----------
    grad_out : ndarray, shape (N, C, OH, OW) or (C, OH, OW)
    x_shape : tuple
        ``x.shape`` of the forward input.

    Returns
    -------
    grad_x : ndarray, shape ``x_shape``
    """
    xp = _backend.array_module(grad_out=grad_out)
    shape4, squeeze = _shape4("x_shape", x_shape)
    _backend.check_float("grad_out", grad_out, ndim=3 if squeeze else 4)
    out = tuple(grad_out.shape[-2:])
    if out[0] < 1 or out[1] < 1:
        raise ValueError(f"grad_out: expected an output size >= 1, got shape {tuple(grad_out.shape)}")
    dy = _backend.contiguous(_grad("grad_out", grad_out, shape4, out, squeeze), xp)
    dx = _backend.empty(shape4, dy.dtype, xp)
    _backend.kernels(xp, "pool").adaptive_avg_pool2d_backward(dy, dx)
    return _ret(dx, squeeze)


def global_avg_pool2d(x):
    """Mean over H and W: x (N, C, H, W) -> (N, C, 1, 1) (or (C, H, W) -> (C, 1, 1))."""
    return adaptive_avg_pool2d(x, 1)


def global_avg_pool2d_backward(grad_out, x_shape):
    """Gradient of ``global_avg_pool2d``: grad_out (N, C, 1, 1) spread as grad_out / (H*W)."""
    xp = _backend.array_module(grad_out=grad_out)
    shape4, squeeze = _shape4("x_shape", x_shape)
    _backend.check_float("grad_out", grad_out, ndim=3 if squeeze else 4)
    dy = _backend.contiguous(_grad("grad_out", grad_out, shape4, (1, 1), squeeze), xp)
    dx = _backend.empty(shape4, dy.dtype, xp)
    _backend.kernels(xp, "pool").adaptive_avg_pool2d_backward(dy, dx)
    return _ret(dx, squeeze)
