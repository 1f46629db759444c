"""What a ``.onebit`` graph may say: one table row per op, checked on every read and write.

:data:`SCHEMA` maps each op kind to an :class:`OpSpec`: how many inputs it takes, the attributes
it accepts (each with a rule; unknown attributes are refused), the tensors it reads by role (each
with its dtype and the shape its attributes and input demand) and the value it produces.
:func:`check_graph` walks a graph with the input shape of the file and checks every op against
its row, so a file whose graph, attributes or tensors were edited into something the
interpreter would misread, or crash on, is refused with one sentence before anything runs.

Values are described per example (the batch axis left out): ``Value("float", (F,))``,
``Value("float", (H, W, C))`` (the runtime's NHWC layout) or ``Value("bits", shape)``, the packed
signs of a float value of that shape, between XNOR layers whose thresholds were fused.

Adding an op to the runtime (:mod:`onebit.runtime.ops`) means adding its row here: the number
of inputs, its required and optional attributes (rules from :data:`ATTR_RULES`, or the row's own
``rules``), a ``roles`` function naming the tensors it needs with their dtype and shape (and
``optional_roles``), and an ``infer`` function giving its output value from its inputs (raising
GraphError where they do not fit). A new field of the ``input`` entry is a row of
:data:`INPUT_FIELDS`. An op or field without a row is refused on read and on write, so a file
never holds what its reader would misread.

Imports numpy only (no torch): the runtime checks files with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onebit.shapes import conv_output_size

__all__ = [
    "ATTR_RULES",
    "INPUT_FIELDS",
    "SCHEMA",
    "GraphError",
    "OpSpec",
    "Role",
    "Value",
    "check_graph",
    "check_input_spec",
]


class GraphError(ValueError):
    """What is wrong with a graph, as the end of a sentence (the caller names the file)."""


@dataclass(frozen=True)
class Value:
    """A value between ops, per example: ``kind`` ``float`` or ``bits``, and its shape."""

    kind: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Role:
    """A tensor an op reads: its dtype and its exact shape (None: any, for the constants of a
    captured graph's general ops, whose shapes broadcast against their inputs)."""

    dtype: str
    shape: tuple[int, ...] | None


# --- attribute rules: value -> None if accepted, else what is accepted --------------------------

Rule = Callable[[Any], str | None]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def int_at_least(low: int) -> Rule:
    return lambda v: None if _is_int(v) and v >= low else f"a whole number >= {low}"


def pair_at_least(low: int) -> Rule:
    def rule(v: Any) -> str | None:
        ok = isinstance(v, list) and len(v) == 2 and all(_is_int(e) and e >= low for e in v)
        return None if ok else f"two whole numbers >= {low}"

    return rule


def one_of(*choices: str) -> Rule:
    return lambda v: None if v in choices else "one of " + ", ".join(map(repr, choices))


def number(v: Any) -> str | None:
    return None if _is_number(v) else "a finite number"


def text(v: Any) -> str | None:
    return None if isinstance(v, str) else "a string"


def slices(v: Any) -> str | None:
    ok = isinstance(v, list) and all(
        isinstance(e, list)
        and len(e) == 3
        and all(x is None or _is_int(x) for x in e[:2])
        and _is_int(e[2])
        and e[2] >= 1
        for e in v
    )
    return None if ok else "[start, stop, step] lists with step >= 1"


def pads(v: Any) -> str | None:
    ok = isinstance(v, list) and all(
        isinstance(e, list) and len(e) == 2 and all(_is_int(x) and x >= 0 for x in e) for e in v
    )
    return None if ok else "[before, after] lists of whole numbers >= 0"


ATTR_RULES: dict[str, Rule] = {
    "mode": one_of("float", "binary_weights", "binary"),
    "input": one_of("bits"),
    "output": one_of("bits"),
    "module": text,
    "in_features": int_at_least(1),
    "out_features": int_at_least(1),
    "in_channels": int_at_least(1),
    "out_channels": int_at_least(1),
    "groups": int_at_least(1),
    "kernel_size": pair_at_least(1),
    "stride": pair_at_least(1),
    "padding": pair_at_least(0),
    "min": number,
    "max": number,
    "slices": slices,
    "pads": pads,
    "value": number,
    "graph": lambda v: None if v is True else "true",
}
"""The rule of each attribute name (an op's row says which names it accepts)."""

_POOL_RULES: dict[str, Rule] = {"kernel_size": int_at_least(1), "stride": int_at_least(1)}


# --- the ops ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpSpec:
    """One op kind.

    Attributes:
        inputs: how many inputs it takes (or the counts it accepts).
        required: attributes it must have.
        optional: attributes it may have.
        roles: ``(attrs, inputs) -> {role: Role}``, the tensors it needs, and ``optional_roles``
            those it may have.
        infer: ``(attrs, inputs) -> output value``; raises GraphError when the inputs do not fit.
        rules: attribute rules that differ from :data:`ATTR_RULES` for this op.
    """

    inputs: int | tuple[int, ...]
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ("module",)
    roles: Callable[[dict[str, Any], list[Value]], dict[str, Role]] = lambda a, v: {}
    optional_roles: Callable[[dict[str, Any], list[Value]], dict[str, Role]] = lambda a, v: {}
    infer: Callable[[dict[str, Any], list[Value]], Value] = lambda a, v: v[0]
    rules: Mapping[str, Rule] = field(default_factory=dict)


def _words(k: int) -> int:
    return (k + 63) // 64


def _float_in(v: Value, what: str) -> Value:
    if v.kind != "float":
        raise GraphError(f"its input is packed bits, but {what} reads float values")
    return v


def _layer_roles(a: dict[str, Any], rows: int, k: int) -> dict[str, Role]:
    """The tensors of a linear/conv layer of ``rows`` outputs over ``k`` inputs each."""
    if a["mode"] == "float":
        return {"weight": Role("float32", (rows, k))}
    out = {"bits": Role("uint64", (rows, _words(k)))}
    if a.get("output") == "bits":
        return {**out, "thresh": Role("float32", (rows,)), "flip": Role("uint8", (rows,))}
    return {**out, "alpha": Role("float32", (rows,)), "beta": Role("float32", (rows,))}


def _optional_layer_roles(a: dict[str, Any], rows: int, channels: int) -> dict[str, Role]:
    """A float layer's ``bias``; a binary-activation layer's input thresholds ``act_shift``
    (one per input channel, the sign bit is ``x >= act_shift``) unless it reads packed bits."""
    if a["mode"] == "float":
        return {"bias": Role("float32", (rows,))}
    if a["mode"] == "binary" and a.get("input") != "bits":
        return {"act_shift": Role("float32", (channels,))}
    return {}


def _check_bits_modes(a: dict[str, Any], xnor: bool) -> None:
    for key in ("input", "output"):
        if key in a and not xnor:
            raise GraphError(
                f"{key} = 'bits' needs mode 'binary' (and no groups), not mode {a['mode']!r}"
            )


def _layer_input(a: dict[str, Any], v: Value, rank: int, what: str) -> None:
    want = "bits" if a.get("input") == "bits" else "float"
    if v.kind != want:
        raise GraphError(f"its input is {v.kind} values but the op says it reads {want}")
    if len(v.shape) != rank:
        raise GraphError(f"its input has per-example shape {v.shape}, not the {what} it reads")


def _linear_infer(a: dict[str, Any], v: list[Value]) -> Value:
    _check_bits_modes(a, a["mode"] == "binary")
    _layer_input(a, v[0], 1, "(features,)")
    if v[0].shape[0] != a["in_features"]:
        raise GraphError(
            f"its input has {v[0].shape[0]} features but in_features is {a['in_features']}"
        )
    return Value("bits" if a.get("output") == "bits" else "float", (a["out_features"],))


def _conv_k(a: dict[str, Any]) -> int:
    kh, kw = a["kernel_size"]
    return kh * kw * (a["in_channels"] // a.get("groups", 1))


def _conv_infer(a: dict[str, Any], v: list[Value]) -> Value:
    g = a.get("groups", 1)
    if a["in_channels"] % g or a["out_channels"] % g:
        raise GraphError(f"groups = {g} does not divide in_channels and out_channels")
    _check_bits_modes(a, a["mode"] == "binary" and g == 1)
    _layer_input(a, v[0], 3, "(H, W, C) image")
    h, w, c = v[0].shape
    if c != a["in_channels"]:
        raise GraphError(f"its input has {c} channels but in_channels is {a['in_channels']}")
    (kh, kw), (sh, sw), (ph, pw) = a["kernel_size"], a["stride"], a["padding"]
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    if ho < 1 or wo < 1:
        raise GraphError(f"a {kh}x{kw} kernel does not fit its {h}x{w} input")
    return Value("bits" if a.get("output") == "bits" else "float", (ho, wo, a["out_channels"]))


def _channels(v: list[Value]) -> int:
    return v[0].shape[-1]


def _maxpool_infer(a: dict[str, Any], v: list[Value]) -> Value:
    x = _float_in(v[0], "maxpool")
    if len(x.shape) != 3:
        raise GraphError(f"its input has per-example shape {x.shape}, not an (H, W, C) image")
    h, w, c = x.shape
    k, s = a["kernel_size"], a["stride"]
    if h < k or w < k:
        raise GraphError(f"a {k}x{k} window does not fit its {h}x{w} input")
    return Value("float", ((h - k) // s + 1, (w - k) // s + 1, c))


def _avgpool_infer(a: dict[str, Any], v: list[Value]) -> Value:
    x = _float_in(v[0], "avgpool")
    if len(x.shape) != 3:
        raise GraphError(f"its input has per-example shape {x.shape}, not an (H, W, C) image")
    return Value("float", (x.shape[2],))


def _flatten_infer(a: dict[str, Any], v: list[Value]) -> Value:
    x = _float_in(v[0], "flatten")
    return Value("float", (math.prod(x.shape),))


def _add_infer(a: dict[str, Any], v: list[Value]) -> Value:
    x, y = _float_in(v[0], "add"), _float_in(v[1], "add")
    if x.shape != y.shape:
        raise GraphError(f"it adds values of shapes {x.shape} and {y.shape}")
    return x


def _hardtanh_infer(a: dict[str, Any], v: list[Value]) -> Value:
    if a["min"] > a["max"]:
        raise GraphError(f"min {a['min']} is above max {a['max']}")
    return _float_in(v[0], "hardtanh")


def _slice_infer(a: dict[str, Any], v: list[Value]) -> Value:
    x = _float_in(v[0], "slice")
    s = a["slices"]
    if len(s) != 1 + len(x.shape):
        raise GraphError(f"it has {len(s)} slices for a {1 + len(x.shape)}-D value")
    if s[0] != [0, None, 1]:
        raise GraphError("it slices the batch axis (its first slice must be [0, null, 1])")
    shape = tuple(len(range(*slice(*e).indices(n))) for e, n in zip(s[1:], x.shape, strict=True))
    if 0 in shape:
        raise GraphError(f"it leaves an empty value (shape {shape})")
    return Value("float", shape)


def _pad_infer(a: dict[str, Any], v: list[Value]) -> Value:
    x = _float_in(v[0], "pad")
    p = a["pads"]
    if len(p) != 1 + len(x.shape):
        raise GraphError(f"it has {len(p)} pads for a {1 + len(x.shape)}-D value")
    if p[0] != [0, 0]:
        raise GraphError("it pads the batch axis (its first pads must be [0, 0])")
    return Value("float", tuple(n + b + e for n, (b, e) in zip(x.shape, p[1:], strict=True)))


def _output_infer(a: dict[str, Any], v: list[Value]) -> Value:
    x = _float_in(v[0], "the output")
    if a.get("graph"):  # a captured graph: logits per example of any shape ((T, V) for text)
        return x
    if len(x.shape) != 1:
        raise GraphError(f"the output has per-example shape {x.shape}, not (classes,)")
    return x


_LAYER = ("in_features", "out_features", "mode")
_CONV = ("kernel_size", "stride", "padding", "in_channels", "out_channels", "mode")

SCHEMA: dict[str, OpSpec] = {
    "linear": OpSpec(
        1,
        _LAYER,
        ("module", "input", "output"),
        lambda a, v: _layer_roles(a, a["out_features"], a["in_features"]),
        lambda a, v: _optional_layer_roles(a, a["out_features"], a["in_features"]),
        _linear_infer,
    ),
    "conv": OpSpec(
        1,
        _CONV,
        ("module", "groups", "input", "output"),
        lambda a, v: _layer_roles(a, a["out_channels"], _conv_k(a)),
        lambda a, v: _optional_layer_roles(a, a["out_channels"], a["in_channels"]),
        _conv_infer,
    ),
    "affine": OpSpec(
        1,
        roles=lambda a, v: {
            "scale": Role("float32", (_channels(v),)),
            "shift": Role("float32", (_channels(v),)),
        },
        infer=lambda a, v: _float_in(v[0], "affine"),
    ),
    "relu": OpSpec(1, infer=lambda a, v: _float_in(v[0], "relu")),
    "hardtanh": OpSpec(1, ("min", "max"), infer=_hardtanh_infer),
    "maxpool": OpSpec(1, ("kernel_size", "stride"), infer=_maxpool_infer, rules=_POOL_RULES),
    "avgpool": OpSpec(1, infer=_avgpool_infer),
    "flatten": OpSpec(1, infer=_flatten_infer),
    "add": OpSpec(2, infer=_add_infer),
    "slice": OpSpec(1, ("slices",), infer=_slice_infer),
    "pad": OpSpec(1, ("pads",), ("module", "value"), infer=_pad_infer),
    "output": OpSpec(1, optional=("graph",), infer=_output_infer),
}
"""One row per op kind the runtime runs (``output`` ends the graph); the general ops of captured
graphs (:mod:`onebit.runtime.generic`) are added below."""


# --- the general ops of captured graphs (format version 4) -----------------------------------
# Values carry the batch (or what the leading axis became) in axis 0, which rows leave out:
# shapes here are per example, and full shapes in attributes start with -1 for that axis.


def _full_shape(v: Any) -> str | None:
    ok = isinstance(v, list) and v and v[0] == -1 and all(_is_int(n) and n >= 1 for n in v[1:])
    return None if ok else "a full shape [-1, sizes >= 1...]"


def _expand_shape(v: Any) -> str | None:
    ok = (
        isinstance(v, list)
        and v
        and v[0] == -1
        and all(_is_int(n) and (n >= 1 or n == -1) for n in v[1:])
    )
    return None if ok else "a full shape [-1, sizes >= 1 or -1...]"


def _int_list(v: Any) -> str | None:
    return None if isinstance(v, list) and all(_is_int(e) for e in v) else "a list of whole numbers"


def _axis_rule(v: Any) -> str | None:
    return None if _is_int(v) else "a whole number"


GRAPH_RULES: dict[str, Rule] = {
    "perm": _int_list,
    "shape": _full_shape,
    "fn": text,
    "other_first": lambda v: None if isinstance(v, bool) else "true or false",
    "axis": _axis_rule,
    "axes": _int_list,
    "keepdim": lambda v: None if isinstance(v, bool) else "true or false",
    "eps": lambda v: None if _is_number(v) and v > 0 else "a finite number > 0",
    "log": lambda v: None if isinstance(v, bool) else "true or false",
    "kind": one_of("max", "avg"),
    "count_include_pad": lambda v: None if isinstance(v, bool) else "true or false",
    "extra_padding": pair_at_least(0),
    "dim": int_at_least(1),
    "dtype": one_of("float32", "int64"),
    "scale": lambda v: None if _is_number(v) else "a finite number",
    "causal": lambda v: None if isinstance(v, bool) else "true or false",
    "mask": one_of("add", "bool"),
}
ATTR_RULES.update(GRAPH_RULES)

_UNARY = (
    "relu",
    "gelu",
    "gelu_tanh",
    "silu",
    "sigmoid",
    "tanh",
    "hardswish",
    "hardsigmoid",
    "exp",
    "neg",
    "sqrt",
    "rsqrt",
    "erf",
    "abs",
    "log",
)
_BINARY = ("add", "sub", "mul", "div", "pow", "maximum", "minimum", "eq", "ne", "lt", "le", "gt",
           "ge")  # fmt: skip


def _full_axis(v: Value, a: int) -> int:
    """An axis of the full value (batch = 0), normalized; GraphError when out of range."""
    n = len(v.shape) + 1
    if not -n <= a < n:
        raise GraphError(f"axis {a} is out of range for a {n}-D value")
    a %= n
    if a == 0:
        raise GraphError("it works along the batch axis")
    return a


def _dynamic_role(dtype: str) -> Role:
    return Role(dtype, None)  # type: ignore[arg-type]  # any shape: checked by broadcasting


def _broadcast(x: tuple[int, ...], c: tuple[int, ...]) -> tuple[int, ...]:
    """Per-example shape of ``x`` (full ``(-1, *x)``) broadcast with a full constant shape."""
    try:
        full = np.broadcast_shapes((2, *x), c)
    except ValueError:
        raise GraphError(f"shapes {(-1, *x)} and {c} do not broadcast") from None
    if full[0] != 2:
        raise GraphError(f"a constant of shape {c} does not broadcast over the batch")
    return tuple(full[1:])


def _transpose_infer(a: dict[str, Any], v: list[Value]) -> Value:
    p, x = a["perm"], v[0]
    if sorted(p) != list(range(1 + len(x.shape))) or p[0] != 0:
        raise GraphError(f"perm {p} is not a permutation keeping the batch axis first")
    return Value(x.kind, tuple(x.shape[i - 1] for i in p[1:]))


def _binary_infer(a: dict[str, Any], v: list[Value], tensors: Mapping[str, Any]) -> Value:
    if a["fn"] not in _BINARY:
        raise GraphError(f"fn {a['fn']!r} is not one of {', '.join(_BINARY)}")
    if len(v) == 2:
        return Value("float", _broadcast(v[0].shape, (1, *v[1].shape)))
    return Value("float", v[0].shape)


def _unary_infer(a: dict[str, Any], v: list[Value]) -> Value:
    if a["fn"] not in _UNARY:
        raise GraphError(f"fn {a['fn']!r} is not one of {', '.join(_UNARY)}")
    return _float_in(v[0], "unary")


def _reduce_infer(a: dict[str, Any], v: list[Value]) -> Value:
    if a["fn"] not in ("mean", "sum", "amax", "amin"):
        raise GraphError(f"fn {a['fn']!r} is not one of mean, sum, amax, amin")
    x = _float_in(v[0], "reduce")
    axes = {_full_axis(x, d) for d in a["axes"]}
    full = [1 if i in axes else n for i, n in enumerate((-1, *x.shape))]
    return Value(
        "float", tuple(n for i, n in enumerate(full) if i and (a["keepdim"] or i not in axes))
    )


def _cat_infer(a: dict[str, Any], v: list[Value]) -> Value:
    ax = _full_axis(v[0], a["axis"])
    base = list(v[0].shape)
    for x in v[1:]:
        if len(x.shape) != len(base) or any(
            n != m for i, (n, m) in enumerate(zip(x.shape, base, strict=True)) if i != ax - 1
        ):
            raise GraphError(f"it concatenates values of shapes {v[0].shape} and {x.shape}")
    base[ax - 1] = sum(x.shape[ax - 1] for x in v)
    return Value("float", tuple(base))


def _matmul_infer(a: dict[str, Any], v: list[Value]) -> Value:
    return Value("float", v[0].shape)  # the products' shapes are checked when they run


def _attention_infer(a: dict[str, Any], v: list[Value]) -> Value:
    q, k, val = (_float_in(x, "attention") for x in v[:3])
    if min(len(q.shape), len(k.shape), len(val.shape)) < 2:
        raise GraphError("its q, k and v are not (..., length, features) values")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != val.shape[-2]:
        raise GraphError(f"its q {q.shape}, k {k.shape} and v {val.shape} do not fit together")
    if len(v) == 4 and a.get("mask") is None:
        raise GraphError("it has a 4th input (a mask) but no mask attribute")
    return Value("float", (*q.shape[:-1], val.shape[-1]))


def _pool_infer(a: dict[str, Any], v: list[Value]) -> Value:
    x = _float_in(v[0], "pool2d")
    if len(x.shape) != 3:
        raise GraphError(f"its input has per-example shape {x.shape}, not an (H, W, C) image")
    h, w, c = x.shape
    (kh, kw), (sh, sw), (ph, pw) = a["kernel_size"], a["stride"], a["padding"]
    eh, ew = a.get("extra_padding", [0, 0])
    ho, wo = conv_output_size(h + eh, kh, sh, ph), conv_output_size(w + ew, kw, sw, pw)
    if ho < 1 or wo < 1:
        raise GraphError(f"a {kh}x{kw} window does not fit its {h}x{w} input")
    return Value("float", (ho, wo, c))


def _embedding_infer(a: dict[str, Any], v: list[Value]) -> Value:
    if v[0].kind != "int":
        raise GraphError("its input is not integer ids")
    return Value("float", (*v[0].shape, a["dim"]))


def _embedding_roles(a: dict[str, Any], v: list[Value]) -> dict[str, Role]:
    return {}


def _embedding_optional(a: dict[str, Any], v: list[Value]) -> dict[str, Role]:
    return {
        "weight": _dynamic_role("float32"),
        "bits": _dynamic_role("uint64"),
        "alpha": _dynamic_role("float32"),
    }


def _reshape_infer(a: dict[str, Any], v: list[Value]) -> Value:
    return Value(v[0].kind, tuple(a["shape"][1:]))


def _expand_infer(a: dict[str, Any], v: list[Value]) -> Value:
    x, shape = v[0], a["shape"][1:]
    lead = len(shape) - len(x.shape)
    if lead < 0:
        raise GraphError(f"it expands {x.shape} to fewer axes {shape}")
    out = tuple(x.shape[i - lead] if n == -1 else n for i, n in enumerate(shape))
    _broadcast(x.shape, (1, *out))
    return Value(x.kind, out)


def _cast_infer(a: dict[str, Any], v: list[Value]) -> Value:
    return Value("int" if a["dtype"] == "int64" else "float", v[0].shape)


def _const_role(v: list[Value]) -> dict[str, Role]:
    return {"other": _dynamic_role("float32")}


SCHEMA.update(
    {
        "transpose": OpSpec(1, ("perm",), infer=_transpose_infer),
        "reshape": OpSpec(1, ("shape",), infer=_reshape_infer),
        "expand": OpSpec(1, ("shape",), infer=_expand_infer, rules={"shape": _expand_shape}),
        "binary": OpSpec(
            (1, 2),
            ("fn",),
            ("module", "other_first"),
            optional_roles=lambda a, v: _const_role(v) if len(v) == 1 else {},
            infer=lambda a, v: _binary_infer(a, v, {}),
        ),
        "unary": OpSpec(1, ("fn",), infer=_unary_infer),
        "where": OpSpec(
            (1, 2, 3),
            optional_roles=lambda a, v: {
                r: _dynamic_role("uint8" if r == "cond" else "float32") for r in ("cond", "x", "y")
            },
            infer=lambda a, v: Value("float", v[0].shape),
        ),
        "softmax": OpSpec(
            1,
            ("axis",),
            ("module", "log"),
            infer=lambda a, v: _full_axis(v[0], a["axis"]) and _float_in(v[0], "softmax"),
        ),
        "layer_norm": OpSpec(
            1,
            ("axes", "eps"),
            optional_roles=lambda a, v: {
                "weight": _dynamic_role("float32"),
                "bias": _dynamic_role("float32"),
            },
            infer=lambda a, v: _float_in(v[0], "layer_norm"),
        ),
        "reduce": OpSpec(1, ("fn", "axes", "keepdim"), infer=_reduce_infer),
        "cat": OpSpec(tuple(range(1, 65)), ("axis",), infer=_cat_infer),
        "matmul": OpSpec(
            (1, 2),
            (),
            ("module", "other_first"),
            optional_roles=lambda a, v: _const_role(v) if len(v) == 1 else {},
            infer=_matmul_infer,
        ),
        "attention": OpSpec(
            (3, 4),
            ("scale",),
            ("module", "causal", "mask"),
            optional_roles=lambda a, v: {"mask": _dynamic_role("float32")} if len(v) == 3 else {},
            infer=_attention_infer,
        ),
        "pool2d": OpSpec(
            1,
            ("kind", "kernel_size", "stride", "padding"),
            ("module", "count_include_pad", "extra_padding"),
            infer=_pool_infer,
        ),
        "embedding": OpSpec(
            1, ("dim",), optional_roles=_embedding_optional, infer=_embedding_infer
        ),
        "cast": OpSpec(1, ("dtype",), infer=_cast_infer),
        "constant": OpSpec(
            (0, 1),
            ("shape",),
            roles=lambda a, v: {"value": _dynamic_role("float32")},
            infer=lambda a, v: Value("float", tuple(a["shape"][1:])),
        ),
    }
)


def _check_attrs(spec: OpSpec, attrs: dict[str, Any]) -> None:
    for k in attrs:
        if k not in spec.required and k not in spec.optional:
            accepted = ", ".join((*spec.required, *spec.optional)) or "none"
            raise GraphError(f"it has an unknown attribute {k!r} (accepted: {accepted})")
    for k in spec.required:
        if k not in attrs:
            raise GraphError(f"it lacks its attribute {k!r}")
    for k, v in attrs.items():
        rule = spec.rules.get(k) or ATTR_RULES[k]
        accepted = rule(v)
        if accepted is not None:
            raise GraphError(f"its attribute {k} = {v!r} is not {accepted}")


def _check_tensor(role: str, want: Role, arr: Any, name: str) -> None:
    dtype = getattr(arr, "dtype", None)
    if str(dtype) != want.dtype:
        raise GraphError(f"its tensor {role} ({name!r}) is {dtype}, not {want.dtype}")
    if want.shape is not None and tuple(arr.shape) != want.shape:
        raise GraphError(
            f"its tensor {role} ({name!r}) has shape {tuple(arr.shape)}, not {want.shape}"
        )
    if want.dtype.startswith("float"):
        # the constants of general ops (shape None) may be ±inf (masks: x == -inf), never NaN;
        # weights and scales are finite
        bad = np.isnan(arr).any() if want.shape is None else not np.isfinite(arr).all()
        if bad:
            what = "NaN" if want.shape is None else "NaN or infinite values"
            raise GraphError(f"its tensor {role} ({name!r}) holds {what}")
    if role == "flip" and arr.size and int(arr.max()) > 1:
        raise GraphError(f"its tensor {role} ({name!r}) holds values other than 0 and 1")


def _shape_field(v: Any, spec: dict[str, Any]) -> str | None:
    if spec.get("layout") == "graph":  # a captured graph takes inputs of any rank
        ok = isinstance(v, list) and 1 <= len(v) <= 6 and all(_is_int(n) and n >= 1 for n in v)
        return None if ok else "a list of 1 to 6 sizes >= 1"
    ok = isinstance(v, list) and len(v) in (1, 3) and all(_is_int(n) and n >= 1 for n in v)
    return None if ok else "[C, H, W] or [F] of sizes >= 1"


def _extra_field(v: Any, spec: dict[str, Any]) -> str | None:
    """A captured graph's further inputs: ``[{"name", "shape", "dtype"}, ...]``, by name."""
    want = "a list of {name, shape, dtype} of a captured graph (names unique, not 'input')"
    if spec.get("layout") != "graph" or not isinstance(v, list) or not 1 <= len(v) <= 16:
        return want
    names = set()
    for e in v:
        ok = isinstance(e, dict) and set(e) == {"name", "shape", "dtype"}
        ok = ok and isinstance(e["name"], str) and e["name"].isidentifier()
        ok = ok and e["name"] not in names | {"input", "output"} and len(e["name"]) <= 64
        ok = ok and _shape_field(e["shape"], spec) is None and e["dtype"] in ("float32", "int64")
        if not ok:
            return want
        names.add(e["name"])
    return None


def _per_channel(positive: bool) -> Callable[[Any, dict[str, Any]], str | None]:
    def rule(v: Any, spec: dict[str, Any]) -> str | None:
        c = spec["shape"][0]
        ok = isinstance(v, list) and len(v) in (1, c) and all(_is_number(e) for e in v)
        ok = ok and not (positive and any(e <= 0 for e in v))
        return None if ok else f"1 or {c} finite numbers" + (" > 0" if positive else "")

    return rule


INPUT_FIELDS: dict[str, tuple[bool, Callable[[Any, dict[str, Any]], str | None]]] = {
    "shape": (True, _shape_field),
    "mean": (True, _per_channel(False)),
    "std": (True, _per_channel(True)),
    "pixels": (False, lambda v, spec: None if isinstance(v, bool) else "true or false"),
    "dtype": (False, lambda v, spec: None if v in ("float32", "int64") else "float32 or int64"),
    "layout": (False, lambda v, spec: None if v == "graph" else "'graph'"),
    "extra": (False, lambda v, spec: _extra_field(v, spec)),
}
"""The fields of a file's ``input`` entry: name -> (required, rule); others are refused."""


def check_input_spec(spec: Any) -> Value:
    """The model's input value, from the file's ``input`` entry (checked by
    :data:`INPUT_FIELDS`); GraphError if a field is missing, unknown or not accepted."""
    if not isinstance(spec, dict):
        raise GraphError("its input entry is not an object")
    unknown = sorted(set(spec) - set(INPUT_FIELDS))
    if unknown:
        raise GraphError(f"its input entry has an unknown field {unknown[0]!r}")
    for key, (required, rule) in INPUT_FIELDS.items():  # shape first: the others read it
        if key not in spec:
            if required:
                raise GraphError(f"its input entry lacks {key!r}")
            continue
        accepted = rule(spec[key], spec)
        if accepted is not None:
            raise GraphError(f"its input {key} = {str(spec[key])[:60]} is not {accepted}")
    shape = spec["shape"]
    if spec.get("layout") == "graph":  # as the model takes it (NCHW images, token ids)
        return Value("int" if spec.get("dtype") == "int64" else "float", tuple(shape))
    c = shape[0]
    return Value("float", (shape[1], shape[2], c) if len(shape) == 3 else (c,))


def check_graph(ops: list[Any], tensors: Mapping[str, Any], spec: Any) -> None:
    """Check every op of ``ops`` against its :data:`SCHEMA` row, in order, from the input the
    file's ``spec`` describes; raises GraphError naming the first op that does not fit.

    Also checked: names are unique and every input is an earlier value; the graph ends in one
    ``output`` op; every tensor of the file is read by some op.
    """
    values: dict[str, Value] = {"input": check_input_spec(spec)}
    for e in spec.get("extra", []):  # checked by check_input_spec
        values[e["name"]] = Value("int" if e["dtype"] == "int64" else "float", tuple(e["shape"]))
    used: set[str] = set()
    if not ops or ops[-1].op != "output":
        raise GraphError("the graph does not end in an output op")
    for i, op in enumerate(ops):
        where = f"op {op.name!r} ({op.op})"
        try:
            spec_ = SCHEMA.get(op.op)
            if spec_ is None:
                raise GraphError(f"it is of a kind this onebit does not know ({op.op!r})")
            if op.op == "output" and i != len(ops) - 1:
                raise GraphError("an output op that is not the last op")
            if op.name in values or (op.name == "output" and op.op != "output"):
                raise GraphError("its name is used twice")
            counts = spec_.inputs if isinstance(spec_.inputs, tuple) else (spec_.inputs,)
            if len(op.inputs) not in counts:
                want = " or ".join(map(str, counts))
                raise GraphError(f"it has {len(op.inputs)} inputs, not {want}")
            missing = [n for n in op.inputs if n not in values]
            if missing:
                raise GraphError(f"its input {missing[0]!r} is not an earlier value")
            ins = [values[n] for n in op.inputs]
            _check_attrs(spec_, op.attrs)
            out = spec_.infer(op.attrs, ins)
            need, may = spec_.roles(op.attrs, ins), spec_.optional_roles(op.attrs, ins)
            for role in op.tensors:
                if role not in need and role not in may:
                    accepted = ", ".join((*need, *may)) or "none"
                    raise GraphError(
                        f"it has an unknown tensor role {role!r} (accepted: {accepted})"
                    )
            for role, want in {**need, **may}.items():
                if role not in op.tensors:
                    if role in need:
                        raise GraphError(f"it lacks its tensor {role!r}")
                    continue
                name = op.tensors[role]
                if name not in tensors:
                    raise GraphError(f"its tensor {role} names {name!r}, which the file lacks")
                _check_tensor(role, want, tensors[name], name)
                used.add(name)
        except GraphError as e:
            raise GraphError(f"{where}: {e}") from None
        except (KeyError, TypeError, ValueError, IndexError) as e:  # a rule's assumption broke
            raise GraphError(f"{where}: its attributes do not fit together ({e})") from None
        values[op.name] = out
    unused = sorted(set(tensors) - used)
    if unused:
        raise GraphError(f"its tensor {unused[0]!r} is read by no op")
