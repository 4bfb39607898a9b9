"""interpolate benchmark cases: bilinear (align_corners False) and nearest x2 upsampling, forward and
backward, float32, against torch.nn.functional.interpolate and aten's upsample_*_backward. GB/s from
the minimal traffic: input read + output written (backward: grad_out read + grad_x written)."""
from __future__ import annotations

import numpy as np

import pydl
import pydl.functional as F
import pydl.reference as R
from common import Case, max_rel_error, try_torch


def _arrays(device, shape, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    if device == "cuda":
        import cupy

        return cupy.asarray(x)
    return x


def _host(a):
    return a.get() if hasattr(a, "get") else a


def _to_torch(torch, a, device):
    if torch is None:
        return None
    return torch.from_numpy(a) if device == "cpu" else torch.from_dlpack(a)


def _cases(device, shape, mode, huge):
    torch = try_torch()
    if torch is not None and device == "cuda" and not torch.cuda.is_available():
        torch = None
    if torch is not None and device == "cpu":
        torch.set_num_threads(pydl._backend.cpu().max_threads())
    kw = dict(scale_factor=2, mode=mode)
    if mode == "bilinear":
        kw["align_corners"] = False
    x = _arrays(device, shape)
    y = F.interpolate(x, **kw)
    dy = _arrays(device, y.shape, seed=1)
    out = list(y.shape[2:])
    sample = (lambda a: a[:1]) if huge else (lambda a: a)
    xs, dys = _host(sample(x)), _host(sample(dy))

    def check_fwd():
        return max_rel_error([(F.interpolate(sample(x), **kw), R.interpolate(xs.astype(np.float64), **kw))])

    def check_bwd():
        want = R.interpolate_backward(dys.astype(np.float64), xs.shape, **kw)
        return max_rel_error([(F.interpolate_backward(sample(dy), xs.shape, **kw), want)])

    tf = tb = None
    if torch is not None:
        xt, dyt = _to_torch(torch, x, device), _to_torch(torch, dy, device)
        tf = lambda: torch.nn.functional.interpolate(xt, **kw)  # noqa: E731
        if mode == "bilinear":
            tb = lambda: torch.ops.aten.upsample_bilinear2d_backward(  # noqa: E731
                dyt, out, list(shape), False, 2.0, 2.0)
        else:
            tb = lambda: torch.ops.aten.upsample_nearest2d_backward(dyt, out, list(shape), 2.0, 2.0)  # noqa: E731
    name = f"{tuple(shape)} x2"
    traffic = (x.size + y.size) * x.dtype.itemsize
    return [
        Case(f"interpolate_{mode}", name, "fwd", lambda: F.interpolate(x, **kw),
             reference=None if huge else (lambda: R.interpolate(x, **kw)), torch=tf, check=check_fwd,
             bytes=traffic, ref_repeats=1),
        Case(f"interpolate_{mode}", name, "bwd", lambda: F.interpolate_backward(dy, x.shape, **kw),
             reference=None if huge else (lambda: R.interpolate_backward(dy, x.shape, **kw)), torch=tb,
             check=check_bwd, bytes=traffic, ref_repeats=1),
    ]


def cases(device, quick):
    if device == "cpu":
        shape = (2, 64, 128, 128)
        return [*_cases(device, shape, "bilinear", huge=False), *_cases(device, shape, "nearest", huge=False)]
    shape = (8, 64, 128, 128)
    return [*_cases(device, shape, "bilinear", huge=True), *_cases(device, shape, "nearest", huge=True)]
