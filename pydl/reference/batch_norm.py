"""batch_norm: the NumPy twin (oracle for tests, baseline for benchmarks).

Textbook batch normalization over axis 1 (channels) of x (N, C, *spatial), computed in
float64 with plain NumPy reductions. Same names, signatures and semantics as
pydl.functional.batch_norm*: training mode normalizes with the biased batch variance
and updates the running buffers in place with the unbiased one (PyTorch's rule
r = (1 - momentum) * r + momentum * stat); evaluation mode uses the running buffers.
Independent of the pydl kernels on purpose.
"""
import numpy as np

__all__ = ["batch_norm", "batch_norm_forward", "batch_norm_backward"]


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _bcast(v, x):
    # (C,) -> (1, C, 1, ..., 1) so that it broadcasts over x (N, C, *spatial).
    return np.asarray(v, dtype=np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))


def batch_norm_forward(x, running_mean, running_var, weight=None, bias=None, training=False,
                       momentum=0.1, eps=1e-5):
    """(y, save_mean, save_invstd), all float64; see pydl.functional.batch_norm_forward."""
    x = np.asarray(x, dtype=np.float64)
    C = x.shape[1]
    axes = _axes(x)
    m = x.size // C if C else 0
    if training:
        if m == 0:
            mean = np.zeros(C)
            var = np.zeros(C)
            invstd = np.zeros(C)
        else:
            mean = x.mean(axis=axes)
            var = ((x - _bcast(mean, x)) ** 2).mean(axis=axes)  # biased
            invstd = 1.0 / np.sqrt(var + eps)
            if running_mean is not None:
                running_mean[...] = (1 - momentum) * running_mean + momentum * mean
                running_var[...] = (1 - momentum) * running_var + momentum * var * m / (m - 1)
    else:
        mean = np.asarray(running_mean, dtype=np.float64).copy()
        invstd = 1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    y = (x - _bcast(mean, x)) * _bcast(invstd, x)
    if weight is not None:
        y = y * _bcast(weight, x)
    if bias is not None:
        y = y + _bcast(bias, x)
    return y, mean, invstd


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """y (float64); updates running_mean / running_var in place in training mode."""
    return batch_norm_forward(x, running_mean, running_var, weight, bias, training, momentum, eps)[0]


def batch_norm_backward(grad_out, x, weight, save_mean, save_invstd, training=True,
                        output_mask=(True, True, True)):
    """(grad_x, grad_weight, grad_bias) in float64 (None where output_mask is False).

    With xhat = (x - mean) * invstd and y = w * xhat + b:
    grad_bias = sum(dy), grad_weight = sum(dy * xhat) over (N, *spatial).
    Evaluation (mean, invstd constants): grad_x = dy * w * invstd.
    Training (mean, invstd functions of x, M values per channel):
    grad_x = w * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat)).
    """
    dy = np.asarray(grad_out, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    C = x.shape[1]
    axes = _axes(x)
    m = x.size // C if C else 0
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    xhat = (x - _bcast(save_mean, x)) * _bcast(save_invstd, x)
    sum_dy = dy.sum(axis=axes)
    sum_dy_xhat = (dy * xhat).sum(axis=axes)
    gx = gw = gb = None
    if output_mask[0]:
        if training and m > 0:
            gx = _bcast(w * save_invstd / m, x) * (
                m * dy - _bcast(sum_dy, x) - xhat * _bcast(sum_dy_xhat, x))
        else:
            gx = dy * _bcast(w * np.asarray(save_invstd, dtype=np.float64), x)
    if output_mask[1]:
        gw = sum_dy_xhat
    if output_mask[2]:
        gb = sum_dy
    return gx, gw, gb
