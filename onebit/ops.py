"""Packed binary layers inside torch: 1 bit per weight, the runtime's kernels, torch.library ops.

:func:`pack_` replaces every binarized layer of a model, in place, by a packed module that keeps
its weights as bits (``int64`` words holding the uint64 rows of :mod:`onebit.kernels`, a set bit
is +1), its per-output ``alpha`` and ``beta`` (scale and bias; BatchNorm folded in where
:func:`onebit.packer.pack` folds it) and, for a binary-activation layer, its input thresholds.
Their forward passes call the custom operators ``onebit::linear`` and ``onebit::conv2d``
(``torch.library``, with fake kernels for tracing), whose CPU kernels are the runtime's own ops
(:mod:`onebit.runtime.ops`), so the packed model computes in torch exactly what a ``.onebit``
file computes, and ``torch.export`` sees one node per binary layer with its bits and scales.

The math of ``onebit::linear`` (``x (..., K)`` float32, ``bits (N, ceil(K/64))``)::

    binary_weights:  y = alpha * (x @ wb^T) + beta               wb = ±1 from the bits
    binary:          y = alpha * (sign(x - tau) @ wb^T) + beta   (tau = 0 without thresholds)

``onebit::conv2d`` is the same over NCHW inputs, its weight rows in NHWC im2col order
``(Cout, kh, kw, Cin/groups)``; the zero padding is 0, not ±1, as in the torch layer.

Importing this module registers the two operators (that is what ``torch.library`` decorators do).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from onebit.errors import OnebitError
from onebit.fileio import atomic_write
from onebit.kernels import pack_bits, unpack_bits
from onebit.layers import (
    BinaryConv1d,
    BinaryConv2d,
    BinaryEmbedding,
    BinaryLayer,
    BinaryLinear,
    BinaryMultiheadAttention,
    BinaryTransposedLinear,
    is_binary_layer,
)
from onebit.quantizers import ActSign, ThresholdSign
from onebit.runtime.ops import OPS, Op
from onebit.shapes import pair

__all__ = [
    "PackedConv2d",
    "PackedLayer",
    "PackedLinear",
    "load_packed_",
    "pack_",
    "packed_weights",
    "save_packed",
]

# per bits tensor: (a weak reference to it, the layouts derived from it); keyed by id and
# checked by identity (a tensor's == compares values, so it cannot key a WeakKeyDictionary)
_STATE: dict[int, tuple[weakref.ref[Tensor], dict[Any, Any]]] = {}


def _cache_of(bits: Tensor) -> dict[Any, Any]:
    entry = _STATE.get(id(bits))
    if entry is None or entry[0]() is not bits:
        for k in [k for k, (r, _) in _STATE.items() if r() is None]:  # forget dead tensors
            del _STATE[k]
        entry = (weakref.ref(bits), {})
        _STATE[id(bits)] = entry
    return entry[1]


class _Layer:
    """What a runtime op reads (``onebit.runtime.ops.ModelState``): one layer's tensors and the
    layouts derived from them, kept per bits tensor while it lives."""

    def __init__(self, tensors: dict[str, np.ndarray], cache: dict[Any, Any]) -> None:
        self.tensors = tensors
        self.cache = cache


def _run(kind: str, x: np.ndarray, bits: Tensor, alpha: Tensor, beta: Tensor,
         tau: Tensor | None, attrs: dict[str, Any]) -> np.ndarray:  # fmt: skip
    tensors = {
        "bits": bits.detach().numpy().view(np.uint64),
        "alpha": alpha.detach().float().numpy(),
        "beta": beta.detach().float().numpy(),
    }
    roles = {"bits": "bits", "alpha": "alpha", "beta": "beta"}
    if tau is not None:
        tensors["act_shift"] = tau.detach().float().numpy()
        roles["act_shift"] = "act_shift"
    cache = _cache_of(bits)
    return OPS[kind](_Layer(tensors, cache), Op(kind, "layer", ["x"], attrs, roles), x)


@torch.library.custom_op("onebit::linear", mutates_args=())
def linear_op(
    x: Tensor, bits: Tensor, alpha: Tensor, beta: Tensor, tau: Tensor | None,
    in_features: int, mode: str,
) -> Tensor:  # fmt: skip
    """``onebit::linear``: a packed binary linear layer (module doc)."""
    lead = x.shape[:-1]
    x2 = np.ascontiguousarray(x.detach().float().reshape(-1, in_features).numpy())
    attrs = {"mode": mode, "in_features": in_features, "out_features": int(bits.shape[0])}
    y = _run("linear", x2, bits, alpha, beta, tau, attrs)
    return torch.from_numpy(np.ascontiguousarray(y)).reshape(*lead, bits.shape[0])


@linear_op.register_fake
def _(x, bits, alpha, beta, tau, in_features, mode):  # type: ignore[no-untyped-def]
    return x.new_empty(*x.shape[:-1], bits.shape[0])


@torch.library.custom_op("onebit::conv2d", mutates_args=())
def conv2d_op(
    x: Tensor, bits: Tensor, alpha: Tensor, beta: Tensor, tau: Tensor | None,
    in_channels: int, kernel_size: list[int], stride: list[int], padding: list[int],
    groups: int, mode: str,
) -> Tensor:  # fmt: skip
    """``onebit::conv2d``: a packed binary convolution over NCHW inputs (module doc)."""
    xn = np.ascontiguousarray(x.detach().float().permute(0, 2, 3, 1).numpy())  # NHWC
    attrs = {
        "mode": mode,
        "in_channels": in_channels,
        "out_channels": int(bits.shape[0]),
        "kernel_size": list(kernel_size),
        "stride": list(stride),
        "padding": list(padding),
    }
    if groups != 1:
        attrs["groups"] = groups
    y = _run("conv", xn, bits, alpha, beta, tau, attrs)
    return torch.from_numpy(np.ascontiguousarray(y)).permute(0, 3, 1, 2).contiguous()


@conv2d_op.register_fake
def _(x, bits, alpha, beta, tau, in_channels, kernel_size, stride, padding, groups, mode):  # type: ignore[no-untyped-def]
    kh, kw = kernel_size
    h = (x.shape[2] + 2 * padding[0] - kh) // stride[0] + 1
    w = (x.shape[3] + 2 * padding[1] - kw) // stride[1] + 1
    return x.new_empty(x.shape[0], bits.shape[0], h, w)


def packed_weights(layer: BinaryLayer) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(bits, alpha, tau)`` of a binarized layer in eval semantics: bits of ``sign(w)`` in the
    kernels' row order (NHWC im2col order for convs), ``alpha`` per output, the input
    thresholds (None without)."""
    w = layer.latent().detach().float()
    if isinstance(layer, nn.Conv2d | nn.Conv1d):  # (Cout, Cin/g, kh[, kw]) -> (Cout, kh, kw, Cin/g)
        w = w.unsqueeze(2) if w.dim() == 3 else w
        w = w.permute(0, 2, 3, 1)
    w2 = w.reshape(w.shape[0], -1).contiguous()
    bits = torch.from_numpy(pack_bits(w2.numpy()).view(np.int64))
    alpha = layer.alpha().detach().float().reshape(-1).expand(w.shape[0]).clone()
    act = layer.act
    tau = act.tau.detach().float().clone() if isinstance(act, ThresholdSign) else None
    if act is not None and not isinstance(act, ActSign | ThresholdSign):
        raise OnebitError(f"cannot pack a layer with activation binarizer {type(act).__name__}.")
    return bits, alpha, tau


def _no_grad(x: Tensor) -> Tensor:
    """Packed layers are for inference: no gradient flows through them, so their outputs are
    plain tensors that the rest of the model may modify in place (an SE block's ``x *= w``)."""
    return x.detach() if x.requires_grad else x


class PackedLayer(nn.Module):
    """A packed binary layer: buffers ``bits`` (int64 words), ``alpha``, ``beta`` and optionally
    ``tau``; ``mode`` ``binary_weights`` (float inputs) or ``binary`` (signs of the inputs)."""

    def __init__(self, bits: Tensor, alpha: Tensor, beta: Tensor, tau: Tensor | None,
                 mode: str) -> None:  # fmt: skip
        super().__init__()
        self.register_buffer("bits", bits)
        self.register_buffer("alpha", alpha.float())
        self.register_buffer("beta", beta.float())
        self.register_buffer("tau", None if tau is None else tau.float())
        self.mode = mode
        self.weight_shape: tuple[int, ...] = ()

    @property
    def weight(self) -> Tensor:
        """The float weight ``alpha * wb`` rebuilt from the bits (for code that reads a layer's
        weight, e.g. for its dtype; the packed forward never does), in torch's layout."""
        k = int(np.prod(self.weight_shape[1:]))
        # torch ops only (it also runs on the fake tensors of a capture): bit j of each word
        shifts = torch.arange(64, device=self.bits.device)
        flags = (self.bits.unsqueeze(-1) >> shifts) & 1  # (N, words, 64), low bit first
        rows = flags.reshape(self.bits.shape[0], -1)[:, :k].float() * 2 - 1
        w = rows * self.alpha.reshape(-1, 1)
        if len(self.weight_shape) == 4:  # stored (Cout, kh, kw, Cin/g)
            cout, cin, kh, kw = self.weight_shape
            return w.reshape(cout, kh, kw, cin).permute(0, 3, 1, 2).contiguous()
        return w.reshape(self.weight_shape)

    def fold_(self, scale: Tensor, shift: Tensor) -> None:
        """Fold a per-output affine map that follows the layer (an eval BatchNorm): ``s * y + t``."""
        self.alpha.mul_(scale)
        self.beta.mul_(scale).add_(shift)


class PackedLinear(PackedLayer):
    """``onebit::linear`` over the last axis (Linear, Hugging Face Conv1D)."""

    def __init__(self, in_features: int, *args: Any) -> None:
        super().__init__(*args)
        self.in_features = in_features

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.onebit.linear(
            _no_grad(x), self.bits, self.alpha, self.beta, self.tau, self.in_features, self.mode
        )

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.bits.shape[0]}, mode={self.mode}"


class PackedConv2d(PackedLayer):
    """``onebit::conv2d`` (a Conv1d runs as a conv of height 1)."""

    def __init__(self, in_channels: int, kernel_size: Any, stride: Any, padding: Any,
                 groups: int, one_d: bool, *args: Any) -> None:  # fmt: skip
        super().__init__(*args)
        self.in_channels, self.groups, self.one_d = in_channels, groups, one_d
        self.kernel_size = list(kernel_size)
        self.stride, self.padding = list(stride), list(padding)

    def forward(self, x: Tensor) -> Tensor:
        if self.one_d:
            x = x.unsqueeze(2)
        y = torch.ops.onebit.conv2d(
            _no_grad(x), self.bits, self.alpha, self.beta, self.tau, self.in_channels, self.kernel_size,
            self.stride, self.padding, self.groups, self.mode,
        )  # fmt: skip
        return y.squeeze(2) if self.one_d else y

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}, out={self.bits.shape[0]}, kernel={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
                f"mode={self.mode}")  # fmt: skip


@torch.library.custom_op("onebit::embedding", mutates_args=())
def embedding_op(ids: Tensor, bits: Tensor, alpha: Tensor, dim: int) -> Tensor:
    """``onebit::embedding``: rows ``alpha[i] * wb[i]`` of a packed table for integer ``ids``."""
    idx = ids.detach().long().reshape(-1).numpy()
    rows = unpack_bits(bits.detach().numpy().view(np.uint64)[idx], dim).astype(np.float32)
    rows *= alpha.detach().float().numpy()[idx, None]
    return torch.from_numpy(rows).reshape(*ids.shape, dim)


@embedding_op.register_fake
def _(ids, bits, alpha, dim):  # type: ignore[no-untyped-def]
    return ids.new_empty(*ids.shape, dim, dtype=torch.float32)


class PackedEmbedding(nn.Module):
    """An embedding table of ±alpha rows (one alpha per row) kept as bits: ``onebit::embedding``."""

    def __init__(self, layer: BinaryEmbedding) -> None:
        super().__init__()
        if layer.padding_idx is not None or layer.max_norm is not None:
            raise OnebitError("cannot pack a binary embedding with padding_idx or max_norm.")
        bits, alpha, _ = packed_weights(layer)
        self.register_buffer("bits", bits)
        self.register_buffer("alpha", alpha)
        self.dim = int(layer.weight.shape[1])

    def forward(self, ids: Tensor) -> Tensor:
        return torch.ops.onebit.embedding(ids, self.bits, self.alpha, self.dim)


def _bias(m: nn.Module, n: int) -> Tensor:
    b = getattr(m, "bias", None)
    return b.detach().float().clone() if isinstance(b, Tensor) else torch.zeros(n)


def packed_module(layer: BinaryLayer) -> nn.Module:
    """The packed module of one binarized layer (eval semantics of the layer alone)."""
    mode = "binary" if layer.act is not None else "binary_weights"
    if isinstance(layer, BinaryEmbedding):
        return PackedEmbedding(layer)
    if isinstance(layer, BinaryMultiheadAttention):
        raise OnebitError(
            "pack_ does not pack nn.MultiheadAttention yet; keep it float "
            "(binarize_(..., filter_fn=lambda n, m: not isinstance(m, nn.MultiheadAttention)))."
        )
    bits, alpha, tau = packed_weights(layer)
    beta = _bias(layer, bits.shape[0])
    if isinstance(layer, BinaryLinear | BinaryTransposedLinear):
        k = layer.latent().shape[1]
        packed = PackedLinear(k, bits, alpha, beta, tau, mode)
        packed.weight_shape = (bits.shape[0], k)
        return packed
    if isinstance(layer, BinaryConv2d | BinaryConv1d):
        one_d = isinstance(layer, BinaryConv1d)
        if layer.padding_mode != "zeros" or any(d != 1 for d in pair(layer.dilation)):
            raise OnebitError("cannot pack a dilated or non-zero-padded binary convolution.")
        ks, st, pd = (
            ([1, layer.kernel_size[0]], [1, layer.stride[0]], [0, layer.padding[0]])
            if one_d
            else (pair(layer.kernel_size), pair(layer.stride), pair(layer.padding))
        )
        packed = PackedConv2d(layer.in_channels, ks, st, pd, layer.groups, one_d,
                              bits, alpha, beta, tau, mode)  # fmt: skip
        packed.weight_shape = tuple(layer.weight.shape)
        return packed
    raise OnebitError(f"cannot pack binary layer of type {type(layer).__name__}.")


def pack_(model: nn.Module) -> nn.Module:
    """Replace every binarized layer of ``model`` by its packed module, in place; returns it.

    The packed model is for inference: it computes ``model.eval()``'s outputs with 1 bit per
    binary weight, through the runtime's kernels, inside torch (generation loops, pipelines, any
    code that calls the model). Layers switched to float (``binary = False``) are unbinarized.
    """
    from onebit.convert import set_submodule  # the core's helper; pack_ sits above it

    model.eval()
    for name, m in list(model.named_modules()):
        if not is_binary_layer(m):
            continue
        if not m.binary:
            from onebit.layers import float_from_binary

            set_submodule(model, name, float_from_binary(m))
            continue
        set_submodule(model, name, packed_module(m))
    return model


def save_packed(model: nn.Module, path: str) -> None:
    """Write a packed model's state (bits, scales, the float layers) as safetensors (tied
    weights, such as a language model's embedding and output layer, are stored once)."""
    from safetensors.torch import save_model

    meta = {"format": "onebit-packed-torch"}
    atomic_write(path, lambda tmp: save_model(model, str(tmp), meta))


def load_packed_(model: nn.Module, path: str) -> nn.Module:
    """Load :func:`save_packed`'s file into a model packed the same way (``pack_``)."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    try:
        with safe_open(str(path), "pt") as f:
            tag = (f.metadata() or {}).get("format")
    except Exception as e:  # safetensors raises several types for a foreign file
        raise OnebitError(f"{path} is not a packed onebit state ({type(e).__name__}).") from None
    if tag != "onebit-packed-torch":
        raise OnebitError(f"{path} is a safetensors file but not one save_packed wrote.")
    try:
        load_model(model, str(path))
    except RuntimeError as e:
        raise OnebitError(f"{path} holds another model's packed state ({str(e)[:120]}).") from None
    return model
