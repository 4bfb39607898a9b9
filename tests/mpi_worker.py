"""The MPI side of tests/test_distributed.py: run under ``mpirun -n W python mpi_worker.py OUT_DIR``.

Every rank runs every check in CHECKS, in order, and appends one JSON line per check to
OUT_DIR/rank<r>.jsonl: {"name", "status": "ok" | "fail" | "skip", "msg"}. The pytest side
launches one job per world size and turns each check into a test (ok on every rank = pass).
A check that raises records its traceback; the ranks then meet at a barrier with a deadline,
so a rank left inside a collective (a hang) ends the job by MPI_Abort instead of the test's
timeout. ``--raise-on R`` instead makes rank R raise an uncaught exception after init (the
fail-fast test).
"""
import json
import os
import sys
import time
import traceback

import numpy as np

CHECKS = {}
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


class Skip(Exception):
    pass


def check(name):
    def deco(fn):
        CHECKS[name] = fn
        return fn
    return deco


def rel_error(got, want, floor=0.0):
    """max|got - want| / max|want| (at least floor: a gradient that should be 0, as a conv bias
    before batch norm, is rounding noise on both sides)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    if want.size == 0:
        return 0.0
    scale = max(np.max(np.abs(want)), floor)
    return float(np.max(np.abs(got - want)) / (scale if scale > 0 else 1.0))


def assert_close(got, want, tol, what="", floor=0.0):
    err = rel_error(got, want, floor)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def expect_error(exc, words, fn):
    """fn() must raise exc with every word of `words` in its message."""
    try:
        fn()
    except exc as e:
        for w in words:
            assert w in str(e), f"{exc.__name__} without {w!r}: {e}"
        return
    raise AssertionError(f"expected {exc.__name__} mentioning {words}, nothing raised")


# ---------------------------------------------------------------- the checks
# Each takes (dist, comm, rank, size); comm is the test's own MPI_COMM_WORLD, used for the
# oracle (pickled gathers, independent of pydl.distributed).

SIZES = [(0,), (1,), (7,), (1001,), (3, 5, 7)]


def _data(rng, shape, dtype):
    # Integer-valued floats: every summation order gives the same bits, so sums compare exactly.
    return rng.integers(-1000, 1000, size=shape).astype(dtype)


def _all_reduce_case(dtype, op):
    def run(dist, comm, rank, size):
        dtype_ = np.dtype(dtype)
        for shape in SIZES:
            a = _data(np.random.default_rng(100 + rank), shape, dtype_)
            everyone = np.stack(comm.allgather(a))
            if op == "mean" and dtype_.kind != "f":
                expect_error(TypeError, ["mean", "int64"], lambda: dist.all_reduce(a, op))
                continue
            want = {"sum": everyone.sum(0), "max": everyone.max(0), "min": everyone.min(0),
                    "mean": everyone.sum(0) / size}[op]
            got = dist.all_reduce(a, op=op)
            assert got is a and a.dtype == dtype_ and a.shape == shape, "not in place"
            if op == "mean":
                assert_close(a, want, TOL[dtype_], f"{shape}")
            else:
                assert np.array_equal(a, want.astype(dtype_)), f"{shape}: {op} differs"
            assert all(np.array_equal(a, b) for b in comm.allgather(a)), f"{shape}: ranks differ"
        # Random (non-integer) floats of an odd size: the tolerance of the dtype.
        if dtype_.kind == "f" and op in ("sum", "mean"):
            a = np.random.default_rng(rank).standard_normal(12345).astype(dtype_)
            want = np.stack(comm.allgather(a)).astype(np.float64).sum(0) / (size if op == "mean" else 1)
            assert_close(dist.all_reduce(a, op), want, TOL[dtype_] * 10, "random")
    return run


for _dt in ("float32", "float64", "int64"):
    for _op in ("sum", "mean", "max", "min"):
        check(f"all_reduce-{_dt}-{_op}")(_all_reduce_case(_dt, _op))


@check("all_reduce-errors")
def _(dist, comm, rank, size):
    a = np.zeros((4, 6), np.float32)
    expect_error(ValueError, ["tensor", "contiguous"], lambda: dist.all_reduce(a[:, ::2]))
    ro = np.zeros(5)
    ro.setflags(write=False)
    expect_error(ValueError, ["tensor", "read-only"], lambda: dist.all_reduce(ro))
    expect_error(TypeError, ["tensor", "float16"], lambda: dist.all_reduce(np.zeros(3, np.float16)))
    expect_error(TypeError, ["tensor", "uint8"], lambda: dist.all_reduce(np.zeros(3, np.uint8)))
    expect_error(TypeError, ["tensor", "list"], lambda: dist.all_reduce([1.0, 2.0]))
    expect_error(ValueError, ["op", "prod"], lambda: dist.all_reduce(np.zeros(3), op="prod"))
    # Differences between ranks are found on every rank, not a hang or a truncated message.
    expect_error(ValueError, ["size"], lambda: dist.all_reduce(np.zeros(3 + rank)))
    expect_error(ValueError, ["shape"], lambda: dist.all_reduce(np.zeros((2, 3) if rank else (3, 2))))
    dt = np.float32 if rank else np.float64
    expect_error(ValueError, ["dtype"], lambda: dist.all_reduce(np.zeros(3, dt)))
    expect_error(ValueError, ["op"], lambda: dist.all_reduce(np.zeros(3), op="max" if rank else "min"))
    # A bad argument on one rank only: that rank gets its error, the others one that says so.
    if rank == 1:
        expect_error(ValueError, ["tensor", "contiguous"], lambda: dist.all_reduce(a[:, ::2]))
        expect_error(TypeError, ["op='mean'"], lambda: dist.all_reduce(np.zeros(3, np.int64), "mean"))
        expect_error(ValueError, ["root"], lambda: dist.broadcast(np.zeros(3), root=size))
        expect_error(ValueError, ["tensor_list"], lambda: dist.all_gather([], np.zeros(3)))
    else:
        for fn in (lambda: dist.all_reduce(a), lambda: dist.all_reduce(np.zeros(3), "mean"),
                   lambda: dist.broadcast(np.zeros(3)), lambda: dist.all_gather([np.zeros(3)] * size, np.zeros(3))):
            expect_error(ValueError, ["another rank"], fn)
    assert dist.all_reduce(np.ones(3), op=dist.ReduceOp.SUM)[0] == size  # still in step after the errors


@check("broadcast")
def _(dist, comm, rank, size):
    for dtype in (np.float32, np.float64, np.int64):
        for shape in SIZES:
            for root in range(size):
                a = _data(np.random.default_rng(10 * rank + root), shape, dtype)
                want = comm.bcast(a.copy(), root=root)
                assert dist.broadcast(a, root=root) is a
                assert np.array_equal(a, want), f"{dtype.__name__} {shape} root {root}"
    a = np.full(4, float(rank))
    dist.broadcast(a, src=size - 1)  # PyTorch's keyword
    assert np.all(a == size - 1)
    a = np.full(4, float(rank))
    if rank == 0:
        a.setflags(write=False)  # the root only reads
    dist.broadcast(a, 0)
    assert np.all(a == 0)
    expect_error(ValueError, ["root"], lambda: dist.broadcast(np.zeros(3), root=size))
    expect_error(ValueError, ["root"], lambda: dist.broadcast(np.zeros(3), root=min(rank, 1)))
    expect_error(ValueError, ["tensor", "contiguous"], lambda: dist.broadcast(np.zeros((3, 4))[:, 1]))


@check("all_gather")
def _(dist, comm, rank, size):
    for dtype in (np.float32, np.float64, np.int64):
        for shape in SIZES:
            a = _data(np.random.default_rng(rank), shape, dtype)
            want = comm.allgather(a)
            out = [np.full(shape, -1, dtype) for _ in range(size)]
            assert dist.all_gather(out, a) is out
            assert all(np.array_equal(o, w) for o, w in zip(out, want)), f"{dtype.__name__} {shape}"
            big = np.full((size,) + shape, -1, dtype)
            dist.all_gather_into_tensor(big, a)
            assert np.array_equal(big, np.stack(want)), f"into_tensor {dtype.__name__} {shape}"
            flat = np.full(size * a.size, -1, dtype)
            dist.all_gather_into_tensor(flat, a)
            assert np.array_equal(flat, np.concatenate([w.reshape(-1) for w in want]))
    a = np.ones(3)
    expect_error(ValueError, ["tensor_list", "world size"], lambda: dist.all_gather([np.ones(3)] * (size + 1), a))
    expect_error(ValueError, ["tensor_list[0]", "shape"],
                 lambda: dist.all_gather([np.ones(4) for _ in range(size)], a))
    expect_error(ValueError, ["output_tensor"], lambda: dist.all_gather_into_tensor(np.ones(size * 3 + 1), a))
    expect_error(ValueError, ["size"], lambda: dist.all_gather([np.ones(3 + rank) for _ in range(size)],
                                                               np.ones(3 + rank)))


@check("barrier-and-ranks")
def _(dist, comm, rank, size):
    assert dist.get_rank() == rank and dist.get_world_size() == size
    # mpirun started every rank on this machine: one shared-memory group.
    assert dist.get_local_world_size() == size and dist.get_local_rank() == rank
    t = comm.allgather(time.monotonic())
    dist.barrier()
    assert max(t) <= time.monotonic()
    expect_error(RuntimeError, ["already initialised"], lambda: dist.init_process_group())
    expect_error(ValueError, ["backend"], lambda: dist.init_process_group(backend="gloo"))


@check("distributed-sampler")
def _(dist, comm, rank, size):
    for n in (0, 1, size, 10, 11, 37):
        for shuffle in (True, False):
            for drop_last in (False, True):
                s = dist.DistributedSampler(n, shuffle=shuffle, seed=7, drop_last=drop_last)
                shards = comm.allgather(list(s))
                what = f"n={n} shuffle={shuffle} drop_last={drop_last}"
                assert len({len(x) for x in shards}) == 1 and len(shards[rank]) == len(s), what
                flat = [i for x in shards for i in x]
                if drop_last:
                    assert len(set(flat)) == len(flat) == (n // size) * size, f"{what}: not disjoint"
                else:
                    assert set(flat) == set(range(n)), f"{what}: not covering"
                    assert len(flat) - len(set(flat)) == (-n) % size if n else len(flat) == 0, f"{what}: padding"
                    if n % size == 0:
                        assert len(set(flat)) == len(flat), f"{what}: not disjoint"
                if not shuffle and not drop_last and n % size == 0:
                    assert shards[rank] == list(range(rank, n, size)), what
    s = dist.DistributedSampler(list(range(40)), seed=3)  # a sized data set, world from the group
    assert (s.num_replicas, s.rank) == (size, rank)
    e0 = list(s)
    assert list(s) == e0, "same epoch, same order"
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0 and {i for x in comm.allgather(e1) for i in x} == set(range(40)), "epoch 1"
    assert comm.allgather(e1)[rank] == e1
    expect_error(ValueError, ["rank"], lambda: dist.DistributedSampler(10, num_replicas=2, rank=2))
    expect_error(TypeError, ["dataset"], lambda: dist.DistributedSampler(object()))


def _sync_bn_case(dist, rank, size, dtype, shape_tail, cls):
    """Uneven shards (rank r has r + 2 rows) of one global batch, through SyncBatchNorm and,
    whole, through BatchNorm; forward rows, input gradients, summed parameter gradients and
    running statistics must agree."""
    import pydl.nn as nn

    C = shape_tail[0]
    rows = [r + 2 for r in range(size)]
    start = sum(rows[:rank])
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((sum(rows),) + shape_tail) * 3 + 2).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    ref = cls(C, momentum=0.3, dtype=dtype)
    sbn = nn.SyncBatchNorm(C, momentum=0.3, dtype=dtype)
    for layer in (ref, sbn):
        layer.weight.data[...] = np.linspace(0.5, 1.5, C)
        layer.bias.data[...] = np.linspace(-1, 1, C)
    tol = TOL[np.dtype(dtype)] * 10
    for step in range(2):
        y_ref = ref(x)
        gx_ref = ref.backward(g)
        mine = slice(start, start + rows[rank])
        y = sbn(x[mine])
        gx = sbn.backward(g[mine])
        assert_close(y, y_ref[mine], tol, f"forward, step {step}")
        assert_close(gx, gx_ref[mine], tol, f"grad input, step {step}")
    for name in ("weight", "bias"):
        total = dist.all_reduce(getattr(sbn, name).grad.copy())
        assert_close(total, getattr(ref, name).grad, tol, f"grad {name} summed over ranks")
    assert_close(sbn.running_mean, ref.running_mean, tol, "running_mean")
    assert_close(sbn.running_var, ref.running_var, tol, "running_var")
    assert int(sbn.num_batches_tracked) == 2
    sbn.eval()
    ref.eval()
    assert_close(sbn(x[:3]), ref(x[:3]), tol, "eval mode")


@check("sync-batch-norm")
def _(dist, comm, rank, size):
    import pydl.nn as nn

    for dtype in (np.float64, np.float32):
        _sync_bn_case(dist, rank, size, dtype, (3, 5, 4), nn.BatchNorm2d)
        _sync_bn_case(dist, rank, size, dtype, (4,), nn.BatchNorm1d)
        _sync_bn_case(dist, rank, size, dtype, (2, 6), nn.BatchNorm1d)
    # convert_sync_batchnorm keeps Parameter objects and buffers, and order.
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Sequential(nn.BatchNorm1d(2)))
    w = model[1].weight
    model[1].running_mean[...] = 5
    conv = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert conv is model and isinstance(model[1], nn.SyncBatchNorm) and isinstance(model[2][0], nn.SyncBatchNorm)
    assert model[1].weight is w and float(model[1].running_mean[0]) == 5
    assert list(model.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                        "1.running_var", "1.num_batches_tracked", "2.0.weight", "2.0.bias",
                                        "2.0.running_mean", "2.0.running_var", "2.0.num_batches_tracked"]


def _small_model(nn, sync):
    bn = nn.SyncBatchNorm if sync else nn.BatchNorm2d
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, dtype=np.float64), bn(4, dtype=np.float64), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5, dtype=np.float64))


def _batch(step, n):
    rng = np.random.default_rng(1000 + step)
    return rng.standard_normal((n, 2, 6, 6)), rng.integers(0, 5, n)


def _train_step(model, opt, crit, x, y):
    loss = crit(model(x), y)
    opt.zero_grad()
    model.backward(crit.backward())
    opt.step()
    return loss


@check("ddp-matches-one-process")
def _(dist, comm, rank, size):
    """N SGD steps of DDP(SyncBatchNorm model) on per-rank shards == one process on the whole
    batch (float64, rel. error 1e-10), and every rank holds the same bits."""
    import pydl.nn as nn
    import pydl.optim as optim
    from pydl.nn.parallel import DistributedDataParallel as DDP

    per_rank, steps = 3, 4
    nn.init.manual_seed(0)
    ref = _small_model(nn, sync=False)
    nn.init.manual_seed(rank)  # other initial weights on each rank: DDP must take rank 0's
    ddp = DDP(nn.SyncBatchNorm.convert_sync_batchnorm(_small_model(nn, sync=False)))
    assert len(ddp._buckets) == 1, "one bucket for a small model"
    for (k, a), b in zip(ref.state_dict().items(), ddp.module.state_dict().values()):
        assert np.array_equal(a, b), f"{k}: not rank 0's initial value"
    crit = nn.CrossEntropyLoss()
    opt_ref = optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt = optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    for step in range(steps):
        x, y = _batch(step, per_rank * size)
        _train_step(ref, opt_ref, crit, x, y)
        _train_step(ddp, opt, crit, x[mine], y[mine])
    got, want = ddp.module.state_dict(), ref.state_dict()
    for k in want:
        assert_close(got[k], want[k], 1e-10, k)
    for other in comm.allgather(got):
        assert all(np.array_equal(other[k], got[k]) for k in got), "ranks hold different parameters"


@check("ddp-buckets-no-sync-unused")
def _(dist, comm, rank, size):
    import pydl.nn as nn
    from pydl.nn.parallel import DistributedDataParallel as DDP

    nn.init.manual_seed(0)
    ref = _small_model(nn, sync=False)
    nn.init.manual_seed(0)
    # A tiny cap: a bucket per parameter or two, several all-reduces, the same averages.
    ddp = DDP(nn.SyncBatchNorm.convert_sync_batchnorm(_small_model(nn, sync=False)), bucket_cap_mb=1e-4)
    assert len(ddp._buckets) > 2
    crit = nn.CrossEntropyLoss()
    per_rank = 2
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    # Gradient accumulation: micro-batch 1 under no_sync (local), micro-batch 2 synced.
    for step in range(2):
        x, y = _batch(step, per_rank * size)
        crit(ref(x), y)
        ref.backward(crit.backward())
        crit(ddp(x[mine]), y[mine])
        if step == 0:
            with ddp.no_sync():
                ddp.backward(crit.backward())
            local = ddp.module[0].weight.grad.copy()
            assert not all(np.array_equal(local, o) for o in comm.allgather(local)), "no_sync averaged"
        else:
            ddp.backward(crit.backward())
    for (k, p), q in zip(ref.named_parameters(), ddp.parameters()):
        assert_close(q.grad, p.grad, 1e-10, f"{k}.grad after no_sync + sync", floor=1e-3)
    # A gradient missing on rank 0 counts as zero there; one missing everywhere stays None.
    params = list(ddp.parameters())
    for p in params:
        p.grad = np.full(p.shape, float(rank + 1))
    params[0].grad = None if rank == 0 else params[0].grad
    params[-1].grad = None
    ddp._average_gradients()
    assert params[-1].grad is None
    want0 = sum(r + 1 for r in range(1, size)) / size
    assert np.all(params[0].grad == want0), "a gradient missing on one rank"
    assert np.all(params[1].grad == sum(range(1, size + 1)) / size)
    # Buffers: rank 0's at each forward (broadcast_buffers=True, as PyTorch).
    bn = ddp.module[1]
    bn.running_mean[...] = rank
    ddp.eval()
    ddp(np.zeros((1, 2, 6, 6)))
    assert np.all(bn.running_mean == 0)
    # Every rank needs the same model.
    expect_error(ValueError, ["module", "same"], lambda: DDP(nn.Linear(3, 3 + (rank > 0), dtype=np.float64)))
    expect_error(TypeError, ["module"], lambda: DDP(lambda x: x))


def _cupy_or_skip(size):
    try:
        import cupy
        from cupy.cuda import nccl  # noqa: F401
        import pydl
    except ImportError as e:
        raise Skip(f"CuPy with NCCL is not installed ({e})")
    if not pydl.cuda_available():
        raise Skip(f"no GPU: {pydl.cuda_build_error()}")
    if cupy.cuda.runtime.getDeviceCount() < size:
        raise Skip(f"NCCL needs one GPU per rank: {cupy.cuda.runtime.getDeviceCount()} for {size} ranks")
    return cupy


@check("cupy-nccl-collectives")
def _(dist, comm, rank, size):
    cupy = _cupy_or_skip(size)
    with cupy.cuda.Device(dist.get_local_rank()):
        for dtype in (np.float32, np.float64, np.int64):
            for shape in SIZES:
                a = _data(np.random.default_rng(100 + rank), shape, dtype)
                everyone = np.stack(comm.allgather(a))
                for op, want in (("sum", everyone.sum(0)), ("max", everyone.max(0)), ("min", everyone.min(0))):
                    d = cupy.asarray(a)
                    assert dist.all_reduce(d, op) is d
                    assert np.array_equal(d.get(), want), f"{op} {dtype.__name__} {shape}"
                if np.dtype(dtype).kind == "f":
                    d = cupy.asarray(a)
                    assert_close(dist.all_reduce(d, "mean").get(), everyone.sum(0) / size, TOL[np.dtype(dtype)])
                d = cupy.asarray(a)
                dist.broadcast(d, root=size - 1)
                assert np.array_equal(d.get(), comm.bcast(a, root=size - 1))
                out = [cupy.full(shape, -1, dtype) for _ in range(size)]
                dist.all_gather(out, cupy.asarray(a))
                assert all(np.array_equal(o.get(), w) for o, w in zip(out, everyone))
        expect_error(ValueError, ["array_kind"],
                     lambda: dist.all_reduce(cupy.zeros(3) if rank else np.zeros(3)))


@check("cupy-ddp-matches-one-process")
def _(dist, comm, rank, size):
    cupy = _cupy_or_skip(size)
    import pydl.nn as nn
    import pydl.optim as optim
    from pydl.nn.parallel import DistributedDataParallel as DDP

    with cupy.cuda.Device(dist.get_local_rank()):
        per_rank = 3
        nn.init.manual_seed(0)
        ref = _small_model(nn, sync=False).to("cuda")
        nn.init.manual_seed(rank)
        ddp = DDP(nn.SyncBatchNorm.convert_sync_batchnorm(_small_model(nn, sync=False)).to("cuda"))
        crit = nn.CrossEntropyLoss()
        opt_ref = optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
        opt = optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        for step in range(3):
            x, y = (cupy.asarray(a) for a in _batch(step, per_rank * size))
            _train_step(ref, opt_ref, crit, x, y)
            _train_step(ddp, opt, crit, x[mine], y[mine])
        got, want = ddp.module.state_dict(), ref.state_dict()
        for k in want:
            assert_close(got[k], want[k], 1e-10, k)


@check("destroy-and-init-again")
def _(dist, comm, rank, size):
    dist.destroy_process_group()
    assert not dist.is_initialized()
    expect_error(RuntimeError, ["init_process_group"], dist.get_world_size)
    assert sys.excepthook is sys.__excepthook__ or sys.excepthook.__name__ != "_abort_hook", "hook left behind"
    dist.init_process_group()
    assert dist.is_initialized() and dist.get_rank() == rank and sys.excepthook.__name__ == "_abort_hook"
    assert dist.all_reduce(np.ones(2, np.int64))[0] == size


# ---------------------------------------------------------------- driver

def _meet_or_abort(comm, seconds=20.0):
    """All ranks reach this point within `seconds`, or the job is aborted (a rank is stuck)."""
    req = comm.Ibarrier()
    t0 = time.monotonic()
    while not req.Test():
        if time.monotonic() - t0 > seconds:
            sys.stderr.write(f"rank {comm.Get_rank()}: another rank did not finish its check; aborting\n")
            sys.stderr.flush()
            comm.Abort(2)
        time.sleep(0.0005)


def main(argv):
    out_dir = argv[0]
    from mpi4py import MPI

    import pydl.distributed as dist

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if "--raise-on" in argv:
        dist.init_process_group()
        if rank == int(argv[argv.index("--raise-on") + 1]):
            raise RuntimeError(f"deliberate failure on rank {rank}")
        dist.barrier()  # the other ranks wait here for the one that raised
        print(f"rank {rank}: passed the barrier", flush=True)
        return
    only = set(argv[argv.index("--only") + 1].split(",")) if "--only" in argv else None
    with open(os.path.join(out_dir, f"rank{rank}.jsonl"), "w") as out:
        def report(name, status, msg=""):
            out.write(json.dumps({"name": name, "status": status, "msg": msg[-1500:]}) + "\n")
            out.flush()

        # Before init: every entry point says how to initialise.
        try:
            for fn in (dist.get_rank, dist.get_world_size, dist.barrier, lambda: dist.all_reduce(np.zeros(2)),
                       lambda: dist.DistributedSampler(10)):
                expect_error(RuntimeError, ["init_process_group"], fn)
            report("not-initialised", "ok")
        except Exception:
            report("not-initialised", "fail", traceback.format_exc())
        dist.init_process_group()
        for name, fn in CHECKS.items():
            if only is not None and name not in only:
                continue
            try:
                fn(dist, comm, rank, size)
                report(name, "ok")
            except Skip as e:
                report(name, "skip", str(e))
            except Exception:
                report(name, "fail", traceback.format_exc())
            _meet_or_abort(comm)
        report("done", "ok")


if __name__ == "__main__":
    main(sys.argv[1:])
