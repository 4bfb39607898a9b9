"""pydl.backends: which algorithm a convolution runs, and forcing one.

Each device has one table of algorithms for the three directions of a convolution (forward,
input gradient, weight gradient), ``conv_algorithms(device)``, and one automatic rule: the CPU's
in csrc/conv.cpp (``choose``), the GPU's in pydl/cuda/conv.py (``choose``). ``conv_algorithm``
replaces the rule for the calls inside a ``with`` block, process-wide; a call the forced
algorithm cannot compute raises a ValueError that names it (never a silent fallback), so tests
and benchmarks can run every algorithm on every host.

>>> import pydl.backends, pydl.functional as F
>>> with pydl.backends.conv_algorithm("im2col_tiled"):
...     y = F.conv2d(x, w, padding=1)            # doctest: +SKIP
>>> with pydl.backends.conv_algorithm("direct", device="cuda"):
...     y = F.conv2d(x_cupy, w_cupy, padding=1)  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib

from . import _backend

__all__ = ["conv_algorithms", "conv_algorithm", "conv_algorithm_choice"]

# Codes as csrc/conv.cpp's Algo; one line each: what it is for.
_ALGORITHMS = {
    "auto": (0, "the automatic rule"),
    "depthwise": (1, "groups == C == K: plain per-plane loops, for planes too big for depthwise_blocked's "
                     "scratch"),
    "winograd": (2, "3x3 (not depthwise), stride 1 or 2 without dilation, or stride 1 with dilation and padding "
                    "a multiple of it (its phases as a batch, space-to-batch): Winograd F(2x2, 3x3) + 16 GEMMs "
                    "(per group)"),
    "gemm_1x1": (3, "1x1, stride 1, no padding: one GEMM per image and group straight on x"),
    "im2col_per_image": (4, "forward, and the strided input gradient: each thread im2cols whole images, "
                            "GEMM straight into y (deep reductions, at least one image per thread)"),
    "im2col_tiled": (5, "any geometry: im2col (col2im) over tiles of images or pixels under the workspace "
                        "cap, GEMMs split by columns over the threads"),
    "grouped_direct": (6, "grouped convolutions with several channels per group, any stride: phase planes "
                          "per image and group, register blocks of channels x outputs, no im2col"),
    "depthwise_blocked": (7, "groups == C == K: 8 (float) / 4 (double) channels interleaved pixel-major, one "
                             "vector FMA per tap and output, row kernels for 3-7 wide kernels"),
    "direct_blocked": (8, "16 (float) / 8 (double) channels of a group in vector lanes (output channels; input "
                          "channels for the input gradient; the last block zero-padded), register blocks of them "
                          "x 6 pixels, any stride: "
                          "many channels per group on small planes, few-channel stems, and dense 5x5 and larger kernels"),
    "winograd_blocked": (9, "3x3, stride 1, no dilation: Winograd F(2x2, 3x3) with direct_blocked's channel "
                            "lanes, no BLAS: grouped layers of 16 or more channels per group, dense ones of up to 128"),
}
_DIRECTIONS = ("forward", "input_grad", "weight_grad")
_DEVICES = ("cpu", "cuda")


def _device(device):
    if device not in _DEVICES:
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    return device


def _gpu_table():
    # Pure Python (CuPy is imported only by the kernels): the GPU's table and rule are
    # readable and forceable on any host.
    from .cuda import conv

    return conv


def conv_algorithms(device="cpu") -> dict:
    """{name: what it is for} of the convolution algorithms of ``device`` ('cpu' or 'cuda')."""
    if _device(device) == "cuda":
        return {"auto": "the automatic rule", **_gpu_table().ALGORITHMS}
    return {k: v[1] for k, v in _ALGORITHMS.items()}


def _code(name, arg):
    if not isinstance(name, str) or name not in _ALGORITHMS:
        raise ValueError(f"{arg}: expected one of {', '.join(map(repr, _ALGORITHMS))}, got {name!r}")
    return _ALGORITHMS[name][0]


def _gpu_name(name, arg):
    names = conv_algorithms("cuda")
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"{arg}: expected one of {', '.join(map(repr, names))}, got {name!r}")
    return None if name == "auto" else name


@contextlib.contextmanager
def conv_algorithm(algorithm=None, *, forward=None, input_grad=None, weight_grad=None, device="cpu"):
    """Force convolution algorithms of ``device`` ('cpu': NumPy arrays, 'cuda': CuPy arrays) inside
    a ``with`` block (process-wide; restored after).

    ``conv_algorithm("im2col_tiled")`` forces every direction; the keywords force one each
    (``conv_algorithm(forward="winograd")``). A call the forced algorithm does not apply to
    raises ValueError naming the algorithm. The other device's choice is not affected.
    """
    chosen = {d: v for d, v in zip(_DIRECTIONS, (forward, input_grad, weight_grad)) if v is not None}
    check, swap = _forcing(device)
    if algorithm is not None:
        check(algorithm, "algorithm")
        chosen = {d: chosen.get(d, algorithm) for d in _DIRECTIONS}
    values = {d: check(v, d) for d, v in chosen.items()}
    previous = {}
    try:
        for d, v in values.items():
            previous[d] = swap(d, v)
        yield
    finally:
        for d, v in previous.items():
            swap(d, v)


def _forcing(device):
    """(check(name, arg) -> the table's value for name, swap(direction, value) -> the previous
    value) of device's table."""
    if _device(device) == "cuda":
        forced = _gpu_table()._forced

        def swap(d, v):
            old, forced[d] = forced[d], v
            return old

        return _gpu_name, swap
    cpu = _backend.cpu()
    return _code, lambda d, c: cpu._set_conv_algorithm(_DIRECTIONS.index(d), c)


def conv_algorithm_choice(direction, x_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1,
                          dtype="float32", device="cpu") -> str:
    """The algorithm a conv2d call of these arguments on ``device`` runs in ``direction``
    ('forward', 'input_grad' or 'weight_grad'), forced or automatic (a forced one that does not
    apply raises). Needs no GPU for device='cuda'."""
    import numpy as np

    from .functional.conv import _conv_params

    if direction not in _DIRECTIONS:
        raise ValueError(f"direction: expected one of {_DIRECTIONS}, got {direction!r}")
    _device(device)
    x, w = np.empty(x_shape, dtype), np.empty(weight_shape, dtype)
    s, p, d, g, (ho, wo) = _conv_params(x, w, stride, padding, dilation, groups)
    n, c, h, wd = x.shape
    k, _, kh, kw = w.shape
    if device == "cuda":
        gpu = _gpu_table()
        return gpu.pick(direction, gpu.Geo(n, c, h, wd, k, kh, kw, ho, wo, s[0], s[1], p[0], p[1], d[0], d[1], g),
                        x.dtype)
    code = _backend.cpu()._conv_algorithm_choice(_DIRECTIONS.index(direction), n, c, h, wd, k, kh, kw, s[0], s[1],
                                                 p[0], p[1], d[0], d[1], g, ho, wo, x.dtype == np.float64)
    return next(name for name, (cd, _) in _ALGORITHMS.items() if cd == code)
