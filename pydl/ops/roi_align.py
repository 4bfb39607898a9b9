"""roi_align: bilinear RoI pooling, as torchvision.ops.roi_align (NumPy or CuPy arrays).

Boxes as for roi_pool: a (K, 5) array of (batch_index, x1, y1, x2, y2) or a list of (L_i, 4)
arrays, entry i for image i. Each box is split into PH x PW bins without rounding; each bin
averages a gh x gw grid of bilinear samples (gh = sampling_ratio, or ceil(box height / PH)
when sampling_ratio <= 0). ``aligned=True`` shifts the box by -0.5 pixel (pixel centres at
integer + 0.5) and lets malformed boxes stay smaller than 1 pixel. pydl.reference.roi_align
spells out every rule, including torchvision's border rules for the samples.

``roi_align_backward(grad_out, boxes, x_shape, output_size, ...)`` is the exact adjoint: the
gradient of each sample goes to its four bilinear neighbours. It runs in a fixed summation
order on CPU and GPU (no atomics), so reruns are bit-identical.
"""
from __future__ import annotations

from .. import _backend
from .roi_pool import _setup, _setup_backward

__all__ = ["roi_align", "roi_align_backward", "RoIAlign"]

_MAX_SAMPLING_RATIO = 1024


def _sampling(sampling_ratio, aligned):
    sr = _backend.int_arg("sampling_ratio", sampling_ratio)
    # sr * sr samples per bin: past this bound a call runs for hours or exhausts memory.
    if sr > _MAX_SAMPLING_RATIO:
        raise ValueError(f"sampling_ratio: expected at most {_MAX_SAMPLING_RATIO} (sr * sr bilinear samples "
                         f"per bin; <= 0 for torchvision's adaptive grid), got {sr}")
    if not isinstance(aligned, bool) and type(aligned).__name__ != "bool_":
        raise TypeError(f"aligned: expected a bool, got {type(aligned).__name__} {aligned!r}")
    return sr, bool(aligned)


def roi_align(x, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """RoIAlign, as ``torchvision.ops.roi_align``.

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
    sampling_ratio : int
        Samples per bin along each axis; <= 0: ceil(box size / output size), per box.
    aligned : bool
        Shift boxes by -0.5 pixel (torchvision's ``aligned=True``).

    Returns
    -------
    ndarray, shape (K, C, PH, PW), x's dtype
        Per bin, the mean of its samples; a sample outside [-1, H] x [-1, W] counts as 0, one
        in the border band is clamped to the edge (torchvision's rule).
    """
    xp, x, rois, (PH, PW), scale = _setup(x, boxes, output_size, spatial_scale)
    sr, al = _sampling(sampling_ratio, aligned)
    y = _backend.empty((rois.shape[0], x.shape[1], PH, PW), x.dtype, xp)
    if y.size:
        _backend.kernels(xp, "roi_align").roi_align_forward(x, rois, y, scale, sr, al)
    return y


def roi_align_backward(grad_out, boxes, x_shape, output_size, spatial_scale=1.0, sampling_ratio=-1,
                       aligned=False):
    """Gradient of ``roi_align`` with respect to x.

    Parameters
    ----------
    grad_out : ndarray, shape (K, C, PH, PW)
    boxes, output_size, spatial_scale, sampling_ratio, aligned
        As given to the forward (boxes in grad_out's dtype).
    x_shape : tuple (N, C, H, W)

    Returns
    -------
    grad_x : ndarray, shape x_shape, grad_out's dtype
        Every sample of bin (k, i, j) adds ``grad_out[k, c, i, j] / count`` times its bilinear
        weights to its four neighbours in image ``batch_index[k]``. Deterministic: bit-identical
        reruns on CPU and GPU.
    """
    xp, dy, rois, shape, scale = _setup_backward(grad_out, boxes, x_shape, output_size, spatial_scale)
    sr, al = _sampling(sampling_ratio, aligned)
    dx = _backend.empty(shape, dy.dtype, xp)
    if dx.size == 0:
        return dx
    if rois.shape[0] == 0:
        dx.fill(0)
        return dx
    _backend.kernels(xp, "roi_align").roi_align_backward(dy, rois, dx, scale, sr, al)
    return dx


class RoIAlign:
    """torchvision.ops.RoIAlign: ``RoIAlign(output_size, spatial_scale, sampling_ratio, aligned)(x, boxes)``.

    ``backward(grad_out)`` returns the gradient with respect to x of the last call.
    """

    def __init__(self, output_size, spatial_scale, sampling_ratio, aligned=False):
        self.output_size = _backend.pair("output_size", output_size, 1)
        self.spatial_scale = _backend.float_arg("spatial_scale", spatial_scale)
        self.sampling_ratio, self.aligned = _sampling(sampling_ratio, aligned)
        self._saved = None

    def forward(self, x, boxes):
        y = roi_align(x, boxes, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)
        self._saved = (boxes, tuple(x.shape))
        return y

    __call__ = forward

    def backward(self, grad_out):
        if self._saved is None:
            raise RuntimeError("RoIAlign.backward: call forward first")
        boxes, shape = self._saved
        return roi_align_backward(grad_out, boxes, shape, self.output_size, self.spatial_scale,
                                  self.sampling_ratio, self.aligned)

    def __repr__(self):
        return (f"RoIAlign(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})")
