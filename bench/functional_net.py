"""CNNs that pydl.models does not define, run layer by layer through pydl.functional.

The network benchmark (bench_networks.py) measures them as a user would write them: each
torchvision layer becomes one pydl.functional call (conv2d, batch_norm, relu, max_pool2d, ...)
and NumPy does the rest (concatenation, residual adds, flattening), unfused.

``export(module, path)`` (torch side) traces a torchvision model with torch.fx and writes the
op list as JSON; ``FunctionalNet(path, weights)`` (pydl side, no torch import) runs it. An op
the interpreter does not know raises at export, naming it.
"""
from __future__ import annotations

import json
import operator

import numpy as np

# Torchvision constructors of the networks (torchvision.models.<fn>(**kwargs)).
NETWORKS = {
    "vgg11_bn": ("vgg11_bn", {}),
    "densenet121": ("densenet121", {}),
    "googlenet": ("googlenet", {"aux_logits": False, "init_weights": True}),
    "squeezenet1_1": ("squeezenet1_1", {}),
    # DeepLab-style backbone: the last two stages dilated instead of strided (output stride 8).
    "resnet50_dilated": ("resnet50", {"replace_stride_with_dilation": [False, True, True]}),
    # Squeeze-and-excitation, SiLU / hard-swish, depthwise 5x5, groups of 24 channels (RegNet).
    "efficientnet_b0": ("efficientnet_b0", {}),
    "mobilenet_v3_large": ("mobilenet_v3_large", {}),
    "regnet_y_1_6gf": ("regnet_y_1_6gf", {}),
}


def build_torch(name):
    import torchvision

    fn, kwargs = NETWORKS[name]
    return getattr(torchvision.models, fn)(weights=None, **kwargs)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def export(model, path):
    """Trace `model` (eval mode) with torch.fx and write its ops as JSON to `path`."""
    import torch
    import torch.fx

    nn, tf = torch.nn, torch.nn.functional
    gm = torch.fx.symbolic_trace(model.eval())
    mods = dict(gm.named_modules())
    ops = []

    def ref(a):
        if isinstance(a, torch.fx.Node):
            return {"node": a.name}
        if isinstance(a, (list, tuple)):
            return [ref(v) for v in a]
        return a

    def emit(node, kind, inputs, **attrs):
        ops.append({"name": node.name, "kind": kind, "inputs": [ref(a) for a in inputs], **attrs})

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            emit(node, "input", [])
        elif node.op == "output":
            emit(node, "output", [node.args[0]])
        elif node.op == "call_module":
            m, x, q = mods[node.target], node.args[0], node.target
            if isinstance(m, nn.Conv2d):
                emit(node, "conv2d", [x], param=q, stride=_pair(m.stride), padding=_pair(m.padding),
                     dilation=_pair(m.dilation), groups=m.groups, bias=m.bias is not None)
            elif isinstance(m, nn.BatchNorm2d):
                emit(node, "batch_norm", [x], param=q, eps=m.eps)
            elif isinstance(m, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Sigmoid, nn.Hardsigmoid)):
                emit(node, {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.Hardswish: "hardswish",
                            nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid"}[type(m)], [x])
            elif isinstance(m, nn.MaxPool2d):
                emit(node, "max_pool2d", [x], kernel_size=_pair(m.kernel_size), stride=_pair(m.stride),
                     padding=_pair(m.padding), dilation=_pair(m.dilation), ceil_mode=m.ceil_mode)
            elif isinstance(m, nn.AvgPool2d):
                emit(node, "avg_pool2d", [x], kernel_size=_pair(m.kernel_size), stride=_pair(m.stride),
                     padding=_pair(m.padding), ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad)
            elif isinstance(m, nn.AdaptiveAvgPool2d):
                emit(node, "adaptive_avg_pool2d", [x], output_size=_pair(m.output_size))
            elif isinstance(m, nn.Linear):
                emit(node, "linear", [x], param=q, bias=m.bias is not None)
            elif isinstance(m, (nn.Dropout, nn.Identity)):
                emit(node, "identity", [x])
            elif isinstance(m, nn.Flatten):
                emit(node, "flatten", [x], start_dim=m.start_dim)
            else:
                raise NotImplementedError(f"export: module {type(m).__name__} ({q})")
        elif node.op == "call_function":
            f, a = node.target, node.args
            if f is torch.cat:
                emit(node, "cat", [a[0]], axis=a[1] if len(a) > 1 else node.kwargs.get("dim", 0))
            elif f in (operator.add, torch.add) and len(a) == 2:
                emit(node, "add", list(a))
            elif f in (operator.mul, torch.mul) and len(a) == 2:  # squeeze-and-excitation's scale
                emit(node, "mul", list(a))
            elif getattr(f, "__name__", "") == "stochastic_depth":  # eval: the identity
                emit(node, "identity", [a[0]])
            elif f is torch.flatten:
                emit(node, "flatten", [a[0]], start_dim=a[1] if len(a) > 1 else node.kwargs.get("start_dim", 0))
            elif f is tf.relu:
                emit(node, "relu", [a[0]])
            elif f is tf.adaptive_avg_pool2d:
                emit(node, "adaptive_avg_pool2d", [a[0]], output_size=_pair(a[1]))
            elif f is tf.dropout:
                emit(node, "identity", [a[0]])
            else:
                raise NotImplementedError(f"export: function {getattr(f, '__name__', f)} ({node.name})")
        elif node.op == "call_method" and node.target == "flatten":
            emit(node, "flatten", [node.args[0]],
                 start_dim=node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0))
        else:
            raise NotImplementedError(f"export: {node.op} {node.target} ({node.name})")
    with open(path, "w") as fh:
        json.dump(ops, fh)


def _names(a):
    if isinstance(a, dict):
        yield a["node"]
    elif isinstance(a, list):
        for v in a:
            yield from _names(v)


class FunctionalNet:
    """The exported op list as a callable on NumPy arrays: pydl.functional and NumPy, unfused."""

    def __init__(self, path, weights):
        import pydl.functional as F

        self.F = F
        with open(path) as fh:
            self.ops = json.load(fh)
        self.w = {k: np.ascontiguousarray(v) for k, v in weights.items()}
        # A value is dropped after its last use, as a hand-written forward's locals are.
        last = {}
        for i, op in enumerate(self.ops):
            for name in _names(op["inputs"]):
                last[name] = i
        self.dead = [[n for n, j in last.items() if j == i] for i in range(len(self.ops))]

    def __call__(self, x):
        F, w = self.F, self.w
        env = {}

        def val(a):
            if isinstance(a, dict):
                return env[a["node"]]
            if isinstance(a, list):
                return [val(v) for v in a]
            return a

        for op, dead in zip(self.ops, self.dead):
            k, args, p = op["kind"], [val(a) for a in op["inputs"]], op.get("param")
            for name in dead:
                del env[name]
            if k == "input":
                out = x
            elif k == "output":
                return args[0]
            elif k == "conv2d":
                out = F.conv2d(args[0], w[p + ".weight"], w[p + ".bias"] if op["bias"] else None,
                               stride=tuple(op["stride"]), padding=tuple(op["padding"]),
                               dilation=tuple(op["dilation"]), groups=op["groups"])
            elif k == "batch_norm":
                out = F.batch_norm(args[0], w[p + ".running_mean"], w[p + ".running_var"], w[p + ".weight"],
                                   w[p + ".bias"], training=False, eps=op["eps"])
            elif k in ("relu", "relu6", "silu", "hardswish", "sigmoid"):
                out = getattr(F, k)(args[0])
            elif k == "hardsigmoid":  # PyTorch's definition, relu6(x + 3) / 6
                out = F.relu6(args[0] + 3) * (1 / 6)
            elif k == "max_pool2d":
                out = F.max_pool2d(args[0], tuple(op["kernel_size"]), tuple(op["stride"]), tuple(op["padding"]),
                                   tuple(op["dilation"]), ceil_mode=op["ceil_mode"])
            elif k == "avg_pool2d":
                out = F.avg_pool2d(args[0], tuple(op["kernel_size"]), tuple(op["stride"]), tuple(op["padding"]),
                                   ceil_mode=op["ceil_mode"], count_include_pad=op["count_include_pad"])
            elif k == "adaptive_avg_pool2d":
                out = F.adaptive_avg_pool2d(args[0], tuple(op["output_size"]))
            elif k == "linear":
                out = F.linear(args[0], w[p + ".weight"], w[p + ".bias"] if op["bias"] else None)
            elif k == "identity":
                out = args[0]
            elif k == "flatten":
                out = args[0].reshape(args[0].shape[:op["start_dim"]] + (-1,))
            elif k == "cat":
                out = np.concatenate(args[0], axis=op["axis"])
            elif k == "add":
                out = args[0] + args[1]
            elif k == "mul":
                out = args[0] * args[1]
            else:
                raise NotImplementedError(k)
            env[op["name"]] = out
        raise ValueError("the op list has no output")
