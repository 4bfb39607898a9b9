"""roi_pool: the NumPy twin (naive loops; the test oracle and benchmark baseline).

torchvision.ops.roi_pool's rules, written out one roi and one bin at a time:
  box corners  x1' = round(x1 * spatial_scale) (half away from zero), same for y1, x2, y2
  roi size     rh = max(y2' - y1' + 1, 1), rw = max(x2' - x1' + 1, 1)
  bin size     bh = rh / PH, bw = rw / PW
  bin rows     [floor(ph * bh) + y1', ceil((ph + 1) * bh) + y1') clipped to [0, H]; columns alike
  value        max over the bin (first strict maximum in row-major order; NaN never wins),
               starting from -FLT_MAX; an empty bin gives 0 and argmax -1.
The box geometry is computed in the dtype of the boxes (as the kernels do, so that rounding and
floor/ceil agree bit for bit); values are compared in float64.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["roi_pool", "roi_pool_backward"]

_FLT_MAX = float(np.finfo(np.float32).max)


def _as_rois(boxes):
    """(K, 5) rois from a (K, 5) array or a list of (L_i, 4) arrays (image i)."""
    if isinstance(boxes, (list, tuple)):
        parts = [np.concatenate([np.full((len(b), 1), i, dtype=np.asarray(b).dtype), np.asarray(b)], 1)
                 for i, b in enumerate(boxes)]
        if not parts:
            return np.zeros((0, 5))
        return np.concatenate(parts, 0)
    return np.asarray(boxes)


def _pair(v):
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _round_half_away(v):
    """std::round: halves away from zero (np.round rounds them to even)."""
    a = abs(float(v))
    f = math.floor(a)
    r = f + (1.0 if a - f >= 0.5 else 0.0)
    return int(math.copysign(r, float(v)))


def _bins(roi, scale, PH, PW, H, W):
    """Batch index and the clipped bin bounds (rows[ph] = (lo, hi), cols[pw] = (lo, hi))."""
    T = roi.dtype.type
    s = T(scale)
    x1, y1, x2, y2 = (_round_half_away(roi[i] * s) for i in range(1, 5))
    bh = T(max(y2 - y1 + 1, 1)) / T(PH)
    bw = T(max(x2 - x1 + 1, 1)) / T(PW)

    def axis(P, b, start, L):
        out = []
        for p in range(P):
            lo = int(math.floor(T(p) * b)) + start
            hi = int(math.ceil(T(p + 1) * b)) + start
            out.append((min(max(lo, 0), L), min(max(hi, 0), L)))
        return out

    return int(roi[0]), axis(PH, bh, y1, H), axis(PW, bw, x1, W)


def roi_pool(x, boxes, output_size, spatial_scale=1.0, return_indices=False):
    """Max pooling of x over each box's PH x PW bins (see the module docstring).

    x (N, C, H, W); boxes (K, 5) as (batch_index, x1, y1, x2, y2) or a list of (L_i, 4).
    Returns y (K, C, PH, PW) in x's dtype (and int64 argmax h * W + w, -1 for empty bins).
    """
    rois = _as_rois(boxes)
    PH, PW = _pair(output_size)
    N, C, H, W = x.shape
    K = rois.shape[0]
    xd = np.asarray(x, dtype=np.float64)
    y = np.zeros((K, C, PH, PW))
    arg = np.full((K, C, PH, PW), -1, dtype=np.int64)
    for k in range(K):
        n, rows, cols = _bins(rois[k], spatial_scale, PH, PW, H, W)
        for ph, (hs, he) in enumerate(rows):
            for pw, (ws, we) in enumerate(cols):
                if he <= hs or we <= ws:
                    continue  # empty bin: 0, argmax -1
                best = np.full(C, -_FLT_MAX)
                idx = np.full(C, -1, dtype=np.int64)
                for h in range(hs, he):
                    for w in range(ws, we):
                        v = xd[n, :, h, w]
                        m = v > best
                        best[m] = v[m]
                        idx[m] = h * W + w
                y[k, :, ph, pw] = best
                arg[k, :, ph, pw] = idx
    y = y.astype(x.dtype)
    return (y, arg) if return_indices else y


def roi_pool_backward(grad_out, indices, boxes, x_shape, output_size, spatial_scale=1.0):
    """dx[n, c].flat[indices[k, c, ph, pw]] += grad_out[k, c, ph, pw] for the rois k of image n.

    Entries -1, and entries outside their own bin (not produced by roi_pool with these
    arguments), pass nothing. Returns dx of shape x_shape in grad_out's dtype.
    """
    rois = _as_rois(boxes)
    PH, PW = _pair(output_size)
    N, C, H, W = (int(s) for s in x_shape)
    dy = np.asarray(grad_out, dtype=np.float64)
    dx = np.zeros((N, C, H, W))
    for k in range(rois.shape[0]):
        n, rows, cols = _bins(rois[k], spatial_scale, PH, PW, H, W)
        for ph, (hs, he) in enumerate(rows):
            for pw, (ws, we) in enumerate(cols):
                for c in range(C):
                    a = int(indices[k, c, ph, pw])
                    if a < 0:
                        continue
                    h, w = divmod(a, W)
                    if hs <= h < he and ws <= w < we:
                        dx[n, c, h, w] += dy[k, c, ph, pw]
    return dx.astype(np.asarray(grad_out).dtype)
