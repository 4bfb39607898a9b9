"""interpolate: the NumPy twin (naive, float64-friendly; the test oracle).

Each spatial axis is an explicit interpolation matrix A (out x in) built entry by entry from
PyTorch's source-index formulas, so ``y = A_h @ x @ A_w.T`` per plane and the backward is
``dx = A_h.T @ dy @ A_w``. Independent of the kernels: own argument handling, own formulas.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["interpolate", "interpolate_backward"]


def _pair_or_none(v):
    if v is None:
        return None
    if isinstance(v, (tuple, list)):
        return tuple(v)
    return (v, v)


def _plan(in_hw, size, scale_factor, recompute_scale_factor):
    """(out_hw, scales): scales are the user's scale factors handed to the kernel, or None."""
    size, sf = _pair_or_none(size), _pair_or_none(scale_factor)
    if (size is None) == (sf is None):
        raise ValueError("exactly one of size and scale_factor must be given")
    if size is not None:
        return tuple(int(s) for s in size), (None, None)
    out = tuple(int(math.floor(float(in_hw[a]) * float(sf[a]))) for a in range(2))
    if recompute_scale_factor:
        return out, (None, None)
    return out, tuple(float(s) for s in sf)


def _nearest_matrix(n_in, n_out, scale):
    """PyTorch's legacy nearest (CPU rule): copy when sizes agree, o >> 1 when doubling, else
    src = min(floor(o * s), in - 1) in float32 with s = 1/scale_factor or in/out."""
    a = np.zeros((n_out, n_in))
    s = np.float32(1.0 / scale) if scale is not None and scale > 0 else np.float32(n_in) / np.float32(n_out)
    for o in range(n_out):
        if n_out == n_in:
            src = o
        elif n_out == 2 * n_in:
            src = o // 2
        else:
            src = min(int(np.floor(np.float32(o) * s)), n_in - 1)
        a[o, src] = 1.0
    return a


def _linear_matrix(n_in, n_out, scale, align_corners):
    """PyTorch's linear taps: align_corners maps corner to corner (s = (in-1)/(out-1));
    otherwise src = s*(o + 0.5) - 0.5 clamped below at 0, s = 1/scale_factor or in/out.
    Taps floor(src) and the next one (the last index repeats), weights 1 - l and l."""
    a = np.zeros((n_out, n_in))
    if align_corners:
        s = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    else:
        s = 1.0 / scale if scale is not None and scale > 0 else n_in / n_out
    for o in range(n_out):
        if n_out == n_in:
            a[o, o] = 1.0
            continue
        src = s * o if align_corners else max(s * (o + 0.5) - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        lam = min(max(src - i0, 0.0), 1.0)
        i1 = i0 + 1 if i0 < n_in - 1 else i0
        a[o, i0] += 1.0 - lam
        a[o, i1] += lam
    return a


def _matrices(in_hw, size, scale_factor, mode, align_corners, recompute_scale_factor):
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"mode: expected 'nearest' or 'bilinear', got {mode!r}")
    if mode == "nearest" and align_corners is not None:
        raise ValueError("align_corners: only for mode='bilinear'")
    out, scales = _plan(in_hw, size, scale_factor, recompute_scale_factor)
    if mode == "nearest":
        return [_nearest_matrix(in_hw[a], out[a], scales[a]) for a in range(2)]
    return [_linear_matrix(in_hw[a], out[a], scales[a], bool(align_corners)) for a in range(2)]


def interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None):
    """y[n, c] = A_h @ x[n, c] @ A_w.T (float64 math, result in x's dtype)."""
    x = np.asarray(x)
    ah, aw = _matrices(x.shape[2:], size, scale_factor, mode, align_corners, recompute_scale_factor)
    y = ah @ x.astype(np.float64) @ aw.T
    return y.astype(x.dtype)


def interpolate_backward(grad_out, input_size, size=None, scale_factor=None, mode="nearest",
                         align_corners=None, recompute_scale_factor=None):
    """dx[n, c] = A_h.T @ dy[n, c] @ A_w (the adjoint of the forward)."""
    dy = np.asarray(grad_out)
    in_hw = tuple(input_size)[2:]
    ah, aw = _matrices(in_hw, size, scale_factor, mode, align_corners, recompute_scale_factor)
    dx = ah.T @ dy.astype(np.float64) @ aw
    return dx.astype(dy.dtype)
