"""interpolate: CuPy glue over the CUDA kernels in cuda/interpolate.cu (same signatures as pydl._cpu)."""
from .. import _backend  # noqa: F401
