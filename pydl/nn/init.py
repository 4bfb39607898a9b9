"""Weight initialization, as torch.nn.init: Xavier/Glorot and He/Kaiming, uniform and normal.

Each function fills ``tensor`` (a Parameter or an array, NumPy or CuPy) IN PLACE and returns
it. Random numbers come from a NumPy Generator (``rng=``, default: the module generator that
``manual_seed`` reseeds) on the host, then are copied to the array's device, so a seed gives
the same weights on both backends.
"""
from __future__ import annotations

import math

import numpy as np

from .. import _backend

__all__ = ["manual_seed", "get_rng", "calculate_gain", "uniform_", "normal_", "constant_", "zeros_",
           "ones_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_"]

_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reseed the generator used by initializers and Dropout."""
    global _rng
    _rng = np.random.default_rng(seed)


def get_rng() -> np.random.Generator:
    return _rng


def _array(tensor):
    return tensor.data if hasattr(tensor, "accumulate") else tensor


def _asdevice(host, like):
    if _backend.is_cuda(like):
        import cupy

        return cupy.asarray(host)
    return host


def _fans(shape):
    """(fan_in, fan_out) as PyTorch: dim 1 is the input side, dims 2.. the receptive field."""
    if len(shape) < 2:
        raise ValueError(f"tensor: fan in and fan out need at least 2 dimensions, got shape {tuple(shape)}")
    rf = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * rf, shape[0] * rf


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for a nonlinearity (torch.nn.init.calculate_gain)."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                        "conv_transpose3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"nonlinearity: unsupported {nonlinearity!r}")


def uniform_(tensor, a=0.0, b=1.0, rng=None):
    a_ = _array(tensor)
    host = (rng or _rng).uniform(a, b, size=a_.shape)
    a_[...] = _asdevice(host.astype(a_.dtype), a_)
    return tensor


def normal_(tensor, mean=0.0, std=1.0, rng=None):
    a_ = _array(tensor)
    host = (rng or _rng).normal(mean, std, size=a_.shape)
    a_[...] = _asdevice(host.astype(a_.dtype), a_)
    return tensor


def constant_(tensor, val):
    _array(tensor).fill(val)
    return tensor


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)


def xavier_uniform_(tensor, gain=1.0, rng=None):
    """U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fi, fo = _fans(_array(tensor).shape)
    a = gain * math.sqrt(6.0 / (fi + fo))
    return uniform_(tensor, -a, a, rng)


def xavier_normal_(tensor, gain=1.0, rng=None):
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fi, fo = _fans(_array(tensor).shape)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fi + fo)), rng)


def _kaiming_std(tensor, a, mode, nonlinearity):
    fi, fo = _fans(_array(tensor).shape)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode: expected 'fan_in' or 'fan_out', got {mode!r}")
    fan = fi if mode == "fan_in" else fo
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", rng=None):
    """U(-b, b) with b = gain * sqrt(3 / fan) (He et al. 2015)."""
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound, rng)


def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", rng=None):
    """N(0, std^2) with std = gain / sqrt(fan)."""
    return normal_(tensor, 0.0, _kaiming_std(tensor, a, mode, nonlinearity), rng)
