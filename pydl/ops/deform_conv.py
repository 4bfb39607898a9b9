"""deform_conv: deformable convolution (v1, and v2 with a modulation mask), as
``torchvision.ops.deform_conv2d``, forward and backward, on NumPy or CuPy arrays.

For every kernel tap (i, j) of offset group g and output pixel (oh, ow), the input is
sampled at

    h = oh*sh - ph + i*dh + offset[n, 2*(g*kh*kw + i*kw + j),     oh, ow]
    w = ow*sw - pw + j*dw + offset[n, 2*(g*kh*kw + i*kw + j) + 1, oh, ow]

by bilinear interpolation (neighbours outside the image count as 0; a point outside
(-1, H) x (-1, W) samples 0), times ``mask[n, g*kh*kw + i*kw + j, oh, ow]`` when given.
The samples form a column matrix (deformable im2col) that is multiplied by the weight,
group by group, as in conv2d. ``groups = C // weight.shape[1]`` and
``offset_groups = offset.shape[1] // (2*kh*kw)`` are inferred from the shapes, as
torchvision does. The kernels (``pydl._cpu`` or ``pydl.cuda.deform_conv``) share one
contract:

- ``deform_conv2d_forward(x, offset, mask, w, b, y, sh, sw, ph, pw, dh, dw, groups, offset_groups)``
- ``deform_conv2d_backward(dy, x, offset, mask, w, dx, doffset, dmask, dw, db, sh, sw, ph, pw,
  dh, dw, groups, offset_groups)`` (mask, b and any gradient may be None)
"""
from __future__ import annotations

from .. import _backend

__all__ = ["deform_conv2d", "deform_conv2d_backward", "DeformConv2d"]


def _validate(input, offset, weight, bias, mask, stride, padding, dilation, grad_out=None):
    arrays = dict(input=input, offset=offset, weight=weight, bias=bias, mask=mask)
    if grad_out is not None:
        arrays["grad_out"] = grad_out
    xp = _backend.array_module(**arrays)
    _backend.check_float("input", input, 4)
    _backend.check_float("offset", offset, 4)
    _backend.check_float("weight", weight, 4)
    if mask is not None:
        _backend.check_float("mask", mask, 4)
    if bias is not None:
        _backend.check_float("bias", bias, 1)
    if grad_out is not None:
        _backend.check_float("grad_out", grad_out, 4)
    _backend.check_same_dtype("input", input, offset=offset, weight=weight, bias=bias, mask=mask,
                              grad_out=grad_out)
    s = _backend.pair("stride", stride, minimum=1)
    p = _backend.pair("padding", padding, minimum=0)
    d = _backend.pair("dilation", dilation, minimum=1)
    n, c, h, w = (int(v) for v in input.shape)
    k, cg, kh, kw = (int(v) for v in weight.shape)
    if kh < 1 or kw < 1:
        raise ValueError(f"weight: expected a non-empty kernel, got shape {tuple(weight.shape)}")
    if cg < 1 or c % cg:
        raise ValueError(f"weight: expected shape[1] dividing the {c} input channels (groups = C // "
                         f"weight.shape[1]), got shape {tuple(weight.shape)}")
    groups = c // cg
    if k % groups:
        raise ValueError(f"weight: expected out channels divisible by groups={groups}, got {k}")
    taps = kh * kw
    oc = int(offset.shape[1])
    og = oc // (2 * taps)
    if og < 1 or oc != og * 2 * taps:
        raise ValueError(f"offset: expected shape[1] a positive multiple of 2*kh*kw = {2 * taps}, got "
                         f"shape {tuple(offset.shape)}")
    if c % og:
        raise ValueError(f"input: expected channels divisible by offset_groups={og}, got {c} channels")
    ho = (h + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1
    wo = (w + 2 * p[1] - d[1] * (kw - 1) - 1) // s[1] + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"input: input size (H={h}, W={w}) with padding {p} and dilated kernel "
                         f"{d[0] * (kh - 1) + 1}x{d[1] * (kw - 1) + 1} gives output size ({ho}, {wo}) < 1")
    _backend.check_shape("offset", offset, (n, 2 * og * taps, ho, wo))
    if mask is not None:
        _backend.check_shape("mask", mask, (n, og * taps, ho, wo))
    if bias is not None:
        _backend.check_shape("bias", bias, (k,))
    if grad_out is not None:
        _backend.check_shape("grad_out", grad_out, (n, k, ho, wo))
    # A NaN/inf offset has no sampling position: the kernels' float -> int cast of it is undefined
    # (it disagreed with the reference). One reduction (and one device sync on the GPU).
    if offset.size and not bool(xp.isfinite(offset).all()):
        raise ValueError("offset: expected finite values, got NaN or inf")
    return xp, s, p, d, groups, og, (n, k, ho, wo)


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Deformable convolution, as ``torchvision.ops.deform_conv2d``.

    Parameters
    ----------
    input : ndarray, shape (N, C, H, W), float32 or float64
    offset : ndarray, shape (N, 2*offset_groups*kh*kw, Ho, Wo), same dtype
        (dh, dw) pairs per kernel tap, taps in row-major order, offset groups outermost; finite.
    weight : ndarray, shape (K, C / groups, kh, kw)
    bias : ndarray, shape (K,), optional
    stride, padding, dilation : int or pair of ints
    mask : ndarray, shape (N, offset_groups*kh*kw, Ho, Wo), optional
        Modulation of each sample (v2); None is v1 (all ones).

    Returns
    -------
    y : ndarray, shape (N, K, Ho, Wo), Ho = (H + 2*ph - dh*(kh-1) - 1) // sh + 1
    """
    xp, s, p, d, groups, og, yshape = _validate(input, offset, weight, bias, mask, stride, padding, dilation)
    c = _backend.contiguous
    x, off, w = c(input, xp), c(offset, xp), c(weight, xp)
    m = None if mask is None else c(mask, xp)
    b = None if bias is None else c(bias, xp)
    y = _backend.empty(yshape, x.dtype, xp)
    K = _backend.kernels(xp, "deform_conv")
    K.deform_conv2d_forward(x, off, m, w, b, y, s[0], s[1], p[0], p[1], d[0], d[1], groups, og)
    return y


def deform_conv2d_backward(grad_out, input, offset, weight, mask=None, stride=1, padding=0, dilation=1,
                           output_mask=(True, True, True, True, True)):
    """Gradients of :func:`deform_conv2d` (same arguments; the bias does not enter them).

    Parameters
    ----------
    grad_out : ndarray, shape (N, K, Ho, Wo)
    input, offset, weight, mask : as in :func:`deform_conv2d`
    output_mask : five bools
        Which of (grad_input, grad_offset, grad_weight, grad_bias, grad_mask) to compute.

    Returns
    -------
    grad_input : ndarray, shape (N, C, H, W) or None
    grad_offset : ndarray, shape of offset, or None
    grad_weight : ndarray, shape (K, C / groups, kh, kw) or None
    grad_bias : ndarray, shape (K,) or None
    grad_mask : ndarray, shape of mask, or None (always None when mask is None)

    Notes
    -----
    At sampling points exactly on integer rows/columns the bilinear sample is not
    differentiable in the offset; the one-sided derivative torchvision uses (from the
    floor neighbour) is returned.
    """
    if grad_out is None:  # (None means "forward" to _validate: it reached the kernel's own check)
        raise TypeError("grad_out: expected a float32 or float64 array, got None")
    xp, s, p, d, groups, og, _ = _validate(input, offset, weight, None, mask, stride, padding, dilation,
                                           grad_out=grad_out)
    try:
        om = tuple(bool(v) for v in output_mask)
    except TypeError:
        raise TypeError(f"output_mask: expected five bools, got {output_mask!r}") from None
    if len(om) != 5:
        raise ValueError(f"output_mask: expected five bools, got {output_mask!r}")
    c = _backend.contiguous
    dy, x, off, w = c(grad_out, xp), c(input, xp), c(offset, xp), c(weight, xp)
    m = None if mask is None else c(mask, xp)
    dt = x.dtype
    gx = _backend.empty(x.shape, dt, xp) if om[0] else None
    goff = _backend.empty(off.shape, dt, xp) if om[1] else None
    gw = _backend.empty(w.shape, dt, xp) if om[2] else None
    gb = _backend.empty((w.shape[0],), dt, xp) if om[3] else None
    gm = _backend.empty(m.shape, dt, xp) if (om[4] and m is not None) else None
    K = _backend.kernels(xp, "deform_conv")
    K.deform_conv2d_backward(dy, x, off, m, w, gx, goff, gm, gw, gb, s[0], s[1], p[0], p[1], d[0], d[1],
                             groups, og)
    return gx, goff, gw, gb, gm


class DeformConv2d:
    """Thin layer over :func:`deform_conv2d`, as ``torchvision.ops.DeformConv2d``.

    Holds ``weight`` (out_channels, in_channels / groups, kh, kw) and ``bias`` (or None),
    initialized like torchvision (Kaiming-uniform with a = sqrt(5)). ``forward(input,
    offset, mask=None)`` and ``backward(grad_out)`` (returns (grad_input, grad_offset,
    grad_mask) and stores ``grad_weight`` / ``grad_bias``). Stateless apart from the last
    forward's arguments.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, dtype="float32", seed=None):
        import numpy as np

        in_channels = _backend.int_arg("in_channels", in_channels, minimum=1)
        out_channels = _backend.int_arg("out_channels", out_channels, minimum=1)
        groups = _backend.int_arg("groups", groups, minimum=1)
        if in_channels % groups:
            raise ValueError(f"in_channels: expected a multiple of groups={groups}, got {in_channels}")
        if out_channels % groups:
            raise ValueError(f"out_channels: expected a multiple of groups={groups}, got {out_channels}")
        kh, kw = _backend.pair("kernel_size", kernel_size, minimum=1)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        rng = np.random.default_rng(seed)
        fan_in = in_channels // groups * kh * kw
        bound = 1.0 / np.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) gives 1/sqrt(fan_in)
        self.weight = rng.uniform(-bound, bound, (out_channels, in_channels // groups, kh, kw)).astype(dtype)
        self.bias = rng.uniform(-bound, bound, out_channels).astype(dtype) if bias else None
        self.grad_weight = self.grad_bias = None
        self._saved = None

    def __call__(self, input, offset, mask=None):
        return self.forward(input, offset, mask)

    def forward(self, input, offset, mask=None):
        self._saved = (input, offset, mask)
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation,
                             mask)

    def backward(self, grad_out):
        if self._saved is None:
            raise RuntimeError("DeformConv2d.backward: call forward first")
        input, offset, mask = self._saved
        gx, goff, gw, gb, gm = deform_conv2d_backward(
            grad_out, input, offset, self.weight, mask, self.stride, self.padding, self.dilation,
            output_mask=(True, True, True, self.bias is not None, True))
        self.grad_weight, self.grad_bias = gw, gb
        return gx, goff, gm
