"""soft_nms: CuPy glue over the CUDA kernels in cuda/soft_nms.cu (same signatures as pydl._cpu)."""
from .. import _backend  # noqa: F401
