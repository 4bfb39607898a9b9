"""conv: CuPy glue over the CUDA kernels in cuda/conv.cu (same signatures as pydl._cpu).

Every function takes C-contiguous CuPy arrays of one dtype (float32 or float64) and
fully overwrites its preallocated output, on the arrays' device and CuPy's current
stream. pydl.functional has validated shapes, dtypes and devices already.

Algorithms
----------
One table for the three directions (``ALGORITHMS``), as the CPU's: ``choose`` is the automatic
rule, ``applies`` what each algorithm computes, and ``pydl.backends.conv_algorithm(...,
device="cuda")`` forces one (a forced algorithm that does not apply raises ValueError).

* ``direct``: grouped convolutions with few channels per group (depthwise: C/groups == 1),
  see ``_use_direct``: direct CUDA kernels (shared-memory tiles), no GEMM. Forced, any geometry.
* ``gemm_1x1``: 1x1, stride 1, no padding (forward and input gradient): the input already is
  the column matrix; one strided-batched GEMM per group straight between the NCHW arrays.
* ``winograd``: 3x3, stride 1, no dilation, groups 1; chosen for float32 with >= 32 channels:
  Winograd F(2x2, 3x3) (our transform kernels + 16 GEMMs in one batched cuBLAS call) for the
  forward, the input gradient and the weight gradient (2.25x fewer multiplies than im2col +
  GEMM). Its transforms only add, subtract and halve: the float32 results stay within ~1e-6
  of the float64 reference (normwise), like the GEMM path. float64 takes im2col unless forced.
* ``im2col``: any geometry: im2col (our kernel) + cuBLAS GEMMs reached through CuPy (the build
  machines have no cuBLAS headers). Images are processed in chunks whose column buffer stays under
  ``_WORKSPACE_LIMIT`` bytes (256 MiB, see ``set_workspace_limit``; at least one image
  per chunk, so a single huge image may exceed it; the Winograd buffers obey the same cap).
  The workspace comes from CuPy's memory pool.
  - forward: per chunk, for each group, a GEMM batched over the images with the weight's
    batch stride 0, writing straight into y (NCHW): y[n,g] = W_g @ col[n,g].
  - input gradient: dcol[n,g] = W_g^T @ dy[n,g] (batched over images), then col2im as a
    gather (one thread per input element): no atomics.
  - weight gradient: the columns are written as (C*kh*kw, nb*P) and dy transposed to
    (K, nb*P), so that dW_g = dy_g @ col_g^T is ONE GEMM per chunk (batched over groups)
    whose reduction runs over images and pixels; chunks accumulate with beta = 1 in order.
  - bias gradient: fixed-split partial sums reduced in a fixed order.
  Every reduction has a fixed order, so two runs give bit-identical results.

TF32: with ``pydl.set_allow_tf32(True)`` float32 GEMMs use TF32 tensor cores
(CUBLAS_TF32_TENSOR_OP_MATH); by default the math mode is CUBLAS_DEFAULT_MATH (exact
float32). The handle's previous math mode is restored after each GEMM.
"""
from __future__ import annotations

import collections

import numpy as np

from .. import _backend

# Bytes of im2col workspace per chunk of images (tests lower it to exercise chunking).
_WORKSPACE_LIMIT = 256 << 20

# Winograd weight gradient: tiles per GEMM slice at least (tests lower it).
_WINO_SLICE_TILES = 512

_INT32_MAX = 2**31 - 1
_CUBLAS_OP_N = 0
_CUBLAS_OP_T = 1
_CUBLAS_DEFAULT_MATH = 0
_CUBLAS_TF32_TENSOR_OP_MATH = 3
_MAX_BATCH = 65535  # cuBLAS batched GEMMs: keep the batch count within a grid dimension


def set_workspace_limit(nbytes: int) -> None:
    """Cap, in bytes, on the GPU workspace (im2col columns, Winograd tiles) of one call."""
    global _WORKSPACE_LIMIT
    _WORKSPACE_LIMIT = _backend.int_arg("nbytes", nbytes, minimum=1)


def get_workspace_limit() -> int:
    return _WORKSPACE_LIMIT


# ---------------------------------------------------------------- the algorithm table
ALGORITHMS = {
    "direct": "grouped convolutions with at most 4 channels per group (depthwise among them); any geometry "
              "when forced: shared-memory tiles per (image, channel), no GEMM",
    "winograd": "3x3, stride 1, no dilation, groups 1 (automatic: float32 with >= 32 channels): Winograd "
                "F(2x2, 3x3) transforms + 16 batched cuBLAS GEMMs",
    "gemm_1x1": "1x1, stride 1, no padding, forward and input gradient: strided-batched cuBLAS GEMMs straight "
                "between the NCHW arrays",
    "im2col": "any geometry: im2col (col2im) over chunks of images under the workspace cap + cuBLAS GEMMs",
}
DIRECTIONS = ("forward", "input_grad", "weight_grad")
_forced = dict.fromkeys(DIRECTIONS)  # direction -> forced algorithm name, or None (automatic)


# A call's geometry: x (N, C, H, W), w (K, C/groups, kh, kw), y (N, K, Ho, Wo).
Geo = collections.namedtuple("Geo", "N C H W K kh kw Ho Wo sh sw ph pw dh dw groups")


def applies(direction: str, algorithm: str, g: Geo) -> bool:
    """Whether `algorithm` computes `direction` of geometry g (whatever its speed)."""
    if algorithm in ("direct", "im2col"):
        return True
    if algorithm == "winograd":
        return (g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.groups) == (3, 3, 1, 1, 1, 1, 1)
    if algorithm == "gemm_1x1":
        return direction != "weight_grad" and _is_gemm_1x1(g.kh, g.kw, g.H, g.W, g.Ho, g.Wo, g.sh, g.sw, g.ph, g.pw)
    return False


def choose(direction: str, g: Geo, dtype) -> str:
    """The automatic rule."""
    if _use_direct(g.C, g.K, g.groups):
        return "direct"
    if _use_winograd(dtype, g.C, g.K, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.groups):
        return "winograd"
    if applies(direction, "gemm_1x1", g):
        return "gemm_1x1"
    return "im2col"


def pick(direction: str, g: Geo, dtype) -> str:
    """The forced algorithm of `direction`, checked against g, or the automatic choice."""
    forced = _forced[direction]
    if forced is None:
        return choose(direction, g, dtype)
    if not applies(direction, forced, g):
        raise ValueError(f"conv: algorithm '{forced}' does not apply to this {direction} on the GPU (kernel "
                         f"{g.kh}x{g.kw}, stride {g.sh}x{g.sw}, padding {g.ph}x{g.pw}, dilation {g.dh}x{g.dw}, "
                         f"groups {g.groups}); see pydl.backends.conv_algorithms(device='cuda')")
    return forced


def _use_direct(C: int, K: int, groups: int) -> bool:
    """Direct kernels for grouped convolutions with at most 4 input channels per group.

    There the per-group GEMMs are tiny (cuDNN is weak too); the direct kernels read each
    input patch once from shared memory.
    """
    return groups > 1 and C // groups <= 4 and K // groups <= 64


def _use_winograd(dtype, C, K, kh, kw, sh, sw, dh, dw, groups) -> bool:
    """Winograd F(2x2, 3x3) for float32 3x3 stride-1 convolutions with enough channels.

    2.25x fewer multiplies than im2col + GEMM; float64 keeps the exact-order GEMM path.
    """
    return (np.dtype(dtype) == np.float32 and kh == 3 and kw == 3 and sh == 1 and sw == 1
            and dh == 1 and dw == 1 and groups == 1 and min(C, K) >= 32)


def _winograd(cu, gemm, cupy, inp, w, out, pt, pl, flip, b, stream):
    """out (N, O, Ho, Wo) = 3x3 correlation of inp (N, I, Hi, Wi) (+ b), by Winograd F(2x2, 3x3).

    flip = False: the weight is w (O, I, 3, 3); flip = True: it is w (I, O, 3, 3) transposed
    and rotated by 180 degrees (the input gradient). pt/pl: top/left padding (may be < 0).
    """
    N, I, Hi, Wi = (int(v) for v in inp.shape)
    O, Ho, Wo = int(out.shape[1]), int(out.shape[2]), int(out.shape[3])
    item = inp.itemsize
    f64 = _f64(inp)
    th, tw = (Ho + 1) // 2, (Wo + 1) // 2
    tiles = th * tw
    U = cupy.empty(16 * O * I, dtype=inp.dtype)
    cu.conv2d_wino_weight(_backend.ptr(w), _backend.ptr(U), O, I, flip, f64, stream)
    nb = _images_per_chunk(N, 16 * (I + O) * tiles * item, tiles)
    V = cupy.empty(16 * I * nb * tiles, dtype=inp.dtype)
    M = cupy.empty(16 * O * nb * tiles, dtype=inp.dtype)
    bp = 0 if b is None else _backend.ptr(b)
    for n0 in range(0, N, nb):
        cnt = min(nb, N - n0)
        Tn = cnt * tiles
        cu.conv2d_wino_input(_backend.ptr(inp) + n0 * I * Hi * Wi * item, _backend.ptr(V), cnt, I, Hi, Wi,
                             th, tw, pt, pl, 1, Tn, f64, stream)
        # Row-major M[xi] (O x Tn) = U[xi] (O x I) @ V[xi] (I x Tn); column-major
        # M^T (Tn x O) = V^T (Tn x I) @ U^T (I x O), batched over the 16 positions xi.
        gemm(_CUBLAS_OP_N, _CUBLAS_OP_N, Tn, O, I,
             _backend.ptr(V), Tn, I * Tn,
             _backend.ptr(U), I, O * I,
             0.0, _backend.ptr(M), Tn, O * Tn, 16)
        cu.conv2d_wino_output(_backend.ptr(M), bp, _backend.ptr(out) + n0 * O * Ho * Wo * item, cnt, O,
                              Ho, Wo, th, tw, f64, stream)


def _winograd_weight_grad(cu, gemm, cupy, x, dy, dw, ph, pw, stream):
    """dw (K, C, 3, 3) of a 3x3 stride-1 conv by Winograd F(2x2, 3x3) (see cuda/conv.cu).

    Per chunk of images: V = B^T d B (input tiles), Z = A dy A^T (output tiles), both laid
    out (S, 16, channels, L) with the tiles cut into S slices of L, so that one GEMM batched
    over (slice, xi) gives partial sums part[s, xi] (K x C) = Z[s, xi] @ V[s, xi]^T; the
    slices (and chunks) are added in a fixed order, then dw = G^T . G.
    """
    N, C, H, W = (int(v) for v in x.shape)
    K, Ho, Wo = int(dy.shape[1]), int(dy.shape[2]), int(dy.shape[3])
    item = x.itemsize
    f64 = _f64(x)
    th, tw = (Ho + 1) // 2, (Wo + 1) // 2
    tiles = th * tw
    nb = _images_per_chunk(N, 16 * (C + K) * tiles * item, tiles)
    # Slices: enough independent GEMMs to fill the GPU (the K x C outputs are small), each
    # still a long reduction.
    out_tiles = -(-C // 128) * -(-K // 128)
    S = max(1, min(-(-nb * tiles // _WINO_SLICE_TILES), -(-528 // (16 * out_tiles))))
    L = -(-nb * tiles // S)
    V = cupy.empty(S * 16 * C * L, dtype=x.dtype)
    Z = cupy.empty(S * 16 * K * L, dtype=x.dtype)
    part = cupy.empty(S * 16 * K * C, dtype=x.dtype)
    Ssum = cupy.empty(16 * K * C, dtype=x.dtype)
    for i, n0 in enumerate(range(0, N, nb)):
        cnt = min(nb, N - n0)
        Tn = cnt * tiles
        Sc = -(-Tn // L)  # slices this chunk needs (the last chunk may need fewer)
        cu.conv2d_wino_input(_backend.ptr(x) + n0 * C * H * W * item, _backend.ptr(V), cnt, C, H, W,
                             th, tw, ph, pw, Sc, L, f64, stream)
        cu.conv2d_wino_dy(_backend.ptr(dy) + n0 * K * Ho * Wo * item, _backend.ptr(Z), cnt, K, Ho, Wo,
                          th, tw, Sc, L, f64, stream)
        # Column-major: part^T (C x K) = V^T-as-stored (op T, lda L) @ Z (op N, ldb L).
        gemm(_CUBLAS_OP_T, _CUBLAS_OP_N, C, K, L,
             _backend.ptr(V), L, C * L,
             _backend.ptr(Z), L, K * L,
             0.0, _backend.ptr(part), C, K * C, 16 * Sc)
        cu.conv2d_reduce_partials(_backend.ptr(part), _backend.ptr(Ssum), 16 * K * C, Sc, i > 0, f64, stream)
    cu.conv2d_wino_weight_grad(_backend.ptr(Ssum), _backend.ptr(dw), K, C, f64, stream)


def _is_gemm_1x1(kh, kw, H, W, Ho, Wo, sh, sw, ph, pw) -> bool:
    return kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0 and Ho == H and Wo == W


def _f64(a) -> bool:
    return a.dtype == np.float64


def _check_int32(**dims):
    for name, v in dims.items():
        if v > _INT32_MAX:
            raise ValueError(f"conv2d: {name} = {v} exceeds the 32-bit GEMM dimension limit of cuBLAS")


def _images_per_chunk(N: int, bytes_per_image: int, elems_per_image_row: int = 0) -> int:
    """Images per chunk so that the workspace stays under _WORKSPACE_LIMIT (>= 1)."""
    nb = max(1, min(N, _WORKSPACE_LIMIT // max(1, bytes_per_image), _MAX_BATCH))
    if elems_per_image_row:  # GEMM dimension nb * P must fit in an int
        nb = max(1, min(nb, _INT32_MAX // elems_per_image_row))
    return nb


def _split(total: int, rows: int) -> int:
    """Number of fixed slices of a reduction of length total over rows outputs."""
    # About 4096 blocks in all (several waves on any GPU), each summing >= 2048 terms.
    return max(1, min(-(-4096 // max(1, rows)), total // 2048, 65535))


class _Gemm:
    """Strided-batched GEMMs (column-major, as cuBLAS) on CuPy's handle and current stream."""

    def __init__(self, cupy, dtype):
        try:
            from cupy_backends.cuda.libs import cublas
        except ImportError:  # older CuPy
            from cupy.cuda import cublas

        self.cublas = cublas
        self.handle = cupy.cuda.device.get_cublas_handle()
        cublas.setStream(self.handle, _backend.stream_ptr(cupy))
        self.f64 = np.dtype(dtype) == np.float64
        self.mode = (_CUBLAS_TF32_TENSOR_OP_MATH if (not self.f64 and _backend.get_allow_tf32())
                     else _CUBLAS_DEFAULT_MATH)

    def __call__(self, transa, transb, m, n, k, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch):
        cublas, h = self.cublas, self.handle
        _check_int32(m=m, n=n, k=k, lda=lda, ldb=ldb, ldc=ldc)
        old = cublas.getMathMode(h)
        cublas.setMathMode(h, self.mode)
        try:
            fn = cublas.dgemmStridedBatched if self.f64 else cublas.sgemmStridedBatched
            # CuPy's raw cuBLAS bindings take alpha and beta as host pointers (host pointer mode).
            dt = np.float64 if self.f64 else np.float32
            one, bet = np.array(1.0, dt), np.array(beta, dt)
            fn(h, transa, transb, m, n, k, one.ctypes.data, A, lda, sA, B, ldb, sB, bet.ctypes.data,
               C, ldc, sC, batch)
        finally:
            cublas.setMathMode(h, old)


def _geometry(x, w, y):
    N, C, H, W = (int(v) for v in x.shape)
    K, _, kh, kw = (int(v) for v in w.shape)
    Ho, Wo = int(y.shape[2]), int(y.shape[3])
    return N, C, H, W, K, kh, kw, Ho, Wo


def conv2d_forward(x, w, b, y, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, activation=0,
                   negative_slope=0.01, residual=None):
    """y (N, K, Ho, Wo) = act(conv2d(x (N, C, H, W), w (K, C/groups, kh, kw)) + b (K,) + residual).

    The GPU applies the epilogue (residual add, then the activation kernel in place) as passes
    after the convolution; the CPU fuses it into its output tiles."""
    _conv2d_forward(x, w, b, y, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups)
    if activation or residual is not None:
        _epilogue(y, activation, negative_slope, residual)


def _epilogue(y, act, slope, residual):
    # Activation codes as pydl.functional.conv.ACTIVATIONS; the math is cuda/activation.cu's.
    from . import activation as A

    if residual is not None:
        y += residual
    if act == 1:
        A.relu_forward(y, y)
    elif act == 2:
        A.hardtanh_forward(y, y, 0.0, 6.0)
    elif act == 3:
        A.leaky_relu_forward(y, y, slope)
    elif act == 4:
        A.silu_forward(y, y)
    elif act == 5:
        A.hardswish_forward(y, y)


def _conv2d_forward(x, w, b, y, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups):
    import cupy

    N, C, H, W, K, kh, kw, Ho, Wo = dims = _geometry(x, w, y)
    sh, sw, ph, pw, dh, dw = stride_h, stride_w, pad_h, pad_w, dil_h, dil_w
    P = Ho * Wo
    algo = pick("forward", Geo(*dims, sh, sw, ph, pw, dh, dw, groups), x.dtype)
    if y.size == 0:
        return
    cu = _backend.cuda()
    f64 = _f64(x)
    with x.device:
        stream = _backend.stream_ptr(cupy)
        Cg, Kg = C // groups, K // groups
        CKg = Cg * kh * kw
        if CKg == 0:  # no input channels: y = bias
            if b is None:
                y.fill(0)
            else:
                cu.conv2d_fill_bias(_backend.ptr(y), _backend.ptr(b), N, K, P, f64, stream)
            return
        if algo == "direct":
            cu.conv2d_direct_forward(_backend.ptr(x), _backend.ptr(w), 0 if b is None else _backend.ptr(b),
                                     _backend.ptr(y), N, C, H, W, K, kh, kw, Ho, Wo, sh, sw, ph, pw,
                                     dh, dw, groups, f64, stream)
            return
        if algo == "winograd":
            _winograd(cu, _Gemm(cupy, x.dtype), cupy, x, w, y, ph, pw, False, b, stream)
            return
        beta = 0.0
        if b is not None:  # y starts as the bias; the GEMMs add to it
            cu.conv2d_fill_bias(_backend.ptr(y), _backend.ptr(b), N, K, P, f64, stream)
            beta = 1.0
        gemm = _Gemm(cupy, x.dtype)
        item = x.itemsize
        # Row-major y[n,g] (Kg x P) = W_g (Kg x CKg) @ col[n,g] (CKg x P) is, column-major,
        # y^T (P x Kg) = col^T (P x CKg) @ W_g^T (CKg x Kg): m = P, n = Kg, k = CKg.
        if algo == "gemm_1x1" and P > _INT32_MAX:
            # A plane past 2**31 pixels is a leading dimension cuBLAS's 32-bit API cannot take.
            _mix_channels_64bit(y, x, [w[g * Kg:(g + 1) * Kg, :, 0, 0] for g in range(groups)], b is None)
            return
        if algo == "gemm_1x1":
            for n0 in range(0, N, _MAX_BATCH):
                nb = min(_MAX_BATCH, N - n0)
                for g in range(groups):
                    gemm(_CUBLAS_OP_N, _CUBLAS_OP_N, P, Kg, Cg,
                         _backend.ptr(x) + ((n0 * C + g * Cg) * P) * item, P, C * P,
                         _backend.ptr(w) + g * Kg * Cg * item, Cg, 0,
                         beta, _backend.ptr(y) + ((n0 * K + g * Kg) * P) * item, P, K * P, nb)
            return
        rows = C * kh * kw
        nb = _images_per_chunk(N, rows * P * item)
        col = cupy.empty(nb * rows * P, dtype=x.dtype)
        for n0 in range(0, N, nb):
            cnt = min(nb, N - n0)
            cu.conv2d_im2col(_backend.ptr(x) + n0 * C * H * W * item, _backend.ptr(col), cnt, C, H, W,
                             kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, rows * P, P, f64, stream)
            for g in range(groups):
                gemm(_CUBLAS_OP_N, _CUBLAS_OP_N, P, Kg, CKg,
                     _backend.ptr(col) + g * CKg * P * item, P, rows * P,
                     _backend.ptr(w) + g * Kg * CKg * item, CKg, 0,
                     beta, _backend.ptr(y) + ((n0 * K + g * Kg) * P) * item, P, K * P, cnt)


def _mix_channels_64bit(out, inp, mats, zero):
    """out[n, group g] (R x P) (+)= mats[g] (R x S) @ inp[n, group g] (S x P), one 64-bit-indexed
    CuPy pass per input channel in order (a 1x1 convolution or its x-adjoint on huge planes)."""
    N, R, S = out.shape[0], mats[0].shape[0], mats[0].shape[1]
    P = out[0, 0].size
    for n in range(N):
        for g, m in enumerate(mats):
            ig = inp[n, g * S:(g + 1) * S].reshape(S, P)
            og = out[n, g * R:(g + 1) * R].reshape(R, P)
            if zero:
                og.fill(0)
            for c in range(S):
                og += m[:, c:c + 1] * ig[c:c + 1]


def conv2d_backward_input(dy, w, dx, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups):
    """dx (N, C, H, W) = the gradient of conv2d with respect to x, given dy (N, K, Ho, Wo)."""
    import cupy

    N, C, H, W, K, kh, kw, Ho, Wo = dims = _geometry(dx, w, dy)
    sh, sw, ph, pw, dh, dw = stride_h, stride_w, pad_h, pad_w, dil_h, dil_w
    P = Ho * Wo
    algo = pick("input_grad", Geo(*dims, sh, sw, ph, pw, dh, dw, groups), dx.dtype)
    if dx.size == 0:
        return
    cu = _backend.cuda()
    f64 = _f64(dx)
    with dx.device:
        stream = _backend.stream_ptr(cupy)
        Cg, Kg = C // groups, K // groups
        CKg = Cg * kh * kw
        if P == 0 or Kg == 0:  # no output depends on x
            dx.fill(0)
            return
        if algo == "direct":
            cu.conv2d_direct_backward_input(_backend.ptr(dy), _backend.ptr(w), _backend.ptr(dx), N, C, H, W,
                                            K, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, groups, f64, stream)
            return
        gemm = _Gemm(cupy, dx.dtype)
        if algo == "winograd":
            # dx[n,c,ih,iw] = sum_{k,a,b} w[k,c,2-a,2-b] dy[n,k,ih - (2-ph) + a, iw - (2-pw) + b]
            _winograd(cu, gemm, cupy, dy, w, dx, 2 - ph, 2 - pw, True, None, stream)
            return
        item = dx.itemsize
        # Row-major dcol[n,g] (CKg x P) = W_g^T (CKg x Kg) @ dy[n,g] (Kg x P) is, column-major,
        # dcol^T (P x CKg) = dy^T (P x Kg) @ W_g (Kg x CKg): A = dy (op N, lda P),
        # B = W_g stored column-major as CKg x Kg (op T, ldb CKg).
        if algo == "gemm_1x1" and P > _INT32_MAX:
            # A plane past 2**31 pixels is a leading dimension cuBLAS's 32-bit API cannot take.
            _mix_channels_64bit(dx, dy, [w[g * Kg:(g + 1) * Kg, :, 0, 0].T for g in range(groups)], True)
            return
        if algo == "gemm_1x1":
            for n0 in range(0, N, _MAX_BATCH):
                nb = min(_MAX_BATCH, N - n0)
                for g in range(groups):
                    gemm(_CUBLAS_OP_N, _CUBLAS_OP_T, P, Cg, Kg,
                         _backend.ptr(dy) + ((n0 * K + g * Kg) * P) * item, P, K * P,
                         _backend.ptr(w) + g * Kg * Cg * item, Cg, 0,
                         0.0, _backend.ptr(dx) + ((n0 * C + g * Cg) * P) * item, P, C * P, nb)
            return
        rows = C * kh * kw
        nb = _images_per_chunk(N, rows * P * item)
        dcol = cupy.empty(nb * rows * P, dtype=dx.dtype)
        for n0 in range(0, N, nb):
            cnt = min(nb, N - n0)
            for g in range(groups):
                gemm(_CUBLAS_OP_N, _CUBLAS_OP_T, P, CKg, Kg,
                     _backend.ptr(dy) + ((n0 * K + g * Kg) * P) * item, P, K * P,
                     _backend.ptr(w) + g * Kg * CKg * item, CKg, 0,
                     0.0, _backend.ptr(dcol) + g * CKg * P * item, P, rows * P, cnt)
            cu.conv2d_col2im(_backend.ptr(dcol), _backend.ptr(dx) + n0 * C * H * W * item, cnt, C, H, W,
                             kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, f64, stream)


def conv2d_backward_weight(dy, x, dw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups):
    """dw (K, C/groups, kh, kw) = the gradient of conv2d with respect to w."""
    import cupy

    N, C, H, W, K, kh, kw, Ho, Wo = dims = _geometry(x, dw, dy)
    sh, sw, ph, pw, dh, dw_ = stride_h, stride_w, pad_h, pad_w, dil_h, dil_w
    P = Ho * Wo
    algo = pick("weight_grad", Geo(*dims, sh, sw, ph, pw, dh, dw_, groups), x.dtype)
    if dw.size == 0:
        return
    cu = _backend.cuda()
    f64 = _f64(x)
    with x.device:
        stream = _backend.stream_ptr(cupy)
        Cg, Kg = C // groups, K // groups
        CKg = Cg * kh * kw
        if N * P == 0:  # an empty sum
            dw.fill(0)
            return
        if algo == "direct":
            S = _split(N * P, K)
            part = cupy.empty(S * K * CKg, dtype=x.dtype)
            cu.conv2d_direct_backward_weight(_backend.ptr(dy), _backend.ptr(x), _backend.ptr(dw),
                                             _backend.ptr(part), N, C, H, W, K, kh, kw, Ho, Wo, sh, sw,
                                             ph, pw, dh, dw_, groups, S, f64, stream)
            return
        gemm = _Gemm(cupy, x.dtype)
        if algo == "winograd":
            _winograd_weight_grad(cu, gemm, cupy, x, dy, dw, ph, pw, stream)
            return
        item = x.itemsize
        rows = C * kh * kw
        # Per chunk of nb images: colT (rows, nb*P) and dyT (K, nb*P), then, row-major,
        # dW_g (Kg x CKg) += dyT_g (Kg x nbP) @ colT_g^T (nbP x CKg); column-major that is
        # dW_g^T (CKg x Kg) = colT_g^T-as-stored (op T, lda nbP) @ dyT_g (op N, ldb nbP),
        # batched over the groups. The first chunk writes (beta 0), later ones add in order.
        nb = _images_per_chunk(N, (rows + K) * P * item, P)
        colT = cupy.empty(rows * nb * P, dtype=x.dtype)
        dyT = cupy.empty(K * nb * P, dtype=x.dtype)
        for i, n0 in enumerate(range(0, N, nb)):
            cnt = min(nb, N - n0)
            NP = cnt * P
            cu.conv2d_im2col(_backend.ptr(x) + n0 * C * H * W * item, _backend.ptr(colT), cnt, C, H, W,
                             kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw_, P, NP, f64, stream)
            # dy (cnt, K, Ho, Wo) -> (K, cnt*P): im2col of a 1x1 kernel is this transpose.
            cu.conv2d_im2col(_backend.ptr(dy) + n0 * K * P * item, _backend.ptr(dyT), cnt, K, Ho, Wo,
                             1, 1, Ho, Wo, 1, 1, 0, 0, 1, 1, P, NP, f64, stream)
            gemm(_CUBLAS_OP_T, _CUBLAS_OP_N, CKg, Kg, NP,
                 _backend.ptr(colT), NP, CKg * NP,
                 _backend.ptr(dyT), NP, Kg * NP,
                 0.0 if i == 0 else 1.0, _backend.ptr(dw), CKg, Kg * CKg, groups)


def conv2d_backward_bias(dy, db):
    """db (K,) = sum of dy (N, K, Ho, Wo) over N, Ho and Wo."""
    import cupy

    N, K = int(dy.shape[0]), int(dy.shape[1])
    P = int(dy.shape[2]) * int(dy.shape[3])
    if K == 0:
        return
    with dy.device:
        stream = _backend.stream_ptr(cupy)
        if N * P == 0:
            db.fill(0)
            return
        S = _split(N * P, K)
        part = cupy.empty(S * K, dtype=dy.dtype)
        _backend.cuda().conv2d_bias_backward(_backend.ptr(dy), _backend.ptr(db), _backend.ptr(part), N, K, P,
                                             S, _f64(dy), stream)
