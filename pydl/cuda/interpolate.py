"""interpolate: CuPy glue over the CUDA kernels in cuda/interpolate.cu (same signatures as pydl._cpu).

Arrays arrive C-contiguous and validated from pydl.functional.interpolate; this layer passes device
pointers, sizes and CuPy's current stream, on the arrays' device. The backward's per-axis tap and
range tables live in scratch arrays from CuPy's (stream-ordered) memory pool.
"""
from __future__ import annotations

import numpy as np

from .. import _backend


def _fn(name, a):
    sfx = "f32" if a.dtype == np.float32 else "f64"
    return getattr(_backend.cuda(), f"{name}_{sfx}")


def interpolate_forward(x, y, nearest, align_corners, sf_h, sf_w):
    import cupy

    N, C, H, W = x.shape
    with x.device:
        _fn("interpolate_forward", x)(
            _backend.ptr(x), _backend.ptr(y), N, C, H, W, y.shape[2], y.shape[3], bool(nearest),
            bool(align_corners), float(sf_h), float(sf_w), _backend.stream_ptr(cupy))


def interpolate_backward(dy, dx, nearest, align_corners, sf_h, sf_w):
    import cupy

    N, C, H, W = dx.shape
    OH, OW = dy.shape[2], dy.shape[3]
    with dx.device:
        itab = cupy.empty(2 * (H + W) + OH + OW, dtype=np.int64)
        ltab = cupy.empty(OH + OW, dtype=dx.dtype)
        _fn("interpolate_backward", dx)(
            _backend.ptr(dy), _backend.ptr(dx), _backend.ptr(itab), _backend.ptr(ltab), N, C, H, W, OH, OW,
            bool(nearest), bool(align_corners), float(sf_h), float(sf_w), _backend.stream_ptr(cupy))
