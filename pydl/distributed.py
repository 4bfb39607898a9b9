"""pydl.distributed: collectives between processes (MPI) and GPUs (NCCL), with PyTorch's names.

Start the processes with MPI and initialise once in each of them::

    mpirun -n 4 python train.py           # train.py calls pydl.distributed.init_process_group()

Transport: NumPy arrays travel through MPI (mpi4py) by the buffer interface, in place and
without pickling; CuPy arrays through NCCL (CuPy's bindings, ``cupy.cuda.nccl``) on the
array's device and CuPy's current stream. There is no host round trip for CuPy arrays, and
no transport of pydl's own. ``pip install "pydl[mpi]"`` brings mpi4py and Open MPI.

Every collective must be called by every rank, in the same order, with arrays of the same
shape and dtype (as in PyTorch and MPI). Each call first all-reduces a few integers that
describe it (shape, dtype, op, root, array kind, and whether this rank's arguments were
valid), so a rank that calls with another shape, or with a bad argument, makes the call raise
on every rank instead of a hang or a silent truncation.

API (PyTorch's ``torch.distributed`` where it has the same thing):

- ``init_process_group(backend=None, comm=None)``: join the MPI job, once per process;
  ``destroy_process_group()``; ``is_available()``, ``is_initialized()``.
- ``get_rank()``, ``get_world_size()``; ``get_local_rank()``, ``get_local_world_size()``
  among the ranks on this machine (choose the GPU, divide the cores).
- ``all_reduce(tensor, op="sum")`` (sum, mean, max, min) and ``broadcast(tensor, root=0)``,
  in place; ``all_gather(tensor_list, tensor)`` (PyTorch's form, fills tensor_list) and
  ``all_gather_into_tensor(output, input)`` (every rank's input stacked on axis 0);
  ``barrier()``.
- ``DistributedSampler``: each rank's shard of a data set's indices, reshuffled per epoch.
"""
from __future__ import annotations

import math
import sys
import zlib

import numpy as np

from . import _backend

__all__ = ["ReduceOp", "init_process_group", "destroy_process_group", "is_available", "is_initialized",
           "get_rank", "get_world_size", "get_local_rank", "get_local_world_size", "all_reduce",
           "broadcast", "all_gather", "all_gather_into_tensor", "barrier", "DistributedSampler"]


class ReduceOp:
    """The reduction names ``all_reduce`` takes (PyTorch spells them ``ReduceOp.SUM`` ...)."""
    SUM = "sum"
    AVG = MEAN = "mean"
    MAX = "max"
    MIN = "min"


_OPS = ("sum", "mean", "max", "min")
# dtypes both MPI and NCCL reduce natively; the code is what the per-call header exchanges.
_DTYPES = {np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3, np.dtype(np.int64): 4}
_MAX_COUNT = 1 << 30  # elements per MPI call: MPI counts are C ints


class _State:
    comm = None          # mpi4py communicator (a duplicate: our traffic never meets the user's)
    local_comm = None    # the ranks that share this machine (MPI_COMM_TYPE_SHARED)
    rank = 0
    size = 1
    nccl = None          # device id -> cupy.cuda.nccl.NcclCommunicator, made on first use
    hook = None          # the sys.excepthook we replaced


_S = _State()


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise RuntimeError(f"pydl.distributed needs mpi4py and an MPI library: pip install 'pydl[mpi]' ({e})") from e
    return MPI


def is_available() -> bool:
    """True when mpi4py (and so an MPI library) can be imported."""
    try:
        _mpi()
    except RuntimeError:
        return False
    return True


def is_initialized() -> bool:
    """True between ``init_process_group`` and ``destroy_process_group``."""
    return _S.comm is not None


def _need_init(what):
    if _S.comm is None:
        raise RuntimeError(f"{what}: pydl.distributed is not initialised: call "
                           "pydl.distributed.init_process_group() first (in every process, started by mpirun)")


def init_process_group(backend=None, comm=None, abort_on_exception=True):
    """Join the job that ``mpirun`` (or any MPI launcher) started; call once per process.

    Parameters
    ----------
    backend : {None, 'mpi', 'nccl'}
        Accepted for PyTorch's sake; pydl picks the transport per array (NumPy: MPI,
        CuPy: NCCL), so both names mean the same.
    comm : mpi4py communicator, optional
        The processes that form the group (default ``MPI.COMM_WORLD``). pydl works on a
        duplicate of it, so its messages never mix with the caller's own.
    abort_on_exception : bool
        Install a ``sys.excepthook`` that prints the traceback and then calls
        ``MPI_Abort``: an uncaught exception in one rank ends the whole job at once instead
        of leaving the other ranks waiting forever in their next collective.

    Raises
    ------
    RuntimeError
        Already initialised (call ``destroy_process_group`` first), or mpi4py missing.
    ValueError
        An unknown ``backend``.
    """
    if backend not in (None, "mpi", "nccl"):
        raise ValueError(f"backend: expected None, 'mpi' or 'nccl', got {backend!r}")
    if _S.comm is not None:
        raise RuntimeError("init_process_group: pydl.distributed is already initialised "
                           "(destroy_process_group() first)")
    MPI = _mpi()
    base = MPI.COMM_WORLD if comm is None else comm
    if not isinstance(base, MPI.Intracomm):
        raise TypeError(f"comm: expected an mpi4py Intracomm, got {type(base).__name__}")
    _S.comm = base.Dup()
    _S.local_comm = _S.comm.Split_type(MPI.COMM_TYPE_SHARED, key=_S.comm.Get_rank())
    _S.rank, _S.size = _S.comm.Get_rank(), _S.comm.Get_size()
    _S.nccl = {}
    if abort_on_exception and _S.hook is None:
        _S.hook = sys.excepthook
        sys.excepthook = _abort_hook


def _abort_hook(exc_type, exc, tb):
    """Print the exception as Python would, then take the whole MPI job down with it."""
    (_S.hook or sys.__excepthook__)(exc_type, exc, tb)
    if _S.comm is None or _S.size == 1:
        return
    try:
        sys.stderr.write(f"pydl.distributed: rank {_S.rank} of {_S.size} raised {exc_type.__name__}; "
                         "aborting the job (MPI_Abort)\n")
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        _mpi().COMM_WORLD.Abort(1)


def destroy_process_group():
    """Free the communicators (MPI itself stays up until the process exits, as mpi4py does)."""
    if _S.comm is None:
        return
    _S.nccl = None
    _S.local_comm.Free()
    _S.comm.Free()
    _S.comm = _S.local_comm = None
    _S.rank, _S.size = 0, 1
    if _S.hook is not None:
        sys.excepthook, _S.hook = _S.hook, None


def get_rank() -> int:
    """This process's rank in the group, 0 .. world_size - 1."""
    _need_init("get_rank")
    return _S.rank


def get_world_size() -> int:
    """The number of processes in the group."""
    _need_init("get_world_size")
    return _S.size


def get_local_rank() -> int:
    """This process's rank among the group's processes on the same machine (choose the GPU with it)."""
    _need_init("get_local_rank")
    return _S.local_comm.Get_rank()


def get_local_world_size() -> int:
    """How many of the group's processes share this machine (divide the cores by it)."""
    _need_init("get_local_world_size")
    return _S.local_comm.Get_size()


# ---------------------------------------------------------------- argument checks

def _check_array(fn, name, a, writeable=True):
    """(xp, dtype code) of an array a collective may use in place; errors name the argument."""
    _backend.array_module(**{name: a})
    if a.dtype not in _DTYPES:
        raise TypeError(f"{fn}: {name}: expected dtype float32, float64, int32 or int64, "
                        f"got {_backend._dtype_str(a.dtype)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{fn}: {name}: expected a C-contiguous array (collectives work in place), "
                         "got a non-contiguous view; pass a contiguous copy and copy the result back")
    if writeable:
        _backend.check_writeable(f"{fn}: {name}", a)
    return ("cupy" if _backend.is_cuda(a) else "numpy"), _DTYPES[a.dtype]


_FIELDS = 6  # the most fields a call describes itself by (padded with zeros)


def _agree(fn, error=None, **fields):
    """Check that every rank called fn validly and with the same description (int fields).

    One small MPI all-reduce of (v, -v) under MAX gives each field's max and min at once.
    ``error``, this rank's own validation error, travels as a flag: every rank then raises
    (this one its error, the others a ValueError saying so), so a bad argument on one rank
    never leaves the others waiting in the collective. A field that differs between ranks is
    named in the error, on every rank alike.
    """
    MPI = _mpi()
    vals = np.zeros(1 + _FIELDS, np.int64)
    if error is None:
        vals[1:1 + len(fields)] = list(fields.values())
    else:
        vals[0] = 1
    both = np.concatenate([vals, -vals])
    _S.comm.Allreduce(MPI.IN_PLACE, [both, MPI.INT64_T], op=MPI.MAX)
    if error is not None:
        raise error
    if both[0]:
        raise ValueError(f"{fn}: the call was invalid on another rank (see that rank's error); nothing was exchanged")
    hi, lo = both[1:1 + len(fields)], -both[2 + _FIELDS:2 + _FIELDS + len(fields)]
    bad = [k for k, h, l in zip(fields, hi, lo) if h != l]
    if bad:
        raise ValueError(f"{fn}: expected the same {', '.join(bad)} on every rank, got different values "
                         f"(this rank: {', '.join(f'{k}={fields[k]}' for k in bad)})")


def _validate(fn, check):
    """Run check() -> fields on this rank, then _agree on every rank (raising everywhere if any
    rank's check raised)."""
    try:
        fields, error = check(), None
    except (TypeError, ValueError) as e:
        fields, error = {}, e
    _agree(fn, error, **fields)


def _shape_code(shape):
    return zlib.crc32(np.asarray(shape, np.int64).tobytes())


# ---------------------------------------------------------------- transports

def _mpi_type(dtype):
    MPI = _mpi()
    return {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE,
            np.dtype(np.int32): MPI.INT32_T, np.dtype(np.int64): MPI.INT64_T}[np.dtype(dtype)]


def _chunks(n):
    for start in range(0, n, _MAX_COUNT):
        yield start, min(n, start + _MAX_COUNT)


def _nccl_comm(a):
    """The NCCL communicator of a's device, created (a collective call) on its first use."""
    import cupy
    from cupy.cuda import nccl

    dev = a.device.id
    c = _S.nccl.get(dev)
    if c is None:
        uid = nccl.get_unique_id() if _S.rank == 0 else None
        uid = _S.comm.bcast(uid, root=0)  # 128 bytes of metadata, not array data
        with cupy.cuda.Device(dev):
            c = nccl.NcclCommunicator(_S.size, uid, _S.rank)
        _S.nccl[dev] = c
    return c


def _nccl_args(a):
    from cupy.cuda import nccl

    dt = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
          np.dtype(np.int32): nccl.NCCL_INT32, np.dtype(np.int64): nccl.NCCL_INT64}[a.dtype]
    return _nccl_comm(a), dt, _backend.stream_ptr(_backend.array_module(a=a))


def _all_reduce_sum_like(flat, op):
    """In-place reduction of a contiguous 1-D array by op in sum/max/min (no checks)."""
    if _backend.is_cuda(flat):
        from cupy.cuda import nccl

        c, dt, stream = _nccl_args(flat)
        code = {"sum": nccl.NCCL_SUM, "max": nccl.NCCL_MAX, "min": nccl.NCCL_MIN}[op]
        p = _backend.ptr(flat)
        c.allReduce(p, p, flat.size, dt, code, stream)
        return
    MPI = _mpi()
    mop = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
    t = _mpi_type(flat.dtype)
    for i, j in _chunks(flat.size):
        _S.comm.Allreduce(MPI.IN_PLACE, [flat[i:j], t], op=mop)


def _all_reduce(tensor, op):
    """all_reduce without the argument checks (DDP's buckets: checked once when built)."""
    if tensor.size == 0 or _S.size == 1:
        return tensor
    _all_reduce_sum_like(tensor.reshape(-1), "sum" if op == "mean" else op)
    if op == "mean":
        tensor /= tensor.dtype.type(_S.size)
    return tensor


def _broadcast(tensor, root):
    if tensor.size == 0 or _S.size == 1:
        return tensor
    flat = tensor.reshape(-1)
    if _backend.is_cuda(flat):
        c, dt, stream = _nccl_args(flat)
        p = _backend.ptr(flat)
        c.broadcast(p, p, flat.size, dt, root, stream)
        return tensor
    t = _mpi_type(flat.dtype)
    for i, j in _chunks(flat.size):
        _S.comm.Bcast([flat[i:j], t], root=root)
    return tensor


# ---------------------------------------------------------------- collectives

def all_reduce(tensor, op="sum"):
    """Reduce ``tensor`` over all ranks, in place, as ``torch.distributed.all_reduce``.

    Parameters
    ----------
    tensor : ndarray (NumPy or CuPy), C-contiguous and writeable
        float32, float64, int32 or int64; the same shape and dtype on every rank. Holds the
        result on every rank afterwards. NumPy: MPI_Allreduce in place; CuPy: ncclAllReduce
        on the array's device and CuPy's current stream.
    op : {'sum', 'mean', 'max', 'min'} (or ``ReduceOp.SUM`` ...)
        'mean' is the sum divided by the world size; it needs a float array (an integer mean
        could not be stored in place exactly).

    Returns
    -------
    tensor : the same array (PyTorch returns None; returning it lets calls chain).

    Raises
    ------
    RuntimeError
        Not initialised.
    TypeError
        Not an array, or an unsupported dtype; op='mean' on integers.
    ValueError
        Unknown op; a non-contiguous or read-only array; a shape, dtype, op or array kind
        (NumPy / CuPy) that differs between ranks (raised on every rank).
    """
    _need_init("all_reduce")

    def check():
        kind, dcode = _check_array("all_reduce", "tensor", tensor)
        if op not in _OPS:
            raise ValueError(f"all_reduce: op: expected one of {', '.join(map(repr, _OPS))}, got {op!r}")
        if op == "mean" and tensor.dtype.kind != "f":
            raise TypeError(f"all_reduce: op='mean' expects a float32 or float64 tensor, got {tensor.dtype} "
                            "(reduce with op='sum' and divide)")
        return dict(shape=_shape_code(tensor.shape), size=tensor.size, dtype=dcode, op=_OPS.index(op),
                    array_kind=kind == "cupy")

    _validate("all_reduce", check)
    return _all_reduce(tensor, op)


def broadcast(tensor, root=0, src=None):
    """Copy ``tensor`` from rank ``root`` to every rank, in place, as ``torch.distributed.broadcast``.

    Parameters
    ----------
    tensor : ndarray (NumPy or CuPy), C-contiguous
        Same shape and dtype on every rank; written on every rank but the root (which may
        pass a read-only array).
    root : int, 0 <= root < world_size
        The sending rank. ``src=`` (PyTorch's keyword) is accepted instead.

    Returns
    -------
    tensor : the same array.
    """
    _need_init("broadcast")
    if src is not None:
        root = src

    def check():
        r = _backend.int_arg("root", root, 0)
        if r >= _S.size:
            raise ValueError(f"broadcast: root: expected a rank < world size {_S.size}, got {r}")
        kind, dcode = _check_array("broadcast", "tensor", tensor, writeable=_S.rank != r)
        return dict(shape=_shape_code(tensor.shape), size=tensor.size, dtype=dcode, root=r,
                    array_kind=kind == "cupy")

    _validate("broadcast", check)
    return _broadcast(tensor, int(root))


def all_gather_into_tensor(output_tensor, input_tensor):
    """Every rank's ``input_tensor`` stacked along axis 0 into ``output_tensor``, in place.

    Parameters
    ----------
    output_tensor : ndarray, shape (world_size * n, ...) or (world_size, n, ...)
        C-contiguous, writeable, input_tensor's dtype and array kind; rank r's input lands in
        the r-th 1/world_size of it (as PyTorch's ``all_gather_into_tensor``).
    input_tensor : ndarray, shape (n, ...)
        The same shape on every rank.

    Returns
    -------
    output_tensor
    """
    _need_init("all_gather_into_tensor")

    def check():
        kind, dcode = _check_array("all_gather_into_tensor", "input_tensor", input_tensor, writeable=False)
        _check_array("all_gather_into_tensor", "output_tensor", output_tensor)
        _backend.array_module(input_tensor=input_tensor, output_tensor=output_tensor)
        _backend.check_same_dtype("input_tensor", input_tensor, output_tensor=output_tensor)
        if output_tensor.size != _S.size * input_tensor.size:
            raise ValueError(f"all_gather_into_tensor: output_tensor: expected {_S.size} x {input_tensor.size} = "
                             f"{_S.size * input_tensor.size} elements (world size x input), got shape "
                             f"{tuple(output_tensor.shape)}")
        return dict(shape=_shape_code(input_tensor.shape), size=input_tensor.size, dtype=dcode,
                    array_kind=kind == "cupy")

    _validate("all_gather_into_tensor", check)
    _all_gather(output_tensor.reshape(-1), input_tensor.reshape(-1))
    return output_tensor


def _all_gather(out_flat, in_flat):
    n = in_flat.size
    if n == 0:
        return
    if _S.size == 1:
        out_flat[...] = in_flat
        return
    if _backend.is_cuda(in_flat):
        c, dt, stream = _nccl_args(in_flat)
        c.allGather(_backend.ptr(in_flat), _backend.ptr(out_flat), n, dt, stream)
        return
    t = _mpi_type(in_flat.dtype)
    if n <= _MAX_COUNT:
        _S.comm.Allgather([in_flat, t], [out_flat, t])
        return
    # Huge inputs: gather each chunk of every rank into a staging buffer, then place it.
    view = out_flat.reshape(_S.size, n)
    for i, j in _chunks(n):
        stage = np.empty((_S.size, j - i), in_flat.dtype)
        _S.comm.Allgather([in_flat[i:j], t], [stage, t])
        view[:, i:j] = stage


def all_gather(tensor_list, tensor):
    """``tensor`` of every rank into ``tensor_list``, as ``torch.distributed.all_gather``.

    Parameters
    ----------
    tensor_list : list of world_size ndarrays, each of tensor's shape and dtype
        ``tensor_list[r]`` receives rank r's tensor (written in place; the arrays may be
        views). The data arrive in one staging buffer (one MPI_Allgather / ncclAllGather)
        and are copied from it into the list, on the arrays' own device; use
        ``all_gather_into_tensor`` to receive straight into one array.
    tensor : ndarray (NumPy or CuPy), C-contiguous
        This rank's contribution; the same shape on every rank.

    Returns
    -------
    tensor_list
    """
    _need_init("all_gather")

    def check():
        kind, dcode = _check_array("all_gather", "tensor", tensor, writeable=False)
        if not isinstance(tensor_list, list) or len(tensor_list) != _S.size:
            got = f"a list of {len(tensor_list)}" if isinstance(tensor_list, list) else type(tensor_list).__name__
            raise ValueError(f"all_gather: tensor_list: expected a list of world size {_S.size} arrays, got {got}")
        for i, t in enumerate(tensor_list):
            _backend.array_module(tensor=tensor, **{f"tensor_list[{i}]": t})
            _backend.check_same_dtype("tensor", tensor, **{f"tensor_list[{i}]": t})
            _backend.check_shape(f"all_gather: tensor_list[{i}]", t, tensor.shape)
            _backend.check_writeable(f"all_gather: tensor_list[{i}]", t)
        return dict(shape=_shape_code(tensor.shape), size=tensor.size, dtype=dcode, array_kind=kind == "cupy")

    _validate("all_gather", check)
    xp = _backend.array_module(tensor=tensor)
    stage = xp.empty((_S.size,) + tuple(tensor.shape), tensor.dtype)
    _all_gather(stage.reshape(-1), tensor.reshape(-1))
    for t, s in zip(tensor_list, stage):
        t[...] = s
    return tensor_list


def barrier():
    """Wait until every rank has called barrier (MPI_Barrier). CuPy work already queued on the
    current stream is not waited for: synchronise the stream first where that matters."""
    _need_init("barrier")
    _S.comm.Barrier()


# ---------------------------------------------------------------- data

class DistributedSampler:
    """The indices of a data set that one rank trains on, as ``torch.utils.data.DistributedSampler``.

    Every rank makes the same permutation of ``range(len(dataset))`` (seeded by
    ``seed + epoch``), pads it by repeating its head (or cuts its tail, ``drop_last=True``)
    to a multiple of ``num_replicas``, and keeps every ``num_replicas``-th index from
    ``rank``: the ranks' shards are disjoint and together cover the data set (the few
    padded indices appear twice), and every rank gets the same count, so all ranks run the
    same number of steps.

    Parameters
    ----------
    dataset : sized object or int
        The data set (only ``len(dataset)`` is used) or its length.
    num_replicas, rank : int, optional
        Default: the world size and rank of the initialised group.
    shuffle : bool
        Permute (True) or keep the order 0, 1, 2, ...
    seed : int
        The same on every rank.
    drop_last : bool
        Cut the tail so every index appears at most once (instead of padding).

    Call ``set_epoch(epoch)`` before each epoch for a new permutation (the same on every rank).
    Iterating yields Python ints; ``indices()`` gives them as an int64 array.
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        n = dataset if isinstance(dataset, (int, np.integer)) and not isinstance(dataset, bool) else None
        if n is None:
            try:
                n = len(dataset)
            except TypeError:
                raise TypeError(f"dataset: expected a sized object or an int, got {type(dataset).__name__}") from None
        self.dataset_len = _backend.int_arg("dataset", n, 0)
        if num_replicas is None:
            _need_init("DistributedSampler(num_replicas=None)")
            num_replicas = _S.size
        if rank is None:
            _need_init("DistributedSampler(rank=None)")
            rank = _S.rank
        self.num_replicas = _backend.int_arg("num_replicas", num_replicas, 1)
        self.rank = _backend.int_arg("rank", rank, 0)
        if self.rank >= self.num_replicas:
            raise ValueError(f"rank: expected an int in [0, {self.num_replicas - 1}], got {self.rank}")
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.seed = _backend.int_arg("seed", seed)
        self.epoch = 0
        if self.drop_last and self.dataset_len % self.num_replicas:
            self.num_samples = self.dataset_len // self.num_replicas
        else:
            self.num_samples = math.ceil(self.dataset_len / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch):
        """The epoch whose permutation the next iteration gives (seed + epoch)."""
        self.epoch = _backend.int_arg("epoch", epoch)

    def indices(self):
        """This rank's indices for the current epoch, int64 array of length ``len(self)``."""
        n = self.dataset_len
        if self.shuffle:
            idx = np.random.default_rng(self.seed + self.epoch).permutation(n)
        else:
            idx = np.arange(n)
        if self.total_size > n:  # pad with the head, repeated when the data set is tiny
            idx = np.resize(idx, self.total_size) if n else np.zeros(0, np.int64)
        idx = idx[:self.total_size]
        return idx[self.rank::self.num_replicas].astype(np.int64)

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self):
        return self.num_samples

