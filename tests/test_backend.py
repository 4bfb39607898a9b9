"""Dispatch: array types, devices, and honest CUDA availability."""
import numpy as np
import pytest

import pydl
from pydl import _backend


def test_array_module_numpy():
    assert _backend.array_module(x=np.zeros(2), w=None) is np


def test_array_module_rejects_non_arrays():
    with pytest.raises(TypeError, match="x: expected a numpy.ndarray or cupy.ndarray, got list"):
        _backend.array_module(x=[1.0, 2.0])


def test_mixing_numpy_and_cupy_is_a_type_error():
    if not pydl.cuda_available():
        pytest.skip("no GPU")
    import cupy

    with pytest.raises(TypeError, match="weight: expected a numpy array"):
        _backend.array_module(x=np.zeros(2), weight=cupy.zeros(2))


def test_cuda_available_is_honest():
    err = pydl.cuda_build_error()
    assert pydl.cuda_available() == (err is None)
    if err is None:
        import cupy

        cuda = _backend.cuda()
        a = cupy.zeros(1000, dtype=cupy.float32)
        cuda.fill(_backend.ptr(a), a.size, 3.0, _backend.stream_ptr(cupy))
        assert float(a.sum()) == 3000.0
    else:
        with pytest.raises(RuntimeError):
            _backend.cuda()


def test_check_float_messages():
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int32"):
        _backend.check_float("x", np.zeros(3, np.int32))
    with pytest.raises(ValueError, match=r"x: expected a 4-D array, got shape \(3,\)"):
        _backend.check_float("x", np.zeros(3), ndim=4)


def test_pair_and_int_arg():
    assert _backend.pair("stride", 2) == (2, 2)
    assert _backend.pair("stride", (1, 3)) == (1, 3)
    with pytest.raises(ValueError, match="stride"):
        _backend.pair("stride", 0, minimum=1)
    with pytest.raises(TypeError, match="stride"):
        _backend.pair("stride", 1.5)
    with pytest.raises(ValueError, match="stride"):
        _backend.pair("stride", (1, 2, 3))


def test_poison_is_on_in_tests():
    out = _backend.empty((3,), np.float32)
    assert np.isnan(out).all()
