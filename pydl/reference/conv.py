"""conv: the NumPy twin (oracle for tests, baseline for benchmarks).

Textbook im2col / col2im in float64, written for clarity, independent of the pydl
kernels (it re-derives its own padding and output sizes). Same names and signatures
as pydl.functional; every result is float64.

im2col of a padded input xp (N, C, Hp, Wp) is col[n, c, i, j, oh, ow] =
xp[n, c, oh*sh + i*dh, ow*sw + j*dw]; convolution is then one tensordot per group,
and col2im (the adjoint of im2col) adds every column entry back where it came from.
"""
import numpy as np

__all__ = ["conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward"]


def _pair(v):
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _pads(padding, k, d, stride):
    """((top, bottom), (left, right)) padding; 'same' puts the odd extra at the bottom/right."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            tot = [d[a] * (k[a] - 1) for a in range(2)]
            return (tot[0] // 2, tot[0] - tot[0] // 2), (tot[1] // 2, tot[1] - tot[1] // 2)
        raise ValueError(f"padding: expected 'same' or 'valid', got {padding!r}")
    p = _pair(padding)
    return (p[0], p[0]), (p[1], p[1])


def _im2col(xp, kh, kw, s, d, ho, wo):
    n, c = xp.shape[:2]
    col = np.zeros((n, c, kh, kw, ho, wo))
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * d[0], j * d[1]
            col[:, :, i, j] = xp[:, :, r0:r0 + s[0] * (ho - 1) + 1:s[0], c0:c0 + s[1] * (wo - 1) + 1:s[1]]
    return col


def _col2im(col, padded_shape, s, d):
    n, c, kh, kw, ho, wo = col.shape
    xp = np.zeros(padded_shape)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * d[0], j * d[1]
            xp[:, :, r0:r0 + s[0] * (ho - 1) + 1:s[0], c0:c0 + s[1] * (wo - 1) + 1:s[1]] += col[:, :, i, j]
    return xp


def _geometry(x_shape, w_shape, stride, padding, dilation):
    s, d = _pair(stride), _pair(dilation)
    kh, kw = w_shape[2:]
    (pt, pb), (pl, pr) = _pads(padding, (kh, kw), d, s)
    h, w = x_shape[2:]
    ho = (h + pt + pb - d[0] * (kh - 1) - 1) // s[0] + 1
    wo = (w + pl + pr - d[1] * (kw - 1) - 1) // s[1] + 1
    if ho < 1 or wo < 1:
        raise ValueError("output size < 1")
    # Pad enough on the bottom/right for every window (extra rows are never read).
    hp = max(h + pt + pb, (ho - 1) * s[0] + d[0] * (kh - 1) + 1)
    wp = max(w + pl + pr, (wo - 1) * s[1] + d[1] * (kw - 1) + 1)
    return s, d, (pt, pl), (hp, wp), (ho, wo)


def _conv(x, weight, s, d, pad, padded, out, groups):
    """Cross-correlation with top/left padding pad and output size out."""
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    n, c, h, w = x.shape
    k, cg, kh, kw = weight.shape
    xp = np.zeros((n, c) + tuple(padded))
    hh, ww = min(h, padded[0] - pad[0]), min(w, padded[1] - pad[1])
    xp[:, :, pad[0]:pad[0] + hh, pad[1]:pad[1] + ww] = x[:, :, :hh, :ww]
    col = _im2col(xp, kh, kw, s, d, out[0], out[1])
    kg = k // groups
    y = np.empty((n, k) + tuple(out))
    for g in range(groups):
        cols = col[:, g * cg:(g + 1) * cg]                      # (N, Cg, kh, kw, Ho, Wo)
        wg = weight[g * kg:(g + 1) * kg]                        # (Kg, Cg, kh, kw)
        y[:, g * kg:(g + 1) * kg] = np.tensordot(wg, cols, axes=([1, 2, 3], [1, 2, 3])).transpose(1, 0, 2, 3)
    return y


def _conv_grad_input(dy, weight, s, d, pad, padded, in_hw, groups):
    """Adjoint of _conv in x: col = W^T dy per group, then col2im and crop."""
    dy = np.asarray(dy, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    n, k, ho, wo = dy.shape
    _, cg, kh, kw = weight.shape
    kg = k // groups
    col = np.empty((n, cg * groups, kh, kw, ho, wo))
    for g in range(groups):
        wg = weight[g * kg:(g + 1) * kg]
        col[:, g * cg:(g + 1) * cg] = np.tensordot(dy[:, g * kg:(g + 1) * kg], wg, axes=([1], [0])).transpose(0, 3, 4, 5, 1, 2)
    xp = _col2im(col, (n, cg * groups) + tuple(padded), s, d)
    dx = np.zeros((n, cg * groups) + tuple(in_hw))
    hh, ww = min(in_hw[0], padded[0] - pad[0]), min(in_hw[1], padded[1] - pad[1])
    dx[:, :, :hh, :ww] = xp[:, :, pad[0]:pad[0] + hh, pad[1]:pad[1] + ww]
    return dx


def _conv_grad_weight(dy, x, s, d, pad, padded, kernel, groups):
    """dW[k, c, i, j] = sum over n, oh, ow of dy[n, k, oh, ow] * col[n, c, i, j, oh, ow]."""
    dy = np.asarray(dy, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    n, c, h, w = x.shape
    k, ho, wo = dy.shape[1:]
    xp = np.zeros((n, c) + tuple(padded))
    hh, ww = min(h, padded[0] - pad[0]), min(w, padded[1] - pad[1])
    xp[:, :, pad[0]:pad[0] + hh, pad[1]:pad[1] + ww] = x[:, :, :hh, :ww]
    col = _im2col(xp, kernel[0], kernel[1], s, d, ho, wo)
    kg, cg = k // groups, c // groups
    dw = np.empty((k, cg) + tuple(kernel))
    for g in range(groups):
        dw[g * kg:(g + 1) * kg] = np.tensordot(dy[:, g * kg:(g + 1) * kg], col[:, g * cg:(g + 1) * cg],
                                               axes=([0, 2, 3], [0, 4, 5]))
    return dw


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Reference 2-D convolution (cross-correlation, PyTorch semantics), float64 result."""
    s, d, pad, padded, out = _geometry(x.shape, weight.shape, stride, padding, dilation)
    y = _conv(x, weight, s, d, pad, padded, out, groups)
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return y


def conv2d_backward(grad_out, x, weight, stride=1, padding=0, dilation=1, groups=1,
                    output_mask=(True, True, True)):
    """Reference (grad_x, grad_weight, grad_bias) of conv2d; None where output_mask is False."""
    s, d, pad, padded, out = _geometry(x.shape, weight.shape, stride, padding, dilation)
    dy = np.asarray(grad_out, dtype=np.float64)
    gx = _conv_grad_input(dy, weight, s, d, pad, padded, x.shape[2:], groups) if output_mask[0] else None
    gw = _conv_grad_weight(dy, x, s, d, pad, padded, weight.shape[2:], groups) if output_mask[1] else None
    gb = dy.sum(axis=(0, 2, 3)) if output_mask[2] else None
    return gx, gw, gb


def _transpose_geometry(x_shape, w_shape, stride, padding, output_padding, dilation):
    s, p, op, d = _pair(stride), _pair(padding), _pair(output_padding), _pair(dilation)
    kh, kw = w_shape[2:]
    h, w = x_shape[2:]
    ho = (h - 1) * s[0] - 2 * p[0] + d[0] * (kh - 1) + op[0] + 1
    wo = (w - 1) * s[1] - 2 * p[1] + d[1] * (kw - 1) + op[1] + 1
    if ho < 1 or wo < 1:
        raise ValueError("output size < 1")
    # The canvas before cropping p on the top/left: big enough for every scattered window.
    padded = (max(ho + 2 * p[0], (h - 1) * s[0] + d[0] * (kh - 1) + 1 + p[0]),
              max(wo + 2 * p[1], (w - 1) * s[1] + d[1] * (kw - 1) + 1 + p[1]))
    return s, d, p, padded, (ho, wo)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Reference transposed convolution: scatter each input pixel times its kernel (col2im), crop."""
    s, d, p, padded, out = _transpose_geometry(x.shape, weight.shape, stride, padding, output_padding, dilation)
    y = _conv_grad_input(x, weight, s, d, p, padded, out, groups)
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return y


def conv_transpose2d_backward(grad_out, x, weight, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1, output_mask=(True, True, True)):
    """Reference (grad_x, grad_weight, grad_bias) of conv_transpose2d."""
    s, d, p, padded, out = _transpose_geometry(x.shape, weight.shape, stride, padding, output_padding, dilation)
    dy = np.asarray(grad_out, dtype=np.float64)
    # conv_transpose2d is the x-adjoint of a convolution with the same weight, so its
    # x-gradient is that convolution of grad_out, and its weight-gradient that
    # convolution's weight-gradient with the roles of x and grad_out swapped.
    gx = _conv(dy, weight, s, d, p, padded, x.shape[2:], groups) if output_mask[0] else None
    gw = _conv_grad_weight(x, dy, s, d, p, padded, weight.shape[2:], groups) if output_mask[1] else None
    gb = dy.sum(axis=(0, 2, 3)) if output_mask[2] else None
    return gx, gw, gb
