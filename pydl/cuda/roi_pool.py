"""roi_pool: CuPy glue over the CUDA kernels in cuda/roi_pool.cu (same signatures as pydl._cpu)."""
from .. import _backend  # noqa: F401
