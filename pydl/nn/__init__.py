"""pydl.nn: layers with explicit forward / backward over the pydl kernels.

>>> import numpy as np, pydl.nn as nn
>>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
>>> crit = nn.CrossEntropyLoss()
>>> loss = crit(model(np.ones((2, 4), np.float32)), np.array([0, 2]))
>>> grad_x = model.backward(crit.backward())
"""
from . import init  # noqa: F401
from .module import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from . import utils  # noqa: F401,E402
from . import parallel  # noqa: F401,E402
from . import module as _module, layers as _layers, loss as _loss

__all__ = ["init", "utils", "parallel"] + _module.__all__ + _layers.__all__ + _loss.__all__
