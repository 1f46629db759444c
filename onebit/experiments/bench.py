"""Time a packed model against what a user would deploy instead, in one run.

The baselines run the packed model's float twin (:func:`float_twin`), rebuilt from the packed graph
itself, op by op, so it is the packed model's exact architecture and computes its outputs (up to
float rounding), whatever zoo, config or hand-written module the model came from:

- ``torch_fp32``: the twin in PyTorch float32 (channels_last for conv nets);
- ``torch_bf16``: the same under ``torch.autocast("cpu", torch.bfloat16)``, only where the CPU has
  AMX-BF16 or AVX512_BF16 (elsewhere bf16 is emulated and nobody would pick it);
- ``ort_fp32`` / ``ort_int8``: the twin exported to ONNX, run by onnxruntime as it is and after
  ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, activations quantized on the fly),
  when onnxruntime is installed.

The packed model runs with exact float activations (``packed``) and with the opt-in 8-bit
activations (``packed_int8``, :func:`onebit.runtime.ops.set_activations`), whose agreement with
the exact path on the same batch (argmax, max abs difference) is stored beside its times.

Per thread count and batch size; figures are medians of single calls after warm-up, all variants
interleaved round by round in the same process, so the ratios are what to read.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from onebit import kernels
from onebit.errors import OnebitError
from onebit.runtime import Op, PackedModel

__all__ = ["FloatTwin", "bench", "cpu_flags", "float_twin", "has_fast_bf16"]

# runtime NHWC axis of each torch NCHW axis
_NHWC_OF_NCHW = (0, 3, 1, 2)


def _sign(x: Tensor) -> Tensor:
    """``+1 where x >= 0 else -1`` (``sign(0) = +1``, NaN -> -1), as the runtime packs bits."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _channel(v: Tensor, ndim: int) -> Tensor:
    """A per-channel vector shaped to broadcast over an NCHW (4-D) or ``(N, F)`` value."""
    return v.view(1, -1, 1, 1) if ndim == 4 else v


class _Layer(nn.Module):
    """A packed linear/conv as a torch float layer.

    ``y = layer(sign(x) if binary else x)``; with fused thresholds (``output = "bits"``) the
    layer has the ±1 weights and no bias, so ``y`` is the exact integer accumulator, and the
    output is the ±1 form of the packed bits: ``+1 if (y >= thresh) XOR flip else -1``.
    """

    def __init__(
        self, layer: nn.Module, sign_input: bool, thresh: Tensor | None, flip: Tensor | None
    ) -> None:
        super().__init__()
        self.layer = layer
        self.sign_input = sign_input
        self.fused = thresh is not None
        if thresh is not None and flip is not None:
            self.register_buffer("thresh", thresh)
            self.register_buffer("flip", flip)

    def forward(self, x: Tensor) -> Tensor:
        y = self.layer(_sign(x) if self.sign_input else x)
        if not self.fused:
            return y
        bit = (y >= _channel(self.thresh, y.ndim)) ^ _channel(self.flip, y.ndim)
        return torch.where(bit, 1.0, -1.0).to(y.dtype)


class _Affine(nn.Module):
    """Per-channel ``x * scale + shift`` (a BatchNorm that was not folded into a layer)."""

    def __init__(self, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: Tensor) -> Tensor:
        return x * _channel(self.scale, x.ndim) + _channel(self.shift, x.ndim)


class _GlobalAvgPool(nn.Module):
    """``(N, C, H, W) -> (N, C)``: the runtime's global average pool."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


class _Flatten(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(x, 1)


class _Add(nn.Module):
    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


class _Slice(nn.Module):
    """The runtime's ``slice`` (``[start, stop, step]`` per NHWC axis) on an NCHW tensor."""

    def __init__(self, slices: list[list[int | None]]) -> None:
        super().__init__()
        self.slices = [slice(*s) for s in slices]

    def forward(self, x: Tensor) -> Tensor:
        order = _NHWC_OF_NCHW if x.ndim == 4 else range(x.ndim)
        return x[tuple(self.slices[a] for a in order)]


class _Pad(nn.Module):
    """The runtime's ``pad`` (``[before, after]`` per NHWC axis) as ``F.pad`` on NCHW."""

    def __init__(self, pads: list[list[int]], value: float) -> None:
        super().__init__()
        self.pads, self.value = pads, value

    def forward(self, x: Tensor) -> Tensor:
        order = _NHWC_OF_NCHW if x.ndim == 4 else tuple(range(x.ndim))
        flat = [v for axis in reversed(order) for v in self.pads[axis]]  # last torch axis first
        return F.pad(x, flat, mode="constant", value=self.value)


def _tensor(packed: PackedModel, op: Op, role: str) -> Tensor:
    return torch.from_numpy(np.array(packed.tensors[op.tensors[role]], dtype=np.float32))


def _layer(packed: PackedModel, op: Op) -> _Layer:
    """The float twin of a ``linear``/``conv`` op (see :class:`_Layer`)."""
    a, mode = op.attrs, op.attrs["mode"]
    conv = op.op == "conv"
    if conv:
        kh, kw = a["kernel_size"]
        g = a.get("groups", 1)
        k = kh * kw * a["in_channels"] // g
    else:
        k = a["in_features"]
    fused = a.get("output") == "bits"
    bias: Tensor | None
    if mode == "float":
        w = _tensor(packed, op, "weight")
        bias = _tensor(packed, op, "bias") if "bias" in op.tensors else None
    else:  # ±1 from the bits; scaled by alpha unless the thresholds take the accumulator
        bits = packed.tensors[op.tensors["bits"]]
        w = torch.from_numpy(kernels.unpack_bits(bits, k).astype(np.float32))
        if fused:
            bias = None
        else:
            w = w * _tensor(packed, op, "alpha")[:, None]
            bias = _tensor(packed, op, "beta")
    layer: nn.Conv2d | nn.Linear
    if conv:
        cout = a["out_channels"]
        layer = nn.Conv2d(
            a["in_channels"],
            cout,
            (kh, kw),
            tuple(a["stride"]),
            tuple(a["padding"]),
            groups=a.get("groups", 1),
            bias=bias is not None,
        )
        # stored rows are in NHWC im2col order (Cout, kh, kw, Cin/g)
        w = w.reshape(cout, kh, kw, -1).permute(0, 3, 1, 2).contiguous()
    else:
        layer = nn.Linear(a["in_features"], a["out_features"], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            layer.bias.copy_(bias)
    thresh = flip = None
    if fused:
        thresh = _tensor(packed, op, "thresh")
        flip = torch.from_numpy(packed.tensors[op.tensors["flip"]].astype(bool))
    sign_input = mode == "binary" and a.get("input") != "bits"  # packed bits are ±1 here already
    return _Layer(layer, sign_input, thresh, flip)


def _step(packed: PackedModel, op: Op) -> nn.Module:
    """The torch module that computes ``op`` on NCHW (or ``(N, F)``) float32 tensors."""
    a = op.attrs
    if op.op in ("linear", "conv"):
        return _layer(packed, op)
    if op.op == "affine":
        return _Affine(_tensor(packed, op, "scale"), _tensor(packed, op, "shift"))
    if op.op == "relu":
        return nn.ReLU()
    if op.op == "hardtanh":
        return nn.Hardtanh(a["min"], a["max"])
    if op.op == "maxpool":
        return nn.MaxPool2d(a["kernel_size"], a["stride"])
    if op.op == "avgpool":
        return _GlobalAvgPool()
    if op.op == "flatten":
        return _Flatten()
    if op.op == "add":
        return _Add()
    if op.op == "slice":
        return _Slice(a["slices"])
    if op.op == "pad":
        return _Pad(a["pads"], float(a.get("value", 0.0)))
    raise OnebitError(f"the float twin does not know op {op.op!r} ({op.name}).")


class FloatTwin(nn.Module):
    """A packed graph run in torch float32: one module per op, executed in the graph's order.

    Binary layers are float layers whose weights are ``alpha * (±1)`` unpacked from the bits
    and whose bias is the stored ``beta`` (BatchNorm folded in as packed); XNOR layers take
    ``sign`` of their input; fused XNOR layers keep ±1 weights and apply their integer
    thresholds (see :class:`_Layer`). Values are NCHW where the runtime's are NHWC.
    """

    def __init__(self, packed: PackedModel) -> None:
        super().__init__()
        self.steps = nn.ModuleList()
        self.plan: list[tuple[str, list[str]]] = []  # (value name, input names); "" = output
        for op in packed.ops:
            if op.op == "output":
                self.plan.append(("", list(op.inputs)))
                continue
            self.steps.append(_step(packed, op))
            self.plan.append((op.name, list(op.inputs)))

    def forward(self, x: Tensor) -> Tensor:
        env = {"input": x}
        steps = iter(self.steps)
        for name, inputs in self.plan:
            if not name:
                return env[inputs[0]]
            env[name] = next(steps)(*(env[i] for i in inputs))
        raise OnebitError("the packed graph has no output op.")


def float_twin(packed: PackedModel) -> FloatTwin:
    """The packed model as a torch float32 model (eval mode) that computes the same outputs."""
    return FloatTwin(packed).eval()


def cpu_flags() -> list[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(line.partition(":")[2].split())
    except OSError:
        pass
    return []


def has_fast_bf16() -> bool:
    """Whether the CPU multiplies bf16 in hardware (AMX-BF16 or AVX512_BF16)."""
    flags = set(cpu_flags())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def _median_time(fn: Callable[[], Any], repeats: int, min_seconds: float = 0.2) -> float:
    fn()  # warm-up
    times: list[float] = []
    t_end = time.perf_counter() + min_seconds
    while len(times) < repeats or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 50 * repeats:
            break
    return statistics.median(times)


def _onnx_models(twin: nn.Module, shape: tuple[int, ...], folder: str) -> tuple[str, str] | None:
    """The twin as ONNX (float) and its dynamically quantized copy (int8), or None without
    onnxruntime / onnx."""
    try:
        import onnxruntime  # noqa: F401
        from onnxruntime.quantization import quantize_dynamic
    except ImportError:
        return None
    import logging
    import warnings

    fp, q = os.path.join(folder, "model.onnx"), os.path.join(folder, "model_int8.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            twin,
            (torch.zeros(2, *shape),),
            fp,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process, per tensor
        try:
            quantize_dynamic(fp, q)
        finally:
            logging.getLogger().setLevel(level)
    return fp, q


def _ort_session(path: str, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def bench(
    packed: PackedModel,
    threads: Sequence[int] = (1, 2),
    batches: Sequence[int] = (1, 16, 64),
    repeats: int = 20,
    baselines: Sequence[str] = ("torch_fp32", "torch_bf16", "ort_fp32", "ort_int8"),
    int8: bool | None = None,
) -> dict[str, Any]:
    """Seconds per batch of the packed model (exact and int8 activations) and of each baseline
    that this machine can run; ratios; int8 agreement; per-op times of the packed model.

    ``speedup`` in each row is against torch fp32 (as before); ``vs`` holds ``baseline / packed``
    for every baseline (> 1: the packed model is faster), ``vs_int8`` the same for the int8 path.
    """
    from onebit.runtime.ops import get_activations, set_activations

    if int8 is None:  # the int8 path changes only binary-weight layers with float inputs
        int8 = any(op.attrs.get("mode") == "binary_weights" for op in packed.ops)
    twin = float_twin(packed)
    shape = tuple(packed.input["shape"])
    conv = any(isinstance(m, torch.nn.Conv2d) for m in twin.modules())
    wanted = list(baselines)
    if "torch_bf16" in wanted and not has_fast_bf16():
        wanted.remove("torch_bf16")
    tmp = tempfile.TemporaryDirectory()
    onnx = _onnx_models(twin, shape, tmp.name) if {"ort_fp32", "ort_int8"} & set(wanted) else None
    if onnx is None:
        wanted = [b for b in wanted if not b.startswith("ort")]
    if conv:
        twin = twin.to(memory_format=torch.channels_last)
    rng = np.random.default_rng(0)
    rows = []
    old_torch = torch.get_num_threads()
    old_act = get_activations(packed)
    try:
        for t in threads:
            torch.set_num_threads(t)
            kernels.set_num_threads(t)
            sessions = {}
            if onnx is not None:
                if "ort_fp32" in wanted:
                    sessions["ort_fp32"] = _ort_session(onnx[0], t)
                if "ort_int8" in wanted:
                    sessions["ort_int8"] = _ort_session(onnx[1], t)
            for b in batches:
                x = rng.standard_normal((b, *shape), dtype=np.float32)
                xt = torch.from_numpy(x)
                if conv:
                    xt = xt.contiguous(memory_format=torch.channels_last)

                def run_torch(xt: torch.Tensor = xt) -> None:
                    with torch.inference_mode():
                        twin(xt)

                def run_bf16(xt: torch.Tensor = xt) -> None:
                    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                        twin(xt)

                def run_packed(x: np.ndarray = x) -> None:
                    set_activations(packed, "float")
                    packed(x)

                def run_int8(x: np.ndarray = x) -> None:
                    set_activations(packed, "int8")
                    packed(x)

                fns: dict[str, Callable[[], None]] = {"packed": run_packed}
                if int8:
                    fns["packed_int8"] = run_int8
                if "torch_fp32" in wanted:
                    fns["torch_fp32"] = run_torch
                if "torch_bf16" in wanted:
                    fns["torch_bf16"] = run_bf16
                for name, sess in sessions.items():
                    fns[name] = lambda sess=sess, x=x: sess.run(None, {"input": x})
                # interleave the measurements so drift on a shared machine hits all alike
                samples: dict[str, list[float]] = {k: [] for k in fns}
                for _ in range(3):
                    for k, fn in fns.items():
                        samples[k].append(_median_time(fn, max(3, repeats // 3)))
                sec = {k: min(v) for k, v in samples.items()}
                sp = sec["packed"]
                row: dict[str, Any] = {
                    "threads": t,
                    "batch": b,
                    "ms": {k: 1000 * v for k, v in sec.items()},
                    "packed_ms": 1000 * sp,
                    "packed_per_s": b / sp,
                    "vs": {k: sec[k] / sp for k in sec if k not in ("packed", "packed_int8")},
                }
                if "torch_fp32" in sec:  # the fields of earlier records
                    row |= {
                        "torch_fp32_ms": 1000 * sec["torch_fp32"],
                        "speedup": sec["torch_fp32"] / sp,
                        "torch_per_s": b / sec["torch_fp32"],
                    }
                if int8:
                    si = sec["packed_int8"]
                    row["packed_int8_ms"] = 1000 * si
                    row["vs_int8"] = {k: sec[k] / si for k in row["vs"]}
                    set_activations(packed, "float")
                    exact = packed(x)
                    set_activations(packed, "int8")
                    approx = packed(x)
                    scale = float(np.abs(exact).max()) or 1.0
                    row["int8_agreement"] = {
                        "argmax": float((exact.argmax(1) == approx.argmax(1)).mean()),
                        "max_abs_diff": float(np.abs(exact - approx).max()),
                        "max_abs_diff_rel": float(np.abs(exact - approx).max()) / scale,
                    }
                set_activations(packed, "float")
                rows.append(row)
        torch.set_num_threads(threads[0])
        kernels.set_num_threads(threads[0])
        set_activations(packed, "float")
        profile: dict[str, float] = {}
        x1 = rng.standard_normal((1, *shape), dtype=np.float32)
        n = 50
        for _ in range(n):
            packed(x1, profile=profile)
        ops = {op.name: op for op in packed.ops}
        layers = [
            {
                "op": name,
                "kind": ops[name].op
                + (f"/{ops[name].attrs['mode']}" if "mode" in ops[name].attrs else ""),
                "us": 1e6 * sec / n,
            }
            for name, sec in profile.items()
        ]
    finally:
        torch.set_num_threads(old_torch)
        kernels.set_num_threads(0)
        set_activations(packed, old_act)
        tmp.cleanup()
    return {
        "isa": kernels.get_isa(),
        "baselines": wanted,
        "int8": int8,
        "results": rows,
        "layers_batch1": layers,
    }
