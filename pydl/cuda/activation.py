"""activation: CuPy glue over the CUDA kernels in cuda/activation.cu (same signatures as pydl._cpu).
Arrays arrive C-contiguous and of one size and dtype, validated by pydl.functional; the output may
be an input (in place)."""
from __future__ import annotations

import numpy as np

from .. import _backend


def _launch(name, arrays, *params):
    import cupy

    a = arrays[0]
    sfx = "f32" if a.dtype == np.float32 else "f64"
    with a.device:
        getattr(_backend.cuda(), f"{name}_{sfx}")(
            *(_backend.ptr(v) for v in arrays), int(a.size), *params, _backend.stream_ptr(cupy))


def relu_forward(x, y):
    _launch("relu_forward", (x, y))


def relu_backward(dy, x, dx):
    _launch("relu_backward", (dy, x, dx))


def hardtanh_forward(x, y, min_val, max_val):
    _launch("hardtanh_forward", (x, y), float(min_val), float(max_val))


def hardtanh_backward(dy, x, dx, min_val, max_val):
    _launch("hardtanh_backward", (dy, x, dx), float(min_val), float(max_val))


def leaky_relu_forward(x, y, negative_slope):
    _launch("leaky_relu_forward", (x, y), float(negative_slope))


def leaky_relu_backward(dy, x, dx, negative_slope):
    _launch("leaky_relu_backward", (dy, x, dx), float(negative_slope))


def silu_forward(x, y):
    _launch("silu_forward", (x, y))


def silu_backward(dy, x, dx):
    _launch("silu_backward", (dy, x, dx))


def hardswish_forward(x, y):
    _launch("hardswish_forward", (x, y))


def hardswish_backward(dy, x, dx):
    _launch("hardswish_backward", (dy, x, dx))


def sigmoid_forward(x, y):
    _launch("sigmoid_forward", (x, y))


def sigmoid_backward(dy, y, dx):
    _launch("sigmoid_backward", (dy, y, dx))


def tanh_forward(x, y):
    _launch("tanh_forward", (x, y))


def tanh_backward(dy, y, dx):
    _launch("tanh_backward", (dy, y, dx))
