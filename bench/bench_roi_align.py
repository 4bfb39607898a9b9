"""roi_align benchmark cases: a Faster / Mask R-CNN box head on a stride-16 feature map, float32.

x (2, 256, 50, 68) (an 800x1088 image pair at 1/16), 512 boxes (256 per image, sizes 16..512
px log-uniform, clipped), output 7x7, sampling_ratio 2 (torchvision's MultiScaleRoIAlign) and
the adaptive grid (sampling_ratio -1, aligned); forward and backward. GB/s from the minimal
traffic: x read + y written; backward: dy read + dx written. On CUDA a larger batch (4 images,
2048 boxes) is timed too; its parity check runs on the first 64 boxes.
"""
from __future__ import annotations

import numpy as np

import pydl.ops
import pydl.reference as R
from bench_roi_pool import device_arrays, problem, torch_arrays, tvops
from common import Case, max_rel_error, try_torch


def _cases(device, N, K, sr, aligned, huge):
    torch = try_torch()
    tv = tvops()
    scale, P = 1.0 / 16, 7
    rng, x_h, rois_h = problem(N, K)
    x, rois = device_arrays(device, x_h, rois_h)
    y = pydl.ops.roi_align(x, rois, P, scale, sr, aligned)
    dy_h = rng.standard_normal(y.shape, dtype=np.float32)
    (dy,) = device_arrays(device, dy_h)
    xt, rt, dyt = torch_arrays(torch, device, x, rois, dy)
    tf = tb = None
    if tv is not None and xt is not None:
        tf = lambda: torch.ops.torchvision.roi_align(xt, rt, scale, P, P, sr, aligned)  # noqa: E731
        tb = lambda: torch.ops.torchvision._roi_align_backward(dyt, rt, scale, P, P, *x.shape, sr, aligned)  # noqa: E731
    k = 64 if huge else K
    xs, rs, dys = x_h.astype(np.float64), rois_h[:k], dy_h[:k].astype(np.float64)
    args = (P, scale, sr, aligned)

    def check_fwd():
        return max_rel_error([(pydl.ops.roi_align(x, rois[:k], *args), R.roi_align(xs, rs, *args))])

    def check_bwd():
        want = R.roi_align_backward(dys, rs, x.shape, *args)
        return max_rel_error([(pydl.ops.roi_align_backward(dy[:k], rois[:k], x.shape, *args), want)])

    name = f"x{tuple(x.shape)} {K} boxes {P}x{P} sr{sr}" + (" aligned" if aligned else "")
    ref = ref_b = None
    if not huge and device == "cpu":
        ref = lambda: R.roi_align(x_h, rois_h, *args)  # noqa: E731
        ref_b = lambda: R.roi_align_backward(dy_h, rois_h, x.shape, *args)  # noqa: E731
    nb = 4.0 * (x.size + y.size)
    return [
        Case("roi_align", name, "fwd", lambda: pydl.ops.roi_align(x, rois, *args), reference=ref, torch=tf,
             check=check_fwd, bytes=nb, ref_repeats=1),
        Case("roi_align", name, "bwd", lambda: pydl.ops.roi_align_backward(dy, rois, x.shape, *args),
             reference=ref_b, torch=tb, check=check_bwd, bytes=nb, ref_repeats=1),
    ]


def cases(device, quick):
    torch = try_torch()
    if torch is not None and device == "cpu":
        torch.set_num_threads(2)
    out = _cases(device, 2, 512, 2, False, huge=False)
    out += _cases(device, 2, 512, -1, True, huge=quick)
    if device == "cuda" and not quick:
        out += _cases(device, 4, 2048, 2, False, huge=True)
    return out
