"""Pack a trained binarized torch model into a ``onebit.runtime.PackedModel`` (1 bit per weight).

``pack(model, in_shape)`` traces the model with ``torch.fx`` (onebit's layers, BatchNorm,
activations, pooling and ResNet shortcuts are leaves) and turns every node into a runtime op:

- a binary layer stores ``sign(w)`` as bits (``w >= 0`` -> set bit -> +1) and a per-output
  ``alpha``; with a binary input it runs as XNOR-popcount, else as binary-weight x float GEMM;
- a BatchNorm whose input is a Linear/Conv used by nothing else folds into that layer: into its
  float weight and bias, or into the binary layer's per-channel ``alpha`` and ``beta``
  (``y = s * (alpha * dot + b) + t`` with ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``);
  other BatchNorms become per-channel affine ops;
- float layers stay float32.

The packed model computes what ``model.eval()`` computes, up to float rounding.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from onebit.errors import OnebitError
from onebit.kernels import pack_bits
from onebit.layers import is_binary_layer
from onebit.models import _ShortcutA
from onebit.quantizers import ActSign
from onebit.runtime import Op, PackedModel

__all__ = ["pack"]

LEAVES = (
    nn.Linear,
    nn.Conv2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.Hardtanh,
    nn.Identity,
    nn.Dropout,
    nn.Flatten,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    _ShortcutA,
)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAVES) or super().is_leaf_module(m, qualname)


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy())


def _bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` with ``bn(x) = s * x + t`` in eval mode, per channel."""
    var, mean = bn.running_var, bn.running_mean
    s = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        s = s * bn.weight
    t = -mean * s
    if bn.bias is not None:
        t = t + bn.bias
    return s.detach(), t.detach()


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(v[0]), int(v[1])]


class _Packer:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.ops: list[Op] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.alias: dict[str, str] = {}  # fx node name -> value name (for no-op nodes)

    def value(self, node: Any) -> str:
        if not isinstance(node, fx.Node):
            raise OnebitError(f"cannot pack a graph that uses the constant {node!r} as a tensor.")
        return self.alias.get(node.name, node.name)

    def tensor(self, op_name: str, role: str, arr: np.ndarray) -> str:
        key = f"{op_name}.{role}"
        self.tensors[key] = arr
        return key

    def emit(self, op: str, name: str, inputs: list[str], attrs=None, tensors=None) -> Op:
        o = Op(op, name, inputs, attrs or {}, tensors or {})
        self.ops.append(o)
        return o

    # -- layers -------------------------------------------------------------------------------

    def layer(self, node: fx.Node, m: nn.Module, bn: nn.Module | None) -> None:
        """A Linear/Conv (binary or float), with the BatchNorm that follows folded in."""
        name = node.name
        is_conv = isinstance(m, nn.Conv2d)
        if is_conv and (_pair(m.dilation) != [1, 1] or m.padding_mode != "zeros"):
            raise OnebitError(f"cannot pack {node.target}: dilated or non-zero-padded conv.")
        w = m.weight.detach().float()
        if is_conv:  # torch (Cout, Cin/g, kh, kw) -> (Cout, kh, kw, Cin/g): NHWC im2col order
            w = w.permute(0, 2, 3, 1)
        w2 = w.reshape(w.shape[0], -1)
        bias = m.bias.detach().float() if m.bias is not None else torch.zeros(w.shape[0])
        s, t = (
            _bn_affine(bn) if bn is not None else (torch.ones(w.shape[0]), torch.zeros(w.shape[0]))
        )
        attrs: dict[str, Any]
        if is_conv:
            attrs = {
                "kernel_size": _pair(m.kernel_size),
                "stride": _pair(m.stride),
                "padding": _pair(m.padding),
                "in_channels": m.in_channels,
                "out_channels": m.out_channels,
            }
            if m.groups != 1:  # grouped/depthwise: rows of kh*kw*Cin/g, group-major outputs
                attrs["groups"] = m.groups
        else:
            attrs = {"in_features": m.in_features, "out_features": m.out_features}
        binary = is_binary_layer(m) and m.binary
        if not binary:
            tensors = {
                "weight": self.tensor(name, "weight", _np(w2 * s[:, None])),
                "bias": self.tensor(name, "bias", _np(bias * s + t)),
            }
            attrs["mode"] = "float"
        else:
            if m.act is not None and not isinstance(m.act, ActSign):
                raise OnebitError(f"cannot pack {node.target}: unknown activation binarizer.")
            alpha = m.alpha().detach().float().reshape(-1).expand(w.shape[0])
            attrs["mode"] = "binary" if m.act is not None else "binary_weights"
            # rows of K = in_features, or kh*kw*Cin bits in the runtime's NHWC im2col order
            bits = pack_bits(_np(w2))
            tensors = {
                "bits": self.tensor(name, "bits", bits),
                "alpha": self.tensor(name, "alpha", _np(alpha * s)),
                "beta": self.tensor(name, "beta", _np(bias * s + t)),
            }
        self.emit("conv" if is_conv else "linear", name, [self.value(node.args[0])], attrs, tensors)

    def affine(self, node: fx.Node, bn: nn.Module) -> None:
        s, t = _bn_affine(bn)
        self.emit(
            "affine",
            node.name,
            [self.value(node.args[0])],
            {},
            {
                "scale": self.tensor(node.name, "scale", _np(s)),
                "shift": self.tensor(node.name, "shift", _np(t)),
            },
        )

    # -- the graph ----------------------------------------------------------------------------

    def run(self, graph: fx.Graph) -> None:
        users = {n.name: len(n.users) for n in graph.nodes}
        folded: set[str] = set()
        for node in graph.nodes:
            if node.name in folded:
                continue
            if node.op == "placeholder":
                self.alias[node.name] = "input"
            elif node.op == "output":
                self.emit("output", "output", [self.value(node.args[0])])
            elif node.op == "call_module":
                m = self.modules[str(node.target)]
                self.module(node, m, users, folded)
            elif node.op == "call_function" and node.target in (operator.add, torch.add):
                a, b = node.args[:2]
                self.emit("add", node.name, [self.value(a), self.value(b)])
            elif node.op == "call_function" and node.target is torch.flatten:
                self.emit("flatten", node.name, [self.value(node.args[0])])
            else:
                raise OnebitError(
                    f"cannot pack the operation {node.op} {node.target} (node {node.name}); "
                    "onebit packs models built from Linear/Conv2d/BatchNorm/activations/pooling."
                )

    def module(self, node: fx.Node, m: nn.Module, users: dict[str, int], folded: set[str]) -> None:
        x = node.args[0] if node.args else None
        if isinstance(m, nn.Linear | nn.Conv2d):
            bn_node = next(iter(node.users)) if users[node.name] == 1 else None
            bn = None
            if bn_node is not None and bn_node.op == "call_module":
                cand = self.modules[str(bn_node.target)]
                if isinstance(cand, nn.BatchNorm1d | nn.BatchNorm2d):
                    bn = cand
                    folded.add(bn_node.name)
                    self.alias[bn_node.name] = node.name
            self.layer(node, m, bn)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            self.affine(node, m)
        elif isinstance(m, nn.ReLU):
            self.emit("relu", node.name, [self.value(x)])
        elif isinstance(m, nn.Hardtanh):
            self.emit("hardtanh", node.name, [self.value(x)], {"min": m.min_val, "max": m.max_val})
        elif isinstance(m, nn.Identity | nn.Dropout):
            self.alias[node.name] = self.value(x)
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise OnebitError(f"cannot pack {node.target}: only Flatten(1, -1) is supported.")
            self.emit("flatten", node.name, [self.value(x)])
        elif isinstance(m, nn.MaxPool2d):
            k, s, p = m.kernel_size, m.stride, m.padding
            if not (isinstance(k, int) and isinstance(s, int)) or p != 0 or m.dilation != 1:
                raise OnebitError(f"cannot pack {node.target}: only square, unpadded max pooling.")
            self.emit("maxpool", node.name, [self.value(x)], {"kernel_size": k, "stride": s})
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            if _pair(m.output_size) != [1, 1]:
                raise OnebitError(f"cannot pack {node.target}: only global average pooling.")
            self.emit("avgpool", node.name, [self.value(x)])
            # torch keeps (N, C, 1, 1); the runtime's global pool gives (N, C), and the flatten
            # that follows in onebit's models is then a no-op on 2-D values
        elif isinstance(m, _ShortcutA):
            self.emit("shortcut_a", node.name, [self.value(x)], {"stride": m.stride, "pad": m.pad})
        else:
            raise OnebitError(f"cannot pack module {node.target} of type {type(m).__name__}.")


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


def fuse_thresholds(ops: list[Op], tensors: dict[str, np.ndarray]) -> None:
    """Let XNOR layers hand packed bits straight to the next XNOR layers, in place.

    Where a binary-activation layer's output (BatchNorm folded in) goes, through an optional
    hardtanh (which keeps signs), only into binary-activation layers, it is replaced by the packed
    bits ``threshold_sign(acc, thresh, flip)``: no float output, no separate sign and packing.
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
        ):
            via = users[0]
            users = consumers.get(via.name, [])
        if not users or not all(xnor(u) for u in users):
            continue
        alpha = tensors.pop(op.tensors.pop("alpha"))
        beta = tensors.pop(op.tensors.pop("beta"))
        thresh, flip = _thresholds(alpha, beta)
        op.tensors["thresh"] = f"{op.name}.thresh"
        op.tensors["flip"] = f"{op.name}.flip"
        tensors[op.tensors["thresh"]] = thresh
        tensors[op.tensors["flip"]] = flip.astype(np.uint8)
        op.attrs["output"] = "bits"
        for u in users:
            u.inputs = [op.name if i == (via.name if via else op.name) else i for i in u.inputs]
            u.attrs["input"] = "bits"
        if via is not None:
            removed.add(via.name)
    ops[:] = [op for op in ops if op.name not in removed]


def pack(
    model: nn.Module,
    in_shape: Sequence[int],
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    source: dict[str, Any] | None = None,
    fuse: bool = True,
) -> PackedModel:
    """Pack a trained (binarized) model for the CPU runtime.

    Args:
        model: onebit model (binary layers deploy ``alpha * sign(w)``; float layers stay float).
        in_shape: one example's shape, ``(C, H, W)`` or ``(F,)``.
        mean, std: input normalization the model was trained with (stored for raw inputs).
        source: informational provenance stored in the file (config, method).
        fuse: fold BatchNorm + sign into integer thresholds between binary layers.

    Returns:
        A ``PackedModel``: ``packed(x)`` matches ``model.eval()(x)`` for normalized ``x``.
    """
    was_training = model.training
    model.eval()
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # fx raises many types for untraceable code
        raise OnebitError(
            f"cannot trace the model for packing ({type(e).__name__}: {e})."
        ) from None
    finally:
        model.train(was_training)
    packer = _Packer(model)
    with torch.no_grad():
        packer.run(graph)
    targets = {n.name: str(n.target) for n in graph.nodes if n.op == "call_module"}
    for op in packer.ops:
        if op.name in targets:
            op.attrs["module"] = targets[op.name]
    if fuse:
        fuse_thresholds(packer.ops, packer.tensors)
    c = in_shape[0]
    spec = {
        "shape": [int(v) for v in in_shape],
        "mean": [float(v) for v in (mean if mean is not None else [0.0] * c)],
        "std": [float(v) for v in (std if std is not None else [1.0] * c)],
    }
    return PackedModel(packer.ops, packer.tensors, spec, source or {})
