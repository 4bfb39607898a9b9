"""conv: 2-D convolution and transposed convolution, forward and backward.

Semantics follow ``torch.nn.functional.conv2d`` / ``conv_transpose2d`` (cross-correlation,
NCHW, weight (K, C/groups, kh, kw) for conv2d and (C_in, C_out/groups, kh, kw) for the
transposed convolution). Arguments are validated here, before dispatch; the kernels
(``pydl._cpu`` or ``pydl.cuda.conv``) share one contract:

- ``conv2d_forward(x, w, b, y, sh, sw, ph, pw, dh, dw, groups, activation=0, negative_slope=0.01,
  residual=None)`` (the epilogue: y = act(conv + b + residual), activation numbered as ACTIVATIONS)
- ``conv2d_backward_input(dy, w, dx, ...)``, ``conv2d_backward_weight(dy, x, dw, ...)``
- ``conv2d_backward_bias(dy, db)``

where ph/pw are the top/left padding and the bottom/right padding is implied by the
output size (PyTorch puts the odd extra of ``padding='same'`` on the bottom/right).
A transposed convolution is the x-adjoint of a convolution with the same weight, so its
forward is ``conv2d_backward_input`` and its backward reuses ``conv2d_forward`` and
``conv2d_backward_weight``.

CPU memory: the im2col column buffer of one call is capped (64 MiB by default, see
:func:`set_conv_workspace_limit`); a batch is processed in chunks under the cap.
"""
from __future__ import annotations

from .. import _backend, _geometry

__all__ = [
    "conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward",
    "set_conv_workspace_limit", "get_conv_workspace_limit",
]


def set_conv_workspace_limit(nbytes: int) -> None:
    """Cap, in bytes, on the CPU column buffer (im2col/col2im) of one convolution call.

    The batch (and, for very large images, the output pixels) is processed in chunks so
    the buffer stays under the cap; default 64 MiB. The buffer is kept per calling thread
    between calls. Only a single column larger than the cap (C/groups*kh*kw*groups + K
    elements) can exceed it.
    """
    nbytes = _backend.int_arg("nbytes", nbytes, minimum=1)
    _backend.cpu().set_conv_workspace_limit(nbytes)


def get_conv_workspace_limit() -> int:
    """The current cap of :func:`set_conv_workspace_limit`, in bytes."""
    return int(_backend.cpu().get_conv_workspace_limit())


# ---------------------------------------------------------------- validation

def _check_common(x, weight, bias, x_name="x"):
    xp = _backend.array_module(**{x_name: x}, weight=weight, bias=bias)
    _backend.check_float(x_name, x, 4)
    _backend.check_float("weight", weight, 4)
    if x.shape[2] < 1 or x.shape[3] < 1:  # as PyTorch (a transposed conv kernel divides by H*W)
        raise ValueError(f"{x_name}: expected non-empty spatial dimensions (H, W >= 1), got shape {tuple(x.shape)}")
    _backend.check_same_dtype(x_name, x, weight=weight, bias=bias)
    if bias is not None and bias.ndim != 1:
        raise ValueError(f"bias: expected a 1-D array, got shape {tuple(bias.shape)}")
    return xp


def _groups(groups):
    return _backend.int_arg("groups", groups, minimum=1)


def _groups_fit(groups, c):
    # 0 channels divide by any groups, and the kernels loop over groups: groups=2**62 hung.
    if groups > max(c, 1):
        raise ValueError(f"groups: expected at most the number of input channels ({c}), got {groups}")


def _conv_params(x, weight, stride, padding, dilation, groups, x_name="x"):
    """(stride, top/left padding, dilation, groups, (Ho, Wo)) of conv2d, validated."""
    stride = _backend.pair("stride", stride, minimum=1)
    dilation = _backend.pair("dilation", dilation, minimum=1)
    groups = _groups(groups)
    n, c, h, w = x.shape
    k, cg, kh, kw = weight.shape
    if c % groups:
        raise ValueError(f"{x_name}: expected channels divisible by groups={groups}, got {c} channels")
    _groups_fit(groups, c)
    if k % groups:
        raise ValueError(f"weight: expected out channels divisible by groups={groups}, got {k}")
    if cg * groups != c:
        raise ValueError(f"weight: expected shape (K, {c // groups}, kh, kw) for {c} input channels and "
                         f"groups={groups}, got {tuple(weight.shape)}")
    if kh < 1 or kw < 1:
        raise ValueError(f"weight: expected a non-empty kernel, got shape {tuple(weight.shape)}")
    if isinstance(padding, str):
        if padding == "valid":
            pads = ((0, 0), (0, 0))
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding: 'same' is not supported for strided convolutions (stride={stride})")
            pads = (_geometry.same_padding(kh, dilation[0]), _geometry.same_padding(kw, dilation[1]))
        else:
            raise ValueError(f"padding: expected an int, a pair, 'same' or 'valid', got {padding!r}")
    else:
        p = _backend.pair("padding", padding, minimum=0)
        pads = ((p[0], p[0]), (p[1], p[1]))
    ho = _geometry.conv_out_size(h + pads[0][1] - pads[0][0], kh, stride[0], pads[0][0], dilation[0])
    wo = _geometry.conv_out_size(w + pads[1][1] - pads[1][0], kw, stride[1], pads[1][0], dilation[1])
    if ho < 1 or wo < 1:
        raise ValueError(
            f"{x_name}: input size (H={h}, W={w}) with padding {padding!r} and dilated kernel "
            f"{dilation[0] * (kh - 1) + 1}x{dilation[1] * (kw - 1) + 1} gives output size "
            f"({ho}, {wo}) < 1")
    return stride, (pads[0][0], pads[1][0]), dilation, groups, (ho, wo)


def _check_bias(bias, k):
    if bias is not None and bias.shape[0] != k:
        raise ValueError(f"bias: expected shape ({k},), got {tuple(bias.shape)}")


def _mask(output_mask):
    try:
        m = tuple(bool(v) for v in output_mask)
    except TypeError:
        raise TypeError(f"output_mask: expected three bools, got {output_mask!r}") from None
    if len(m) != 3:
        raise ValueError(f"output_mask: expected three bools, got {output_mask!r}")
    return m


# ---------------------------------------------------------------- conv2d

# Activations conv2d can end with, in the kernels' numbering (csrc/epilogue.h's Act).
ACTIVATIONS = {None: 0, "relu": 1, "relu6": 2, "leaky_relu": 3, "silu": 4, "hardswish": 5}


def _epilogue(activation, negative_slope, residual, x, y_shape, xp):
    """(activation code, slope, residual) of a fused conv2d call, validated."""
    if not (activation is None or isinstance(activation, str)) or activation not in ACTIVATIONS:
        names = ", ".join(repr(a) for a in ACTIVATIONS)
        raise ValueError(f"activation: expected one of {names}, got {activation!r}")
    slope = _backend.float_arg("negative_slope", negative_slope)
    if residual is not None:
        _backend.array_module(x=x, residual=residual)
        _backend.check_float("residual", residual, 4)
        _backend.check_same_dtype("x", x, residual=residual)
        _backend.check_shape("residual", residual, y_shape)
        residual = _backend.contiguous(residual, xp)
    return ACTIVATIONS[activation], slope, residual


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None,
           residual=None, negative_slope=0.01):
    """2-D convolution (cross-correlation), as ``torch.nn.functional.conv2d``, optionally fused
    with what follows it in inference: ``y = activation(conv2d(x, weight) + bias + residual)``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
    weight : ndarray, shape (K, C / groups, kh, kw), same dtype
    bias : ndarray, shape (K,), optional
    stride, dilation : int or pair of ints (>= 1)
    padding : int, pair of ints, 'valid' or 'same'
        'same' keeps H, W (stride 1 only); for an even dilated kernel the extra row/column
        of padding goes to the bottom/right, as PyTorch does.
    groups : int, dividing C and K
    activation : None, 'relu', 'relu6', 'leaky_relu', 'silu' or 'hardswish' (keyword only)
        Applied to each output value right after it is computed, while it is in cache (pydl's
        own keyword: PyTorch has none). Same math as ``pydl.functional.relu`` etc.
    residual : ndarray, shape (N, K, Ho, Wo), same dtype, optional (keyword only)
        Added before the activation (a ResNet block's shortcut).
    negative_slope : float
        leaky_relu's slope (default 0.01, as PyTorch's).

    A fused call has no backward: training calls conv2d and the activations separately
    (:func:`conv2d_backward` and e.g. ``relu_backward``); ``pydl.nn.utils.fuse`` builds
    fused inference models.

    Returns
    -------
    y : ndarray, shape (N, K, Ho, Wo), Ho = floor((H + pad_top + pad_bottom - dh*(kh-1) - 1) / sh) + 1
    """
    xp = _check_common(x, weight, bias)
    s, p, d, groups, (ho, wo) = _conv_params(x, weight, stride, padding, dilation, groups)
    _check_bias(bias, weight.shape[0])
    y_shape = (x.shape[0], weight.shape[0], ho, wo)
    act, slope, residual = _epilogue(activation, negative_slope, residual, x, y_shape, xp)
    x, weight = _backend.contiguous(x, xp), _backend.contiguous(weight, xp)
    bias = None if bias is None else _backend.contiguous(bias, xp)
    y = _backend.empty(y_shape, x.dtype, xp)
    K = _backend.kernels(xp, "conv")
    K.conv2d_forward(x, weight, bias, y, s[0], s[1], p[0], p[1], d[0], d[1], groups, act, slope, residual)
    return y


def conv2d_backward(grad_out, x, weight, stride=1, padding=0, dilation=1, groups=1,
                    output_mask=(True, True, True), *, activation=None, residual=None):
    """Gradients of :func:`conv2d` (with the same arguments; a fused call's ``activation`` and
    ``residual`` have no backward here: a TypeError says to train with the unfused functions).

    Parameters
    ----------
    grad_out : ndarray, shape (N, K, Ho, Wo)
    x : ndarray, shape (N, C, H, W)
    weight : ndarray, shape (K, C / groups, kh, kw)
    output_mask : three bools
        Which of (grad_x, grad_weight, grad_bias) to compute.

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W) or None
    grad_weight : ndarray, shape (K, C / groups, kh, kw) or None
    grad_bias : ndarray, shape (K,) or None
    """
    if activation is not None or residual is not None:
        raise TypeError("activation, residual: a fused conv2d call has no backward; for training call "
                        "conv2d without them, then the activation and the residual add, and "
                        "backpropagate through each (e.g. relu_backward, then conv2d_backward)")
    xp = _backend.array_module(grad_out=grad_out, x=x, weight=weight)
    _check_common(x, weight, None)
    _backend.check_float("grad_out", grad_out, 4)
    _backend.check_same_dtype("x", x, grad_out=grad_out)
    s, p, d, groups, (ho, wo) = _conv_params(x, weight, stride, padding, dilation, groups)
    mask = _mask(output_mask)
    n, k = x.shape[0], weight.shape[0]
    _backend.check_shape("grad_out", grad_out, (n, k, ho, wo))
    grad_out = _backend.contiguous(grad_out, xp)
    x, weight = _backend.contiguous(x, xp), _backend.contiguous(weight, xp)
    K = _backend.kernels(xp, "conv")
    gx = gw = gb = None
    if mask[0]:
        gx = _backend.empty(x.shape, x.dtype, xp)
        K.conv2d_backward_input(grad_out, weight, gx, s[0], s[1], p[0], p[1], d[0], d[1], groups)
    if mask[1]:
        gw = _backend.empty(weight.shape, x.dtype, xp)
        K.conv2d_backward_weight(grad_out, x, gw, s[0], s[1], p[0], p[1], d[0], d[1], groups)
    if mask[2]:
        gb = _backend.empty((k,), x.dtype, xp)
        K.conv2d_backward_bias(grad_out, gb)
    return gx, gw, gb


# ---------------------------------------------------------------- conv_transpose2d

def _transpose_params(x, weight, stride, padding, output_padding, groups, dilation):
    stride = _backend.pair("stride", stride, minimum=1)
    padding = _backend.pair("padding", padding, minimum=0)
    output_padding = _backend.pair("output_padding", output_padding, minimum=0)
    dilation = _backend.pair("dilation", dilation, minimum=1)
    groups = _groups(groups)
    n, cin, h, w = x.shape
    wc, cog, kh, kw = weight.shape
    if cin % groups:
        raise ValueError(f"x: expected channels divisible by groups={groups}, got {cin} channels")
    _groups_fit(groups, cin)
    if wc != cin:
        raise ValueError(f"weight: expected shape ({cin}, C_out / groups, kh, kw) for {cin} input channels, "
                         f"got {tuple(weight.shape)}")
    if kh < 1 or kw < 1 or cog < 1:
        raise ValueError(f"weight: expected non-empty dimensions, got shape {tuple(weight.shape)}")
    for a in range(2):
        if output_padding[a] >= stride[a] and output_padding[a] >= dilation[a]:
            raise ValueError(
                f"output_padding: expected a value smaller than either stride or dilation, got "
                f"output_padding={output_padding}, stride={stride}, dilation={dilation}")
    ho = _geometry.conv_transpose_out_size(h, kh, stride[0], padding[0], dilation[0], output_padding[0])
    wo = _geometry.conv_transpose_out_size(w, kw, stride[1], padding[1], dilation[1], output_padding[1])
    if ho < 1 or wo < 1:
        raise ValueError(
            f"x: input size (H={h}, W={w}) with padding {padding}, stride {stride} and dilated kernel "
            f"{dilation[0] * (kh - 1) + 1}x{dilation[1] * (kw - 1) + 1} gives output size ({ho}, {wo}) < 1")
    return stride, padding, dilation, groups, (cog * groups, ho, wo)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """2-D transposed convolution, as ``torch.nn.functional.conv_transpose2d``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    weight : ndarray, shape (C_in, C_out / groups, kh, kw)
    bias : ndarray, shape (C_out,), optional
    stride, padding, output_padding, dilation : int or pair of ints
        output_padding must be smaller than stride or dilation (PyTorch's rule).
    groups : int, dividing C_in and C_out

    Returns
    -------
    y : ndarray, shape (N, C_out, Ho, Wo), Ho = (H - 1)*sh - 2*ph + dh*(kh - 1) + oph + 1
    """
    xp = _check_common(x, weight, bias)
    s, p, d, groups, (cout, ho, wo) = _transpose_params(x, weight, stride, padding, output_padding,
                                                        groups, dilation)
    _check_bias(bias, cout)
    x, weight = _backend.contiguous(x, xp), _backend.contiguous(weight, xp)
    y = _backend.empty((x.shape[0], cout, ho, wo), x.dtype, xp)
    K = _backend.kernels(xp, "conv")
    # y is the x-gradient of the convolution of y-shaped input with this weight.
    K.conv2d_backward_input(x, weight, y, s[0], s[1], p[0], p[1], d[0], d[1], groups)
    if bias is not None:
        y += bias.reshape(1, cout, 1, 1)
    return y


def conv_transpose2d_backward(grad_out, x, weight, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1, output_mask=(True, True, True)):
    """Gradients of :func:`conv_transpose2d` (with the same arguments).

    Parameters
    ----------
    grad_out : ndarray, shape (N, C_out, Ho, Wo)
    x : ndarray, shape (N, C_in, H, W)
    weight : ndarray, shape (C_in, C_out / groups, kh, kw)
    output_mask : three bools, which of (grad_x, grad_weight, grad_bias) to compute

    Returns
    -------
    grad_x : ndarray, shape (N, C_in, H, W) or None
    grad_weight : ndarray, shape (C_in, C_out / groups, kh, kw) or None
    grad_bias : ndarray, shape (C_out,) or None
    """
    xp = _backend.array_module(grad_out=grad_out, x=x, weight=weight)
    _check_common(x, weight, None)
    _backend.check_float("grad_out", grad_out, 4)
    _backend.check_same_dtype("x", x, grad_out=grad_out)
    s, p, d, groups, (cout, ho, wo) = _transpose_params(x, weight, stride, padding, output_padding,
                                                        groups, dilation)
    mask = _mask(output_mask)
    _backend.check_shape("grad_out", grad_out, (x.shape[0], cout, ho, wo))
    grad_out = _backend.contiguous(grad_out, xp)
    x, weight = _backend.contiguous(x, xp), _backend.contiguous(weight, xp)
    K = _backend.kernels(xp, "conv")
    gx = gw = gb = None
    # Forward was y = A_w^T x with A_w the convolution of y-shaped inputs, so
    # grad_x = A_w grad_out (a convolution whose output size is x's) and
    # grad_w = the convolution's weight-gradient with dy = x and input = grad_out.
    if mask[0]:
        gx = _backend.empty(x.shape, x.dtype, xp)
        K.conv2d_forward(grad_out, weight, None, gx, s[0], s[1], p[0], p[1], d[0], d[1], groups)
    if mask[1]:
        gw = _backend.empty(weight.shape, x.dtype, xp)
        K.conv2d_backward_weight(x, grad_out, gw, s[0], s[1], p[0], p[1], d[0], d[1], groups)
    if mask[2]:
        gb = _backend.empty((cout,), x.dtype, xp)
        K.conv2d_backward_bias(grad_out, gb)
    return gx, gw, gb
