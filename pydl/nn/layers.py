"""Layers: thin stateful wrappers over pydl.functional kernels (linear, conv, pool, batch norm,
activations) and NumPy/CuPy array expressions (ELU, PReLU, dropout, flatten).

Every layer caches in forward what its backward needs and follows the Module contract:
``backward(grad_out)`` returns the input gradient and accumulates parameter gradients.
Constructor arguments and default initializations are PyTorch's.
"""
from __future__ import annotations

import math

import numpy as np

from .. import _backend
from .. import functional as F
from . import init
from .module import Module, Parameter

__all__ = ["Identity", "Linear", "Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d",
           "AdaptiveAvgPool2d", "BatchNorm1d", "BatchNorm2d", "SyncBatchNorm", "ReLU", "ReLU6", "Hardtanh",
           "LeakyReLU", "ELU", "PReLU", "Sigmoid", "Tanh", "SiLU", "Hardswish", "Dropout", "Flatten"]


def _dtype(dtype):
    dt = np.dtype(np.float32 if dtype is None else dtype)
    if dt not in _backend.FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    return dt


def _param(shape, dtype):
    return Parameter(np.zeros(shape, dtype=dtype))


def _place(module, device):
    if device is not None and device != "cpu":
        module.to(device)
    return module


def _need_forward(layer, name="input"):
    if getattr(layer, "_cache", None) is None:
        raise RuntimeError(f"{type(layer).__name__}.backward: call forward first (no cached {name})")


def _xp(a, name="input"):
    return _backend.array_module(**{name: a})


class Identity(Module):
    def forward(self, x):
        return x

    def backward(self, grad_out):
        return grad_out


# ---------------------------------------------------------------- linear

class Linear(Module):
    """y = x W^T + b over the last axis; W of shape (out_features, in_features).

    Init as PyTorch: W, b ~ U(-1/sqrt(in_features), 1/sqrt(in_features)).
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        self.in_features = _backend.int_arg("in_features", in_features, 1)
        self.out_features = _backend.int_arg("out_features", out_features, 1)
        dt = _dtype(dtype)
        self.weight = _param((self.out_features, self.in_features), dt)
        self.bias = _param((self.out_features,), dt) if bias else None
        self.reset_parameters()
        self._cache = None
        _place(self, device)

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        if self.bias is not None:
            b = 1.0 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -b, b)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x):
        b = None if self.bias is None else self.bias.data
        y = F.linear(x, self.weight.data, b)
        self._cache = x
        return y

    def backward(self, grad_out):
        _need_forward(self)
        gx, gw, gb = F.linear_backward(grad_out, self._cache, self.weight.data,
                                       output_mask=(True, True, self.bias is not None))
        self.weight.accumulate(gw)
        if self.bias is not None:
            self.bias.accumulate(gb)
        return gx


# ---------------------------------------------------------------- convolutions

class _ConvNd(Module):
    def _init_conv(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                   padding_mode, dtype, wshape_fn):
        self.in_channels = _backend.int_arg("in_channels", in_channels, 1)
        self.out_channels = _backend.int_arg("out_channels", out_channels, 1)
        self.kernel_size = _backend.pair("kernel_size", kernel_size, 1)
        self.stride = _backend.pair("stride", stride, 1)
        self.padding = padding if isinstance(padding, str) else _backend.pair("padding", padding, 0)
        self.dilation = _backend.pair("dilation", dilation, 1)
        self.groups = _backend.int_arg("groups", groups, 1)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"groups: expected a divisor of in_channels={self.in_channels} and "
                             f"out_channels={self.out_channels}, got {self.groups}")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode: only 'zeros' is supported, got {padding_mode!r}")
        self.padding_mode = padding_mode
        dt = _dtype(dtype)
        self.weight = _param(wshape_fn(), dt)
        self.bias = _param((self.out_channels,), dt) if bias else None
        self.reset_parameters()
        self._cache = None

    def reset_parameters(self):
        # PyTorch: kaiming_uniform_(a=sqrt(5)) => U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in from dim 1.
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = int(np.prod(self.weight.shape[1:]))
            b = 1.0 / math.sqrt(fan_in)
            init.uniform_(self.bias, -b, b)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}")


class Conv2d(_ConvNd):
    """2-D convolution (cross-correlation) layer over NCHW inputs; see ``pydl.functional.conv2d``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        self._init_conv(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                        padding_mode, dtype,
                        lambda: (self.out_channels, self.in_channels // self.groups) + self.kernel_size)
        _place(self, device)

    def forward(self, x):
        b = None if self.bias is None else self.bias.data
        y = F.conv2d(x, self.weight.data, b, self.stride, self.padding, self.dilation, self.groups)
        self._cache = x
        return y

    def backward(self, grad_out):
        _need_forward(self)
        gx, gw, gb = F.conv2d_backward(grad_out, self._cache, self.weight.data, self.stride, self.padding,
                                       self.dilation, self.groups,
                                       output_mask=(True, True, self.bias is not None))
        self.weight.accumulate(gw)
        if self.bias is not None:
            self.bias.accumulate(gb)
        return gx


class ConvTranspose2d(_ConvNd):
    """2-D transposed convolution layer; weight of shape (in_channels, out_channels / groups, kh, kw)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        self.output_padding = _backend.pair("output_padding", output_padding, 0)
        self._init_conv(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                        padding_mode, dtype,
                        lambda: (self.in_channels, self.out_channels // self.groups) + self.kernel_size)
        _place(self, device)

    def forward(self, x):
        b = None if self.bias is None else self.bias.data
        y = F.conv_transpose2d(x, self.weight.data, b, self.stride, self.padding, self.output_padding,
                               self.groups, self.dilation)
        self._cache = x
        return y

    def backward(self, grad_out):
        _need_forward(self)
        gx, gw, gb = F.conv_transpose2d_backward(grad_out, self._cache, self.weight.data, self.stride,
                                                 self.padding, self.output_padding, self.groups, self.dilation,
                                                 output_mask=(True, True, self.bias is not None))
        self.weight.accumulate(gw)
        if self.bias is not None:
            self.bias.accumulate(gb)
        return gx


# ---------------------------------------------------------------- pooling

class MaxPool2d(Module):
    """Max pooling; keeps the argmax of its forward for the backward."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.return_indices, self.ceil_mode = dilation, return_indices, ceil_mode
        self._cache = None

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")

    def forward(self, x):
        y, ind = F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                              return_indices=True)
        self._cache = (ind, tuple(x.shape))
        return (y, ind) if self.return_indices else y

    def backward(self, grad_out):
        _need_forward(self)
        ind, shape = self._cache
        return F.max_pool2d_backward(grad_out, ind, shape, self.kernel_size, self.stride, self.padding,
                                     self.dilation, self.ceil_mode)


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.ceil_mode = kernel_size, stride, padding, ceil_mode
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override
        self._cache = None

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def forward(self, x):
        y = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                         self.divisor_override)
        self._cache = tuple(x.shape)
        return y

    def backward(self, grad_out):
        _need_forward(self)
        return F.avg_pool2d_backward(grad_out, self._cache, self.kernel_size, self.stride, self.padding,
                                     self.ceil_mode, self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size
        self._cache = None

    def extra_repr(self):
        return f"output_size={self.output_size}"

    def forward(self, x):
        y = F.adaptive_avg_pool2d(x, self.output_size)
        self._cache = tuple(x.shape)
        return y

    def backward(self, grad_out):
        _need_forward(self)
        return F.adaptive_avg_pool2d_backward(grad_out, self._cache)


# ---------------------------------------------------------------- batch norm

class _BatchNorm(Module):
    _ndims = (2, 3, 4)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None):
        super().__init__()
        self.num_features = _backend.int_arg("num_features", num_features, 1)
        self.eps = _backend.float_arg("eps", eps, 0.0)
        self.momentum = None if momentum is None else _backend.float_arg("momentum", momentum, 0.0, 1.0)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        dt = _dtype(dtype)
        C = self.num_features
        self.weight = Parameter(np.ones(C, dt)) if affine else None
        self.bias = Parameter(np.zeros(C, dt)) if affine else None
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(C, dt))
            self.register_buffer("running_var", np.ones(C, dt))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self._cache = None
        _place(self, device)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")

    def forward(self, x):
        if x.ndim not in self._ndims:
            want = " or ".join(f"{n}-D" for n in self._ndims)
            raise ValueError(f"input: expected a {want} array, got shape {tuple(x.shape)}")
        use_batch = self.training or not self.track_running_stats
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            momentum = self._next_momentum()
        rm, rv = (self.running_mean, self.running_var) if (self.training and self.track_running_stats) or \
            not use_batch else (None, None)
        w = None if self.weight is None else self.weight.data
        b = None if self.bias is None else self.bias.data
        y, mean, invstd = F.batch_norm_forward(x, rm, rv, w, b, use_batch, momentum, self.eps)
        self._cache = (x, mean, invstd, use_batch)
        return y

    def _next_momentum(self):
        """Counts one training batch; the running statistics' momentum for it (momentum None: the
        cumulative moving average, as PyTorch)."""
        self.num_batches_tracked += 1
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

    def backward(self, grad_out):
        _need_forward(self)
        x, mean, invstd, use_batch = self._cache
        w = None if self.weight is None else self.weight.data
        gx, gw, gb = F.batch_norm_backward(grad_out, x, w, mean, invstd, use_batch,
                                           output_mask=(True, self.affine, self.affine))
        if self.affine:
            self.weight.accumulate(gw)
            self.bias.accumulate(gb)
        return gx


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) inputs (statistics per channel C)."""
    _ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) inputs (statistics per channel C)."""
    _ndims = (4,)


class SyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics cover the batches of all ranks, as PyTorch's.

    Over (N, C), (N, C, L) or (N, C, H, W) inputs. In training, with ``pydl.distributed``
    initialised and more than one rank, the per-channel mean and (biased) variance are those
    of the global batch (every rank's input together), reduced by two small all-reduces
    (sums, then squared deviations from the global mean: the two-pass way, accurate for data
    with a large offset); the running statistics are updated with the global unbiased
    variance. The output on each rank is then exactly what ``BatchNorm`` on the global batch
    gives for that rank's rows. Otherwise (evaluation, one process) it is plain batch norm.

    Backward (xhat = (x - mean) * invstd, sums over the global batch of M values per channel)::

        dx = w * invstd * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M)

    with the two sums all-reduced over the ranks: this is the gradient of the sum of every
    rank's loss, as each rank's statistics feed every rank's output. The weight and bias
    gradients stay this rank's own sums (``DistributedDataParallel`` averages them with the
    other gradients), as PyTorch does.
    """
    _ndims = (2, 3, 4)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None):
        if process_group is not None:
            raise ValueError("process_group: expected None (pydl has one group: the initialised world), "
                             f"got {process_group!r}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)

    def _synced(self):
        from .. import distributed as dist

        return self.training and dist.is_initialized() and dist.get_world_size() > 1

    def forward(self, x):
        if not self._synced():
            return super().forward(x)
        from .. import distributed as dist

        xp = _backend.array_module(input=x)
        _backend.check_float("input", x)
        if x.ndim not in self._ndims or x.shape[1] != self.num_features:
            raise ValueError(f"input: expected a 2-D, 3-D or 4-D array with {self.num_features} channels "
                             f"on axis 1, got shape {tuple(x.shape)}")
        C = self.num_features
        x3 = x.reshape(x.shape[0], C, -1)
        # Pass 1: global count and mean (float64 sums: float32 data keeps its accuracy).
        buf = xp.zeros(C + 1, np.float64)
        buf[:C] = x3.sum(axis=(0, 2), dtype=np.float64)
        buf[C] = x3.shape[0] * x3.shape[2]
        dist._all_reduce(buf, "sum")
        count = int(round(float(buf[C])))
        if count == 1:
            raise ValueError("input: expected more than 1 value per channel over all ranks when training, "
                             f"got input shape {tuple(x.shape)} on this rank")
        mean = buf[:C] / max(count, 1)
        # Pass 2: squared deviations from the global mean.
        d = x3 - mean.astype(x.dtype)[None, :, None]
        sq = (d * d).sum(axis=(0, 2), dtype=np.float64)
        dist._all_reduce(sq, "sum")
        var = sq / max(count, 1)
        if self.track_running_stats and count > 0:
            m = self._next_momentum()
            self.running_mean *= 1 - m
            self.running_mean += (m * mean).astype(self.running_mean.dtype)
            self.running_var *= 1 - m
            self.running_var += (m * var * (count / (count - 1))).astype(self.running_var.dtype)
        # Normalise with the global statistics: the evaluation kernel takes them as given.
        w = None if self.weight is None else self.weight.data
        b = None if self.bias is None else self.bias.data
        y, save_mean, invstd = F.batch_norm_forward(x, mean.astype(x.dtype), var.astype(x.dtype), w, b,
                                                    False, 0.0, self.eps)
        self._cache = ("synced", x, save_mean, invstd, count)
        return y

    def backward(self, grad_out):
        _need_forward(self)
        if isinstance(self._cache[0], str):  # the synced forward marks its cache
            return self._backward_synced(grad_out)
        return super().backward(grad_out)

    def _backward_synced(self, grad_out):
        from .. import distributed as dist

        _, x, mean, invstd, count = self._cache
        xp = _backend.array_module(grad_out=grad_out, input=x)
        w = None if self.weight is None else self.weight.data
        # This rank's sum(dy * xhat) and sum(dy) per channel (the evaluation-mode backward's dw, db).
        _, gw, gb = F.batch_norm_backward(grad_out, x, w, mean, invstd, False, output_mask=(False, True, True))
        C = self.num_features
        sums = xp.empty(2 * C, np.float64)
        sums[:C], sums[C:] = gb, gw
        dist._all_reduce(sums, "sum")
        n = max(count, 1)
        shape = (1, C) + (1,) * (x.ndim - 2)
        scale = invstd if w is None else w * invstd
        xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
        gx = (grad_out - (sums[:C] / n).astype(x.dtype).reshape(shape)
              - xhat * (sums[C:] / n).astype(x.dtype).reshape(shape)) * scale.reshape(shape)
        if self.affine:
            self.weight.accumulate(gw)
            self.bias.accumulate(gb)
        return gx

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """``module`` with every BatchNorm1d/2d replaced by a SyncBatchNorm (as PyTorch's).

        The new layers share the old ones' Parameter objects (an optimizer built before the
        conversion keeps working) and take their buffers, mode and settings. Returns the
        converted module: a new object when ``module`` itself is a batch norm, else
        ``module``, changed in place.
        """
        if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
            new = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, process_group)
            new.weight, new.bias = module.weight, module.bias
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                object.__setattr__(new, name, getattr(module, name))
            new.train(module.training)
            return new
        for name, child in list(module.named_children()):
            new = cls.convert_sync_batchnorm(child, process_group)
            if new is not child:
                setattr(module, name, new)
        return module


# ---------------------------------------------------------------- elementwise

class _Elementwise(Module):
    def __init__(self):
        super().__init__()
        self._cache = None

    def _check(self, x):
        _backend.array_module(input=x)
        _backend.check_float("input", x)
        return x


class _Activation(_Elementwise):
    """An activation ``F.<_name>`` with PyTorch's ``inplace``: the backward runs
    ``F.<_name>_backward`` on the output (which determines the gradient), or on a kept copy of
    the input where it does not (``_keeps_input``)."""
    _name = ""
    _keeps_input = False

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""

    def forward(self, x):
        saved = self._check(x).copy() if self._keeps_input and self.inplace else x
        y = getattr(F, self._name)(x, bool(self.inplace))
        self._cache = saved if self._keeps_input else y
        return y

    def backward(self, grad_out):
        _need_forward(self)
        return getattr(F, self._name + "_backward")(grad_out, self._cache)


class ReLU(_Activation):
    """max(x, 0) (``F.relu``); the gradient at 0 is 0 (as PyTorch).

    ``inplace=True`` writes the result into the input array, as PyTorch: use it only where no
    earlier layer keeps that array for its own backward (pydl has no autograd version counters to
    catch it; layers that cache their input, Conv2d, Linear, BatchNorm, are safe before it).
    The backward needs only the output, which the layer keeps ([y > 0] = [x > 0])."""
    _name = "relu"


class ReLU6(_Activation):
    """min(max(x, 0), 6) (``F.relu6``); ``inplace`` as in ReLU (the backward needs only the output:
    [0 < y < 6] = [0 < x < 6])."""
    _name = "relu6"


class Hardtanh(_Elementwise):
    """min(max(x, min_val), max_val) (``F.hardtanh``); ``inplace`` as in ReLU (the backward needs
    only the output)."""

    def __init__(self, min_val=-1.0, max_val=1.0, inplace=False):
        super().__init__()
        self.min_val = _backend.float_arg("min_val", min_val)
        self.max_val = _backend.float_arg("max_val", max_val)
        if self.max_val < self.min_val:
            raise ValueError(f"max_val: expected a float >= min_val={self.min_val}, got {self.max_val}")
        self.inplace = inplace

    def extra_repr(self):
        return f"min_val={self.min_val}, max_val={self.max_val}" + (", inplace=True" if self.inplace else "")

    def forward(self, x):
        y = F.hardtanh(x, self.min_val, self.max_val, bool(self.inplace))
        self._cache = y
        return y

    def backward(self, grad_out):
        _need_forward(self)
        # the output is min_val (max_val) exactly where x <= min_val (x >= max_val)
        return F.hardtanh_backward(grad_out, self._cache, self.min_val, self.max_val)


class LeakyReLU(_Elementwise):
    """x where x > 0, else negative_slope x (``F.leaky_relu``); ``inplace`` as in ReLU. With
    negative_slope >= 0 the backward needs only the output; with a negative slope the layer keeps
    the input (a copy of it when in place)."""

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope = _backend.float_arg("negative_slope", negative_slope)
        self.inplace = inplace

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")

    def forward(self, x):
        keep_x = self.negative_slope < 0  # then y > 0 does not mean x > 0
        saved = self._check(x).copy() if keep_x and self.inplace else x
        y = F.leaky_relu(x, self.negative_slope, bool(self.inplace))
        self._cache = saved if keep_x else y
        return y

    def backward(self, grad_out):
        _need_forward(self)
        return F.leaky_relu_backward(grad_out, self._cache, self.negative_slope)


class ELU(_Elementwise):
    """x for x > 0, alpha (exp(x) - 1) otherwise; d/dx = 1 or y + alpha."""

    def __init__(self, alpha=1.0, inplace=False):
        super().__init__()
        self.alpha = _backend.float_arg("alpha", alpha)
        self.inplace = inplace

    def extra_repr(self):
        return f"alpha={self.alpha}"

    def forward(self, x):
        xp = _xp(self._check(x))
        a = x.dtype.type(self.alpha)
        y = xp.where(x > 0, x, a * xp.expm1(xp.minimum(x, 0)))
        self._cache = (x > 0, y)
        return y

    def backward(self, grad_out):
        _need_forward(self)
        xp = _xp(grad_out, "grad_out")
        pos, y = self._cache
        return xp.where(pos, grad_out, grad_out * (y + y.dtype.type(self.alpha)))


class PReLU(Module):
    """max(x, 0) + a min(x, 0) with a learned slope a per channel (axis 1) or shared."""

    def __init__(self, num_parameters=1, init=0.25, device=None, dtype=None):
        super().__init__()
        self.num_parameters = _backend.int_arg("num_parameters", num_parameters, 1)
        self.weight = Parameter(np.full(self.num_parameters, init, _dtype(dtype)))
        self._cache = None
        _place(self, device)

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}"

    def _slope(self, x):
        a = self.weight.data
        if self.num_parameters == 1:
            return a.reshape(())
        if x.ndim < 2 or x.shape[1] != self.num_parameters:
            raise ValueError(f"input: expected {self.num_parameters} channels on axis 1, got shape {tuple(x.shape)}")
        return a.reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward(self, x):
        xp = _backend.array_module(input=x, weight=self.weight.data)
        _backend.check_float("input", x)
        _backend.check_same_dtype("weight", self.weight.data, input=x)
        pos = x > 0
        self._cache = (x, pos)
        return xp.where(pos, x, x * self._slope(x))

    def backward(self, grad_out):
        _need_forward(self)
        xp = _xp(grad_out, "grad_out")
        x, pos = self._cache
        gneg = xp.where(pos, 0, grad_out * x)  # d y / d a = x where x <= 0
        if self.num_parameters == 1:
            ga = gneg.sum().reshape(1)
        else:
            axes = (0,) + tuple(range(2, x.ndim))
            ga = gneg.sum(axis=axes)
        self.weight.accumulate(ga.astype(self.weight.dtype, copy=False))
        return xp.where(pos, grad_out, grad_out * self._slope(x))


class Sigmoid(_Elementwise):
    """1 / (1 + exp(-x)) (``F.sigmoid``); the backward uses the output."""

    def forward(self, x):
        y = F.sigmoid(x)
        self._cache = y
        return y

    def backward(self, grad_out):
        _need_forward(self)
        return F.sigmoid_backward(grad_out, self._cache)


class Tanh(_Elementwise):
    """tanh(x) (``F.tanh``); the backward uses the output."""

    def forward(self, x):
        y = F.tanh(x)
        self._cache = y
        return y

    def backward(self, grad_out):
        _need_forward(self)
        return F.tanh_backward(grad_out, self._cache)


class SiLU(_Activation):
    """x sigmoid(x) (``F.silu``). The backward needs the input: with ``inplace=True`` the result
    overwrites the input array (as PyTorch) and the layer keeps a copy of the input."""
    _name = "silu"
    _keeps_input = True


class Hardswish(_Activation):
    """x min(max(x + 3, 0), 6) / 6 (``F.hardswish``); ``inplace`` as in SiLU (the backward needs
    the input)."""
    _name = "hardswish"
    _keeps_input = True


class Dropout(_Elementwise):
    """Inverted dropout: in training, zero each element with probability p and scale the rest
    by 1 / (1 - p); identity in evaluation mode. NumPy masks come from ``pydl.nn.init``'s
    generator (``manual_seed``), CuPy masks from ``cupy.random``."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        self.p = _backend.float_arg("p", p, 0.0, 1.0)
        self.inplace = inplace

    def extra_repr(self):
        return f"p={self.p}"

    def forward(self, x):
        xp = _xp(self._check(x))
        if not self.training or self.p == 0:
            self._cache = False
            return x.copy()
        if self.p == 1:
            mask = xp.zeros(x.shape, x.dtype)
        else:
            if xp is np:
                u = init.get_rng().random(x.shape, dtype=np.float32)
            else:
                u = xp.random.random(x.shape, dtype=np.float32)
            mask = (u >= self.p).astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        self._cache = mask
        return x * mask

    def backward(self, grad_out):
        if self._cache is None:
            _need_forward(self)
        if self._cache is False:
            return grad_out.copy()
        return grad_out * self._cache


class Flatten(Module):
    """Reshape axes start_dim..end_dim into one (a view; backward reshapes back)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim
        self._cache = None

    def forward(self, x):
        nd = x.ndim
        s = self.start_dim % nd if nd else 0
        e = self.end_dim % nd if nd else 0
        self._cache = tuple(x.shape)
        if nd == 0 or s >= e:
            return x.reshape(x.shape)
        shape = x.shape[:s] + (int(np.prod(x.shape[s:e + 1])),) + x.shape[e + 1:]
        return x.reshape(shape)

    def backward(self, grad_out):
        _need_forward(self)
        return grad_out.reshape(self._cache)


# ---------------------------------------------------------------- resizing, local response norm

class Upsample(Module):
    """Nearest or bilinear resizing (``F.interpolate``); keeps the input shape for its backward."""

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None,
                 recompute_scale_factor=None):
        super().__init__()
        self.size, self.scale_factor, self.mode = size, scale_factor, mode
        self.align_corners, self.recompute_scale_factor = align_corners, recompute_scale_factor
        self._cache = None

    def extra_repr(self):
        head = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        tail = f", align_corners={self.align_corners}" if self.align_corners is not None else ""
        return f"{head}, mode={self.mode!r}{tail}"

    def _args(self):
        return dict(size=self.size, scale_factor=self.scale_factor, mode=self.mode,
                    align_corners=self.align_corners, recompute_scale_factor=self.recompute_scale_factor)

    def forward(self, x):
        y = F.interpolate(x, **self._args())
        self._cache = tuple(x.shape)
        return y

    def backward(self, grad_out):
        _need_forward(self)
        return F.interpolate_backward(grad_out, self._cache, **self._args())


class LocalResponseNorm(Module):
    """Local response normalization across channels; keeps its input for the backward."""

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.size = _backend.int_arg("size", size, 1)
        self.alpha = _backend.float_arg("alpha", alpha)
        self.beta = _backend.float_arg("beta", beta)
        self.k = _backend.float_arg("k", k)
        self._cache = None

    def extra_repr(self):
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"

    def forward(self, x):
        y = F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        self._cache = x
        return y

    def backward(self, grad_out):
        _need_forward(self)
        return F.local_response_norm_backward(grad_out, self._cache, self.size, self.alpha, self.beta, self.k)


__all__ += ["Upsample", "LocalResponseNorm"]
