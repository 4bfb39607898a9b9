"""Benchmark machinery shared by every bench_<op>.py.

A bench module exposes ``cases(device, quick) -> list[Case]``. The driver (run.py)
checks parity at the benchmark shape first, then times pydl, the NumPy reference and
PyTorch (when installed) in the same run: warm-up, then the median of several runs
(CPU: a monotonic clock; GPU: CUDA events on the current stream).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np


@dataclass
class Case:
    op: str                      # kernel family, e.g. "conv2d"
    name: str                    # shape / configuration
    direction: str               # "fwd", "bwd", "fwd+bwd", "train fwd", ...
    run: Callable[[], Any]       # pydl
    reference: Optional[Callable[[], Any]] = None  # pydl.reference (NumPy, CPU)
    torch: Optional[Callable[[], Any]] = None      # PyTorch on the same device
    check: Optional[Callable[[], float]] = None    # relative error vs the float64 reference
    flops: float = 0.0           # minimal work, for GFLOP/s
    bytes: float = 0.0           # minimal traffic, for GB/s
    ref_repeats: int = 3         # the NumPy reference can be slow
    gemm_yardstick: bool = False  # CPU: report GFLOP/s as a share of the GEMM rate timed beside it
    extra: dict = field(default_factory=dict)


def try_torch():
    try:
        import torch  # noqa: F401

        return torch
    except Exception:
        return None


def settle(seconds=0.1):
    """Sleep before a CPU timing: NumPy's OpenBLAS threads keep spinning for tens of ms after a
    GEMM (the parity check and the reference run one), and on 2 cores they took half the
    machine from the next timed kernel (a 1.3 ms convolution read 16 ms)."""
    time.sleep(seconds)


def time_cpu(fn, repeats=7, warmup=1, budget_s=10.0, min_s=0.0):
    """Median ms of at least `repeats` runs, more until `min_s` seconds have passed (a 0.3 ms
    kernel's median of 5 is a handful of samples against a noisy neighbour), at most
    `budget_s` seconds once 3 runs are in."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        if len(times) >= 3 and elapsed > budget_s:
            break
        if len(times) >= repeats and elapsed >= min_s:
            break
    return statistics.median(times) * 1e3


def time_cupy(fn, repeats=20, warmup=3):
    import cupy

    for _ in range(warmup):
        fn()
    stream = cupy.cuda.get_current_stream()
    times = []
    for _ in range(repeats):
        a, b = cupy.cuda.Event(), cupy.cuda.Event()
        a.record(stream)
        fn()
        b.record(stream)
        b.synchronize()
        times.append(cupy.cuda.get_elapsed_time(a, b))
    return statistics.median(times)


def time_torch_cuda(fn, repeats=20, warmup=3):
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def rel_error(got, want) -> float:
    if hasattr(got, "get"):
        got = got.get()
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    scale = np.max(np.abs(want)) if want.size else 0.0
    diff = np.max(np.abs(got - want)) if want.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def max_rel_error(pairs) -> float:
    return max(rel_error(g, w) for g, w in pairs)
