"""Export a binarized model to ONNX as a float graph with ±scale weights, for other runtimes.

The ONNX graph computes what ``model.eval()`` computes: every binary layer becomes a float layer
whose weight is ``alpha * sign(w)``, every activation binarizer a ``sign`` (with ``sign(0) = +1``,
as GreaterOrEqual + Where). It does not get onebit's 1-bit storage or kernels: it is for users who
deploy on runtimes that only take ONNX.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from onebit.convert import binarizable_layers, set_submodule
from onebit.errors import OnebitError
from onebit.layers import float_from_binary, is_binary_layer

__all__ = ["export_onnx", "hard_float_copy"]


class SignAct(nn.Module):
    """``sign(x)`` with ``sign(0) = +1``, in ops every ONNX runtime has."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def hard_float_copy(model: nn.Module) -> nn.Module:
    """A float copy of ``model`` whose binary layers hold ``alpha * sign(w)`` (eval mode)."""
    m = copy.deepcopy(model).eval()
    for name, layer in binarizable_layers(m):
        if not (is_binary_layer(layer) and layer.binary):
            continue
        with torch.no_grad():
            w = layer.forward_weight(hard=True).clone()
        plain = float_from_binary(layer)
        plain.weight = nn.Parameter(w)
        if plain.bias is not None:
            plain.bias = nn.Parameter(plain.bias.detach().clone())
        new: nn.Module = nn.Sequential(SignAct(), plain) if layer.act is not None else plain
        set_submodule(m, name, new)
    return m


def export_onnx(
    model: nn.Module, in_shape: Sequence[int], path: str | Path, opset: int = 17
) -> Path:
    """Write ``model`` (binarized, eval semantics) as an ONNX file with a dynamic batch axis."""
    m = hard_float_copy(model)
    example = torch.zeros(2, *in_shape)
    p = Path(path)
    try:
        torch.onnx.export(
            m,
            (example,),
            str(p),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    except Exception as e:  # the exporter raises many types
        raise OnebitError(f"ONNX export failed ({type(e).__name__}: {e}).") from None
    return p
