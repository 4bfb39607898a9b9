"""conv2d benchmark cases: forward and backward (grad input + weight + bias), float32.

CPU: the shapes of the issue (MNIST-like 5x5, ResNet 3x3 at stride 1 and 2, 1x1,
depthwise 3x3, batch 1) plus a batch-256 row that reports the workspace peak against
the cap. CUDA: ResNet/MobileNet-sized batches of 128 (parity on the first image).
"""
from __future__ import annotations

import numpy as np

import pydl.functional as F
import pydl.reference as R
from pydl import _backend

from common import Case, rel_error, try_torch

# (name, (N, C, H, W), K, kernel, stride, padding, groups)
CPU_CASES = [
    ("64x1x28x28 k30 5x5", (64, 1, 28, 28), 30, 5, 1, 0, 1),
    ("8x64x56x56 k64 3x3 p1", (8, 64, 56, 56), 64, 3, 1, 1, 1),
    ("8x128x28x28 k256 3x3 s2 p1", (8, 128, 28, 28), 256, 3, 2, 1, 1),
    ("8x256x14x14 k256 1x1", (8, 256, 14, 14), 256, 1, 1, 0, 1),
    ("8x256x28x28 dw 3x3 p1", (8, 256, 28, 28), 256, 3, 1, 1, 256),
    ("1x64x56x56 k64 3x3 p1", (1, 64, 56, 56), 64, 3, 1, 1, 1),
]

CUDA_CASES = [
    ("128x64x56x56 k64 3x3 p1", (128, 64, 56, 56), 64, 3, 1, 1, 1),
    ("128x128x56x56 k128 3x3 s2 p1", (128, 128, 56, 56), 128, 3, 2, 1, 1),
    ("128x512x28x28 k128 1x1", (128, 512, 28, 28), 128, 1, 1, 0, 1),
    ("128x256x14x14 k256 3x3 p1", (128, 256, 14, 14), 256, 3, 1, 1, 1),
    ("128x144x56x56 dw 3x3 p1", (128, 144, 56, 56), 144, 3, 1, 1, 144),
    ("1x64x56x56 k64 3x3 p1", (1, 64, 56, 56), 64, 3, 1, 1, 1),
]


def _flops(xs, k, ks, s, p, g):
    n, c, h, w = xs
    ho = (h + 2 * p - ks) // s + 1
    wo = (w + 2 * p - ks) // s + 1
    return 2.0 * n * k * ho * wo * (c // g) * ks * ks, (n, k, ho, wo)


def _torch_rows(torch, dev, x, w, b, dy, s, p, g):
    if torch is None:
        return None, None
    tx, tw, tb, tdy = (torch.as_tensor(a, device=dev) for a in (x, w, b, dy))

    def fwd():
        return torch.nn.functional.conv2d(tx, tw, tb, s, p, 1, g)

    def bwd():
        return torch.ops.aten.convolution_backward(tdy, tx, tw, [tw.shape[0]], [s, s], [p, p], [1, 1], False,
                                                   [0, 0], g, [True, True, True])
    return fwd, bwd


def _cpu_cases(quick):
    torch = try_torch()
    if torch is not None:
        torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    out = []
    for name, xs, k, ks, s, p, g in CPU_CASES:
        x = rng.uniform(-1, 1, xs).astype(np.float32)
        w = rng.uniform(-1, 1, (k, xs[1] // g, ks, ks)).astype(np.float32)
        b = rng.uniform(-1, 1, k).astype(np.float32)
        flops, yshape = _flops(xs, k, ks, s, p, g)
        dy = rng.uniform(-1, 1, yshape).astype(np.float32)
        kw = dict(stride=s, padding=p, groups=g)
        tf, tb = _torch_rows(torch, "cpu", x, w, b, dy, s, p, g)
        out.append(Case(
            "conv2d", name, "fwd",
            run=lambda x=x, w=w, b=b, kw=kw: F.conv2d(x, w, b, **kw),
            reference=lambda x=x, w=w, b=b, kw=kw: R.conv2d(x, w, b, **kw),
            torch=tf,
            check=lambda x=x, w=w, b=b, kw=kw: rel_error(F.conv2d(x, w, b, **kw), R.conv2d(x, w, b, **kw)),
            flops=flops, ref_repeats=1 if quick else 3,
            gemm_yardstick=ks == 3 and g == 1))  # the "85% of GEMM" rows: dense 3x3

        def check_bwd(x=x, w=w, dy=dy, kw=kw):
            got = F.conv2d_backward(dy, x, w, **kw)
            want = R.conv2d_backward(dy, x, w, **kw)
            return max(rel_error(a, c) for a, c in zip(got, want))
        out.append(Case(
            "conv2d", name, "bwd",
            run=lambda x=x, w=w, dy=dy, kw=kw: F.conv2d_backward(dy, x, w, **kw),
            reference=lambda x=x, w=w, dy=dy, kw=kw: R.conv2d_backward(dy, x, w, **kw),
            torch=tb, check=check_bwd, flops=2 * flops, ref_repeats=1))
    out.append(_workspace_case(rng, torch))
    return out


def _workspace_case(rng, torch):
    """Batch 256: the column buffer stays under the cap (peak reported in the row)."""
    xs, k = (256, 64, 56, 56), 64
    x = rng.uniform(-1, 1, xs).astype(np.float32)
    w = rng.uniform(-1, 1, (k, 64, 3, 3)).astype(np.float32)
    flops, _ = _flops(xs, k, 3, 1, 1, 1)
    cpu = _backend.cpu()
    extra = {"ws_cap_mib": F.get_conv_workspace_limit() / 2**20}

    def run():
        cpu.conv_workspace_peak_bytes(True)
        y = F.conv2d(x, w, padding=1)
        extra["ws_peak_mib"] = round(cpu.conv_workspace_peak_bytes() / 2**20, 2)
        return y

    def check():
        err = rel_error(run()[:1], R.conv2d(x[:1], w, padding=1))  # first image only
        print(f"conv2d workspace: batch 256 peak {extra['ws_peak_mib']} MiB <= cap {extra['ws_cap_mib']} MiB: "
              f"{extra['ws_peak_mib'] <= extra['ws_cap_mib']}")
        return err

    tf = None
    if torch is not None:
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        tf = lambda: torch.nn.functional.conv2d(tx, tw, None, 1, 1)  # noqa: E731
    return Case("conv2d", "256x64x56x56 k64 3x3 p1 (ws cap)", "fwd", run=run, torch=tf, check=check,
                flops=flops, extra=extra)


def _cuda_cases(quick):
    try:
        import cupy
    except ImportError:
        return []
    torch = try_torch()
    if torch is not None and not torch.cuda.is_available():
        torch = None
    rng = np.random.default_rng(0)
    out = []
    for name, xs, k, ks, s, p, g in CUDA_CASES:
        xh = rng.uniform(-1, 1, xs).astype(np.float32)
        wh = rng.uniform(-1, 1, (k, xs[1] // g, ks, ks)).astype(np.float32)
        bh = rng.uniform(-1, 1, k).astype(np.float32)
        flops, yshape = _flops(xs, k, ks, s, p, g)
        dyh = rng.uniform(-1, 1, yshape).astype(np.float32)
        x, w, b, dy = (cupy.asarray(a) for a in (xh, wh, bh, dyh))
        kw = dict(stride=s, padding=p, groups=g)
        tf = tb = None
        if torch is not None:
            tf, tb = _torch_rows(torch, "cuda", x, w, b, dy, s, p, g)

        def check_fwd(x=x, w=w, b=b, xh=xh, wh=wh, bh=bh, kw=kw):
            return rel_error(F.conv2d(x, w, b, **kw)[:1], R.conv2d(xh[:1], wh, bh, **kw))

        def check_bwd(x=x, w=w, dy=dy, xh=xh, wh=wh, dyh=dyh, kw=kw):
            # grad_x of the first image only depends on that image; check it alone.
            gx = F.conv2d_backward(dy, x, w, output_mask=(True, False, False), **kw)[0][:1]
            want = R.conv2d_backward(dyh[:1], xh[:1], wh, output_mask=(True, False, False), **kw)[0]
            gw, gb = F.conv2d_backward(dy[:1], x[:1], w, output_mask=(False, True, True), **kw)[1:]
            ww, wb = R.conv2d_backward(dyh[:1], xh[:1], wh, output_mask=(False, True, True), **kw)[1:]
            return max(rel_error(gx, want), rel_error(gw, ww), rel_error(gb, wb))
        out.append(Case("conv2d", name, "fwd", run=lambda x=x, w=w, b=b, kw=kw: F.conv2d(x, w, b, **kw),
                        torch=tf, check=check_fwd, flops=flops, ref_repeats=1))
        out.append(Case("conv2d", name, "bwd", run=lambda x=x, w=w, dy=dy, kw=kw: F.conv2d_backward(dy, x, w, **kw),
                        torch=tb, check=check_bwd, flops=2 * flops, ref_repeats=1))
    return out


def _transpose_cases(device, torch):
    """conv_transpose2d: a DCGAN-style 4x4 stride-2 upsampling layer, forward and backward."""
    n = 8 if device == "cpu" else 64
    xs, cin, cout = (n, 128, 28, 28), 128, 64
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, xs).astype(np.float32)
    w = rng.uniform(-1, 1, (cin, cout, 4, 4)).astype(np.float32)
    dy = rng.uniform(-1, 1, (n, cout, 56, 56)).astype(np.float32)
    kw = dict(stride=2, padding=1)
    # Same work as the conv2d whose input gradient this is: 2 * N * Cin * H * W * Cout * 16.
    flops = 2.0 * n * cin * 28 * 28 * cout * 16
    xd, wd, dyd = x, w, dy
    if device == "cuda":
        import cupy

        xd, wd, dyd = cupy.asarray(x), cupy.asarray(w), cupy.asarray(dy)
    one = slice(0, 1)  # parity on the first image: the reference is slow at these sizes

    def check_fwd():
        return rel_error(F.conv_transpose2d(xd[one], wd, **kw), R.conv_transpose2d(x[one].astype(np.float64), w.astype(np.float64), **kw))

    def check_bwd():
        got = F.conv_transpose2d_backward(dyd[one], xd[one], wd, **kw)
        want = R.conv_transpose2d_backward(dy[one].astype(np.float64), x[one].astype(np.float64), w.astype(np.float64), **kw)
        return max(rel_error(g, r) for g, r in zip(got, want))

    tf = tb = None
    if torch is not None:
        dev = "cuda" if device == "cuda" else "cpu"
        tx = torch.tensor(x, device=dev, requires_grad=True)
        tw = torch.tensor(w, device=dev, requires_grad=True)
        tb_ = torch.zeros(cout, device=dev, requires_grad=True)
        tdy = torch.tensor(dy, device=dev)
        tf = lambda: torch.nn.functional.conv_transpose2d(tx, tw, tb_, **kw)  # noqa: E731

        def tb():
            torch.autograd.grad(torch.nn.functional.conv_transpose2d(tx, tw, tb_, **kw), (tx, tw, tb_), tdy)
    ref = None if device == "cuda" else (lambda: R.conv_transpose2d(x, w, **kw))
    ref_b = None if device == "cuda" else (lambda: R.conv_transpose2d_backward(dy, x, w, **kw))
    name = f"{n}x128x28x28 -> 64 k4 s2 p1"
    return [Case("conv_transpose2d", name, "fwd", run=lambda: F.conv_transpose2d(xd, wd, **kw), reference=ref,
                 torch=tf, check=check_fwd, flops=flops, ref_repeats=1),
            Case("conv_transpose2d", name, "bwd", run=lambda: F.conv_transpose2d_backward(dyd, xd, wd, **kw),
                 reference=ref_b, torch=tb, check=check_bwd, flops=2 * flops, ref_repeats=1)]


def cases(device, quick):
    if device == "cpu":
        return _cpu_cases(quick) + _transpose_cases(device, try_torch())
    return _cuda_cases(quick) + _transpose_cases(device, try_torch())
