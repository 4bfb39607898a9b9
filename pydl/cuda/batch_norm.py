"""batch_norm: CuPy glue over the CUDA kernels in cuda/batch_norm.cu (same signatures as pydl._cpu)."""
