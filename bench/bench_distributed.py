"""Data-parallel scaling over MPI: a ResNet-18 training step at 1, 2, ... ranks, and the
throughput of pydl.distributed.all_reduce against mpi4py's own Allreduce on the same buffer.

    python bench/bench_distributed.py [--ranks 1 2] [--batch 8] [--size 64] [--json out.json]

starts ``mpirun -n K`` for each K itself (this file again, as the worker); under a launcher of
your own, ``mpirun -n 2 python bench/bench_distributed.py --worker`` prints rank 0's JSON line.

Training step: forward, mean cross entropy, backward with the bucketed gradient average of
DistributedDataParallel, SGD step; ``--batch`` images of ``--size`` x ``--size`` per rank
(weak scaling: the global batch grows with the ranks), one compute thread per rank by
default. Before timing, the ranks' parameters are checked to be identical after two steps.
The step time is the slowest rank's, the median of ``--steps`` steps, each started together
(a barrier). all_reduce: a buffer of ``--numel`` float32 (25M: 100 MB, about ResNet-50's
gradients), summed in place; pydl and mpi4py alternate, the median of ``--repeats`` each,
and the sum is checked first. GB/s is the buffer size over the time (nccl-tests' "algbw").
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=8, help="images per rank")
    ap.add_argument("--size", type=int, default=64, help="image height and width")
    ap.add_argument("--steps", type=int, default=7, help="timed training steps (median)")
    ap.add_argument("--numel", type=int, default=25_000_000, help="all_reduce buffer, float32 elements")
    ap.add_argument("--repeats", type=int, default=9, help="timed all_reduce calls of each kind")
    ap.add_argument("--threads", type=int, default=1, help="pydl threads per rank")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ---------------------------------------------------------------- worker (one MPI rank)

def _timed(comm, fn):
    """Seconds of fn on the slowest rank, all ranks starting together."""
    from mpi4py import MPI

    comm.Barrier()
    t0 = time.perf_counter()
    fn()
    return comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)


def worker(args):
    from mpi4py import MPI

    import pydl
    import pydl.distributed as dist
    import pydl.nn as nn
    import pydl.optim as optim
    from pydl.models import resnet18
    from pydl.nn.parallel import DistributedDataParallel

    dist.init_process_group()
    pydl.set_num_threads(args.threads)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    out = {"ranks": size, "threads": pydl.get_num_threads(), "batch_per_rank": args.batch, "size": args.size,
           "local_ranks": dist.get_local_world_size(), "mpi": MPI.Get_library_version().split(",")[0].strip()}

    # Training step.
    nn.init.manual_seed(rank)  # DDP must replace these by rank 0's
    model = DistributedDataParallel(resnet18(num_classes=10))
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)

    def step():
        crit(model(x), y)
        opt.zero_grad()
        model.backward(crit.backward())
        opt.step()

    step()
    step()
    mine = np.concatenate([p.data.reshape(-1) for p in model.parameters()])
    rank0 = mine.copy()
    dist.broadcast(rank0, 0)
    out["replicas_identical"] = bool(comm.allreduce(int(np.array_equal(mine, rank0)), op=MPI.MIN))
    times = [_timed(comm, step) for _ in range(args.steps)]
    out["step_ms"] = statistics.median(times) * 1e3
    out["images_per_s"] = args.batch * size / statistics.median(times)
    out["grad_avg_ms"] = statistics.median(_timed(comm, model._average_gradients) for _ in range(3)) * 1e3
    out["buckets"] = len(model._buckets)
    out["params"] = int(mine.size)

    # all_reduce of one large buffer: pydl against mpi4py, alternating.
    if size > 1:
        buf = np.full(args.numel, float(rank + 1), np.float32)
        dist.all_reduce(buf)
        assert np.all(buf == size * (size + 1) / 2), "all_reduce: wrong sum"
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(_timed(comm, lambda: dist.all_reduce(buf)))
            theirs.append(_timed(comm, lambda: comm.Allreduce(MPI.IN_PLACE, [buf, MPI.FLOAT], op=MPI.SUM)))
        gb = buf.nbytes / 1e9
        out["allreduce_mb"] = buf.nbytes / 1e6
        out["pydl_allreduce_ms"] = statistics.median(ours) * 1e3
        out["mpi4py_allreduce_ms"] = statistics.median(theirs) * 1e3
        out["pydl_allreduce_gbs"] = gb / statistics.median(ours)
        out["mpi4py_allreduce_gbs"] = gb / statistics.median(theirs)
        out["pydl_vs_mpi4py"] = statistics.median(theirs) / statistics.median(ours)
    if rank == 0:
        print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------- launcher

def _launch(args, n):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY="PASSIVE")
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    cmd = [mpirun if os.path.exists(mpirun) else "mpirun", "-n", str(n), "--oversubscribe", sys.executable,
           os.path.abspath(__file__), "--worker", "--batch", str(args.batch), "--size", str(args.size),
           "--steps", str(args.steps), "--numel", str(args.numel), "--repeats", str(args.repeats),
           "--threads", str(args.threads)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    lines = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def table(results):
    base = next((r for r in results if r["ranks"] == 1), results[0])
    rows = ["| ranks x threads | step ms | images/s | speedup | grad average ms | replicas identical |",
            "|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['ranks']} x {r['threads']} | {r['step_ms']:.1f} | {r['images_per_s']:.1f} | "
                    f"{r['images_per_s'] / base['images_per_s']:.2f} | {r['grad_avg_ms']:.1f} | "
                    f"{r['replicas_identical']} |")
    ar = [r for r in results if "pydl_allreduce_ms" in r]
    if ar:
        rows += ["", "| ranks | buffer MB | pydl all_reduce ms | GB/s | mpi4py Allreduce ms | GB/s | pydl / mpi4py |",
                 "|---|---|---|---|---|---|---|"]
        for r in ar:
            rows.append(f"| {r['ranks']} | {r['allreduce_mb']:.0f} | {r['pydl_allreduce_ms']:.1f} | "
                        f"{r['pydl_allreduce_gbs']:.2f} | {r['mpi4py_allreduce_ms']:.1f} | "
                        f"{r['mpi4py_allreduce_gbs']:.2f} | {r['pydl_vs_mpi4py']:.2f}x |")
    return "\n".join(rows)


def main(argv=None):
    args = _args(argv)
    if args.worker or "OMPI_COMM_WORLD_SIZE" in os.environ or "PMI_SIZE" in os.environ:
        return worker(args)
    results = [_launch(args, n) for n in args.ranks]
    r0 = results[0]
    print(f"resnet18 training step, {r0['batch_per_rank']} images of {r0['size']}x{r0['size']} per rank, "
          f"float32, {os.cpu_count()} cores, {r0['mpi']}\n")
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
