"""Pack a trained binarized torch model into a ``onebit.runtime.PackedModel`` (1 bit per weight).

``pack(model, in_shape)`` traces the model with ``torch.fx`` (onebit's layers, BatchNorm,
activations and pooling are leaves; other modules, e.g. ResNet shortcuts, are traced through) and
turns every node into a runtime op:

- a binary layer stores ``sign(w)`` as bits (``w >= 0`` -> set bit -> +1) and a per-output
  ``alpha``; with a binary input it runs as XNOR-popcount, else as binary-weight x float GEMM;
- a BatchNorm whose input is a Linear/Conv used by nothing else folds into that layer: into its
  float weight and bias, or into the binary layer's per-channel ``alpha`` and ``beta``
  (``y = s * (alpha * dot + b) + t`` with ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``);
  other BatchNorms become per-channel affine ops;
- float layers stay float32;
- strided slicing (``x[:, :, ::2, ::2]``) and constant padding (``F.pad``) become the runtime's
  generic ``slice`` and ``pad`` ops, their NCHW axes mapped to the runtime's NHWC layout.

The packed model computes what ``model.eval()`` computes, up to float rounding.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.nn import functional as F

from onebit.errors import OnebitError
from onebit.kernels import pack_bits
from onebit.layers import is_binary_layer
from onebit.quantizers import ActSign
from onebit.runtime import Op, PackedModel
from onebit.shapes import pair

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


# torch NCHW axis -> runtime NHWC axis, for 4-D values
_NCHW_TO_NHWC = (0, 3, 1, 2)


def _global_pool(output_size: Any) -> bool:
    try:
        return pair(output_size) == (1, 1)
    except ValueError:  # e.g. (None, 1): keeps an input size
        return False


class _Packer:
    def __init__(self, model: nn.Module, in_shape: Sequence[int]) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.ops: list[Op] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.alias: dict[str, str] = {}  # fx node name -> value name (for no-op nodes)
        # value name -> (rank in torch, rank in the runtime); they differ after a global pool,
        # which torch keeps as (N, C, 1, 1) and the runtime as (N, C)
        d = 1 + len(in_shape)
        self.ndim: dict[str, tuple[int, int]] = {"input": (d, d)}

    def value(self, node: Any) -> str:
        if not isinstance(node, fx.Node):
            raise OnebitError(f"cannot pack a graph that uses the constant {node!r} as a tensor.")
        return self.alias.get(node.name, node.name)

    def tensor(self, op_name: str, role: str, arr: np.ndarray) -> str:
        key = f"{op_name}.{role}"
        self.tensors[key] = arr
        return key

    def emit(
        self,
        op: str,
        name: str,
        inputs: list[str],
        attrs: dict[str, Any] | None = None,
        tensors: dict[str, str] | None = None,
    ) -> Op:
        o = Op(op, name, inputs, attrs or {}, tensors or {})
        self.ops.append(o)
        if op in ("linear", "flatten"):
            self.ndim[name] = (2, 2)
        elif op in ("conv", "maxpool"):
            self.ndim[name] = (4, 4)
        elif op == "avgpool":
            self.ndim[name] = (4, 2)
        elif inputs and all(i in self.ndim for i in inputs):  # elementwise, slice, pad
            self.ndim[name] = max(self.ndim[i] for i in inputs)
        return o

    def axes(self, node: fx.Node, x: str) -> tuple[int, ...]:
        """Runtime axis of each torch axis of value ``x``: NCHW -> NHWC for 4-D values."""
        if x not in self.ndim:
            raise OnebitError(f"cannot pack {node.name}: the rank of its input is unknown.")
        t, r = self.ndim[x]
        if t != r:
            raise OnebitError(
                f"cannot pack {node.name}: it slices or pads a globally pooled value, which "
                "the runtime holds as (N, C) where torch has (N, C, 1, 1)."
            )
        return _NCHW_TO_NHWC if t == 4 else tuple(range(t))

    # -- generic tensor ops -------------------------------------------------------------------

    def getitem(self, node: fx.Node) -> None:
        """``x[idx]`` with slices (and ``...``) only: a runtime ``slice`` op.

        Each torch axis ``i`` gets ``[start, stop, step]`` (``None`` start = 0, ``None`` step =
        1, ``None`` stop = to the end) and goes to runtime axis ``axes[i]``.
        """
        src, idx = node.args[0], node.args[1]
        x = self.value(src)
        axes = self.axes(node, x)
        items = list(idx) if isinstance(idx, tuple) else [idx]
        if items.count(Ellipsis) > 1:
            raise OnebitError(f"cannot pack {node.name}: an index with two '...'.")
        if Ellipsis in items:
            i = items.index(Ellipsis)
            items[i : i + 1] = [slice(None)] * (len(axes) - len(items) + 1)
        if len(items) > len(axes):
            raise OnebitError(f"cannot pack {node.name}: too many indices for its input.")
        slices: list[list[int | None]] = [[0, None, 1] for _ in axes]
        for axis, it in enumerate(items):
            ok = isinstance(it, slice) and all(
                v is None or (isinstance(v, int) and not isinstance(v, bool))
                for v in (it.start, it.stop, it.step)
            )
            if not ok or (it.step is not None and it.step < 1):
                raise OnebitError(
                    f"cannot pack {node.name}: only indexing by slices with constant ints and "
                    f"step >= 1 is supported (got {it!r})."
                )
            start = 0 if it.start is None else it.start
            slices[axes[axis]] = [start, it.stop, 1 if it.step is None else it.step]
        self.emit("slice", node.name, [x], {"slices": slices})

    def pad(self, node: fx.Node) -> None:
        """``F.pad(x, pad, "constant", value)``: a runtime ``pad`` op.

        torch's ``pad`` lists ``(before, after)`` for the last axis first, then the one before
        it, ...; each torch axis goes to runtime axis ``axes[i]``. ``value`` None means 0.
        """
        args = list(node.args) + [None] * (4 - len(node.args))
        kw = node.kwargs
        pads = kw.get("pad", args[1])
        mode = kw.get("mode", args[2] if args[2] is not None else "constant")
        value = kw.get("value", args[3])
        x = self.value(args[0])
        axes = self.axes(node, x)
        value = 0.0 if value is None else value
        if mode != "constant" or not isinstance(value, int | float) or isinstance(value, bool):
            raise OnebitError(f"cannot pack {node.name}: only constant padding by a number.")
        if (
            not isinstance(pads, list | tuple)
            or len(pads) % 2
            or len(pads) > 2 * len(axes)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pads)
        ):
            raise OnebitError(
                f"cannot pack {node.name}: padding must be constant ints >= 0, got {pads!r}."
            )
        out: list[list[int]] = [[0, 0] for _ in axes]
        for i in range(len(pads) // 2):
            out[axes[len(axes) - 1 - i]] = [pads[2 * i], pads[2 * i + 1]]
        self.emit("pad", node.name, [x], {"pads": out, "value": float(value)})

    # -- layers -------------------------------------------------------------------------------

    def layer(self, node: fx.Node, m: nn.Module, bn: nn.Module | None) -> None:
        """A Linear/Conv (binary or float), with the BatchNorm that follows folded in."""
        name = node.name
        is_conv = isinstance(m, nn.Conv2d)
        if is_conv and (pair(m.dilation) != (1, 1) or m.padding_mode != "zeros"):
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
                "kernel_size": list(pair(m.kernel_size)),
                "stride": list(pair(m.stride)),
                "padding": list(pair(m.padding)),
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
            elif node.op == "call_function" and node.target is operator.getitem:
                self.getitem(node)
            elif node.op == "call_function" and node.target is F.pad:
                self.pad(node)
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
            if not _global_pool(m.output_size):
                raise OnebitError(f"cannot pack {node.target}: only global average pooling.")
            self.emit("avgpool", node.name, [self.value(x)])
            # torch keeps (N, C, 1, 1); the runtime's global pool gives (N, C), and the flatten
            # that follows in onebit's models is then a no-op on 2-D values
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
    packer = _Packer(model, in_shape)
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
