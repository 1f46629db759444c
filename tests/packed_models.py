"""Packed models built by hand from runtime ops (no torch, no packer): files for the tests of the
``.onebit`` format, the fuzz and ``onebit run``, independent of how ``onebit.pack`` makes them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from onebit import kernels
from onebit.runtime import Op, PackedModel


def _bits(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    return kernels.pack_bits(rng.standard_normal((rows, k)).astype(np.float32))


def _pos(rng: np.random.Generator, n: int) -> np.ndarray:
    return (0.1 + rng.random(n)).astype(np.float32)


def _vec(rng: np.random.Generator, n: int, scale: float = 0.3) -> np.ndarray:
    return (scale * rng.standard_normal(n)).astype(np.float32)


def mlp(
    in_shape: tuple[int, ...] = (16,),
    classes: int = 4,
    hidden: int = 24,
    *,
    pixels: bool | None = None,
    source: dict[str, Any] | None = None,
    seed: int = 0,
) -> PackedModel:
    """flatten (for images) -> binary-weight linear -> relu -> float linear -> output."""
    rng = np.random.default_rng(seed)
    f = math.prod(in_shape)
    ops, t = [], {}
    x = "input"
    if len(in_shape) == 3:
        ops.append(Op("flatten", "flat", ["input"], {"module": "0"}))
        x = "flat"
    t["fc1.bits"], t["fc1.alpha"], t["fc1.beta"] = (
        _bits(rng, hidden, f),
        _pos(rng, hidden),
        _vec(rng, hidden),
    )
    attrs = {"in_features": f, "out_features": hidden, "mode": "binary_weights", "module": "1"}
    ops.append(
        Op(
            "linear",
            "fc1",
            [x],
            attrs,
            {"bits": "fc1.bits", "alpha": "fc1.alpha", "beta": "fc1.beta"},
        )
    )
    ops.append(Op("relu", "act", ["fc1"], {"module": "2"}))
    t["fc2.weight"] = rng.standard_normal((classes, hidden)).astype(np.float32)
    t["fc2.bias"] = _vec(rng, classes)
    attrs = {"in_features": hidden, "out_features": classes, "mode": "float", "module": "3"}
    ops.append(Op("linear", "fc2", ["act"], attrs, {"weight": "fc2.weight", "bias": "fc2.bias"}))
    ops.append(Op("output", "output", ["fc2"]))
    c = in_shape[0]
    spec: dict[str, Any] = {"shape": list(in_shape), "mean": [0.0] * c, "std": [1.0] * c}
    if pixels is not None:
        spec["pixels"] = pixels
    return PackedModel(ops, t, spec, source or {})


def cnn(seed: int = 0) -> PackedModel:
    """A small net that uses every op kind and tensor role of the format: float, XNOR (bits out,
    bits in) and binary-weight convs, a grouped conv, affine, hardtanh, relu, add, maxpool,
    slice, pad, global average pool, flatten, binary and float linear layers."""
    rng = np.random.default_rng(seed)
    ops: list[Op] = []
    t: dict[str, np.ndarray] = {}

    def conv(name, x, cin, cout, mode, *, groups=1, inp=None, out=None):
        k = 9 * cin // groups
        attrs = {"kernel_size": [3, 3], "stride": [1, 1], "padding": [1, 1],
                 "in_channels": cin, "out_channels": cout, "mode": mode, "module": name}  # fmt: skip
        if groups != 1:
            attrs["groups"] = groups
        roles = {}
        if mode == "float":
            t[f"{name}.weight"] = (0.3 * rng.standard_normal((cout, k))).astype(np.float32)
            t[f"{name}.bias"] = _vec(rng, cout)
            roles = {"weight": f"{name}.weight", "bias": f"{name}.bias"}
        else:
            t[f"{name}.bits"] = _bits(rng, cout, k)
            roles = {"bits": f"{name}.bits"}
            if out == "bits":
                attrs["output"] = "bits"
                t[f"{name}.thresh"] = np.round(3 * rng.standard_normal(cout)).astype(np.float32)
                t[f"{name}.flip"] = (rng.random(cout) < 0.3).astype(np.uint8)
                roles.update(thresh=f"{name}.thresh", flip=f"{name}.flip")
            else:
                t[f"{name}.alpha"], t[f"{name}.beta"] = _pos(rng, cout), _vec(rng, cout)
                roles.update(alpha=f"{name}.alpha", beta=f"{name}.beta")
        if inp == "bits":
            attrs["input"] = "bits"
        ops.append(Op("conv", name, [x], attrs, roles))

    conv("c1", "input", 3, 8, "float")
    t["bn.scale"], t["bn.shift"] = _pos(rng, 8), _vec(rng, 8)
    ops.append(
        Op("affine", "bn", ["c1"], {"module": "bn"}, {"scale": "bn.scale", "shift": "bn.shift"})
    )
    ops.append(Op("hardtanh", "ht", ["bn"], {"min": -1.0, "max": 1.0, "module": "ht"}))
    conv("c2", "ht", 8, 8, "binary", out="bits")
    conv("c3", "c2", 8, 8, "binary", inp="bits")
    conv("c4", "ht", 8, 8, "binary_weights", groups=4)
    ops.append(Op("add", "res", ["c3", "c4"]))
    ops.append(Op("relu", "r", ["res"], {"module": "r"}))
    ops.append(Op("maxpool", "mp", ["r"], {"kernel_size": 2, "stride": 2, "module": "mp"}))
    ops.append(
        Op("slice", "sl", ["mp"], {"slices": [[0, None, 1], [0, None, 1], [1, None, 2], [0, 6, 1]]})
    )
    ops.append(Op("pad", "pd", ["sl"], {"pads": [[0, 0], [1, 0], [0, 1], [1, 1]], "value": 0.5}))
    ops.append(Op("avgpool", "gap", ["pd"], {"module": "gap"}))
    ops.append(Op("flatten", "fl", ["gap"]))
    t["fc.bits"], t["fc.alpha"], t["fc.beta"] = _bits(rng, 6, 8), _pos(rng, 6), _vec(rng, 6)
    t["fc.act_shift"] = _vec(rng, 8, 0.1)  # input thresholds of a binary-activation layer
    ops.append(Op("linear", "fc", ["fl"], {"in_features": 8, "out_features": 6, "mode": "binary"},
                  {"bits": "fc.bits", "alpha": "fc.alpha", "beta": "fc.beta", "act_shift": "fc.act_shift"}))  # fmt: skip
    t["head.weight"] = rng.standard_normal((5, 6)).astype(np.float32)
    ops.append(Op("linear", "head", ["fc"], {"in_features": 6, "out_features": 5, "mode": "float"},
                  {"weight": "head.weight"}))  # fmt: skip
    ops.append(Op("output", "output", ["head"]))
    spec = {"shape": [3, 8, 8], "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3]}
    return PackedModel(ops, t, spec, {"note": "hand-built"})
