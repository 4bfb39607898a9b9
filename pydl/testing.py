"""pydl.testing.gradcheck: check a layer's analytic backward against central finite differences.

>>> import numpy as np, pydl.nn as nn
>>> from pydl.testing import gradcheck
>>> layer = nn.Linear(3, 2).double()
>>> gradcheck(layer, np.random.rand(4, 3))
True
"""
from __future__ import annotations

import numpy as np

from . import _backend

__all__ = ["GradcheckError", "gradcheck"]


class GradcheckError(AssertionError):
    """The analytic and numerical gradients disagree (the message says where)."""


def _host(a):
    return a.get() if _backend.is_cuda(a) else np.asarray(a)


def _flat_perturb(a, i, delta):
    """a.flat[i] += delta on either backend (a is C-contiguous)."""
    a.reshape(-1)[i] += delta


def gradcheck(module_or_fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, check_params=True, seed=0,
              raise_exception=True):
    """Compare analytic gradients with central finite differences, in float64.

    Parameters
    ----------
    module_or_fn : pydl.nn.Module or (forward, backward) pair
        A Module: ``y = module(*inputs)``, then ``module.backward(dy)`` gives the input
        gradient and accumulates into its parameters' ``.grad`` (its parameters are checked
        too when check_params). A pair of functions: ``y = forward(*inputs)`` and
        ``backward(dy, *inputs)`` returning the gradient of every input (one array, or a
        tuple with one entry per input; None for inputs without gradient).
        The computation must be deterministic (Dropout in eval mode) and float64.
    inputs : array or tuple of arrays (NumPy or CuPy)
        Floating-point inputs are checked; others (int64 targets) are passed through.
    eps : float
        Finite-difference step: ``(f(x + eps) - f(x - eps)) / (2 eps)``.
    atol, rtol : float
        Pass when ``|analytic - numerical| <= atol + rtol |numerical|`` everywhere.
    seed : int
        Seeds the random projection ``dy`` (the check is on ``sum(y * dy)``).

    Returns
    -------
    True when every gradient agrees; otherwise raises GradcheckError (or returns False
    with raise_exception=False).
    """
    if not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    inputs = [a.copy() for a in inputs]  # perturbed in place below; the caller's arrays stay intact
    xp = _backend.array_module(**{f"inputs[{i}]": a for i, a in enumerate(inputs)})
    is_module = hasattr(module_or_fn, "named_parameters") and hasattr(module_or_fn, "backward")
    if is_module:
        forward = module_or_fn
        params = list(module_or_fn.named_parameters()) if check_params else []
    else:
        try:
            forward, backward = module_or_fn
        except (TypeError, ValueError):
            raise TypeError("module_or_fn: expected a pydl.nn.Module or a (forward, backward) pair, got "
                            f"{type(module_or_fn).__name__}") from None
        params = []
    for i, a in enumerate(inputs):
        if a.dtype.kind == "f" and a.dtype != np.float64:
            raise TypeError(f"inputs[{i}]: expected dtype float64 (gradcheck runs in float64), got {a.dtype}")
    for name, p in params:
        if p.data.dtype != np.float64:
            raise TypeError(f"parameter {name}: expected dtype float64, got {p.data.dtype} (call .double())")

    y = forward(*inputs)
    rng = np.random.default_rng(seed)
    dy = xp.asarray(rng.standard_normal(np.shape(y)))

    def objective():
        return float((forward(*inputs) * dy).sum())

    # analytic
    if is_module:
        saved = {name: p.grad for name, p in params}
        for _, p in params:
            p.grad = None
        forward(*inputs)
        grads = module_or_fn.backward(dy)
        grads = list(grads) if isinstance(grads, (tuple, list)) else [grads]
        pgrads = {name: p.grad for name, p in params}
        for name, p in params:
            p.grad = saved[name]
    else:
        grads = backward(dy, *inputs)
        grads = list(grads) if isinstance(grads, (tuple, list)) else [grads]
        pgrads = {}
    if len(grads) < len(inputs):
        grads += [None] * (len(inputs) - len(grads))

    targets = []  # (label, array to perturb, analytic gradient)
    for i, a in enumerate(inputs):
        if a.dtype.kind == "f":
            targets.append((f"inputs[{i}]", a, grads[i]))
    for name, p in params:
        targets.append((f"parameter {name}", p.data, pgrads[name]))

    failures = []
    for label, a, g in targets:
        if g is None:
            failures.append(f"{label}: no analytic gradient returned")
            continue
        if tuple(g.shape) != tuple(a.shape):
            failures.append(f"{label}: analytic gradient of shape {tuple(g.shape)}, expected {tuple(a.shape)}")
            continue
        num = np.empty(a.size)
        for k in range(a.size):
            _flat_perturb(a, k, eps)
            fp = objective()
            _flat_perturb(a, k, -2 * eps)
            fm = objective()
            _flat_perturb(a, k, eps)
            num[k] = (fp - fm) / (2 * eps)
        ana = _host(g).astype(np.float64).reshape(-1)
        bad = np.abs(ana - num) > atol + rtol * np.abs(num)
        if bad.any():
            k = int(np.argmax(np.abs(ana - num)))
            failures.append(f"{label}: {int(bad.sum())} of {a.size} entries differ; worst at flat index {k}: "
                            f"analytic {ana[k]:.8g}, numerical {num[k]:.8g}")
    if failures:
        if raise_exception:
            raise GradcheckError("gradcheck failed:\n  " + "\n  ".join(failures))
        return False
    return True
