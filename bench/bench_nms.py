"""nms benchmark cases: greedy NMS on clustered boxes, batched NMS, box_iou (float32).

Boxes: clusters of ~20 jittered boxes (16..96 px) around random centers in a
1000x1000 image, random scores. check = 0.0 when the kept indices equal the
reference's exactly, 1.0 otherwise (box_iou: the relative error). On CUDA the
100k case has no NumPy reference: it is checked against pydl's CPU path (the same
rule, another algorithm) and, in extra, against torchvision when present.
"""
from __future__ import annotations

import numpy as np

import pydl.ops
import pydl.reference as R

from common import Case, rel_error, try_torch


def clustered(rng, n, dtype=np.float32, per=20, size=1000.0):
    nc = max(1, n // per)
    c = rng.uniform(0, size, (nc, 2))
    wh = rng.uniform(16, 96, (nc, 2))
    k = rng.integers(0, nc, n)
    ctr = c[k] + rng.normal(0, 1, (n, 2)) * wh[k] * 0.15
    s = wh[k] * rng.uniform(0.8, 1.2, (n, 2))
    return np.concatenate([ctr - s / 2, ctr + s / 2], 1).astype(dtype), rng.random(n).astype(dtype)


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _same(got, want) -> float:
    got, want = _host(got), _host(want)
    return 0.0 if got.shape == want.shape and np.array_equal(got, want) else 1.0


def _tv(torch):
    if torch is None:
        return None
    try:
        import torchvision.ops

        return torchvision.ops
    except Exception:
        return None


def cases(device, quick):
    torch = try_torch()
    tvops = _tv(torch)
    rng = np.random.default_rng(0)
    out = []
    if device == "cpu":
        if torch is not None:
            torch.set_num_threads(2)
        for n, thr in [(1000, 0.5), (5000, 0.5)]:
            b, s = clustered(rng, n)
            tf = None
            if tvops is not None:
                tb, ts = torch.from_numpy(b), torch.from_numpy(s)
                tf = (lambda tb=tb, ts=ts, thr=thr: tvops.nms(tb, ts, thr))
            out.append(Case(
                "nms", f"{n} clustered iou {thr}", "fwd",
                run=lambda b=b, s=s, thr=thr: pydl.ops.nms(b, s, thr),
                reference=lambda b=b, s=s, thr=thr: R.nms(b, s, thr),
                torch=tf,
                check=lambda b=b, s=s, thr=thr: _same(pydl.ops.nms(b, s, thr), R.nms(b, s, thr)),
                ref_repeats=1))
        n = 5000
        b, s = clustered(rng, n)
        ix = rng.integers(0, 80, n).astype(np.int64)
        tf = None
        if tvops is not None:
            tb, ts, ti = torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(ix)
            tf = (lambda: tvops.batched_nms(tb, ts, ti, 0.5))
        out.append(Case(
            "batched_nms", f"{n} clustered 80 classes iou 0.5", "fwd",
            run=lambda: pydl.ops.batched_nms(b, s, ix, 0.5),
            reference=lambda: R.batched_nms(b, s, ix, 0.5),
            torch=tf,
            check=lambda: _same(pydl.ops.batched_nms(b, s, ix, 0.5), R.batched_nms(b, s, ix, 0.5)),
            ref_repeats=1))
        b1, _ = clustered(rng, 1000)
        b2, _ = clustered(rng, 2000)
        tf = None
        if tvops is not None:
            t1, t2 = torch.from_numpy(b1), torch.from_numpy(b2)
            tf = (lambda: tvops.box_iou(t1, t2))
        out.append(Case(
            "box_iou", "1000x2000", "fwd",
            run=lambda: pydl.ops.box_iou(b1, b2),
            reference=lambda: R.box_iou(b1, b2),
            torch=tf,
            check=lambda: rel_error(pydl.ops.box_iou(b1, b2), R.box_iou(b1.astype(np.float64), b2.astype(np.float64))),
            bytes=4.0 * 1000 * 2000, ref_repeats=1))
        return out

    import cupy

    tv_cuda = tvops is not None and torch.cuda.is_available()
    for n, thr, ref in [(5000, 0.7, True), (20000, 0.7, True), (100000, 0.7, False)]:
        b, s = clustered(rng, n)
        gb, gs = cupy.asarray(b), cupy.asarray(s)
        tf = None
        extra = {}
        if tv_cuda:
            tb, ts = torch.as_tensor(b, device="cuda"), torch.as_tensor(s, device="cuda")
            tf = (lambda tb=tb, ts=ts, thr=thr: tvops.nms(tb, ts, thr))
            extra["same_as_torchvision"] = _same(pydl.ops.nms(gb, gs, thr), tvops.nms(tb, ts, thr).cpu().numpy()) == 0.0
        if ref:
            check = (lambda b=b, s=s, gb=gb, gs=gs, thr=thr: _same(pydl.ops.nms(gb, gs, thr), R.nms(b, s, thr)))
        else:
            check = (lambda b=b, s=s, gb=gb, gs=gs, thr=thr: _same(pydl.ops.nms(gb, gs, thr), pydl.ops.nms(b, s, thr)))
        out.append(Case(
            "nms", f"{n} clustered iou {thr}", "fwd",
            run=lambda gb=gb, gs=gs, thr=thr: pydl.ops.nms(gb, gs, thr),
            reference=(lambda b=b, s=s, thr=thr: R.nms(b, s, thr)) if ref else None,
            torch=tf, check=check, ref_repeats=1, extra=extra))
    n = 20000
    b, s = clustered(rng, n)
    ix = rng.integers(0, 80, n).astype(np.int64)
    gb, gs, gi = cupy.asarray(b), cupy.asarray(s), cupy.asarray(ix)
    tf = None
    if tv_cuda:
        tb, ts, ti = (torch.as_tensor(a, device="cuda") for a in (b, s, ix))
        tf = (lambda: tvops.batched_nms(tb, ts, ti, 0.7))
    out.append(Case(
        "batched_nms", f"{n} clustered 80 classes iou 0.7", "fwd",
        run=lambda: pydl.ops.batched_nms(gb, gs, gi, 0.7),
        reference=lambda: R.batched_nms(b, s, ix, 0.7),
        torch=tf,
        check=lambda: _same(pydl.ops.batched_nms(gb, gs, gi, 0.7), R.batched_nms(b, s, ix, 0.7)),
        ref_repeats=1))
    b1, _ = clustered(rng, 4000)
    b2, _ = clustered(rng, 8000)
    g1, g2 = cupy.asarray(b1), cupy.asarray(b2)
    tf = None
    if tv_cuda:
        t1, t2 = torch.as_tensor(b1, device="cuda"), torch.as_tensor(b2, device="cuda")
        tf = (lambda: tvops.box_iou(t1, t2))
    out.append(Case(
        "box_iou", "4000x8000", "fwd",
        run=lambda: pydl.ops.box_iou(g1, g2),
        reference=None,
        torch=tf,
        check=lambda: rel_error(pydl.ops.box_iou(g1[:500], g2), R.box_iou(b1[:500].astype(np.float64), b2.astype(np.float64))),
        bytes=4.0 * 4000 * 8000))
    return out
