"""The runtime's general tensor ops: what common CNNs and transformers use besides their layers.

Every op is ``fn(model, op, *inputs) -> array`` like those of :mod:`onebit.runtime.ops`; a
constant operand is a tensor of the file (role ``other``, ``weight``, ...). Shapes and axes are
those of the runtime's values, which carry the batch in axis 0: the packer
(:mod:`onebit.packer`) maps torch's NCHW axes to the NHWC layout of values that convolutions made,
so nothing here knows about layouts.

=============  =====================================================================================
op             attributes -> meaning
=============  =====================================================================================
transpose      ``perm`` (axis 0 stays 0): ``np.transpose``
reshape        ``shape``, the full shape with at most one ``-1`` (the batch-dependent axis)
expand         ``shape``, the full shape, ``-1`` keeps an axis: ``np.broadcast_to``
binary         ``fn`` (add sub mul div pow maximum minimum; eq ne lt le gt ge give 0/1, the
               runtime's booleans): two inputs, or one input and the tensor ``other``
               (``other_first``: it is the left operand); numpy broadcasting
unary          ``fn`` (relu gelu gelu_tanh silu sigmoid tanh hardswish hardsigmoid exp neg sqrt
               rsqrt erf abs log)
where          inputs ``cond, x, y``; any may be the tensors ``cond``, ``x``, ``y`` instead
softmax        ``axis`` (``log``: log-softmax)
layer_norm     ``axes`` (the trailing ones), ``eps``; tensors ``weight``, ``bias`` (optional)
reduce         ``fn`` (mean sum amax amin), ``axes``, ``keepdim``
cat            ``axis``; inputs in order
matmul         ``a @ b``; one input and the tensor ``other`` (``other_first``) or two inputs
attention      inputs ``q, k, v`` (and a mask): ``softmax(q k^T * scale + mask) v`` over the last two
               axes, torch's ``scaled_dot_product_attention``: ``scale``, ``causal`` (top-left
               aligned), ``mask`` ``"add"`` (a float mask added) or ``"bool"`` (0/1: 1 attends), the
               4th input or the tensor ``mask``; a fully masked row gives zeros
pool2d         NHWC: ``kind`` (max avg), ``kernel_size``, ``stride``, ``padding``,
               ``count_include_pad`` (avg), ``extra_padding`` (torch's ceil mode: rows and columns
               added at the far edge, never counted)
embedding      integer ids -> rows of ``weight``, or of ``alpha * wb`` from ``bits``, ``alpha``
               (``dim``: the row length)
cast           ``dtype`` (float32 int64)
constant       the tensor ``value``; with an input, broadcast to that input's batch
=============  =====================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from onebit import kernels
from onebit.runtime.ops import Array, ModelState, Op
from onebit.shapes import conv_output_size

__all__ = ["BINARY", "GENERIC_OPS", "UNARY"]

_F32 = np.float32


def _erf(x: Array) -> Array:
    return kernels.erf(x).astype(x.dtype, copy=False)


def _gelu(x: Array) -> Array:
    return kernels.gelu(x).astype(x.dtype, copy=False)


def _gelu_tanh(x: Array) -> Array:
    c = math.sqrt(2.0 / math.pi)
    return (0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x * x * x)))).astype(x.dtype, copy=False)


def _sigmoid(x: Array) -> Array:
    return (0.5 * (np.tanh(0.5 * x) + 1.0)).astype(x.dtype, copy=False)  # overflow-free


UNARY: dict[str, Callable[[Array], Array]] = {
    "relu": lambda x: np.maximum(x, x.dtype.type(0)),
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "silu": lambda x: x * _sigmoid(x),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "hardswish": lambda x: x * np.clip(x + 3, 0, 6) / 6,
    "hardsigmoid": lambda x: np.clip(x + 3, 0, 6) / 6,
    "exp": np.exp,
    "neg": np.negative,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1.0 / np.sqrt(x),
    "erf": _erf,
    "abs": np.abs,
    "log": np.log,
}

BINARY: dict[str, Callable[[Array, Array], Array]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.true_divide,
    "pow": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    # comparisons give 0/1 float32: a captured graph's booleans (masks) are 0/1 values
    "eq": lambda a, b: np.equal(a, b).astype(_F32),
    "ne": lambda a, b: np.not_equal(a, b).astype(_F32),
    "lt": lambda a, b: np.less(a, b).astype(_F32),
    "le": lambda a, b: np.less_equal(a, b).astype(_F32),
    "gt": lambda a, b: np.greater(a, b).astype(_F32),
    "ge": lambda a, b: np.greater_equal(a, b).astype(_F32),
}


def _float(x: Array) -> Array:
    return x if x.dtype != np.float64 else x.astype(_F32)


def _operands(m: ModelState, op: Op, inputs: tuple[Array, ...]) -> tuple[Array, Array]:
    if len(inputs) == 2:
        return inputs[0], inputs[1]
    other = m.tensors[op.tensors["other"]]
    return (other, inputs[0]) if op.attrs.get("other_first") else (inputs[0], other)


def _binary(m: ModelState, op: Op, *inputs: Array) -> Array:
    a, b = _operands(m, op, inputs)
    return _float(BINARY[op.attrs["fn"]](a, b))


def _matmul(m: ModelState, op: Op, *inputs: Array) -> Array:
    a, b = _operands(m, op, inputs)
    return _float(np.matmul(a, b))


def _where(m: ModelState, op: Op, *inputs: Array) -> Array:
    it = iter(inputs)
    args = [m.tensors[op.tensors[r]] if r in op.tensors else next(it) for r in ("cond", "x", "y")]
    return _float(np.where(args[0].astype(bool), args[1], args[2]))


def _softmax(m: ModelState, op: Op, x: Array) -> Array:
    axis = op.attrs["axis"] % x.ndim
    last = axis == x.ndim - 1
    xa = np.ascontiguousarray(x if last else np.moveaxis(x, axis, -1), dtype=_F32)
    y = kernels.softmax(xa, log=bool(op.attrs.get("log")))
    return y if last else np.moveaxis(y, -1, axis)


def _layer_norm(m: ModelState, op: Op, x: Array) -> Array:
    axes = tuple(op.attrs["axes"])  # the trailing ones (the file's schema checks it)
    n = math.prod(x.shape[a] for a in axes)
    xa = np.ascontiguousarray(x, dtype=_F32).reshape(-1, n)
    w = m.tensors[op.tensors["weight"]] if "weight" in op.tensors else None
    b = m.tensors[op.tensors["bias"]] if "bias" in op.tensors else None
    return kernels.layer_norm(xa, w, b, op.attrs["eps"]).reshape(x.shape)


_ATTENTION_CHUNK = 1 << 18  # bytes of scores per step: they stay in L2 from matmul to softmax


def _attention(m: ModelState, op: Op, q: Array, k: Array, v: Array, *mask: Array) -> Array:
    """``softmax(q k^T * scale + mask) v`` over the last two axes (torch's
    ``scaled_dot_product_attention``; fully masked rows give zeros, as its math version). Runs
    over slices of the batch so that each slice's scores are still in cache for the softmax
    and the second product."""
    a = op.attrs
    kind = a.get("mask")
    mk = (mask[0] if mask else m.tensors[op.tensors["mask"]]) if kind is not None else None
    lq, lk = q.shape[-2], k.shape[-2]
    causal = np.triu(np.ones((lq, lk), dtype=bool), 1) if a.get("causal") else None
    shape = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    out = np.empty((*shape, lq, v.shape[-1]), dtype=_F32)
    per = math.prod(shape[1:]) * lq * lk * 4
    step = max(1, _ATTENTION_CHUNK // max(per, 1))
    qs = q * _F32(a["scale"])  # scaled on the smaller operand
    kt = np.swapaxes(k, -1, -2)
    for i in range(0, shape[0], step):
        sl = slice(i, i + step)

        def pick(t: Array, sl: slice = sl) -> Array:
            return t if t.shape[0] == 1 else t[sl]  # batch 1: broadcast over the batch

        s = np.matmul(pick(qs), pick(kt))
        if causal is not None:
            s[..., causal] = -np.inf  # top-left aligned, as torch's is_causal
        if mk is not None:
            mi = pick(mk) if mk.ndim == s.ndim else mk
            if kind == "bool":  # the runtime's booleans: 1 attends, 0 does not
                s = np.where(mi != 0, s, _F32(-np.inf))
            else:
                s += mi
        s = np.ascontiguousarray(s, dtype=_F32)
        kernels.softmax(s, safe=True, out=s)
        np.matmul(s, pick(v), out=out[sl])
    return out


def _reduce(m: ModelState, op: Op, x: Array) -> Array:
    fn = {"mean": np.mean, "sum": np.sum, "amax": np.max, "amin": np.min}[op.attrs["fn"]]
    return _float(np.asarray(fn(x, axis=tuple(op.attrs["axes"]), keepdims=op.attrs["keepdim"])))


def _reshape(m: ModelState, op: Op, x: Array) -> Array:
    return np.ascontiguousarray(x).reshape(op.attrs["shape"])


def _expand(m: ModelState, op: Op, x: Array) -> Array:
    shape = [x.shape[i - (len(op.attrs["shape"]) - x.ndim)] if s == -1 else s
             for i, s in enumerate(op.attrs["shape"])]  # fmt: skip
    return np.broadcast_to(x, shape)


def _pool2d(m: ModelState, op: Op, x: Array) -> Array:
    """NHWC max or average pooling with padding (average: zeros counted unless
    ``count_include_pad`` is false)."""
    a = op.attrs
    (kh, kw), (sh, sw), (ph, pw) = a["kernel_size"], a["stride"], a["padding"]
    _, h, w, _ = x.shape
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    fill = -np.inf if a["kind"] == "max" else 0.0
    eh, ew = a.get("extra_padding", (0, 0))  # ceil mode: the far edge, never counted
    ho, wo = conv_output_size(h + eh, kh, sh, ph), conv_output_size(w + ew, kw, sw, pw)
    pads = ((0, 0), (ph, ph + eh), (pw, pw + ew), (0, 0))
    xp = np.pad(x, pads, constant_values=fill) if ph or pw or eh or ew else x
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))
    win = win[:, : (ho - 1) * sh + 1 : sh, : (wo - 1) * sw + 1 : sw]  # (N, Ho, Wo, C, kh, kw)
    if a["kind"] == "max":
        return np.ascontiguousarray(win.max(axis=(-2, -1)))
    total = win.sum(axis=(-2, -1), dtype=_F32)
    if (a.get("count_include_pad", True) or not (ph or pw)) and not (eh or ew):
        return total / np.float32(kh * kw)
    ones = np.ones((1, h, w, 1), _F32)
    if a.get("count_include_pad", True):  # zeros padding counts, the ceil-mode edge does not
        ones = np.pad(ones, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=1.0)
        ph = pw = 0
    ones = np.pad(ones, ((0, 0), (ph, ph + eh), (pw, pw + ew), (0, 0)))
    cnt = np.lib.stride_tricks.sliding_window_view(ones, (kh, kw), axis=(1, 2))
    cnt = cnt[:, : (ho - 1) * sh + 1 : sh, : (wo - 1) * sw + 1 : sw].sum(axis=(-2, -1))
    return total / cnt


def _embedding(m: ModelState, op: Op, ids: Array) -> Array:
    t = m.tensors
    idx = ids.astype(np.int64, copy=False)
    if "weight" in op.tensors:
        return t[op.tensors["weight"]][idx]
    bits, alpha = t[op.tensors["bits"]], t[op.tensors["alpha"]]
    rows = kernels.unpack_bits(bits[idx.reshape(-1)], op.attrs["dim"]).astype(_F32)
    rows *= alpha[idx.reshape(-1), None]
    return rows.reshape(*idx.shape, op.attrs["dim"])


def _cast(m: ModelState, op: Op, x: Array) -> Array:
    return x.astype({"float32": _F32, "int64": np.int64}[op.attrs["dtype"]])


def _constant(m: ModelState, op: Op, *like: Array) -> Array:
    value = m.tensors[op.tensors["value"]]
    if not like:
        return value
    return np.broadcast_to(value, (like[0].shape[0], *value.shape[1:]))


GENERIC_OPS: dict[str, Callable[..., Array]] = {
    "transpose": lambda m, op, x: np.transpose(x, op.attrs["perm"]),
    "reshape": _reshape,
    "expand": _expand,
    "binary": _binary,
    "unary": lambda m, op, x: _float(UNARY[op.attrs["fn"]](x)),
    "where": _where,
    "softmax": _softmax,
    "layer_norm": _layer_norm,
    "reduce": _reduce,
    "cat": lambda m, op, *xs: np.concatenate(xs, axis=op.attrs["axis"]),
    "matmul": _matmul,
    "attention": _attention,
    "pool2d": _pool2d,
    "embedding": _embedding,
    "cast": _cast,
    "constant": _constant,
}
"""op kind -> implementation (module doc)."""


def describe(op: Op) -> dict[str, Any]:
    """A short description of a generic op for per-op profiles (its kind and function)."""
    return {"op": op.op, **({"fn": op.attrs["fn"]} if "fn" in op.attrs else {})}
