"""pydl.ops: detection operators, as torchvision.ops."""
from .nms import *  # noqa: F401,F403
from .roi_pool import *  # noqa: F401,F403
from .roi_align import *  # noqa: F401,F403
from .deform_conv import *  # noqa: F401,F403
from .anchors import *  # noqa: F401,F403
from .soft_nms import *  # noqa: F401,F403

import importlib as _importlib

# Each submodule's public names; by submodule object, since `from .x import *` may
# rebind the name x to a function of the same name (batch_norm, cross_entropy, nms).
__all__ = [n for _m in ['nms', 'roi_pool', 'roi_align', 'deform_conv', 'anchors', 'soft_nms']
           for n in _importlib.import_module(f"{__name__}.{_m}").__all__]
