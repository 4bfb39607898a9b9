"""pool: CuPy glue over the CUDA kernels in cuda/pool.cu (same signatures as pydl._cpu).

Arrays arrive C-contiguous and validated from pydl.functional.pool; this layer passes device
pointers, sizes and CuPy's current stream, on the arrays' device.
"""
from __future__ import annotations

import numpy as np

from .. import _backend


def _fn(name, a):
    sfx = "f32" if a.dtype == np.float32 else "f64"
    return getattr(_backend.cuda(), f"{name}_{sfx}")


def _stream():
    import cupy

    return _backend.stream_ptr(cupy)


def max_pool2d_forward(x, y, indices, kh, kw, sh, sw, ph, pw, dh, dw):
    N, C, H, W = x.shape
    with x.device:
        _fn("max_pool2d_forward", x)(
            _backend.ptr(x), _backend.ptr(y), 0 if indices is None else _backend.ptr(indices),
            N, C, H, W, y.shape[2], y.shape[3], kh, kw, sh, sw, ph, pw, dh, dw, _stream())


def max_pool2d_backward(dy, indices, dx, kh, kw, sh, sw, ph, pw, dh, dw):
    N, C, H, W = dx.shape
    with dx.device:
        _fn("max_pool2d_backward", dx)(
            _backend.ptr(dy), _backend.ptr(indices), _backend.ptr(dx),
            N, C, H, W, dy.shape[2], dy.shape[3], kh, kw, sh, sw, ph, pw, dh, dw, _stream())


def avg_pool2d_forward(x, y, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override):
    N, C, H, W = x.shape
    with x.device:
        _fn("avg_pool2d_forward", x)(
            _backend.ptr(x), _backend.ptr(y), N, C, H, W, y.shape[2], y.shape[3],
            kh, kw, sh, sw, ph, pw, bool(count_include_pad), int(divisor_override), _stream())


def avg_pool2d_backward(dy, dx, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override):
    N, C, H, W = dx.shape
    with dx.device:
        _fn("avg_pool2d_backward", dx)(
            _backend.ptr(dy), _backend.ptr(dx), N, C, H, W, dy.shape[2], dy.shape[3],
            kh, kw, sh, sw, ph, pw, bool(count_include_pad), int(divisor_override), _stream())


def adaptive_avg_pool2d_forward(x, y):
    N, C, H, W = x.shape
    with x.device:
        _fn("adaptive_avg_pool2d_forward", x)(
            _backend.ptr(x), _backend.ptr(y), N, C, H, W, y.shape[2], y.shape[3], _stream())


def adaptive_avg_pool2d_backward(dy, dx):
    N, C, H, W = dx.shape
    with dx.device:
        _fn("adaptive_avg_pool2d_backward", dx)(
            _backend.ptr(dy), _backend.ptr(dx), N, C, H, W, dy.shape[2], dy.shape[3], _stream())
