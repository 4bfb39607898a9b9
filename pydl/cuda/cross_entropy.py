"""cross_entropy: CuPy glue over the CUDA kernels in cuda/cross_entropy.cu (same signatures as pydl._cpu)."""
