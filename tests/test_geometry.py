"""The C++ geometry header and the Python helper agree (pydl/_geometry.py vs csrc/geometry.h)."""
import itertools

import pytest

from pydl import _backend, _geometry


def test_conv_out_size_matches_cpp():
    cpu = _backend.cpu()
    for n, k, s, p, d in itertools.product(range(1, 12), range(1, 6), range(1, 4), range(0, 3), range(1, 3)):
        want = _geometry.conv_out_size(n, k, s, p, d)
        if want >= 1:
            assert cpu.conv_out_size(n, k, s, p, d) == want


def test_conv_transpose_out_size_matches_cpp():
    cpu = _backend.cpu()
    for n, k, s, p, d, op in itertools.product(range(1, 8), range(1, 5), range(1, 4), range(0, 3), range(1, 3), range(0, 2)):
        want = _geometry.conv_transpose_out_size(n, k, s, p, d, op)
        if want >= 1:
            assert cpu.conv_transpose_out_size(n, k, s, p, d, op) == want


def test_pool_out_size_matches_cpp():
    cpu = _backend.cpu()
    for n, k, s, p, d, ceil in itertools.product(range(1, 14), range(1, 5), range(1, 4), range(0, 3), range(1, 3), (False, True)):
        if p > k // 2:
            continue
        want = _geometry.pool_out_size(n, k, s, p, d, ceil)
        if want >= 1:
            assert cpu.pool_out_size(n, k, s, p, d, ceil) == want


def test_pool_out_size_ceil_mode_drops_window_starting_in_right_padding():
    # PyTorch: 5 wide, k=2, s=2, p=1, ceil -> 3 (a 4th window would start in the padding)
    assert _geometry.pool_out_size(5, 2, 2, 1, 1, True) == 3
    assert _geometry.pool_out_size(6, 3, 2, 0, 1, True) == 3
    assert _geometry.pool_out_size(6, 3, 2, 0, 1, False) == 2


def test_same_padding_puts_extra_on_the_right():
    assert _geometry.same_padding(4, 1) == (1, 2)
    assert _geometry.same_padding(3, 2) == (2, 2)


def test_geometry_helpers_reject_zero_stride():
    # The C++ helpers are reachable from Python: stride 0 must raise, not SIGFPE.
    cpu = _backend.cpu()
    with pytest.raises(ValueError, match="stride"):
        cpu.conv_out_size(5, 3, 0, 0, 1)
    with pytest.raises(ValueError, match="stride"):
        cpu.pool_out_size(5, 3, 0, 0, 1, False)
