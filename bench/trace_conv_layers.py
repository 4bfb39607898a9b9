"""Print the distinct conv2d layers of the pydl.models networks as bench_conv_sweep.py's LAYERS table.

    python bench/trace_conv_layers.py            # the table, to paste into bench_conv_sweep.py
    python bench/trace_conv_layers.py --check    # exit 1 if bench_conv_sweep.LAYERS differs

Runs each network once on a (1, 3, 224, 224) input with pydl.functional.conv2d wrapped to
record its arguments; each nn.Conv2d's forward is wrapped too, to know which module called.
The sweep reads the written-out table, so it never traces at benchmark time.
"""
from __future__ import annotations

import os
import sys

import numpy as np

import pydl.functional as F
import pydl.models
from pydl import nn

NETWORKS = ["resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2"]


def _int(v):
    """A symmetric pair as one int, as the table writes it."""
    v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return v[0] if v[0] == v[1] else v


def trace(net):
    """[(module name, x shape without batch, weight shape, stride, padding, dilation, groups)] in call order."""
    model = getattr(pydl.models, net)()
    model.eval()
    calls, current = [], [None]
    real_conv2d = F.conv2d

    def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, **kw):
        calls.append((current[0], tuple(x.shape[1:]), tuple(weight.shape), _int(stride), _int(padding),
                      _int(dilation), groups))
        return real_conv2d(x, weight, bias, stride, padding, dilation, groups, **kw)

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            def forward(x, *a, _name=name, _fwd=m.forward, **kw):
                current[0] = _name
                return _fwd(x, *a, **kw)
            m.forward = forward
    F.conv2d = conv2d
    try:
        model(np.zeros((1, 3, 224, 224), np.float32))
    finally:
        F.conv2d = real_conv2d
    return calls


def distinct_layers():
    """LAYERS rows: one per distinct (x, weight, stride, padding, dilation, groups), in first-seen
    order, naming every network it comes from and its first module in the first of them."""
    rows = {}
    for net in NETWORKS:
        for name, *key in trace(net):
            key = tuple(key)
            if key not in rows:
                rows[key] = [[net], name]
            elif net not in rows[key][0]:
                rows[key][0].append(net)
    return [("+".join(nets), name, *key) for key, (nets, name) in rows.items()]


def main(argv):
    layers = distinct_layers()
    if "--check" in argv:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bench_conv_sweep import LAYERS

        if [tuple(r) for r in LAYERS] != layers:
            print("bench_conv_sweep.LAYERS differs from the traced networks: regenerate it", file=sys.stderr)
            return 1
        print(f"LAYERS matches the {len(layers)} traced layers")
        return 0
    print("LAYERS = [")
    for r in layers:
        print(f"    {r!r},")
    print("]")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
