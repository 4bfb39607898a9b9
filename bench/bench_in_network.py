"""Convolutions inside a network against the same convolutions alone (pydl only, CPU).

    python bench/bench_in_network.py                        # every pydl.models network, batch 1 and 8
    python bench/bench_in_network.py --networks resnet50 --batches 8

For each network (224x224, float32, evaluation, fused by pydl.nn.utils.fuse): the forward is
timed while every pydl.functional.conv2d call inside it is timed too (median of the forwards per
call site); then each distinct call (shape, stride, padding, groups, activation, residual) is
timed alone, repeated on the same arrays, as a kernel benchmark times it. Reported: the forward's
time, the sum of its convolutions inside the network and alone, their ratio (1.00: a convolution
costs inside the network what it costs alone), the layer with the largest ratio among those
taking 2% of the forward or more, and the minor page faults of one steady-state forward (a
fresh output array that faulted in its pages would show here).
"""
from __future__ import annotations

import argparse
import collections
import resource
import statistics
import sys
import time

import numpy as np

import pydl
import pydl.functional as F
import pydl.models
from pydl.nn.utils import fuse

MODELS = ["resnet18", "resnet34", "resnet50", "resnext50_32x4d", "mobilenet_v2"]  # as bench_networks.MODELS
ROUNDS = 5   # forwards timed inside the network
ALONE = 7    # runs of each convolution alone


def _key(x, w, stride, padding, dilation, groups, kw):
    return (x.shape, w.shape, stride, padding, dilation, groups, kw.get("activation"),
            kw.get("residual") is not None)


def measure(name, batch, rng):
    """{forward_ms, inside_ms, alone_ms, ratio, worst, minflt} of one network at one batch."""
    model = fuse(getattr(pydl.models, name)().eval())
    x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
    conv2d = F.conv2d
    times = collections.defaultdict(list)
    args = {}

    def timed(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, **kw):
        t = time.perf_counter()
        y = conv2d(x, w, b, stride, padding, dilation, groups, **kw)
        t = time.perf_counter() - t
        key = _key(x, w, stride, padding, dilation, groups, kw)
        times[key].append(t)
        args.setdefault(key, (w, b, dict(kw, residual=None)))  # weights only: no activations kept
        return y

    F.conv2d = timed
    try:
        for _ in range(2):
            model(x)
        times.clear()
        for _ in range(ROUNDS):
            model(x)
    finally:
        F.conv2d = conv2d
    forwards = []
    for _ in range(ROUNDS):
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        model(x)
        forwards.append(time.perf_counter() - t)
        minflt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0
    forward_ms = statistics.median(forwards) * 1e3

    inside = alone = 0.0
    layers = []
    for key, ts in times.items():
        calls = len(ts) // ROUNDS
        xs, _, stride, padding, dilation, groups, _, has_residual = key
        w, b, kw = args[key]
        xa = rng.standard_normal(xs).astype(np.float32)
        if has_residual:
            kw["residual"] = np.ones(conv2d(xa, w, b, stride, padding, dilation, groups).shape, np.float32)
        for _ in range(2):
            conv2d(xa, w, b, stride, padding, dilation, groups, **kw)
        runs = []
        for _ in range(ALONE):
            t = time.perf_counter()
            conv2d(xa, w, b, stride, padding, dilation, groups, **kw)
            runs.append(time.perf_counter() - t)
        t_in, t_alone = statistics.median(ts) * 1e3, statistics.median(runs) * 1e3
        inside += calls * t_in
        alone += calls * t_alone
        layers.append((calls * t_in, t_in / t_alone, key))
    big = [lay for lay in layers if lay[0] >= 0.02 * forward_ms]
    worst = max(big, key=lambda lay: lay[1]) if big else None
    return {"network": name, "batch": batch, "forward_ms": forward_ms, "inside_ms": inside, "alone_ms": alone,
            "ratio": inside / alone, "minflt": minflt,
            "worst": None if worst is None else {"layer": describe(worst[2]), "ratio": worst[1]}}


def describe(key):
    xs, ws, stride, padding, dilation, groups, act, res = key
    s = f"{'x'.join(map(str, xs))} k{ws[0]} {ws[2]}x{ws[3]}"
    s += "" if stride == (1, 1) else f" s{stride[0]}"
    s += "" if padding == (0, 0) else f" p{padding[0]}"
    s += "" if groups == 1 else f" g{groups}"
    return s + (f" {act}" if act else "") + (" +res" if res else "")


def markdown(rows):
    lines = ["| network | batch | forward ms | convs inside ms | convs alone ms | inside / alone "
             "| largest layer ratio (layers >= 2% of the forward) | page faults per forward |",
             "|" + "---|" * 8]
    for r in rows:
        w = r["worst"]
        worst = "-" if w is None else "{}: {:.2f}".format(w["layer"], w["ratio"])
        lines.append(f"| {r['network']} | {r['batch']} | {r['forward_ms']:.1f} | {r['inside_ms']:.1f} | "
                     f"{r['alone_ms']:.1f} | {r['ratio']:.2f} | {worst} | {r['minflt']} |")
    return "\n".join(lines)


def run(networks=None, batches=(1, 8), log=print):
    rng = np.random.default_rng(0)
    rows = []
    for name in networks or MODELS:
        for batch in batches:
            r = measure(name, batch, rng)
            log(f"  {name:16s} b{batch}  forward {r['forward_ms']:.1f} ms  convs inside {r['inside_ms']:.1f} ms, "
                f"alone {r['alone_ms']:.1f} ms ({r['ratio']:.2f})")
            rows.append(r)
    return rows


def main(argv=None):
    import bench_networks  # same directory; its network names and --networks parsing

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", action="append", metavar="NAME", help="only these networks (repeatable or "
                   "comma-separated): " + ", ".join(MODELS))
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    args = p.parse_args(argv)
    names = bench_networks.check_names(bench_networks.parse_names(args.networks), user=False)
    batches = tuple(int(b) for b in args.batches.split(","))
    print(f"pydl {pydl.__version__}: convolutions inside each network against alone "
          f"({pydl.get_num_threads()} threads)")
    rows = run(names, batches)
    print()
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
