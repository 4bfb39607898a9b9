"""pydl.functional: forward and backward of every kernel, on NumPy or CuPy arrays.

``import pydl.functional as F``; names and defaults follow ``torch.nn.functional``
(``axis=`` where PyTorch says ``dim=``).
"""
from .conv import *  # noqa: F401,F403
from .pool import *  # noqa: F401,F403
from .batch_norm import *  # noqa: F401,F403
from .cross_entropy import *  # noqa: F401,F403
from . import conv as _conv, pool as _pool, batch_norm as _bn, cross_entropy as _ce

__all__ = [*_conv.__all__, *_pool.__all__, *_bn.__all__, *_ce.__all__]
