"""Data-parallel training: DistributedDataParallel, as ``torch.nn.parallel``.

Each rank holds a full replica of the model and trains on its own shard of every batch.
After each backward, the gradients are averaged over the ranks, so every replica takes the
same optimizer step and the replicas stay identical. With a mean loss on equal per-rank
batches, the average of the ranks' gradients is the gradient of the mean loss over the
global batch (the ranks' batches together).

pydl has no autograd, so the gradient average runs at the end of ``DDP.backward`` (PyTorch
overlaps it with the backward through hooks): the gradients are copied into a few flat
buckets of about ``bucket_cap_mb`` megabytes and each bucket is averaged with one
all-reduce (MPI for NumPy arrays, NCCL for CuPy arrays; see ``pydl.distributed``), instead of
one small all-reduce per parameter.
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager

import numpy as np

from .. import _backend
from .. import distributed as dist
from .module import Module

__all__ = ["DistributedDataParallel"]


def _kind(a):
    """Arrays that may share a flat bucket: the same array kind, device and dtype."""
    return ("cuda", a.device.id, a.dtype.str) if _backend.is_cuda(a) else ("cpu", -1, a.dtype.str)


def _xp(a):
    return _backend.array_module(a=a)


class DistributedDataParallel(Module):
    """Wrap ``module`` for data-parallel training over the ranks of ``pydl.distributed``.

    Parameters
    ----------
    module : Module
        The replica on this rank; the same structure (parameter and buffer shapes and dtypes,
        in the same order) on every rank, on the CPU (NumPy) or one GPU per rank (CuPy).
    broadcast_buffers : bool
        Copy rank 0's buffers (batch norm running statistics) to every rank at the start of
        each forward, as PyTorch does, so the replicas evaluate alike. The batch statistics
        that normalise a training batch stay per rank either way; convert batch norms with
        ``SyncBatchNorm.convert_sync_batchnorm`` to normalise over the global batch.
    bucket_cap_mb : float
        Gradient bucket size in MiB (PyTorch's default, 25). A parameter larger than that
        gets a bucket of its own.

    Notes
    -----
    - Construction is collective: it checks that every rank has the same structure
      (``ValueError`` otherwise) and copies rank 0's parameters and buffers to every rank.
    - ``forward(x)`` runs ``module.forward(x)``. ``backward(grad_out)`` runs
      ``module.backward(grad_out)`` (which ADDS into each ``Parameter.grad``) and then
      replaces every gradient by its average over the ranks: call it on every rank, as any
      collective. Inside ``with ddp.no_sync():`` the average is skipped and gradients just
      accumulate locally; the first backward after it averages the accumulated sum.
    - A parameter without a gradient on some ranks counts as zero there; one without a
      gradient on every rank keeps ``grad = None``.
    - ``state_dict()`` keys start with ``module.``, as PyTorch's; save ``ddp.module`` for
      a checkpoint that loads into the plain model.
    """

    def __init__(self, module, broadcast_buffers=True, bucket_cap_mb=25.0):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"module: expected a pydl.nn.Module, got {type(module).__name__}")
        dist._need_init("DistributedDataParallel")
        cap = _backend.float_arg("bucket_cap_mb", bucket_cap_mb, minimum=0.0)
        if cap <= 0:
            raise ValueError(f"bucket_cap_mb: expected a float > 0, got {bucket_cap_mb}")
        self.module = module
        self.broadcast_buffers = bool(broadcast_buffers)
        self.bucket_cap_mb = cap
        self.require_backward_grad_sync = True
        object.__setattr__(self, "_params", list(module.parameters()))
        self._check_same_structure()
        object.__setattr__(self, "_buckets", self._make_buckets(int(cap * 2**20)))
        object.__setattr__(self, "_flat", [None] * len(self._buckets))
        for p in self._params:
            p.data = _broadcast_any(p.data)
        self._sync_buffers()

    def extra_repr(self):
        return f"world_size={dist.get_world_size()}, buckets={len(self._buckets)}"

    # -------------------------------------------------------- setup
    def _check_same_structure(self):
        desc = [(name, tuple(p.shape), p.dtype.str) for name, p in self.module.named_parameters()]
        desc += [(name, tuple(b.shape), b.dtype.str) for name, b in self.module.named_buffers()]
        try:
            dist._agree("DistributedDataParallel", parameters_and_buffers=len(desc),
                        their_names_shapes_and_dtypes=zlib.crc32(repr(desc).encode()))
        except ValueError as e:
            raise ValueError(f"module: expected the same model on every rank; {e}") from None

    def _make_buckets(self, cap_bytes):
        """Lists of (index into _params, offset, size), filled from the last parameter back (the
        order backward produces them, as PyTorch), one array kind and dtype per bucket."""
        buckets, open_ = [], {}
        for i in reversed(range(len(self._params))):
            a = self._params[i].data
            k = _kind(a)
            b = open_.get(k)
            if b is None or (b["bytes"] and b["bytes"] + a.nbytes > cap_bytes):
                b = {"kind": k, "items": [], "size": 0, "bytes": 0}
                open_[k] = b
                buckets.append(b)
            b["items"].append((i, b["size"], a.size))
            b["size"] += a.size
            b["bytes"] += a.nbytes
        return buckets

    # -------------------------------------------------------- calling
    def forward(self, *args, **kwargs):
        if self.broadcast_buffers:
            self._sync_buffers()
        return self.module(*args, **kwargs)

    def backward(self, grad_out):
        grad_in = self.module.backward(grad_out)
        if self.require_backward_grad_sync:
            self._average_gradients()
        return grad_in

    @contextmanager
    def no_sync(self):
        """Skip the gradient average in the backward calls inside (gradient accumulation)."""
        old = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = old

    # -------------------------------------------------------- communication
    def _average_gradients(self):
        if dist.get_world_size() == 1:
            return
        params = self._params
        # Which parameters have a gradient somewhere: one small all-reduce, so that every rank
        # agrees on which gradients to set (a branch unused on one rank counts as zero there).
        have = np.array([p.grad is not None for p in params], np.int32)
        dist._all_reduce(have, "max")
        for bi, b in enumerate(self._buckets):
            items = b["items"]
            if not any(have[i] for i, _, _ in items):
                continue
            if len(items) == 1 and params[items[0][0]].grad is not None and \
                    _contiguous_writeable(params[items[0][0]].grad):
                dist._all_reduce(params[items[0][0]].grad, "mean")  # one parameter: in place
                continue
            flat = self._bucket_buffer(bi, b)
            for i, off, n in items:
                g = params[i].grad
                if g is None:
                    flat[off:off + n] = 0
                else:
                    flat[off:off + n] = g.reshape(-1)
            dist._all_reduce(flat, "mean")
            for i, off, n in items:
                if not have[i]:
                    continue
                p = params[i]
                avg = flat[off:off + n].reshape(p.shape)
                if p.grad is None:
                    p.grad = avg.copy()
                else:
                    p.grad[...] = avg

    def _bucket_buffer(self, bi, b):
        """The bucket's flat array, kept between steps (a fresh one each step would page-fault
        its way through tens of MB); remade when the parameters moved or changed dtype."""
        first = self._params[b["items"][0][0]].data
        flat = self._flat[bi]
        if flat is None or _kind(flat) != _kind(first) or flat.size != b["size"]:
            flat = _xp(first).empty(b["size"], first.dtype)
            self._flat[bi] = flat
        return flat

    def _sync_buffers(self):
        """Rank 0's buffers to every rank: one broadcast per array kind and dtype."""
        if dist.get_world_size() == 1:
            return
        groups = {}
        for m in self.module.modules():
            for name, b in m._buffer_items():
                if b is not None:
                    groups.setdefault(_kind(b), []).append((m, name, b))
        for items in groups.values():
            xp = _xp(items[0][2])
            flat = xp.concatenate([b.reshape(-1) for _, _, b in items])
            dist._broadcast(flat, 0)
            if dist.get_rank() == 0:
                continue
            off = 0
            for m, name, b in items:
                new = flat[off:off + b.size].reshape(b.shape)
                off += b.size
                if _contiguous_writeable(b):
                    b[...] = new
                else:
                    object.__setattr__(m, name, new.copy())


def _contiguous_writeable(a):
    return a.flags.c_contiguous and getattr(a.flags, "writeable", True)


def _broadcast_any(a):
    """a with rank 0's values: broadcast in place, or into a contiguous copy that is returned."""
    if not _contiguous_writeable(a):
        a = _xp(a).ascontiguousarray(a).copy()
    dist._broadcast(a, 0)
    return a
