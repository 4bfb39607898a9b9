"""nms: CuPy glue over the CUDA kernels in cuda/nms.cu (same signatures as pydl._cpu)."""
