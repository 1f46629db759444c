"""Swap a model's Linear/Conv2d layers for binarized ones in place, and summarize the result.

Which layers stay float is decided by the method's first/last-layer policy, the caller's
``filter_fn``, and what the model declares about itself (:class:`LayerPolicy`, from a model's
``onebit_layer_policy()`` method): layers it always keeps float (a ViT's patch embedding and head)
and whether the first/last policy applies at all (the character LSTM's first binarizable layer is
a gate matrix, not the layer that reads the input).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from onebit.layers import (
    BinaryConv2d,
    BinaryLinear,
    WeightParametrization,
    binary_from_float,
    float_from_binary,
)

__all__ = [
    "LayerPolicy",
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


def binarizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Linear/Conv2d (binary or not), in registration order.

    onebit's models register layers in the order the forward pass uses them, so the first entry is
    the layer that sees the network input and the last one produces the logits.
    """
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` of ``model`` by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def binarize_(
    model: nn.Module,
    method: Any,
    *,
    filter_fn: LayerFilter | None = None,
    keep_first: bool | None = None,
    keep_last: bool | None = None,
) -> nn.Module:
    """Replace Linear/Conv2d layers of ``model`` by binarized layers, in place; returns ``model``.

    Args:
        model: a float model (layers already binarized are re-configured).
        method: an ``onebit.methods.Method``: its weight quantizer, scale rule and activation
            binarizer configure each layer; ``method.keep_first/keep_last`` is the default policy.
        filter_fn: ``(name, module) -> bool``; layers it rejects stay float.
        keep_first: override the method's policy for the first layer (True: stays float).
        keep_last: override the method's policy for the last layer.

    Layers the model's :class:`LayerPolicy` keeps float stay float; a model whose policy says
    ``first_last = False`` opts out of the method's first/last policy.

    The activation binarizer goes on every binarized layer except the first layer of the network,
    whose input is the data (BNN keeps the network input real). The binarized layers share the
    float layers' parameters, so call this before building the optimizer.
    """
    quantizer = method.weight_quantizer()
    if quantizer is None:
        return model
    policy = layer_policy(model)
    kf = (method.keep_first and policy.first_last) if keep_first is None else keep_first
    kl = (method.keep_last and policy.first_last) if keep_last is None else keep_last
    layers = binarizable_layers(model)
    for i, (name, m) in enumerate(layers):
        if isinstance(m, BinaryLinear | BinaryConv2d):  # re-binarizing: start from the float layer
            m = float_from_binary(m)
        keep = (i == 0 and kf) or (i == len(layers) - 1 and kl) or name in policy.keep_float
        if keep or (filter_fn is not None and not filter_fn(name, m)):
            set_submodule(model, name, m)
            continue
        act = method.activation_quantizer() if i > 0 else None
        new = binary_from_float(m, quantizer, method.weight_scale(), act)
        method.init_latent_(new)
        set_submodule(model, name, new)
    return model


def unbinarize_(model: nn.Module) -> nn.Module:
    """Replace every binarized layer by its float parent (sharing parameters), in place."""
    for name, m in binarizable_layers(model):
        if isinstance(m, BinaryLinear | BinaryConv2d):
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
    if isinstance(m, nn.Conv2d):
        per_out = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        return per_out * out[0].numel()
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
        if isinstance(m, nn.Linear | nn.Conv2d):
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
        binary = isinstance(m, BinaryLinear | BinaryConv2d) and m.binary
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
