"""roi_pool: CuPy glue over the CUDA kernels in cuda/roi_pool.cu (same signatures as pydl._cpu).

Arrays arrive C-contiguous and validated from pydl.ops.roi_pool. Host overhead is kept to a few
launches per call: the validation of the rois (and of the backward's argmax) is one kernel and
one 12-byte copy back (``check_rois``); the backward's CSR of the rois by image (stable, rois of
an image in index order, so the gather sums in a fixed order) is one kernel of ours; its tables
live in one workspace allocation. All on CuPy's current stream.
"""
from __future__ import annotations

import numpy as np

from .. import _backend

# Above this N*K the one-kernel CSR build (2*K work per image) loses to a sort: use CuPy's.
_CSR_KERNEL_MAX_WORK = 1 << 26


def _fn(name, a):
    sfx = "f32" if a.dtype == np.float32 else "f64"
    return getattr(_backend.cuda(), f"{name}_{sfx}")


def _stream():
    import cupy

    return _backend.stream_ptr(cupy)


def check_rois(rois, N, spatial_scale, indices=None, HW=0):
    """(bad batch index, bad coordinate, bad index) as bools: one kernel, one sync."""
    import cupy

    with rois.device:
        flags = cupy.empty((4,), dtype=cupy.int32)
        M = 0 if indices is None else indices.size
        return _fn("roi_check", rois)(
            _backend.ptr(rois), rois.shape[0], N, float(spatial_scale), _backend.ptr(indices) if M else 0, M,
            int(HW), _backend.ptr(flags), _stream())


def workspace(K, N, extra_words):
    """One int64 device buffer: order (K), first (N + 1), then ``extra_words`` 8-byte words."""
    import cupy

    return cupy.empty((K + N + 1 + max(extra_words, 1),), dtype=cupy.int64)


def rois_by_image(rois, N, ws):
    """Fill order = ws[:K] (roi indices sorted by image, index order within an image) and
    first = ws[K:K + N + 1] (CSR offsets into order); returns (order, first)."""
    K = rois.shape[0]
    order, first = ws[:K], ws[K:K + N + 1]
    if K * (N + 1) <= _CSR_KERNEL_MAX_WORK:
        _fn("rois_by_image", rois)(_backend.ptr(rois), K, N, _backend.ptr(order), _backend.ptr(first), _stream())
        return order, first
    import cupy

    b = rois[:, 0].astype(cupy.int64)
    order[...] = cupy.argsort(b)  # CuPy sorts stably (CUB radix sort)
    first[...] = cupy.searchsorted(b[order], cupy.arange(N + 1, dtype=cupy.int64))
    return order, first


def roi_pool_forward(x, rois, y, argmax, spatial_scale):
    N, C, H, W = x.shape
    with x.device:
        _fn("roi_pool_forward", x)(
            _backend.ptr(x), _backend.ptr(rois), _backend.ptr(y), 0 if argmax is None else _backend.ptr(argmax),
            N, C, H, W, rois.shape[0], y.shape[2], y.shape[3], float(spatial_scale), _stream())


def roi_pool_backward(dy, argmax, rois, dx, spatial_scale):
    N, C, H, W = dx.shape
    K = rois.shape[0]
    with dx.device:
        ws = workspace(K, N, K * (H + W))  # + ranges: K*(H+W) int2
        order, first = rois_by_image(rois, N, ws)
        ranges = ws[K + N + 1:]
        _fn("roi_pool_backward", dx)(
            _backend.ptr(dy), _backend.ptr(argmax), _backend.ptr(rois), _backend.ptr(order), _backend.ptr(first),
            _backend.ptr(ranges), _backend.ptr(dx), N, C, H, W, K, dy.shape[2], dy.shape[3],
            float(spatial_scale), _stream())
