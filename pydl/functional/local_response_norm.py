"""local_response_norm: normalization over a window of neighbouring channels (PyTorch semantics).

``b[n, c] = a[n, c] / (k + alpha / size * sum_{c'} a[n, c']^2) ** beta`` with c' running over
``c - size//2 ... c + (size-1)//2``; channels outside ``[0, C)`` count as zero and the average always
divides by ``size`` (PyTorch pads with zeros and average-pools). The forward returns only ``b``; the
backward recomputes the scale from ``x`` (see csrc/local_response_norm.cpp for the derivation).
"""
from __future__ import annotations

from .. import _backend

__all__ = ["local_response_norm", "local_response_norm_backward"]


def _params(size, alpha, beta, k):
    size = _backend.int_arg("size", size, 1)
    return (size, _backend.float_arg("alpha", alpha), _backend.float_arg("beta", beta),
            _backend.float_arg("k", k))


def _as3d(a):
    """(N, C, ...) -> (N, C, M) view/copy, C-contiguous."""
    n, c = a.shape[0], a.shape[1]
    m = 1
    for s in a.shape[2:]:
        m *= int(s)
    return a.reshape(n, c, m)


def _check_x(name, x):
    _backend.check_float(name, x)
    if x.ndim < 3:
        raise ValueError(f"{name}: expected an array of 3 or more dimensions (N, C, ...), got shape {tuple(x.shape)}")


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """Local response normalization across channels.

    Parameters
    ----------
    x : ndarray, shape (N, C, ...) with at least 3 dimensions, float32 or float64
    size : int
        Number of channels in the window (>= 1).
    alpha, beta, k : float
        ``y = x / (k + alpha * mean_window(x^2)) ** beta``.

    Returns
    -------
    y : ndarray, x's shape and dtype
    """
    xp = _backend.array_module(x=x)
    _check_x("x", x)
    size, alpha, beta, k = _params(size, alpha, beta, k)
    x3 = _backend.contiguous(_as3d(x), xp)
    y = _backend.empty(x3.shape, x.dtype, xp)
    _backend.kernels(xp, "local_response_norm").local_response_norm_forward(x3, y, size, alpha, beta, k)
    return y.reshape(x.shape)


def local_response_norm_backward(grad_out, x, size, alpha=1e-4, beta=0.75, k=1.0):
    """Gradient of ``local_response_norm`` with respect to its input.

    Parameters
    ----------
    grad_out : ndarray, x's shape
    x : ndarray, shape (N, C, ...), the forward input
    size, alpha, beta, k
        As given to ``local_response_norm``.

    Returns
    -------
    grad_x : ndarray, x's shape
        ``dy_j s_j^-beta - 2 alpha beta / size * x_j * sum_{c = j-(size-1)//2}^{j+size//2}
        dy_c x_c s_c^(-beta-1)`` with ``s_c = k + alpha/size * window sum of x^2``.
    """
    xp = _backend.array_module(grad_out=grad_out, x=x)
    _check_x("x", x)
    _backend.check_float("grad_out", grad_out)
    _backend.check_same_dtype("x", x, grad_out=grad_out)
    _backend.check_shape("grad_out", grad_out, x.shape)
    size, alpha, beta, k = _params(size, alpha, beta, k)
    x3 = _backend.contiguous(_as3d(x), xp)
    dy3 = _backend.contiguous(_as3d(grad_out), xp)
    dx = _backend.empty(x3.shape, x.dtype, xp)
    _backend.kernels(xp, "local_response_norm").local_response_norm_backward(dy3, x3, dx, size, alpha, beta, k)
    return dx.reshape(x.shape)
