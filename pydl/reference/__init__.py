"""pydl.reference: pure-NumPy twins of every kernel, with the same names and signatures.

Written for clarity (textbook im2col/col2im, float64 accumulation), not speed: the
oracle of the tests and the baseline of the benchmarks. They never call pydl kernels.
"""
from .conv import *  # noqa: F401,F403
from .pool import *  # noqa: F401,F403
from .batch_norm import *  # noqa: F401,F403
from .cross_entropy import *  # noqa: F401,F403
from .nms import *  # noqa: F401,F403
from . import conv as _conv, pool as _pool, batch_norm as _bn, cross_entropy as _ce, nms as _nms

__all__ = [*_conv.__all__, *_pool.__all__, *_bn.__all__, *_ce.__all__, *_nms.__all__]
