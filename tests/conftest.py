"""Shared test machinery: one test body runs on both backends (numpy, cupy), the
tolerance table, output poisoning, and helpers to compare against the float64 oracle."""
import numpy as np
import pytest

import pydl
from pydl import _backend

DTYPES = [np.float32, np.float64]

# Normwise relative error: max|got - want| / max|want|.
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def _cupy_or_skip():
    if not pydl.cuda_available():
        pytest.skip(f"no GPU: {pydl.cuda_build_error()}")
    import cupy

    return cupy


@pytest.fixture(params=["numpy", "cupy"])
def xp(request):
    """The array module a test runs on; CuPy cases skip themselves without a GPU."""
    if request.param == "cupy":
        return _cupy_or_skip()
    return np


@pytest.fixture(params=DTYPES, ids=["f32", "f64"])
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture(params=[0, 1, 2], ids=["simd0", "simd1", "simd2"])
def simd_level(request):
    """Runs a test with the C++ kernels' SIMD variants capped at this level (0 the baseline, 1
    AVX2/FMA, 2 AVX-512), so every host runs its lower variants too; a level this CPU lacks skips."""
    cpu = _backend.cpu()
    previous = cpu._set_simd_level(request.param)
    try:
        if cpu._simd_level() != request.param:
            pytest.skip(f"this CPU has no SIMD level {request.param}")
        yield request.param
    finally:
        cpu._set_simd_level(previous)


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Every output pydl allocates starts as NaN, so an element a kernel forgets fails."""
    monkeypatch.setattr(_backend, "_POISON", True)


def to_numpy(a):
    if a is None or isinstance(a, (np.ndarray, float, int, np.generic)):
        return a
    return a.get()


def rel_error(got, want) -> float:
    got = np.asarray(to_numpy(got), dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != expected {want.shape}"
    if want.size == 0:
        return 0.0
    assert not np.isnan(got).any() or np.isnan(want).any(), "NaN in output (unwritten element?)"
    scale = np.max(np.abs(want))
    diff = np.max(np.abs(got - want))
    return float(diff / scale) if scale > 0 else float(diff)


def assert_close(got, want, dtype, factor=1.0):
    """got (any backend, dtype) against the float64 oracle want, by the tolerance table."""
    err = rel_error(got, want)
    tol = TOL[np.dtype(dtype)] * factor
    assert err <= tol, f"relative error {err:.3e} > {tol:.1e}"


def rand(rng, shape, dtype, xp=np, low=-1.0, high=1.0):
    """Seeded uniform array on the backend xp (generated on the host, so both backends agree)."""
    a = rng.uniform(low, high, size=shape).astype(dtype)
    return xp.asarray(a)


def numerical_grad(f, x, dy, eps=1e-6):
    """Central finite differences of sum(f(x) * dy) with respect to x (float64 NumPy)."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    flat = x.reshape(-1)
    gf = g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = np.sum(f(x) * dy)
        flat[i] = old - eps
        fm = np.sum(f(x) * dy)
        flat[i] = old
        gf[i] = (fp - fm) / (2 * eps)
    return g
