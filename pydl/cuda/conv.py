"""conv: CuPy glue over the CUDA kernels in cuda/conv.cu (same signatures as pydl._cpu)."""
