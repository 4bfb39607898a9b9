"""pool benchmark cases: max pooling (ResNet stem 3x3/2 pad 1, a small 2x2/2) and 2x2 average
pooling, forward and backward, float32. GB/s from the minimal traffic: input read + output
written (+ int64 indices written when returned); backward: grad_out (+ indices) read + grad_x
written."""
from __future__ import annotations

import numpy as np

import pydl.functional as F
import pydl.reference.pool as R
from common import Case, max_rel_error, try_torch


def _arrays(device, shape, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    if device == "cuda":
        import cupy

        return cupy.asarray(x)
    return x


def _to_torch(torch, a):
    if torch is None:
        return None
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


def _host(a):
    return a.get() if hasattr(a, "get") else a


def _sample(a, huge):
    """Parity is checked on the first two images when the shape is too big for the reference."""
    return a[:2] if huge else a


def _max_cases(device, shape, k, s, p, huge):
    torch = try_torch()
    if torch is not None:
        torch.set_num_threads(2)
    x = _arrays(device, shape)
    y, ind = F.max_pool2d(x, k, s, p, return_indices=True)
    dy = _arrays(device, y.shape, seed=1)
    xt, dyt = _to_torch(torch, x), _to_torch(torch, dy)
    indt = None
    if torch is not None:
        _, indt = torch.nn.functional.max_pool2d(xt, k, s, p, return_indices=True)
    name = f"{tuple(shape)} k{k} s{s} p{p}"
    esz = x.dtype.itemsize
    nx, ny = x.size, y.size
    xs, dys, inds = _host(_sample(x, huge)), _host(_sample(dy, huge)), _host(_sample(ind, huge))

    def check_fwd():
        want, want_ind = R.max_pool2d(xs.astype(np.float64), k, s, p, return_indices=True)
        got, got_ind = F.max_pool2d(_sample(x, huge), k, s, p, return_indices=True)
        assert np.array_equal(_host(got_ind), want_ind), "max_pool2d indices differ from the reference"
        return max_rel_error([(got, want), (F.max_pool2d(_sample(x, huge), k, s, p), want)])

    def check_bwd():
        want = R.max_pool2d_backward(dys.astype(np.float64), inds, xs.shape, k, s, p)
        return max_rel_error([(F.max_pool2d_backward(_sample(dy, huge), _sample(ind, huge), xs.shape, k, s, p), want)])

    ref = None if huge else (lambda: R.max_pool2d(x, k, s, p))
    ref_i = None if huge else (lambda: R.max_pool2d(x, k, s, p, return_indices=True))
    ref_b = None if huge else (lambda: R.max_pool2d_backward(dy, ind, x.shape, k, s, p))
    tf = tfi = tb = None
    if torch is not None:
        tf = lambda: torch.nn.functional.max_pool2d(xt, k, s, p)  # noqa: E731
        tfi = lambda: torch.nn.functional.max_pool2d(xt, k, s, p, return_indices=True)  # noqa: E731
        tb = lambda: torch.ops.aten.max_pool2d_with_indices_backward(  # noqa: E731
            dyt, xt, [k, k], [s, s], [p, p], [1, 1], False, indt)
    return [
        Case("max_pool2d", name, "fwd", lambda: F.max_pool2d(x, k, s, p), reference=ref, torch=tf,
             check=check_fwd, bytes=(nx + ny) * esz, ref_repeats=1),
        Case("max_pool2d", name + " +indices", "fwd", lambda: F.max_pool2d(x, k, s, p, return_indices=True),
             reference=ref_i, torch=tfi, check=check_fwd, bytes=(nx + ny) * esz + ny * 8, ref_repeats=1),
        Case("max_pool2d", name, "bwd", lambda: F.max_pool2d_backward(dy, ind, x.shape, k, s, p), reference=ref_b,
             torch=tb, check=check_bwd, bytes=ny * (esz + 8) + nx * esz, ref_repeats=1),
    ]


def _avg_cases(device, shape, k, huge):
    torch = try_torch()
    x = _arrays(device, shape)
    y = F.avg_pool2d(x, k)
    dy = _arrays(device, y.shape, seed=1)
    xt, dyt = _to_torch(torch, x), _to_torch(torch, dy)
    name = f"{tuple(shape)} k{k}"
    esz = x.dtype.itemsize
    nx, ny = x.size, y.size
    xs, dys = _host(_sample(x, huge)), _host(_sample(dy, huge))

    def check_fwd():
        return max_rel_error([(F.avg_pool2d(_sample(x, huge), k), R.avg_pool2d(xs.astype(np.float64), k))])

    def check_bwd():
        want = R.avg_pool2d_backward(dys.astype(np.float64), xs.shape, k)
        return max_rel_error([(F.avg_pool2d_backward(_sample(dy, huge), xs.shape, k), want)])

    tf = tb = None
    if torch is not None:
        tf = lambda: torch.nn.functional.avg_pool2d(xt, k)  # noqa: E731
        tb = lambda: torch.ops.aten.avg_pool2d_backward(dyt, xt, [k, k], [k, k], [0, 0], False, True, None)  # noqa: E731
    return [
        Case("avg_pool2d", name, "fwd", lambda: F.avg_pool2d(x, k),
             reference=None if huge else (lambda: R.avg_pool2d(x, k)), torch=tf, check=check_fwd,
             bytes=(nx + ny) * esz, ref_repeats=1),
        Case("avg_pool2d", name, "bwd", lambda: F.avg_pool2d_backward(dy, x.shape, k),
             reference=None if huge else (lambda: R.avg_pool2d_backward(dy, x.shape, k)), torch=tb,
             check=check_bwd, bytes=(nx + ny) * esz, ref_repeats=1),
    ]


def _adaptive_cases(device, shape, out_size, huge):
    """adaptive_avg_pool2d to out_size; out_size None is global_avg_pool2d (output (N, C, 1, 1))."""
    torch = try_torch()
    x = _arrays(device, shape)
    xt = _to_torch(torch, x)
    xs = _host(_sample(x, huge))
    if out_size is None:
        op, f, r, size = "global_avg_pool2d", F.global_avg_pool2d, R.global_avg_pool2d, 1
    else:
        op, size = "adaptive_avg_pool2d", out_size
        f = lambda a: F.adaptive_avg_pool2d(a, out_size)  # noqa: E731
        r = lambda a: R.adaptive_avg_pool2d(a, out_size)  # noqa: E731

    def check():
        return max_rel_error([(f(_sample(x, huge)), r(xs.astype(np.float64)))])

    tf = None if torch is None else (lambda: torch.nn.functional.adaptive_avg_pool2d(xt, size))
    name = f"{tuple(shape)}" + ("" if out_size is None else f" -> {out_size}")
    return [Case(op, name, "fwd", lambda: f(x), reference=None if huge else (lambda: r(x)), torch=tf,
                 check=check, bytes=x.size * x.dtype.itemsize, ref_repeats=1)]


def cases(device, quick):
    if device == "cpu":
        return [
            *_max_cases(device, (8, 64, 112, 112), 3, 2, 1, huge=False),
            *_max_cases(device, (64, 30, 24, 24), 2, 2, 0, huge=False),
            *_avg_cases(device, (8, 128, 56, 56), 2, huge=False),
            *_adaptive_cases(device, (32, 512, 7, 7), None, huge=False),
            *_adaptive_cases(device, (8, 256, 28, 28), 7, huge=False),
        ]
    return [
        *_max_cases(device, (128, 64, 112, 112), 3, 2, 1, huge=True),
        *_avg_cases(device, (128, 256, 56, 56), 2, huge=True),
        *_adaptive_cases(device, (128, 2048, 7, 7), None, huge=True),
        *_adaptive_cases(device, (128, 256, 28, 28), 7, huge=True),
    ]
