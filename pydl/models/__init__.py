"""pydl.models: torchvision's classification networks built from pydl.nn layers.

Same names, constructor arguments, module structure and state_dict keys as
``torchvision.models``, so torchvision's weights load as they are (converted to NumPy):

>>> import pydl.models as models
>>> net = models.resnet18(num_classes=10)          # weights=None: nothing is downloaded
>>> # net.load_state_dict({k: v.numpy() for k, v in tv_net.state_dict().items()})

Training uses pydl.nn's explicit ``backward``; for inference, ``net.eval()`` keeps the
function unchanged and ``pydl.nn.utils.fuse(net)`` returns a copy with batch norms folded
into the convolutions and ReLU / residual adds inside the convolution calls.
"""
from .resnet import *  # noqa: F401,F403
from .mobilenetv2 import *  # noqa: F401,F403
from ._layers import Conv2dNormActivation  # noqa: F401
from . import resnet as _resnet, mobilenetv2 as _mobilenetv2

__all__ = _resnet.__all__ + _mobilenetv2.__all__ + ["Conv2dNormActivation"]
