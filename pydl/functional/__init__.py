"""pydl.functional: forward and backward of every kernel, on NumPy or CuPy arrays.

``import pydl.functional as F``; names and defaults follow ``torch.nn.functional``
(``axis=`` where PyTorch says ``dim=``).
"""
from .conv import *  # noqa: F401,F403
from .pool import *  # noqa: F401,F403
from .batch_norm import *  # noqa: F401,F403
from .cross_entropy import *  # noqa: F401,F403
from .interpolate import *  # noqa: F401,F403
from .local_response_norm import *  # noqa: F401,F403
from .activation import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403

import importlib as _importlib

# Each submodule's public names; by submodule object, since `from .x import *` may
# rebind the name x to a function of the same name (batch_norm, cross_entropy, nms).
__all__ = [n for _m in ['conv', 'pool', 'batch_norm', 'cross_entropy', 'interpolate', 'local_response_norm',
                        'activation', 'linear']
           for n in _importlib.import_module(f"{__name__}.{_m}").__all__]
