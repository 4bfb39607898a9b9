"""linear: CuPy glue for F.linear (same signatures as the pydl._cpu kernels in csrc/linear.cpp).

The GEMMs are CuPy's matmul (cuBLAS) on the arrays' device and CuPy's current stream, written
straight into the preallocated outputs; the bias is a broadcast add, its gradient CuPy's column
sum. float32 GEMMs follow CuPy's own TF32 setting (the CUPY_TF32 environment variable, off by
default), not pydl.set_allow_tf32. Arrays arrive C-contiguous, validated by pydl.functional.
"""
from __future__ import annotations


def linear_forward(x, w, b, y):
    """y (M, N) <- x (M, K) w (N, K)^T + b (N,) or None."""
    import cupy

    with x.device:
        cupy.matmul(x, w.T, out=y)  # K = 0: zeros
        if b is not None:
            y += b


def linear_backward_input(dy, w, dx):
    """dx (M, K) <- dy (M, N) w (N, K)."""
    import cupy

    with dy.device:
        cupy.matmul(dy, w, out=dx)


def linear_backward_weight(dy, x, dw):
    """dw (N, K) <- dy (M, N)^T x (M, K)."""
    import cupy

    with dy.device:
        cupy.matmul(dy.T, x, out=dw)


def linear_backward_bias(dy, db):
    """db (N,) <- column sums of dy (M, N)."""
    import cupy

    with dy.device:
        cupy.sum(dy, axis=0, out=db)
