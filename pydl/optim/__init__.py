"""pydl.optim: optimizers and learning-rate schedulers with PyTorch's rules and defaults.

>>> opt = pydl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)   # doctest: +SKIP
>>> opt.zero_grad(); model.backward(crit.backward()); opt.step()    # doctest: +SKIP
"""
from .optimizer import *  # noqa: F401,F403
from . import lr_scheduler  # noqa: F401
from . import optimizer as _optimizer

__all__ = _optimizer.__all__ + ["lr_scheduler"]
