"""pool: the NumPy twin (oracle for tests, baseline for benchmarks).

Textbook pooling: pad the image (-inf for max, 0 for average), then loop over the window
offsets (i, j), each a strided view of the padded image, and combine in float64. Independent
of the kernels: it shares only the output-size helper pydl._geometry and argument parsing.
Same names and signatures as pydl.functional; results in the input's dtype.
"""
from __future__ import annotations

import numpy as np

from .._geometry import adaptive_end, adaptive_start
from ..functional.pool import _adaptive_size, _as4d, _divisor, _ret, _shape4, _window

__all__ = [
    "max_pool2d", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_backward",
    "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward",
    "global_avg_pool2d", "global_avg_pool2d_backward",
]


def _padded(x, k, s, p, d, out, value):
    """x padded by p on the top/left and enough on the bottom/right for every window."""
    N, C, H, W = x.shape
    extra_h = max(0, (out[0] - 1) * s[0] + d[0] * (k[0] - 1) + 1 - (H + p[0]))
    extra_w = max(0, (out[1] - 1) * s[1] + d[1] * (k[1] - 1) + 1 - (W + p[1]))
    return np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p[0], extra_h), (p[1], extra_w)),
                  constant_values=value)


def _tap(xpad, i, j, s, d, out):
    """Tap (i, j) of every window: xpad[..., oh*sh + i*dh, ow*sw + j*dw]."""
    r0, c0 = i * d[0], j * d[1]
    return xpad[:, :, r0:r0 + (out[0] - 1) * s[0] + 1:s[0], c0:c0 + (out[1] - 1) * s[1] + 1:s[1]]


def _positions(a, k, s, p, d, out, length):
    """Input coordinate of tap a along one axis for every output, and whether it is inside."""
    pos = np.arange(out) * s - p + a * d
    return pos, (pos >= 0) & (pos < length)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    x = np.asarray(x)
    x4, squeeze = _as4d("x", x)
    H, W = x4.shape[2:]
    k, s, p, d, out = _window((H, W), kernel_size, stride, padding, dilation, ceil_mode)
    xpad = _padded(x4, k, s, p, d, out, -np.inf)
    m = np.full(x4.shape[:2] + out, -np.inf)
    idx = np.full(x4.shape[:2] + out, -1, dtype=np.int64)
    for i in range(k[0]):
        rows, rok = _positions(i, k[0], s[0], p[0], d[0], out[0], H)
        for j in range(k[1]):
            cols, cok = _positions(j, k[1], s[1], p[1], d[1], out[1], W)
            v = _tap(xpad, i, j, s, d, out)
            inside = rok[:, None] & cok[None, :]
            # PyTorch's scan: the first tap inside the image starts the window, later taps
            # replace on a strictly larger value or on NaN.
            take = inside & ((idx < 0) | (v > m) | np.isnan(v))
            m = np.where(take, v, m)
            idx = np.where(take, rows[:, None] * W + cols[None, :], idx)
    y = m.astype(x.dtype)
    if return_indices:
        return _ret(y, squeeze), _ret(idx, squeeze)
    return _ret(y, squeeze)


def max_pool2d_backward(grad_out, indices, x_shape, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False):
    # The indices say everything: scatter-add each gradient to its argmax.
    shape4, squeeze = _shape4("x_shape", x_shape)
    dy = np.asarray(grad_out, dtype=np.float64).reshape(shape4[:2] + tuple(grad_out.shape[-2:]))
    ind = np.asarray(indices).reshape(dy.shape)
    N, C, H, W = shape4
    dx = np.zeros((N, C, H * W))
    for n in range(N):
        for c in range(C):
            keep = ind[n, c] >= 0
            np.add.at(dx[n, c], ind[n, c][keep], dy[n, c][keep])
    return _ret(dx.reshape(shape4).astype(grad_out.dtype), squeeze)


def _avg_divisor(H, W, k, s, p, out, count_include_pad, divisor_override):
    """Divisor of every window (N, C broadcast): window clipped to the padded image, or taps inside."""
    def axis(a, length):
        start = np.arange(out[a]) * s[a] - p[a]
        end = np.minimum(start + k[a], length + p[a])
        inside = np.minimum(end, length) - np.maximum(start, 0)
        return end - start, np.maximum(inside, 0)

    hin, hok = axis(0, H)
    win, wok = axis(1, W)
    empty = (hok[:, None] == 0) | (wok[None, :] == 0)
    if divisor_override:
        div = np.full(out, float(divisor_override))
    elif count_include_pad:
        div = (hin[:, None] * win[None, :]).astype(np.float64)
    else:
        div = (hok[:, None] * wok[None, :]).astype(np.float64)
    return np.where(empty, np.inf, div)  # an empty window gives 0 and passes no gradient


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    x = np.asarray(x)
    x4, squeeze = _as4d("x", x)
    H, W = x4.shape[2:]
    k, s, p, d, out = _window((H, W), kernel_size, stride, padding, 1, ceil_mode)
    xpad = _padded(x4, k, s, p, d, out, 0.0)
    acc = np.zeros(x4.shape[:2] + out)
    for i in range(k[0]):
        for j in range(k[1]):
            acc += _tap(xpad, i, j, s, d, out)
    y = acc / _avg_divisor(H, W, k, s, p, out, count_include_pad, _divisor(divisor_override))
    return _ret(y.astype(x.dtype), squeeze)


def avg_pool2d_backward(grad_out, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None):
    shape4, squeeze = _shape4("x_shape", x_shape)
    N, C, H, W = shape4
    k, s, p, d, out = _window((H, W), kernel_size, stride, padding, 1, ceil_mode)
    g = np.asarray(grad_out, dtype=np.float64).reshape((N, C) + out)
    g = g / _avg_divisor(H, W, k, s, p, out, count_include_pad, _divisor(divisor_override))
    dpad = _padded(np.zeros(shape4), k, s, p, d, out, 0.0)
    for i in range(k[0]):
        for j in range(k[1]):
            _tap(dpad, i, j, s, d, out)[...] += g  # a view: the taps of one offset never collide
    dx = dpad[:, :, p[0]:p[0] + H, p[1]:p[1] + W]
    return _ret(dx.astype(grad_out.dtype), squeeze)


def adaptive_avg_pool2d(x, output_size):
    x = np.asarray(x)
    x4, squeeze = _as4d("x", x)
    H, W = x4.shape[2:]
    OH, OW = _adaptive_size(output_size, (H, W))
    y = np.empty(x4.shape[:2] + (OH, OW))
    for oh in range(OH):
        h0, h1 = adaptive_start(oh, OH, H), adaptive_end(oh, OH, H)
        for ow in range(OW):
            w0, w1 = adaptive_start(ow, OW, W), adaptive_end(ow, OW, W)
            y[:, :, oh, ow] = x4[:, :, h0:h1, w0:w1].astype(np.float64).mean(axis=(2, 3))
    return _ret(y.astype(x.dtype), squeeze)


def adaptive_avg_pool2d_backward(grad_out, x_shape):
    shape4, squeeze = _shape4("x_shape", x_shape)
    N, C, H, W = shape4
    OH, OW = grad_out.shape[-2:]
    g = np.asarray(grad_out, dtype=np.float64).reshape((N, C, OH, OW))
    dx = np.zeros(shape4)
    for oh in range(OH):
        h0, h1 = adaptive_start(oh, OH, H), adaptive_end(oh, OH, H)
        for ow in range(OW):
            w0, w1 = adaptive_start(ow, OW, W), adaptive_end(ow, OW, W)
            dx[:, :, h0:h1, w0:w1] += g[:, :, oh, ow, None, None] / ((h1 - h0) * (w1 - w0))
    return _ret(dx.astype(grad_out.dtype), squeeze)


def global_avg_pool2d(x):
    return adaptive_avg_pool2d(x, 1)


def global_avg_pool2d_backward(grad_out, x_shape):
    return adaptive_avg_pool2d_backward(grad_out, x_shape)
