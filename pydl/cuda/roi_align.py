"""roi_align: CuPy glue over the CUDA kernels in cuda/roi_align.cu (same signatures as pydl._cpu)."""
from .. import _backend  # noqa: F401
