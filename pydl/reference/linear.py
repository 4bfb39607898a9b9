"""linear: the NumPy twin (float64 matrix products; the test oracle).

y = x W^T + b over the last axis; the backward sums over every leading axis of x:
grad_x = grad_out W, grad_W = sum over rows of grad_out^T x, grad_b = sum over rows of grad_out.
"""
from __future__ import annotations

import numpy as np

__all__ = ["linear", "linear_backward"]


def linear(x, weight, bias=None):
    a, w = np.asarray(x).astype(np.float64), np.asarray(weight).astype(np.float64)
    y = a @ w.T
    if bias is not None:
        y = y + np.asarray(bias).astype(np.float64)
    return y.astype(np.asarray(x).dtype)


def linear_backward(grad_out, x, weight, output_mask=(True, True, True)):
    a, w = np.asarray(x).astype(np.float64), np.asarray(weight).astype(np.float64)
    n_out, n_in = w.shape
    rows = int(np.prod(a.shape[:-1]))  # not -1: a dimension may be 0
    g = np.asarray(grad_out).astype(np.float64).reshape(rows, n_out)
    a2 = a.reshape(rows, n_in)
    dt = np.asarray(x).dtype
    gx = (g @ w).reshape(a.shape).astype(dt) if output_mask[0] else None
    gw = (g.T @ a2).astype(dt) if output_mask[1] else None
    gb = g.sum(axis=0).astype(dt) if output_mask[2] else None
    return gx, gw, gb
