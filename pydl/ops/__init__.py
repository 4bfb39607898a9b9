"""pydl.ops: detection operators, as torchvision.ops."""
from .nms import *  # noqa: F401,F403
from . import nms as _nms

__all__ = [*_nms.__all__]
