"""local_response_norm benchmark cases: AlexNet's LRN (size 5, alpha 1e-4, beta 0.75, k 2) on
(N, 96, 55, 55), float32, forward and backward, against torch.nn.functional.local_response_norm
(its backward through autograd, as PyTorch has no fused LRN backward). GB/s from the minimal
traffic: x read + y written (backward: grad_out and x read + grad_x written)."""
from __future__ import annotations

import numpy as np

import pydl
import pydl.functional as F
import pydl.reference as R
from common import Case, max_rel_error, try_torch

SIZE, ALPHA, BETA, K = 5, 1e-4, 0.75, 2.0


def _arrays(device, shape, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * 10
    if device == "cuda":
        import cupy

        return cupy.asarray(x)
    return x


def _host(a):
    return a.get() if hasattr(a, "get") else a


def _cases(device, shape, huge):
    torch = try_torch()
    if torch is not None and device == "cuda" and not torch.cuda.is_available():
        torch = None
    if torch is not None and device == "cpu":
        torch.set_num_threads(pydl._backend.cpu().max_threads())
    args = (SIZE, ALPHA, BETA, K)
    x = _arrays(device, shape)
    dy = _arrays(device, shape, seed=1)
    sample = (lambda a: a[:2]) if huge else (lambda a: a)
    xs, dys = _host(sample(x)).astype(np.float64), _host(sample(dy)).astype(np.float64)

    def check_fwd():
        return max_rel_error([(F.local_response_norm(sample(x), *args), R.local_response_norm(xs, *args))])

    def check_bwd():
        want = R.local_response_norm_backward(dys, xs, *args)
        return max_rel_error([(F.local_response_norm_backward(sample(dy), sample(x), *args), want)])

    tf = tb = None
    if torch is not None:
        conv = torch.from_numpy if device == "cpu" else torch.from_dlpack
        xt, dyt = conv(x), conv(dy)
        xg = xt.clone().requires_grad_()
        yg = torch.nn.functional.local_response_norm(xg, *args)
        tf = lambda: torch.nn.functional.local_response_norm(xt, *args)  # noqa: E731
        tb = lambda: torch.autograd.grad(yg, xg, dyt, retain_graph=True)  # noqa: E731
    name = f"{tuple(shape)} size {SIZE}"
    nb = x.size * x.dtype.itemsize
    return [
        Case("local_response_norm", name, "fwd", lambda: F.local_response_norm(x, *args),
             reference=None if huge else (lambda: R.local_response_norm(x, *args)), torch=tf, check=check_fwd,
             bytes=2 * nb, ref_repeats=1),
        Case("local_response_norm", name, "bwd", lambda: F.local_response_norm_backward(dy, x, *args),
             reference=None if huge else (lambda: R.local_response_norm_backward(dy, x, *args)), torch=tb,
             check=check_bwd, bytes=3 * nb, ref_repeats=1),
    ]


def cases(device, quick):
    if device == "cpu":
        return _cases(device, (8, 96, 55, 55), huge=False)
    return _cases(device, (32, 96, 55, 55), huge=True)
