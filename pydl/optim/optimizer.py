"""Optimizers with PyTorch's update rules and defaults (torch.optim, single-tensor form).

Parameters are ``pydl.nn.Parameter`` objects; ``step()`` updates ``p.data`` in place from
``p.grad`` (parameters whose grad is None are skipped) and ``zero_grad()`` clears the grads.
State (momentum buffers, moment estimates) lives on the parameter's device and dtype.
"""
from __future__ import annotations

import math

import numpy as np

from .. import _backend

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW"]


def _xp(a):
    return _backend.array_module(param=a)


class Optimizer:
    """Base class: param_groups (list of dicts with 'params' and the hyperparameters) and
    per-parameter state (a dict keyed by the Parameter object)."""

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = {}
        params = list(params)
        if not params:
            raise ValueError("params: expected a non-empty iterable of Parameters, got an empty one")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for g in groups:
            g = dict(g)
            g["params"] = list(g["params"])
            for p in g["params"]:
                if not hasattr(p, "accumulate"):
                    raise TypeError(f"params: expected pydl.nn.Parameter objects, got {type(p).__name__}")
            for k, v in self.defaults.items():
                g.setdefault(k, v)
            self.param_groups.append(g)

    def zero_grad(self, set_to_none=True):
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad.fill(0)

    def _params(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    yield g, p, self.state.setdefault(p, {})

    def step(self):
        todo = list(self._params())
        for i, (g, p, st) in enumerate(todo):  # all checked before any parameter is written
            _check_param(i, p, st)
        for g, p, st in todo:
            grad = p.grad
            if g.get("maximize", False):
                grad = -grad
            self._update(g, p, grad, st)

    def _update(self, group, p, grad, state):
        raise NotImplementedError

    def __repr__(self):
        hp = ", ".join(f"{k}={v}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({hp})"


def _check_param(i, p, state):
    """p.data, p.grad and the state arrays of parameter i: float arrays of one shape and dtype,
    the updated ones writeable (a read-only or memory-mapped array is never half-updated)."""
    data, grad = p.data, p.grad
    _backend.check_float(f"params[{i}].data", data)
    _backend.check_writeable(f"params[{i}].data", data)
    _backend.check_float(f"params[{i}].grad", grad)
    _backend.check_same_dtype(f"params[{i}].data", data, **{f"params[{i}].grad": grad})
    _backend.check_shape(f"params[{i}].grad", grad, data.shape)
    for k, v in state.items():
        if hasattr(v, "shape") and getattr(v, "ndim", 0):
            name = f"state[params[{i}]][{k!r}]"
            _backend.check_same_dtype(f"params[{i}].data", data, **{name: v})
            _backend.check_shape(name, v, data.shape)
            _backend.check_writeable(name, v)


def _axpby(alpha, x, beta, y):
    """y <- alpha x + beta y in place: one threaded BLAS pass over NumPy arrays (NumPy's
    expressions take several), CuPy's or NumPy's expressions otherwise."""
    if isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.dtype == y.dtype and x.flags.c_contiguous \
            and y.flags.c_contiguous and not np.may_share_memory(x, y):
        _backend.cpu()._axpby(alpha, x, beta, y)
    else:
        if beta != 1:
            y *= beta
        y += alpha * x


def _check_lr(lr):
    return _backend.float_arg("lr", lr, 0.0)


class SGD(Optimizer):
    """g += wd p; buf = momentum buf + (1 - dampening) g (buf = g at the first step);
    g = g + momentum buf (nesterov) or buf; p -= lr g."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 maximize=False):
        _check_lr(lr)
        _backend.float_arg("momentum", momentum, 0.0)
        _backend.float_arg("weight_decay", weight_decay, 0.0)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov: requires momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))

    def _update(self, g, p, grad, st):
        if g["weight_decay"]:
            grad = grad + g["weight_decay"] * p.data
        m = g["momentum"]
        if m:
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = grad.copy()
            else:
                _axpby(1 - g["dampening"], grad, m, buf)
            grad = grad + m * buf if g["nesterov"] else buf
        _axpby(-g["lr"], grad, 1.0, p.data)


class Adagrad(Optimizer):
    """sum += g^2; p -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(sum) + eps)."""

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                 maximize=False):
        _check_lr(lr)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize))

    def _update(self, g, p, grad, st):
        if not st:
            st["step"] = 0
            st["sum"] = _xp(p.data).full_like(p.data, g["initial_accumulator_value"])
        st["step"] += 1
        if g["weight_decay"]:
            grad = grad + g["weight_decay"] * p.data
        clr = g["lr"] / (1 + (st["step"] - 1) * g["lr_decay"])
        st["sum"] += grad * grad
        p.data -= clr * grad / (_xp(p.data).sqrt(st["sum"]) + g["eps"])


class RMSprop(Optimizer):
    """v = alpha v + (1 - alpha) g^2; avg = sqrt(v - gbar^2 if centered else v) + eps;
    with momentum: buf = momentum buf + g / avg, p -= lr buf; else p -= lr g / avg."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 maximize=False):
        _check_lr(lr)
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize))

    def _update(self, g, p, grad, st):
        xp = _xp(p.data)
        if not st:
            st["step"] = 0
            st["square_avg"] = xp.zeros_like(p.data)
            if g["momentum"] > 0:
                st["momentum_buffer"] = xp.zeros_like(p.data)
            if g["centered"]:
                st["grad_avg"] = xp.zeros_like(p.data)
        st["step"] += 1
        if g["weight_decay"]:
            grad = grad + g["weight_decay"] * p.data
        a = g["alpha"]
        sq = st["square_avg"]
        sq *= a
        sq += (1 - a) * grad * grad
        if g["centered"]:
            ga = st["grad_avg"]
            ga *= a
            ga += (1 - a) * grad
            avg = xp.sqrt(sq - ga * ga) + g["eps"]
        else:
            avg = xp.sqrt(sq) + g["eps"]
        if g["momentum"] > 0:
            buf = st["momentum_buffer"]
            buf *= g["momentum"]
            buf += grad / avg
            p.data -= g["lr"] * buf
        else:
            p.data -= g["lr"] * grad / avg


class Adadelta(Optimizer):
    """v = rho v + (1 - rho) g^2; delta = sqrt(u + eps) / sqrt(v + eps) g;
    u = rho u + (1 - rho) delta^2; p -= lr delta."""

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False):
        _check_lr(lr)
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize))

    def _update(self, g, p, grad, st):
        xp = _xp(p.data)
        if not st:
            st["step"] = 0
            st["square_avg"] = xp.zeros_like(p.data)
            st["acc_delta"] = xp.zeros_like(p.data)
        st["step"] += 1
        if g["weight_decay"]:
            grad = grad + g["weight_decay"] * p.data
        rho, eps = g["rho"], g["eps"]
        sq, acc = st["square_avg"], st["acc_delta"]
        sq *= rho
        sq += (1 - rho) * grad * grad
        delta = xp.sqrt(acc + eps) / xp.sqrt(sq + eps) * grad
        acc *= rho
        acc += (1 - rho) * delta * delta
        p.data -= g["lr"] * delta


class Adam(Optimizer):
    """m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2 (amsgrad: vmax = max(vmax, v));
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). Weight decay adds wd p to g
    (Adam) or multiplies p by (1 - lr wd) first (AdamW, decoupled)."""

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 maximize=False):
        _check_lr(lr)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas: expected two floats in [0, 1), got {betas!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize))

    def _update(self, g, p, grad, st):
        xp = _xp(p.data)
        if not st:
            st["step"] = 0
            st["exp_avg"] = xp.zeros_like(p.data)
            st["exp_avg_sq"] = xp.zeros_like(p.data)
            if g["amsgrad"]:
                st["max_exp_avg_sq"] = xp.zeros_like(p.data)
        st["step"] += 1
        t = st["step"]
        lr, wd = g["lr"], g["weight_decay"]
        if wd:
            if self._decoupled:
                p.data *= 1 - lr * wd
            else:
                grad = grad + wd * p.data
        b1, b2 = g["betas"]
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m *= b1
        m += (1 - b1) * grad
        v *= b2
        v += (1 - b2) * grad * grad
        if g["amsgrad"]:
            vmax = st["max_exp_avg_sq"]
            xp.maximum(vmax, v, out=vmax)
            v = vmax
        bc1 = 1 - b1 ** t
        bc2 = 1 - b2 ** t
        denom = xp.sqrt(v) / math.sqrt(bc2) + g["eps"]
        p.data -= (lr / bc1) * m / denom


class AdamW(Adam):
    """Adam with decoupled weight decay (default 1e-2): p *= 1 - lr wd before the Adam step."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize)
