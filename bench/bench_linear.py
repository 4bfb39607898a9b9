"""linear benchmark cases, float32: a classifier head (8, 2048) -> 1000 (ResNet-50's fc) and a
square layer (256, 512) -> 512, forward (with bias) and backward (all three gradients), against
torch.nn.functional.linear and its autograd backward. GFLOP/s from 2 M N K per GEMM (the
backward runs two)."""
from __future__ import annotations

import numpy as np

import pydl
import pydl.functional as F
import pydl.reference as R
from common import Case, max_rel_error, try_torch

# (rows M, in_features K, out_features N)
SHAPES = [(8, 2048, 1000), (256, 512, 512)]


def _dev(a, device):
    if device == "cuda":
        import cupy

        return cupy.asarray(a)
    return a


def _cases(device, M, K, N):
    torch = try_torch()
    if torch is not None and device == "cuda" and not torch.cuda.is_available():
        torch = None
    if torch is not None and device == "cpu":
        torch.set_num_threads(pydl._backend.cpu().max_threads())
    rng = np.random.default_rng(0)
    h = {"x": rng.standard_normal((M, K), dtype=np.float32),
         "w": (rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32),
         "b": rng.standard_normal(N, dtype=np.float32),
         "dy": rng.standard_normal((M, N), dtype=np.float32)}
    x, w, b, dy = (_dev(h[k], device) for k in ("x", "w", "b", "dy"))
    x64, w64, b64, dy64 = (h[k].astype(np.float64) for k in ("x", "w", "b", "dy"))

    def check_fwd():
        return max_rel_error([(F.linear(x, w, b), R.linear(x64, w64, b64))])

    def check_bwd():
        return max_rel_error(list(zip(F.linear_backward(dy, x, w), R.linear_backward(dy64, x64, w64))))

    tf = tb = None
    if torch is not None:
        conv = torch.from_numpy if device == "cpu" else torch.from_dlpack
        xt, wt, bt, dyt = conv(x), conv(w), conv(b), conv(dy)
        xg, wg, bg = (t.clone().requires_grad_() for t in (xt, wt, bt))
        yg = torch.nn.functional.linear(xg, wg, bg)
        tf = lambda: torch.nn.functional.linear(xt, wt, bt)  # noqa: E731
        tb = lambda: torch.autograd.grad(yg, (xg, wg, bg), dyt, retain_graph=True)  # noqa: E731
    name = f"({M}, {K}) -> {N}"
    flops = 2.0 * M * N * K
    return [
        Case("linear", name, "fwd", lambda: F.linear(x, w, b), reference=lambda: R.linear(x64, w64, b64),
             torch=tf, check=check_fwd, flops=flops, gemm_yardstick=True),
        Case("linear", name, "bwd", lambda: F.linear_backward(dy, x, w),
             reference=lambda: R.linear_backward(dy64, x64, w64), torch=tb, check=check_bwd, flops=2 * flops,
             gemm_yardstick=True),
    ]


def cases(device, quick):
    out = []
    for M, K, N in SHAPES:
        out += _cases(device, M, K, N)
    return out
