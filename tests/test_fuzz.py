"""Property-based fuzzing (hypothesis) of every public array function of pydl.functional
and pydl.ops, written as one TABLE of specs (``SPECS``, at the end of this file).

Each spec names a function, a strategy of VALID calls, its float64 oracle in
pydl.reference, a schema of its arguments (from which generic INVALID mutations are
derived: wrong dtype, wrong rank, list/scalar/None instead of an array, non-positive or
non-integer sizes, NaN/inf floats, unknown strings...) and a few op-specific invalid
calls (groups not dividing channels, impossible output sizes, out-of-range targets...).
Three tests run over the table:

- ``test_valid``: random valid calls (awkward shapes, batch 0, both dtypes, and inputs
  as C-contiguous, Fortran, strided, negative-stride, zero-strided (np.broadcast_to),
  read-only or unaligned arrays) equal the reference (``assert_close``; exact equality
  for indices), and leave every input unmodified (except documented in-place buffers,
  which must hold the reference's update).
- ``test_invalid``: a random valid call with one argument made invalid raises
  TypeError or ValueError (the one expected) with a message naming that argument,
  never crashes, never returns, never modifies an input.
- ``test_table_covers_public_api``: every name in ``pydl.functional.__all__`` and
  ``pydl.ops.__all__`` has a spec (ops still being written are listed in ``PENDING``;
  layer classes such as RoIPool, which wrap the functions, are exempt).

Bugs found in modules whose owners fix them separately are strict-xfail tests at the end of
the file (their mutations are left out of the table through ``Without``).

To add an op: write its strategy and schema and append one ``Spec`` to ``SPECS``.

Budgets (hypothesis profiles, registered here and applied to these tests only):

- ``ci`` (default): ``CI_EXAMPLES`` examples per test, derandomized (the same examples
  on every run, so CI is reproducible), no deadline, no example database; the whole
  file runs in about a minute on 2 cores.
- ``release``: ``PYDL_FUZZ=release pytest tests/test_fuzz.py`` runs 20x the examples,
  randomized (new examples every run; a failure prints the seed/blob to reproduce).

``pytest tests/test_fuzz.py --hypothesis-show-statistics`` shows how many examples ran.
"""
from __future__ import annotations

import math
import os
import re
import types
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import pydl.functional as F
import pydl.ops as O
import pydl.reference as R
from pydl import _geometry
from conftest import TOL, to_numpy

# ------------------------------------------------------------------------------ budgets

CI_EXAMPLES = 80
settings.register_profile(
    "ci", max_examples=CI_EXAMPLES, deadline=None, derandomize=True, database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("release", parent=settings.get_profile("ci"),
                          max_examples=20 * CI_EXAMPLES, derandomize=False)
PROFILE = os.environ.get("PYDL_FUZZ", "ci")
if PROFILE not in ("ci", "release"):
    raise ValueError(f"PYDL_FUZZ: expected 'ci' or 'release', got {PROFILE!r}")
FUZZ = settings.get_profile(PROFILE)

# Modules whose functions get their specs when they land (none now).
PENDING: set = set()
# Public names that take no arrays (configuration).
NOT_ARRAY_FUNCTIONS = {"set_conv_workspace_limit", "get_conv_workspace_limit"}

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Invalid cases only the CPU detects (documented): the GPU max-pool gather ignores bad indices.
CPU_ONLY = {"indices out of range"}


# ------------------------------------------------------------------------------ calls

@dataclass
class Call:
    """Keyword arguments of one call; ``inplace`` names arrays the op updates in place."""
    kw: dict
    inplace: tuple = ()
    dtype: np.dtype = np.dtype(np.float64)


def seeds():
    return st.integers(0, 2**32 - 1).map(np.random.default_rng)


def rnd(rng, shape, dtype, low=-1.0, high=1.0):
    return rng.uniform(low, high, size=shape).astype(dtype)


# Memory layouts every valid input is drawn in. 'bcast' changes the values (a zero-strided
# broadcast of one slice), so it is applied before the oracle sees the arrays.
LAYOUTS = ("c", "c", "fortran", "strided", "negative", "bcast", "readonly", "unaligned")
INPLACE_LAYOUTS = ("c", "strided", "negative", "unaligned")


def layout(a, kind):
    a = np.asarray(a)
    if a.ndim == 0 or a.size == 0 or kind == "c":
        return a
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "strided":
        big = np.full(a.shape[:-1] + (2 * a.shape[-1],), 7, dtype=a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if kind == "negative":
        return a[::-1].copy()[::-1]
    if kind == "bcast":
        ax = int(np.argmax(a.shape))
        return np.broadcast_to(np.take(a, [0], axis=ax), a.shape)
    if kind == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    if kind == "unaligned":
        buf = np.empty(a.nbytes + 1, dtype=np.uint8)[1:]
        b = buf.view(a.dtype).reshape(a.shape)
        b[...] = a
        return b
    raise AssertionError(kind)


@st.composite
def laid_out(draw, kw, inplace=(), layouts=LAYOUTS):
    """kw with every array argument in a random layout (in-place ones stay writeable)."""
    out = {}
    for k, v in kw.items():
        if isinstance(v, np.ndarray):
            out[k] = layout(v, draw(st.sampled_from(INPLACE_LAYOUTS if k in inplace else layouts)))
        else:
            out[k] = v
    return out


def to_xp(v, xp):
    """An argument on the backend xp, keeping the layout (views are rebuilt on the GPU)."""
    if v is np:  # an array-module argument (anchor_boxes' xp) names the backend under test
        return xp
    if xp is np:
        return v
    if isinstance(v, list) and v and all(isinstance(a, np.ndarray) for a in v):  # roi boxes per image
        return [to_xp(a, xp) for a in v]
    if isinstance(v, tuple) and hasattr(v, "_fields"):  # CrossEntropySaved
        return type(v)(*(to_xp(a, xp) for a in v))
    if not isinstance(v, np.ndarray) or v.dtype.kind == "O" or not v.dtype.isnative:
        return v  # CuPy has no such arrays: pydl sees a NumPy array among CuPy ones (TypeError)
    if v.strides and 0 in v.strides and v.size > 1:
        ax = v.strides.index(0)
        return xp.broadcast_to(xp.asarray(np.take(v, [0], axis=ax)), v.shape)
    if v.ndim and v.strides[0] < 0:
        return xp.asarray(v[::-1].copy())[::-1]
    if not v.flags.c_contiguous and v.flags.f_contiguous:
        return xp.asfortranarray(xp.asarray(v))
    return xp.asarray(v)


def _is_array(v):
    return hasattr(v, "dtype") and hasattr(v, "shape") and not isinstance(v, (type, types.ModuleType))


def _array_list(v):
    """A list of arrays (roi boxes per image): each entry is snapshotted and compared."""
    return isinstance(v, list) and len(v) > 0 and all(_is_array(a) for a in v)


def snapshot(kw):
    return {k: ([np.array(to_numpy(a), copy=True) for a in v] if _array_list(v) else
                np.array(to_numpy(v), copy=True) if _is_array(v) else
                (np.array(v, dtype=object, copy=True) if isinstance(v, list) else None))
            for k, v in kw.items()}


def assert_unmodified(kw, snap, skip=()):
    for k, v in kw.items():
        if k in skip or snap[k] is None:
            continue
        if isinstance(snap[k], list):
            assert len(v) == len(snap[k]) and all(
                np.array_equal(to_numpy(a), b, equal_nan=b.dtype.kind in "fc") for a, b in zip(v, snap[k])), \
                f"input {k} was modified"
            continue
        now = np.array(to_numpy(v), copy=True) if not isinstance(v, list) else np.array(v, dtype=object)
        if now.dtype.kind in "fc":
            ok = np.array_equal(now, snap[k], equal_nan=True)
        elif now.dtype.kind == "O":  # lists and object arrays: NaN elements equal themselves
            ok = now.shape == snap[k].shape and all(
                a is b or a == b or (a != a and b != b) for a, b in zip(now.flat, snap[k].flat))
        else:
            ok = np.array_equal(now, snap[k])
        assert ok, f"input {k} was modified"


# ------------------------------------------------------------------------------ comparison

def check_out(got, want, dtype, factor=1.0, what="output", floor=0.0):
    """got (pydl) against want (the oracle): same shape; indices exactly; floats in the
    output dtype by the tolerance table, with NaN/inf in the same places. The error is
    relative to max|want|, or to ``floor`` (the magnitude of the terms that cancel, e.g.
    |dy| * |y| in softmax_backward) when that is larger."""
    if want is None:
        assert got is None, f"{what}: expected None, got {type(got).__name__}"
        return
    assert got is not None, f"{what}: expected an array, got None"
    g = to_numpy(got)
    assert isinstance(g, np.ndarray), f"{what}: expected an ndarray, got {type(g).__name__}"
    w = np.asarray(want)
    assert g.shape == w.shape, f"{what}: shape {g.shape} != expected {w.shape}"
    if w.dtype.kind in "iu":
        assert g.dtype == np.int64, f"{what}: dtype {g.dtype}, expected int64"
        assert np.array_equal(g, w), f"{what}: indices differ:\n{g}\n!=\n{w}"
        return
    assert g.dtype == dtype, f"{what}: dtype {g.dtype}, expected {dtype}"
    g64, w64 = g.astype(np.float64), w.astype(np.float64)
    nan_w = np.isnan(w64)
    assert np.array_equal(np.isnan(g64), nan_w), f"{what}: NaN in other places than the oracle's"
    inf_w = np.isinf(w64)
    assert np.array_equal(g64[inf_w], w64[inf_w]) and not np.isinf(g64[~inf_w]).any(), \
        f"{what}: infinities differ"
    fin = ~(nan_w | inf_w)
    if not fin.any():
        return
    scale = max(np.max(np.abs(w64[fin])), floor)
    diff = np.max(np.abs(g64[fin] - w64[fin]))
    err = diff / scale if scale > 0 else diff
    tol = TOL[np.dtype(dtype)] * factor
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


# ------------------------------------------------------------------------------ argument kinds
# Each kind lists the invalid values of one argument: (label, value or f(value), exception).

BAD_DTYPES = ("int32", "int64", "float16", "complex64", "object", "bool", ">f8")


def _retype(v, dt):
    if dt == "object":
        return v.astype(object)
    with np.errstate(all="ignore"):  # NaN boxes cast to int
        return v.astype(np.dtype(dt))


@dataclass
class Arr:
    """A float array argument (or int64 when ``index``) of rank in ``ndim`` (None: any)."""
    ndim: tuple | None = None
    optional: bool = False
    index: bool = False
    bad_dtypes: tuple = BAD_DTYPES

    def mutations(self, v, call):
        out = []
        if v is None:  # an optional array left out: anything but an array or None is wrong
            return [("list", [1.0, 2.0], TypeError), ("scalar", 1.0, TypeError), ("string", "w", TypeError)]
        dts = [d for d in self.bad_dtypes if not (self.index and d == "int64")]
        if self.index:
            dts = [d for d in dts if d not in ("int64",)] + ["float32" if call.dtype == np.float64 else "float64"]
        elif any(isinstance(a, np.ndarray) and a is not v and a.dtype.kind == "f" for a in call.kw.values()):
            # the other float dtype: a mix with the other float arrays of the call
            dts = dts + ["float32" if v.dtype == np.float64 else "float64"]
        for d in dts:
            out.append((f"dtype {d}", _retype(np.asarray(v), d), TypeError))
        out.append(("list", np.asarray(v).tolist(), TypeError))
        out.append(("scalar", 1.0, TypeError))
        out.append(("string", "array", TypeError))
        if not self.optional:
            out.append(("None", None, (TypeError, ValueError)))
        if self.ndim is not None:
            hi = max(self.ndim) + 1
            out.append((f"rank {hi}", np.asarray(v)[..., None] if v.ndim == hi - 1 else
                        np.asarray(v).reshape(v.shape + (1,) * (hi - v.ndim)), ValueError))
            lo = min(self.ndim) - 1
            if lo >= 0 and lo not in self.ndim:
                a = np.asarray(v)
                out.append((f"rank {lo}", a.reshape(a.shape[:lo - 1] + (math.prod(a.shape[lo - 1:]),))
                            if lo >= 1 else np.ones((), a.dtype), ValueError))
        return out


@dataclass
class Int:
    """An int >= minimum; ``pair``: also a pair of them; ``none_ok``: None is valid."""
    minimum: int | None = 1
    pair: bool = False
    none_ok: bool = False
    str_ok: bool = False  # some strings are valid (conv2d's padding): others are ValueError

    def mutations(self, v, call):
        out = [("float", 1.5, TypeError), ("string", "2", ValueError if self.str_ok else TypeError),
               ("bool", True, TypeError),
               ("huge", 2**63, ValueError), ("huge negative", -2**63 - 1, ValueError)]
        if not self.none_ok:
            out.append(("None", None, TypeError))
        if self.minimum is not None:
            out.append(("below minimum", self.minimum - 1, ValueError))
            out.append(("negative", min(-1, self.minimum - 1), ValueError))
        if self.pair:
            out += [("triple", (1, 1, 1), ValueError), ("single", (1,), ValueError),
                    ("pair with float", (1, 2.0), TypeError)]
            if self.minimum is not None:
                out.append(("pair below minimum", (self.minimum, self.minimum - 1), ValueError))
        return out


@dataclass
class Float:
    minimum: float | None = None
    maximum: float | None = None

    def mutations(self, v, call):
        out = [("nan", float("nan"), ValueError), ("inf", float("inf"), ValueError),
               ("-inf", -float("inf"), ValueError), ("string", "0.5", TypeError),
               ("None", None, TypeError), ("complex", 0.5j, TypeError), ("array", np.ones(2), TypeError)]
        if self.minimum is not None:
            out.append(("below minimum", self.minimum - 0.5, ValueError))
        if self.maximum is not None:
            out.append(("above maximum", self.maximum + 0.5, ValueError))
        return out


@dataclass
class Choice:
    """One of a few strings."""
    bad: tuple = ("MEAN", "", "avg")

    def mutations(self, v, call):
        return [(f"string {b!r}", b, ValueError) for b in self.bad] + \
               [("int", 1, (TypeError, ValueError)), ("None", None, (TypeError, ValueError))]


@dataclass
class Bool:
    def mutations(self, v, call):
        return [("int", 1, TypeError), ("string", "True", TypeError), ("None", None, TypeError)]


@dataclass
class Mask:
    def mutations(self, v, call):
        return [("two", (True, True), ValueError), ("four", (True,) * 4, ValueError),
                ("int", 5, (TypeError, ValueError))]


@dataclass
class Shape:
    """A 3-D or 4-D shape tuple (pooling backward's x_shape)."""

    def mutations(self, v, call):
        v = tuple(v.shape) if hasattr(v, "shape") else tuple(v)
        return [("negative", v[:-1] + (-1,), ValueError), ("float", v[:-1] + (float(v[-1]),), TypeError),
                ("2-D", v[-2:], ValueError), ("5-D", (1,) + (v if len(v) == 4 else (1,) + v), ValueError),
                ("zero width", v[:-1] + (0,), ValueError), ("int", 3, TypeError),
                ("None", None, TypeError), ("string", "1234", TypeError)]


# ------------------------------------------------------------------------------ the spec

@dataclass
class Spec:
    name: str
    fn: Callable
    valid: Callable  # () -> strategy of Call
    ref: Callable    # (**numpy kwargs) -> what fn returns (float64 arrays)
    schema: dict     # argument name -> kind
    invalid: list = field(default_factory=list)  # (label, f(draw, call) -> (kw, exc, names))
    out: Callable = staticmethod(lambda r: r)      # pydl result -> what ref returns
    factor: float = 1.0
    # kw -> the magnitude of the terms whose difference is the result, where results can
    # cancel to ~0 (a float32 result is then only accurate relative to that magnitude)
    floor: Callable = staticmethod(lambda kw: 0.0)

    def __repr__(self):
        return self.name


TOL_FLOOR = 1.0


def amax(*arrays):
    """Product of max|a| over the given arrays (None and empty count as 1)."""
    out = 1.0
    for a in arrays:
        if a is not None and np.size(a):
            out *= float(np.max(np.abs(np.asarray(a, dtype=np.float64))))
    return out


def outputs(r):
    return r if isinstance(r, tuple) else (r,)


# ------------------------------------------------------------------------------ geometry helpers

def pad_spec(draw, stride):
    """padding of conv2d: an int, a pair, 'valid', or 'same' (stride 1 only)."""
    kinds = ["int", "pair", "valid"] + (["same"] if stride == (1, 1) else [])
    k = draw(st.sampled_from(kinds))
    if k == "int":
        return draw(st.integers(0, 3))
    if k == "pair":
        return (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    return k


def pads_of(padding, kh, kw, dil):
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        return _geometry.same_padding(kh, dil[0]), _geometry.same_padding(kw, dil[1])
    p = (padding, padding) if isinstance(padding, int) else padding
    return (p[0], p[0]), (p[1], p[1])


def maybe_pair(draw, lo, hi):
    a = draw(st.integers(lo, hi))
    return draw(st.sampled_from([a, (a, draw(st.integers(lo, hi))), [a, a]]))


def as_pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# ------------------------------------------------------------------------------ conv

@st.composite
def conv_call(draw, backward=False, fused=False):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    g = draw(st.integers(1, 3))
    C, K = g * draw(st.integers(1, 3)), g * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride, dilation = maybe_pair(draw, 1, 3), maybe_pair(draw, 1, 2)
    s, d = as_pair(stride), as_pair(dilation)
    padding = pad_spec(draw, s)
    (pt, pb), (pl, pr) = pads_of(padding, kh, kw, d)
    H = max(1, d[0] * (kh - 1) + 1 - pt - pb) + draw(st.integers(0, 4))
    W = max(1, d[1] * (kw - 1) + 1 - pl - pr) + draw(st.integers(0, 4))
    N = draw(st.integers(0, 3))
    kw_ = dict(x=rnd(rng, (N, C, H, W), dt), weight=rnd(rng, (K, C // g, kh, kw), dt),
               stride=stride, padding=padding, dilation=dilation, groups=g)
    if backward:
        ho = _geometry.conv_out_size(H + pb - pt, kh, s[0], pt, d[0])
        wo = _geometry.conv_out_size(W + pr - pl, kw, s[1], pl, d[1])
        kw_ = dict(grad_out=rnd(rng, (N, K, ho, wo), dt), **kw_,
                   output_mask=tuple(draw(st.lists(st.booleans(), min_size=3, max_size=3))))
    elif draw(st.booleans()):
        kw_["bias"] = rnd(rng, (K,), dt)
    if fused:  # conv2d's inference epilogue: act(conv + bias + residual)
        kw_["activation"] = draw(st.sampled_from([None, None, "relu", "relu6", "leaky_relu", "silu", "hardswish"]))
        if kw_["activation"] == "leaky_relu" and draw(st.booleans()):
            kw_["negative_slope"] = draw(st.sampled_from([0.2, -0.5, 0.0, 3]))
        if draw(st.booleans()):
            ho = _geometry.conv_out_size(H + pb - pt, kh, s[0], pt, d[0])
            wo = _geometry.conv_out_size(W + pr - pl, kw, s[1], pl, d[1])
            kw_["residual"] = rnd(rng, (N, K, ho, wo), dt)
    return Call(draw(laid_out(kw_)), dtype=dt)


_FUSED_ACT = {None: lambda v: v, "relu": R.relu, "relu6": R.relu6, "silu": R.silu, "hardswish": R.hardswish}


def conv_fused_ref(activation=None, residual=None, negative_slope=0.01, **kw):
    y = R.conv2d(**kw)
    if residual is not None:
        y = y + np.asarray(residual, np.float64)
    if activation == "leaky_relu":
        return R.leaky_relu(y, negative_slope)
    return _FUSED_ACT[activation](y)


@dataclass
class Activation:
    """conv2d's activation: None or one of a few names."""

    def mutations(self, v, call):
        return [("unknown", "gelu", ValueError), ("upper case", "RELU", ValueError), ("empty", "", ValueError),
                ("int", 1, ValueError), ("list", ["relu"], ValueError)]


@st.composite
def conv_t_call(draw, backward=False):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    g = draw(st.integers(1, 3))
    C, cog = g * draw(st.integers(1, 2)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride, dilation, padding = maybe_pair(draw, 1, 3), maybe_pair(draw, 1, 2), maybe_pair(draw, 0, 2)
    s, d, p = as_pair(stride), as_pair(dilation), as_pair(padding)
    op = tuple(draw(st.integers(0, max(s[a], d[a]) - 1)) for a in range(2))
    output_padding = draw(st.sampled_from([op, list(op)])) if op[0] != op[1] else op[0]
    hw = []
    for a, k in enumerate((kh, kw)):
        need = 2 * p[a] - d[a] * (k - 1) - op[a]  # (h - 1) * s >= need
        hw.append(max(1, 1 + -(-need // s[a])) + draw(st.integers(0, 3)))
    N = draw(st.integers(0, 3))
    kw_ = dict(x=rnd(rng, (N, C) + tuple(hw), dt), weight=rnd(rng, (C, cog, kh, kw), dt),
               stride=stride, padding=padding, output_padding=output_padding, groups=g, dilation=dilation)
    if backward:
        out = [_geometry.conv_transpose_out_size(hw[a], (kh, kw)[a], s[a], p[a], d[a], op[a]) for a in range(2)]
        kw_ = dict(grad_out=rnd(rng, (N, cog * g) + tuple(out), dt), **kw_,
                   output_mask=tuple(draw(st.lists(st.booleans(), min_size=3, max_size=3))))
    elif draw(st.booleans()):
        kw_["bias"] = rnd(rng, (cog * g,), dt)
    return Call(draw(laid_out(kw_)), dtype=dt)


def bad_groups(draw, call):
    kw = dict(call.kw)
    C = kw["x"].shape[1]
    kw["groups"] = draw(st.sampled_from([g for g in range(2, 8) if C % g]))
    return kw, ValueError, ("groups", "x", "weight")


def bad_weight_channels(draw, call):
    kw = dict(call.kw)
    w = np.asarray(kw["weight"])
    kw["weight"] = np.concatenate([w, w[:, :1]], axis=1)
    return kw, ValueError, ("weight",)


def bad_weight_in(draw, call):  # conv_transpose2d: weight's first axis != C_in
    kw = dict(call.kw)
    w = np.asarray(kw["weight"])
    kw["weight"] = np.concatenate([w, w[:1]], axis=0)
    return kw, ValueError, ("weight",)


def empty_kernel(draw, call):
    kw = dict(call.kw)
    w = np.asarray(kw["weight"])
    kw["weight"] = w[:, :, :0] if draw(st.booleans()) else w[..., :0]
    return kw, ValueError, ("weight",)


def bad_residual(draw, call):
    kw = dict(call.kw)
    x, w = np.asarray(kw["x"]), np.asarray(kw["weight"])
    kw["residual"] = np.zeros((x.shape[0], w.shape[0] + 1, 1, 1), call.dtype)
    return kw, ValueError, ("residual",)


def bad_bias(draw, call):
    kw = dict(call.kw)
    k = kw["weight"].shape[0] if "output_padding" not in kw else kw["weight"].shape[1] * kw["groups"]
    kw["bias"] = np.zeros(k + draw(st.sampled_from([1, 2])), call.dtype)
    return kw, ValueError, ("bias",)


def conv_too_small(draw, call):
    kw = dict(call.kw)
    x = np.asarray(kw["x"])
    kw["x"] = x[:, :, :1, :1]
    kw["weight"] = np.zeros(kw["weight"].shape[:2] + (4, 5), call.dtype)
    kw["padding"], kw["dilation"] = 0, 1
    if "bias" in kw and kw["bias"] is not None:
        kw["bias"] = kw["bias"]
    return kw, ValueError, ("x", "padding", "weight")


def conv_t_too_small(draw, call):
    kw = dict(call.kw)
    x = np.asarray(kw["x"])
    kw["x"] = x[:, :, :1, :1]
    kw["weight"] = np.zeros(kw["weight"].shape[:2] + (1, 1), call.dtype)
    kw["padding"], kw["output_padding"] = draw(st.integers(1, 50)), 0
    return kw, ValueError, ("x", "padding")


def bad_output_padding(draw, call):
    kw = dict(call.kw)
    kw["output_padding"] = max(max(as_pair(kw["stride"])), max(as_pair(kw["dilation"])))
    return kw, ValueError, ("output_padding",)


def bad_conv_padding_str(draw, call):
    kw = dict(call.kw)
    kw["padding"] = draw(st.sampled_from(["full", "SAME", "", "same" if as_pair(kw["stride"]) != (1, 1) else "x"]))
    return kw, ValueError, ("padding",)


def same_strided(draw, call):
    kw = dict(call.kw)
    kw["padding"], kw["stride"] = "same", draw(st.sampled_from([2, (1, 2), (3, 1)]))
    return kw, ValueError, ("padding",)


def bad_grad_out_shape(draw, call):
    kw = dict(call.kw)
    g = np.asarray(kw["grad_out"])
    if g.ndim == 0:
        kw["grad_out"] = g[None]
        return kw, ValueError, ("grad_out",)
    ax = draw(st.integers(0, g.ndim - 1))
    kw["grad_out"] = np.concatenate([g, np.take(g, [0] * 1, axis=ax)] if g.shape[ax] else
                                    [g, np.zeros(g.shape[:ax] + (1,) + g.shape[ax + 1:], g.dtype)], axis=ax)
    return kw, ValueError, ("grad_out",)


CONV_SCHEMA = dict(x=Arr((4,)), weight=Arr((4,)), bias=Arr((1,), optional=True), stride=Int(1, pair=True),
                   padding=Int(0, pair=True, str_ok=True), dilation=Int(1, pair=True), groups=Int(1))
CONV_BWD_SCHEMA = dict(grad_out=Arr((4,)), x=Arr((4,)), weight=Arr((4,)), stride=Int(1, pair=True),
                       padding=Int(0, pair=True, str_ok=True), dilation=Int(1, pair=True), groups=Int(1),
                       output_mask=Mask())
CONV_T_SCHEMA = dict(CONV_SCHEMA, padding=Int(0, pair=True), output_padding=Int(0, pair=True))
CONV_T_BWD_SCHEMA = dict(CONV_BWD_SCHEMA, padding=Int(0, pair=True), output_padding=Int(0, pair=True))

def conv_empty_plane(draw, call):  # PyTorch's rule; the CPU transposed conv died of SIGFPE on it
    kw = dict(call.kw)
    x = np.asarray(kw["x"])
    assume(x.shape[0] > 0)
    kw["x"] = x[..., :0] if draw(st.booleans()) else x[..., :0, :]
    # a geometry whose output size is >= 1 even so
    w = np.asarray(kw["weight"])
    transposed = "output_padding" in kw
    kw["weight"] = np.ones(w.shape[:2] + ((3, 3) if transposed else (1, 1)), w.dtype)
    kw.update(stride=1, dilation=1, padding=0 if transposed else 1)
    if transposed:
        kw["output_padding"] = 0
    return kw, ValueError, ("x",)


def huge_groups_no_channels(draw, call):  # 0 channels divide by anything: groups=2**62 hung the kernels
    kw = dict(call.kw)
    x, w = np.asarray(kw["x"]), np.asarray(kw["weight"])
    kw["x"] = x[:, :0]
    kw["weight"] = w[:0, :1] if "output_padding" in kw else w[:0, :0]
    kw["groups"] = draw(st.sampled_from([2, 2**40, 2**62]))
    if "bias" in kw:
        kw["bias"] = None
    return kw, ValueError, ("groups",)


CONV_INVALID = [("groups > channels", huge_groups_no_channels), ("empty plane", conv_empty_plane), ("groups not dividing channels", bad_groups),
                ("weight channels", bad_weight_channels), ("empty kernel", empty_kernel),
                ("output size < 1", conv_too_small), ("padding string", bad_conv_padding_str),
                ("same with stride", same_strided)]
CONV_T_INVALID = [("groups > channels", huge_groups_no_channels), ("empty plane", conv_empty_plane), ("groups not dividing channels", bad_groups), ("weight in channels", bad_weight_in),
                  ("empty kernel", empty_kernel), ("output size < 1", conv_t_too_small),
                  ("output_padding too large", bad_output_padding)]


# ------------------------------------------------------------------------------ pooling

@st.composite
def window(draw, hw_min=1, dilation=True):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kernel_size = draw(st.sampled_from([(kh, kw), [kh, kw]])) if kh != kw else kh
    stride = draw(st.sampled_from([None, "int", "pair"]))
    if stride == "int":
        stride = draw(st.integers(1, 3))
    elif stride == "pair":
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    dil = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilation else (1, 1)
    hw = tuple(max(1, dil[a] * ((kh, kw)[a] - 1) + 1 - 2 * padding[a]) + draw(st.integers(0, 4))
               for a in range(2))
    kw_ = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=draw(st.booleans()))
    if dilation:
        kw_["dilation"] = dil
    return hw, kw_


def pool_out(hw, kw_):
    k = as_pair(kw_["kernel_size"])
    s = k if kw_["stride"] is None else as_pair(kw_["stride"])
    p, d = as_pair(kw_["padding"]), as_pair(kw_.get("dilation", 1))
    return tuple(_geometry.pool_out_size(hw[a], k[a], s[a], p[a], d[a], kw_["ceil_mode"]) for a in range(2))


def lead(draw):
    """(N, C) or (C,) leading dims: pooling takes 4-D or 3-D inputs."""
    C = draw(st.integers(1, 3))
    return draw(st.sampled_from([(draw(st.integers(0, 3)), C), (C,)]))


@st.composite
def max_pool_call(draw):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    hw, kw_ = draw(window())
    kw_ = dict(x=rnd(rng, lead(draw) + hw, dt), **kw_, return_indices=draw(st.booleans()))
    return Call(draw(laid_out(kw_)), dtype=dt)


@st.composite
def max_pool_bwd_call(draw):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    hw, kw_ = draw(window())
    x = rnd(rng, lead(draw) + hw, dt)
    y, ind = R.max_pool2d(x, **kw_, return_indices=True)
    xs = draw(st.sampled_from([tuple(x.shape), list(x.shape)]))
    kw_ = dict(grad_out=rnd(rng, y.shape, dt), x_shape=xs, **kw_)
    kw_ = draw(laid_out(kw_))
    # A zero-strided view repeats one index in every window: not what a forward returns (the
    # GPU gather only honours an index inside its own window), so indices skip that layout.
    kw_["indices"] = layout(ind, draw(st.sampled_from([k for k in LAYOUTS if k != "bcast"])))
    return Call(kw_, dtype=dt)


@st.composite
def avg_pool_call(draw, backward=False):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    hw, kw_ = draw(window(dilation=False))
    kw_.update(count_include_pad=draw(st.booleans()),
               divisor_override=draw(st.sampled_from([None, None, 1, 3])))
    ld = lead(draw)
    if backward:
        kw_ = dict(grad_out=rnd(rng, ld + pool_out(hw, kw_), dt), x_shape=ld + hw, **kw_)
    else:
        kw_ = dict(x=rnd(rng, ld + hw, dt), **kw_)
    return Call(draw(laid_out(kw_)), dtype=dt)


@st.composite
def adaptive_call(draw, backward=False, glob=False):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    hw = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    ld = lead(draw)
    if glob:
        out, kw_ = (1, 1), {}
    else:
        a, b = draw(st.sampled_from([None, 1, 2, 3, 5, 8])), draw(st.sampled_from([None, 1, 2, 4]))
        size = draw(st.sampled_from([(a, b), [a, b]] + ([a] if a is not None else [])))
        kw_ = dict(output_size=size)
        out = tuple(hw[i] if v is None else v for i, v in enumerate(
            (size, size) if isinstance(size, int) else size))
    if backward:
        kw_ = dict(grad_out=rnd(rng, ld + out, dt), x_shape=ld + hw)
    else:
        kw_ = dict(x=rnd(rng, ld + hw, dt), **kw_)
    return Call(draw(laid_out(kw_)), dtype=dt)


def pool_padding_too_big(draw, call):
    kw = dict(call.kw)
    k = as_pair(kw["kernel_size"])
    kw["padding"] = (k[0] // 2 + 1, 0)
    return kw, ValueError, ("padding",)


def pool_kernel_too_big(draw, call):
    kw = dict(call.kw)
    shape = kw["x"].shape if "x" in kw else tuple(kw["x_shape"])
    # (with ceil_mode and stride >= 2 a kernel one larger than the input still gives one window)
    kw["kernel_size"], kw["padding"], kw["ceil_mode"] = (shape[-2] + 1, 1), 0, False
    if "dilation" in kw:
        kw["dilation"] = 1
    return kw, ValueError, ("kernel_size",)


def pool_empty_plane(draw, call):
    kw = dict(call.kw)
    x = np.asarray(kw["x"])
    kw["x"] = x[..., :0] if draw(st.booleans()) else x[..., :0, :]
    return kw, ValueError, ("x",)


def pool_bad_x_shape_channels(draw, call):
    kw = dict(call.kw)
    xs = tuple(kw["x_shape"])
    kw["x_shape"] = xs[:-3] + (xs[-3] + 1,) + xs[-2:]
    return kw, ValueError, ("grad_out", "x_shape")


def pool_bad_indices(draw, call):
    kw = dict(call.kw)
    ind = np.array(kw["indices"], copy=True)
    xs = tuple(kw["x_shape"])
    assume(ind.size > 0)
    pos = draw(st.integers(0, ind.size - 1))
    ind.flat[pos] = draw(st.sampled_from([xs[-1] * xs[-2], xs[-1] * xs[-2] + 5, -2, -2**40, 2**62]))
    kw["indices"] = ind
    return kw, ValueError, ("indices",)


def pool_indices_shape(draw, call):
    kw = dict(call.kw)
    ind = np.asarray(kw["indices"])
    kw["indices"] = np.concatenate([ind, np.zeros(ind.shape[:-1] + (1,), np.int64)], axis=-1)
    return kw, ValueError, ("indices",)


def adaptive_zero_out(draw, call):
    kw = dict(call.kw)
    g = np.asarray(kw["grad_out"])
    kw["grad_out"] = g[..., :0] if draw(st.booleans()) else g[..., :0, :]
    return kw, ValueError, ("grad_out",)


def adaptive_bad_size(draw, call):
    kw = dict(call.kw)
    kw["output_size"] = draw(st.sampled_from([0, -1, (0, 2), (2, -3), (2,), (1, 2, 3), (None,), 1.5, "2"]))
    exc = TypeError if kw["output_size"] in (1.5, "2") else ValueError
    return kw, exc, ("output_size",)


WINDOW_SCHEMA = dict(kernel_size=Int(1, pair=True), stride=Int(1, pair=True, none_ok=True),
                     padding=Int(0, pair=True))
MAX_POOL_SCHEMA = dict(x=Arr((3, 4)), **WINDOW_SCHEMA, dilation=Int(1, pair=True))
MAX_POOL_BWD_SCHEMA = dict(grad_out=Arr((3, 4)), indices=Arr(index=True), x_shape=Shape(), **WINDOW_SCHEMA,
                           dilation=Int(1, pair=True))
AVG_POOL_SCHEMA = dict(x=Arr((3, 4)), **WINDOW_SCHEMA, divisor_override=Int(1, none_ok=True))
AVG_POOL_BWD_SCHEMA = dict(grad_out=Arr((3, 4)), x_shape=Shape(), **WINDOW_SCHEMA,
                           divisor_override=Int(1, none_ok=True))
POOL_INVALID = [("padding > kernel/2", pool_padding_too_big), ("kernel > input", pool_kernel_too_big)]


# ------------------------------------------------------------------------------ batch norm

@st.composite
def bn_call(draw, forward_stats=False):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    nd = draw(st.integers(2, 4))
    N, C = draw(st.integers(0, 4)), draw(st.integers(1, 4))
    shape = (N, C) + tuple(draw(st.integers(1, 3)) for _ in range(nd - 2))
    M = N * math.prod(shape[2:])
    training = draw(st.booleans()) and M != 1
    kw_ = dict(x=rnd(rng, shape, dt), running_mean=None, running_var=None, training=training,
               momentum=draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
               eps=draw(st.sampled_from([1e-5, 1e-3, 0.5] + ([0.0] if not training else []))))
    if not training or draw(st.booleans()):
        kw_["running_mean"] = rnd(rng, (C,), dt)
        kw_["running_var"] = rnd(rng, (C,), dt, 0.5, 2.0)
    for name in ("weight", "bias"):
        if draw(st.booleans()):
            kw_[name] = rnd(rng, (C,), dt)
    inplace = ("running_mean", "running_var") if training and kw_["running_mean"] is not None else ()
    return Call(draw(laid_out(kw_, inplace)), inplace=inplace, dtype=dt)


@st.composite
def bn_bwd_call(draw):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    nd = draw(st.integers(2, 4))
    N, C = draw(st.integers(0, 4)), draw(st.integers(1, 4))
    shape = (N, C) + tuple(draw(st.integers(1, 3)) for _ in range(nd - 2))
    x = rnd(rng, shape, dt)
    training = draw(st.booleans())
    _, mean, invstd = R.batch_norm_forward(x, rnd(rng, (C,), np.float64), rnd(rng, (C,), np.float64, 0.5, 2),
                                           training=training and x.size // C > 1)
    kw_ = dict(grad_out=rnd(rng, shape, dt), x=x, weight=rnd(rng, (C,), dt) if draw(st.booleans()) else None,
               save_mean=mean.astype(dt), save_invstd=invstd.astype(dt), training=training,
               output_mask=tuple(draw(st.lists(st.booleans(), min_size=3, max_size=3))))
    return Call(draw(laid_out(kw_)), dtype=dt)


def bn_ref(**kw):
    kw = dict(kw)
    rm, rv = kw["running_mean"], kw["running_var"]
    if rm is not None:  # the oracle updates float64 copies; the test compares them to pydl's
        kw["running_mean"], kw["running_var"] = rm.astype(np.float64), rv.astype(np.float64)
    r = R.batch_norm_forward(**kw)
    return r, kw["running_mean"], kw["running_var"]


def bn_vec_len(draw, call):
    kw = dict(call.kw)
    names = [n for n in ("running_mean", "running_var", "weight", "bias") if kw.get(n) is not None]
    assume(names)
    n = draw(st.sampled_from(names))
    kw[n] = np.ones(kw[n].shape[0] + 1, call.dtype)
    return kw, ValueError, (n,)


def bn_one_buffer(draw, call):
    kw = dict(call.kw)
    rm = np.ones(kw["x"].shape[1], call.dtype)
    kw["running_mean"], kw["running_var"] = draw(st.sampled_from([(rm, None), (None, rm)]))
    return kw, ValueError, ("running_mean", "running_var")


def bn_eval_no_buffers(draw, call):
    kw = dict(call.kw, training=False, running_mean=None, running_var=None)
    return kw, ValueError, ("running_mean",)


def bn_single_value(draw, call):
    kw = dict(call.kw, training=True, running_mean=None, running_var=None)
    x = np.asarray(kw["x"])
    kw["x"] = np.ones((1, x.shape[1]) + (1,) * (x.ndim - 2), call.dtype)
    return kw, ValueError, ("x",)


def bn_readonly_buffer(draw, call):
    C = call.kw["x"].shape[1]
    assume(call.kw["x"].size // C != 1)
    rm, rv = np.zeros(C, call.dtype), np.ones(C, call.dtype)
    ro = draw(st.sampled_from(["running_mean", "running_var"]))
    kw = dict(call.kw, training=True, running_mean=rm, running_var=rv)
    # read-only (NumPy) or zero-strided (a broadcast: read-only in NumPy, not in CuPy, and no
    # place to store C values either way)
    assume(C > 1)
    kw[ro] = np.broadcast_to(kw[ro][:1], (C,))
    return kw, ValueError, (ro,)


def bn_bwd_missing_stats(draw, call):
    kw = dict(call.kw)
    kw[draw(st.sampled_from(["save_mean", "save_invstd"]))] = None
    return kw, ValueError, ("save_mean", "save_invstd")


def bn_bwd_stat_len(draw, call):
    kw = dict(call.kw)
    n = draw(st.sampled_from(["save_mean", "save_invstd"] + (["weight"] if kw["weight"] is not None else [])))
    kw[n] = np.ones(kw[n].shape[0] + 1, call.dtype)
    return kw, ValueError, (n,)


BN_SCHEMA = dict(x=Arr((2, 3, 4)), running_mean=Arr((1,), optional=True), running_var=Arr((1,), optional=True),
                 weight=Arr((1,), optional=True), bias=Arr((1,), optional=True), training=Bool(),
                 momentum=Float(0.0, 1.0), eps=Float(0.0))
BN_BWD_SCHEMA = dict(grad_out=Arr((2, 3, 4)), x=Arr((2, 3, 4)), weight=Arr((1,), optional=True),
                     save_mean=Arr((1,)), save_invstd=Arr((1,)), training=Bool(), output_mask=Mask())
BN_INVALID = [("vector length", bn_vec_len), ("one running buffer", bn_one_buffer),
              ("eval without buffers", bn_eval_no_buffers), ("one value per channel", bn_single_value),
              ("read-only running buffer", bn_readonly_buffer)]


# ------------------------------------------------------------------------------ softmax, cross entropy

@st.composite
def softmax_call(draw, backward=False, log=False):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    nd = draw(st.integers(0, 4))
    shape = tuple(draw(st.integers(0 if draw(st.booleans()) else 1, 4)) for _ in range(nd))
    axis = draw(st.integers(-max(nd, 1), max(nd, 1) - 1))
    x = np.asarray(rnd(rng, shape, dt) * draw(st.sampled_from([1.0, 30.0])), dtype=dt)
    if backward:
        # a 0-d array is one row of length 1: softmax 1, log_softmax 0
        y = (R.log_softmax if log else R.softmax)(x, axis=axis) if nd else np.full((), 0.0 if log else 1.0)
        kw_ = dict(grad_out=rnd(rng, shape, dt), y=np.asarray(y).astype(dt), axis=axis)
    else:
        kw_ = dict(x=x, axis=axis)
    return Call(draw(laid_out(kw_)), dtype=dt)


@st.composite
def ce_call(draw, backward=False):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    C = draw(st.integers(1, 5))
    nd = draw(st.integers(1, 4))
    shape = (C,) if nd == 1 else (draw(st.integers(0, 4)), C) + tuple(draw(st.integers(1, 3)) for _ in range(nd - 2))
    elem = () if nd == 1 else (shape[0],) + shape[2:]
    logits = rnd(rng, shape, dt) * draw(st.sampled_from([1.0, 5.0, 50.0]))
    prob = draw(st.booleans())
    ignore_index = -100
    if prob:
        t = rng.uniform(0, 1, shape)
        target = (t / np.sum(t, axis=0 if nd == 1 else 1, keepdims=True)).astype(dt)
    else:
        ignore_index = draw(st.sampled_from([-100, -1, 0, C - 1, 7]))
        target = rng.integers(0, C, elem).astype(np.int64)
        if ignore_index not in range(C) and target.size:
            target[rng.random(elem) < 0.3] = ignore_index
    kw_ = dict(logits=logits, target=target, weight=rnd(rng, (C,), dt, 0.1, 2.0) if draw(st.booleans()) else None,
               ignore_index=ignore_index, reduction=draw(st.sampled_from(["none", "mean", "sum"])),
               label_smoothing=draw(st.sampled_from([0.0, 0.0, 0.1, 1.0])))
    if backward:
        if kw_["reduction"] == "none":
            gl = rnd(rng, elem, dt)
        else:
            gl = draw(st.sampled_from([rnd(rng, (), dt), 1.0, 0.5]))
        kw_ = dict(grad_loss=gl, **kw_)
    call = Call(draw(laid_out(kw_)), dtype=dt)
    if backward and draw(st.booleans()):  # the forward's saved statistics, as documented
        ce = {k: v for k, v in call.kw.items() if k != "grad_loss"}
        call.kw["saved"] = F.cross_entropy_forward(**ce)[1]
    return call


def ce_target_mass(kw):
    t = np.asarray(kw["target"])
    return np.max(np.abs(t)) if t.dtype.kind == "f" and t.size else 1.0


def ce_floor(kw):
    """Per element the loss is sum_c q_c (logsumexp - x_c): terms of size |x| * |q|."""
    return amax(kw["logits"], kw["weight"], ce_target_mass(kw))


def ce_ref_backward(saved=None, **kw):
    return R.cross_entropy_backward(**kw)


def ce_bad_target(draw, call):
    kw = dict(call.kw)
    t = np.asarray(kw["target"])
    assume(t.dtype == np.int64 and t.size > 0)
    C = kw["logits"].shape[0 if kw["logits"].ndim == 1 else 1]
    t = t.copy()
    bad = draw(st.sampled_from([C, C + 3, -2, -101, 2**62, -2**62]))
    assume(bad != kw["ignore_index"])
    t.flat[draw(st.integers(0, t.size - 1))] = bad
    kw["target"] = t
    return kw, ValueError, ("target",)


def ce_target_shape(draw, call):
    kw = dict(call.kw)
    t = np.asarray(kw["target"])
    kw["target"] = t[..., None] if t.ndim == 0 or draw(st.booleans()) else t.reshape(-1)[:0]
    assume(kw["target"].shape != t.shape)
    return kw, ValueError, ("target",)


def ce_weight_len(draw, call):
    kw = dict(call.kw)
    C = kw["logits"].shape[0 if kw["logits"].ndim == 1 else 1]
    kw["weight"] = np.ones(C + 1, call.dtype)
    return kw, ValueError, ("weight",)


def ce_prob_ignore(draw, call):
    kw = dict(call.kw)
    kw["target"] = np.zeros(kw["logits"].shape, call.dtype)
    kw["ignore_index"] = draw(st.sampled_from([-1, 0, 3]))
    return kw, ValueError, ("ignore_index",)


def ce_no_classes(draw, call):
    kw = dict(call.kw)
    lg = np.asarray(kw["logits"])
    ax = 0 if lg.ndim == 1 else 1
    kw["logits"] = np.take(lg, [], axis=ax)
    return kw, ValueError, ("logits",)


def ce_scalar_logits(draw, call):
    kw = dict(call.kw, logits=np.ones((), call.dtype), target=np.zeros((), np.int64))
    return kw, ValueError, ("logits",)


def ce_grad_shape(draw, call):
    kw = dict(call.kw)
    g = kw["grad_loss"]
    kw["grad_loss"] = np.ones(np.shape(g) + (2,), call.dtype)
    return kw, ValueError, ("grad_loss",)


def ce_grad_bool(draw, call):
    kw = dict(call.kw, grad_loss=draw(st.sampled_from([True, np.bool_(False), "1.0", 1j, None])))
    return kw, TypeError, ("grad_loss",)


def ce_saved_shape(draw, call):
    kw = dict(call.kw)
    assume(kw.get("saved") is not None)
    stats, norm = kw["saved"]
    if draw(st.booleans()):
        kw["saved"] = type(kw["saved"])(np.zeros((stats.shape[0] + 1, 3), call.dtype), norm)
        return kw, ValueError, ("saved",)
    if draw(st.booleans()):
        kw["saved"] = draw(st.sampled_from([(stats, norm, norm), (stats,), [stats, norm], stats, 1.0]))
        return kw, TypeError, ("saved",)
    kw["saved"] = type(kw["saved"])(stats, norm.astype(np.float32))
    return kw, TypeError, ("saved",)


def softmax_bad_axis(draw, call):
    kw = dict(call.kw)
    nd = max(np.ndim(kw["x"] if "x" in kw else kw["y"]), 1)
    kw["axis"] = draw(st.sampled_from([nd, -nd - 1, nd + 5, 2**63]))
    return kw, ValueError, ("axis",)


SOFTMAX_SCHEMA = dict(x=Arr(bad_dtypes=BAD_DTYPES), axis=Int(None))
SOFTMAX_BWD_SCHEMA = dict(grad_out=Arr(), y=Arr(), axis=Int(None))
CE_SCHEMA = dict(logits=Arr(), target=Arr(index=True), weight=Arr((1,), optional=True),
                 ignore_index=Int(None), reduction=Choice(), label_smoothing=Float(0.0, 1.0))
CE_INVALID = [("target out of range", ce_bad_target), ("target shape", ce_target_shape),
              ("weight length", ce_weight_len), ("prob target with ignore_index", ce_prob_ignore),
              ("no classes", ce_no_classes), ("0-d logits", ce_scalar_logits)]


# ------------------------------------------------------------------------------ detection

def boxes_of(draw, rng, n, dt):
    kind = draw(st.sampled_from(["uniform", "integer", "degenerate", "clustered"]))
    if kind == "integer":
        xy = rng.integers(0, 6, (n, 2))
        wh = rng.integers(0, 4, (n, 2))
    elif kind == "degenerate":  # zero width/height, points, inverted corners, duplicates
        xy = rng.integers(0, 4, (n, 2)).astype(np.float64)
        wh = rng.choice([0.0, 0.0, 1.0, 2.0, -1.0], (n, 2))
        if n > 1:
            xy[n // 2:] = xy[: n - n // 2]
    elif kind == "clustered":
        xy = rng.normal(10, 1.0, (n, 2))
        wh = rng.uniform(4, 6, (n, 2))
    else:
        xy = rng.uniform(0, 50, (n, 2))
        wh = rng.uniform(0, 20, (n, 2))
    b = np.concatenate([xy, xy + wh], 1).astype(dt)
    if n and draw(st.integers(0, 9)) == 0:
        b[rng.integers(0, n)] = np.nan
    return b


def scores_of(draw, rng, n, dt):
    s = rng.random(n)
    if draw(st.booleans()):
        s = np.round(s * 3) / 3  # ties
    s = s.astype(dt)
    if n and draw(st.integers(0, 9)) == 0:
        s[rng.integers(0, n)] = np.nan
    return s


@st.composite
def nms_call(draw, batched=False):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    n = draw(st.integers(0, 25))
    kw_ = dict(boxes=boxes_of(draw, rng, n, dt), scores=scores_of(draw, rng, n, dt))
    if batched:
        kw_["idxs"] = rng.integers(-1, 3, n).astype(np.int64)
    kw_["iou_threshold"] = draw(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0, -0.5, 1.5, 1 / 3]))
    return Call(draw(laid_out(kw_)), dtype=dt)


@st.composite
def box_iou_call(draw):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    kw_ = dict(boxes1=boxes_of(draw, rng, draw(st.integers(0, 8)), dt),
               boxes2=boxes_of(draw, rng, draw(st.integers(0, 8)), dt))
    return Call(draw(laid_out(kw_)), dtype=dt)


def nms_len(draw, call):
    kw = dict(call.kw)
    n = draw(st.sampled_from([k for k in ("scores", "idxs") if k in kw]))
    v = np.asarray(kw[n])
    kw[n] = np.concatenate([v, v[:1] if v.size else np.zeros(1, v.dtype)])
    return kw, ValueError, (n,)


def nms_box_cols(draw, call):
    kw = dict(call.kw)
    n = "boxes" if "boxes" in kw else draw(st.sampled_from(["boxes1", "boxes2"]))
    b = np.asarray(kw[n])
    kw[n] = b[:, :3] if draw(st.booleans()) else np.concatenate([b, b[:, :1]], 1)
    return kw, ValueError, (n,)


def nms_no_idxs(draw, call):
    return dict(call.kw, idxs=None), (TypeError, ValueError), ("idxs",)


NMS_SCHEMA = dict(boxes=Arr((2,)), scores=Arr((1,)), iou_threshold=Float())
BNMS_SCHEMA = dict(NMS_SCHEMA, idxs=Arr((1,), index=True))
BOX_IOU_SCHEMA = dict(boxes1=Arr((2,)), boxes2=Arr((2,)))


# ------------------------------------------------------------------------------ issue-8 ops: kinds

@dataclass
class Opt:
    """An optional argument left as None in some calls: mutations only where it is given."""
    kind: object

    def mutations(self, v, call):
        # (None itself is valid: it means "the other one", checked by the op-specific cases)
        return [] if v is None else [m for m in self.kind.mutations(v, call) if m[0] != "None"]


@dataclass
class Without:
    """kind's mutations less the ``labels`` of a known bug in a module this file does not own
    (each has a strict-xfail test at the end of the file; drop the entry when it is fixed)."""
    kind: object
    labels: tuple

    def mutations(self, v, call):
        return [m for m in self.kind.mutations(v, call) if m[0] not in self.labels]


@dataclass
class FloatSeq:
    """A non-empty sequence of floats > 0 (anchor sizes, aspect ratios)."""

    def mutations(self, v, call):
        return [("empty", [], ValueError), ("zero", [1.0, 0.0], ValueError), ("negative", [-0.5], ValueError),
                ("nan", [float("nan")], ValueError), ("inf", [float("inf")], ValueError),
                ("string element", ["0.5"], TypeError), ("string", "0.5", TypeError), ("None", None, TypeError),
                ("dict", {0.5: 1}, TypeError), ("2-D array", np.ones((2, 2)), ValueError)]


@dataclass
class DType:
    def mutations(self, v, call):
        return [("int32", np.int32, TypeError), ("float16", "float16", TypeError),
                ("complex", np.complex64, TypeError), ("unknown", "float33", TypeError), ("bool", bool, TypeError)]


@dataclass
class Weights:
    """Four floats > 0 (box coder weights)."""

    def mutations(self, v, call):
        return [("three", (1.0, 1.0, 1.0), ValueError), ("five", (1.0,) * 5, ValueError),
                ("zero", (1.0, 0.0, 1.0, 1.0), ValueError), ("negative", (-1.0, 1.0, 1.0, 1.0), ValueError),
                ("nan", (1.0, 1.0, float("nan"), 1.0), ValueError), ("string element", ("1", 1.0, 1.0, 1.0), TypeError),
                ("None", None, TypeError), ("float", 10.0, TypeError), ("string", "abcd", TypeError)]


@dataclass
class Boxes:
    """roi_pool/roi_align boxes: a (K, 5) array, or a list of (L_i, 4) arrays (one per image)."""

    def mutations(self, v, call):
        if isinstance(v, np.ndarray):  # as a list of rows it reads as the per-image format: too long is ValueError
            return [(m[0], m[1], (TypeError, ValueError) if m[0] == "list" else m[2])
                    for m in Arr((2,)).mutations(v, call)]
        out = [("list of lists", [np.asarray(b).tolist() for b in v] or [[[0.0] * 4]], TypeError),
               ("scalar", 1.0, TypeError), ("string", "boxes", TypeError), ("None", None, TypeError)]
        if v:
            b0 = np.asarray(v[0])
            other = np.float32 if call.dtype == np.float64 else np.float64
            out += [("entry dtype", [b0.astype(other)] + list(v[1:]), TypeError),
                    ("entry int", [b0.astype(np.int64)] + list(v[1:]), TypeError),
                    ("entry columns", [np.concatenate([b0, b0[:, :1]], 1)] + list(v[1:]), ValueError),
                    ("entry rank", [b0.reshape(-1)] + list(v[1:]), ValueError)]
        return out


@dataclass
class RoiShape(Shape):
    """x_shape of the roi backward ops: an empty image is valid only without boxes."""

    def mutations(self, v, call):
        b = call.kw["boxes"]
        k = b.shape[0] if isinstance(b, np.ndarray) else sum(np.shape(e)[0] for e in b)
        return [m for m in super().mutations(v, call) if k > 0 or m[0] != "zero width"]


@dataclass
class AlignCorners:
    def mutations(self, v, call):
        if call.kw["mode"] == "nearest":
            return [("True with nearest", True, ValueError), ("False with nearest", False, ValueError)]
        return [("int", 1, TypeError), ("string", "True", TypeError), ("float", 1.0, TypeError)]


@dataclass
class Recompute:
    def mutations(self, v, call):
        out = [("int", 1, TypeError), ("string", "True", TypeError), ("float", 0.0, TypeError)]
        if call.kw.get("size") is not None:
            out.append(("True with size", True, ValueError))
        return out


# ------------------------------------------------------------------------------ roi_pool / roi_align

@st.composite
def roi_call(draw, op="pool", backward=False):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    H, W = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25, 2.0]))
    K = draw(st.integers(0, 4))
    if draw(st.booleans()):  # integer-valued and half-integer corners: rounding ties
        xy = rng.integers(-2, 2 * max(H, W) + 2, (K, 2)) / 2.0
        wh = rng.integers(-1, 8, (K, 2)) / 2.0
    else:
        xy = rng.uniform(-2, max(H, W) / scale + 1, (K, 2))
        wh = rng.uniform(-1, max(H, W) / scale, (K, 2))
    bi = np.sort(rng.integers(0, N, K)).astype(np.float64)
    rois = np.concatenate([bi[:, None], xy, xy + wh], 1).astype(dt)
    if draw(st.booleans()):  # list format: entry i holds image i's boxes
        n_list = draw(st.integers(int(bi.max()) + 1 if K else 0, N))
        boxes = [layout(rois[bi == i, 1:], draw(st.sampled_from(LAYOUTS))) for i in range(n_list)]
        boxes = [np.ascontiguousarray(b) if b.size == 0 else b for b in boxes]
    else:
        boxes = rois
    out = draw(st.integers(1, 3))
    output_size = draw(st.sampled_from([out, (out, draw(st.integers(1, 3))), [out, out]]))
    if draw(st.integers(0, 4)) == 0:
        x = rng.integers(-2, 3, (N, C, H, W)).astype(dt)  # ties for the argmax
    else:
        x = rnd(rng, (N, C, H, W), dt)
    kw_ = dict(boxes=boxes, output_size=output_size, spatial_scale=scale)
    if op == "align":
        kw_.update(sampling_ratio=draw(st.sampled_from([-1, 0, 1, 2, 3])), aligned=draw(st.booleans()))
    PH, PW = as_pair(output_size)
    if not backward:
        kw_ = dict(x=x, **kw_)
        if op == "pool":
            kw_["return_indices"] = draw(st.booleans())
    else:
        xs = draw(st.sampled_from([(N, C, H, W), [N, C, H, W]]))
        kw_ = dict(grad_out=rnd(rng, (K, C, PH, PW), dt), x_shape=xs, **kw_)
        if op == "pool":
            kw_["indices"] = R.roi_pool(x, boxes, output_size, scale, return_indices=True)[1]
    return Call(draw(laid_out(kw_)), dtype=dt)


def _rois_of(kw):
    b = kw["boxes"]
    return np.array(b, copy=True) if isinstance(b, np.ndarray) else None


def roi_bad_batch(draw, call):
    kw = dict(call.kw)
    b = _rois_of(kw)
    assume(b is not None and b.shape[0] > 0)
    N = kw["x"].shape[0] if "x" in kw else kw["x_shape"][0]
    b[draw(st.integers(0, b.shape[0] - 1)), 0] = draw(st.sampled_from([N, N + 5, -1, 0.5, np.nan, np.inf]))
    kw["boxes"] = b
    return kw, ValueError, ("boxes",)


def roi_bad_coord(draw, call):
    kw = dict(call.kw)
    b = _rois_of(kw)
    assume(b is not None and b.shape[0] > 0)
    b[draw(st.integers(0, b.shape[0] - 1)), draw(st.integers(1, 4))] = draw(
        st.sampled_from([np.nan, np.inf, -np.inf, 2.0**40]))
    kw["boxes"] = b
    return kw, ValueError, ("boxes",)


def roi_bad_columns(draw, call):
    kw = dict(call.kw)
    b = _rois_of(kw)
    assume(b is not None)
    kw["boxes"] = b[:, 1:] if draw(st.booleans()) else np.concatenate([b, b[:, :1]], 1)
    return kw, ValueError, ("boxes",)


def roi_list_too_long(draw, call):
    kw = dict(call.kw)
    N = kw["x"].shape[0] if "x" in kw else kw["x_shape"][0]
    kw["boxes"] = [np.zeros((1, 4), call.dtype)] * (N + 1)
    if "grad_out" in kw:
        kw["grad_out"] = np.zeros((N + 1,) + kw["grad_out"].shape[1:], call.dtype)
    if "indices" in kw:
        kw["indices"] = np.zeros(kw["grad_out"].shape, np.int64)
    return kw, ValueError, ("boxes",)


def roi_empty_image(draw, call):
    kw = dict(call.kw)
    b = _rois_of(kw)
    assume(b is not None and b.shape[0] > 0)
    if "x" in kw:
        kw["x"] = np.asarray(kw["x"])[..., :0]
        return kw, ValueError, ("x",)
    kw["x_shape"] = tuple(kw["x_shape"][:3]) + (0,)
    return kw, ValueError, ("x_shape",)


def roi_x_shape_channels(draw, call):
    kw = dict(call.kw)
    xs = tuple(kw["x_shape"])
    kw["x_shape"] = xs[:1] + (xs[1] + 1,) + xs[2:]
    return kw, ValueError, ("grad_out",)


def roi_bad_indices(draw, call):
    kw = dict(call.kw)
    ind = np.array(kw["indices"], copy=True)
    assume(ind.size > 0)
    H, W = tuple(kw["x_shape"])[2:]
    ind.flat[draw(st.integers(0, ind.size - 1))] = draw(st.sampled_from([H * W, H * W + 7, -2, 2**62, -2**62]))
    kw["indices"] = ind
    return kw, ValueError, ("indices",)


def roi_indices_shape(draw, call):
    kw = dict(call.kw)
    ind = np.asarray(kw["indices"])
    kw["indices"] = np.concatenate([ind, ind[:, :, :1]], axis=2)
    return kw, ValueError, ("indices",)


ROI_SCHEMA = dict(x=Arr((4,)), boxes=Boxes(), output_size=Int(1, pair=True), spatial_scale=Float())
ROI_BWD_SCHEMA = dict(grad_out=Arr((4,)), boxes=Boxes(), x_shape=RoiShape(), output_size=Int(1, pair=True),
                      spatial_scale=Float())
ROI_ALIGN_EXTRA = dict(sampling_ratio=Int(None), aligned=Bool())
ROI_INVALID = [("batch index", roi_bad_batch), ("coordinates", roi_bad_coord), ("box columns", roi_bad_columns),
               ("list longer than batch", roi_list_too_long), ("empty image", roi_empty_image)]
ROI_BWD_INVALID = ROI_INVALID + [("x_shape channels", roi_x_shape_channels), ("grad_out shape", bad_grad_out_shape)]


# ------------------------------------------------------------------------------ deform_conv2d

@st.composite
def deform_call(draw, backward=False):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    g, og = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    C = g * og * draw(st.integers(1, 2))
    K = g * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride, dilation, padding = maybe_pair(draw, 1, 2), maybe_pair(draw, 1, 2), maybe_pair(draw, 0, 2)
    s, d, p = as_pair(stride), as_pair(dilation), as_pair(padding)
    H = max(1, d[0] * (kh - 1) + 1 - 2 * p[0]) + draw(st.integers(0, 3))
    W = max(1, d[1] * (kw - 1) + 1 - 2 * p[1]) + draw(st.integers(0, 3))
    ho = (H + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1
    wo = (W + 2 * p[1] - d[1] * (kw - 1) - 1) // s[1] + 1
    N = draw(st.integers(0, 2))
    off_shape = (N, 2 * og * kh * kw, ho, wo)
    offset = rnd(rng, off_shape, dt, -2.0, 2.0)
    if draw(st.integers(0, 3)) == 0:  # whole-pixel offsets: samples on the grid and at the border
        offset = rng.integers(-2, 3, off_shape).astype(dt)
    kw_ = dict(input=rnd(rng, (N, C, H, W), dt), offset=offset, weight=rnd(rng, (K, C // g, kh, kw), dt),
               stride=stride, padding=padding, dilation=dilation)
    if draw(st.booleans()):
        kw_["mask"] = rnd(rng, (N, og * kh * kw, ho, wo), dt, 0.0, 1.0)
    if backward:
        kw_ = dict(grad_out=rnd(rng, (N, K, ho, wo), dt), **kw_,
                   output_mask=tuple(draw(st.lists(st.booleans(), min_size=5, max_size=5))))
    elif draw(st.booleans()):
        kw_["bias"] = rnd(rng, (K,), dt)
    return Call(draw(laid_out(kw_)), dtype=dt)


def deform_ref_backward(output_mask=(True,) * 5, **kw):
    r = R.deform_conv2d_backward(**kw)
    return tuple(v if m else None for v, m in zip(r, output_mask))


def deform_floor(kw):
    # offsets enter through bilinear weights: terms of size |dy| |w| |x| (and |mask|)
    return amax(kw.get("grad_out"), kw["weight"], kw["input"], kw.get("mask"))


def deform_bad_offset_channels(draw, call):
    kw = dict(call.kw)
    o = np.asarray(kw["offset"])
    kw["offset"] = o[:, :-1] if draw(st.booleans()) else np.concatenate([o, o[:, :1]], 1)
    return kw, ValueError, ("offset",)


def deform_bad_offset_size(draw, call):
    kw = dict(call.kw)
    o = np.asarray(kw["offset"])
    kw["offset"] = np.concatenate([o, o[..., :1]], -1)
    return kw, ValueError, ("offset",)


def deform_bad_mask(draw, call):
    kw = dict(call.kw)
    o = np.asarray(kw["offset"])
    kw["mask"] = np.ones((o.shape[0], o.shape[1] // 2 + 1) + o.shape[2:], call.dtype)
    return kw, ValueError, ("mask",)


def deform_weight_channels(draw, call):
    kw = dict(call.kw)
    C = kw["input"].shape[1]
    w = np.asarray(kw["weight"])
    bad = draw(st.sampled_from([c for c in range(C + 1, C + 4) if C % c]))
    kw["weight"] = np.ones((w.shape[0], bad) + w.shape[2:], call.dtype)
    return kw, ValueError, ("weight",)


def deform_too_small(draw, call):
    kw = dict(call.kw)
    x = np.asarray(kw["input"])
    kw["input"] = x[:, :, :1, :1]
    w = np.asarray(kw["weight"])
    kw["weight"] = np.ones(w.shape[:2] + (3, 3), call.dtype)
    kw["offset"] = np.zeros((x.shape[0], 18, 1, 1), call.dtype)  # one offset group of a 3x3 kernel
    kw["padding"], kw["dilation"], kw["stride"], kw["mask"] = 0, 1, 1, None
    return kw, ValueError, ("input",)


def deform_nonfinite_offset(draw, call):  # the kernels cast floor(NaN) to an int: differed from the reference
    kw = dict(call.kw)
    o = np.array(kw["offset"], copy=True)
    assume(o.size > 0)
    o.flat[draw(st.integers(0, o.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    kw["offset"] = o
    return kw, ValueError, ("offset",)


def deform_bad_bias(draw, call):
    kw = dict(call.kw)
    kw["bias"] = np.zeros(kw["weight"].shape[0] + 1, call.dtype)
    return kw, ValueError, ("bias",)


def deform_og_not_dividing(draw, call):
    kw = dict(call.kw)
    x = np.asarray(kw["input"])
    kh, kw_ = kw["weight"].shape[2:]
    C = x.shape[1]
    og = C + 1  # offset groups that do not divide the channels
    o = np.asarray(kw["offset"])
    kw["offset"] = np.zeros((o.shape[0], 2 * og * kh * kw_) + o.shape[2:], call.dtype)
    kw["mask"] = None
    return kw, ValueError, ("input", "offset")


DEFORM_SCHEMA = dict(input=Arr((4,)), offset=Arr((4,)), weight=Arr((4,)), bias=Arr((1,), optional=True),
                     stride=Int(1, pair=True), padding=Int(0, pair=True), dilation=Int(1, pair=True),
                     mask=Arr((4,), optional=True))
DEFORM_BWD_SCHEMA = dict({k: v for k, v in DEFORM_SCHEMA.items() if k != "bias"}, grad_out=Arr((4,)),
                         output_mask=Mask())
DEFORM_INVALID = [("offset channels", deform_bad_offset_channels), ("offset size", deform_bad_offset_size),
                  ("mask shape", deform_bad_mask), ("weight channels", deform_weight_channels),
                  ("output size < 1", deform_too_small), ("offset groups", deform_og_not_dividing),
                  ("non-finite offset", deform_nonfinite_offset)]


# ------------------------------------------------------------------------------ anchors

@st.composite
def anchor_boxes_call(draw):
    dt = draw(st.sampled_from(DTYPES))
    fs, im = draw(st.integers(1, 4)), draw(st.integers(1, 64))
    kw_ = dict(feature_size=draw(st.sampled_from([fs, (fs, draw(st.integers(1, 4))), [fs, fs]])),
               image_size=draw(st.sampled_from([im, (im, draw(st.integers(1, 64)))])),
               sizes=draw(st.lists(st.sampled_from([0.75, 0.5, 0.25, 1.0, 1.5]), min_size=1, max_size=3)),
               aspect_ratios=draw(st.lists(st.sampled_from([1.0, 2.0, 0.5, 3.0]), min_size=1, max_size=3)),
               dtype=draw(st.sampled_from([dt, dt.type, dt.name])), xp=np)
    if draw(st.booleans()):
        kw_["sizes"] = draw(st.sampled_from([tuple(kw_["sizes"]), np.array(kw_["sizes"]), kw_["sizes"][0],
                                             np.array(kw_["sizes"][0])]))  # 0-d: TypeError named no argument
    return Call(kw_, dtype=dt)


@st.composite
def match_anchors_call(draw):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    kw_ = dict(anchors=boxes_of(draw, rng, draw(st.integers(0, 10)), dt),
               gt_boxes=boxes_of(draw, rng, draw(st.integers(0, 5)), dt),
               iou_threshold=draw(st.sampled_from([0.5, 0.0, 0.3, 1.0, -0.1, 0.7])))
    return Call(draw(laid_out(kw_)), dtype=dt)


def proper_boxes(rng, n, dt):
    xy = rng.uniform(-20, 20, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(0.5, 10, (n, 2))], 1).astype(dt)


@st.composite
def coder_call(draw, decode=False):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    n = draw(st.integers(0, 8))
    kw_ = dict(anchors=proper_boxes(rng, n, dt))
    if decode:
        kw_["deltas"] = rnd(rng, (n, 4), dt, -3.0, 3.0)
    else:
        kw_["boxes"] = proper_boxes(rng, n, dt)
    w = draw(st.sampled_from([None, (10.0, 10.0, 5.0, 5.0), [1.0, 1.0, 1.0, 1.0], (1, 2.0, 0.5, 3.0)]))
    if w is not None:
        kw_["weights"] = w
    # no zero-strided broadcast: it would make every box degenerate (log(0), documented unchecked)
    return Call(draw(laid_out(kw_, layouts=tuple(k for k in LAYOUTS if k != "bcast"))), dtype=dt)


def coder_len(draw, call):
    kw = dict(call.kw)
    n = "boxes" if "boxes" in kw else "deltas"
    v = np.asarray(kw[n])
    kw[n] = np.concatenate([v, np.ones((1, 4), v.dtype)])
    return kw, ValueError, (n,)


def coder_cols(draw, call):
    kw = dict(call.kw)
    n = draw(st.sampled_from(["anchors", next(k for k in ("boxes", "deltas", "gt_boxes") if k in kw)]))
    v = np.asarray(kw[n])
    kw[n] = v[:, :3] if draw(st.booleans()) else np.concatenate([v, v[:, :1]], 1)
    return kw, ValueError, (n,)


def anchors_overflow(draw, call):  # an inf cast warned (an error under -W error) naming nothing
    kw = dict(call.kw)
    if call.dtype == np.float64 or draw(st.booleans()):  # (no float64 ratio overflows alone)
        kw["sizes"], kw["image_size"] = [draw(st.sampled_from([1e308, 1e307 if call.dtype == np.float64 else 1e38]))], 64
        return kw, ValueError, ("sizes",)
    kw["aspect_ratios"] = [draw(st.sampled_from([1e-320, 1e300]))]
    return kw, ValueError, ("aspect_ratios",)


def anchors_no_xp(draw, call):
    return dict(call.kw, xp=draw(st.sampled_from([None, "numpy", math]))), TypeError, ("xp",)


ANCHOR_SCHEMA = dict(feature_size=Int(1, pair=True), image_size=Int(1, pair=True), sizes=FloatSeq(),
                     aspect_ratios=FloatSeq(), dtype=DType())
MATCH_SCHEMA = dict(anchors=Arr((2,)), gt_boxes=Arr((2,)), iou_threshold=Float())
ENCODE_SCHEMA = dict(anchors=Arr((2,)), boxes=Arr((2,)), weights=Weights())
DECODE_SCHEMA = dict(anchors=Arr((2,)), deltas=Arr((2,)), weights=Weights())



# ------------------------------------------------------------------------------ soft_nms

@st.composite
def soft_nms_call(draw):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    n = draw(st.integers(0, 12))
    kw_ = dict(boxes=boxes_of(draw, rng, n, dt), scores=scores_of(draw, rng, n, dt),
               sigma=draw(st.sampled_from([0.5, 0.1, 1.0, 2.0])),
               score_threshold=draw(st.sampled_from([0.001, 0.0, 0.1, 0.5])),
               method=draw(st.sampled_from(["gaussian", "linear", "hard"])),
               iou_threshold=draw(st.sampled_from([0.3, 0.0, 0.5, 1.0, -0.5])))
    return Call(draw(laid_out(kw_)), dtype=dt)


def soft_nms_zero_sigma(draw, call):
    return dict(call.kw, sigma=draw(st.sampled_from([0.0, -0.0, 1e-320 * 0]))), ValueError, ("sigma",)


SOFT_NMS_SCHEMA = dict(boxes=Arr((2,)), scores=Arr((1,)), sigma=Float(0.0), score_threshold=Float(0.0),
                       method=Choice(("Gaussian", "", "soft")), iou_threshold=Float())


# ------------------------------------------------------------------------------ interpolate

@st.composite
def interp_call(draw, backward=False):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    N, C = draw(st.integers(0, 2)), draw(st.integers(1, 2))
    H, W = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    mode = draw(st.sampled_from(["nearest", "bilinear"]))
    kw_ = dict(size=None, scale_factor=None, mode=mode,
               align_corners=None if mode == "nearest" else draw(st.sampled_from([None, True, False])))
    if draw(st.booleans()):
        a = draw(st.integers(1, 7))
        kw_["size"] = draw(st.sampled_from([a, (a, draw(st.integers(1, 7))), [a, a]]))
        kw_["recompute_scale_factor"] = draw(st.sampled_from([None, False]))
        out = as_pair(kw_["size"])
    else:
        f = [draw(st.sampled_from([1.0, 2.0, 0.5, 1.5, 3.0, 2.5, 1 / 3, 0.7])) for _ in range(2)]
        out = tuple(int(math.floor(float(n) * s)) for n, s in zip((H, W), f))
        assume(min(out) >= 1)
        kw_["scale_factor"] = draw(st.sampled_from([f[0], (f[0], f[1]), list(f)]))
        if isinstance(kw_["scale_factor"], float):
            out = tuple(int(math.floor(float(n) * f[0])) for n in (H, W))
            assume(min(out) >= 1)
        kw_["recompute_scale_factor"] = draw(st.sampled_from([None, False, True]))
    if backward:
        xs = draw(st.sampled_from([(N, C, H, W), [N, C, H, W]]))
        kw_ = dict(grad_out=rnd(rng, (N, C) + tuple(out), dt), input_size=xs, **kw_)
    else:
        kw_ = dict(x=rnd(rng, (N, C, H, W), dt), **kw_)
    return Call(draw(laid_out(kw_)), dtype=dt)


def interp_both(draw, call):
    kw = dict(call.kw)
    if kw["size"] is None:
        kw["size"] = 2
    else:
        kw["scale_factor"], kw["recompute_scale_factor"] = 2.0, None
    return kw, ValueError, ("size", "scale_factor")


def interp_neither(draw, call):
    return dict(call.kw, size=None, scale_factor=None, recompute_scale_factor=None), ValueError, \
        ("size", "scale_factor")


def interp_tiny_scale(draw, call):
    kw = dict(call.kw, size=None, recompute_scale_factor=None)
    kw["scale_factor"] = draw(st.sampled_from([0.1, (1.0, 0.01), 1e-300]))
    return kw, ValueError, ("scale_factor",)


def interp_huge(draw, call):  # NumPy's allocation error named no argument
    kw = dict(call.kw, recompute_scale_factor=None)
    assume(math.prod(kw["x"].shape[:2] if "x" in kw else tuple(kw["input_size"])[:2]) > 0)  # else nothing to allocate
    if draw(st.booleans()):
        kw["size"], kw["scale_factor"] = draw(st.sampled_from([2**40, (2**62, 1), (1, 2**63 - 1)])), None
        return kw, ValueError, ("size",)
    kw["size"], kw["scale_factor"] = None, draw(st.sampled_from([1e10, 1e300, (1.0, 1e19)]))
    return kw, ValueError, ("scale_factor",)


def interp_empty_plane(draw, call):
    kw = dict(call.kw)
    if "x" in kw:
        kw["x"] = np.asarray(kw["x"])[..., :0, :]
        return kw, ValueError, ("x",)
    kw["input_size"] = tuple(kw["input_size"][:2]) + (0, kw["input_size"][3])
    return kw, ValueError, ("input_size",)


INTERP_SCHEMA = dict(x=Arr((4,)), size=Opt(Int(1, pair=True)), scale_factor=Opt(Float(0.0)),
                     mode=Choice(("Nearest", "", "bicubic")), align_corners=AlignCorners(),
                     recompute_scale_factor=Recompute())
INTERP_BWD_SCHEMA = dict({k: v for k, v in INTERP_SCHEMA.items() if k != "x"}, grad_out=Arr((4,)),
                         input_size=Shape())
INTERP_INVALID = [("size and scale_factor", interp_both), ("neither", interp_neither),
                  ("output size < 1", interp_tiny_scale), ("empty plane", interp_empty_plane),
                  ("output too large", interp_huge)]


# ------------------------------------------------------------------------------ local_response_norm

@st.composite
def lrn_call(draw, backward=False):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    shape = (draw(st.integers(0, 2)), draw(st.integers(1, 5))) + tuple(
        draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    kw_ = dict(x=rnd(rng, shape, dt, -2.0, 2.0), size=draw(st.integers(1, 7)),
               alpha=draw(st.sampled_from([1e-4, 0.1, 1.0, 2.0, 0])),
               beta=draw(st.sampled_from([0.75, 0.5, 1.0, 2, 0.0])), k=draw(st.sampled_from([1.0, 2.0, 0.5, 1])))
    if backward:
        kw_ = dict(grad_out=rnd(rng, shape, dt), **kw_)
    return Call(draw(laid_out(kw_)), dtype=dt)


def lrn_low_rank(draw, call):
    kw = dict(call.kw)
    x = np.asarray(kw["x"])
    kw["x"] = x.reshape(x.shape[0], math.prod(x.shape[1:])) if draw(st.booleans()) else x.reshape(-1)
    if "grad_out" in kw:
        kw["grad_out"] = np.asarray(kw["grad_out"]).reshape(kw["x"].shape)
    return kw, ValueError, ("x",)


LRN_SCHEMA = dict(x=Arr(), size=Int(1), alpha=Float(), beta=Float(), k=Float())
LRN_BWD_SCHEMA = dict(LRN_SCHEMA, grad_out=Arr())


# ------------------------------------------------------------------------------ activations

ACT_NAMES = ("relu", "relu6", "leaky_relu", "hardtanh", "silu", "hardswish", "sigmoid", "tanh")
ACT_FROM_Y = ("sigmoid", "tanh")  # their backward takes the forward output y


def act_params(draw, name):
    if name == "leaky_relu" and draw(st.booleans()):
        return dict(negative_slope=draw(st.sampled_from([0.01, 0.2, 0.0, -0.5, 1.5])))
    if name == "hardtanh" and draw(st.booleans()):
        lo = draw(st.sampled_from([-1.0, -2.5, 0.0, 0.5]))
        return dict(min_val=lo, max_val=lo + draw(st.sampled_from([0.0, 0.5, 2.0, 6.0])))
    return {}


@st.composite
def act_call(draw, name, backward=False):
    """Any shape (0-d, empty, odd), values over every kink; sometimes out= or inplace=True."""
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=4)))
    x = rnd(rng, shape, dt, -8.0, 8.0)
    params = act_params(draw, name)
    if backward:
        v = getattr(R, name)(x, **params) if name in ACT_FROM_Y else x
        kw_ = dict(grad_out=rnd(rng, shape, dt), **{"y" if name in ACT_FROM_Y else "x": v}, **params)
    else:
        kw_ = dict(x=x, **params)
    inplace = ()
    mode = draw(st.sampled_from(["fresh", "fresh", "out"] + ([] if backward or name in ACT_FROM_Y else ["inplace"])))
    if mode == "out":
        kw_["out"], inplace = np.zeros(shape, dt), ("out",)
    elif mode == "inplace":
        kw_["inplace"], inplace = True, ("x",)
    return Call(draw(laid_out(kw_, inplace)), inplace=inplace, dtype=dt)


def act_bad_bounds(draw, call):
    kw = dict(call.kw)
    kw["min_val"], kw["max_val"] = 1.0, draw(st.sampled_from([0.5, -1.0, 0.999]))
    return kw, ValueError, ("max_val",)


def act_inplace_and_out(draw, call):
    kw = dict(call.kw)
    kw["inplace"], kw["out"] = True, np.zeros(np.shape(kw["x"]), call.dtype)
    return kw, ValueError, ("out",)


def act_schema(name, backward):
    sch = dict(grad_out=Arr(), **{("y" if name in ACT_FROM_Y else "x"): Arr()}) if backward else dict(x=Arr())
    sch["out"] = Arr(optional=True)
    if not backward and name not in ACT_FROM_Y:
        sch["inplace"] = Bool()
    if name == "leaky_relu":
        sch["negative_slope"] = Float()
    if name == "hardtanh":
        sch.update(min_val=Float(), max_val=Float())
    return sch


def act_specs():
    specs = []
    for name in ACT_NAMES:
        fwd_bad = [("inplace with out", act_inplace_and_out)] if name not in ACT_FROM_Y else []
        bounds = [("max_val < min_val", act_bad_bounds)] if name == "hardtanh" else []
        specs.append(Spec(name, getattr(F, name), lambda name=name: act_call(name), getattr(R, name),
                          act_schema(name, False), fwd_bad + bounds))
        # 1 - y*y and x/3 + 1/2 cancel: float32 results are accurate relative to |grad_out|
        specs.append(Spec(f"{name}_backward", getattr(F, f"{name}_backward"),
                          lambda name=name: act_call(name, backward=True), getattr(R, f"{name}_backward"),
                          act_schema(name, True), [("grad_out shape", bad_grad_out_shape)] + bounds,
                          floor=lambda kw: amax(kw["grad_out"])))
    return specs


# ------------------------------------------------------------------------------ linear

@st.composite
def linear_call(draw, backward=False):
    rng, dt = draw(seeds()), draw(st.sampled_from(DTYPES))
    lead = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
    n_in, n_out = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    kw_ = dict(x=rnd(rng, lead + (n_in,), dt), weight=rnd(rng, (n_out, n_in), dt))
    if backward:
        kw_ = dict(grad_out=rnd(rng, lead + (n_out,), dt), **kw_,
                   output_mask=tuple(draw(st.lists(st.booleans(), min_size=3, max_size=3))))
    elif draw(st.booleans()):
        kw_["bias"] = rnd(rng, (n_out,), dt)
    return Call(draw(laid_out(kw_)), dtype=dt)


def linear_in_features(draw, call):
    kw = dict(call.kw)
    x = np.asarray(kw["x"])
    kw["x"] = np.concatenate([x, np.zeros(x.shape[:-1] + (1,), x.dtype)], axis=-1)
    return kw, ValueError, ("x", "weight")


def linear_scalar_x(draw, call):
    kw = dict(call.kw)
    kw["x"] = np.ones((), call.dtype)
    return kw, ValueError, ("x",)


LINEAR_SCHEMA = dict(x=Arr(), weight=Arr((2,)), bias=Arr((1,), optional=True))
LINEAR_BWD_SCHEMA = dict(grad_out=Arr(), x=Arr(), weight=Arr((2,)), output_mask=Mask())
LINEAR_INVALID = [("in_features", linear_in_features), ("0-d x", linear_scalar_x)]


# ------------------------------------------------------------------------------ the table

def _first(r):
    return r[0]


SPECS = [
    Spec("conv2d", F.conv2d, lambda: conv_call(fused=True), conv_fused_ref,
         dict(CONV_SCHEMA, activation=Activation(), residual=Arr((4,), optional=True), negative_slope=Float()),
         CONV_INVALID + [("bias length", bad_bias), ("residual shape", bad_residual)]),
    Spec("conv2d_backward", F.conv2d_backward, lambda: conv_call(backward=True), R.conv2d_backward,
         CONV_BWD_SCHEMA, CONV_INVALID + [("grad_out shape", bad_grad_out_shape)]),
    Spec("conv_transpose2d", F.conv_transpose2d, conv_t_call, R.conv_transpose2d, CONV_T_SCHEMA,
         CONV_T_INVALID + [("bias length", bad_bias)]),
    Spec("conv_transpose2d_backward", F.conv_transpose2d_backward, lambda: conv_t_call(backward=True),
         R.conv_transpose2d_backward, CONV_T_BWD_SCHEMA, CONV_T_INVALID + [("grad_out shape", bad_grad_out_shape)]),
    Spec("max_pool2d", F.max_pool2d, max_pool_call, R.max_pool2d, MAX_POOL_SCHEMA,
         POOL_INVALID + [("empty plane", pool_empty_plane)]),
    Spec("max_pool2d_backward", F.max_pool2d_backward, max_pool_bwd_call, R.max_pool2d_backward,
         MAX_POOL_BWD_SCHEMA, [("x_shape channels", pool_bad_x_shape_channels),
                               ("indices out of range", pool_bad_indices), ("indices shape", pool_indices_shape),
                               ("grad_out shape", bad_grad_out_shape)]),
    Spec("avg_pool2d", F.avg_pool2d, avg_pool_call, R.avg_pool2d, AVG_POOL_SCHEMA,
         POOL_INVALID + [("empty plane", pool_empty_plane)]),
    Spec("avg_pool2d_backward", F.avg_pool2d_backward, lambda: avg_pool_call(backward=True),
         R.avg_pool2d_backward, AVG_POOL_BWD_SCHEMA,
         POOL_INVALID + [("x_shape channels", pool_bad_x_shape_channels), ("grad_out shape", bad_grad_out_shape)]),
    Spec("adaptive_avg_pool2d", F.adaptive_avg_pool2d, adaptive_call, R.adaptive_avg_pool2d,
         dict(x=Arr((3, 4))), [("output_size", adaptive_bad_size), ("empty plane", pool_empty_plane)]),
    Spec("adaptive_avg_pool2d_backward", F.adaptive_avg_pool2d_backward, lambda: adaptive_call(backward=True),
         R.adaptive_avg_pool2d_backward, dict(grad_out=Arr((3, 4)), x_shape=Shape()),
         [("x_shape channels", pool_bad_x_shape_channels), ("zero output size", adaptive_zero_out)]),
    Spec("global_avg_pool2d", F.global_avg_pool2d, lambda: adaptive_call(glob=True), R.global_avg_pool2d,
         dict(x=Arr((3, 4))), [("empty plane", pool_empty_plane)]),
    Spec("global_avg_pool2d_backward", F.global_avg_pool2d_backward,
         lambda: adaptive_call(backward=True, glob=True), R.global_avg_pool2d_backward,
         dict(grad_out=Arr((3, 4)), x_shape=Shape()),
         [("x_shape channels", pool_bad_x_shape_channels), ("grad_out shape", bad_grad_out_shape)]),
    Spec("batch_norm", F.batch_norm, bn_call, lambda **kw: (bn_ref(**kw)[0][0],) + bn_ref(**kw)[1:],
         BN_SCHEMA, BN_INVALID),
    Spec("batch_norm_forward", F.batch_norm_forward, bn_call,
         lambda **kw: bn_ref(**kw)[0] + bn_ref(**kw)[1:], BN_SCHEMA, BN_INVALID),
    Spec("batch_norm_backward", F.batch_norm_backward, bn_bwd_call, R.batch_norm_backward, BN_BWD_SCHEMA,
         [("missing stats", bn_bwd_missing_stats), ("stat length", bn_bwd_stat_len),
          ("grad_out shape", bad_grad_out_shape)],
         floor=lambda kw: amax(kw["grad_out"], kw["weight"], kw["save_invstd"])),
    Spec("softmax", F.softmax, softmax_call, R.softmax, SOFTMAX_SCHEMA, [("axis", softmax_bad_axis)]),
    Spec("log_softmax", F.log_softmax, softmax_call, R.log_softmax, SOFTMAX_SCHEMA, [("axis", softmax_bad_axis)]),
    Spec("softmax_backward", F.softmax_backward, lambda: softmax_call(backward=True), R.softmax_backward,
         SOFTMAX_BWD_SCHEMA, [("axis", softmax_bad_axis), ("grad_out shape", bad_grad_out_shape)],
         floor=lambda kw: amax(kw["grad_out"], kw["y"])),
    Spec("log_softmax_backward", F.log_softmax_backward, lambda: softmax_call(backward=True, log=True),
         R.log_softmax_backward, SOFTMAX_BWD_SCHEMA,
         [("axis", softmax_bad_axis), ("grad_out shape", bad_grad_out_shape)],
         floor=lambda kw: amax(kw["grad_out"])),
    Spec("cross_entropy", F.cross_entropy, ce_call, R.cross_entropy, CE_SCHEMA, CE_INVALID, floor=ce_floor),
    Spec("cross_entropy_forward", F.cross_entropy_forward, ce_call, R.cross_entropy, CE_SCHEMA, CE_INVALID,
         out=_first, floor=ce_floor),
    Spec("cross_entropy_backward", F.cross_entropy_backward, lambda: ce_call(backward=True), ce_ref_backward,
         CE_SCHEMA, CE_INVALID + [("grad_loss shape", ce_grad_shape), ("grad_loss type", ce_grad_bool),
                                  ("saved", ce_saved_shape)],
         floor=lambda kw: amax(kw["grad_loss"], kw["weight"], ce_target_mass(kw))),
    Spec("nms", O.nms, nms_call, R.nms, NMS_SCHEMA, [("lengths", nms_len), ("box columns", nms_box_cols)]),
    Spec("batched_nms", O.batched_nms, lambda: nms_call(batched=True), R.batched_nms, BNMS_SCHEMA,
         [("lengths", nms_len), ("box columns", nms_box_cols), ("idxs None", nms_no_idxs)]),
    Spec("box_iou", O.box_iou, box_iou_call, R.box_iou, BOX_IOU_SCHEMA, [("box columns", nms_box_cols)]),
    Spec("roi_pool", O.roi_pool, roi_call, R.roi_pool, ROI_SCHEMA, ROI_INVALID),
    Spec("roi_pool_backward", O.roi_pool_backward, lambda: roi_call(backward=True), R.roi_pool_backward,
         dict(ROI_BWD_SCHEMA, indices=Arr((4,), index=True)),
         ROI_BWD_INVALID + [("indices out of range", roi_bad_indices), ("indices shape", roi_indices_shape)]),
    Spec("roi_align", O.roi_align, lambda: roi_call("align"), R.roi_align, dict(ROI_SCHEMA, **ROI_ALIGN_EXTRA),
         ROI_INVALID),
    Spec("roi_align_backward", O.roi_align_backward, lambda: roi_call("align", backward=True),
         R.roi_align_backward, dict(ROI_BWD_SCHEMA, **ROI_ALIGN_EXTRA), ROI_BWD_INVALID),
    Spec("deform_conv2d", O.deform_conv2d, deform_call, R.deform_conv2d, DEFORM_SCHEMA,
         DEFORM_INVALID + [("bias length", deform_bad_bias)], floor=deform_floor),
    Spec("deform_conv2d_backward", O.deform_conv2d_backward, lambda: deform_call(backward=True),
         deform_ref_backward, DEFORM_BWD_SCHEMA, DEFORM_INVALID + [("grad_out shape", bad_grad_out_shape)],
         floor=deform_floor),
    Spec("anchor_boxes", O.anchor_boxes, anchor_boxes_call,  # (the reference takes sequences only)
         lambda sizes, **kw: R.anchor_boxes(sizes=np.atleast_1d(sizes).tolist(), **kw), ANCHOR_SCHEMA,
         [("xp", anchors_no_xp), ("overflow", anchors_overflow)]),
    Spec("match_anchors", O.match_anchors, match_anchors_call, R.match_anchors, MATCH_SCHEMA,
         [("box columns", coder_cols)]),
    Spec("encode_boxes", O.encode_boxes, coder_call, R.encode_boxes, ENCODE_SCHEMA,
         [("lengths", coder_len), ("box columns", coder_cols)]),
    Spec("decode_boxes", O.decode_boxes, lambda: coder_call(decode=True), R.decode_boxes, DECODE_SCHEMA,
         [("lengths", coder_len), ("box columns", coder_cols)]),
    Spec("soft_nms", O.soft_nms, soft_nms_call, R.soft_nms, SOFT_NMS_SCHEMA,
         [("lengths", nms_len), ("box columns", nms_box_cols), ("sigma zero", soft_nms_zero_sigma)]),
    Spec("interpolate", F.interpolate, interp_call, R.interpolate, INTERP_SCHEMA, INTERP_INVALID),
    Spec("interpolate_backward", F.interpolate_backward, lambda: interp_call(backward=True),
         R.interpolate_backward, INTERP_BWD_SCHEMA, INTERP_INVALID + [("grad_out shape", bad_grad_out_shape)]),
    Spec("local_response_norm", F.local_response_norm, lrn_call, R.local_response_norm, LRN_SCHEMA,
         [("rank < 3", lrn_low_rank)]),
    Spec("local_response_norm_backward", F.local_response_norm_backward, lambda: lrn_call(backward=True),
         R.local_response_norm_backward, LRN_BWD_SCHEMA,
         [("rank < 3", lrn_low_rank), ("grad_out shape", bad_grad_out_shape)],
         floor=lambda kw: amax(kw["grad_out"])),
    *act_specs(),
    # sums cancel: float32 results are accurate relative to the magnitude of their terms
    Spec("linear", F.linear, linear_call, R.linear, LINEAR_SCHEMA,
         LINEAR_INVALID + [("bias length", bad_bias)],
         floor=lambda kw: max(amax(kw["x"], kw["weight"]), amax(kw.get("bias")))),
    Spec("linear_backward", F.linear_backward, lambda: linear_call(backward=True), R.linear_backward,
         LINEAR_BWD_SCHEMA, LINEAR_INVALID + [("grad_out shape", bad_grad_out_shape)],
         floor=lambda kw: amax(kw["grad_out"]) * max(amax(kw["x"]), amax(kw["weight"]))),
]


# ------------------------------------------------------------------------------ the tests

def test_table_covers_public_api():
    covered = {s.name for s in SPECS}
    missing = []
    for mod, names in ((F, F.__all__), (O, O.__all__)):
        for n in names:
            f = getattr(mod, n)
            if (n in covered or n in NOT_ARRAY_FUNCTIONS or isinstance(f, type)  # layer classes wrap the functions
                    or getattr(f, "__module__", "") in PENDING):
                continue
            missing.append(f"{mod.__name__}.{n}")
    assert not missing, f"public functions without a fuzz spec (add one entry to SPECS): {missing}"
    assert all(getattr(F, s.name, None) is s.fn or getattr(O, s.name, None) is s.fn for s in SPECS)


def _ref_kwargs(kw, inplace):
    return {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@FUZZ
@given(data=st.data())
def test_valid(xp, spec, data):
    call = data.draw(spec.valid(), label="call")
    kw = {k: to_xp(v, xp) for k, v in call.kw.items()}
    want = spec.ref(**_ref_kwargs(call.kw, call.inplace))  # first: pydl updates in-place buffers
    snap = snapshot(kw)
    got = spec.out(spec.fn(**kw))
    assert_unmodified(kw, snap, skip=call.inplace)
    floor = TOL_FLOOR * spec.floor(call.kw)
    if spec.name.startswith("batch_norm") and spec.name != "batch_norm_backward":
        want, rm, rv = want[:-2], want[-2], want[-1]
        for name, w in (("running_mean", rm), ("running_var", rv)):
            if name in call.inplace:
                check_out(kw[name], w, call.dtype, spec.factor, what=name, floor=floor)
    got, want = outputs(got), outputs(want)
    assert len(got) == len(want), f"{len(got)} outputs, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        check_out(g, w, call.dtype, spec.factor, what=f"output {i}", floor=floor)


# Every kind of array a pipeline hands over (issue: unpickled arrays carry dtype objects equal
# to, not the same as, NumPy's; the bindings compared them by identity and raised).
ARRAY_KINDS = ("pickled", "npload", "memmap", "readonly", "unaligned", "fortran", "strided")
KIND_EXAMPLES = 6


def array_kind(a, kind, tmp):
    """A with the same values, as the array kind names (inputs only: never written)."""
    import io
    import pickle
    a = np.asarray(a)
    if kind == "pickled":
        return pickle.loads(pickle.dumps(a))
    if kind == "npload":
        buf = io.BytesIO()
        np.save(buf, a)
        buf.seek(0)
        return np.load(buf)
    if kind == "memmap":
        if a.size == 0:  # an empty file cannot be mapped: np.load gives a plain array then
            return a
        path = os.path.join(tmp, f"a{len(os.listdir(tmp))}.npy")
        np.save(path, a)
        return np.load(path, mmap_mode="r")
    return layout(np.array(a, copy=True), kind)


def plain(v):
    """A fresh C-contiguous native array with the values of v (lists of arrays entry-wise)."""
    if _array_list(v):
        return [plain(a) for a in v]
    if isinstance(v, np.ndarray):
        return np.array(v, copy=True, order="C")
    return v


@pytest.mark.parametrize("kind", ARRAY_KINDS)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@settings(FUZZ, max_examples=KIND_EXAMPLES)
@given(data=st.data())
def test_array_kinds(spec, kind, data, tmp_path_factory):
    """Every public function gives the result it gives for plain arrays when its input arrays are
    unpickled, np.load-ed, read-only memory maps, read-only, unaligned, Fortran-ordered or strided;
    they stay unmodified. In-place buffers stay plain (rejecting read-only ones is test_invalid's)."""
    call = data.draw(spec.valid(), label="call")
    tmp = str(tmp_path_factory.mktemp("kinds"))
    base = {k: plain(v) for k, v in call.kw.items()}
    kw = {k: (v if k in call.inplace else
              [array_kind(a, kind, tmp) for a in v] if _array_list(v) else
              array_kind(v, kind, tmp) if isinstance(v, np.ndarray) and v.dtype.kind != "O" else v)
          for k, v in base.items()}
    kw.update({k: plain(base[k]) for k in call.inplace})
    want = outputs(spec.out(spec.fn(**{k: plain(v) for k, v in base.items()})))
    snap = snapshot(kw)
    got = outputs(spec.out(spec.fn(**kw)))
    assert_unmodified(kw, snap, skip=call.inplace)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None:
            assert g is None, f"output {i}"
            continue
        check_out(g, w, np.asarray(w).dtype if np.asarray(w).dtype.kind == "f" else call.dtype,
                  what=f"output {i} ({kind})")


@st.composite
def invalid_call(draw, spec):
    call = draw(spec.valid(), label="valid call")
    generic = [n for n in spec.schema if n in call.kw or getattr(spec.schema[n], "optional", False) is False]
    pick = draw(st.sampled_from(["generic"] * 2 + ["specific"] if spec.invalid else ["generic"]))
    if pick == "specific":
        label, f = draw(st.sampled_from(spec.invalid))
        kw, exc, names = f(draw, call)
        return label, kw, exc, names
    name = draw(st.sampled_from(generic))
    value = call.kw.get(name)
    muts = spec.schema[name].mutations(value, call)
    assume(muts)
    label, bad, exc = draw(st.sampled_from(muts))
    return f"{name}: {label}", dict(call.kw, **{name: bad}), exc, (name,)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@FUZZ
@given(data=st.data())
def test_invalid(xp, spec, data):
    label, kw, exc, names = data.draw(invalid_call(spec), label="invalid call")
    assume(xp is np or label not in CPU_ONLY)
    kw = {k: to_xp(v, xp) for k, v in kw.items()}
    snap = snapshot(kw)
    with pytest.raises((TypeError, ValueError)) as info:
        spec.fn(**kw)
    e = info.value
    assert isinstance(e, exc), f"{label}: expected {exc}, got {type(e).__name__}: {e}"
    msg = str(e)
    assert msg.strip(), f"{label}: empty message"
    assert any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", msg) for n in names), \
        f"{label}: message does not name {names}: {msg!r}"
    assert_unmodified(kw, snap)


# ------------------------------------------------------------------------------ found by this suite
# Bugs it found in the roi ops (fixed): kept as plain regression tests.

@pytest.mark.parametrize("value", ["yes", None, 1, 0.0])
def test_roi_pool_return_indices_must_be_bool(value):
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(TypeError, match="return_indices"):
        O.roi_pool(x, np.array([[0.0, 0, 0, 2, 2]]), 2, return_indices=value)


def test_roi_pool_backward_indices_none():
    with pytest.raises(TypeError, match="indices"):
        O.roi_pool_backward(np.zeros((1, 1, 1, 1)), None, np.array([[0.0, 0, 0, 2, 2]]), (1, 1, 4, 4), 1)


_ROI_ALIGN_SR = """
import sys, numpy as np, pydl.ops as O
x = np.zeros((1, 1, 4, 4))
b = np.array([[0.0, 0, 0, 3, 3]])
try:
    if sys.argv[2] == "forward":
        O.roi_align(x, b, 1, sampling_ratio=int(sys.argv[1]))
    else:
        O.roi_align_backward(np.ones((1, 1, 1, 1)), b, x.shape, 1, sampling_ratio=int(sys.argv[1]))
except ValueError as e:
    sys.exit(0 if "sampling_ratio" in str(e) else 3)
except BaseException:
    sys.exit(4)
sys.exit(5)
"""


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("sr", [2**62, 2**31, 10**5])
def test_roi_align_huge_sampling_ratio_is_value_error(sr, direction):
    import subprocess
    import sys
    # a separate process: the crash must not take the test run with it
    r = subprocess.run([sys.executable, "-c", _ROI_ALIGN_SR, str(sr), direction], timeout=60,
                       capture_output=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 0, f"sampling_ratio={sr}: exit status {r.returncode}, {r.stderr.decode()[-300:]}"
