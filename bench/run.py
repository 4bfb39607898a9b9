"""pydl parity + benchmark report.

    python bench/run.py                 # the network table (CPU): pydl vs PyTorch vs ONNX Runtime
    python bench/run.py --all           # then every kernel on the default device
    python bench/run.py --kernels       # every kernel, without the network table
    python bench/run.py --networks resnet50 --quick
    python bench/run.py --user-networks # CNNs pydl.models lacks, written with pydl.functional
    python bench/run.py --device cpu --op conv2d --json out.json --plot out.png   # kernels only
    python bench/run.py --sweep [--quick]  # only the conv2d layer sweep (bench_conv_sweep.py), CPU
    python bench/run.py --in-network    # only convolutions inside each network vs alone (bench_in_network.py)

The network table (bench_networks.py) leads: pydl.models at batch 1 and 8, evaluation forward
and a training step, each framework in its own process on the same weights and input, first
checked against PyTorch in float64, then timed in alternating rounds. Without PyTorch, pydl's
own times, checked against its unfused model in float64.

The kernel table (--all, or --op): for each case the relative error against the float64 NumPy
reference at the benchmark shape, then the median time of pydl, the NumPy reference and PyTorch
(when installed), measured in the same run, with GFLOP/s or GB/s and speedups.
On the CPU pydl and PyTorch are timed in 5 alternating rounds (median of at least 5 runs
and 50 ms each) and the best round of each is reported; dense convolution rows also time the
GEMM yardstick in each round and report their GFLOP/s as a share of it.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import bench_networks  # noqa: E402
import pydl  # noqa: E402
from common import settle, time_cpu, time_cupy, time_torch_cuda, try_torch  # noqa: E402

BENCH_MODULES = ["bench_conv", "bench_pool", "bench_batch_norm", "bench_cross_entropy", "bench_nms",
                 "bench_roi_pool", "bench_roi_align", "bench_deform_conv", "bench_interpolate",
                 "bench_local_response_norm", "bench_soft_nms", "bench_activation", "bench_linear"]


_GEMM = {}


def machine_gemm_gflops(runs=7, median_of=1) -> float:
    """float32 GEMM rate of this machine: numpy matmul on 2048x2048 (the yardstick in the README),
    the best of `runs` (each the median of `median_of` calls): the yardstick is what the machine
    can do, not a noisy median."""
    if not _GEMM:
        _GEMM["a"] = np.random.rand(2048, 2048).astype(np.float32)
        _GEMM["b"] = np.random.rand(2048, 2048).astype(np.float32)
        _GEMM["a"] @ _GEMM["b"]  # NumPy's BLAS starts its threads
    a, b = _GEMM["a"], _GEMM["b"]
    settle()
    best = min(time_cpu(lambda: a @ b, repeats=median_of, warmup=0) for _ in range(runs))
    return 2 * 2048**3 / (best * 1e-3) / 1e9


def fmt(v, spec="{:.3f}"):
    return "-" if v is None else spec.format(v)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when pydl.cuda_available(), else cpu")
    p.add_argument("--all", action="store_true", help="the kernel table too, after the network table")
    p.add_argument("--kernels", action="store_true", help="the kernel table only, without the network table")
    p.add_argument("--networks", action="append", metavar="NAME",
                   help="only these networks (repeatable or comma-separated): "
                   + ", ".join(bench_networks.MODELS + bench_networks.USER_MODELS))
    p.add_argument("--user-networks", action="store_true", help="the network table of CNNs pydl.models does "
                   "not define, run layer by layer through pydl.functional: " + ", ".join(bench_networks.USER_MODELS))
    p.add_argument("--op", action="append", help="only these kernel families (repeatable), e.g. conv2d; "
                   "alone, the kernel table without the network table")
    p.add_argument("--quick", action="store_true", help="fewer repeats and no NumPy reference timing")
    p.add_argument("--no-reference", action="store_true", help="skip timing the NumPy reference")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    p.add_argument("--tf32", action="store_true", help="allow TF32 tensor-core math for float32 on the GPU "
                   "(pydl.set_allow_tf32 and PyTorch's allow_tf32 alike)")
    p.add_argument("--json", metavar="FILE", help="write the numbers as JSON")
    p.add_argument("--plot", metavar="FILE", help="write a PNG chart of the kernel speedups (needs matplotlib)")
    p.add_argument("--sweep", action="store_true", help="run only the conv2d sweep on the CPU: every distinct "
                   "layer of ResNet-18/50, ResNeXt-50 32x4d and MobileNetV2 at batch 1 and 8, and grouped and "
                   "dilated 3x3 families (minutes; with --quick fewer repeats)")
    p.add_argument("--layer", action="append", metavar="TEXT", help="--sweep: only the cases whose shape, "
                   "network, module or family contains TEXT (repeatable), e.g. mobilenet or 'g32'")
    p.add_argument("--in-network", action="store_true", help="run only the table of convolutions inside each "
                   "pydl.models network against the same convolutions alone (pydl, CPU; --networks selects)")
    args = p.parse_args(argv)
    if args.in_network:
        import bench_in_network

        rows = bench_in_network.run(bench_networks.check_names(bench_networks.parse_names(args.networks), user=False))
        print()
        print(bench_in_network.markdown(rows))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"in_network": rows}, f, indent=1)
        return 0
    if args.sweep and (args.device == "cuda" or args.op or args.plot):
        p.error("--sweep times the CPU only and takes no --op or --plot")
    if args.layer and not args.sweep:
        p.error("--layer selects sweep cases: use it with --sweep")

    networks = bench_networks.parse_names(args.networks)
    if args.user_networks:
        networks = (networks or []) + bench_networks.USER_MODELS
    networks = bench_networks.check_names(networks)
    run_kernels = bool(args.all or args.op or args.kernels or args.sweep)
    run_networks = bool(args.all or args.networks or args.user_networks or not (args.op or args.kernels or args.sweep))
    start = time.perf_counter()
    if args.tf32:
        pydl.set_allow_tf32(True)
    device = "cpu" if args.sweep else args.device or ("cuda" if pydl.cuda_available() else "cpu")
    if device == "cuda" and not pydl.cuda_available():
        sys.exit(f"--device cuda: {pydl.cuda_build_error()}")
    # The driver of the network table imports no PyTorch (its workers do).
    torch = None if args.no_torch or not run_kernels else try_torch()
    if torch is not None and device == "cuda" and not torch.cuda.is_available():
        torch = None
    if torch is not None and device == "cuda":
        allow_tf32 = pydl.get_allow_tf32()
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32

    info = {
        "device": device,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": getattr(torch, "__version__", None) or _version("torch", args.no_torch),
        "threads": pydl._backend.cpu().max_threads(),
        "tf32": pydl.get_allow_tf32(),
    }
    if not run_kernels:
        del info["device"], info["tf32"]
    elif device == "cpu":
        info["numpy_gemm_gflops"] = round(machine_gemm_gflops(), 1)
    else:
        import cupy

        info["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print("pydl benchmark:", ", ".join(f"{k}={v}" for k, v in info.items()))
    if args.sweep:
        return run_sweep(args, info, torch)
    out = {"info": info}
    failed = False

    if run_networks:
        print("\nNetworks on the CPU, float32, 224x224 (each framework in its own process):")
        nets = bench_networks.run(networks, args.quick, args.no_torch)
        print()
        print(bench_networks.markdown(nets))
        print()
        out["networks"] = nets
        failed |= bool(bench_networks.report_parity(nets))
        if not run_kernels:
            print(f"Total wall time {time.perf_counter() - start:.1f} s.")
            _write_json(args.json, out)
            return int(failed)
        print(f"Kernels on {device}:")

    rows = []
    for modname in BENCH_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError:
            continue
        for case in mod.cases(device, args.quick):
            if args.op and case.op not in args.op:
                continue
            row = {"op": case.op, "case": case.name, "dir": case.direction}
            row["rel_err"] = case.check() if case.check else None
            use_torch = torch is not None and case.torch is not None
            row["torch_ms"] = None
            if device == "cpu":
                row["pydl_ms"], torch_ms, gemm = time_cpu_rounds(case, torch if use_torch else None, args.quick)
                if use_torch:
                    row["torch_ms"] = torch_ms
            else:
                row["pydl_ms"] = time_cupy(case.run, repeats=5 if args.quick else 20)
                if use_torch:
                    with torch.no_grad() if case.direction == "fwd" else _nullcontext():
                        row["torch_ms"] = time_torch_cuda(case.torch, repeats=5 if args.quick else 20)
            row["ref_ms"] = None
            if case.reference and not (args.quick or args.no_reference):
                if device == "cpu":
                    settle()
                row["ref_ms"] = time_cpu(case.reference, repeats=case.ref_repeats, warmup=0, budget_s=20)
            t = row["pydl_ms"] * 1e-3
            row["gflops"] = case.flops / t / 1e9 if case.flops else None
            row["pct_gemm"] = None
            if device == "cpu" and gemm and row["gflops"]:
                row["pct_gemm"] = 100 * row["gflops"] / gemm
                row["gemm_gflops"] = gemm
            row["gbs"] = case.bytes / t / 1e9 if case.bytes else None
            row["x_ref"] = row["ref_ms"] / row["pydl_ms"] if row["ref_ms"] else None
            row["x_torch"] = row["torch_ms"] / row["pydl_ms"] if row["torch_ms"] else None
            row.update(case.extra)
            rows.append(row)
            print(_line(row), flush=True)

    print()
    print(markdown_table(rows))
    print(f"Total wall time {time.perf_counter() - start:.1f} s.")
    out["rows"] = rows
    _write_json(args.json, out)
    if args.plot:
        plot(rows, args.plot, device)
    # TF32 keeps 10 mantissa bits: ~1e-3 relative error is its expected accuracy.
    bound = 1e-2 if info["tf32"] else 1e-4
    bad = [r for r in rows if r["rel_err"] is not None and not (r["rel_err"] <= bound)]
    if bad:
        print(f"PARITY FAILED on {len(bad)} case(s)", file=sys.stderr)
        failed = True
    return int(failed)


def _version(dist, skip):
    if skip:
        return None
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _write_json(path, out):
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=1)


def run_sweep(args, info, torch):
    """bench_conv_sweep.py's layers: a line per row as it goes, then the table, the per-family
    summary and the wall time; 1 if a parity check failed."""
    import bench_conv_sweep as sweep

    start = time.perf_counter()
    rows = sweep.run(torch, args.quick, time_cpu_rounds, args.layer)
    wall = time.perf_counter() - start
    summary = sweep.summarize(rows)
    print()
    print(sweep.markdown_table(rows))
    print()
    print(sweep.summary_table(summary))
    print(f"\nsweep: {len({r['case'] for r in rows})} cases in {wall:.0f} s" + (" (--quick)" if args.quick else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "rows": rows, "summary": summary, "wall_s": wall, "quick": args.quick}, f,
                      indent=1)
    bad = [r for r in rows if r["rel_err"] is not None and not (r["rel_err"] <= sweep.PARITY_BOUND)]
    if bad:
        print(f"PARITY FAILED on {len(bad)} row(s)", file=sys.stderr)
        return 1
    return 0


def time_cpu_rounds(case, torch, quick, plan=None):
    """pydl and PyTorch timed in alternating rounds (median of at least 5 runs and 50 ms each),
    keeping each one's best round; with case.gemm_yardstick, also the GEMM yardstick, by the same
    rule (the median of at least 5 runs per round, the best round), so the ratio compares like
    with like: a yardstick from fewer samples per round has a noisier median, and the best of
    noisier medians reads high. 5 rounds: with 3, a sub-ms row's ratio swung by 20% between runs.
    On a small shared VM a burst of outside load, or the host's clock, lands on
    whatever is running; alternating gives all the same chances, and the best round drops the
    burst (the machine-wide yardstick timed once at the start read 137 to 171 GFLOP/s on one
    machine across runs). settle() first: the other runtimes' threads (NumPy's OpenBLAS after
    the parity check, the other library's OpenMP pool) spin for a while after their last call.
    `plan`, (rounds, repeats, min_s), replaces that choice: the layer sweep budgets each layer by
    its time. Returns (pydl ms, PyTorch ms or None, GEMM GFLOP/s or None)."""
    rounds, repeats, min_s = plan or ((1, 3, 0.0) if quick else (5, 5, 0.05))
    mine, theirs, gemm = [], [], []
    for _ in range(rounds):
        if case.gemm_yardstick:
            gemm.append(machine_gemm_gflops(runs=1, median_of=repeats))
        settle()
        mine.append(time_cpu(case.run, repeats=repeats, min_s=min_s))
        if torch is not None:
            settle()
            with torch.no_grad() if case.direction == "fwd" else _nullcontext():
                theirs.append(time_cpu(case.torch, repeats=repeats, min_s=min_s))
    return min(mine), (min(theirs) if theirs else None), (max(gemm) if gemm else None)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _line(r):
    return (f"{r['op']:<14} {r['dir']:<9} {r['case']:<34} err={fmt(r['rel_err'], '{:.1e}')} "
            f"pydl={fmt(r['pydl_ms'])}ms ref={fmt(r['ref_ms'])}ms torch={fmt(r['torch_ms'])}ms "
            f"x_ref={fmt(r['x_ref'], '{:.1f}')} x_torch={fmt(r['x_torch'], '{:.2f}')}"
            + (f" gemm={r['pct_gemm']:.0f}% of {r['gemm_gflops']:.1f} GFLOP/s" if r.get("pct_gemm") else ""))


def markdown_table(rows):
    head = ("| op | dir | case | rel err | pydl ms | GFLOP/s | % GEMM | GB/s | NumPy ref ms | PyTorch ms | x ref "
            "| x PyTorch |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['dir']} | {r['case']} | {fmt(r['rel_err'], '{:.1e}')} | {fmt(r['pydl_ms'])} | "
            f"{fmt(r['gflops'], '{:.1f}')} | {fmt(r.get('pct_gemm'), '{:.0f}')} | {fmt(r['gbs'], '{:.1f}')} | "
            f"{fmt(r['ref_ms'], '{:.2f}')} | "
            f"{fmt(r['torch_ms'])} | {fmt(r['x_ref'], '{:.1f}')} | {fmt(r['x_torch'], '{:.2f}')} |")
    return "\n".join(lines)


def plot(rows, path, device):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['op']} {r['dir']}\n{r['case']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, 0.5 * len(rows)), 6))
    xs = np.arange(len(rows))
    ax.bar(xs - 0.2, [r["x_torch"] or 0 for r in rows], 0.4, label="speedup vs PyTorch")
    ax.bar(xs + 0.2, [min(r["x_ref"] or 0, 100) for r in rows], 0.4, label="speedup vs NumPy reference (cap 100)")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=90, fontsize=6)
    ax.set_ylabel("speedup (x)")
    ax.set_title(f"pydl on {device}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
