"""local_response_norm: CuPy glue over the CUDA kernels in cuda/local_response_norm.cu (same signatures
as pydl._cpu). Arrays arrive C-contiguous, viewed as (N, C, M), validated by pydl.functional."""
from __future__ import annotations

import numpy as np

from .. import _backend


def _fn(name, a):
    sfx = "f32" if a.dtype == np.float32 else "f64"
    return getattr(_backend.cuda(), f"{name}_{sfx}")


def local_response_norm_forward(x, y, size, alpha, beta, k):
    import cupy

    N, C, M = x.shape
    with x.device:
        _fn("local_response_norm_forward", x)(
            _backend.ptr(x), _backend.ptr(y), N, C, M, int(size), float(alpha), float(beta), float(k),
            _backend.stream_ptr(cupy))


def local_response_norm_backward(dy, x, dx, size, alpha, beta, k):
    import cupy

    N, C, M = x.shape
    with x.device:
        _fn("local_response_norm_backward", x)(
            _backend.ptr(dy), _backend.ptr(x), _backend.ptr(dx), N, C, M, int(size), float(alpha), float(beta),
            float(k), _backend.stream_ptr(cupy))
