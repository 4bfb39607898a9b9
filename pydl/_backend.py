"""The one place that knows about devices.

NumPy arrays run the C++ kernels of ``pydl._cpu``; CuPy arrays run the CUDA kernels
of ``pydl._cuda`` on the array's device and CuPy's current stream. CuPy is imported
lazily, so pydl works without it. Argument checks shared by every op live here too,
so that messages read the same everywhere ("expected X, got Y").
"""
from __future__ import annotations

import ctypes
import importlib
import math
import numbers
import os
import threading

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Tests set this so that every output starts as NaN and an unwritten element fails.
_POISON = False
_ALLOW_TF32 = False

_cpu_module = None
_cuda_module = None
_cuda_error: str | None = None


def _load_openblas():
    # RPATH finds libscipy_openblas.so in a normal install; preloading it by full path
    # also covers layouts where the two packages are not siblings (editable installs).
    try:
        import scipy_openblas32

        path = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(True))
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except (ImportError, OSError):
        pass


# GNU OpenMP's idle threads spin 300,000 rounds after each parallel region before they sleep; on
# a machine with few cores that takes the cores from whatever runs next (NumPy's BLAS right after
# a pydl call). A round is a PAUSE instruction, about 10x longer on recent Intel cores than on
# AMD ones: 100,000 rounds still slowed a matmul after a pydl call 6x on a 2-core Intel VM, 30,000
# did not, and still bridge the Python between two pydl kernels (networks ran as fast on both).
# libgomp reads the setting once, as it loads.
_GOMP_SPINCOUNT = "30000"


def _libgomp_loaded():
    try:
        with open("/proc/self/maps") as f:
            return "libgomp" in f.read()
    except OSError:
        return True  # cannot tell: leave the environment alone


def _import_cpu():
    """``from . import _cpu`` with GOMP_SPINCOUNT set while libgomp loads, unless the user chose
    (GOMP_SPINCOUNT or OMP_WAIT_POLICY) or libgomp is loaded already; the environment is then
    restored, so child processes see the user's."""
    own = not ({"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & set(os.environ)) and not _libgomp_loaded()
    if own:
        os.environ["GOMP_SPINCOUNT"] = _GOMP_SPINCOUNT
    try:
        from . import _cpu
    finally:
        if own:
            os.environ.pop("GOMP_SPINCOUNT", None)
    return _cpu


# glibc serves an allocation of 32 MiB or more (a batch-8 MobileNetV2 activation is 38.5 MiB)
# with a fresh mmap, so every such layer output page-faults its way in on each call (a batch-8
# MobileNetV2 forward ran 15-25% slower for it). Raising the mmap and trim thresholds keeps such
# blocks in the heap for reuse; the process may then hold up to this much freed memory.
_MALLOC_THRESHOLD = 256 << 20


def _set_malloc_policy():
    """Raise glibc's mmap and trim thresholds (mallopt) unless the user set either (MALLOC_*_
    environment variables or GLIBC_TUNABLES). True where applied."""
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")) or \
            "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: other C libraries have other knobs
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, _MALLOC_THRESHOLD)) and \
            bool(libc.mallopt(M_TRIM_THRESHOLD, _MALLOC_THRESHOLD))
    except (OSError, AttributeError):
        return False


def cpu():
    """The C++ module ``pydl._cpu``."""
    global _cpu_module
    if _cpu_module is None:
        _set_malloc_policy()
        _load_openblas()
        try:
            _cpu = _import_cpu()
        except ImportError as e:
            here = os.path.dirname(os.path.abspath(__file__))
            if os.path.exists(os.path.join(here, "..", "CMakeLists.txt")):
                raise ImportError(
                    f"pydl was imported from its source tree ({here}), which holds no compiled "
                    "module: pip install . and run from another directory (use `pytest`, not "
                    f"`python -m pytest`, in the checkout) [{e}]") from e
            raise

        _share_pool_with_numpy_blas(_cpu)
        _cpu_module = _cpu
    return _cpu_module


# NumPy wheels' OpenBLAS (scipy-openblas) with its caller-managed threading hook.
_NUMPY_BLAS_HOOKS = ("scipy_openblas_set_threads_callback_function64_",
                     "scipy_openblas_set_threads_callback_function")


def _numpy_blas_hook():
    """Address of the threading hook of the OpenBLAS NumPy loaded (its wheels' scipy-openblas),
    or None (another BLAS, or not Linux)."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            libs = sorted({ln.split()[-1] for ln in f if "numpy" in ln and "openblas" in ln and ".so" in ln})
    except OSError:
        return None
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _NUMPY_BLAS_HOOKS:
            fn = getattr(lib, name, None)
            if fn is not None:
                return ctypes.cast(fn, ctypes.c_void_p).value
    return None


def _share_pool_with_numpy_blas(cpu_module):
    # NumPy's BLAS threads would spin for ~0.1 s after each matmul and take the cores from pydl's
    # next calls; through its hook, NumPy's parallel BLAS work runs on pydl's OpenMP pool.
    addr = _numpy_blas_hook()
    if addr:
        cpu_module._share_pool_with_numpy_blas(addr)


def _try_cuda():
    global _cuda_module, _cuda_error
    if _cuda_module is not None or _cuda_error is not None:
        return _cuda_module
    try:
        from . import _cuda
    except ImportError as e:  # no CUDA build, or its libraries are missing
        _cuda_error = (
            f"pydl was built without a usable CUDA module ({e}). Rebuild it on a machine "
            "with nvcc: pip install . -Ccmake.define.PYDL_CUDA=ON"
        )
        return None
    _cuda_module = _cuda
    return _cuda


def cuda_build_error() -> str | None:
    """Why the CUDA module cannot be used, or None if it can."""
    if _try_cuda() is None:
        return _cuda_error
    try:
        import cupy  # noqa: F401
    except ImportError as e:
        return f"CuPy is not installed ({e}): pip install 'pydl[cuda]'"
    if _cuda_module.device_count() < 1:
        return "pydl._cuda is built, but no CUDA device is visible"
    return None


def cuda_available() -> bool:
    """True when pydl._cuda is built, CuPy imports and a GPU is visible."""
    return cuda_build_error() is None


_cuda_ok = False
_forked_after_cuda = False


def _after_fork_in_child():
    # CUDA does not survive fork: a child of a parent that used the GPU gets a clear error (as
    # CuPy gives) instead of a CUDA initialization error from deep inside a kernel launch.
    global _cuda_ok, _forked_after_cuda
    if _cuda_ok:
        _cuda_ok, _forked_after_cuda = False, True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def cuda():
    """The CUDA module, or a RuntimeError that says how to get one."""
    global _cuda_ok
    if not _cuda_ok:  # checked once: the probe imports CuPy and counts devices
        if _forked_after_cuda:
            raise RuntimeError(
                "pydl: CUDA cannot be used in a process forked after its parent used CUDA; start "
                "worker processes with the 'spawn' or 'forkserver' method "
                "(multiprocessing.get_context('spawn'), ProcessPoolExecutor(mp_context=...))")
        err = cuda_build_error()
        if err is not None:
            raise RuntimeError(err)
        _cuda_ok = True
    return _cuda_module


# pydl.set_num_threads: the count, and a generation each Python thread compares with its own
# (OpenMP keeps the count per calling thread, so each thread applies it before its next kernel).
_num_threads = None
_threads_gen = 0
_thread_state = threading.local()


def set_num_threads(n: int) -> None:
    """Threads of pydl's CPU kernels (its one OpenMP pool), as ``torch.set_num_threads``.

    Applies to every Python thread from its next pydl call. The default is OpenMP's
    (``OMP_NUM_THREADS``, else one per core). In a child made by ``fork`` pydl keeps one thread
    (GNU OpenMP's pool does not survive fork). NumPy's own BLAS threads are NumPy's business.
    """
    global _num_threads, _threads_gen
    n = int_arg("n", n, minimum=1)
    if n > 2**31 - 1:
        raise ValueError(f"n: expected at most 2**31 - 1 threads, got {n}")
    m = cpu()
    _num_threads, _threads_gen = n, _threads_gen + 1
    m._set_num_threads(n)
    _thread_state.gen = _threads_gen


def get_num_threads() -> int:
    """Threads pydl's CPU kernels use (in the calling thread), as ``torch.get_num_threads``."""
    m = cpu()
    _sync_threads(m)
    return int(m.max_threads())


def _sync_threads(m):
    if getattr(_thread_state, "gen", 0) != _threads_gen:
        m._set_num_threads(_num_threads)
        _thread_state.gen = _threads_gen


def kernels(xp, op: str):
    """The kernel namespace of op for arrays of module xp.

    NumPy: the C++ module pydl._cpu. CuPy: pydl.cuda.<op>, whose functions take CuPy
    arrays with the same signatures as their pydl._cpu twins.
    """
    if xp is np:
        m = cpu()
        if _threads_gen:
            _sync_threads(m)
        return m
    cuda()  # raises with the reason when the GPU build is unusable
    return importlib.import_module(f"pydl.cuda.{op}")


def set_allow_tf32(allow: bool) -> None:
    """Opt in to TF32 tensor-core GEMMs for float32 on the GPU (off by default: exact float32)."""
    global _ALLOW_TF32
    _ALLOW_TF32 = bool(allow)


def get_allow_tf32() -> bool:
    return _ALLOW_TF32


# ---------------------------------------------------------------- arrays and devices

def _is_cupy(x) -> bool:
    return type(x).__module__.startswith("cupy")


def is_cuda(x) -> bool:
    """True for a cupy.ndarray."""
    return _is_cupy(x) and hasattr(x, "data") and hasattr(x, "device")


def array_module(**arrays):
    """NumPy or CuPy, from keyword-named arrays (None entries ignored).

    Raises TypeError naming the argument for non-arrays, for a NumPy/CuPy mix and for
    CuPy arrays on different devices.
    """
    kind = None
    first = None
    device = None
    for name, a in arrays.items():
        if a is None:
            continue
        if isinstance(a, np.ndarray):
            k = "numpy"
        elif is_cuda(a):
            k = "cupy"
        else:
            raise TypeError(f"{name}: expected a numpy.ndarray or cupy.ndarray, got {type(a).__name__}")
        if kind is None:
            kind, first = k, name
        elif k != kind:
            raise TypeError(
                f"{name}: expected a {kind} array like {first}, got a {k} array "
                "(pydl does no hidden host<->device copies)")
        if k == "cupy":
            if device is None:
                device = a.device.id
            elif a.device.id != device:
                raise TypeError(f"{name}: expected an array on GPU {device} like {first}, got GPU {a.device.id}")
    if kind == "cupy":
        import cupy

        return cupy
    return np


def empty(shape, dtype, xp=np):
    """Output allocation (CuPy's pool on the GPU); NaN-filled while tests poison outputs."""
    out = xp.empty(shape, dtype=dtype)
    if _POISON and out.size:
        if np.dtype(dtype).kind == "f":
            out.fill(np.nan)
        else:
            out.fill(-7777777)
    return out


def stream_ptr(xp) -> int:
    """The caller's current CuPy stream (0 for NumPy)."""
    if xp is np:
        return 0
    return xp.cuda.get_current_stream().ptr


def ptr(a) -> int:
    """Device pointer of a CuPy array."""
    return int(a.data.ptr)


# ---------------------------------------------------------------- argument checks

def check_float(name: str, a, ndim=None) -> None:
    """a must be a float32/float64 array (of rank ndim, an int or a tuple of ints)."""
    _require_array(name, a)
    if a.dtype not in FLOAT_DTYPES:  # by value: unpickled arrays carry equal, not identical, dtypes
        raise TypeError(f"{name}: expected dtype float32 or float64, got {_dtype_str(a.dtype)}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if a.ndim not in allowed:
            want = " or ".join(f"{n}-D" for n in allowed)
            raise ValueError(f"{name}: expected a {want} array, got shape {tuple(a.shape)}")


def _dtype_str(dt) -> str:
    """The dtype as NumPy writes it, with the byte order spelled out when it is not native
    (a '>f4' array is rejected, never read as garbage)."""
    dt = np.dtype(dt) if not hasattr(dt, "isnative") else dt
    if not dt.isnative:
        order = "big-endian" if dt.byteorder == ">" else "little-endian"
        return (f"{dt.str} ({order}, not this machine's byte order; convert with "
                f"a.astype(a.dtype.newbyteorder('=')))")
    return str(dt)


def check_writeable(name: str, a) -> None:
    """a is updated in place: a read-only array (np.load's mmap_mode='r', setflags(write=False))
    or a zero-strided broadcast is refused before anything is written."""
    if not getattr(a.flags, "writeable", True):
        raise ValueError(f"{name}: expected a writeable array (updated in place), got a read-only one")
    if a.size > 1 and 0 in a.strides:  # CuPy has no read-only flag for broadcasts
        raise ValueError(f"{name}: expected a writeable array (updated in place), got a broadcast view "
                         "whose elements share memory")


def _require_array(name: str, a) -> None:
    # array_module skips None (optional arrays); a required one must not be None.
    if not (hasattr(a, "dtype") and hasattr(a, "shape")):
        raise TypeError(f"{name}: expected a numpy.ndarray or cupy.ndarray, got {type(a).__name__}")


def check_same_dtype(ref_name: str, ref, **arrays) -> None:
    for name, a in arrays.items():
        if a is not None and a.dtype != ref.dtype:
            raise TypeError(f"{name}: expected dtype {ref.dtype} (the dtype of {ref_name}), got {_dtype_str(a.dtype)}")


def check_shape(name: str, a, shape) -> None:
    _require_array(name, a)
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(a.shape)}")


def contiguous(a, xp=np):
    """C-contiguous and aligned (a copy only if needed), so kernels never mis-read a view."""
    if type(a) is np.ndarray and a.ndim and a.flags.c_contiguous and a.flags.aligned:
        return a  # the common case without a NumPy call (small ops pay per call); 0-d becomes (1,)
    a = xp.ascontiguousarray(a)
    # A view at an odd byte offset: misaligned loads are UB in C++ (CuPy has no such flag).
    if not getattr(a.flags, "aligned", True):
        a = a.copy()
    return a


def int_arg(name: str, v, minimum=None) -> int:
    if type(v) is not int:  # a plain int skips the ABC checks (microseconds on every small call)
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Integral, np.integer)):
            raise TypeError(f"{name}: expected an int, got {type(v).__name__} {v!r}")
        v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v}")
    if not -2**63 <= v < 2**63:  # the kernels take int64 (pybind11 would raise an unnamed TypeError)
        raise ValueError(f"{name}: expected an int that fits in int64, got {v}")
    return v


def pair(name: str, v, minimum=None) -> tuple[int, int]:
    """An int or a pair of ints, as PyTorch's _pair."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name}: expected an int or a pair of ints, got {v!r}")
        return (int_arg(name, v[0], minimum), int_arg(name, v[1], minimum))
    v = int_arg(name, v, minimum)
    return (v, v)


def float_arg(name: str, v, minimum=None, maximum=None, finite=True) -> float:
    if type(v) is not float:  # a plain float skips the ABC checks, as int_arg
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Real, np.floating, np.integer)):
            raise TypeError(f"{name}: expected a float, got {type(v).__name__} {v!r}")
        v = float(v)
    if finite and not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite float, got {v}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name}: expected a float >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name}: expected a float <= {maximum}, got {v}")
    return v
