"""Thread cooperation on the CPU: pydl calls mixed with NumPy matmuls, and thread settings.

    python bench/bench_threads.py [--quick]

1. Mixed: for each pair (a pydl call, a NumPy matmul), each is timed alone (back to back), then
   alternating: the pydl call right after the matmul and the matmul right after the pydl call.
   Reported: median ms alone and mixed, and mixed / alone (1.00: the other library's threads do
   not get in the way; NumPy's OpenBLAS threads spin for a while after each matmul, OpenMP's
   after each pydl call).
2. Environment: a pydl.models ResNet-50 eval forward at batch 1 (median of 7), each in a fresh
   process, under every combination of OPENBLAS_NUM_THREADS (unset, 1, 2) and OMP_WAIT_POLICY
   (unset, active, passive), in 5 rounds that visit the combinations in rotated order: per
   combination the median over the rounds and its ratio to the best combination's.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def _pairs():
    import pydl.functional as F

    rng = np.random.default_rng(0)
    x1, w1 = rng.standard_normal((8, 64, 56, 56), np.float32), rng.standard_normal((64, 64, 3, 3), np.float32)
    x2, w2 = rng.standard_normal((1, 256, 14, 14), np.float32), rng.standard_normal((256, 256, 3, 3), np.float32)
    a1, b1 = rng.standard_normal((256, 1024), np.float32), rng.standard_normal((1024, 1024), np.float32)
    a2, b2 = rng.standard_normal((128, 512), np.float32), rng.standard_normal((512, 512), np.float32)
    pydl_calls = {
        "conv2d 8x64x56x56 k64 3x3": lambda: F.conv2d(x1, w1, padding=1),
        "conv2d 1x256x14x14 k256 3x3": lambda: F.conv2d(x2, w2, padding=1),
    }
    matmuls = {"matmul 256x1024 @ 1024x1024": lambda: a1 @ b1, "matmul 128x512 @ 512x512": lambda: a2 @ b2}
    return [(pn, p, mn, m) for (pn, p), (mn, m) in itertools.product(pydl_calls.items(), matmuls.items())]


def _median_ms(times):
    return statistics.median(times) * 1e3


def mixed(rounds):
    rows = []
    for pname, p, mname, m in _pairs():
        for f in (p, m, p, m):
            f()
        alone = {}
        for name, f in ((pname, p), (mname, m)):
            time.sleep(0.3)  # the other library's threads are idle again
            f()
            ts = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
            alone[name] = _median_ms(ts)
        after_m, after_p = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            m()
            t1 = time.perf_counter()
            p()
            t2 = time.perf_counter()
            after_p.append(t1 - t0 if after_m else None)  # the first matmul follows a pydl call too
            after_m.append(t2 - t1)
        after_p = [t for t in after_p if t is not None]
        rows.append(dict(pydl=pname, numpy=mname, pydl_alone=alone[pname], pydl_after_numpy=_median_ms(after_m),
                         numpy_alone=alone[mname], numpy_after_pydl=_median_ms(after_p)))
    return rows


_WORKER = """
import json, statistics, sys, time
import numpy as np
import pydl.models
from pydl.nn.utils import fuse
m = pydl.models.resnet50(); m.eval(); fuse(m)
x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), np.float32)
for _ in range(2):
    m(x)
ts = []
for _ in range(int(sys.argv[1])):
    t0 = time.perf_counter(); m(x); ts.append(time.perf_counter() - t0)
print(json.dumps(statistics.median(ts) * 1e3))
"""


def _env_run(blas, wait, runs):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY")}
    if blas:
        env["OPENBLAS_NUM_THREADS"] = blas
    if wait:
        env["OMP_WAIT_POLICY"] = wait
    out = subprocess.run([sys.executable, "-c", _WORKER, str(runs)], env=env, check=True, capture_output=True,
                         text=True, cwd=tempfile.gettempdir())  # not a checkout: the installed pydl
    return json.loads(out.stdout.strip().splitlines()[-1])


def environments(runs, rounds):
    """Each combination in a fresh process per round; the rounds visit the combinations in a
    rotated order (a slow spell of the machine does not land on one of them) after one discarded
    warm-up process; per combination the median over the rounds."""
    combos = list(itertools.product((None, "1", "2"), (None, "active", "passive")))
    _env_run(None, None, runs)
    times = {c: [] for c in combos}
    for r in range(rounds):
        for c in combos[r % len(combos):] + combos[:r % len(combos)]:
            times[c].append(_env_run(*c, runs))
    rows = [dict(OPENBLAS_NUM_THREADS=blas or "unset", OMP_WAIT_POLICY=wait or "unset",
                 ms=statistics.median(times[(blas, wait)]), runs_ms=times[(blas, wait)]) for blas, wait in combos]
    best = min(r["ms"] for r in rows)
    for r in rows:
        r["x_best"] = r["ms"] / best
    return rows


def markdown(mix, envs):
    out = ["| pydl call | NumPy matmul | pydl alone ms | pydl after matmul | x | matmul alone ms | matmul after pydl | x |",
           "|---|---|---|---|---|---|---|---|"]
    for r in mix:
        out.append(f"| {r['pydl']} | {r['numpy']} | {r['pydl_alone']:.2f} | {r['pydl_after_numpy']:.2f} | "
                   f"{r['pydl_after_numpy'] / r['pydl_alone']:.2f} | {r['numpy_alone']:.2f} | "
                   f"{r['numpy_after_pydl']:.2f} | {r['numpy_after_pydl'] / r['numpy_alone']:.2f} |")
    out += ["", "| OPENBLAS_NUM_THREADS | OMP_WAIT_POLICY | ResNet-50 b1 ms (median of rounds) | x best | rounds ms |",
            "|---|---|---|---|---|"]
    for r in envs:
        out.append(f"| {r['OPENBLAS_NUM_THREADS']} | {r['OMP_WAIT_POLICY']} | {r['ms']:.1f} | {r['x_best']:.2f} | "
                   f"{' '.join(f'{t:.0f}' for t in r['runs_ms'])} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds")
    p.add_argument("--json", metavar="FILE", help="write the numbers as JSON")
    args = p.parse_args(argv)
    mix = mixed(7 if args.quick else 21)
    envs = environments(3 if args.quick else 7, 2 if args.quick else 5)
    print(markdown(mix, envs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(mixed=mix, environments=envs), f, indent=1)


if __name__ == "__main__":
    main()
