"""cross_entropy: CuPy glue over the CUDA kernels in cuda/cross_entropy.cu (same signatures as pydl._cpu).

Every function takes CuPy arrays (C-contiguous, allocated by pydl.functional), enters
their device and launches on CuPy's current stream; nothing here synchronizes.
"""
import numpy as np

from .. import _backend


def _dbl(a) -> bool:
    return a.dtype == np.float64


def softmax_forward(x, y, outer, L, inner, log):
    import cupy

    with x.device:
        _backend.cuda().softmax_forward(_backend.ptr(x), _backend.ptr(y), outer, L, inner, bool(log), _dbl(x),
                                        _backend.stream_ptr(cupy))


def softmax_backward(grad_out, y, grad_x, outer, L, inner, log):
    import cupy

    with y.device:
        _backend.cuda().softmax_backward(_backend.ptr(grad_out), _backend.ptr(y), _backend.ptr(grad_x), outer, L,
                                         inner, bool(log), _dbl(y), _backend.stream_ptr(cupy))


def _forward(prob, logits, target, weight, loss, stats, norm, outer, C, inner, ignore_index, label_smoothing,
             reduction, has_weight):
    import cupy

    with logits.device:
        k = _backend.cuda()
        nwork = k.cross_entropy_workspace(outer, C, inner)
        work = cupy.empty((max(nwork, 1),), dtype=np.float64)  # per-block partial sums
        # Class indices: the kernel counts invalid ones into norm[1]; the binding reads that
        # count back (8 bytes via pinned memory, one wait) so the caller can raise.
        bad = k.cross_entropy_forward(_backend.ptr(logits), _backend.ptr(target),
                                      _backend.ptr(weight) if has_weight else 0, _backend.ptr(loss),
                                      _backend.ptr(stats), _backend.ptr(norm), _backend.ptr(work), nwork, outer,
                                      C, inner, ignore_index, float(label_smoothing), reduction, prob,
                                      _dbl(logits), _backend.stream_ptr(cupy), not prob)
    return None if prob else bad


def _backward(prob, grad_loss, logits, target, weight, stats, norm, grad_logits, outer, C, inner, ignore_index,
              label_smoothing, reduction, has_weight):
    import cupy

    with logits.device:
        _backend.cuda().cross_entropy_backward(
            _backend.ptr(grad_loss), _backend.ptr(logits), _backend.ptr(target),
            _backend.ptr(weight) if has_weight else 0, _backend.ptr(stats), _backend.ptr(norm),
            _backend.ptr(grad_logits), outer, C, inner, ignore_index, float(label_smoothing), reduction, prob,
            _dbl(logits), _backend.stream_ptr(cupy))


def cross_entropy_forward(logits, target, weight, loss, stats, norm, outer, C, inner, ignore_index,
                          label_smoothing, reduction, has_weight):
    """Returns the number of invalid class indices (already read back: no further sync)."""
    return _forward(False, logits, target, weight, loss, stats, norm, outer, C, inner, ignore_index, label_smoothing,
             reduction, has_weight)


def cross_entropy_prob_forward(logits, target, weight, loss, stats, norm, outer, C, inner, ignore_index,
                               label_smoothing, reduction, has_weight):
    return _forward(True, logits, target, weight, loss, stats, norm, outer, C, inner, ignore_index, label_smoothing,
             reduction, has_weight)


def cross_entropy_backward(grad_loss, logits, target, weight, stats, norm, grad_logits, outer, C, inner,
                           ignore_index, label_smoothing, reduction, has_weight):
    _backward(False, grad_loss, logits, target, weight, stats, norm, grad_logits, outer, C, inner, ignore_index,
              label_smoothing, reduction, has_weight)


def cross_entropy_prob_backward(grad_loss, logits, target, weight, stats, norm, grad_logits, outer, C, inner,
                                ignore_index, label_smoothing, reduction, has_weight):
    _backward(True, grad_loss, logits, target, weight, stats, norm, grad_logits, outer, C, inner, ignore_index,
              label_smoothing, reduction, has_weight)
