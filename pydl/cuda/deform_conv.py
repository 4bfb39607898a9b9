"""deform_conv: CuPy glue over the CUDA kernels in cuda/deform_conv.cu (same signatures as pydl._cpu).

Every function takes C-contiguous CuPy arrays of one dtype and fully overwrites its
preallocated outputs, on the arrays' device and CuPy's current stream; pydl.ops has
validated shapes, dtypes and devices already.

Plan (images in chunks whose buffers stay under pydl.cuda.conv's workspace limit):
* forward: deformable im2col (our kernel) into per-image column matrices, then per group
  one cuBLAS GEMM batched over the chunk's images, y[n,g] = W_g @ col[n,g] (the conv2d GEMM,
  reached through pydl.cuda.conv's CuPy cuBLAS wrapper); the bias is written first (beta 1).
* backward: dcol[n,g] = W_g^T @ dy[n,g] (batched GEMM); dx by a deterministic gather
  (entries sorted by target pixel, see cuda/deform_conv.cu); doffset/dmask by per-point
  gathers over channels; dW: the columns again, images side by side, and one GEMM per chunk
  batched over groups, chunks added in order; db by conv2d's fixed-order bias reduction.
No atomics anywhere: two runs give bit-identical results.
"""
from __future__ import annotations

import numpy as np

from .. import _backend
from . import conv as _conv

_N, _T = _conv._CUBLAS_OP_N, _conv._CUBLAS_OP_T


def _geo(x, off, w, Ho, Wo, og):
    N, C, H, W = (int(v) for v in x.shape)
    K, Cg, kh, kw = (int(v) for v in w.shape)
    return N, C, H, W, K, Cg, kh, kw, Ho, Wo


def _chunk(N, bytes_per_image):
    return _conv._images_per_chunk(N, bytes_per_image)


def deform_conv2d_forward(x, off, mask, w, b, y, sh, sw, ph, pw, dh, dw, groups, og):
    """y (N, K, Ho, Wo) = deform_conv2d(x, off, w, b, mask)."""
    import cupy

    Ho, Wo = int(y.shape[2]), int(y.shape[3])
    N, C, H, W, K, Cg, kh, kw, _, _ = _geo(x, off, w, Ho, Wo, og)
    if y.size == 0:
        return
    cu = _backend.cuda()
    f64 = x.dtype == np.float64
    item = x.itemsize
    P, T = Ho * Wo, kh * kw
    R, Kg, CKg = C * T, K // groups, Cg * T
    with x.device:
        stream = _backend.stream_ptr(cupy)
        beta = 0.0
        if b is not None:
            cu.conv2d_fill_bias(_backend.ptr(y), _backend.ptr(b), N, K, P, f64, stream)
            beta = 1.0
        gemm = _conv._Gemm(cupy, x.dtype)
        nb = _chunk(N, R * P * item)
        col = cupy.empty(nb * R * P, dtype=x.dtype)
        mp = 0 if mask is None else _backend.ptr(mask)
        for n0 in range(0, N, nb):
            cnt = min(nb, N - n0)
            cu.deform_conv2d_im2col(_backend.ptr(x) + n0 * C * H * W * item, _backend.ptr(off) + n0 * 2 * og * T * P * item,
                                    mp and mp + n0 * og * T * P * item, _backend.ptr(col), cnt, C, H, W, kh, kw,
                                    Ho, Wo, sh, sw, ph, pw, dh, dw, og, R * P, P, f64, stream)
            # Column-major y^T (P x Kg) = col^T (P x CKg) @ W_g^T (CKg x Kg), batched over images.
            for g in range(groups):
                gemm(_N, _N, P, Kg, CKg,
                     _backend.ptr(col) + g * CKg * P * item, P, R * P,
                     _backend.ptr(w) + g * Kg * CKg * item, CKg, 0,
                     beta, _backend.ptr(y) + ((n0 * K + g * Kg) * P) * item, P, K * P, cnt)


def deform_conv2d_backward(dy, x, off, mask, w, dx, doff, dmask, dw, db, sh, sw, ph, pw, dh, dil_w, groups, og):
    """Gradients of deform_conv2d into the preallocated dx, doff, dmask, dw, db (each optional)."""
    import cupy

    Ho, Wo = int(dy.shape[2]), int(dy.shape[3])
    N, C, H, W, K, Cg, kh, kw, _, _ = _geo(x, off, w, Ho, Wo, og)
    cu = _backend.cuda()
    f64 = x.dtype == np.float64
    item = x.itemsize
    P, T, HW = Ho * Wo, kh * kw, H * W
    R, Kg, CKg = C * T, K // groups, Cg * T
    with x.device:
        stream = _backend.stream_ptr(cupy)
        if db is not None and K:
            if N * P == 0:
                db.fill(0)
            else:
                S = _conv._split(N * P, K)
                part = cupy.empty(S * K, dtype=x.dtype)
                cu.conv2d_bias_backward(_backend.ptr(dy), _backend.ptr(db), _backend.ptr(part), N, K, P, S, f64,
                                        stream)
        if N == 0:
            if dw is not None:
                dw.fill(0)
            return
        need_dcol = dx is not None or doff is not None or dmask is not None
        if not need_dcol and dw is None:
            return
        gemm = _conv._Gemm(cupy, x.dtype)
        # Per image: columns (R*P) + dy^T for dW (K*P) + the dx sort entries (keys, ids twice,
        # weights) + segment starts.
        ent = 4 * og * T * P
        per_image = (R + K) * P * item + (ent * (16 + item) + 4 * og * HW if dx is not None else 0)
        nb = _chunk(N, per_image)
        nb = max(1, min(nb, (2**31 - 1) // max(1, ent), (2**32 - 2) // max(1, og * HW)))
        col = cupy.empty(nb * R * P, dtype=x.dtype)
        dyT = cupy.empty(K * nb * P, dtype=x.dtype) if dw is not None else None
        mp = 0 if mask is None else _backend.ptr(mask)
        if dx is not None:
            keys = cupy.empty(nb * ent, dtype=np.uint32)
            keys_s = cupy.empty(nb * ent, dtype=np.uint32)
            ids = cupy.empty(nb * ent, dtype=np.int32)
            ids_s = cupy.empty(nb * ent, dtype=np.int32)
            wts = cupy.empty(nb * ent, dtype=x.dtype)
            start = cupy.empty(nb * og * HW + 1, dtype=np.int32)
            counts = {nb, N - (N // nb) * nb or nb}
            tbytes = max(cu.deform_conv2d_sort_temp_bytes(c * ent, c * og * HW) for c in counts)
            temp = cupy.empty(max(1, tbytes), dtype=np.uint8)
        geo = (C, H, W, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dil_w, og)
        for i, n0 in enumerate(range(0, N, nb)):
            cnt = min(nb, N - n0)
            xp_ = _backend.ptr(x) + n0 * C * HW * item
            op_ = _backend.ptr(off) + n0 * 2 * og * T * P * item
            mp_ = mp and mp + n0 * og * T * P * item
            if need_dcol:
                # Column-major dcol^T (P x CKg) = dy^T (P x Kg) @ W_g (Kg x CKg), batched over images.
                for g in range(groups):
                    gemm(_N, _T, P, CKg, Kg,
                         _backend.ptr(dy) + ((n0 * K + g * Kg) * P) * item, P, K * P,
                         _backend.ptr(w) + g * Kg * CKg * item, CKg, 0,
                         0.0, _backend.ptr(col) + g * CKg * P * item, P, R * P, cnt)
                if dx is not None:
                    cu.deform_conv2d_col2im(_backend.ptr(col), op_, mp_, _backend.ptr(dx) + n0 * C * HW * item,
                                            cnt, *geo, R * P, _backend.ptr(keys), _backend.ptr(keys_s),
                                            _backend.ptr(ids), _backend.ptr(ids_s), _backend.ptr(wts),
                                            _backend.ptr(start), _backend.ptr(temp), temp.size, f64, stream)
                if doff is not None or dmask is not None:
                    cu.deform_conv2d_coord(xp_, _backend.ptr(col), op_, mp_,
                                           0 if doff is None else _backend.ptr(doff) + n0 * 2 * og * T * P * item,
                                           0 if dmask is None else _backend.ptr(dmask) + n0 * og * T * P * item,
                                           cnt, *geo, R * P, f64, stream)
            if dw is not None:
                NP = cnt * P
                # colT (R, cnt*P): the masked samples, images side by side; dyT (K, cnt*P).
                cu.deform_conv2d_im2col(xp_, op_, mp_, _backend.ptr(col), cnt, *geo, P, NP, f64, stream)
                cu.conv2d_im2col(_backend.ptr(dy) + n0 * K * P * item, _backend.ptr(dyT), cnt, K, Ho, Wo,
                                 1, 1, Ho, Wo, 1, 1, 0, 0, 1, 1, P, NP, f64, stream)
                # Column-major dW_g^T (CKg x Kg) = colT_g (op T) @ dyT_g, batched over groups.
                gemm(_T, _N, CKg, Kg, NP,
                     _backend.ptr(col), NP, CKg * NP,
                     _backend.ptr(dyT), NP, Kg * NP,
                     0.0 if i == 0 else 1.0, _backend.ptr(dw), CKg, Kg * CKg, groups)
