"""Swap a model's Linear/Conv2d layers for binarized ones in place, and summarize the result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from onebit.layers import BinaryConv2d, BinaryLinear, binary_from_float, float_from_binary

__all__ = ["LayerSummary", "binarizable_layers", "binarize_", "summary", "unbinarize_"]

LayerFilter = Callable[[str, nn.Module], bool]


def binarizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Linear/Conv2d (binary or not), in registration order.

    onebit's models register layers in the order the forward pass uses them, so the first entry is
    the layer that sees the network input and the last one produces the logits.
    """
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
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

    Layers marked ``keep_float`` stay float. A model with ``float_layers_marked = True`` marks
    every layer that must stay float itself, and the method's first/last policy does not apply.

    The activation binarizer goes on every binarized layer except the first layer of the network,
    whose input is the data (BNN keeps the network input real). The binarized layers share the
    float layers' parameters, so call this before building the optimizer.
    """
    quantizer = method.weight_quantizer()
    if quantizer is None:
        return model
    # A model that marks all its float layers itself (keep_float; the character LSTM, whose first
    # binarizable layer is one of its gate matrices) opts out of the method's first/last policy.
    marked = getattr(model, "float_layers_marked", False)
    kf = (method.keep_first and not marked) if keep_first is None else keep_first
    kl = (method.keep_last and not marked) if keep_last is None else keep_last
    layers = binarizable_layers(model)
    for i, (name, m) in enumerate(layers):
        if isinstance(m, BinaryLinear | BinaryConv2d):  # re-binarizing: start from the float layer
            m = float_from_binary(m)
        # a model may mark layers that must stay float (a ViT's patch embedding and head)
        keep = (i == 0 and kf) or (i == len(layers) - 1 and kl) or getattr(m, "keep_float", False)
        if keep or (filter_fn is not None and not filter_fn(name, m)):
            _set_submodule(model, name, m)
            continue
        act = method.activation_quantizer() if i > 0 else None
        new = binary_from_float(m, quantizer, method.scale_rule, act)
        method.init_latent_(new)
        _set_submodule(model, name, new)
    return model


def unbinarize_(model: nn.Module) -> nn.Module:
    """Replace every binarized layer by its float parent (sharing parameters), in place."""
    for name, m in binarizable_layers(model):
        if isinstance(m, BinaryLinear | BinaryConv2d):
            _set_submodule(model, name, float_from_binary(m))
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

    Modules marked ``training_only`` (training state such as BiTAT's transform) are left out:
    the summary describes the deployed model.

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
    rows = []
    for name, m in model.named_modules():
        own = list(m.parameters(recurse=False))
        if not own or getattr(m, "training_only", False):  # e.g. BiTAT's transform: not deployed
            continue
        n_all = sum(p.numel() for p in own)
        binary = isinstance(m, BinaryLinear | BinaryConv2d) and m.binary
        n_bin = m.weight.numel() if binary else 0
        n_scale = 0
        if binary and m.scale_rule != "none":
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
