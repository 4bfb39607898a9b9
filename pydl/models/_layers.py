"""Pieces the pydl.models networks share: ReLU6 (pydl.nn's), torchvision's
Conv2dNormActivation, the channel rounding of MobileNet, and the ``weights=`` check."""
from __future__ import annotations

from .. import nn

__all__ = ["Conv2dNormActivation", "ReLU6"]


ReLU6 = nn.ReLU6


class Conv2dNormActivation(nn.Sequential):
    """Conv2d, then norm_layer, then activation_layer, as ``torchvision.ops.Conv2dNormActivation``.

    Children ``0`` (conv), ``1`` (norm), ``2`` (activation), the ones given; padding defaults
    to ``(kernel_size - 1) // 2 * dilation`` (the size-keeping one for odd kernels) and the
    convolution has a bias only without a norm layer.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None, groups=1,
                 norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU, dilation=1, inplace=True, bias=None):
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        if bias is None:
            bias = norm_layer is None
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation,
                            groups=groups, bias=bias)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer() if inplace is None else activation_layer(inplace=inplace))
        super().__init__(*layers)
        self.out_channels = out_channels


def make_divisible(v, divisor, min_value=None):
    """v rounded to the nearest multiple of divisor, at least min_value (default divisor) and
    never more than 10% below v (MobileNet's channel rounding)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def check_weights(weights, arch):
    """weights=None is the only choice: pydl downloads nothing."""
    if weights is None:
        return
    raise ValueError(
        f"weights: pydl loads no weights from the network, so only weights=None is accepted (got {weights!r}). "
        f"To start from torchvision's weights, convert them once PyTorch has them:\n"
        f"    import torchvision, pydl.models\n"
        f"    model = pydl.models.{arch}()\n"
        f"    tv = torchvision.models.{arch}(weights=\"DEFAULT\")\n"
        f"    model.load_state_dict({{k: v.numpy() for k, v in tv.state_dict().items()}})")
