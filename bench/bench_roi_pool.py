"""roi_pool benchmark cases: a Faster R-CNN box head on a stride-16 feature map, float32.

x (2, 256, 50, 68) (an 800x1088 image pair at 1/16), 512 boxes (256 per image, sizes 16..512
px log-uniform, clipped to the image), output 7x7; forward with the argmax, and backward.
GB/s from the minimal traffic: x read + y and argmax written; backward: dy and argmax read + dx
written. On CUDA a larger batch (4 images, 2048 boxes) is timed too; its parity check runs on the
first 64 boxes (the NumPy reference is slow).
"""
from __future__ import annotations

import numpy as np

import pydl.ops
import pydl.reference as R
from common import Case, max_rel_error, try_torch


def boxes(rng, N, K, img_h, img_w, dtype=np.float32):
    """(K, 5) rois in image coordinates: centres uniform, sides log-uniform in [16, 512], clipped."""
    b = np.sort(rng.integers(0, N, K))
    c = rng.uniform([0, 0], [img_w, img_h], (K, 2))
    s = np.exp(rng.uniform(np.log(16), np.log(512), (K, 2)))
    lo = np.clip(c - s / 2, 0, [img_w - 1, img_h - 1])
    hi = np.clip(c + s / 2, 0, [img_w - 1, img_h - 1])
    return np.concatenate([b[:, None], lo, hi], 1).astype(dtype)


def device_arrays(device, *arrays):
    if device == "cuda":
        import cupy

        return [cupy.asarray(a) for a in arrays]
    return list(arrays)


def torch_arrays(torch, device, *arrays):
    if torch is None:
        return [None] * len(arrays)
    if device == "cuda":
        if not torch.cuda.is_available():
            return [None] * len(arrays)
        return [torch.from_dlpack(a) for a in arrays]
    return [torch.from_numpy(a) for a in arrays]


def _host(a):
    return a.get() if hasattr(a, "get") else a


def tvops():
    try:
        import torch  # noqa: F401
        import torchvision.ops

        return torchvision.ops
    except Exception:
        return None


def problem(N, K, C=256, H=50, W=68, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    rois = boxes(rng, N, K, H * 16, W * 16)
    return rng, x, rois


def _cases(device, N, K, huge):
    torch = try_torch()
    tv = tvops()
    scale, P = 1.0 / 16, 7
    rng, x_h, rois_h = problem(N, K)
    x, rois = device_arrays(device, x_h, rois_h)
    y, ind = pydl.ops.roi_pool(x, rois, P, scale, return_indices=True)
    dy_h = rng.standard_normal(y.shape, dtype=np.float32)
    (dy,) = device_arrays(device, dy_h)
    xt, rt, dyt = torch_arrays(torch, device, x, rois, dy)
    tf = tb = None
    if tv is not None and xt is not None:
        _, argt = torch.ops.torchvision.roi_pool(xt, rt, scale, P, P)
        tf = lambda: torch.ops.torchvision.roi_pool(xt, rt, scale, P, P)  # noqa: E731
        tb = lambda: torch.ops.torchvision._roi_pool_backward(dyt, rt, argt, scale, P, P, *x.shape)  # noqa: E731
    k = 64 if huge else K  # parity on the first k boxes
    xs, rs, dys = x_h.astype(np.float64), rois_h[:k], dy_h[:k].astype(np.float64)

    def check_fwd():
        want, want_ind = R.roi_pool(xs, rs, P, scale, return_indices=True)
        got, got_ind = pydl.ops.roi_pool(x, rois[:k], P, scale, return_indices=True)
        assert np.array_equal(_host(got_ind), want_ind), "roi_pool argmax differs from the reference"
        return max_rel_error([(got, want)])

    def check_bwd():
        _, ind_k = pydl.ops.roi_pool(x, rois[:k], P, scale, return_indices=True)
        want = R.roi_pool_backward(dys, _host(ind_k), rs, x.shape, P, scale)
        return max_rel_error([(pydl.ops.roi_pool_backward(dy[:k], ind_k, rois[:k], x.shape, P, scale), want)])

    name = f"x{tuple(x.shape)} {K} boxes {P}x{P}"
    ny = y.size
    ref = ref_b = None
    if not huge and device == "cpu":
        ref = lambda: R.roi_pool(x_h, rois_h, P, scale, return_indices=True)  # noqa: E731
        ref_b = lambda: R.roi_pool_backward(dy_h, _host(ind), rois_h, x.shape, P, scale)  # noqa: E731
    return [
        Case("roi_pool", name, "fwd", lambda: pydl.ops.roi_pool(x, rois, P, scale, return_indices=True),
             reference=ref, torch=tf, check=check_fwd, bytes=4.0 * (x.size + ny) + 8.0 * ny, ref_repeats=1),
        Case("roi_pool", name, "bwd", lambda: pydl.ops.roi_pool_backward(dy, ind, rois, x.shape, P, scale),
             reference=ref_b, torch=tb, check=check_bwd, bytes=4.0 * (x.size + ny) + 8.0 * ny, ref_repeats=1),
    ]


def cases(device, quick):
    torch = try_torch()
    if torch is not None and device == "cpu":
        torch.set_num_threads(2)
    out = _cases(device, 2, 512, huge=False)
    if device == "cuda" and not quick:
        out += _cases(device, 4, 2048, huge=True)
    return out
