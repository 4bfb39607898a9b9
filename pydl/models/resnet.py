"""ResNet and ResNeXt (He et al. 2015, Xie et al. 2016) as torchvision builds them ("v1.5": the
stride of a bottleneck sits on its 3x3 convolution), with torchvision's constructor arguments,
module names and therefore state_dict keys.

Training: ``y = model(x)``, ``model.backward(dy)`` (pydl.nn's explicit backward), any pydl.optim
optimizer. Inference: ``model.eval()`` computes the same function as torchvision's ``eval()``;
``pydl.nn.utils.fuse(model)`` returns a copy with each batch norm folded into its convolution
and the ReLU and residual add computed inside the convolution call.

Weights are never downloaded: build with ``weights=None`` and load torchvision's converted ones,
``model.load_state_dict({k: v.numpy() for k, v in tv_model.state_dict().items()})``.
"""
from __future__ import annotations

from .. import functional as F
from .. import nn
from ..nn.layers import _need_forward
from ..nn.utils import _fuse_chain
from ._layers import check_weights

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50", "resnext50_32x4d"]


def conv3x3(in_planes, out_planes, stride=1, groups=1, dilation=1):
    """3x3 convolution whose padding keeps the size at stride 1; no bias (a norm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups,
                     bias=False, dilation=dilation)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def _relu_grad(grad, y, owned=False):
    # The blocks share one ReLU module between two or three places (as torchvision does), so its
    # own cache holds only the last output: the gradient comes from the outputs kept here.
    # owned: grad is this block's own intermediate, overwritten in place.
    return F.relu_backward(grad, y, out=grad if owned else None)


def _fused_only(block):
    raise RuntimeError(f"{type(block).__name__}.backward: this block was fused for inference by "
                       "pydl.nn.utils.fuse and has no backward; train the unfused model")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + s(x))``.

    ``s`` is ``downsample`` (a Module, e.g. a strided 1x1 convolution and batch norm) or the
    identity. ``backward`` returns the sum of the gradients through the branch and the shortcut.

    Parameters
    ----------
    inplanes, planes : int
        Input and output channels (``expansion = 1``).
    stride : int
        Of conv1 (the shortcut must match it).
    downsample : Module or None
    groups, base_width, dilation : int
        Only 1, 64 and 1 (as torchvision, which raises on others).
    norm_layer : callable(num_features) -> Module, default BatchNorm2d
    """
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None):
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        if groups != 1 or base_width != 64:
            raise ValueError(f"BasicBlock only supports groups=1 and base_width=64, got groups={groups}, "
                             f"base_width={base_width}")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock (as torchvision)")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride
        self._fused = False
        self._cache = None

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        if self._fused:  # conv1 has bn1 and the ReLU, conv2 bn2, the residual add and the ReLU
            return self.conv2(self.conv1(x), residual=identity)
        h = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(h)) + identity)
        self._cache = (h, out)
        return out

    def backward(self, grad_out):
        if self._fused:
            _fused_only(self)
        _need_forward(self)
        h, out = self._cache
        g = _relu_grad(grad_out, out)  # reaches the branch and the shortcut alike
        gh = _relu_grad(self.conv2.backward(self.bn2.backward(g)), h, owned=True)
        gx = self.conv1.backward(self.bn1.backward(gh))
        gx += g if self.downsample is None else self.downsample.backward(g)
        return gx

    def _fuse(self):
        """pydl.nn.utils.fuse's hook: fold the norms, move ReLU and residual add into the convs."""
        c1 = _fuse_chain(self.conv1, self.bn1, self.relu)
        c2 = _fuse_chain(self.conv2, self.bn2, self.relu)
        if c1 is None or c2 is None:  # a norm layer that does not fold: stay unfused
            return
        self.conv1, self.conv2 = c1, c2
        self.bn1, self.bn2, self.relu = nn.Identity(), nn.Identity(), nn.Identity()
        self._fused = True


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped, strided, dilated), 1x1 expand, each with batch norm, plus a shortcut:
    ``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + s(x))``.

    The inner width is ``int(planes * base_width / 64) * groups``, the output
    ``planes * expansion`` (``expansion = 4``). ``backward`` sums the branch's and the
    shortcut's gradients. Arguments as :class:`BasicBlock`, with groups, base_width and
    dilation free.
    """
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None):
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self._fused = False
        self._cache = None

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        if self._fused:
            return self.conv3(self.conv2(self.conv1(x)), residual=identity)
        h1 = self.relu(self.bn1(self.conv1(x)))
        h2 = self.relu(self.bn2(self.conv2(h1)))
        out = self.relu(self.bn3(self.conv3(h2)) + identity)
        self._cache = (h1, h2, out)
        return out

    def backward(self, grad_out):
        if self._fused:
            _fused_only(self)
        _need_forward(self)
        h1, h2, out = self._cache
        g = _relu_grad(grad_out, out)
        gh2 = _relu_grad(self.conv3.backward(self.bn3.backward(g)), h2, owned=True)
        gh1 = _relu_grad(self.conv2.backward(self.bn2.backward(gh2)), h1, owned=True)
        gx = self.conv1.backward(self.bn1.backward(gh1))
        gx += g if self.downsample is None else self.downsample.backward(g)
        return gx

    def _fuse(self):
        """pydl.nn.utils.fuse's hook (see BasicBlock._fuse)."""
        convs = [_fuse_chain(c, b, self.relu) for c, b in ((self.conv1, self.bn1), (self.conv2, self.bn2),
                                                           (self.conv3, self.bn3))]
        if any(c is None for c in convs):
            return
        self.conv1, self.conv2, self.conv3 = convs
        self.bn1, self.bn2, self.bn3, self.relu = nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity()
        self._fused = True


class ResNet(nn.Module):
    """ResNet / ResNeXt for 3-channel NCHW images, as ``torchvision.models.ResNet``.

    conv1 (7x7 stride 2), bn1, relu, maxpool (3x3 stride 2), layer1..layer4 (64, 128, 256, 512
    planes; layers 2-4 halve the size), avgpool (adaptive, to 1x1), flatten, fc. The total
    stride is 32: inputs of 32x32 end in 1x1 maps.

    Parameters
    ----------
    block : BasicBlock or Bottleneck
    layers : list of 4 ints
        Blocks per stage.
    num_classes : int
    zero_init_residual : bool
        Start the last norm of every block at weight 0, so that blocks begin as identities.
    groups, width_per_group : int
        ResNeXt's cardinality and width of each group (Bottleneck only).
    replace_stride_with_dilation : None or 3 bools
        For layer2..layer4: keep the size and dilate the later 3x3 convolutions instead
        (Bottleneck only), for dense prediction.
    norm_layer : callable(num_features) -> Module, default BatchNorm2d

    Initialization as torchvision: convolutions He-normal (fan_out, ReLU gain), norms weight 1
    and bias 0, fc PyTorch's Linear default. ``forward(x)``: x (N, 3, H, W) -> logits
    (N, num_classes); ``backward(dlogits)`` -> dx. ``pydl.nn.utils.fuse(model)`` gives the fused
    inference model (see the module docstring).
    """

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, groups=1, width_per_group=64,
                 replace_stride_with_dilation=None, norm_layer=None):
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self._norm_layer = norm_layer
        if len(layers) != 4:
            raise ValueError(f"layers: expected 4 block counts, got {list(layers)}")
        self.inplanes = 64
        self.dilation = 1
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation: expected None or 3 bools, got "
                             f"{replace_stride_with_dilation!r}")
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self._cache = None

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else \
                    getattr(m, "bn2", None) if isinstance(m, BasicBlock) else None
                if getattr(last, "weight", None) is not None:
                    nn.init.zeros_(last.weight)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        norm_layer = self._norm_layer
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       norm_layer(planes * block.expansion))
        # The first block changes the size and width; the dilation takes effect from the second.
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation,
                        norm_layer)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                dilation=self.dilation, norm_layer=norm_layer))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)
        self._cache = tuple(x.shape)
        return self.fc(x.reshape(x.shape[0], -1))  # torch.flatten(x, 1)

    def backward(self, grad_out):
        _need_forward(self)
        g = self.avgpool.backward(self.fc.backward(grad_out).reshape(self._cache))
        for layer in (self.layer4, self.layer3, self.layer2, self.layer1):
            g = layer.backward(g)
        return self.conv1.backward(self.bn1.backward(self.relu.backward(self.maxpool.backward(g))))

    def _fuse(self):
        """pydl.nn.utils.fuse's hook: conv1, bn1 and relu into one convolution (blocks fuse themselves)."""
        c1 = _fuse_chain(self.conv1, self.bn1, self.relu)
        if c1 is not None:
            self.conv1, self.bn1, self.relu = c1, nn.Identity(), nn.Identity()


def _resnet(arch, block, layers, weights, kwargs):
    check_weights(weights, arch)
    return ResNet(block, layers, **kwargs)


def _set(kwargs, name, value):
    """Fix an argument the architecture defines (as torchvision: a different value is an error)."""
    if kwargs.get(name, value) != value:
        raise ValueError(f"{name}: this architecture sets {value}, got {kwargs[name]}")
    kwargs[name] = value


def resnet18(*, weights=None, progress=True, **kwargs):
    """ResNet-18: BasicBlock, [2, 2, 2, 2] (11.7 M parameters at 1000 classes). kwargs go to :class:`ResNet`;
    weights must be None (see the module docstring for loading torchvision's); progress is ignored."""
    return _resnet("resnet18", BasicBlock, [2, 2, 2, 2], weights, kwargs)


def resnet34(*, weights=None, progress=True, **kwargs):
    """ResNet-34: BasicBlock, [3, 4, 6, 3] (21.8 M parameters). Arguments as :func:`resnet18`."""
    return _resnet("resnet34", BasicBlock, [3, 4, 6, 3], weights, kwargs)


def resnet50(*, weights=None, progress=True, **kwargs):
    """ResNet-50: Bottleneck, [3, 4, 6, 3] (25.6 M parameters). Arguments as :func:`resnet18`."""
    return _resnet("resnet50", Bottleneck, [3, 4, 6, 3], weights, kwargs)


def resnext50_32x4d(*, weights=None, progress=True, **kwargs):
    """ResNeXt-50 32x4d: Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4 (25.0 M parameters).
    Arguments as :func:`resnet18`."""
    _set(kwargs, "groups", 32)
    _set(kwargs, "width_per_group", 4)
    return _resnet("resnext50_32x4d", Bottleneck, [3, 4, 6, 3], weights, kwargs)
