"""batch_norm: CuPy glue over the CUDA kernels in cuda/batch_norm.cu (same signatures as pydl._cpu).

x is the contiguous (N, C, S) view prepared by pydl.functional; every array is a
C-contiguous CuPy array of x's dtype on x's device (None where optional). The kernels
run on CuPy's current stream; a float64 workspace (partials of the deterministic
two-stage reductions, per-channel coefficients) comes from CuPy's pool.
"""
import numpy as np

from .. import _backend as B

__all__ = ["batch_norm_forward_train", "batch_norm_forward_eval", "batch_norm_backward"]


_ws_len = {}  # C -> workspace length (a pure function of C): one binding call per C


def _p(a):
    return 0 if a is None else a.data.ptr


def _workspace(cupy, C):
    n = _ws_len.get(C)
    if n is None:
        n = _ws_len[C] = int(B.cuda().batch_norm_workspace_len(C))
    return cupy.empty(max(n, 1), dtype=np.float64), n


def batch_norm_forward_train(x, weight, bias, running_mean, running_var, y, save_mean, save_invstd,
                             momentum, eps):
    import cupy

    N, C, S = x.shape
    with x.device:
        ws, n = _workspace(cupy, C)
        B.cuda().batch_norm_forward_train(
            _p(x), _p(weight), _p(bias), _p(running_mean), _p(running_var), _p(y), _p(save_mean),
            _p(save_invstd), _p(ws), n, N, C, S, float(momentum), float(eps),
            bool(x.dtype == np.float64), B.stream_ptr(cupy))


def batch_norm_forward_eval(x, weight, bias, running_mean, running_var, y, eps, save_mean=None,
                            save_invstd=None):
    import cupy

    N, C, S = x.shape
    with x.device:  # one kernel, no workspace
        B.cuda().batch_norm_forward_eval(
            _p(x), _p(weight), _p(bias), _p(running_mean), _p(running_var), _p(y), _p(save_mean),
            _p(save_invstd), 0, 0, N, C, S, float(eps), bool(x.dtype == np.float64),
            B.stream_ptr(cupy))


def batch_norm_backward(grad_out, x, weight, save_mean, save_invstd, grad_x, grad_weight, grad_bias,
                        training):
    import cupy

    N, C, S = x.shape
    with x.device:
        ws, n = _workspace(cupy, C)
        B.cuda().batch_norm_backward(
            _p(grad_out), _p(x), _p(weight), _p(save_mean), _p(save_invstd), _p(grad_x),
            _p(grad_weight), _p(grad_bias), _p(ws), n, N, C, S, bool(training),
            bool(x.dtype == np.float64), B.stream_ptr(cupy))
