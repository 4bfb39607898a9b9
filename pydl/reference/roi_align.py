"""roi_align: the NumPy twin (naive loops; the test oracle and benchmark baseline).

torchvision.ops.roi_align's rules, one roi, bin and sample at a time:
  offset       o = 0.5 if aligned else 0
  box          x1' = x1 * spatial_scale - o, ... (no rounding)
  roi size     rw = x2' - x1', rh = y2' - y1'; without `aligned` at least 1 (malformed -> 1x1)
  bins         bh = rh / PH, bw = rw / PW
  sample grid  gh = sampling_ratio if > 0 else ceil(rh / PH) (gw alike); count = max(gh * gw, 1)
  samples      y = y1' + ph * bh + (iy + 0.5) * bh / gh,  x alike
  bilinear     a sample with y < -1, y > H, x < -1 or x > W is 0; else y <= 0 -> 0, y_low = int(y),
               y_low >= H - 1 -> y_low = y_high = H - 1 (y = y_low), else y_high = y_low + 1;
               weights (1 - ly, ly) with ly = y - y_low; x alike; the 2-D weight is the product.
  value        sum of the samples / count.
The sample positions are computed in the dtype of the boxes (as the kernels do); the weights
and values in float64.
"""
from __future__ import annotations

import math

import numpy as np

from .roi_pool import _as_rois, _pair

__all__ = ["roi_align", "roi_align_backward"]


def _geometry(roi, scale, PH, PW, sampling_ratio, aligned):
    T = roi.dtype.type
    s = T(scale)
    off = T(0.5) if aligned else T(0.0)
    x1, y1, x2, y2 = (roi[i] * s - off for i in range(1, 5))
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = max(rw, T(1.0)), max(rh, T(1.0))
    bh, bw = rh / T(PH), rw / T(PW)
    gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rh / T(PH)))
    gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rw / T(PW)))
    return int(roi[0]), T, (y1, bh, gh), (x1, bw, gw), float(max(gh * gw, 1))


def _taps(T, start, b, g, P, L):
    """taps[p] = list of (low, high, w_low, w_high) for the valid samples of bin p."""
    out = []
    for p in range(P):
        row = []
        for i in range(max(g, 0)):
            v = start + T(p) * b + T(i + 0.5) * b / T(g)
            if v < -1.0 or v > L:
                continue  # outside the feature map: this sample is 0
            v = float(v)
            if v <= 0:
                v = 0.0
            lo = int(v)
            if lo >= L - 1:
                lo = hi = L - 1
                v = float(lo)
            else:
                hi = lo + 1
            ly = v - lo
            row.append((lo, hi, 1.0 - ly, ly))
        out.append(row)
    return out


def _roi_taps(roi, x_shape, output_size, spatial_scale, sampling_ratio, aligned):
    PH, PW = _pair(output_size)
    H, W = int(x_shape[2]), int(x_shape[3])
    n, T, (y1, bh, gh), (x1, bw, gw), count = _geometry(roi, spatial_scale, PH, PW, sampling_ratio, aligned)
    return n, _taps(T, y1, bh, gh, PH, H), _taps(T, x1, bw, gw, PW, W), count


def roi_align(x, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """Average of bilinear samples over each box's PH x PW bins (see the module docstring).

    x (N, C, H, W); boxes (K, 5) as (batch_index, x1, y1, x2, y2) or a list of (L_i, 4).
    Returns (K, C, PH, PW) in x's dtype.
    """
    rois = _as_rois(boxes)
    PH, PW = _pair(output_size)
    N, C, H, W = x.shape
    xd = np.asarray(x, dtype=np.float64)
    y = np.zeros((rois.shape[0], C, PH, PW))
    for k in range(rois.shape[0]):
        n, ty, tx, count = _roi_taps(rois[k], x.shape, output_size, spatial_scale, sampling_ratio, aligned)
        img = xd[n]
        for ph in range(PH):
            for pw in range(PW):
                acc = np.zeros(C)
                for (yl, yh, wyl, wyh) in ty[ph]:
                    for (xl, xh, wxl, wxh) in tx[pw]:
                        acc += (wyl * wxl * img[:, yl, xl] + wyl * wxh * img[:, yl, xh]
                                + wyh * wxl * img[:, yh, xl] + wyh * wxh * img[:, yh, xh])
                y[k, :, ph, pw] = acc / count
    return y.astype(x.dtype)


def roi_align_backward(grad_out, boxes, x_shape, output_size, spatial_scale=1.0, sampling_ratio=-1,
                       aligned=False):
    """The adjoint of roi_align: every sample scatters grad / count times its four weights.

    Returns dx of shape x_shape in grad_out's dtype.
    """
    rois = _as_rois(boxes)
    PH, PW = _pair(output_size)
    N, C, H, W = (int(s) for s in x_shape)
    dy = np.asarray(grad_out, dtype=np.float64)
    dx = np.zeros((N, C, H, W))
    for k in range(rois.shape[0]):
        n, ty, tx, count = _roi_taps(rois[k], (N, C, H, W), output_size, spatial_scale, sampling_ratio, aligned)
        img = dx[n]
        for ph in range(PH):
            for pw in range(PW):
                g = dy[k, :, ph, pw] / count
                for (yl, yh, wyl, wyh) in ty[ph]:
                    for (xl, xh, wxl, wxh) in tx[pw]:
                        img[:, yl, xl] += g * (wyl * wxl)
                        img[:, yl, xh] += g * (wyl * wxh)
                        img[:, yh, xl] += g * (wyh * wxl)
                        img[:, yh, xh] += g * (wyh * wxh)
    return dx.astype(np.asarray(grad_out).dtype)
