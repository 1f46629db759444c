"""Swap a model's Linear/Conv2d layers for binarized ones in place, and summarize the result.

Which layers stay float is decided by the method's first/last-layer policy, the caller's
``filter_fn``, and what the model declares about itself (:class:`LayerPolicy`, from a model's
``onebit_layer_policy()`` method): layers it always keeps float (a ViT's patch embedding and head)
and whether the first/last policy applies at all (the character LSTM's first binarizable layer is
a gate matrix, not the layer that reads the input).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from onebit.errors import OnebitError
from onebit.layers import (
    WeightParametrization,
    binary_from_float,
    float_from_binary,
    is_binary_layer,
    layer_kind,
)
from onebit.probe import LayerInput, data_flow, layer_inputs, watch_inputs
from onebit.quantizers import ThresholdSign

__all__ = [
    "BinarizeReport",
    "LayerPolicy",
    "LayerReport",
    "LayerSummary",
    "binarizable_layers",
    "binarize_",
    "layer_policy",
    "set_submodule",
    "summary",
    "unbinarize_",
]

LayerFilter = Callable[[str, nn.Module], bool]


@dataclass(frozen=True)
class LayerPolicy:
    """What a model declares about its own layers (its ``onebit_layer_policy()`` returns one).

    Attributes:
        keep_float: names of layers that stay float under every method.
        first_last: whether a method's first/last-layer policy applies (False: the model names
            every float layer itself in ``keep_float``).
    """

    keep_float: frozenset[str] = field(default_factory=frozenset)
    first_last: bool = True


def layer_policy(model: nn.Module) -> LayerPolicy:
    """The model's :class:`LayerPolicy` (its ``onebit_layer_policy()``), or the default one."""
    declare = getattr(model, "onebit_layer_policy", None)
    return declare() if callable(declare) else LayerPolicy()


NONNEG_OPTIONS = ("threshold", "hardtanh", "error")
"""What :func:`binarize_` does where a binary layer's input has one sign only (``activations``)."""

_NONNEG_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softmax, nn.Hardsigmoid, nn.SiLU, nn.GELU)


def binarizable_layers(model: nn.Module, embeddings: bool = False) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every layer :func:`binarize_` could binarize (binary or not), in
    registration order: the :data:`onebit.layers.LAYER_KINDS` types, embeddings only when asked.
    The ``out_proj`` of a ``MultiheadAttention`` goes with its attention module, not alone (the
    attention reads its weight directly)."""
    out = []
    inside_mha = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    for n, m in model.named_modules():
        if id(m) in inside_mha:
            continue
        if is_binary_layer(m):
            out.append((n, m))
            continue
        kind = layer_kind(m)
        if kind is not None and (embeddings or kind.name != "Embedding"):
            out.append((n, m))
    return out


@dataclass(frozen=True)
class LayerReport:
    """What :func:`binarize_` did with one layer.

    Attributes:
        name: the module's name in the model.
        kind: its type.
        binary: whether its weight is binary now.
        reason: why (``binarized``, the policy or filter that kept it float, ...).
        activations: how its input is binarized (``sign``, ``sign(x - tau)``), or ``-``.
        weights: its number of weights.
    """

    name: str
    kind: str
    binary: bool
    reason: str
    activations: str = "-"
    weights: int = 0


@dataclass
class BinarizeReport:
    """Every layer :func:`binarize_` saw, binarized or kept float, and why; what it changed.

    Attributes:
        method: the method's title.
        layers: one entry per layer, in registration order.
        flow: how first and last layers were found (``data flow of the example input`` or
            ``registration order``).
        changes: other edits to the model (a ReLU replaced by Hardtanh, thresholds set).
        notes: what the user should know (activations not checked without an example input).
    """

    method: str
    layers: list[LayerReport] = field(default_factory=list)
    flow: str = ""
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def binary(self) -> list[str]:
        """Names of the binarized layers."""
        return [r.name for r in self.layers if r.binary]

    def binary_fraction(self) -> float:
        """The fraction of the reported layers' weights that are binary."""
        total = sum(r.weights for r in self.layers)
        return sum(r.weights for r in self.layers if r.binary) / total if total else 0.0

    def table(self) -> str:
        """A plain-text table, one line per layer."""
        rows = [("layer", "type", "binary", "activations", "weights", "why")]
        rows += [
            (r.name or "(model)", r.kind, "yes" if r.binary else "no", r.activations,
             f"{r.weights:,}", r.reason)
            for r in self.layers
        ]  # fmt: skip
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        head = (
            f"{self.method}: {len(self.binary)} of {len(self.layers)} layers binary "
            f"({100 * self.binary_fraction():.1f}% of their weights); first/last layers by "
            f"{self.flow}"
        )
        return "\n".join([head, *lines, *self.changes, *self.notes])

    def __str__(self) -> str:
        return self.table()


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` of ``model`` by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _tied(model: nn.Module) -> dict[int, list[str]]:
    """Parameter id -> the modules that own it (a tied weight has two owners)."""
    owners: dict[int, list[str]] = {}
    for n, m in model.named_modules():
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), []).append(n)
    return owners


def _unsupported(model: nn.Module, taken: set[int]) -> list[tuple[str, nn.Module]]:
    """Modules that own a weight matrix but are of no binarizable type (an LSTM, a transposed
    conv, a custom layer): reported, kept float."""
    out = []
    for n, m in model.named_modules():
        if id(m) in taken or isinstance(m, WeightParametrization):
            continue
        own = dict(m.named_parameters(recurse=False))
        if any(p.dim() >= 2 and "weight" in k for k, p in own.items()):
            out.append((n, m))
    return out


def _channel_dim(m: nn.Module) -> int:
    return 1 if isinstance(m, nn.Conv1d | nn.Conv2d) else -1


def _mean_per_channel(x: Tensor, dim: int) -> Tensor:
    dim = dim % x.dim()
    return x.detach().float().transpose(0, dim).reshape(x.shape[dim], -1).mean(1)


def _one_signed(x: Tensor) -> bool:
    return not (bool((x >= 0).any()) and bool((x < 0).any()))


def _fix_dead_inputs(
    model: nn.Module,
    example: Sequence[Any] | Mapping[str, Any],
    acts: dict[str, nn.Module],
    mode: str,
    report: BinarizeReport,
) -> dict[str, str]:
    """Where a binary-activation layer's input takes one sign only on ``example``: thresholds,
    Hardtanh producers, or an error (``mode``); returns layer -> how its input is binarized.

    Layers are fixed in the order the example reaches them, each seeing the inputs that the
    fixes before it produce (a threshold acts at once; a replaced producer on the next pass).
    """
    how = {name: "sign" for name in acts}
    modules = dict(model.named_modules())
    replaced: list[bool] = [True]

    def see(name: str, inp: LayerInput) -> None:
        x, layer = inp.x, modules[name]
        if isinstance(layer.act, ThresholdSign):
            x = x - layer.act.shift(x)
        if not _one_signed(x) or how[name] not in ("sign",):
            return
        producer = inp.producer
        what = f"{producer} ({type(modules[producer]).__name__})" if producer else "a function"
        if mode == "error":
            raise OnebitError(
                f"the input of binary layer {name!r} (made by {what}) has one sign only on the "
                "example, so its binarized input would be constant; put a sign-symmetric "
                "activation there (e.g. Hardtanh), or binarize with activations='threshold'."
            )
        replaceable = producer is not None and isinstance(modules[producer], _NONNEG_MODULES)
        if replaceable and (mode == "hardtanh" or bool(x.max() == x.min())):
            # no threshold splits a constant input: the producer goes (it acts on the next pass)
            set_submodule(model, producer, nn.Hardtanh())
            modules[producer] = model.get_submodule(producer)
            report.changes.append(f"replaced {what} by Hardtanh: it fed binary layer {name!r}")
            how[name] = "sign (Hardtanh before)"
            replaced[0] = True
            return
        dim = _channel_dim(layer)
        layer.act = ThresholdSign(_mean_per_channel(x, dim), dim)
        how[name] = "sign(x - tau)"
        report.changes.append(
            f"binary layer {name!r}: its input (made by {what}) has one sign only, so it is "
            "binarized as sign(x - tau) with a learnable threshold tau per channel, set to the "
            "example's channel means"
        )

    for _ in range(len(acts) + 1):
        if not replaced[0]:
            break
        replaced[0] = False
        watch_inputs(model, example, acts, see)
    for name, inp in layer_inputs(model, example, acts).items():  # what is still constant
        act = modules[name].act
        x = inp.x - act.shift(inp.x) if isinstance(act, ThresholdSign) else inp.x
        if _one_signed(x):
            fan_in = modules[name].weight[0].numel()
            report.notes.append(
                f"warning: the binarized input of {name!r} (fan-in {fan_in}) is still constant on "
                "the example; keep the layer float (filter_fn) or change what feeds it."
            )
    return how


def binarize_(
    model: nn.Module,
    method: Any,
    *,
    example_inputs: Sequence[Any] | Mapping[str, Any] | None = None,
    filter_fn: LayerFilter | None = None,
    embeddings: bool = False,
    activations: str = "threshold",
    keep_first: bool | None = None,
    keep_last: bool | None = None,
) -> BinarizeReport:
    """Binarize the layers of any ``nn.Module`` in place; returns a report of every layer.

    Args:
        model: a float model (layers already binarized are re-configured). Its layer types:
            Linear, Conv1d, Conv2d (grouped, depthwise), Hugging Face's Conv1D, the projections
            of ``nn.MultiheadAttention``, and Embedding when ``embeddings``.
        method: an ``onebit.methods.Method``: its weight quantizer, scale rule and activation
            binarizer configure each layer; ``method.keep_first/keep_last`` is the default policy.
        example_inputs: the positional inputs (a tuple) or keyword inputs (a dict) of one
            forward pass, as in ``torch.export``. With it, the first layers are those that read
            the network input and the last those that write its output, found by following the
            data (:mod:`onebit.probe`), and every binary-activation input is checked to take both
            signs. Without it, the first and last layers in registration order.
        filter_fn: ``(name, module) -> bool``; layers it rejects stay float.
        embeddings: also binarize ``nn.Embedding`` tables.
        activations: where a binary layer's input has one sign only on the example (after a
            ReLU, a sigmoid, a softmax): ``threshold`` binarizes it as ``sign(x - tau)`` with a
            learnable per-channel threshold initialized from the example; ``hardtanh`` replaces
            the producing module by ``nn.Hardtanh`` (falls back to a threshold where the producer
            is not a module); ``error`` raises.
        keep_first: override the method's policy for the first layer(s) (True: stay float).
        keep_last: override the method's policy for the last layer(s).

    Layers the model's :class:`LayerPolicy` keeps float stay float; a model whose policy says
    ``first_last = False`` opts out of the method's first/last policy. A layer whose weight is
    tied to another module's (a language model's head and its token embedding) stays float.
    The activation binarizer goes on every binarized layer except those that read the network
    input (BNN keeps the network input real). The binarized layers share the float layers'
    parameters, so call this before building the optimizer.

    Raises:
        OnebitError: an unknown ``activations`` option, or ``activations = "error"`` and an input
            with one sign only.
    """
    if activations not in NONNEG_OPTIONS:
        raise OnebitError(
            f"activations = {activations!r} is not accepted; choose one of "
            f"{', '.join(NONNEG_OPTIONS)}."
        )
    title = method.title or type(method).__name__
    report = BinarizeReport(title)
    quantizer = method.weight_quantizer()
    layers = binarizable_layers(model, embeddings)
    if quantizer is None:
        report.flow = "(no binarization)"
        report.layers = [
            LayerReport(n, type(m).__name__, False, "full precision", weights=_n_weights(m))
            for n, m in layers
        ]
        return report
    layers = [(n, float_from_binary(m) if is_binary_layer(m) else m) for n, m in layers]
    for n, m in layers:  # re-binarizing starts from the float layer
        set_submodule(model, n, m)
    policy = layer_policy(model)
    kf = (method.keep_first and policy.first_last) if keep_first is None else keep_first
    kl = (method.keep_last and policy.first_last) if keep_last is None else keep_last
    names = [n for n, _ in layers]
    if example_inputs is not None:
        flow = data_flow(model, example_inputs, dict(layers))
        first, last = flow.first, flow.last
        report.flow = "the data flow of the example input"
    else:
        first, last = set(names[:1]), set(names[-1:])
        report.flow = "registration order (no example input)"
    owners = _tied(model)
    acts: dict[str, nn.Module] = {}
    for name, m in layers:
        kind = type(m).__name__
        tied = (
            [o for o in owners.get(id(m.weight), []) if o != name] if hasattr(m, "weight") else []
        )
        if isinstance(m, nn.MultiheadAttention) and not m._qkv_same_embed_dim:
            reason = "separate q/k/v weights (kdim/vdim differ): kept float"
        elif name in policy.keep_float:
            reason = "the model keeps it float"
        elif name in first and kf:
            reason = "reads the network input: float by the method's policy"
        elif name in last and kl:
            reason = "writes the network output: float by the method's policy"
        elif tied:
            reason = f"weight tied to {tied[0]}: kept float"
        elif filter_fn is not None and not filter_fn(name, m):
            reason = "filter_fn"
        else:
            reason = ""
        if reason:
            report.layers.append(LayerReport(name, kind, False, reason, weights=_n_weights(m)))
            continue
        reads_input = name in first if example_inputs is not None else name == names[0]
        act = None
        if not isinstance(m, nn.Embedding) and not reads_input:
            act = method.activation_quantizer()
        new = binary_from_float(m, quantizer, method.weight_scale(), act)
        method.init_latent_(new)
        set_submodule(model, name, new)
        if isinstance(m, nn.MultiheadAttention):
            out = binary_from_float(m.out_proj, quantizer, method.weight_scale(), None)
            method.init_latent_(out)
            new.out_proj = out
        if act is not None:
            acts[name] = new
        why = (
            "binarized"
            if example_inputs is None or name in flow.reached
            else ("binarized (not reached by the example input)")
        )
        report.layers.append(
            LayerReport(name, kind, True, why, "sign" if act is not None else "-", _n_weights(m))
        )
    taken = {id(model.get_submodule(n)) for n in names} | {
        id(x) for n in names for x in model.get_submodule(n).modules()
    }
    for name, m in _unsupported(model, taken):
        why = "unsupported layer type: kept float"
        if isinstance(m, nn.Embedding):
            why = "embedding table: float (binarize_(..., embeddings=True) binarizes it)"
        report.layers.append(LayerReport(name, type(m).__name__, False, why, weights=_n_weights(m)))
    if acts and example_inputs is not None:
        how = _fix_dead_inputs(model, example_inputs, acts, activations, report)
        report.layers = [
            dataclasses.replace(r, activations=how.get(r.name, r.activations))
            for r in report.layers
        ]
    elif acts:
        report.notes.append(
            "note: binary activations were not checked for constant signs (no example input); "
            "pass example_inputs to binarize_ to check them."
        )
    return report


def _n_weights(m: nn.Module) -> int:
    n = sum(p.numel() for k, p in m.named_parameters(recurse=False) if p.dim() >= 2)
    if isinstance(m, nn.MultiheadAttention):
        n += m.out_proj.weight.numel()
    return n


def unbinarize_(model: nn.Module) -> nn.Module:
    """Replace every binarized layer by its float parent (sharing parameters), in place."""
    for name, m in list(model.named_modules()):
        if is_binary_layer(m):
            set_submodule(model, name, float_from_binary(m))
    return model


@dataclass(frozen=True)
class LayerSummary:
    """Storage and compute of one module with parameters.

    ``bits`` counts 1 bit per binary weight, 32 per float parameter and per scale value.
    MACs are per example.
    """

    name: str
    kind: str
    binary_params: int
    float_params: int
    bits: int
    binary_macs: int
    float_macs: int


def _macs(m: nn.Module, out: Tensor) -> int:
    if isinstance(m, nn.Linear):
        return m.in_features * m.out_features * (out.numel() // out.shape[0] // m.out_features)
    if isinstance(m, nn.Conv1d | nn.Conv2d):
        per_out = m.in_channels // m.groups * math.prod(m.kernel_size)
        return per_out * out[0].numel()
    if is_binary_layer(m) and m.OUT_AXIS == 1:  # (in, out) weights: a linear layer
        return m.weight.numel() * (out[0].numel() // m.weight.shape[1])
    return 0


def summary(model: nn.Module, example: Tensor) -> list[LayerSummary]:
    """One row per module that owns parameters, measured with one forward pass of ``example``.

    Weight parametrizations (training state such as BiTAT's transform) are left out: the summary
    describes the deployed model.

    Args:
        model: the (possibly binarized) model.
        example: an input batch; only its first example is used.
    """
    macs: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d) or is_binary_layer(m):
            hooks.append(
                m.register_forward_hook(
                    lambda mod, i, o, name=name: macs.__setitem__(name, _macs(mod, o))
                )
            )
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example[:1])
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    training_only = {
        id(x) for p in model.modules() if isinstance(p, WeightParametrization) for x in p.modules()
    }
    rows = []
    for name, m in model.named_modules():
        own = list(m.parameters(recurse=False))
        if not own or id(m) in training_only:  # e.g. BiTAT's transform: not deployed
            continue
        n_all = sum(p.numel() for p in own)
        binary = is_binary_layer(m) and m.binary
        n_bin = m.weight.numel() if binary else 0
        n_scale = 0
        if binary and not m.scale_rule.trivial:
            n_scale = m.alpha().numel()
        n_float = n_all - n_bin
        mac = macs.get(name, 0)
        rows.append(
            LayerSummary(
                name=name,
                kind=type(m).__name__,
                binary_params=n_bin,
                float_params=n_float,
                bits=n_bin + 32 * (n_float + n_scale),
                binary_macs=mac if binary else 0,
                float_macs=0 if binary else mac,
            )
        )
    return rows
