"""deform_conv2d benchmark cases: DCNv2 (with mask) 3x3 pad 1 on ResNet-sized feature maps,
forward and backward (all five gradients), float32, against torchvision.ops.deform_conv2d.
GFLOP/s from the GEMM work (2*N*K*Ho*Wo*C/groups*kh*kw forward, twice that backward);
the bilinear sampling is extra work not counted. Parity on the first two images when the
shape is too big for the NumPy reference."""
from __future__ import annotations

import numpy as np

import pydl.ops as O
import pydl.reference.deform_conv as R
from common import Case, max_rel_error, try_torch


def _try_torchvision():
    try:
        import torchvision

        return torchvision
    except Exception:
        return None


def _host(a):
    return a.get() if hasattr(a, "get") else a


def _case(device, xs, k, ks, pad, og, huge, quick):
    torch = try_torch()
    tv = _try_torchvision() if torch is not None else None
    if torch is not None and device == "cpu":
        torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    n, c, h, w = xs
    ho = h + 2 * pad - ks + 1
    wo = w + 2 * pad - ks + 1
    host = dict(
        x=rng.uniform(-1, 1, xs).astype(np.float32),
        # Fractional parts in [0.05, 0.95]: float32 rounding of a point next to an integer
        # row/column may change its floor, where the offset gradient jumps (a bilinear kink).
        off=(rng.integers(-2, 2, (n, 2 * og * ks * ks, ho, wo))
             + rng.uniform(0.05, 0.95, (n, 2 * og * ks * ks, ho, wo))).astype(np.float32),
        w=(rng.uniform(-1, 1, (k, c, ks, ks)) / np.sqrt(c * ks * ks)).astype(np.float32),
        b=rng.uniform(-1, 1, k).astype(np.float32),
        m=rng.uniform(0, 1, (n, og * ks * ks, ho, wo)).astype(np.float32),
        dy=rng.uniform(-1, 1, (n, k, ho, wo)).astype(np.float32),
    )
    if device == "cuda":
        import cupy

        dev = {key: cupy.asarray(v) for key, v in host.items()}
    else:
        dev = host
    x, off, wt, b, m, dy = (dev[key] for key in ("x", "off", "w", "b", "m", "dy"))
    s = 2 if huge else n  # images checked against the reference
    hs = {key: (v[:s] if key not in ("w", "b") else v).astype(np.float64) for key, v in host.items()}

    def fwd():
        return O.deform_conv2d(x, off, wt, b, 1, pad, 1, m)

    def bwd():
        return O.deform_conv2d_backward(dy, x, off, wt, m, 1, pad, 1)

    def check_fwd():
        want = R.deform_conv2d(hs["x"], hs["off"], hs["w"], hs["b"], 1, pad, 1, hs["m"])
        return max_rel_error([(_host(O.deform_conv2d(x[:s], off[:s], wt, b, 1, pad, 1, m[:s])), want)])

    def check_bwd():
        want = R.deform_conv2d_backward(hs["dy"], hs["x"], hs["off"], hs["w"], hs["m"], 1, pad, 1)
        got = O.deform_conv2d_backward(dy[:s], x[:s], off[:s], wt, m[:s], 1, pad, 1)
        return max_rel_error([(_host(g), r) for g, r in zip(got, want)])

    tf = tb = None
    if tv is not None:
        if device == "cuda":
            t = {key: torch.from_dlpack(v) for key, v in dev.items()}
        else:
            t = {key: torch.from_numpy(v) for key, v in dev.items()}
        tvf = tv.ops.deform_conv2d
        tf = lambda: tvf(t["x"], t["off"], t["w"], t["b"], 1, pad, 1, t["m"])  # noqa: E731
        leaves = [t[key].clone().requires_grad_(True) for key in ("x", "off", "w", "b", "m")]
        yt = tvf(leaves[0], leaves[1], leaves[2], leaves[3], 1, pad, 1, leaves[4])
        tb = lambda: torch.autograd.grad(yt, leaves, t["dy"], retain_graph=True)  # noqa: E731
    flops = 2.0 * n * k * ho * wo * c * ks * ks
    name = f"{n}x{c}x{h}x{w} k{k} {ks}x{ks} p{pad} og{og} mask"
    ref_f = None if huge else (lambda: R.deform_conv2d(host["x"], host["off"], host["w"], host["b"], 1, pad, 1,
                                                       host["m"]))
    ref_b = None if huge else (lambda: R.deform_conv2d_backward(host["dy"], host["x"], host["off"], host["w"],
                                                                host["m"], 1, pad, 1))
    return [
        Case("deform_conv2d", name, "fwd", fwd, reference=ref_f, torch=tf, check=check_fwd, flops=flops,
             ref_repeats=1),
        Case("deform_conv2d", name, "bwd", bwd, reference=ref_b, torch=tb, check=check_bwd, flops=2 * flops,
             ref_repeats=1),
    ]


def cases(device, quick):
    if device == "cpu":
        return [
            *_case(device, (8, 64, 56, 56), 64, 3, 1, 1, huge=False, quick=quick),
            *_case(device, (2, 128, 28, 28), 128, 3, 1, 4, huge=False, quick=quick),
        ]
    return [
        *_case(device, (8, 64, 56, 56), 64, 3, 1, 1, huge=False, quick=quick),
        *_case(device, (32, 128, 56, 56), 128, 3, 1, 1, huge=True, quick=quick),
        *_case(device, (64, 256, 28, 28), 256, 3, 1, 4, huge=True, quick=quick),
    ]
