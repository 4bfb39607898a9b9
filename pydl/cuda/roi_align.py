"""roi_align: CuPy glue over the CUDA kernels in cuda/roi_align.cu (same signatures as pydl._cpu).

Arrays arrive C-contiguous and validated from pydl.ops.roi_align. For the gathering backward this
layer builds the CSR of the rois by image (one kernel, see pydl.cuda.roi_pool.rois_by_image) and
hands the kernel one workspace for it and the per-roi weight and bin-range tables, on CuPy's
current stream.
"""
from __future__ import annotations

from .. import _backend
from .roi_pool import _fn, _stream, rois_by_image, workspace


def roi_align_forward(x, rois, y, spatial_scale, sampling_ratio, aligned):
    N, C, H, W = x.shape
    with x.device:
        _fn("roi_align_forward", x)(
            _backend.ptr(x), _backend.ptr(rois), _backend.ptr(y), N, C, H, W, rois.shape[0], y.shape[2],
            y.shape[3], float(spatial_scale), int(sampling_ratio), bool(aligned), _stream())


def roi_align_backward(dy, rois, dx, spatial_scale, sampling_ratio, aligned):
    N, C, H, W = dx.shape
    K = rois.shape[0]
    PH, PW = dy.shape[2], dy.shape[3]
    with dx.device:
        # ranges: K*(H+W) int2 (one word each), then taps: K*(H*PH + W*PW) values of <= 8 bytes.
        n_ranges = K * (H + W)
        ws = workspace(K, N, n_ranges + K * (H * PH + W * PW))
        order, first = rois_by_image(rois, N, ws)
        ranges = ws[K + N + 1:]
        taps_ptr = _backend.ptr(ranges) + 8 * n_ranges
        _fn("roi_align_backward", dx)(
            _backend.ptr(dy), _backend.ptr(rois), _backend.ptr(order), _backend.ptr(first), _backend.ptr(ranges),
            taps_ptr, _backend.ptr(dx), N, C, H, W, K, PH, PW, float(spatial_scale),
            int(sampling_ratio), bool(aligned), _stream())
