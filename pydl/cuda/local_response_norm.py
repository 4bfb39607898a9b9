"""local_response_norm: CuPy glue over the CUDA kernels in cuda/local_response_norm.cu (same signatures as pydl._cpu)."""
from .. import _backend  # noqa: F401
