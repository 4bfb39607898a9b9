"""MobileNetV2 (Sandler et al. 2018) as torchvision builds it, with its constructor arguments,
module names and state_dict keys (``features.0.0.weight``, ``features.1.conv.0.0.weight``,
``classifier.1.weight``...).

Training: ``model(x)`` then ``model.backward(dy)``. Inference: ``model.eval()`` is torchvision's
``eval()``; ``pydl.nn.utils.fuse(model)`` returns a copy with every batch norm folded into its
convolution, the ReLU6 computed in the convolution call and the residual add of the inverted
residual blocks in their last (projection) convolution.

Weights are never downloaded: ``weights=None`` only; torchvision's load as
``model.load_state_dict({k: v.numpy() for k, v in tv_model.state_dict().items()})``.
"""
from __future__ import annotations

from .. import functional as F
from .. import nn
from ..nn.layers import _need_forward
from ..nn.utils import FusedConv2d
from ._layers import Conv2dNormActivation, ReLU6, check_weights, make_divisible

__all__ = ["MobileNetV2", "InvertedResidual", "mobilenet_v2"]


class InvertedResidual(nn.Module):
    """Expand (1x1, ReLU6), depthwise 3x3 (ReLU6), project (1x1, linear), each with batch norm;
    ``x + conv(x)`` when stride is 1 and the width is kept, ``conv(x)`` otherwise.

    Parameters
    ----------
    inp, oup : int
        Input and output channels.
    stride : 1 or 2
        Of the depthwise convolution.
    expand_ratio : number
        Hidden width ``round(inp * expand_ratio)``; 1 leaves out the expansion.
    norm_layer : callable(num_features) -> Module, default BatchNorm2d

    ``backward`` returns the branch's gradient plus, with the shortcut, the output's.
    """

    def __init__(self, inp, oup, stride, expand_ratio, norm_layer=None):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride: expected 1 or 2, got {stride}")
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1, norm_layer=norm_layer,
                                               activation_layer=ReLU6))
        layers += [Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim,
                                        norm_layer=norm_layer, activation_layer=ReLU6),
                   nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                   norm_layer(oup)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup
        self._is_cn = stride > 1
        self._fused = False

    def forward(self, x):
        if self._fused:  # the projection convolution (second to last; an Identity follows) adds x
            mods = list(self.conv)
            h = x
            for m in mods[:-2]:
                h = m(h)
            return mods[-2](h, residual=x)
        y = self.conv(x)
        return x + y if self.use_res_connect else y

    def backward(self, grad_out):
        if self._fused:
            raise RuntimeError("InvertedResidual.backward: this block was fused for inference by "
                               "pydl.nn.utils.fuse and has no backward; train the unfused model")
        g = self.conv.backward(grad_out)
        return g + grad_out if self.use_res_connect else g

    def _fuse(self):
        """pydl.nn.utils.fuse's hook, after self.conv was fused: the shortcut joins the projection."""
        mods = list(self.conv)
        if self.use_res_connect and isinstance(mods[-2], FusedConv2d) and mods[-2].activation is None \
                and isinstance(mods[-1], nn.Identity):
            self._fused = True


class MobileNetV2(nn.Module):
    """MobileNetV2 for 3-channel NCHW images, as ``torchvision.models.MobileNetV2``.

    features: a 3x3 stride-2 Conv2dNormActivation (ReLU6), the inverted residual stages of
    ``inverted_residual_setting`` (rows t, c, n, s: expansion, channels, blocks, first
    stride), a 1x1 Conv2dNormActivation to ``last_channel``; then global average pooling,
    flatten and classifier (Dropout, Linear). Total stride 32.

    Parameters
    ----------
    num_classes : int
    width_mult : float
        Scales every width (rounded by ``round_nearest``); last_channel is 1280 * max(1, width_mult).
    inverted_residual_setting : list of [t, c, n, s], default the paper's 7 stages
    round_nearest : int
        Widths are multiples of it (1 turns rounding off).
    block : callable, default InvertedResidual
    norm_layer : callable(num_features) -> Module, default BatchNorm2d
    dropout : float
        Probability of the classifier's Dropout.

    Initialization as torchvision: convolutions He-normal (fan_out), zero bias; norms 1 and 0;
    Linear N(0, 0.01) and zero bias. ``pydl.nn.utils.fuse(model)`` gives the fused inference
    model (see the module docstring).
    """

    def __init__(self, num_classes=1000, width_mult=1.0, inverted_residual_setting=None, round_nearest=8,
                 block=None, norm_layer=None, dropout=0.2):
        super().__init__()
        if block is None:
            block = InvertedResidual
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        input_channel, last_channel = 32, 1280
        if inverted_residual_setting is None:
            inverted_residual_setting = [
                # t, c, n, s
                [1, 16, 1, 1],
                [6, 24, 2, 2],
                [6, 32, 3, 2],
                [6, 64, 4, 2],
                [6, 96, 3, 1],
                [6, 160, 3, 2],
                [6, 320, 1, 1],
            ]
        if len(inverted_residual_setting) == 0 or any(len(row) != 4 for row in inverted_residual_setting):
            raise ValueError("inverted_residual_setting: expected a non-empty list of [t, c, n, s] rows, got "
                             f"{inverted_residual_setting!r}")
        input_channel = make_divisible(input_channel * width_mult, round_nearest)
        self.last_channel = make_divisible(last_channel * max(1.0, width_mult), round_nearest)
        features = [Conv2dNormActivation(3, input_channel, stride=2, norm_layer=norm_layer, activation_layer=ReLU6)]
        for t, c, n, s in inverted_residual_setting:
            output_channel = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(block(input_channel, output_channel, s if i == 0 else 1, expand_ratio=t,
                                      norm_layer=norm_layer))
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, self.last_channel, kernel_size=1, norm_layer=norm_layer,
                                             activation_layer=ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        self._cache = None

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.features(x)
        self._cache = tuple(x.shape)
        x = F.adaptive_avg_pool2d(x, (1, 1))  # functional, as torchvision: no pooling module
        return self.classifier(x.reshape(x.shape[0], -1))

    def backward(self, grad_out):
        _need_forward(self)
        g = self.classifier.backward(grad_out)
        g = F.adaptive_avg_pool2d_backward(g.reshape(self._cache[:2] + (1, 1)), self._cache)
        return self.features.backward(g)


def mobilenet_v2(*, weights=None, progress=True, **kwargs):
    """MobileNetV2 (3.5 M parameters at width_mult=1 and 1000 classes). kwargs go to :class:`MobileNetV2`;
    weights must be None (see the module docstring for loading torchvision's); progress is ignored."""
    check_weights(weights, "mobilenet_v2")
    return MobileNetV2(**kwargs)
