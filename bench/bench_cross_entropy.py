"""Benchmarks of softmax cross entropy (and softmax): pydl vs the NumPy reference vs PyTorch.

fwd+bwd = cross_entropy_forward + cross_entropy_backward (saved statistics reused), the
PyTorch row F.cross_entropy forward + backward by autograd. Minimal traffic: the forward
reads the logits once, the backward reads them again and writes the gradient.
"""
from __future__ import annotations

import numpy as np

import pydl
import pydl.functional as F
import pydl.reference as R
from common import Case, max_rel_error, try_torch

CPU_SHAPES = [(256, 10), (256, 1000), (64, 32000)]
CUDA_SHAPES = [(4096, 1000), (2048, 32000)]


def _arrays(shape, device, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 2, size=shape).astype(dtype)
    t = rng.integers(0, shape[1], size=shape[0]).astype(np.int64)
    if device == "cuda":
        import cupy

        return x, t, cupy.asarray(x), cupy.asarray(t)
    return x, t, x, t


def _cupy_one(dtype):
    import cupy

    return cupy.ones((), dtype=dtype)  # grad_loss already on the device: no copy per call


def _torch_ce(torch, x, t, device):
    dev = "cuda" if device == "cuda" else "cpu"
    tx = torch.tensor(x, device=dev, requires_grad=True)
    tt = torch.tensor(t, device=dev)
    TF = torch.nn.functional

    def fwd():
        return TF.cross_entropy(tx, tt)

    def fwd_bwd():
        tx.grad = None
        TF.cross_entropy(tx, tt).backward()

    return fwd, fwd_bwd


def cases(device, quick):
    torch = try_torch()
    if torch is not None and device == "cpu":
        torch.set_num_threads(pydl._backend.cpu().max_threads())  # same threads as pydl
    out = []
    shapes = CPU_SHAPES if device == "cpu" else CUDA_SHAPES
    for shape in shapes:
        x, t, dx, dt = _arrays(shape, device)
        n = x.size * x.itemsize
        big = x.size > 20_000_000
        ref = None if (device == "cuda" and big) else (lambda x=x, t=t: R.cross_entropy(x, t))
        ref_fb = None if (device == "cuda" and big) else (
            lambda x=x, t=t: (R.cross_entropy(x, t), R.cross_entropy_backward(1.0, x, t)))
        tf, tfb = _torch_ce(torch, x, t, device) if torch is not None else (None, None)

        def fwd(dx=dx, dt=dt):
            return F.cross_entropy(dx, dt)

        one = dx.dtype.type(1) if device == "cpu" else _cupy_one(dx.dtype)

        def fwd_bwd(dx=dx, dt=dt, one=one):
            loss, saved = F.cross_entropy_forward(dx, dt)
            return loss, F.cross_entropy_backward(one, dx, dt, saved=saved)

        def check_fwd(x=x, t=t, fwd=fwd):
            return max_rel_error([(fwd(), R.cross_entropy(x.astype(np.float64), t))])

        def check_fb(x=x, t=t, fwd_bwd=fwd_bwd):
            loss, g = fwd_bwd()
            x64 = x.astype(np.float64)
            return max_rel_error([(loss, R.cross_entropy(x64, t)), (g, R.cross_entropy_backward(1.0, x64, t))])

        name = f"{shape[0]}x{shape[1]} f32"
        rep = 1 if device == "cuda" else 3
        out.append(Case("cross_entropy", name, "fwd", fwd, reference=ref, torch=tf, check=check_fwd,
                        bytes=n, ref_repeats=rep))
        out.append(Case("cross_entropy", name, "fwd+bwd", fwd_bwd, reference=ref_fb, torch=tfb, check=check_fb,
                        bytes=3 * n, ref_repeats=rep))
    # softmax on the last axis, forward (read + write)
    shape = CPU_SHAPES[1] if device == "cpu" else CUDA_SHAPES[0]
    x, _, dx, _ = _arrays(shape, device, seed=1)
    for op in ("softmax", "log_softmax"):
        f, r = getattr(F, op), getattr(R, op)
        tsm = None
        if torch is not None:
            tx = torch.tensor(x, device="cuda" if device == "cuda" else "cpu")
            tsm = lambda tx=tx, op=op: getattr(torch, op)(tx, dim=-1)  # noqa: E731
        out.append(Case(op, f"{shape[0]}x{shape[1]} f32", "fwd", lambda dx=dx, f=f: f(dx, axis=-1),
                        reference=lambda x=x, r=r: r(x, axis=-1), torch=tsm,
                        check=lambda x=x, dx=dx, f=f, r=r: max_rel_error([(f(dx, axis=-1),
                                                                           r(x.astype(np.float64), axis=-1))]),
                        bytes=2 * x.size * x.itemsize))
    return out
