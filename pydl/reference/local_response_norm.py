"""local_response_norm: the NumPy twin (naive loops over the channel window; the test oracle).

b[n, c] = a[n, c] / (k + alpha / size * sum_{c' = c - size//2}^{c + (size-1)//2} a[n, c']^2) ** beta,
channels outside [0, C) count as zero (the divisor stays ``size``), as PyTorch.
"""
from __future__ import annotations

import numpy as np

__all__ = ["local_response_norm", "local_response_norm_backward"]


def _scale(a, size, alpha, k):
    """s[n, c] = k + alpha/size * (window sum of a^2), float64, a of shape (N, C, ...)."""
    C = a.shape[1]
    sq = a * a
    s = np.zeros_like(a)
    for c in range(C):
        for cc in range(c - size // 2, c + (size - 1) // 2 + 1):
            if 0 <= cc < C:
                s[:, c] += sq[:, cc]
    return k + alpha / size * s


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    a = np.asarray(x).astype(np.float64)
    y = a * _scale(a, size, alpha, k) ** (-beta)
    return y.astype(np.asarray(x).dtype)


def local_response_norm_backward(grad_out, x, size, alpha=1e-4, beta=0.75, k=1.0):
    """Chain rule written out per (c, j) pair: dy_c/da_j = [c == j] s_c^-beta
    - 2 alpha beta / size * a_c a_j s_c^(-beta-1) [j in window(c)]."""
    a = np.asarray(x).astype(np.float64)
    dy = np.asarray(grad_out).astype(np.float64)
    s = _scale(a, size, alpha, k)
    C = a.shape[1]
    dx = dy * s ** (-beta)
    for c in range(C):
        t = dy[:, c] * a[:, c] * s[:, c] ** (-beta - 1)
        for j in range(c - size // 2, c + (size - 1) // 2 + 1):
            if 0 <= j < C:
                dx[:, j] -= 2.0 * alpha * beta / size * t * a[:, j]
    return dx.astype(np.asarray(grad_out).dtype)
