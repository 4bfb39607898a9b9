"""soft_nms benchmark cases: Gaussian and linear Soft-NMS on clustered boxes (float32).

Boxes from bench_nms.clustered (clusters of ~20 jittered boxes in a 1000x1000 image, random
scores). check = 0.0 when the kept indices equal the NumPy reference's exactly and the kept
scores agree to float32 precision, 1.0 otherwise. torchvision has no Soft-NMS: no torch column.
"""
from __future__ import annotations

import numpy as np

import pydl.ops
import pydl.reference as R

from bench_nms import clustered
from common import Case


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _same(got, want) -> float:
    (gk, gs), (wk, ws) = (_host(a) for a in got), want
    if gk.shape != wk.shape or not np.array_equal(gk, wk):
        return 1.0
    return 0.0 if np.allclose(gs.astype(np.float64), ws, rtol=1e-5, atol=0) else 1.0


CONFIGS = [("gaussian", dict(method="gaussian", sigma=0.5, score_threshold=0.001)),
           ("linear", dict(method="linear", iou_threshold=0.3, score_threshold=0.001))]


def cases(device, quick):
    rng = np.random.default_rng(0)
    out = []
    xp = np
    if device == "cuda":
        import cupy

        xp = cupy
    sizes = [(1000, True), (5000, True)] if device == "cpu" else [(1000, True), (5000, True), (20000, False)]
    for n, ref in sizes:
        b, s = clustered(rng, n)
        gb, gs = xp.asarray(b), xp.asarray(s)
        for name, kw in CONFIGS:
            if ref:
                check = (lambda b=b, s=s, gb=gb, gs=gs, kw=kw: _same(pydl.ops.soft_nms(gb, gs, **kw),
                                                                      R.soft_nms(b, s, **kw)))
            else:  # the 20k reference takes minutes: hold the GPU to the CPU kernel instead
                check = (lambda b=b, s=s, gb=gb, gs=gs, kw=kw: _same(pydl.ops.soft_nms(gb, gs, **kw),
                                                                      pydl.ops.soft_nms(b, s, **kw)))
            out.append(Case(
                "soft_nms", f"{n} clustered {name}", "fwd",
                run=lambda gb=gb, gs=gs, kw=kw: pydl.ops.soft_nms(gb, gs, **kw),
                reference=(lambda b=b, s=s, kw=kw: R.soft_nms(b, s, **kw)) if ref else None,
                check=check, ref_repeats=1))
    return out
