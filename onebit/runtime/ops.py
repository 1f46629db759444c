"""The packed graph's steps (``Op``) and their numpy + kernels implementations (the ``OPS`` tables).

Values between ops are float32 ``(N, F)`` or NHWC ``(N, H, W, C)`` arrays, or packed sign bits
(uint64, see :mod:`onebit.kernels`) between XNOR layers whose thresholds were fused. Every op is
``fn(model, op, *inputs) -> array``, where ``model`` holds the tensors of the file and a cache of
what is derived from them on first use.

Ops and their attributes (``attrs``) and tensors (``tensors``: role -> tensor name):

- ``linear`` / ``conv``: ``mode`` ``"float"`` (``weight``, ``bias``), ``"binary_weights"``
  (``bits``, ``alpha``, ``beta``: ``y = alpha * (x @ wb.T) + beta``, ``wb`` = ±1 from the bits) or
  ``"binary"`` (the same with ``sign(x)``, or ``sign(x - act_shift)`` when the layer has input
  thresholds, one per input channel; or ``thresh``, ``flip`` with ``output = "bits"``:
  bit = ``(acc >= thresh) XOR flip``; ``input = "bits"``: the input is already packed bits).
  Convs carry ``kernel_size``, ``stride``, ``padding``, ``in_channels``, ``out_channels`` and
  ``groups`` (absent = 1); their weight rows are in NHWC im2col order ``(Cout, kh, kw, Cin/g)``.
- ``affine``: per-channel (last axis) ``x * scale + shift``.
- ``relu``, ``hardtanh`` (``min``, ``max``), ``maxpool`` (``kernel_size``, ``stride``),
  ``avgpool`` (global: ``(N, H, W, C) -> (N, C)``), ``flatten`` (channel-major, as torch on NCHW),
  ``add`` (two inputs).
- ``slice``: ``slices`` = one ``[start, stop, step]`` per axis of the runtime's layout (``stop``
  null = to the end; Python's rules for negative indices; ``step >= 1``): ``x[start:stop:step, ...]``.
- ``pad``: ``pads`` = one ``[before, after]`` per axis (``>= 0``), ``value`` (constant):
  the output has ``before + n + after`` entries along each axis, ``value`` outside ``x``.

Layouts derived once per loaded model and kept in ``model.cache`` (never saved): XNOR weights in
the AVX-512 kernel's panels, binary-weight convs' ±1 rows for the direct conv, depthwise taps,
and the int8 kernels' weight panels.

Activations of binary-weight layers (``binary_weights``) are float32 by default: the exact path.
:func:`set_activations` ``(model, "int8")`` (or ``ONEBIT_ACTIVATIONS=int8`` in the environment,
read on a model's first call) quantizes each layer's input to uint8 per sample (per row of a
linear layer, per image of a conv) and multiplies by the ±1 weights in integers (AMX or VNNI
where the CPU has them): faster from batch 1 on, not exact (see README, "Speed").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from onebit import kernels
from onebit.shapes import conv_output_size

__all__ = [
    "FLOAT_GEMM_MAX_COLS",
    "OPS",
    "OPS_INPLACE",
    "STRIDED_OPS",
    "VIEW_OPS",
    "Array",
    "ModelState",
    "Op",
    "get_activations",
    "set_activations",
]

Array = npt.NDArray[Any]


@dataclass
class Op:
    """One step of the packed graph: ``op`` kind, its input value names, attributes, tensor keys."""

    op: str
    name: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, str] = field(default_factory=dict)  # role -> tensor name in the file

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "op": self.op,
            "name": self.name,
            "inputs": self.inputs,
            "attrs": self.attrs,
            "tensors": self.tensors,
        }


class ModelState(Protocol):
    """What an op reads from the model that runs it: its tensors and its derived-data cache."""

    tensors: dict[str, Array]
    cache: dict[Any, Array]


ACTIVATIONS = ("float", "int8")
_ACT_KEY = "activations"


def set_activations(m: ModelState, mode: str) -> None:
    """How ``m``'s binary-weight layers take their inputs: ``"float"`` (exact, the default) or
    ``"int8"`` (uint8 per sample, integer products; faster, not exact)."""
    if mode not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, got {mode!r}.")
    m.cache[_ACT_KEY] = mode  # type: ignore[assignment]


def get_activations(m: ModelState) -> str:
    """The model's activation mode (:func:`set_activations`; else ``ONEBIT_ACTIVATIONS``, else
    ``"float"``)."""
    mode = m.cache.get(_ACT_KEY)
    if mode is None:
        env = os.environ.get("ONEBIT_ACTIVATIONS", "float") or "float"
        set_activations(m, env)
        mode = m.cache[_ACT_KEY]
    return mode  # type: ignore[return-value]


# ISA levels whose kernels read the load-time layouts fastest (XNOR panels, direct conv); on
# the others the runtime keeps the row layouts and im2col + GEMM.
_WIDE = frozenset({"avx512", "avx512_vnni", "amx"})


def _wide() -> bool:
    return kernels.get_isa() in _WIDE


def _vnni(m: ModelState, op: Op, k: int) -> tuple[Array, Array]:
    """The int8 kernels' weight panels and column sums of a binary layer, made once."""
    key = (op.name, "vnni")
    if key not in m.cache:
        m.cache[key] = kernels.vnni_panels(m.tensors[op.tensors["bits"]], k)  # type: ignore[assignment]
    return m.cache[key]  # type: ignore[return-value]


def _xnor_panels(m: ModelState, op: Op, k: int) -> Array:
    key = (op.name, "xnor_panels")
    if key not in m.cache:
        m.cache[key] = kernels.xnor_panels(m.tensors[op.tensors["bits"]], k)
    return m.cache[key]


def _shifted(m: ModelState, op: Op, x: Array) -> Array:
    """``x - tau`` for a binary-activation layer with input thresholds (role ``act_shift``, one
    per input channel: the last axis), else ``x``: the packed activation bit is ``x >= tau``."""
    if "act_shift" not in op.tensors:
        return x
    return np.subtract(x, m.tensors[op.tensors["act_shift"]], dtype=np.float32)


def _linear(m: ModelState, op: Op, x: Array) -> Array:
    t, a = m.tensors, op.attrs
    mode = a["mode"]
    if mode == "float":
        y = x @ t[op.tensors["weight"]].T
        if "bias" in op.tensors:
            y += t[op.tensors["bias"]]
        return y
    bits = t[op.tensors["bits"]]
    k = a["in_features"]
    if mode == "binary_weights":
        alpha, beta = t[op.tensors["alpha"]], t[op.tensors["beta"]]
        if get_activations(m) == "int8":
            wp, ws = _vnni(m, op, k)
            return kernels.binary_u8_gemm(x, wp, ws, bits.shape[0], alpha, beta)
        return kernels.binary_float_gemm(x, bits, k, alpha, beta)
    xb = x if a.get("input") == "bits" else kernels.pack_bits(_shifted(m, op, x))
    if _wide():
        return _xnor_out(
            m, op, kernels.xnor_gemm_panels(xb, _xnor_panels(m, op, k), k, bits.shape[0])
        )
    return _xnor_out(m, op, kernels.xnor_gemm(xb, bits, k))


def _xnor_out(m: ModelState, op: Op, acc: Array) -> Array:
    """int32 ``(M, N)`` accumulators -> packed sign bits (fused BN + sign) or float outputs."""
    t = m.tensors
    if op.attrs.get("output") == "bits":
        return kernels.threshold_sign(
            acc,
            t[op.tensors["thresh"]],
            t[op.tensors["flip"]],  # uint8 0/1
        )
    return kernels.scale_bias(acc, t[op.tensors["alpha"]], t[op.tensors["beta"]])


# Below this many output channels, a binary-weight conv runs faster as a float GEMM on the ±1
# weights (unpacked once and cached) than as the binary x float kernel: the kernel builds 16-entry
# tables per input row and group of 4 inputs, which only pay off over many output columns.
# Measured on the 2-core Zen 5 (one thread, OpenBLAS): N=16 BLAS 1.4-2.3x faster at M=1k-64k;
# N=32 even; N=64 the kernel 1.6-2.1x faster.
FLOAT_GEMM_MAX_COLS = 32


def _unpacked(m: ModelState, op: Op, k: int) -> Array:
    """The ±1 float32 ``(N, K)`` weights of a binary layer, unpacked once per loaded model."""
    key = (op.name, "pm1")
    if key not in m.cache:
        m.cache[key] = kernels.unpack_bits(m.tensors[op.tensors["bits"]], k).astype(np.float32)
    return m.cache[key]


def _tap_bits(m: ModelState, op: Op) -> Array:
    """XNOR conv weights in the kernel's per-tap layout ``(Cout, kh, kw, ceil(Cin/64))``.

    The file stores them densely (rows of ``kh * kw * Cin`` bits) so that layers with few input
    channels do not pay for per-tap word padding on disk; the tap layout is built once on load.
    """
    key = (op.name, "taps")
    if key not in m.cache:
        a = op.attrs
        kh, kw = a["kernel_size"]
        cin, cout = a["in_channels"], a["out_channels"]
        pm1 = _unpacked(m, op, kh * kw * cin).reshape(cout, kh, kw, cin)
        m.cache[key] = kernels.pack_conv_weight(np.ascontiguousarray(pm1.transpose(0, 3, 1, 2)))
        del m.cache[(op.name, "pm1")]
    return m.cache[key]


def _depthwise_taps(m: ModelState, op: Op) -> Array:
    """A depthwise conv's weights as ``(kh, kw, C)`` float32 (±1 for binary layers), made once."""
    key = (op.name, "dw")
    if key not in m.cache:
        a = op.attrs
        kh, kw = a["kernel_size"]
        c = a["out_channels"]
        if a["mode"] == "float":
            w = np.asarray(m.tensors[op.tensors["weight"]], dtype=np.float32)
        else:
            w = kernels.unpack_bits(m.tensors[op.tensors["bits"]], kh * kw).astype(np.float32)
        m.cache[key] = np.ascontiguousarray(w.reshape(c, kh, kw).transpose(1, 2, 0))
    return m.cache[key]


def _direct_weight(m: ModelState, op: Op, k: int) -> Array:
    """A binary-weight conv's ±1 rows in the direct conv's layout ``(kh * kw * Cin, 16 * j)``."""
    key = (op.name, "direct")
    if key not in m.cache:
        pm1 = kernels.unpack_bits(m.tensors[op.tensors["bits"]], k).astype(np.float32)
        m.cache[key] = kernels.direct_conv_weight(pm1)
    return m.cache[key]


# Binary-weight convs with fewer output channels than this run as the direct conv (exact float
# sums, no im2col) where the ISA is wide; from here on the lookup-table GEMM on im2col is faster.
# Measured on the 2-core Xeon (Sapphire Rapids), one thread, ResNet-20 shapes at batch 64:
# 16 channels 3.2x faster than im2col + BLAS, 32 channels 1.9x faster than im2col + the
# lookup-table GEMM, 64 channels 0.83x (so not used there).
DIRECT_MAX_COLS = 64


def _grouped_conv(m: ModelState, op: Op, x: Array) -> Array:
    """A grouped (e.g. depthwise) conv: per group, its ``kh * kw * Cin/g`` patches times its
    ``Cout/g`` weight rows. Binary layers use their ±1 weights as floats (and ``sign(x)`` as a
    ±1 input in ``binary`` mode), so the integer accumulators are exact; then ``alpha, beta``."""
    t, a = m.tensors, op.attrs
    kh, kw = a["kernel_size"]
    (sh, sw), (ph, pw) = a["stride"], a["padding"]
    g, cin, cout = a["groups"], a["in_channels"], a["out_channels"]
    cg, og = cin // g, cout // g
    mode = a["mode"]
    if mode == "binary":
        x = np.where(_shifted(m, op, x) >= 0, np.float32(1), np.float32(-1))
    if cg == 1 and og == 1:  # depthwise: the native kernel, per channel over its taps
        w = _depthwise_taps(m, op)
        if mode == "float":
            bias = t[op.tensors["bias"]] if "bias" in op.tensors else None
            return kernels.depthwise_conv2d(x, w, (sh, sw), (ph, pw), None, bias)
        alpha, beta = t[op.tensors["alpha"]], t[op.tensors["beta"]]
        return kernels.depthwise_conv2d(x, w, (sh, sw), (ph, pw), alpha, beta)
    cols = kernels.im2col(x, (kh, kw), (sh, sw), (ph, pw))  # (N*Ho*Wo, kh*kw*C), native
    n = x.shape[0]
    ho, wo = conv_output_size(x.shape[1], kh, sh, ph), conv_output_size(x.shape[2], kw, sw, pw)
    # (M, kh, kw, g, C/g) -> (M, g, kh, kw, C/g): each group's patch as one row
    k = kh * kw * cg
    cols = cols.reshape(-1, kh, kw, g, cg).transpose(0, 3, 1, 2, 4).reshape(-1, g, k)
    wt = t[op.tensors["weight"]] if mode == "float" else _unpacked(m, op, k)
    y = np.einsum("mgk,gok->mgo", cols, wt.reshape(g, og, k), optimize=True).reshape(-1, cout)
    if mode == "float":
        if "bias" in op.tensors:
            y += t[op.tensors["bias"]]
    else:
        y = y * t[op.tensors["alpha"]] + t[op.tensors["beta"]]
    return y.astype(np.float32, copy=False).reshape(n, ho, wo, cout)


def _conv(m: ModelState, op: Op, x: Array) -> Array:
    t, a = m.tensors, op.attrs
    if a.get("groups", 1) != 1:
        return _grouped_conv(m, op, x)
    kh, kw = a["kernel_size"]
    stride, pad = tuple(a["stride"]), tuple(a["padding"])
    n, h, w, _ = x.shape
    ho = conv_output_size(h, kh, stride[0], pad[0])
    wo = conv_output_size(w, kw, stride[1], pad[1])
    cout = a["out_channels"]
    mode = a["mode"]
    if mode == "binary":  # x: float NHWC, or packed uint64 NHWC words when input == "bits"
        if a.get("input") != "bits":
            x = _shifted(m, op, x)
        acc = kernels.binary_conv2d(
            x, _tap_bits(m, op), stride=stride, padding=pad, in_channels=a["in_channels"]
        )
        y = _xnor_out(m, op, acc.reshape(-1, cout))
        return y.reshape(n, ho, wo, -1)
    if mode == "binary_weights":
        k = kh * kw * a["in_channels"]
        alpha, beta = t[op.tensors["alpha"]], t[op.tensors["beta"]]
        if get_activations(m) == "int8":
            wp, ws = _vnni(m, op, k)
            return kernels.binary_u8_conv2d(x, wp, ws, cout, (kh, kw), stride, pad, alpha, beta)
        if cout < DIRECT_MAX_COLS and _wide():
            return kernels.direct_conv2d(
                x, _direct_weight(m, op, k), cout, (kh, kw), stride, pad, alpha, beta
            )
    cols = kernels.im2col(x, (kh, kw), stride, pad)  # (N*Ho*Wo, kh*kw*Cin), native
    if mode == "float":
        y = cols @ t[op.tensors["weight"]].T
        if "bias" in op.tensors:
            y += t[op.tensors["bias"]]
    elif cout < FLOAT_GEMM_MAX_COLS:  # binary weights, float activations, few output channels
        y = cols @ _unpacked(m, op, cols.shape[1]).T
        y *= t[op.tensors["alpha"]]
        y += t[op.tensors["beta"]]
    else:
        y = kernels.binary_float_gemm(
            cols, t[op.tensors["bits"]], None, t[op.tensors["alpha"]], t[op.tensors["beta"]]
        )
    return y.reshape(n, ho, wo, cout)


def _affine(m: ModelState, op: Op, x: Array) -> Array:
    return x * m.tensors[op.tensors["scale"]] + m.tensors[op.tensors["shift"]]


def _maxpool(m: ModelState, op: Op, x: Array) -> Array:
    k, s = op.attrs["kernel_size"], op.attrs["stride"]
    n, h, w, c = x.shape
    if k == s and h % k == 0 and w % k == 0:
        return x.reshape(n, h // k, k, w // k, k, c).max(axis=(2, 4))
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::s, ::s]
    return win.max(axis=(-2, -1))


def _flatten(m: ModelState, op: Op, x: Array) -> Array:
    if x.ndim == 4:  # torch flattens NCHW: channel-major order
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x).reshape(x.shape[0], -1)


def _slice(m: ModelState, op: Op, x: Array) -> Array:
    """``x[start:stop:step, ...]`` with one ``[start, stop, step]`` per axis (a view)."""
    key = (op.name, "index")
    index = m.cache.get(key)
    if index is None:
        slices = op.attrs["slices"]
        if len(slices) != x.ndim:
            raise ValueError(f"op {op.name}: {len(slices)} slices for a {x.ndim}-D value.")
        index = m.cache[key] = tuple(slice(a, b, c) for a, b, c in slices)  # type: ignore[assignment]
    return x[index]


def _pad(m: ModelState, op: Op, x: Array) -> Array:
    """Constant padding: ``before`` and ``after`` entries of ``value`` around ``x`` on each axis."""
    pads, value = op.attrs["pads"], op.attrs.get("value", 0.0)
    if len(pads) != x.ndim:
        raise ValueError(f"op {op.name}: {len(pads)} pads for a {x.ndim}-D value.")
    shape = tuple([n + b + a for n, (b, a) in zip(x.shape, pads, strict=True)])
    # a zeroed buffer and one copy: faster than np.pad
    out = np.full(shape, value, x.dtype) if value else np.zeros(shape, x.dtype)
    out[tuple([slice(b, b + n) for n, (b, _) in zip(x.shape, pads, strict=True)])] = x
    return out


def _hardtanh(x: Array, lo: float, hi: float) -> Array:
    y = np.maximum(x, np.float32(lo))  # two ufunc passes beat np.clip's slower generic path
    return np.minimum(y, np.float32(hi), out=y)


def _affine_(m: ModelState, op: Op, x: Array) -> Array:
    x *= m.tensors[op.tensors["scale"]]
    x += m.tensors[op.tensors["shift"]]
    return x


def _add_(m: ModelState, op: Op, a: Array, b: Array) -> Array:
    return np.add(a, b, out=a) if a.shape == b.shape else a + b


# In-place forms of elementwise ops, used when the op is the only reader of its first input:
# at batch 64 a fresh output array per op (page faults on every call) cost more than the math.
OPS_INPLACE: dict[str, Callable[..., Array]] = {
    "affine": _affine_,
    "relu": lambda m, op, x: np.maximum(x, np.float32(0), out=x),
    "hardtanh": lambda m, op, x: kernels.clamp_(x, op.attrs["min"], op.attrs["max"]),
    "add": _add_,
}
# May return a view of their input: their outputs are never written in place.
VIEW_OPS = frozenset({"flatten", "slice"})
# Outputs kept as they are, strided views included, instead of copied to C order: every op
# reads strided inputs (numpy does; the kernels' wrappers copy them to C order first), so a
# copy here would be one more pass (a ResNet shortcut's subsampling feeds straight into its pad;
# a transformer's head split, a transpose of the fused q/k/v projection, into attention's matmuls;
# a broadcast expand into a where).
STRIDED_OPS = frozenset({"slice", "transpose", "expand"})


OPS: dict[str, Callable[..., Array]] = {
    "linear": _linear,
    "conv": _conv,
    "affine": _affine,
    "relu": lambda m, op, x: np.maximum(x, 0, dtype=np.float32),
    "hardtanh": lambda m, op, x: _hardtanh(x, op.attrs["min"], op.attrs["max"]),
    "maxpool": _maxpool,
    "avgpool": lambda m, op, x: x.mean(axis=(1, 2), dtype=np.float32),
    "flatten": _flatten,
    "slice": _slice,
    "pad": _pad,
    "add": lambda m, op, a, b: a + b,
}
