"""pool: CuPy glue over the CUDA kernels in cuda/pool.cu (same signatures as pydl._cpu)."""
