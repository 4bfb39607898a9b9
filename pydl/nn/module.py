"""Module and Parameter: the stateful layer API over the stateless kernels of pydl.functional.

A Module computes ``forward(x)`` (also ``module(x)``), caching what its backward needs, and
``backward(grad_out)`` returns d loss / d x and ADDS d loss / d p into every ``Parameter.grad``
(None until the first backward), so gradients accumulate over several backward calls until
``zero_grad()``. There is no autograd tape: a Module's backward belongs to its last forward.
"""
from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy as np

from .. import _backend

__all__ = ["Parameter", "Module", "Sequential", "StateDictKeyError"]


def _to_device(a, device):
    """a (numpy or cupy) on device 'cpu' or 'cuda' (cupy imported lazily)."""
    if a is None:
        return None
    if device == "cpu":
        return a.get() if _backend.is_cuda(a) else a
    import cupy

    return cupy.asarray(a)


def _check_device(device):
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        _backend.cuda()  # raises with the reason when the GPU path is unusable
    return device


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class StateDictKeyError(KeyError):
    """load_state_dict(strict=True) found missing and/or unexpected keys (both listed)."""

    def __init__(self, model_name, missing, unexpected):
        self.missing_keys, self.unexpected_keys = list(missing), list(unexpected)
        lines = [f"Error(s) in loading state_dict for {model_name}:"]
        if missing:
            lines.append(f"  Missing key(s) in state_dict ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  Unexpected key(s) in state_dict ({len(unexpected)}): " + ", ".join(unexpected))
        super().__init__("\n".join(lines))

    def __str__(self):  # KeyError would print the repr of the message, escapes and quotes included
        return self.args[0]


class Parameter:
    """A trainable array: ``data`` and its accumulated gradient ``grad`` (None until backward)."""

    __slots__ = ("data", "grad")

    def __init__(self, data):
        if not (isinstance(data, np.ndarray) or _backend.is_cuda(data)):
            raise TypeError(f"data: expected a numpy.ndarray or cupy.ndarray, got {type(data).__name__}")
        _backend.check_float("data", data)
        self.data = data
        self.grad = None

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def accumulate(self, g):
        """grad += g (g becomes grad when grad is None; callers hand over fresh arrays)."""
        if g is None:
            return
        if self.grad is None:
            self.grad = g
        else:
            self.grad += g

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


class Module:
    """Base class of layers; subclasses define ``forward`` and ``backward``.

    Attributes that are Parameters, Modules or registered buffers (``register_buffer``)
    are found by ``parameters()``, ``children()``, ``state_dict()`` and ``to()``, in the
    order they were assigned (as in PyTorch).
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # -------------------------------------------------------- registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError("call Module.__init__() before assigning attributes")
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            object.__setattr__(self, name, value)  # a buffer stays a buffer when reassigned
            return
        # A Parameter or Module replacing one of its kind keeps its place (as in PyTorch), so
        # swapping a submodule (fusion, fine-tuning a new head) keeps Sequential's order.
        kind = self._parameters if isinstance(value, Parameter) else \
            self._modules if isinstance(value, Module) else None
        for d in (self._parameters, self._buffers, self._modules):
            if d is not kind:
                d.pop(name, None)
        if kind is not None:
            kind[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, array):
        """A non-trainable state array (e.g. running statistics) saved in state_dict."""
        self._buffers[name] = None
        object.__setattr__(self, name, array)

    def _buffer_items(self):
        for name in self._buffers:
            yield name, getattr(self, name)

    def add_module(self, name, module):
        """Register ``module`` (a Module or None) as the child ``name``, as ``setattr`` does."""
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"name: expected a non-empty string without '.', got {name!r}")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"module: expected a Module or None, got {type(module).__name__}")
        if module is None:
            self._modules.pop(name, None)
        setattr(self, name, module)

    register_module = add_module

    # -------------------------------------------------------- calling
    def forward(self, *args):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, grad_out):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -------------------------------------------------------- traversal
    def children(self):
        return iter(self._modules.values())

    def named_children(self):
        return iter(self._modules.items())

    def get_submodule(self, target):
        """The submodule at dotted path ``target`` ('' is self), e.g. ``'layer1.0.conv1'``."""
        m = self
        for part in target.split(".") if target else ():
            if part not in m._modules:
                raise AttributeError(f"{type(m).__name__} has no submodule {part!r} (in {target!r})")
            m = m._modules[part]
        return m

    def apply(self, fn):
        """Call ``fn(m)`` on every submodule (children first) and on self; returns self."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix=""):
        seen = set()
        for mname, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mname}.{name}" if mname else name), p

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix=""):
        for mname, m in self.named_modules(prefix):
            for name, b in m._buffer_items():
                if b is not None:
                    yield (f"{mname}.{name}" if mname else name), b

    def buffers(self):
        for _, b in self.named_buffers():
            yield b

    def zero_grad(self, set_to_none=True):
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.fill(0)

    # -------------------------------------------------------- modes
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    # -------------------------------------------------------- devices and dtypes
    def _apply(self, fn):
        for m in self.modules():
            for p in m._parameters.values():
                p.data = fn(p.data)
                if p.grad is not None:
                    p.grad = fn(p.grad)
            for name, b in list(m._buffer_items()):
                if b is not None:
                    object.__setattr__(m, name, fn(b))
            m._on_apply()
        return self

    def _on_apply(self):
        """Hook for layers that cache arrays derived from their parameters."""

    def to(self, device=None, dtype=None):
        """Move parameters and buffers to 'cpu' or 'cuda' and/or cast floats to dtype (in place).

        ``to('cuda')`` moves arrays with ``cupy.asarray`` (CuPy imported only then);
        ``to(np.float64)`` or ``to(dtype=...)`` casts the floating-point arrays.
        """
        if device is not None and not isinstance(device, str):
            device, dtype = None, device
        if device is not None:
            device = _check_device(device)
        if dtype is not None:
            dtype = np.dtype(dtype)
            if dtype not in _backend.FLOAT_DTYPES:
                raise TypeError(f"dtype: expected float32 or float64, got {dtype}")

        def fn(a):
            if device is not None:
                a = _to_device(a, device)
            if dtype is not None and a.dtype.kind == "f" and a.dtype != dtype:
                a = a.astype(dtype)
            return a

        return self._apply(fn)

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    # -------------------------------------------------------- state
    def _state_targets(self):
        """Ordered key -> (module, name, is_parameter), in PyTorch's state_dict order: each
        module's own parameters, then its buffers, then its children (depth first)."""
        targets = OrderedDict()
        for mname, m in self.named_modules():
            for name in m._parameters:
                targets[f"{mname}.{name}" if mname else name] = (m, name, True)
            for name, b in m._buffer_items():
                if b is not None:
                    targets[f"{mname}.{name}" if mname else name] = (m, name, False)
        return targets

    def state_dict(self):
        """Ordered name -> NumPy array copy of every parameter and buffer (host copies).

        Keys and order are PyTorch's (``layer1.0.bn1.running_mean``...), so a PyTorch
        model with the same structure takes them as ``{k: torch.from_numpy(v)}``.
        """
        out = OrderedDict()
        for key, (m, name, is_param) in self._state_targets().items():
            a = m._parameters[name].data if is_param else getattr(m, name)
            out[key] = np.array(_to_device(a, "cpu"), copy=True)
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into the parameters and buffers (keeping their device and dtype).

        Parameters
        ----------
        state_dict : mapping of key -> array
            NumPy or CuPy arrays, or anything ``numpy.asarray`` takes (CPU torch tensors:
            ``{k: v.numpy() for k, v in torch_model.state_dict().items()}``). Values are
            cast to the dtype of the array they replace.
        strict : bool
            Keys must match exactly: the missing and unexpected keys are listed in one
            ``KeyError``. As PyTorch's batch norm, a missing ``num_batches_tracked``
            (checkpoints from before PyTorch 0.4.1) is accepted and keeps its value.

        Returns
        -------
        (missing_keys, unexpected_keys) : named tuple of two lists, as PyTorch returns.

        Shapes must match (ValueError naming the key); nothing is copied unless every
        key and shape checks out.
        """
        targets = self._state_targets()
        missing = [k for k, (_, name, _) in targets.items()
                   if k not in state_dict and name != "num_batches_tracked"]
        unexpected = [k for k in state_dict if k not in targets]
        if strict and (missing or unexpected):
            raise StateDictKeyError(type(self).__name__, missing, unexpected)
        for key, (m, name, is_param) in targets.items():
            if key in state_dict:
                cur = m._parameters[name].data if is_param else getattr(m, name)
                got = tuple(np.shape(state_dict[key]))
                if got != tuple(cur.shape):
                    raise ValueError(f"{key}: expected shape {tuple(cur.shape)}, got {got} "
                                     "(a model built with other arguments?)")
        for key, (m, name, is_param) in targets.items():
            if key not in state_dict:
                continue
            cur = m._parameters[name].data if is_param else getattr(m, name)
            dev = "cuda" if _backend.is_cuda(cur) else "cpu"
            new = _to_device(np.asarray(_to_device(state_dict[key], "cpu")), dev).astype(cur.dtype, copy=True)
            if is_param:
                m._parameters[name].data = new
            else:
                object.__setattr__(m, name, new)
        for m in self.modules():
            m._on_apply()
        return IncompatibleKeys(missing, unexpected)

    def save(self, path):
        """Write state_dict() to an .npz file."""
        np.savez(path, **self.state_dict())

    def load(self, path, strict=True):
        """Read an .npz file written by save() into this module."""
        with np.load(path) as f:
            return self.load_state_dict({k: f[k] for k in f.files}, strict=strict)

    # -------------------------------------------------------- printing
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n" + "\n".join(lines) + "\n)"


class Sequential(Module):
    """Modules applied in order; backward runs them in reverse."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (OrderedDict, dict)):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, m in items:
            if not isinstance(m, Module):
                raise TypeError(f"modules: expected Module instances, got {type(m).__name__}")
            setattr(self, name, m)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):
            return Sequential(*mods[i])
        return mods[i]

    def __setitem__(self, i, m):
        """Replace the i-th module in place (its key and position stay)."""
        if not isinstance(m, Module):
            raise TypeError(f"module: expected a Module, got {type(m).__name__}")
        setattr(self, list(self._modules)[i], m)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, m):
        setattr(self, str(len(self)), m)
        return self

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, grad_out):
        for m in reversed(self._modules.values()):
            grad_out = m.backward(grad_out)
        return grad_out
