"""Export a binarized model to ONNX as a float graph with ±scale weights, for other runtimes.

The ONNX graph computes what ``model.eval()`` computes: every binary layer becomes a float layer
whose weight is ``alpha * sign(w)``, every activation binarizer a ``sign`` (with ``sign(0) = +1``,
as GreaterOrEqual + Where). It does not get onebit's 1-bit storage or kernels: it is for users who
deploy on runtimes that only take ONNX.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from onebit.convert import set_submodule
from onebit.errors import OnebitError
from onebit.layers import BinaryMultiheadAttention, float_from_binary, is_binary_layer
from onebit.probe import first_tensor
from onebit.quantizers import ThresholdSign

__all__ = ["export_onnx", "hard_float_copy"]


class SignAct(nn.Module):
    """``sign(x - tau)`` with ``sign(0) = +1`` (``tau`` = 0 without thresholds), in ops every ONNX
    runtime has."""

    def __init__(self, act: Any = None) -> None:
        super().__init__()
        self.shift = act if isinstance(act, ThresholdSign) else None

    def forward(self, x: Tensor) -> Tensor:
        if self.shift is not None:
            x = x - self.shift.shift(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def _hard_layer(layer: nn.Module) -> nn.Module:
    """The float layer computing what binary ``layer`` computes in eval mode."""
    with torch.no_grad():
        w = layer.forward_weight(hard=True).clone()
    out_w = None
    if isinstance(layer, BinaryMultiheadAttention) and is_binary_layer(layer.out_proj):
        with torch.no_grad():
            out_w = layer.out_proj.forward_weight(hard=True).clone()
    plain = float_from_binary(layer)
    if isinstance(plain, nn.MultiheadAttention):
        plain.in_proj_weight = nn.Parameter(w)
        plain.out_proj = (
            float_from_binary(plain.out_proj) if is_binary_layer(plain.out_proj) else plain.out_proj
        )
        if out_w is not None:
            plain.out_proj.weight = nn.Parameter(out_w)
    else:
        plain.weight = nn.Parameter(w)
    if isinstance(getattr(plain, "bias", None), Tensor):
        plain.bias = nn.Parameter(plain.bias.detach().clone())
    if layer.act is None or isinstance(plain, nn.MultiheadAttention):
        return plain  # (an attention's binarized inputs: see _SignedInputs)
    return nn.Sequential(SignAct(layer.act), plain)


class _SignedInputs(nn.Module):
    """``nn.MultiheadAttention`` whose query, key and value pass ``sign`` first."""

    def __init__(self, mha: nn.MultiheadAttention, act: Any) -> None:
        super().__init__()
        self.mha, self.sign = mha, SignAct(act)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, *args: Any, **kw: Any) -> Any:
        q = self.sign(query)
        k = q if key is query else self.sign(key)
        v = k if value is key else self.sign(value)
        return self.mha(q, k, v, *args, **kw)


def hard_float_copy(model: nn.Module) -> nn.Module:
    """A float copy of ``model`` whose binary layers hold ``alpha * sign(w)`` (eval mode)."""
    m = copy.deepcopy(model).eval()
    for name, layer in list(m.named_modules()):
        if not (is_binary_layer(layer) and layer.binary) or not name:
            continue
        if "." in name and is_binary_layer(m.get_submodule(name.rsplit(".", 1)[0])):
            continue  # an attention's out_proj: made with its attention
        new = _hard_layer(layer)
        if isinstance(new, nn.MultiheadAttention) and layer.act is not None:
            new = _SignedInputs(new, layer.act)
        set_submodule(m, name, new)
    return m


def _example(model: nn.Module, example_inputs: Any) -> tuple[Tensor, ...]:
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list | tuple) and all(isinstance(v, int) for v in example_inputs):
        return (torch.zeros(2, *example_inputs),)  # an input shape, as older callers passed
    return tuple(example_inputs)


def export_onnx(
    model: nn.Module,
    path: str | Path | Sequence[int],
    example_inputs: Any = None,
    opset: int = 17,
) -> Path:
    """Write ``model`` (binarized, eval semantics) as an ONNX file with a dynamic batch axis.

    Args:
        model: the model, trained or not (it is copied; the original is untouched).
        path: the ONNX file to write.
        example_inputs: its inputs for one forward pass, as in ``torch.export`` (integer token
            ids for a language model); the batch axis stays free.
        opset: the ONNX opset.

    (``export_onnx(model, in_shape, path)``, the older form, feeds zeros of that shape.)
    """
    if isinstance(path, list | tuple):  # the older (model, in_shape, path) form
        path, example_inputs = example_inputs, path
    example = _example(model, example_inputs)
    m = hard_float_copy(model)
    p = Path(path)
    names = [f"input{i}" if i else "input" for i in range(len(example))]
    axes = {n: {0: "batch"} for n in names} | {"logits": {0: "batch"}}
    try:
        torch.onnx.export(
            _Logits(m),
            example,
            str(p),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    except Exception as e:  # the exporter raises many types
        raise OnebitError(f"ONNX export failed ({type(e).__name__}: {str(e)[:200]}).") from None
    return p


class _Logits(nn.Module):
    """The model's logits alone (a Hugging Face model returns a ModelOutput)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # a Hugging Face token model given only ids derives its attention mask with ops the
        # ONNX exporter lacks (torch.diff over position ids); an all-ones mask is the same mask
        params = inspect.signature(model.forward).parameters
        self.ones_mask = hasattr(model, "config") and "attention_mask" in params

    def forward(self, *inputs: Tensor) -> Tensor:
        x = inputs[0]
        if self.ones_mask and len(inputs) == 1 and not x.is_floating_point():
            return first_tensor(self.model(x, attention_mask=torch.ones_like(x)))
        return first_tensor(self.model(*inputs))
