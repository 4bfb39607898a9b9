"""batch_norm benchmark cases: training forward, training backward, evaluation forward,
float32, NCHW, against torch.nn.functional.batch_norm / aten's native backward."""
from __future__ import annotations

import numpy as np
from common import Case, rel_error, try_torch

import pydl
import pydl.functional as F
import pydl.reference as R

CPU_SHAPES = [(8, 64, 56, 56), (32, 256, 14, 14)]
CUDA_SHAPES = [(128, 64, 56, 56), (128, 1024, 14, 14)]
EPS = 1e-5


def _cases_for(shape, device, quick):
    rng = np.random.default_rng(0)
    C = shape[1]
    n = int(np.prod(shape))
    item = 4
    h = {
        "x": rng.standard_normal(shape, dtype=np.float32) * 2 + 0.5,
        "dy": rng.standard_normal(shape, dtype=np.float32),
        "w": rng.uniform(0.5, 2, C).astype(np.float32),
        "b": rng.uniform(-1, 1, C).astype(np.float32),
        "rm": rng.uniform(-1, 1, C).astype(np.float32),
        "rv": rng.uniform(0.5, 2, C).astype(np.float32),
    }
    if device == "cuda":
        import cupy

        d = {k: cupy.asarray(v) for k, v in h.items()}
    else:
        d = {k: v.copy() for k, v in h.items()}
    x, dy, w, b = d["x"], d["dy"], d["w"], d["b"]
    rm, rv = d["rm"].copy(), d["rv"].copy()
    _, mean, invstd = F.batch_norm_forward(x, None, None, w, b, training=True, eps=EPS)
    mean_h, invstd_h = (np.asarray(a.get() if hasattr(a, "get") else a, dtype=np.float64)
                        for a in (mean, invstd))
    big = device == "cuda"  # the NumPy reference at GPU shapes takes seconds: check once, don't time

    def f64(a):
        return a.astype(np.float64)

    # ---- checks against the float64 reference (host)
    def check_train_fwd():
        y = F.batch_norm(x, d["rm"].copy(), d["rv"].copy(), w, b, training=True, eps=EPS)
        return rel_error(y, R.batch_norm(f64(h["x"]), None, None, f64(h["w"]), f64(h["b"]),
                                         training=True, eps=EPS))

    def check_train_bwd():
        got = F.batch_norm_backward(dy, x, w, mean, invstd, training=True)
        want = R.batch_norm_backward(f64(h["dy"]), f64(h["x"]), f64(h["w"]), mean_h, invstd_h,
                                     training=True)
        return max(rel_error(g, r) for g, r in zip(got, want))

    def check_eval_fwd():
        y = F.batch_norm(x, d["rm"], d["rv"], w, b, training=False, eps=EPS)
        return rel_error(y, R.batch_norm(f64(h["x"]), f64(h["rm"]), f64(h["rv"]), f64(h["w"]),
                                         f64(h["b"]), eps=EPS))

    # ---- reference timings (float64 NumPy on the host)
    ref_train_fwd = ref_train_bwd = ref_eval_fwd = None
    if not big:
        hx, hdy, hw, hb = (f64(h[k]) for k in ("x", "dy", "w", "b"))

        def ref_train_fwd():
            return R.batch_norm(hx, None, None, hw, hb, training=True, eps=EPS)

        def ref_train_bwd():
            return R.batch_norm_backward(hdy, hx, hw, mean_h, invstd_h, training=True)

        def ref_eval_fwd():
            return R.batch_norm(hx, f64(h["rm"]), f64(h["rv"]), hw, hb, eps=EPS)

    # ---- PyTorch on the same device
    torch = try_torch()
    t_train_fwd = t_train_bwd = t_eval_fwd = None
    if torch is not None and (device == "cpu" or torch.cuda.is_available()):
        if device == "cpu":
            # Same thread count as pydl's OpenMP, as the targets are stated.
            torch.set_num_threads(pydl._backend.cpu().max_threads())
        dev = "cuda" if device == "cuda" else "cpu"
        T = {k: torch.from_numpy(v.copy()).to(dev) for k, v in h.items()}
        _, tsm, tsi = torch.ops.aten.native_batch_norm(T["x"], T["w"], T["b"], None, None, True, 0.1, EPS)

        def t_train_fwd():
            return torch.nn.functional.batch_norm(T["x"], T["rm"], T["rv"], T["w"], T["b"], True, 0.1, EPS)

        def t_train_bwd():
            return torch.ops.aten.native_batch_norm_backward(
                T["dy"], T["x"], T["w"], None, None, tsm, tsi, True, EPS, [True, True, True])

        def t_eval_fwd():
            return torch.nn.functional.batch_norm(T["x"], T["rm"], T["rv"], T["w"], T["b"], False, 0.1, EPS)

    name = "x".join(map(str, shape)) + " f32"
    ref_repeats = 1 if n > 4_000_000 else 3
    return [
        Case("batch_norm", name, "train fwd",
             run=lambda: F.batch_norm(x, rm, rv, w, b, training=True, eps=EPS),
             reference=ref_train_fwd, torch=t_train_fwd, check=check_train_fwd,
             bytes=2 * n * item, ref_repeats=ref_repeats),
        Case("batch_norm", name, "train bwd",
             run=lambda: F.batch_norm_backward(dy, x, w, mean, invstd, training=True),
             reference=ref_train_bwd, torch=t_train_bwd, check=check_train_bwd,
             bytes=3 * n * item, ref_repeats=ref_repeats),
        Case("batch_norm", name, "eval fwd",
             run=lambda: F.batch_norm(x, rm, rv, w, b, training=False, eps=EPS),
             reference=ref_eval_fwd, torch=t_eval_fwd, check=check_eval_fwd,
             bytes=2 * n * item, ref_repeats=ref_repeats),
    ]


def cases(device, quick):
    shapes = CUDA_SHAPES if device == "cuda" else CPU_SHAPES
    out = []
    for shape in shapes:
        out += _cases_for(shape, device, quick)
    return out
