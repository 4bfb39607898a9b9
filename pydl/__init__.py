"""pydl: deep-learning kernels in C++ (NumPy arrays) and CUDA (CuPy arrays).

>>> import numpy as np, pydl.functional as F
>>> x = np.random.rand(2, 3, 8, 8).astype(np.float32)
>>> w = np.random.rand(4, 3, 3, 3).astype(np.float32)
>>> F.conv2d(x, w, padding='same').shape
(2, 4, 8, 8)
"""
from ._backend import (cuda_available, cuda_build_error, get_allow_tf32, get_num_threads, set_allow_tf32,
                       set_num_threads)

__version__ = "0.1.0"
__all__ = ["cuda_available", "cuda_build_error", "set_allow_tf32", "get_allow_tf32", "set_num_threads",
           "get_num_threads", "__version__"]
