"""pydl.reference: pure-NumPy twins of every kernel, with the same names and signatures.

Written for clarity (textbook im2col/col2im, float64 accumulation), not speed: the
oracle of the tests and the baseline of the benchmarks. They never call pydl kernels.
"""
from .conv import *  # noqa: F401,F403
from .pool import *  # noqa: F401,F403
from .batch_norm import *  # noqa: F401,F403
from .cross_entropy import *  # noqa: F401,F403
from .nms import *  # noqa: F401,F403
from .roi_pool import *  # noqa: F401,F403
from .roi_align import *  # noqa: F401,F403
from .deform_conv import *  # noqa: F401,F403
from .interpolate import *  # noqa: F401,F403
from .local_response_norm import *  # noqa: F401,F403
from .anchors import *  # noqa: F401,F403
from .soft_nms import *  # noqa: F401,F403
from .metrics import *  # noqa: F401,F403
from .activation import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403

import importlib as _importlib

# Each submodule's public names; by submodule object, since `from .x import *` may
# rebind the name x to a function of the same name (batch_norm, cross_entropy, nms).
__all__ = [n for _m in ['conv', 'pool', 'batch_norm', 'cross_entropy', 'nms', 'roi_pool', 'roi_align', 'deform_conv', 'interpolate', 'local_response_norm', 'anchors', 'soft_nms', 'metrics',
                        'activation', 'linear']
           for n in _importlib.import_module(f"{__name__}.{_m}").__all__]
