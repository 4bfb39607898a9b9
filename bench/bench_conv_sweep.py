"""conv2d sweep: every distinct convolution layer of ResNet-18, ResNet-50, ResNeXt-50 32x4d and
MobileNetV2 at 224x224, at batch 1 and 8, plus a grouped-3x3 family, a dilated-3x3 family and a
family of larger kernels (depthwise 5x5 and 7x7, dense 5x5, 1x7 and 7x1);
forward and backward (input and weight gradients), float32, on the CPU.

    python bench/run.py --sweep [--quick] [--json out.json] [--layer TEXT]

Each layer: parity against PyTorch's float64 result (without PyTorch: against pydl.reference,
batch 1 only, it is slow), then pydl and PyTorch timed by run.py's time_cpu_rounds with a
budget by the layer's time (see _plan). Reports x PyTorch (PyTorch ms / pydl ms) per layer, and
per family (resnet, resnext, mobilenet, grouped, dilated, large) the geometric means and the worst
layer.

LAYERS is data, written out: bench/trace_conv_layers.py traced the pydl.models networks once on a
(1, 3, 224, 224) input (``--check`` there compares it with this table); nothing is traced at
benchmark time. Identical layers are listed once, with every network they come from ("+") and
the first module that runs them.
"""
from __future__ import annotations

import math

import numpy as np

import pydl
import pydl.functional as F
import pydl.reference as R

from common import Case, rel_error, time_cpu

# (networks, first module, x shape without batch, weight shape, stride, padding, dilation, groups)
LAYERS = [
    ('resnet18+resnet50+resnext50_32x4d', 'conv1', (3, 224, 224), (64, 3, 7, 7), 2, 3, 1, 1),
    ('resnet18+resnet50', 'layer1.0.conv1', (64, 56, 56), (64, 64, 3, 3), 1, 1, 1, 1),
    ('resnet18', 'layer2.0.downsample.0', (64, 56, 56), (128, 64, 1, 1), 2, 0, 1, 1),
    ('resnet18', 'layer2.0.conv1', (64, 56, 56), (128, 64, 3, 3), 2, 1, 1, 1),
    ('resnet18+resnet50', 'layer2.0.conv2', (128, 28, 28), (128, 128, 3, 3), 1, 1, 1, 1),
    ('resnet18', 'layer3.0.downsample.0', (128, 28, 28), (256, 128, 1, 1), 2, 0, 1, 1),
    ('resnet18', 'layer3.0.conv1', (128, 28, 28), (256, 128, 3, 3), 2, 1, 1, 1),
    ('resnet18+resnet50', 'layer3.0.conv2', (256, 14, 14), (256, 256, 3, 3), 1, 1, 1, 1),
    ('resnet18', 'layer4.0.downsample.0', (256, 14, 14), (512, 256, 1, 1), 2, 0, 1, 1),
    ('resnet18', 'layer4.0.conv1', (256, 14, 14), (512, 256, 3, 3), 2, 1, 1, 1),
    ('resnet18+resnet50', 'layer4.0.conv2', (512, 7, 7), (512, 512, 3, 3), 1, 1, 1, 1),
    ('resnet50+resnext50_32x4d', 'layer1.0.downsample.0', (64, 56, 56), (256, 64, 1, 1), 1, 0, 1, 1),
    ('resnet50', 'layer1.0.conv1', (64, 56, 56), (64, 64, 1, 1), 1, 0, 1, 1),
    ('resnet50', 'layer1.1.conv1', (256, 56, 56), (64, 256, 1, 1), 1, 0, 1, 1),
    ('resnet50+resnext50_32x4d', 'layer2.0.downsample.0', (256, 56, 56), (512, 256, 1, 1), 2, 0, 1, 1),
    ('resnet50+resnext50_32x4d', 'layer2.0.conv1', (256, 56, 56), (128, 256, 1, 1), 1, 0, 1, 1),
    ('resnet50', 'layer2.0.conv2', (128, 56, 56), (128, 128, 3, 3), 2, 1, 1, 1),
    ('resnet50', 'layer2.0.conv3', (128, 28, 28), (512, 128, 1, 1), 1, 0, 1, 1),
    ('resnet50', 'layer2.1.conv1', (512, 28, 28), (128, 512, 1, 1), 1, 0, 1, 1),
    ('resnet50+resnext50_32x4d', 'layer3.0.downsample.0', (512, 28, 28), (1024, 512, 1, 1), 2, 0, 1, 1),
    ('resnet50+resnext50_32x4d', 'layer3.0.conv1', (512, 28, 28), (256, 512, 1, 1), 1, 0, 1, 1),
    ('resnet50', 'layer3.0.conv2', (256, 28, 28), (256, 256, 3, 3), 2, 1, 1, 1),
    ('resnet50', 'layer3.0.conv3', (256, 14, 14), (1024, 256, 1, 1), 1, 0, 1, 1),
    ('resnet50', 'layer3.1.conv1', (1024, 14, 14), (256, 1024, 1, 1), 1, 0, 1, 1),
    ('resnet50+resnext50_32x4d', 'layer4.0.downsample.0', (1024, 14, 14), (2048, 1024, 1, 1), 2, 0, 1, 1),
    ('resnet50+resnext50_32x4d', 'layer4.0.conv1', (1024, 14, 14), (512, 1024, 1, 1), 1, 0, 1, 1),
    ('resnet50', 'layer4.0.conv2', (512, 14, 14), (512, 512, 3, 3), 2, 1, 1, 1),
    ('resnet50', 'layer4.0.conv3', (512, 7, 7), (2048, 512, 1, 1), 1, 0, 1, 1),
    ('resnet50', 'layer4.1.conv1', (2048, 7, 7), (512, 2048, 1, 1), 1, 0, 1, 1),
    ('resnext50_32x4d', 'layer1.0.conv1', (64, 56, 56), (128, 64, 1, 1), 1, 0, 1, 1),
    ('resnext50_32x4d', 'layer1.0.conv2', (128, 56, 56), (128, 4, 3, 3), 1, 1, 1, 32),
    ('resnext50_32x4d', 'layer1.0.conv3', (128, 56, 56), (256, 128, 1, 1), 1, 0, 1, 1),
    ('resnext50_32x4d', 'layer2.0.conv1', (256, 56, 56), (256, 256, 1, 1), 1, 0, 1, 1),
    ('resnext50_32x4d', 'layer2.0.conv2', (256, 56, 56), (256, 8, 3, 3), 2, 1, 1, 32),
    ('resnext50_32x4d', 'layer2.0.conv3', (256, 28, 28), (512, 256, 1, 1), 1, 0, 1, 1),
    ('resnext50_32x4d', 'layer2.1.conv2', (256, 28, 28), (256, 8, 3, 3), 1, 1, 1, 32),
    ('resnext50_32x4d', 'layer3.0.conv1', (512, 28, 28), (512, 512, 1, 1), 1, 0, 1, 1),
    ('resnext50_32x4d', 'layer3.0.conv2', (512, 28, 28), (512, 16, 3, 3), 2, 1, 1, 32),
    ('resnext50_32x4d', 'layer3.0.conv3', (512, 14, 14), (1024, 512, 1, 1), 1, 0, 1, 1),
    ('resnext50_32x4d', 'layer3.1.conv2', (512, 14, 14), (512, 16, 3, 3), 1, 1, 1, 32),
    ('resnext50_32x4d', 'layer4.0.conv1', (1024, 14, 14), (1024, 1024, 1, 1), 1, 0, 1, 1),
    ('resnext50_32x4d', 'layer4.0.conv2', (1024, 14, 14), (1024, 32, 3, 3), 2, 1, 1, 32),
    ('resnext50_32x4d', 'layer4.0.conv3', (1024, 7, 7), (2048, 1024, 1, 1), 1, 0, 1, 1),
    ('resnext50_32x4d', 'layer4.1.conv1', (2048, 7, 7), (1024, 2048, 1, 1), 1, 0, 1, 1),
    ('resnext50_32x4d', 'layer4.1.conv2', (1024, 7, 7), (1024, 32, 3, 3), 1, 1, 1, 32),
    ('mobilenet_v2', 'features.0.0', (3, 224, 224), (32, 3, 3, 3), 2, 1, 1, 1),
    ('mobilenet_v2', 'features.1.conv.0.0', (32, 112, 112), (32, 1, 3, 3), 1, 1, 1, 32),
    ('mobilenet_v2', 'features.1.conv.1', (32, 112, 112), (16, 32, 1, 1), 1, 0, 1, 1),
    ('mobilenet_v2', 'features.2.conv.0.0', (16, 112, 112), (96, 16, 1, 1), 1, 0, 1, 1),
    ('mobilenet_v2', 'features.2.conv.1.0', (96, 112, 112), (96, 1, 3, 3), 2, 1, 1, 96),
    ('mobilenet_v2', 'features.2.conv.2', (96, 56, 56), (24, 96, 1, 1), 1, 0, 1, 1),
    ('mobilenet_v2', 'features.3.conv.0.0', (24, 56, 56), (144, 24, 1, 1), 1, 0, 1, 1),
    ('mobilenet_v2', 'features.3.conv.1.0', (144, 56, 56), (144, 1, 3, 3), 1, 1, 1, 144),
    ('mobilenet_v2', 'features.3.conv.2', (144, 56, 56), (24, 144, 1, 1), 1, 0, 1, 1),
    ('mobilenet_v2', 'features.4.conv.1.0', (144, 56, 56), (144, 1, 3, 3), 2, 1, 1, 144),
    ('mobilenet_v2', 'features.4.conv.2', (144, 28, 28), (32, 144, 1, 1), 1, 0, 1, 1),
    ('mobilenet_v2', 'features.5.conv.0.0', (32, 28, 28), (192, 32, 1, 1), 1, 0, 1, 1),
    ('mobilenet_v2', 'features.5.conv.1.0', (192, 28, 28), (192, 1, 3, 3), 1, 1, 1, 192),
    ('mobilenet_v2', 'features.5.conv.2', (192, 28, 28), (32, 192, 1, 1), 1, 0, 1, 1),
    ('mobilenet_v2', 'features.7.conv.1.0', (192, 28, 28), (192, 1, 3, 3), 2, 1, 1, 192),
    ('mobilenet_v2', 'features.7.conv.2', (192, 14, 14), (64, 192, 1, 1), 1, 0, 1, 1),
    ('mobilenet_v2', 'features.8.conv.0.0', (64, 14, 14), (384, 64, 1, 1), 1, 0, 1, 1),
    ('mobilenet_v2', 'features.8.conv.1.0', (384, 14, 14), (384, 1, 3, 3), 1, 1, 1, 384),
    ('mobilenet_v2', 'features.8.conv.2', (384, 14, 14), (64, 384, 1, 1), 1, 0, 1, 1),
    ('mobilenet_v2', 'features.11.conv.2', (384, 14, 14), (96, 384, 1, 1), 1, 0, 1, 1),
    ('mobilenet_v2', 'features.12.conv.0.0', (96, 14, 14), (576, 96, 1, 1), 1, 0, 1, 1),
    ('mobilenet_v2', 'features.12.conv.1.0', (576, 14, 14), (576, 1, 3, 3), 1, 1, 1, 576),
    ('mobilenet_v2', 'features.12.conv.2', (576, 14, 14), (96, 576, 1, 1), 1, 0, 1, 1),
    ('mobilenet_v2', 'features.14.conv.1.0', (576, 14, 14), (576, 1, 3, 3), 2, 1, 1, 576),
    ('mobilenet_v2', 'features.14.conv.2', (576, 7, 7), (160, 576, 1, 1), 1, 0, 1, 1),
    ('mobilenet_v2', 'features.15.conv.0.0', (160, 7, 7), (960, 160, 1, 1), 1, 0, 1, 1),
    ('mobilenet_v2', 'features.15.conv.1.0', (960, 7, 7), (960, 1, 3, 3), 1, 1, 1, 960),
    ('mobilenet_v2', 'features.15.conv.2', (960, 7, 7), (160, 960, 1, 1), 1, 0, 1, 1),
    ('mobilenet_v2', 'features.17.conv.2', (960, 7, 7), (320, 960, 1, 1), 1, 0, 1, 1),
    ('mobilenet_v2', 'features.18.0', (320, 7, 7), (1280, 320, 1, 1), 1, 0, 1, 1),
]

# (name, x shape with batch, weight shape, stride, padding, dilation, groups): 3x3 grouped
# convolutions, 2 to 64 groups of 1 to 64 channels; ResNeXt's 32x4d and 32x8d widths. The
# 32x4d ones at batch 8 are resnext50_32x4d rows too and run once.
GROUPED = [
    ("32x4d layer1", (8, 128, 56, 56), (128, 4, 3, 3), 1, 1, 1, 32),
    ("32x4d layer2", (8, 256, 28, 28), (256, 8, 3, 3), 1, 1, 1, 32),
    ("32x4d layer3", (8, 512, 14, 14), (512, 16, 3, 3), 1, 1, 1, 32),
    ("32x4d layer4", (8, 1024, 7, 7), (1024, 32, 3, 3), 1, 1, 1, 32),
    ("32x8d layer1", (8, 256, 56, 56), (256, 8, 3, 3), 1, 1, 1, 32),
    ("32x8d layer2 stride 2", (8, 512, 56, 56), (512, 16, 3, 3), 2, 1, 1, 32),
    ("32x8d layer2", (8, 512, 28, 28), (512, 16, 3, 3), 1, 1, 1, 32),
    ("32x8d layer3", (8, 1024, 14, 14), (1024, 32, 3, 3), 1, 1, 1, 32),
    ("32x8d layer4", (8, 2048, 7, 7), (2048, 64, 3, 3), 1, 1, 1, 32),
    ("64 groups of 1", (8, 64, 56, 56), (64, 1, 3, 3), 1, 1, 1, 64),
    ("64 groups of 4", (8, 256, 28, 28), (256, 4, 3, 3), 1, 1, 1, 64),
    ("64 groups of 8", (8, 512, 14, 14), (512, 8, 3, 3), 1, 1, 1, 64),
    ("2 groups of 32", (8, 64, 56, 56), (64, 32, 3, 3), 1, 1, 1, 2),
    ("2 groups of 64", (8, 128, 28, 28), (128, 64, 3, 3), 1, 1, 1, 2),
    ("4 groups of 32", (8, 128, 28, 28), (128, 32, 3, 3), 1, 1, 1, 4),
    ("8 groups of 16", (8, 128, 28, 28), (128, 16, 3, 3), 1, 1, 1, 8),
    ("16 groups of 64", (8, 1024, 7, 7), (1024, 64, 3, 3), 1, 1, 1, 16),
    ("32x8d layer1", (1, 256, 56, 56), (256, 8, 3, 3), 1, 1, 1, 32),
    ("32x8d layer3", (1, 1024, 14, 14), (1024, 32, 3, 3), 1, 1, 1, 32),
    ("64 groups of 4", (1, 256, 28, 28), (256, 4, 3, 3), 1, 1, 1, 64),
    ("16 groups of 8", (1, 128, 28, 28), (128, 8, 3, 3), 1, 1, 1, 16),
    ("2 groups of 32", (1, 64, 56, 56), (64, 32, 3, 3), 1, 1, 1, 2),
]

# Same table shape: 3x3 convolutions keeping the channels, dilation 2 to 6 with padding equal to
# it (size-keeping); DeepLab's dilated ResNet stages at output stride 8 on 224 (28x28) and 16 on
# 513 (33x33), and ASPP-like rates.
DILATED = [
    ("DeepLab layer3 os8", (1, 256, 28, 28), (256, 256, 3, 3), 1, 2, 2, 1),
    ("DeepLab layer3 os8", (8, 256, 28, 28), (256, 256, 3, 3), 1, 2, 2, 1),
    ("DeepLab layer4 os8", (1, 512, 28, 28), (512, 512, 3, 3), 1, 4, 4, 1),
    ("DeepLab layer4 os16", (1, 512, 33, 33), (512, 512, 3, 3), 1, 2, 2, 1),
    ("ASPP-like rate 6", (1, 256, 33, 33), (256, 256, 3, 3), 1, 6, 6, 1),
    ("rate 3", (8, 128, 33, 33), (128, 128, 3, 3), 1, 3, 3, 1),
    ("rate 2", (4, 64, 56, 56), (64, 64, 3, 3), 1, 2, 2, 1),
    ("rate 5", (8, 64, 56, 56), (64, 64, 3, 3), 1, 5, 5, 1),
    ("rate 6", (8, 128, 28, 28), (128, 128, 3, 3), 1, 6, 6, 1),
]

# Kernels larger than 3x3 from networks the table above does not trace: depthwise 5x5
# (EfficientNet-B0) and 7x7 (ConvNeXt-T), dense 5x5 (Inception-v3 Mixed_5b, AlexNet features.3)
# and Inception-v3's factorized 1x7 / 7x1 (Mixed_6b).
LARGE = [
    ("EfficientNet-B0 stage 3 depthwise 5x5", (8, 240, 28, 28), (240, 1, 5, 5), 1, 2, 1, 240),
    ("EfficientNet-B0 stage 5 depthwise 5x5", (8, 672, 14, 14), (672, 1, 5, 5), 1, 2, 1, 672),
    ("EfficientNet-B0 stage 5 depthwise 5x5", (1, 672, 14, 14), (672, 1, 5, 5), 1, 2, 1, 672),
    ("EfficientNet-B0 stage 6 depthwise 5x5 s2", (8, 672, 14, 14), (672, 1, 5, 5), 2, 2, 1, 672),
    ("ConvNeXt-T stage 1 depthwise 7x7", (8, 96, 56, 56), (96, 1, 7, 7), 1, 3, 1, 96),
    ("ConvNeXt-T stage 1 depthwise 7x7", (1, 96, 56, 56), (96, 1, 7, 7), 1, 3, 1, 96),
    ("ConvNeXt-T stage 3 depthwise 7x7", (8, 384, 14, 14), (384, 1, 7, 7), 1, 3, 1, 384),
    ("ConvNeXt-T stage 4 depthwise 7x7", (8, 768, 7, 7), (768, 1, 7, 7), 1, 3, 1, 768),
    ("Inception-v3 Mixed_5b 5x5", (8, 48, 35, 35), (64, 48, 5, 5), 1, 2, 1, 1),
    ("AlexNet features.3 5x5", (8, 64, 27, 27), (192, 64, 5, 5), 1, 2, 1, 1),
    ("Inception-v3 Mixed_6b 1x7", (8, 128, 17, 17), (128, 128, 1, 7), 1, (0, 3), 1, 1),
    ("Inception-v3 Mixed_6b 7x1", (8, 128, 17, 17), (192, 128, 7, 1), 1, (3, 0), 1, 1),
]

BATCHES = (1, 8)
FAMILY = {"resnet18": "resnet", "resnet50": "resnet", "resnext50_32x4d": "resnext", "mobilenet_v2": "mobilenet"}
FAMILIES = ["resnet", "resnext", "mobilenet", "grouped", "dilated", "large"]
PARITY_BOUND = 1e-4  # run.py's float32 bound


def sweep_cases(match=None):
    """[(key, sources, families)], key = (x shape, weight shape, stride, padding, dilation,
    groups): each distinct convolution once, in table order (each network layer at batch 1
    then 8), with every table row it stands for. `match`: keep the cases where one of these
    strings is in the name, a source or a family."""
    cases = {}

    def add(key, source, families):
        sources, fams = cases.setdefault(key, ([], set()))
        sources.append(source)
        fams.update(families)

    for nets, name, xs, ws, s, p, d, g in LAYERS:
        for n in BATCHES:
            add(((n, *xs), ws, s, p, d, g), f"{nets} {name}", {FAMILY[net] for net in nets.split("+")})
    for family, table in (("grouped", GROUPED), ("dilated", DILATED), ("large", LARGE)):
        for name, xs, ws, s, p, d, g in table:
            add((xs, ws, s, p, d, g), f"{family} {name}", {family})
    out = [(key, sources, sorted(fams, key=FAMILIES.index)) for key, (sources, fams) in cases.items()]
    if match:
        out = [c for c in out if any(m in " ".join([case_name(c[0]), *c[1], *c[2]]) for m in match)]
    return out


def case_name(key):
    """bench_conv.py's naming: "8x64x56x56 k64 3x3 s2 p1 d2 g32" (stride, padding, dilation and
    groups only where not 1, 0, 1, 1)."""
    xs, ws, s, p, d, g = key
    name = f"{'x'.join(map(str, xs))} k{ws[0]} {ws[2]}x{ws[3]}"
    for tag, v, default in (("s", s, 1), ("p", p, 0), ("d", d, 1), ("g", g, 1)):
        if v != default:
            name += f" {tag}{'x'.join(map(str, v)) if isinstance(v, tuple) else v}"
    return name


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


def _out_shape(key):
    (n, _, h, w), (k, _, kh, kw), s, p, d, _ = key
    (ph, pw) = _pair(p)
    return n, k, (h + 2 * ph - d * (kh - 1) - 1) // s + 1, (w + 2 * pw - d * (kw - 1) - 1) // s + 1


def _flops(key):
    """Direct-convolution multiply-adds x 2 of the forward; the backward (dx and dw) is twice it."""
    ws = key[1]
    return 2.0 * math.prod(_out_shape(key)) * ws[1] * ws[2] * ws[3]


def _plan(ms, quick):
    """time_cpu_rounds's (rounds, repeats, min_s) for a direction whose slower library takes `ms`
    per call. Quick: run.py's quick rule. Otherwise run.py's full rule for sub-ms layers, whose
    ratio swings most between runs, then fewer rounds and runs as a layer gets slower: 189
    cases, each paying 0.1 s of settle() per round, library and direction, must fit in minutes."""
    if quick:
        return 1, 3, 0.0
    if ms < 1:
        return 5, 5, 0.05
    if ms < 20:
        return 3, 5, 0.05
    return 3, 3, 0.0


def _parity(torch, key, x, w, dy):
    """Max relative error of pydl's y, dx and dw against PyTorch's float64 result; without
    PyTorch against pydl.reference, at batch 1 only (None at larger batches)."""
    _, _, s, p, d, g = key
    y = F.conv2d(x, w, None, s, p, d, g)
    gx, gw, _ = F.conv2d_backward(dy, x, w, s, p, d, g, output_mask=(True, True, False))
    if torch is not None:
        tx, tw, tdy = (torch.from_numpy(a).double() for a in (x, w, dy))
        want_y = torch.nn.functional.conv2d(tx, tw, None, s, p, d, g).numpy()
        want_gx, want_gw, _ = (t.numpy() if t is not None else None for t in torch.ops.aten.convolution_backward(
            tdy, tx, tw, None, [s, s], list(_pair(p)), [d, d], False, [0, 0], g, [True, True, False]))
    elif x.shape[0] == 1:
        want_y = R.conv2d(x, w, None, s, p, d, g)
        want_gx, want_gw, _ = R.conv2d_backward(dy, x, w, s, p, d, g, output_mask=(True, True, False))
    else:
        return None
    return max(rel_error(y, want_y), rel_error(gx, want_gx), rel_error(gw, want_gw))


def run(torch, quick, time_rounds, match=None, rng_seed=0):
    """Rows (run.py's keys, plus layers, families, batch) of every case, fwd then bwd; prints one
    line per row as it goes. `time_rounds` is run.py's time_cpu_rounds."""
    if torch is not None:
        torch.set_num_threads(pydl.get_num_threads())  # the same threads as pydl
    rng = np.random.default_rng(rng_seed)
    rows = []
    for key, sources, families in sweep_cases(match):
        xs, ws, s, p, d, g = key
        x = rng.uniform(-1, 1, xs).astype(np.float32)
        w = rng.uniform(-1, 1, ws).astype(np.float32)
        dy = rng.uniform(-1, 1, _out_shape(key)).astype(np.float32)
        err = _parity(torch, key, x, w, dy)
        run_fwd = lambda: F.conv2d(x, w, None, s, p, d, g)  # noqa: E731
        run_bwd = lambda: F.conv2d_backward(dy, x, w, s, p, d, g, output_mask=(True, True, False))  # noqa: E731
        torch_fwd = torch_bwd = None
        if torch is not None:
            tx, tw, tdy = (torch.from_numpy(a) for a in (x, w, dy))
            torch_fwd = lambda: torch.nn.functional.conv2d(tx, tw, None, s, p, d, g)  # noqa: E731
            torch_bwd = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
                tdy, tx, tw, None, [s, s], list(_pair(p)), [d, d], False, [0, 0], g, [True, True, False])
        flops = _flops(key)
        for direction, mine, theirs, work in (("fwd", run_fwd, torch_fwd, flops), ("bwd", run_bwd, torch_bwd, 2 * flops)):
            case = Case("conv2d", case_name(key), direction, run=mine, torch=theirs, flops=work)
            # One warm call of each sizes the budget (the parity check warmed pydl only).
            ms = max(time_cpu(f, repeats=1) for f in (mine, theirs) if f is not None)
            plan = _plan(ms, quick)
            pydl_ms, torch_ms, _ = time_rounds(case, torch if theirs else None, quick, plan=plan)
            row = {"op": "conv2d", "case": case.name, "dir": direction, "batch": xs[0], "layers": sources,
                   "families": families, "rel_err": err, "pydl_ms": pydl_ms, "ref_ms": None, "torch_ms": torch_ms,
                   "gflops": work / (pydl_ms * 1e-3) / 1e9, "x_ref": None,
                   "x_torch": torch_ms / pydl_ms if torch_ms else None, "plan": list(plan)}
            rows.append(row)
            print(_line(row), flush=True)
    return rows


def _fmt(v, spec="{:.3f}"):
    return "-" if v is None else spec.format(v)


def _line(r):
    return (f"{r['dir']:<4} {r['case']:<32} err={_fmt(r['rel_err'], '{:.1e}')} pydl={_fmt(r['pydl_ms'])}ms "
            f"torch={_fmt(r['torch_ms'])}ms x_torch={_fmt(r['x_torch'], '{:.2f}')} "
            f"{r['gflops']:.1f} GFLOP/s  [{'; '.join(r['layers'])}]")


def _geomean(v):
    return math.exp(sum(math.log(x) for x in v) / len(v)) if v else None


def summarize(rows):
    """Per family and over all: the number of cases (layer and batch), the geometric mean of x PyTorch forward
    and backward, and the worst (lowest x PyTorch) row of each direction."""
    out = {}
    for family in FAMILIES + ["all"]:
        mine = [r for r in rows if family == "all" or family in r["families"]]
        entry = {"cases": len({r["case"] for r in mine})}
        for direction in ("fwd", "bwd"):
            timed = [r for r in mine if r["dir"] == direction and r["x_torch"]]
            worst = min(timed, key=lambda r: r["x_torch"]) if timed else None
            entry[direction] = _geomean([r["x_torch"] for r in timed])
            entry[f"worst_{direction}"] = None if worst is None else {
                "case": worst["case"], "layers": worst["layers"], "x_torch": worst["x_torch"]}
        out[family] = entry
    return out


def markdown_table(rows):
    """One line per case: its error, then pydl and PyTorch forward and backward."""
    lines = ["| case | from | rel err | fwd pydl ms | fwd GFLOP/s | fwd PyTorch ms | fwd x PyTorch | bwd pydl ms "
             "| bwd GFLOP/s | bwd PyTorch ms | bwd x PyTorch |", "|" + "---|" * 11]
    by_case = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["dir"]] = r
    for name, dirs in by_case.items():
        f, b = dirs["fwd"], dirs["bwd"]
        cells = [name, "; ".join(f["layers"]), _fmt(max((v for v in (f["rel_err"], b["rel_err"]) if v is not None),
                                                        default=None), "{:.1e}")]
        for r in (f, b):
            cells += [_fmt(r["pydl_ms"]), _fmt(r["gflops"], "{:.1f}"), _fmt(r["torch_ms"]), _fmt(r["x_torch"], "{:.2f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(summary):
    lines = ["| family | cases | fwd x PyTorch (geomean) | bwd x PyTorch (geomean) | worst fwd | worst bwd |",
             "|" + "---|" * 6]
    for family, e in summary.items():
        worst = [f"{w['case']}, {w['layers'][0]}: {w['x_torch']:.2f}" if w else "-"
                 for w in (e["worst_fwd"], e["worst_bwd"])]
        lines.append(f"| {family} | {e['cases']} | {_fmt(e['fwd'], '{:.2f}')} | {_fmt(e['bwd'], '{:.2f}')} | "
                     f"{worst[0]} | {worst[1]} |")
    return "\n".join(lines)
