"""deform_conv: CuPy glue over the CUDA kernels in cuda/deform_conv.cu (same signatures as pydl._cpu)."""
from .. import _backend  # noqa: F401
