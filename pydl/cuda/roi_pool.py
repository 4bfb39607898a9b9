"""roi_pool: CuPy glue over the CUDA kernels in cuda/roi_pool.cu (same signatures as pydl._cpu).

Arrays arrive C-contiguous and validated from pydl.ops.roi_pool. The backward gathers over the
rois of each image in a fixed order: this layer sorts the rois by image (a deterministic CuPy
sort; rois of an image stay in a fixed order) into CSR form and allocates the kernel's small
bin-range table, all on CuPy's current stream.
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


def rois_by_image(rois, N):
    """(order, first): int64 roi indices sorted by image, and CSR offsets (N + 1,) into them."""
    import cupy

    b = rois[:, 0].astype(cupy.int64)
    order = cupy.ascontiguousarray(cupy.argsort(b).astype(cupy.int64))
    first = cupy.searchsorted(b[order], cupy.arange(N + 1, dtype=cupy.int64)).astype(cupy.int64)
    return order, cupy.ascontiguousarray(first)


def roi_pool_forward(x, rois, y, argmax, spatial_scale):
    N, C, H, W = x.shape
    with x.device:
        _fn("roi_pool_forward", x)(
            _backend.ptr(x), _backend.ptr(rois), _backend.ptr(y), 0 if argmax is None else _backend.ptr(argmax),
            N, C, H, W, rois.shape[0], y.shape[2], y.shape[3], float(spatial_scale), _stream())


def roi_pool_backward(dy, argmax, rois, dx, spatial_scale):
    import cupy

    N, C, H, W = dx.shape
    K = rois.shape[0]
    with dx.device:
        order, first = rois_by_image(rois, N)
        ranges = cupy.empty((max(K * (H + W), 1), 2), dtype=cupy.int32)
        _fn("roi_pool_backward", dx)(
            _backend.ptr(dy), _backend.ptr(argmax), _backend.ptr(rois), _backend.ptr(order), _backend.ptr(first),
            _backend.ptr(ranges), _backend.ptr(dx), N, C, H, W, K, dy.shape[2], dy.shape[3],
            float(spatial_scale), _stream())
