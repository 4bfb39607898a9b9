"""interpolate: 2-D nearest and bilinear resizing, forward and backward (PyTorch semantics).

Output size: ``size`` as given, or ``floor(in * scale_factor)`` per axis. The source-index rules are
PyTorch's CPU ones, exactly:

- ``'nearest'`` (legacy): ``src = min(floor(dst * s), in - 1)`` computed in float32, with
  ``s = 1 / scale_factor`` when a scale factor is given (and ``recompute_scale_factor`` is not True),
  else ``s = in / out``; an axis whose size is unchanged is copied and an axis that exactly doubles
  takes ``dst // 2`` (PyTorch's CPU shortcuts, which its CUDA kernel lacks).
- ``'bilinear'``: ``align_corners=True`` maps corner pixel centres onto each other,
  ``src = dst * (in - 1) / (out - 1)`` (0 when out == 1, the scale factor is ignored);
  ``align_corners=False`` (the default) ``src = max(s * (dst + 0.5) - 0.5, 0)`` with ``s`` as above.
  Taps ``floor(src)`` and the next pixel (the last pixel repeats), weights ``1 - frac`` and ``frac``.
  An axis whose size is unchanged is copied.

The backward is the adjoint: ``grad_x = A_h^T @ grad_out @ A_w`` per plane, with the same matrices.
"""
from __future__ import annotations

import math

import numpy as np

from .. import _backend

__all__ = ["interpolate", "interpolate_backward"]

_MODES = ("nearest", "bilinear")


def _scale_factors(scale_factor):
    if isinstance(scale_factor, (tuple, list)):
        if len(scale_factor) != 2:
            raise ValueError(f"scale_factor: expected a float or a pair of floats, got {scale_factor!r}")
        vals = tuple(scale_factor)
    else:
        vals = (scale_factor, scale_factor)
    out = tuple(_backend.float_arg("scale_factor", v) for v in vals)
    if min(out) <= 0:
        raise ValueError(f"scale_factor: expected positive values, got {scale_factor!r}")
    return out


def _plan(in_hw, size, scale_factor, mode, align_corners, recompute_scale_factor):
    """Checked arguments -> (out_hw, nearest, align_corners, (sf_h, sf_w)); sf 0 means none."""
    if not isinstance(mode, str) or mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
    nearest = mode == "nearest"
    if nearest:
        if align_corners is not None:
            raise ValueError("align_corners: only valid with mode='bilinear' (leave it None for "
                             f"'nearest'), got {align_corners!r}")
        ac = False
    else:
        if align_corners is not None and not isinstance(align_corners, (bool, np.bool_)):
            raise TypeError(f"align_corners: expected a bool or None, got {type(align_corners).__name__}")
        ac = bool(align_corners)
    if recompute_scale_factor is not None and not isinstance(recompute_scale_factor, (bool, np.bool_)):
        raise TypeError("recompute_scale_factor: expected a bool or None, got "
                        f"{type(recompute_scale_factor).__name__}")
    if size is not None and scale_factor is not None:
        raise ValueError("size and scale_factor: expected only one of them, got both")
    if size is None and scale_factor is None:
        raise ValueError("size and scale_factor: expected one of them, got neither")
    if size is not None:
        if recompute_scale_factor:
            raise ValueError("recompute_scale_factor: only valid with scale_factor, not with size")
        return _backend.pair("size", size, 1), nearest, ac, (0.0, 0.0)
    sf = _scale_factors(scale_factor)
    out = tuple(int(math.floor(float(in_hw[a]) * sf[a])) for a in range(2))
    if min(out) < 1:
        raise ValueError(f"scale_factor: expected an output size >= 1 per axis, got {out} "
                         f"(input size {tuple(in_hw)} times scale_factor {sf})")
    if recompute_scale_factor:
        sf = (0.0, 0.0)
    return out, nearest, ac, sf


def _check_out_bytes(shape, itemsize, size):
    """An output too large to allocate is the caller's size / scale_factor, not a NumPy error."""
    if math.prod(shape) * itemsize >= 2**62:
        name = "size" if size is not None else "scale_factor"
        shown = tuple(v if v < 2**63 else float(v) for v in shape)
        raise ValueError(f"{name}: output shape {shown} is too large to allocate")


def _input_shape(name, x_shape):
    try:
        shape = tuple(_backend.int_arg(name, s, 0) for s in x_shape)
    except TypeError as e:
        if "expected an int" in str(e):
            raise
        raise TypeError(f"{name}: expected a shape tuple, got {type(x_shape).__name__}") from None
    if len(shape) != 4:
        raise ValueError(f"{name}: expected a 4-D shape (N, C, H, W), got {shape}")
    if shape[2] < 1 or shape[3] < 1:
        raise ValueError(f"{name}: expected H, W >= 1, got {shape}")
    return shape


def interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None):
    """Resize images by nearest-neighbour or bilinear interpolation.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
    size : int or pair of ints, optional
        Output size (OH, OW). Exactly one of ``size`` and ``scale_factor``.
    scale_factor : float or pair of floats, optional
        OH = floor(H * scale_factor[0]), OW = floor(W * scale_factor[1]); the factors also set the
        source-index scale (1 / scale_factor) unless ``recompute_scale_factor`` is True.
    mode : {'nearest', 'bilinear'}
    align_corners : bool, optional
        Bilinear only (None means False); must be None for 'nearest'.
    recompute_scale_factor : bool, optional
        True: index with in / out instead of the given factors (PyTorch's option).

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW), x's dtype
    """
    xp = _backend.array_module(x=x)
    _backend.check_float("x", x, ndim=4)
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"x: expected non-empty spatial dimensions (H, W >= 1), got shape {tuple(x.shape)}")
    out, nearest, ac, sf = _plan(x.shape[2:], size, scale_factor, mode, align_corners, recompute_scale_factor)
    _check_out_bytes(x.shape[:2] + tuple(out), x.dtype.itemsize, size)
    x = _backend.contiguous(x, xp)
    y = _backend.empty(x.shape[:2] + tuple(out), x.dtype, xp)
    _backend.kernels(xp, "interpolate").interpolate_forward(x, y, nearest, ac, sf[0], sf[1])
    return y


def interpolate_backward(grad_out, input_size, size=None, scale_factor=None, mode="nearest",
                         align_corners=None, recompute_scale_factor=None):
    """Gradient of ``interpolate`` with respect to its input.

    Parameters
    ----------
    grad_out : ndarray, shape (N, C, OH, OW)
    input_size : tuple
        ``x.shape`` of the forward input, (N, C, H, W).
    size, scale_factor, mode, align_corners, recompute_scale_factor
        As given to ``interpolate``.

    Returns
    -------
    grad_x : ndarray, shape ``input_size``
        ``grad_x[n, c] = A_h^T @ grad_out[n, c] @ A_w``. The CPU owns one input row per task and the
        GPU one input element per thread (a gather over the outputs whose taps hit it): no atomics,
        bit-identical reruns.
    """
    xp = _backend.array_module(grad_out=grad_out)
    shape = _input_shape("input_size", input_size)
    out, nearest, ac, sf = _plan(shape[2:], size, scale_factor, mode, align_corners, recompute_scale_factor)
    _backend.check_float("grad_out", grad_out, ndim=4)
    _check_out_bytes(shape[:2] + tuple(out), grad_out.dtype.itemsize, size)
    _backend.check_shape("grad_out", grad_out, shape[:2] + tuple(out))
    dy = _backend.contiguous(grad_out, xp)
    dx = _backend.empty(shape, dy.dtype, xp)
    _backend.kernels(xp, "interpolate").interpolate_backward(dy, dx, nearest, ac, sf[0], sf[1])
    return dx

