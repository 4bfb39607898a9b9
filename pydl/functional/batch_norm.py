"""batch_norm: functional forward/backward (dispatch in pydl._backend).

Semantics follow ``torch.nn.functional.batch_norm``: statistics per channel (axis 1)
over the batch and spatial axes; training mode normalizes with the biased batch
variance and updates ``running_mean`` / ``running_var`` in place with the unbiased one,
``r = (1 - momentum) * r + momentum * stat``; evaluation mode uses the running buffers.
``batch_norm_forward`` also returns the (mean, inverse std) that ``batch_norm_backward``
needs, so the backward is stateless.
"""
from __future__ import annotations

import numpy as np

from .. import _backend as B

__all__ = ["batch_norm", "batch_norm_forward", "batch_norm_backward"]


def _check_training(training) -> bool:
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training: expected a bool, got {type(training).__name__} {training!r}")
    return bool(training)


def _check_vector(name, a, x, C):
    if a is None:
        return
    B.check_same_dtype("x", x, **{name: a})
    B.check_shape(name, a, (C,))


def _as3d(x, xp):
    """(N, C, *spatial) -> contiguous (N, C, S) view (a copy only for non-contiguous x)."""
    x = B.contiguous(x, xp)
    N, C = x.shape[0], x.shape[1]
    S = 1
    for d in x.shape[2:]:  # a plain product: np.prod costs microseconds per call
        S *= int(d)
    return x.reshape(N, C, S)


def batch_norm_forward(x, running_mean, running_var, weight=None, bias=None, training=False,
                       momentum=0.1, eps=1e-5):
    """Batch normalization forward that also returns the statistics for the backward.

    Parameters
    ----------
    x : ndarray, shape (N, C), (N, C, L) or (N, C, H, W)
        float32 or float64, NumPy (CPU kernels) or CuPy (CUDA kernels).
    running_mean, running_var : ndarray, shape (C,), or None
        Running statistics, same dtype and array type as x. Required in evaluation
        mode. In training mode they are updated IN PLACE (when given; both or neither):
        ``running_mean = (1 - momentum) * running_mean + momentum * batch_mean`` and
        ``running_var = (1 - momentum) * running_var + momentum * unbiased_batch_var``.
    weight, bias : ndarray, shape (C,), optional
        Affine scale (default 1) and shift (default 0).
    training : bool
        Batch statistics (True) or running statistics (False).
    momentum : float in [0, 1]
    eps : float >= 0
        Added to the variance before the square root.

    Returns
    -------
    y : ndarray, shape of x
        ``(x - mean) * invstd * weight + bias``.
    save_mean : ndarray, shape (C,)
        The mean used: the batch mean (training) or a copy of running_mean (evaluation).
    save_invstd : ndarray, shape (C,)
        ``1 / sqrt(var + eps)`` with the biased batch variance (training) or running_var
        (evaluation).

    Raises
    ------
    ValueError
        In training mode when there is a single value per channel (N * H * W == 1), as
        PyTorch; for shapes that don't match x's channel count; invalid momentum / eps;
        missing running buffers in evaluation mode.
    TypeError
        Wrong array types or dtypes.

    Notes
    -----
    Statistics use two passes (mean, then squared deviations) with double accumulation
    on the CPU, so data with a large offset keeps its accuracy. A batch of size 0 gives
    an empty y, zero save_mean / save_invstd and leaves the running buffers unchanged.
    """
    xp = B.array_module(x=x, running_mean=running_mean, running_var=running_var, weight=weight,
                        bias=bias)
    B.check_float("x", x, ndim=(2, 3, 4))
    training = _check_training(training)
    momentum = B.float_arg("momentum", momentum, minimum=0.0, maximum=1.0)
    eps = B.float_arg("eps", eps, minimum=0.0)
    C = x.shape[1]
    for name, a in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        _check_vector(name, a, x, C)
    if (running_mean is None) != (running_var is None):
        given = "running_mean" if running_var is None else "running_var"
        raise ValueError(f"running_mean, running_var: expected both or neither, got only {given}")
    if not training and running_mean is None:
        raise ValueError("running_mean, running_var: expected arrays in evaluation mode, got None")
    if training and running_mean is not None:
        for name, a in (("running_mean", running_mean), ("running_var", running_var)):
            B.check_writeable(name, a)
    M = x.size // C if C else 0
    if training and M == 1:
        raise ValueError(
            f"x: expected more than 1 value per channel when training, got input shape {tuple(x.shape)}")

    x3 = _as3d(x, xp)
    w = None if weight is None else B.contiguous(weight, xp)
    b = None if bias is None else B.contiguous(bias, xp)
    k = B.kernels(xp, "batch_norm")
    y = B.empty(x3.shape, x.dtype, xp)
    if training:
        save_mean = B.empty((C,), x.dtype, xp)
        save_invstd = B.empty((C,), x.dtype, xp)
        rm = rv = None
        if running_mean is not None:
            rm = B.contiguous(running_mean, xp)
            rv = B.contiguous(running_var, xp)
        k.batch_norm_forward_train(x3, w, b, rm, rv, y, save_mean, save_invstd, momentum, eps)
        # The kernel updated contiguous copies of strided running buffers: write them back.
        if rm is not None and rm is not running_mean:
            running_mean[...] = rm
        if rv is not None and rv is not running_var:
            running_var[...] = rv
    else:
        rm = B.contiguous(running_mean, xp)
        rv = B.contiguous(running_var, xp)
        save_mean = B.empty((C,), x.dtype, xp)
        save_invstd = B.empty((C,), x.dtype, xp)
        # The kernel also writes save_mean = running_mean, save_invstd = 1/sqrt(running_var + eps).
        k.batch_norm_forward_eval(x3, w, b, rm, rv, y, eps, save_mean, save_invstd)
    return y.reshape(x.shape), save_mean, save_invstd


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalization over axis 1, as ``torch.nn.functional.batch_norm``.

    Parameters
    ----------
    x : ndarray, shape (N, C), (N, C, L) or (N, C, H, W)
    running_mean, running_var : ndarray, shape (C,), or None
        Updated in place in training mode (see ``batch_norm_forward``).
    weight, bias : ndarray, shape (C,), optional
    training : bool
    momentum : float in [0, 1]
    eps : float >= 0

    Returns
    -------
    y : ndarray, shape of x

    See ``batch_norm_forward`` (which also returns the statistics for the backward) for
    the full contract.
    """
    return batch_norm_forward(x, running_mean, running_var, weight, bias, training, momentum, eps)[0]


def batch_norm_backward(grad_out, x, weight, save_mean, save_invstd, training=True,
                        output_mask=(True, True, True)):
    """Gradients of ``batch_norm_forward`` with respect to x, weight and bias.

    Parameters
    ----------
    grad_out : ndarray, shape of x
    x : ndarray, shape (N, C), (N, C, L) or (N, C, H, W)
        The forward input.
    weight : ndarray, shape (C,), or None (scale 1)
    save_mean, save_invstd : ndarray, shape (C,)
        As returned by ``batch_norm_forward`` with the same ``training``.
    training : bool
        True: mean and invstd were batch statistics (functions of x);
        False: they were constants (running statistics).
    output_mask : three bools
        Which of (grad_x, grad_weight, grad_bias) to compute; the others are None.

    Returns
    -------
    grad_x : ndarray, shape of x, or None
        Training: ``w * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat))``
        with ``xhat = (x - mean) * invstd`` and M = N * H * W values per channel;
        evaluation: ``dy * w * invstd``.
    grad_weight : ndarray, shape (C,), or None
        ``sum(dy * xhat)`` over (N, H, W) (computed whether or not weight is None).
    grad_bias : ndarray, shape (C,), or None
        ``sum(dy)`` over (N, H, W).
    """
    xp = B.array_module(grad_out=grad_out, x=x, weight=weight, save_mean=save_mean,
                        save_invstd=save_invstd)
    B.check_float("x", x, ndim=(2, 3, 4))
    B.check_same_dtype("x", x, grad_out=grad_out)
    B.check_shape("grad_out", grad_out, x.shape)
    training = _check_training(training)
    if not (isinstance(output_mask, (tuple, list)) and len(output_mask) == 3):
        raise ValueError(f"output_mask: expected three bools, got {output_mask!r}")
    mask = [bool(v) for v in output_mask]
    C = x.shape[1]
    if save_mean is None or save_invstd is None:
        raise ValueError("save_mean, save_invstd: expected arrays from batch_norm_forward, got None")
    for name, a in (("weight", weight), ("save_mean", save_mean), ("save_invstd", save_invstd)):
        _check_vector(name, a, x, C)

    x3 = _as3d(x, xp)
    dy3 = B.contiguous(grad_out, xp).reshape(x3.shape)
    dx = B.empty(x3.shape, x.dtype, xp) if mask[0] else None
    dw = B.empty((C,), x.dtype, xp) if mask[1] else None
    db = B.empty((C,), x.dtype, xp) if mask[2] else None
    w = None if weight is None else B.contiguous(weight, xp)
    k = B.kernels(xp, "batch_norm")
    k.batch_norm_backward(dy3, x3, w, B.contiguous(save_mean, xp), B.contiguous(save_invstd, xp),
                          dx, dw, db, training)
    return (None if dx is None else dx.reshape(x.shape)), dw, db

