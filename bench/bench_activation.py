"""activation benchmark cases, float32: relu on (8, 64, 112, 112) (ResNet's stem output) and silu on
(8, 96, 56, 56) (an EfficientNet-sized block), forward, forward in place (out=x) and backward, against
torch.relu / torch.nn.functional.silu and aten's threshold_backward / silu_backward. GB/s from the
minimal traffic: x read + y written (backward: grad_out and x read + grad_x written)."""
from __future__ import annotations

import numpy as np

import pydl
import pydl.functional as F
import pydl.reference as R
from common import Case, max_rel_error, try_torch

# (name, shape, torch forward, torch backward (aten op taking grad_out and x))
ROWS = [
    ("relu", (8, 64, 112, 112), lambda t, x: t.relu(x), lambda t, dy, x: t.ops.aten.threshold_backward(dy, x, 0)),
    ("silu", (8, 96, 56, 56), lambda t, x: t.nn.functional.silu(x), lambda t, dy, x: t.ops.aten.silu_backward(dy, x)),
]


def _dev(a, device):
    if device == "cuda":
        import cupy

        return cupy.asarray(a)
    return a


def _cases(device, name, shape, tfwd, tbwd):
    torch = try_torch()
    if torch is not None and device == "cuda" and not torch.cuda.is_available():
        torch = None
    if torch is not None and device == "cpu":
        torch.set_num_threads(pydl._backend.cpu().max_threads())
    rng = np.random.default_rng(0)
    hx = rng.standard_normal(shape, dtype=np.float32) * 3
    hdy = rng.standard_normal(shape, dtype=np.float32)
    x, dy = _dev(hx, device), _dev(hdy, device)
    buf = x.copy()  # the in-place rows overwrite it again and again: same work every time
    f, fb = getattr(F, name), getattr(F, name + "_backward")
    rf, rb = getattr(R, name), getattr(R, name + "_backward")
    x64, dy64 = hx.astype(np.float64), hdy.astype(np.float64)

    def check_fwd():
        return max_rel_error([(f(x), rf(x64))])

    def check_inplace():
        b = x.copy()
        return max_rel_error([(f(b, out=b), rf(x64))])

    def check_bwd():
        return max_rel_error([(fb(dy, x), rb(dy64, x64))])

    tf = tfi = tb = None
    if torch is not None:
        conv = torch.from_numpy if device == "cpu" else torch.from_dlpack
        xt, dyt = conv(x), conv(dy)
        bt = xt.clone()
        tf = lambda: tfwd(torch, xt)  # noqa: E731
        tfi = (lambda: torch.relu_(bt)) if name == "relu" else (lambda: torch.nn.functional.silu(bt, inplace=True))
        tb = lambda: tbwd(torch, dyt, xt)  # noqa: E731
    label = f"{tuple(shape)}"
    nb = x.size * x.dtype.itemsize
    return [
        Case(name, label, "fwd", lambda: f(x), reference=lambda: rf(x64), torch=tf, check=check_fwd,
             bytes=2 * nb, ref_repeats=1),
        Case(name, label, "fwd out=x", lambda: f(buf, out=buf), torch=tfi, check=check_inplace, bytes=2 * nb),
        Case(name, label, "bwd", lambda: fb(dy, x), reference=lambda: rb(dy64, x64), torch=tb, check=check_bwd,
             bytes=3 * nb, ref_repeats=1),
    ]


def cases(device, quick):
    out = []
    for row in ROWS:
        out += _cases(device, *row)
    return out
