"""Pack any trained binarized torch model into a ``onebit.runtime.PackedModel`` (1 bit per weight).

``pack(model, example_inputs)`` captures the model with ``torch.export`` (ATen core IR) after
:func:`onebit.ops.pack_` has put a packed module in place of every binary layer, so the captured
graph holds one ``onebit::linear`` / ``onebit::conv2d`` node per binary layer with its bits,
scales and thresholds, and ordinary ATen ops for the rest. Each node becomes runtime ops:

- binary layers keep their bits; a BatchNorm whose input is a layer read by nothing else folds
  into it (``alpha, beta`` of a binary layer, ``weight, bias`` of a float one:
  ``s * y + t`` with ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``); other BatchNorms
  become per-channel affine ops;
- float convolutions and linear layers stay float32; the rest maps to the runtime's general ops
  (:mod:`onebit.runtime.generic`): views, permutes, elementwise math, reductions, softmax,
  layer norm, pooling, padding, slicing, concatenation, matmuls, embeddings;
- anything that depends on no input (masks, position ids) is computed here, once, and stored;
- convolutions run in NHWC: values they make stay NHWC through layout-free ops, and the packer
  maps axes (a channel concatenation, a spatial mean) or inserts one transpose where an op needs
  torch's NCHW order.

Residual connections are ordinary adds; nothing in the file is specific to an architecture. The
packed model computes what ``model.eval()`` computes, up to float rounding (and the signs of
values within that rounding of a threshold).
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from onebit.errors import OnebitError
from onebit.ops import pack_
from onebit.probe import first_tensor
from onebit.runtime import Op, PackedModel

__all__ = ["GRAPH_LAYOUT", "fuse_thresholds", "pack"]

GRAPH_LAYOUT = "graph"
"""``input.layout`` of files packed from a captured graph: the input is passed as the model
takes it (NCHW images, integer token ids), and the graph says every layout change itself."""

aten = torch.ops.aten
_TO_NHWC, _TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]
_NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}  # NCHW axis -> where it lives in NHWC


@dataclass
class _V:
    """A runtime value: its name, torch's (logical) shape with -1 for batch-dependent axes,
    whether a 4-D value is stored NHWC, and the op that made it."""

    name: str
    shape: tuple[int, ...]
    nhwc: bool = False
    op: Op | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)


class _Sym:
    """A symbolic size (the batch, or what depends on it): ``expr`` in the batch symbol(s)."""

    def __init__(self, expr: Any = None) -> None:
        self.expr = expr

    def at(self, batch: int) -> Any:
        """The size for a batch of ``batch`` examples."""
        if self.expr is None:
            return batch
        value = self.expr.subs({sym: batch for sym in self.expr.free_symbols})
        return int(value) if value.is_integer else float(value)


@dataclass
class _Moved:
    """``base.permute(dims)`` with the batch axis moved from the front (``q, k, v =
    x.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)``): runtime values keep the batch first, so
    this stays a view of ``base`` until slices, selects and squeezes bring the batch back to
    axis 0 (:func:`_on_moved`); any other use of it is refused."""

    base: _V
    dims: list[int]
    node: Any

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.base.shape[d] for d in self.dims)


@dataclass
class _Pair:
    """A constant that depends on the batch size: its values at batch 1 and at batch 2. Used
    where it meets the input only if it is the same for every example (:func:`_collapse`)."""

    one: Any
    two: Any


def _at(a: Any, which: int) -> Any:
    """``a`` with its symbolic sizes and batch-dependent constants at batch ``which`` (1, 2)."""
    if isinstance(a, _Sym):
        return a.at(which)
    if isinstance(a, _Pair):
        return a.one if which == 1 else a.two
    if isinstance(a, list | tuple):
        return type(a)(_at(x, which) for x in a)
    return a


def _collapse(p: _Pair, node: Any) -> Any:
    """The batch-1 value of ``p`` if it is the same for every example (a mask, position ids);
    else one sentence: a constant of the file cannot vary with the batch."""
    one, two = p.one, p.two
    same = False
    if isinstance(one, torch.Tensor) and isinstance(two, torch.Tensor):
        try:
            same = bool(torch.equal(one.expand(two.shape), two))
        except RuntimeError:  # not broadcastable: sizes that grow with the batch
            same = False
    else:
        same = one == two
    if not same:
        raise OnebitError(
            f"cannot pack {node.target}{_source(node)}: it reads a value that differs from example "
            "to example without coming from the input (a range over the batch); the runtime's "
            "constants are the same for every example."
        )
    return one


def _shape(node: Any) -> tuple[int, ...]:
    val = node.meta.get("val")
    if isinstance(val, list | tuple) and val:  # a tuple-valued op (pooling with indices)
        val = val[0]
    if val is None or not hasattr(val, "shape"):
        raise OnebitError(f"cannot pack node {node.name}: its shape is unknown.")
    return tuple(int(d) if isinstance(d, int) else -1 for d in val.shape)


def _np32(t: Any) -> np.ndarray:
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return np.ascontiguousarray(a.astype(np.float32) if a.dtype != np.bool_ else a)


class _Translator:
    """Walks an ``ExportedProgram``'s graph and emits runtime ops (module doc)."""

    def __init__(self, ep: Any) -> None:
        self.ep = ep
        self.ops: list[Op] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.env: dict[str, Any] = {}
        self.users = {n.name: len(n.users) for n in ep.graph.nodes}
        self.counter = 0

    # -- emitting --------------------------------------------------------------------------

    def emit(self, kind: str, inputs: Sequence[_V], shape: tuple[int, ...], *, nhwc: bool = False,
             attrs: dict[str, Any] | None = None,
             tensors: Mapping[str, np.ndarray] | None = None, name: str = "") -> _V:  # fmt: skip
        self.counter += 1
        name = f"{name or kind}_{self.counter}"
        roles = {}
        for role, arr in (tensors or {}).items():
            key = f"{name}.{role}"
            self.tensors[key] = arr
            roles[role] = key
        op = Op(kind, name, [v.name for v in inputs], attrs or {}, roles)
        self.ops.append(op)
        return _V(name, shape, nhwc, op)

    def plain(self, v: _V) -> _V:
        """``v`` in torch's layout (a transpose if it is stored NHWC)."""
        if not v.nhwc:
            return v
        return self.emit("transpose", [v], v.shape, attrs={"perm": _TO_NCHW})

    def to_nhwc(self, v: _V) -> _V:
        if v.nhwc:
            return v
        if v.ndim != 4:
            raise OnebitError(f"cannot pack: a 2-D spatial op gets a {v.ndim}-D value.")
        return self.emit("transpose", [v], v.shape, nhwc=True, attrs={"perm": _TO_NHWC})

    def axis(self, v: _V, d: int) -> int:
        d %= v.ndim
        return _NHWC_AXIS[d] if v.nhwc else d

    def const_like(self, c: np.ndarray, v: _V) -> np.ndarray:
        """Constant ``c`` (torch broadcasting against ``v``'s logical shape) in ``v``'s layout."""
        if not v.nhwc or c.ndim == 0:
            return c
        c4 = c.reshape((1,) * (4 - c.ndim) + c.shape) if c.ndim < 4 else c
        return np.ascontiguousarray(c4.transpose(_TO_NHWC))

    # -- reading the graph -------------------------------------------------------------------

    def constants(self) -> dict[str, Any]:
        sig = self.ep.graph_signature
        state = {**self.ep.state_dict, **getattr(self.ep, "constants", {})}
        out: dict[str, Any] = {}
        for spec in sig.input_specs:
            target = getattr(spec, "target", None)
            if target is not None and target in state:
                out[spec.arg.name] = state[target]
        return out

    def value(self, a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            return self.env[a.name]
        if isinstance(a, list | tuple):
            return type(a)(self.value(x) for x in a)
        return a

    def run(self) -> tuple[list[Op], dict[str, np.ndarray], list[str]]:
        """The runtime ops and tensors; and the names of the model's inputs after the first
        (which is ``input``), as the graph reads them."""
        consts = self.constants()
        user_inputs = [
            s.arg.name for s in self.ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"
        ]
        names = {n: ("input" if i == 0 else n) for i, n in enumerate(user_inputs)}
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                if node.name in consts:
                    self.env[node.name] = consts[node.name]
                elif node.name in names:
                    self.env[node.name] = _V(names[node.name], _shape(node))
                else:
                    self.env[node.name] = None  # an input the model ignores (None, a flag)
            elif node.op == "call_function":
                self.env[node.name] = self.call(node)
            elif node.op == "output":
                out = first_tensor(self.value(node.args[0]))
                leaves = [x for x in _leaves(self.value(node.args[0])) if isinstance(x, _V)]
                if out is None and not leaves:
                    raise OnebitError(
                        "cannot pack: the model's output does not depend on its input."
                    )
                v = self.plain(leaves[0])
                self.ops.append(Op("output", "output", [v.name], {"graph": True}))
        return self.ops, self.tensors, user_inputs[1:]

    def call(self, node: Any) -> Any:
        args = [self.value(a) for a in node.args]
        kwargs = {k: self.value(v) for k, v in node.kwargs.items()}
        target = node.target
        if target is operator.getitem:
            if isinstance(args[0], _Pair):
                return _Pair(args[0].one[args[1]], args[0].two[args[1]])
            return args[0][args[1]]
        if target in _NO_OPS:  # shape and metadata checks of the capture
            return None
        if target is aten.sym_size.int or _is_sym(node):
            val = node.meta.get("val")
            return _Sym(getattr(getattr(val, "node", None), "expr", None))
        leaves = _leaves((args, kwargs))
        if any(isinstance(x, _Moved) for x in leaves):
            return _on_moved(self, node, target, args)
        runtime = any(isinstance(x, _V) for x in leaves)
        syms = any(isinstance(x, _Sym | _Pair) for x in leaves)
        if not runtime and not syms:  # depends on no input: computed now, stored
            with torch.no_grad():
                return target(*args, **kwargs)
        if not runtime:
            return self.batch_constant(target, args, kwargs)
        if target is aten.index.Tensor and isinstance(args[0], _V):  # before the batch ranges
            return _index(self, node, args[0], args[1])  # in its indices are collapsed
        if any(isinstance(x, _Pair) for x in leaves):  # a constant meets the input
            args = [_collapse(a, node) if isinstance(a, _Pair) else
                    [_collapse(x, node) if isinstance(x, _Pair) else x for x in a]
                    if isinstance(a, list | tuple) else a for a in args]  # fmt: skip
            kwargs = {k: _collapse(v, node) if isinstance(v, _Pair) else v
                      for k, v in kwargs.items()}  # fmt: skip
        handler = HANDLERS.get(target)
        if handler is None:
            raise OnebitError(
                f"cannot pack the operation {target}{_source(node)}: the runtime does not "
                "implement it (rewrite that line with the ops docs/deploy.md lists)."
            )
        try:
            return handler(self, node, *args, **kwargs)
        except OnebitError as e:
            if "(from " in str(e):
                raise
            raise OnebitError(f"{str(e).rstrip('.')}{_source(node)}.") from None

    def batch_constant(self, target: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """A tensor built from sizes (``ones(batch, T)``, ``arange(batch)``): made for batches
        of 1 and of 2; one value if they agree, else a :class:`_Pair` (checked where it meets
        the input: constants are stored with batch 1 and broadcast)."""
        with torch.no_grad():
            one = target(*_at(args, 1), **_at(kwargs, 1))
            two = target(*_at(args, 2), **_at(kwargs, 2))
        tensors = isinstance(one, torch.Tensor) and isinstance(two, torch.Tensor)
        if tensors and one.shape == two.shape and torch.equal(one, two):
            return one
        return _Pair(one, two)


def _source(node: Any) -> str:
    """`` (from module 'blk', file.py:5: `code`)``: where the user's code made ``node``."""
    parts = []
    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()), ("", ""))[0] if stack else ""
    if path:
        parts.append(f"module {path!r}")
    trace = (node.meta.get("stack_trace") or "").strip().splitlines()
    if len(trace) >= 2 and trace[-2].strip().startswith("File "):
        where = trace[-2].strip().split(",")
        file = where[0].removeprefix("File ").strip('"').rsplit("/", 1)[-1]
        line = where[1].strip().removeprefix("line ") if len(where) > 1 else "?"
        parts.append(f"{file}:{line}: `{trace[-1].strip()[:80]}`")
    return f" (from {', '.join(parts)})" if parts else f" (node {node.name})"


_NO_OPS = frozenset(
    op
    for name in (
        "_assert_tensor_metadata",
        "_assert_async",
        "_assert_scalar",
        "sym_constrain_range_for_size",
        "sym_constrain_range",
    )
    if hasattr(aten, name)
    for op in (getattr(aten, name).default,)
)


def _leaves(obj: Any) -> list[Any]:
    if isinstance(obj, list | tuple):
        return [y for x in obj for y in _leaves(x)]
    if isinstance(obj, dict):
        return [y for x in obj.values() for y in _leaves(x)]
    return [obj]


def _is_sym(node: Any) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.SymInt | torch.SymFloat | torch.SymBool)


# --- handlers: one per ATen op ---------------------------------------------------------------

Handler = Callable[..., Any]
HANDLERS: dict[Any, Handler] = {}


def _handles(*targets: Any) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for t in targets:
            HANDLERS[t] = fn
        return fn

    return deco


def _rows(t: _Translator, x: _V, k: int) -> tuple[_V, tuple[int, ...]]:
    """``x`` as ``(rows, k)`` for a layer over its last axis, and the leading shape to restore."""
    x = t.plain(x)
    if x.ndim == 2:
        return x, ()
    return t.emit("reshape", [x], (-1, k), attrs={"shape": [-1, k]}), x.shape[:-1]


def _unrows(t: _Translator, y: _V, lead: tuple[int, ...], n: int) -> _V:
    if not lead:
        return y
    return t.emit("reshape", [y], (*lead, n), attrs={"shape": [*lead, n]})


@_handles(torch.ops.onebit.linear.default)
def _binary_linear(t, node, x, bits, alpha, beta, tau, in_features, mode):  # type: ignore[no-untyped-def]
    n = int(bits.shape[0])
    x2, lead = _rows(t, x, in_features)
    tensors = {"bits": bits.numpy().view(np.uint64), "alpha": _np32(alpha), "beta": _np32(beta)}
    if tau is not None:
        tensors["act_shift"] = _np32(tau)
    attrs = {"mode": mode, "in_features": in_features, "out_features": n}
    y = t.emit("linear", [x2], (x2.shape[0], n), attrs=attrs, tensors=tensors, name="linear")
    return _unrows(t, y, lead, n)


@_handles(torch.ops.onebit.conv2d.default)
def _binary_conv(t, node, x, bits, alpha, beta, tau, cin, ks, st, pd, groups, mode):  # type: ignore[no-untyped-def]
    x = t.to_nhwc(x)
    tensors = {"bits": bits.numpy().view(np.uint64), "alpha": _np32(alpha), "beta": _np32(beta)}
    if tau is not None:
        tensors["act_shift"] = _np32(tau)
    attrs = {"mode": mode, "in_channels": cin, "out_channels": int(bits.shape[0]),
             "kernel_size": list(ks), "stride": list(st), "padding": list(pd)}  # fmt: skip
    if groups != 1:
        attrs["groups"] = groups
    return t.emit("conv", [x], _shape(node), nhwc=True, attrs=attrs, tensors=tensors, name="conv")


@_handles(aten.convolution.default)
def _conv(t, node, x, w, b, stride, padding, dilation, transposed, output_padding, groups):  # type: ignore[no-untyped-def]
    if isinstance(w, _V) or transposed or any(d != 1 for d in dilation):
        raise OnebitError(
            f"cannot pack {node.name}: a transposed, dilated or computed-weight conv."
        )
    one_d = w.dim() == 3
    if one_d:  # (N, C, L) as (N, C, 1, L)
        x = t.emit("reshape", [t.plain(x)], (x.shape[0], x.shape[1], 1, x.shape[2]),
                   attrs={"shape": [x.shape[0], x.shape[1], 1, x.shape[2]]})  # fmt: skip
        w, stride, padding = w.unsqueeze(2), [1, stride[0]], [0, padding[0]]
    x = t.to_nhwc(x)
    wn = w.detach().float().permute(0, 2, 3, 1).reshape(w.shape[0], -1)
    tensors = {"weight": _np32(wn)}
    if b is not None:
        tensors["bias"] = _np32(b)
    attrs = {"mode": "float", "in_channels": int(w.shape[1] * groups), "out_channels": int(w.shape[0]),
             "kernel_size": list(w.shape[2:]), "stride": list(stride), "padding": list(padding)}  # fmt: skip
    if groups != 1:
        attrs["groups"] = groups
    out = _shape(node)
    shape4 = (out[0], out[1], 1, out[2]) if one_d else out
    y = t.emit("conv", [x], shape4, nhwc=True, attrs=attrs, tensors=tensors, name="conv")
    if one_d:
        y = t.emit("reshape", [t.plain(y)], out, attrs={"shape": list(out)})
    return y


def _float_linear(t: _Translator, node: Any, x: _V, wt: Any, b: Any) -> _V:
    w = _np32(wt).T  # (N, K)
    x2, lead = _rows(t, x, w.shape[1])
    tensors = {"weight": np.ascontiguousarray(w)}
    if b is not None:
        tensors["bias"] = np.ascontiguousarray(np.broadcast_to(_np32(b), (w.shape[0],)))
    attrs = {"mode": "float", "in_features": int(w.shape[1]), "out_features": int(w.shape[0])}
    y = t.emit(
        "linear", [x2], (x2.shape[0], w.shape[0]), attrs=attrs, tensors=tensors, name="linear"
    )
    return _unrows(t, y, lead, w.shape[0])


@_handles(aten.addmm.default)
def _addmm(t, node, b, x, wt, beta=1, alpha=1):  # type: ignore[no-untyped-def]
    if isinstance(wt, _V) or isinstance(b, _V) or beta != 1 or alpha != 1:
        y = _matmul(t, node, x, wt)
        return _binary(t, node, y, b, fn="add")
    return _float_linear(t, node, x, wt, b)


@_handles(aten.mm.default, aten.bmm.default, aten.matmul.default)
def _matmul(t, node, a, b):  # type: ignore[no-untyped-def]
    if (
        isinstance(a, _V)
        and not isinstance(b, _V)
        and b.dim() == 2
        and node.target is aten.mm.default
    ):
        return _float_linear(t, node, a, b, None)
    return _binary(t, node, a, b, fn="matmul")


def _binary(t: _Translator, node: Any, a: Any, b: Any, *, fn: str) -> _V:
    kind = "matmul" if fn == "matmul" else "binary"
    attrs = {} if kind == "matmul" else {"fn": fn}
    out = _shape(node)
    if isinstance(a, _V) and isinstance(b, _V):
        if kind == "matmul" or a.ndim != b.ndim or a.ndim != 4:
            a, b = t.plain(a), t.plain(b)
        elif a.nhwc != b.nhwc:
            a, b = t.to_nhwc(a), t.to_nhwc(b)
        return t.emit(kind, [a, b], out, nhwc=a.nhwc, attrs=attrs)
    v, c, first = (a, b, False) if isinstance(a, _V) else (b, a, True)
    if kind == "matmul" or len(out) != 4:
        v = t.plain(v)
    c = _np32(c) if isinstance(c, torch.Tensor | np.ndarray) else np.asarray(c, dtype=np.float32)
    c = c.astype(np.float32, copy=False)  # a boolean constant: the runtime's 0/1 floats
    attrs["other_first"] = first
    return t.emit(kind, [v], out, nhwc=v.nhwc, attrs=attrs, tensors={"other": t.const_like(c, v)})


def _binary_handler(fn: str) -> Handler:
    def handler(t, node, a, b, alpha=1):  # type: ignore[no-untyped-def]
        if alpha != 1:
            b = b * alpha if not isinstance(b, _V) else _binary(t, node, b, alpha, fn="mul")
        return _binary(t, node, a, b, fn=fn)

    return handler


for _fn, _targets in {
    "add": (aten.add.Tensor, aten.add.Scalar),
    "sub": (aten.sub.Tensor, aten.sub.Scalar),
    "mul": (aten.mul.Tensor, aten.mul.Scalar),
    "div": (aten.div.Tensor, aten.div.Scalar),
    "pow": (aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor),
    "maximum": (aten.maximum.default,),
    "minimum": (aten.minimum.default,),
    # booleans are 0/1 floats in the runtime: comparisons make them, and/or are min/max
    "eq": (aten.eq.Tensor, aten.eq.Scalar),
    "ne": (aten.ne.Tensor, aten.ne.Scalar),
    "lt": (aten.lt.Tensor, aten.lt.Scalar),
    "le": (aten.le.Tensor, aten.le.Scalar),
    "gt": (aten.gt.Tensor, aten.gt.Scalar),
    "ge": (aten.ge.Tensor, aten.ge.Scalar),
}.items():
    _handles(*_targets)(_binary_handler(_fn))


def _is_bool(node: Any, i: int = 0) -> bool:
    a = node.args[i]
    val = a.meta.get("val") if isinstance(a, torch.fx.Node) else None
    return isinstance(val, torch.Tensor) and val.dtype == torch.bool


def _boolean(fn: str) -> Handler:
    def handler(t, node, a, b):  # type: ignore[no-untyped-def]
        if not (_is_bool(node, 0) and _is_bool(node, 1)):
            raise OnebitError(f"cannot pack {node.name}: bitwise ops on integers.")
        return _binary(t, node, a, b, fn=fn)

    return handler


_handles(aten.logical_and.default, aten.bitwise_and.Tensor)(_boolean("minimum"))
_handles(aten.logical_or.default, aten.bitwise_or.Tensor)(_boolean("maximum"))


@_handles(aten.logical_not.default, aten.bitwise_not.default)
def _not(t, node, x):  # type: ignore[no-untyped-def]
    if not _is_bool(node):
        raise OnebitError(f"cannot pack {node.name}: bitwise not of integers.")
    return _binary(t, node, 1.0, x, fn="sub")


@_handles(aten.rsub.Scalar, aten.rsub.Tensor)
def _rsub(t, node, a, b, alpha=1):  # type: ignore[no-untyped-def]
    return _binary(t, node, b, a, fn="sub")


def _unary_handler(fn: str) -> Handler:
    def handler(t, node, x, *rest, **kw):  # type: ignore[no-untyped-def]
        name = fn
        if fn == "gelu" and kw.get("approximate", rest[0] if rest else "none") == "tanh":
            name = "gelu_tanh"
        return t.emit("unary", [x], x.shape, nhwc=x.nhwc, attrs={"fn": name})

    return handler


for _fn, _target in {
    "gelu": aten.gelu.default, "silu": aten.silu.default, "sigmoid": aten.sigmoid.default,
    "tanh": aten.tanh.default, "hardswish": aten.hardswish.default,
    "hardsigmoid": aten.hardsigmoid.default, "exp": aten.exp.default, "neg": aten.neg.default,
    "sqrt": aten.sqrt.default, "rsqrt": aten.rsqrt.default, "erf": aten.erf.default,
    "abs": aten.abs.default, "log": aten.log.default,
}.items():  # fmt: skip
    _handles(_target)(_unary_handler(_fn))


@_handles(aten.relu.default)
def _relu(t, node, x):  # type: ignore[no-untyped-def]
    return t.emit("relu", [x], x.shape, nhwc=x.nhwc)


@_handles(aten.hardtanh.default, aten.clamp.default)
def _hardtanh(t, node, x, lo=-1.0, hi=1.0):  # type: ignore[no-untyped-def]
    lo = -3.0e38 if lo is None else float(lo)
    hi = 3.0e38 if hi is None else float(hi)
    return t.emit("hardtanh", [x], x.shape, nhwc=x.nhwc, attrs={"min": lo, "max": hi})


@_handles(aten._native_batch_norm_legit_no_training.default)
def _batch_norm(t, node, x, w, b, mean, var, momentum, eps):  # type: ignore[no-untyped-def]
    s = torch.rsqrt(var.double() + eps)
    if w is not None:
        s = s * w.double()
    shift = -mean.double() * s + (b.double() if b is not None else 0)
    s, shift = _np32(s), _np32(shift)
    made = x.op
    foldable = (
        made is not None
        and made.op in ("linear", "conv")
        and t.users.get(node.args[0].name) == 1
        and made.attrs.get("output") is None
    )
    if foldable:  # into the layer that made x, read by nothing else
        tens = t.tensors
        if made.attrs["mode"] == "float":
            wk = made.tensors["weight"]
            tens[wk] = np.ascontiguousarray(tens[wk] * s[:, None])
            if "bias" not in made.tensors:
                made.tensors["bias"] = f"{made.name}.bias"
                tens[made.tensors["bias"]] = np.zeros_like(s)
            bk = made.tensors["bias"]
            tens[bk] = tens[bk] * s + shift
        else:
            ak, bk = made.tensors["alpha"], made.tensors["beta"]
            tens[ak] = tens[ak] * s
            tens[bk] = tens[bk] * s + shift
        return (x, None, None)
    if x.nhwc or x.ndim == 2:
        y = t.emit("affine", [x], x.shape, nhwc=x.nhwc, tensors={"scale": s, "shift": shift})
    else:  # channels on axis 1 of an (N, C, ...) value
        shape = (-1,) + (1,) * (x.ndim - 2)
        y = _binary(t, node.args[0], x, s.reshape(shape), fn="mul")
        y = _binary(t, node.args[0], y, shift.reshape(shape), fn="add")
    return (y, None, None)


@_handles(aten.native_layer_norm.default)
def _layer_norm(t, node, x, normalized, w, b, eps):  # type: ignore[no-untyped-def]
    x = t.plain(x)
    tensors = {}
    if w is not None:
        tensors["weight"] = _np32(w)
    if b is not None:
        tensors["bias"] = _np32(b)
    axes = list(range(x.ndim - len(normalized), x.ndim))
    y = t.emit("layer_norm", [x], x.shape, attrs={"axes": axes, "eps": float(eps)}, tensors=tensors)
    return (y, None, None)


@_handles(aten._softmax.default, aten._log_softmax.default)
def _softmax(t, node, x, dim, half=False):  # type: ignore[no-untyped-def]
    attrs = {"axis": t.axis(x, dim), "log": node.target is aten._log_softmax.default}
    return t.emit("softmax", [x], x.shape, nhwc=x.nhwc, attrs=attrs)


def _reduce(t: _Translator, node: Any, x: _V, dims: Any, keepdim: bool, fn: str) -> _V:
    dims = list(range(x.ndim)) if dims is None or dims == [] else [d % x.ndim for d in dims]
    out = _shape(node)
    if x.nhwc and not keepdim:
        rest = [d for d in range(4) if d not in dims]
        if [_NHWC_AXIS[d] for d in rest] != sorted(_NHWC_AXIS[d] for d in rest):
            x = t.plain(x)
    axes = [t.axis(x, d) for d in dims]
    return t.emit("reduce", [x], out, nhwc=x.nhwc and keepdim,
                  attrs={"fn": fn, "axes": sorted(axes), "keepdim": bool(keepdim)})  # fmt: skip


@_handles(aten.mean.dim)
def _mean(t, node, x, dims=None, keepdim=False, dtype=None):  # type: ignore[no-untyped-def]
    return _reduce(t, node, x, dims, keepdim, "mean")


@_handles(aten.sum.dim_IntList)
def _sum(t, node, x, dims=None, keepdim=False, dtype=None):  # type: ignore[no-untyped-def]
    return _reduce(t, node, x, dims, keepdim, "sum")


@_handles(aten.amax.default)
def _amax(t, node, x, dims=(), keepdim=False):  # type: ignore[no-untyped-def]
    return _reduce(t, node, x, list(dims), keepdim, "amax")


@_handles(aten.view.default, aten._unsafe_view.default, aten.reshape.default,
          aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default)  # fmt: skip
def _reshape(t, node, x, *rest):  # type: ignore[no-untyped-def]
    out = _shape(node)
    if sum(d == -1 for d in out) > 1:
        raise OnebitError(f"cannot pack {node.name}: a reshape with two batch-dependent axes.")
    return t.emit("reshape", [t.plain(x)], out, attrs={"shape": list(out)})


@_handles(aten.permute.default)
def _permute(t, node, x, dims):  # type: ignore[no-untyped-def]
    dims = [d % x.ndim for d in dims]
    if dims[0] != 0:  # resolved by the slices/selects that follow (_Moved)
        return _Moved(t.plain(x), dims, node)
    return t.emit("transpose", [t.plain(x)], _shape(node), attrs={"perm": dims})


def _settle(t: _Translator, m: _Moved) -> _V | _Moved:
    """``m`` as a value once its batch axis is first again (a transpose unless in order)."""
    if m.dims[0] != 0:
        return m
    if m.dims == sorted(m.dims):
        return m.base
    return t.emit("transpose", [m.base], m.shape, attrs={"perm": list(m.dims)})


def _drop_axis(t: _Translator, m: _Moved, axis: int) -> _V | _Moved:
    """``m`` without its size-1 axis ``axis`` (a reshape of the base)."""
    b = m.dims[axis]
    if m.base.shape[b] != 1:
        raise OnebitError("internal: dropping an axis of size > 1")
    shape = [n for i, n in enumerate(m.base.shape) if i != b]
    base = t.emit("reshape", [m.base], tuple(shape), attrs={"shape": shape})
    dims = [d - (d > b) for i, d in enumerate(m.dims) if i != axis]
    return _settle(t, _Moved(base, dims, m.node))


def _on_moved(t: _Translator, node: Any, target: Any, args: list[Any]) -> Any:
    """Slices, selects and squeezes of a :class:`_Moved` value, applied to its base."""
    m = args[0]
    if not isinstance(m, _Moved) or any(isinstance(a, _Moved) for a in _leaves(args[1:])):
        raise OnebitError(
            f"cannot pack {m.node.name if isinstance(m, _Moved) else node.name}"
            f"{_source(m.node if isinstance(m, _Moved) else node)}: it moves the batch axis, and "
            "only slices or selects that bring it back first can follow."
        )
    if target in (aten.clone.default, aten.alias.default, aten.detach.default):
        return m
    if target is aten.permute.default:  # composed: back to a value once the batch is first
        return _settle(t, _Moved(m.base, [m.dims[d % len(m.dims)] for d in args[1]], m.node))
    if target is aten.slice.Tensor:
        dim, start, end, step = (list(args[1:]) + [0, None, None, 1][len(args) - 1 :])[:4]
        dim %= len(m.dims)
        b = m.dims[dim]
        shape = list(m.base.shape)
        shape[b] = _shape(node)[dim]
        sl = t.emit("slice", [m.base], tuple(shape),
                    attrs={"slices": _slices(t, m.base, b, start, end, step)})  # fmt: skip
        return _Moved(sl, m.dims, m.node)
    if target is aten.select.int:
        dim, index = args[1] % len(m.dims), int(args[2])
        b = m.dims[dim]
        shape = list(m.base.shape)
        shape[b] = 1
        end = None if index == -1 else index + 1
        sl = t.emit("slice", [m.base], tuple(shape),
                    attrs={"slices": _slices(t, m.base, b, index, end, 1)})  # fmt: skip
        return _drop_axis(t, _Moved(sl, m.dims, m.node), dim)
    if target in (aten.squeeze.dims, aten.squeeze.dim):
        axes = args[1] if isinstance(args[1], list | tuple) else [args[1]]
        out: _V | _Moved = m
        for a in sorted((int(a) % len(m.dims) for a in axes), reverse=True):
            if isinstance(out, _Moved) and out.shape[a] == 1:
                out = _drop_axis(t, out, a)
            elif not isinstance(out, _Moved):
                raise OnebitError(
                    f"cannot pack {node.name}{_source(node)}: a squeeze after a move."
                )
        return out
    raise OnebitError(
        f"cannot pack {m.node.name}{_source(m.node)}: it moves the batch axis, and only slices or "
        "selects that bring it back first can follow."
    )


@_handles(aten.expand.default)
def _expand(t, node, x, sizes, implicit=False):  # type: ignore[no-untyped-def]
    out = _shape(node)
    if tuple(x.shape) == out:
        return x
    return t.emit("expand", [t.plain(x)], out, attrs={"shape": list(out)})


@_handles(aten.clone.default, aten.alias.default, aten.lift_fresh_copy.default,
          aten.contiguous.default, aten.detach.default, aten.dropout.default)  # fmt: skip
def _identity(t, node, x, *rest, **kw):  # type: ignore[no-untyped-def]
    return x


@_handles(aten._to_copy.default)
def _to_copy(t, node, x, dtype=None, **kw):  # type: ignore[no-untyped-def]
    ints = (torch.int64, torch.int32)
    if dtype is None or dtype == torch.float32 or (dtype in ints and _is_bool(node)):
        return x  # (booleans are 0/1 floats: as floats or integers they are these values)
    if dtype == torch.bool:
        return _binary(t, node, x, 0.0, fn="ne")
    name = {torch.int64: "int64", torch.int32: "int64", torch.float32: "float32"}.get(dtype)
    if name is None:
        raise OnebitError(f"cannot pack {node.name}: a cast to {dtype}.")
    return t.emit("cast", [x], x.shape, nhwc=x.nhwc, attrs={"dtype": name})


def _slices(t: _Translator, x: _V, dim: int, start: Any, end: Any, step: int) -> list[list[Any]]:
    phys = t.axis(x, dim)
    out: list[list[Any]] = [[0, None, 1] for _ in range(x.ndim)]
    stop = None if end is None or end >= 2**62 else int(end)
    out[phys] = [int(start or 0), stop, int(step)]
    return out


@_handles(aten.slice.Tensor)
def _slice(t, node, x, dim=0, start=None, end=None, step=1):  # type: ignore[no-untyped-def]
    return t.emit("slice", [x], _shape(node), nhwc=x.nhwc,
                  attrs={"slices": _slices(t, x, dim, start, end, step)})  # fmt: skip


def _arange_axis(idx: torch.Tensor, n: int, nd: int) -> int | None:
    """The axis of the ``nd``-D broadcast shape along which the index tensor ``idx`` (right-aligned)
    is ``0, 1, ..., n - 1`` with every other axis of size 1; None if it is anything else."""
    shape = (1,) * (nd - idx.dim()) + tuple(idx.shape)
    long = [a for a, s in enumerate(shape) if s != 1]
    axis = long[0] if len(long) == 1 else (nd - 1 if n == 1 and not long else None)
    if axis is None or shape[axis] != n:
        return None
    if not torch.equal(idx.reshape(-1).to(torch.int64), torch.arange(n)):
        return None
    return axis


def _index(t: _Translator, node: Any, x: _V, indices: Sequence[Any]) -> _V:
    """``x[i0, i1, ...]`` (``aten.index.Tensor``) where every index takes all positions of its
    axis in order: ``arange(n)`` laid along one axis of the indices' broadcast shape, or, on the
    batch axis, a range over the batch (a Hugging Face attention mask is read as
    ``mask[arange(B)[:, None, None, None], arange(S)[None, None, None, :]]``). Such an index
    only inserts size-1 axes, so it is a reshape; any other index is refused."""
    where = [p for p, i in enumerate(indices) if i is not None]
    refuse = OnebitError(
        f"cannot pack {node.target}{_source(node)}: the runtime reads a tensor index only when it "
        "takes every position of its axis in order (an arange), as attention masks do."
    )
    if not where or where != list(range(where[0], where[-1] + 1)):
        raise refuse
    two = [indices[p].two if isinstance(indices[p], _Pair) else indices[p] for p in where]
    if not all(isinstance(i, torch.Tensor) for i in two):
        raise refuse
    nd = max(i.dim() for i in two)
    axes = []
    for p, i in zip(where, two, strict=True):
        batch = isinstance(indices[p], _Pair)
        if batch != (x.shape[p] == -1) or (batch and p != 0):
            raise refuse  # a range over the batch must index the batch axis, and only it
        axis = _arange_axis(i, 2 if batch else x.shape[p], nd)
        if axis is None or (batch and axis != 0) or (axes and axis <= axes[-1]):
            raise refuse
        axes.append(axis)
    out = _shape(node)
    if sum(d == -1 for d in out) > 1:
        raise refuse
    return t.emit("reshape", [t.plain(x)], out, attrs={"shape": list(out)})


@_handles(aten.select.int)
def _select(t, node, x, dim, index):  # type: ignore[no-untyped-def]
    x = t.plain(x)
    i = int(index)
    end = None if i == -1 else i + 1
    one = list(x.shape)
    one[dim % x.ndim] = 1
    s = t.emit("slice", [x], tuple(one), attrs={"slices": _slices(t, x, dim, i, end, 1)})
    return t.emit("reshape", [s], _shape(node), attrs={"shape": list(_shape(node))})


@_handles(aten.split_with_sizes.default, aten.split.Tensor)
def _split(t, node, x, sizes, dim=0):  # type: ignore[no-untyped-def]
    n = x.shape[dim % x.ndim]
    sizes = list(sizes) if isinstance(sizes, list | tuple) else [sizes] * -(-n // sizes)
    outs, start = [], 0
    for k, meta in zip(sizes, node.meta["val"], strict=False):
        shape = tuple(int(d) if isinstance(d, int) else -1 for d in meta.shape)
        outs.append(t.emit("slice", [x], shape, nhwc=x.nhwc,
                           attrs={"slices": _slices(t, x, dim, start, start + k, 1)}))  # fmt: skip
        start += k
    return outs


@_handles(aten.cat.default)
def _cat(t, node, xs, dim=0):  # type: ignore[no-untyped-def]
    ref = next(x for x in xs if isinstance(x, _V))
    xs = [x if isinstance(x, _V) else _batch_constant(t, x, ref) for x in xs]
    if all(x.ndim == 4 for x in xs) and any(x.nhwc for x in xs):
        xs = [t.to_nhwc(x) for x in xs]
    else:
        xs = [t.plain(x) for x in xs]
    return t.emit("cat", xs, _shape(node), nhwc=xs[0].nhwc, attrs={"axis": t.axis(xs[0], dim)})


def _batch_constant(t: _Translator, c: Any, like: _V) -> _V:
    """A constant (batch axis of size 1, e.g. an expanded class token) as a value with the batch
    of ``like``."""
    arr = _np32(c)
    like = t.plain(like)
    shape = (-1, *arr.shape[1:])
    return t.emit("constant", [like], shape, attrs={"shape": list(shape)}, tensors={"value": arr})


@_handles(*(getattr(aten.any, o) for o in ("dim", "dims") if hasattr(aten.any, o)))
def _any(t, node, x, dims=None, keepdim=False):  # type: ignore[no-untyped-def]
    """``any`` of 0/1 booleans: their maximum."""
    return _reduce(t, node, x, dims if isinstance(dims, list | tuple) else [dims], keepdim, "amax")


@_handles(aten.all.dim)
def _all(t, node, x, dim, keepdim=False):  # type: ignore[no-untyped-def]
    return _reduce(t, node, x, [dim], keepdim, "amin")


@_handles(aten.full_like.default)
def _full_like(t, node, x, value, **kw):  # type: ignore[no-untyped-def]
    """``full_like(x, v)`` (``zeros_like``, ``ones_like``): a constant with ``x``'s batch."""
    if kw.get("dtype") not in (None, torch.float32):
        raise OnebitError(f"cannot pack {node.name}: full_like of dtype {kw['dtype']}.")
    shape = _shape(node)
    if any(d < 0 for d in shape[1:]):
        raise OnebitError(f"cannot pack {node.name}: full_like of a value of varying shape.")
    # one number broadcast (a view), not a stored tensor of x's shape
    one = _batch_constant(t, np.full((1,) * len(shape), value, np.float32), x)
    if all(d == 1 for d in shape[1:]):
        return one
    return t.emit("expand", [one], shape, attrs={"shape": [-1, *shape[1:]]})


@_handles(aten.constant_pad_nd.default)
def _pad(t, node, x, pad, value=0.0):  # type: ignore[no-untyped-def]
    pads = [[0, 0] for _ in range(x.ndim)]
    for i in range(len(pad) // 2):  # torch pads from the last axis backwards
        pads[t.axis(x, x.ndim - 1 - i)] = [int(pad[2 * i]), int(pad[2 * i + 1])]
    if any(p < 0 for pair_ in pads for p in pair_):
        raise OnebitError(f"cannot pack {node.name}: negative padding (cropping).")
    return t.emit(
        "pad", [x], _shape(node), nhwc=x.nhwc, attrs={"pads": pads, "value": float(value)}
    )


@_handles(aten.avg_pool2d.default)
def _avg_pool(t, node, x, k, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
              divisor=None):  # type: ignore[no-untyped-def]  # fmt: skip
    if divisor is not None:
        raise OnebitError(f"cannot pack {node.name}: pooling with a divisor override.")
    return _pool(t, node, x, "avg", k, stride or k, padding, count_include_pad)


@_handles(aten.max_pool2d_with_indices.default)
def _max_pool(t, node, x, k, stride=(), padding=0, dilation=1, ceil_mode=False):  # type: ignore[no-untyped-def]
    if dilation not in (1, [1, 1], (1, 1)):
        raise OnebitError(f"cannot pack {node.name}: dilated pooling.")
    return (_pool(t, node, x, "max", k, stride or k, padding, True), None)


def _pool(t: _Translator, node: Any, x: _V, kind: str, k: Any, s: Any, p: Any, inc: bool) -> _V:
    """Pooling in NHWC; torch's ceil mode is the output size of the capture (the runtime pads
    the far edge so the last window fits, and never counts that padding)."""
    from onebit.shapes import conv_output_size, pair

    x = t.to_nhwc(x)
    out = _shape(node)
    (kh, kw), (sh, sw), (ph, pw) = pair(k), pair(s), pair(p)
    extra = [max(0, (o - 1) * st + kk - (n + 2 * pp)) if conv_output_size(n, kk, st, pp) != o
             else 0 for o, n, kk, st, pp in ((out[2], x.shape[2], kh, sh, ph),
                                             (out[3], x.shape[3], kw, sw, pw))]  # fmt: skip
    attrs = {"kind": kind, "kernel_size": [kh, kw], "stride": [sh, sw], "padding": [ph, pw],
             "count_include_pad": bool(inc)}  # fmt: skip
    if any(extra):
        attrs["extra_padding"] = extra
    return t.emit("pool2d", [x], out, nhwc=True, attrs=attrs)


@_handles(aten._adaptive_avg_pool2d.default, aten.adaptive_avg_pool2d.default)
def _adaptive(t, node, x, size):  # type: ignore[no-untyped-def]
    oh, ow = size
    h, w = x.shape[2], x.shape[3]
    if (oh, ow) == (1, 1):
        return _reduce(t, node, x, [2, 3], True, "mean")
    if h % oh or w % ow:
        raise OnebitError(f"cannot pack {node.name}: adaptive pooling of {h}x{w} to {oh}x{ow}.")
    return _pool(t, node, x, "avg", (h // oh, w // ow), (h // oh, w // ow), 0, True)


@_handles(aten.embedding.default, torch.ops.onebit.embedding.default)
def _embedding(t, node, w, ids, *rest):  # type: ignore[no-untyped-def]
    if node.target is aten.embedding.default:
        if isinstance(w, _V):
            raise OnebitError(f"cannot pack {node.name}: an embedding of a computed table.")
        tensors, attrs = {"weight": _np32(w)}, {"dim": int(w.shape[1])}
    else:  # onebit::embedding(ids, bits, alpha, dim)
        ids, bits, alpha, dim = w, ids, rest[0], rest[1]
        tensors = {"bits": bits.numpy().view(np.uint64), "alpha": _np32(alpha)}
        attrs = {"dim": int(dim)}
    return t.emit("embedding", [t.plain(ids)], _shape(node), attrs=attrs, tensors=tensors)


def _node_dtype(a: Any) -> Any:
    val = a.meta.get("val") if isinstance(a, torch.fx.Node) else a
    return getattr(val, "dtype", None)


@_handles(aten.scaled_dot_product_attention.default)
def _attention(t, node, q, k, v, mask=None, dropout=0.0, causal=False, *, scale=None,  # type: ignore[no-untyped-def]
               enable_gqa=False):  # fmt: skip
    if enable_gqa:
        raise OnebitError("cannot pack grouped-query attention (enable_gqa=True)")
    if dropout:
        raise OnebitError(f"cannot pack attention with dropout {dropout} in eval mode")
    if not all(isinstance(x, _V) for x in (q, k, v)):
        raise OnebitError("cannot pack attention whose query, key or value is a constant")
    q, k, v = t.plain(q), t.plain(k), t.plain(v)
    s = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    attrs: dict[str, Any] = {"scale": s, "causal": bool(causal)}
    inputs, tensors = [q, k, v], {}
    if mask is not None:
        raw = node.kwargs.get("attn_mask", node.args[3] if len(node.args) > 3 else None)
        boolean = _node_dtype(raw) == torch.bool
        if isinstance(mask, _V):
            inputs.append(t.plain(mask))
            attrs["mask"] = "bool" if boolean else "add"
        else:
            c = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
            if boolean:  # stored additive: 0 where it attends, -inf where not
                c = np.where(c, 0.0, -np.inf)
            tensors["mask"] = np.ascontiguousarray(c, dtype=np.float32)
            attrs["mask"] = "add"
    return t.emit("attention", inputs, _shape(node), attrs=attrs, tensors=tensors)


@_handles(aten.where.self)
def _where(t, node, cond, x, y):  # type: ignore[no-untyped-def]
    inputs, tensors = [], {}
    vs = [v for v in (cond, x, y) if isinstance(v, _V)]
    like = t.plain(vs[0]) if any(v.ndim != 4 for v in vs) or not all(v.nhwc for v in vs) else vs[0]
    for role, v in (("cond", cond), ("x", x), ("y", y)):
        if isinstance(v, _V):
            inputs.append(t.plain(v) if not like.nhwc else t.to_nhwc(v))
        else:
            c = v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            tensors[role] = np.ascontiguousarray(
                t.const_like(c.astype(np.uint8 if role == "cond" else np.float32), like)
            )
    return t.emit("where", inputs, _shape(node), nhwc=like.nhwc, tensors=tensors)


# --- XNOR chains: thresholds in place of BatchNorm + sign ------------------------------------


def _thresholds(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer thresholds with ``(alpha * acc + beta >= 0) == ((acc >= thresh) XOR flip)``.

    For integer ``acc``: ``alpha > 0`` gives ``acc >= ceil(-beta / alpha)``; ``alpha < 0`` gives
    ``acc <= floor(-beta / alpha)``, i.e. NOT ``acc >= floor(-beta / alpha) + 1``; ``alpha = 0``
    gives the constant ``beta >= 0``.
    """
    a = alpha.astype(np.float64)
    b = beta.astype(np.float64)
    big = float(2**30)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = -b / a
    thresh = np.where(a > 0, np.ceil(r), np.floor(r) + 1)
    thresh = np.where(a == 0, np.where(b >= 0, -big, big), thresh)
    flip = a < 0
    return np.clip(thresh, -big, big).astype(np.float32), flip


def fold_reshapes(ops: list[Op]) -> None:
    """In place: a reshape of a reshape reads the first one's input (C-order reshapes compose
    to the last one), and a reshape no op reads any more is dropped; each is one op less per
    forward pass (a captured transformer has ~4 per block, around its linear layers)."""
    made = {op.name: op for op in ops}
    for op in ops:
        src = made.get(op.inputs[0]) if op.op == "reshape" and op.inputs else None
        while src is not None and src.op == "reshape":
            op.inputs[0] = src.inputs[0]
            src = made.get(src.inputs[0])
    read = {i for op in ops for i in op.inputs}
    ops[:] = [op for op in ops if op.op != "reshape" or op.name in read]


def fuse_thresholds(ops: list[Op], tensors: dict[str, np.ndarray]) -> None:
    """Let XNOR layers hand packed bits straight to the next XNOR layers, in place.

    Where a binary-activation layer's output (BatchNorm folded in) goes, through an optional
    hardtanh (which keeps signs), only into binary-activation layers, it is replaced by the packed
    bits ``threshold_sign(acc, thresh, flip)``: no float output, no separate sign and packing.
    A consumer's input thresholds ``tau`` (``act_shift``) fold into the producer's ``beta``.
    """
    consumers: dict[str, list[Op]] = {}
    for op in ops:
        for i in op.inputs:
            consumers.setdefault(i, []).append(op)

    def xnor(op: Op) -> bool:  # grouped convs run on float (±1) values, not on packed bits
        return (
            op.op in ("linear", "conv")
            and op.attrs.get("mode") == "binary"
            and op.attrs.get("groups", 1) == 1
        )

    removed: set[str] = set()
    for op in ops:
        if not xnor(op):
            continue
        users = consumers.get(op.name, [])
        via = None
        if (
            len(users) == 1
            and users[0].op == "hardtanh"
            and users[0].attrs["min"] < 0 < users[0].attrs["max"]
            and "act_shift" not in users[0].tensors
        ):
            via = users[0]
            users = consumers.get(via.name, [])
        if not users or not all(xnor(u) for u in users):
            continue
        shifts = [tensors[u.tensors["act_shift"]] if "act_shift" in u.tensors else None
                  for u in users]  # fmt: skip
        if via is not None and any(s is not None for s in shifts):
            continue  # hardtanh then a threshold: the sign of hardtanh(y) - tau is not y's
        if any(s is not None for s in shifts) and not all(
            s is not None and np.array_equal(s, shifts[0]) for s in shifts
        ):
            continue
        alpha = tensors.pop(op.tensors.pop("alpha"))
        beta = tensors.pop(op.tensors.pop("beta"))
        if shifts and shifts[0] is not None:
            beta = beta - shifts[0]
        thresh, flip = _thresholds(alpha, beta)
        op.tensors["thresh"] = f"{op.name}.thresh"
        op.tensors["flip"] = f"{op.name}.flip"
        tensors[op.tensors["thresh"]] = thresh
        tensors[op.tensors["flip"]] = flip.astype(np.uint8)
        op.attrs["output"] = "bits"
        for u in users:
            u.inputs = [op.name if i == (via.name if via else op.name) else i for i in u.inputs]
            u.attrs["input"] = "bits"
            if "act_shift" in u.tensors:
                tensors.pop(u.tensors.pop("act_shift"))
        if via is not None:
            removed.add(via.name)
    ops[:] = [op for op in ops if op.name not in removed]


# --- the entry point ---------------------------------------------------------------------------


def _example(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list | tuple) and all(isinstance(v, int) for v in example_inputs):
        return (torch.zeros(2, *example_inputs),)  # a shape, as older callers passed it
    return tuple(example_inputs)


def _decompositions() -> dict[Any, Any]:
    """ATen core IR's decompositions, less attention's: the runtime runs
    ``scaled_dot_product_attention`` as one op (its decomposition is ~15 small ops per layer)."""
    table = torch.export.default_decompositions()
    table.pop(aten.scaled_dot_product_attention.default, None)
    return table


def capture(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> Any:
    """``torch.export`` of the packed copy of ``model`` (batch axis dynamic), ATen core IR."""
    m = pack_(copy.deepcopy(model).eval())
    config = getattr(m, "config", None)
    if getattr(config, "use_cache", False):  # a Hugging Face model: no key/value cache outputs
        config.use_cache = False
    dyn = tuple({0: torch.export.Dim.AUTO} for _ in example_inputs)
    try:
        with torch.no_grad():
            ep = torch.export.export(m, tuple(example_inputs), dynamic_shapes=dyn, strict=False)
        return ep.run_decompositions(_decompositions())
    except OnebitError:
        raise
    except Exception as e:  # export raises many types on code it cannot capture
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnebitError(f"torch.export cannot capture the model ({first[:200]}).") from None


def pack(
    model: nn.Module,
    example_inputs: Sequence[Any] | torch.Tensor,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    source: dict[str, Any] | None = None,
    fuse: bool = True,
) -> PackedModel:
    """Pack a trained (binarized) model for the CPU runtime.

    Args:
        model: any model (binary layers deploy ``alpha * sign(w)``; float layers stay float).
        example_inputs: its positional inputs for one forward pass, as in ``torch.export`` (a
            tuple with one tensor: images NCHW, features, or integer token ids); the batch axis
            stays free. (A shape tuple of ints is taken as ``zeros(2, *shape)``.)
        mean, std: input normalization the model was trained with (for raw inputs).
        source: informational provenance stored in the file (config, method).
        fuse: fold BatchNorm + sign into integer thresholds between XNOR layers.

    Returns:
        A ``PackedModel``: ``packed(x)`` matches ``model.eval()(x)``; ``packed.save(path)``.

    Raises:
        OnebitError: the model cannot be captured, or uses an op the runtime lacks (named).
    """
    example = _example(example_inputs)
    ep = capture(model, example)
    translator = _Translator(ep)
    with torch.no_grad():
        ops, tensors, extra = translator.run()
    if fuse:
        fuse_thresholds(ops, tensors)
    fold_reshapes(ops)
    x = example[0]
    shape = [int(v) for v in x.shape[1:]]
    c = shape[0] if x.dim() > 1 else 1
    spec = {
        "shape": shape,
        "dtype": "int64" if not x.is_floating_point() else "float32",
        "layout": GRAPH_LAYOUT,
        "mean": [float(v) for v in (mean if mean is not None else [0.0] * c)],
        "std": [float(v) for v in (std if std is not None else [1.0] * c)],
    }
    if extra:  # further inputs, passed by name: model(x, attention_mask=...)
        spec["extra"] = [
            {"name": n, "shape": [int(d) for d in v.shape[1:]],
             "dtype": "float32" if v.is_floating_point() else "int64"}
            for n, v in zip(extra, example[1:], strict=True)
        ]  # fmt: skip
    return PackedModel(ops, tensors, spec, source or {})
