"""roi_pool: max pooling over boxes, as torchvision.ops.roi_pool (NumPy or CuPy arrays).

Boxes come as a (K, 5) array of (batch_index, x1, y1, x2, y2) or as a list of (L_i, 4) arrays
(x1, y1, x2, y2), list entry i holding the boxes of image i; either way the output has one row
per box, in order. The rules (pydl.reference.roi_pool spells them out): corners scaled by
``spatial_scale`` and rounded half away from zero, the roi at least 1x1, bin i spanning
[floor(i * b), ceil((i + 1) * b)) of it (so neighbouring bins may share a row), clipped to the
image; the bin's maximum, or 0 for an empty bin.

Forward returns what backward needs: ``roi_pool(..., return_indices=True)`` also gives the
argmax (int64, ``h * W + w`` within the image plane, -1 for an empty bin), and
``roi_pool_backward(grad_out, indices, boxes, x_shape, output_size, spatial_scale)`` sends each
output's gradient to that element. The backward also takes the forward's geometry because the
GPU gathers (one thread per input element sums the bins that can hold it: no atomics,
bit-identical reruns) and needs the boxes to find those bins.
"""
from __future__ import annotations

import numpy as np

from .. import _backend

__all__ = ["roi_pool", "roi_pool_backward", "RoIPool"]

_INT64 = np.dtype(np.int64)
# |coordinate * spatial_scale| above this is rejected: the kernels' integer geometry stays exact.
_COORD_LIMIT = float(2 ** 30)


def _shape4(name, shape):
    if hasattr(shape, "shape") and hasattr(shape, "dtype"):
        shape = shape.shape
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"{name}: expected a shape tuple (N, C, H, W), got {type(shape).__name__}")
    shape = tuple(_backend.int_arg(name, s, 0) for s in shape)
    if len(shape) != 4:
        raise ValueError(f"{name}: expected a 4-D shape (N, C, H, W), got {shape}")
    return shape


def _rois(xp, dtype, boxes, N):
    """The (K, 5) C-contiguous rois array in dtype from either box format (no checks of values)."""
    if isinstance(boxes, (list, tuple)):
        if len(boxes) > N:
            raise ValueError(f"boxes: expected at most one (L_i, 4) array per image ({N} images), "
                             f"got a list of {len(boxes)}")
        parts = []
        for i, b in enumerate(boxes):
            name = f"boxes[{i}]"
            if _backend.array_module(**{name: b}) is not xp:
                raise TypeError(f"{name}: expected a {xp.__name__} array like x, "
                                f"got {type(b).__module__}.{type(b).__name__}")
            _backend.check_float(name, b, ndim=2)
            if b.dtype != dtype:
                raise TypeError(f"{name}: expected dtype {dtype} (the dtype of x), got {_backend._dtype_str(b.dtype)}")
            if b.shape[1] != 4:
                raise ValueError(f"{name}: expected shape (L, 4) as (x1, y1, x2, y2), got {tuple(b.shape)}")
            col = xp.full((b.shape[0], 1), i, dtype=dtype)
            parts.append(xp.concatenate([col, b], axis=1))
        if not parts:
            return _backend.empty((0, 5), dtype, xp)
        return _backend.contiguous(xp.concatenate(parts, axis=0), xp)
    if _backend.array_module(boxes=boxes) is not xp:
        raise TypeError(f"boxes: expected a {xp.__name__} array like x, "
                        f"got {type(boxes).__module__}.{type(boxes).__name__}")
    _backend.check_float("boxes", boxes, ndim=2)
    if boxes.dtype != dtype:
        raise TypeError(f"boxes: expected dtype {dtype} (the dtype of x), got {_backend._dtype_str(boxes.dtype)}")
    if boxes.shape[1] != 5:
        raise ValueError("boxes: expected shape (K, 5) as (batch_index, x1, y1, x2, y2) or a list of "
                         f"(L, 4) arrays, got shape {tuple(boxes.shape)}")
    return _backend.contiguous(boxes, xp)


def _check_rois(xp, rois, N, scale, indices=None, HW=0):
    """Batch indices integral and in [0, N), coordinates finite and |c * scale| <= 2**30; with
    ``indices``, also its values in [-1, HW). One sync; on the GPU one kernel of ours does all the
    tests and the min/max for the messages run only on failure."""
    if xp is np:
        bad_b = bad_c = False
        if rois.shape[0]:
            b, c = rois[:, 0], rois[:, 1:]
            bad_b = not np.all((b == np.floor(b)) & (b >= 0) & (b < N))
            bad_c = not np.all(np.isfinite(c) & (np.abs(c) * abs(scale) <= _COORD_LIMIT))
        bad_i = indices is not None and indices.size > 0 and bool(np.any((indices < -1) | (indices >= HW)))
    else:
        bad_b, bad_c, bad_i = _backend.kernels(xp, "roi_pool").check_rois(rois, N, scale, indices, HW)
    if bad_b:
        b = rois[:, 0]
        raise ValueError(f"boxes: expected integer batch indices in [0, {N}) in column 0, "
                         f"got values in [{float(b.min())}, {float(b.max())}]"
                         + ("" if bool(xp.all(b == xp.floor(b))) else " (some not integers)"))
    if bad_c:
        c = rois[:, 1:]
        raise ValueError("boxes: expected finite coordinates with |coordinate * spatial_scale| <= 2**30, "
                         f"got values in [{float(c.min())}, {float(c.max())}]")
    if bad_i:
        raise ValueError(f"indices: expected values in [-1, {HW}) (H * W of x_shape), "
                         f"got values in [{int(indices.min())}, {int(indices.max())}]")


def _setup(x, boxes, output_size, spatial_scale):
    """Forward checks: (xp, x contiguous, rois, (PH, PW), scale)."""
    xp = _backend.array_module(x=x)
    _backend.check_float("x", x, ndim=4)
    out = _backend.pair("output_size", output_size, 1)
    scale = _backend.float_arg("spatial_scale", spatial_scale)
    N, C, H, W = x.shape
    rois = _rois(xp, x.dtype, boxes, N)
    _backend.array_module(x=x, boxes=rois)
    if rois.shape[0] > 0 and (H < 1 or W < 1):
        raise ValueError(f"x: expected a non-empty image (H, W >= 1) when there are boxes, got shape {tuple(x.shape)}")
    _check_rois(xp, rois, N, scale)
    return xp, _backend.contiguous(x, xp), rois, out, scale


def _setup_backward(grad_out, boxes, x_shape, output_size, spatial_scale, check=True):
    """Backward checks: (xp, grad_out contiguous, rois, x_shape, scale); ``check=False`` leaves the
    rois values to the caller (roi_pool_backward folds them into its indices check)."""
    xp = _backend.array_module(grad_out=grad_out)
    _backend.check_float("grad_out", grad_out, ndim=4)
    N, C, H, W = _shape4("x_shape", x_shape)
    PH, PW = _backend.pair("output_size", output_size, 1)
    scale = _backend.float_arg("spatial_scale", spatial_scale)
    rois = _rois(xp, grad_out.dtype, boxes, N)
    _backend.array_module(grad_out=grad_out, boxes=rois)
    _backend.check_shape("grad_out", grad_out, (rois.shape[0], C, PH, PW))
    if rois.shape[0] > 0 and (H < 1 or W < 1):
        raise ValueError(f"x_shape: expected a non-empty image (H, W >= 1) when there are boxes, got {(N, C, H, W)}")
    if check:
        _check_rois(xp, rois, N, scale)
    return xp, _backend.contiguous(grad_out, xp), rois, (N, C, H, W), scale


def roi_pool(x, boxes, output_size, spatial_scale=1.0, return_indices=False):
    """RoI max pooling, as ``torchvision.ops.roi_pool``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
    boxes : ndarray, shape (K, 5), x's dtype, or list of ndarrays of shape (L_i, 4)
        (batch_index, x1, y1, x2, y2) rows, or per-image (x1, y1, x2, y2) rows (entry i is
        image i; the list may be shorter than N). Batch indices must be integers in [0, N),
        coordinates finite with ``|coordinate * spatial_scale| <= 2**30``.
    output_size : int or (PH, PW), >= 1
    spatial_scale : float
        Factor from box coordinates to x's pixel grid (e.g. 1/16).
    return_indices : bool
        Also return the argmax that ``roi_pool_backward`` needs.

    Returns
    -------
    y : ndarray, shape (K, C, PH, PW), x's dtype
        Per bin, the maximum of x over the bin (starting from -FLT_MAX, as torchvision, and
        NaN never wins), or 0 for a bin with no pixel inside the image.
    indices : ndarray of int64, shape (K, C, PH, PW), only with ``return_indices``
        ``h * W + w`` of the first strict maximum in row-major order, -1 for an empty bin
        (and for a bin whose values are all NaN or below -FLT_MAX).
    """
    if not isinstance(return_indices, (bool, np.bool_)):
        raise TypeError(f"return_indices: expected a bool, got {type(return_indices).__name__} {return_indices!r}")
    xp, x, rois, (PH, PW), scale = _setup(x, boxes, output_size, spatial_scale)
    K, C = rois.shape[0], x.shape[1]
    y = _backend.empty((K, C, PH, PW), x.dtype, xp)
    ind = _backend.empty((K, C, PH, PW), _INT64, xp) if return_indices else None
    if y.size:
        _backend.kernels(xp, "roi_pool").roi_pool_forward(x, rois, y, ind, scale)
    return (y, ind) if return_indices else y


def roi_pool_backward(grad_out, indices, boxes, x_shape, output_size, spatial_scale=1.0):
    """Gradient of ``roi_pool`` with respect to x.

    Parameters
    ----------
    grad_out : ndarray, shape (K, C, PH, PW)
    indices : ndarray of int64, shape (K, C, PH, PW)
        The argmax from ``roi_pool(..., return_indices=True)``; values in [-1, H * W).
    boxes, output_size, spatial_scale
        As given to the forward (boxes in grad_out's dtype).
    x_shape : tuple (N, C, H, W)

    Returns
    -------
    grad_x : ndarray, shape x_shape
        ``grad_x[n, c].flat[indices[k, c, i, j]] += grad_out[k, c, i, j]`` over the boxes k of
        image n. Entries -1, and entries that do not lie in their own bin (which roi_pool never
        produces), pass nothing. Sums run in a fixed order: bit-identical reruns on CPU and GPU.
    """
    xp, dy, rois, shape, scale = _setup_backward(grad_out, boxes, x_shape, output_size, spatial_scale, check=False)
    try:
        if not hasattr(indices, "dtype"):
            raise TypeError(f"indices: expected an int64 array, got {type(indices).__name__}")
        _backend.array_module(grad_out=grad_out, indices=indices)
        if indices.dtype != _INT64:
            raise TypeError(f"indices: expected dtype int64, got {_backend._dtype_str(indices.dtype)}")
        _backend.check_shape("indices", indices, dy.shape)
    except (TypeError, ValueError):
        _check_rois(xp, rois, shape[0], scale)  # a bad box is reported first, as before
        raise
    indices = _backend.contiguous(indices, xp)
    _check_rois(xp, rois, shape[0], scale, indices, shape[2] * shape[3])
    dx = _backend.empty(shape, dy.dtype, xp)
    if dx.size == 0:
        return dx
    if rois.shape[0] == 0:
        dx.fill(0)
        return dx
    _backend.kernels(xp, "roi_pool").roi_pool_backward(dy, indices, rois, dx, scale)
    return dx


class RoIPool:
    """torchvision.ops.RoIPool: ``RoIPool(output_size, spatial_scale)(x, boxes)``.

    ``backward(grad_out)`` returns the gradient with respect to x of the last call.
    """

    def __init__(self, output_size, spatial_scale):
        self.output_size = _backend.pair("output_size", output_size, 1)
        self.spatial_scale = _backend.float_arg("spatial_scale", spatial_scale)
        self._saved = None

    def forward(self, x, boxes):
        y, ind = roi_pool(x, boxes, self.output_size, self.spatial_scale, return_indices=True)
        self._saved = (ind, boxes, tuple(x.shape))
        return y

    __call__ = forward

    def backward(self, grad_out):
        if self._saved is None:
            raise RuntimeError("RoIPool.backward: call forward first")
        ind, boxes, shape = self._saved
        return roi_pool_backward(grad_out, ind, boxes, shape, self.output_size, self.spatial_scale)

    def __repr__(self):
        return f"RoIPool(output_size={self.output_size}, spatial_scale={self.spatial_scale})"
