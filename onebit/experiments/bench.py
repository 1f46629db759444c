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

__all__ = ["FloatTwin", "bench", "cpu_flags", "example_batch", "float_twin", "has_fast_bf16"]


def _sign(x: Tensor) -> Tensor:
    """``+1 where x >= 0 else -1`` (``sign(0) = +1``, NaN -> -1), as the runtime packs bits."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _nchw(x: Tensor) -> Tensor:
    """An NHWC value as the NCHW tensor torch's convolutions take: a view (channels_last when
    ``x`` is contiguous), no copy."""
    return x.permute(0, 3, 1, 2)


def _nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1)


def _f32(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


class _Step(nn.Module):
    """One op of the packed graph in torch, on values in the runtime's layout (NHWC where the
    runtime's are NHWC): ``forward(*inputs)`` computes what the runtime's op computes."""

    def __init__(self, fn: Callable[..., Tensor], **tensors: Tensor) -> None:
        super().__init__()
        self.fn = fn
        for k, v in tensors.items():
            self.register_buffer(k, v)

    def forward(self, *xs: Tensor) -> Tensor:
        return self.fn(self, *xs)


def _layer_weight(packed: PackedModel, op: Op, k: int) -> tuple[Tensor, Tensor | None, bool]:
    """``(weight (N, K), bias, fused)``: float weights; binary ones are ``alpha * (±1)`` unpacked
    from the bits with bias ``beta``, or plain ±1 with no bias when thresholds take the integer
    accumulator (``output = "bits"``)."""
    t, a = packed.tensors, op.attrs
    if a["mode"] == "float":
        bias = _f32(t[op.tensors["bias"]]) if "bias" in op.tensors else None
        return _f32(t[op.tensors["weight"]]).reshape(-1, k), bias, False
    w = torch.from_numpy(kernels.unpack_bits(t[op.tensors["bits"]], k).astype(np.float32))
    if a.get("output") == "bits":
        return w, None, True
    return w * _f32(t[op.tensors["alpha"]])[:, None], _f32(t[op.tensors["beta"]]), False


def _layer(packed: PackedModel, op: Op) -> _Step:
    """A ``linear``/``conv`` op: ``y = layer(sign(x - act_shift) if binary else x)``; with fused
    thresholds the output is the ±1 form of the packed bits, ``+1 if (acc >= thresh) XOR flip``."""
    a = op.attrs
    conv = op.op == "conv"
    if conv:
        kh, kw = a["kernel_size"]
        k = kh * kw * a["in_channels"] // a.get("groups", 1)
    else:
        k = a["in_features"]
    w, bias, fused = _layer_weight(packed, op, k)
    sign_input = a["mode"] == "binary" and a.get("input") != "bits"  # packed bits are ±1 here
    bufs: dict[str, Tensor] = {}
    if conv:  # stored rows are in NHWC im2col order (Cout, kh, kw, Cin/g)
        w = w.reshape(a["out_channels"], kh, kw, -1).permute(0, 3, 1, 2)
        w = w.contiguous(memory_format=torch.channels_last)
    bufs["weight"] = w
    if bias is not None:
        bufs["bias"] = bias
    if sign_input and "act_shift" in op.tensors:
        bufs["shift"] = _f32(packed.tensors[op.tensors["act_shift"]])
    if fused:
        bufs["thresh"] = _f32(packed.tensors[op.tensors["thresh"]])
        bufs["flip"] = torch.from_numpy(packed.tensors[op.tensors["flip"]].astype(bool))
    stride, padding, groups = (
        tuple(a.get("stride", (1, 1))),
        tuple(a.get("padding", (0, 0))),
        a.get("groups", 1),
    )

    def fn(s: _Step, x: Tensor) -> Tensor:
        if sign_input:
            x = _sign(x - s.shift if "shift" in bufs else x)
        b = s.bias if "bias" in bufs else None
        if conv:
            y = _nhwc(F.conv2d(_nchw(x), s.weight, b, stride, padding, 1, groups))
        else:
            y = F.linear(x, s.weight, b)
        if not fused:
            return y
        return torch.where((y >= s.thresh) ^ s.flip, 1.0, -1.0).to(y.dtype)

    return _Step(fn, **bufs)


def _operand(
    packed: PackedModel, op: Op, xs: tuple[Tensor, ...], other: Tensor | None
) -> tuple[Tensor, Tensor]:
    if other is None:
        return xs[0], xs[1]
    return (other, xs[0]) if op.attrs.get("other_first") else (xs[0], other)


_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "exp": torch.exp,
    "neg": torch.neg,
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "erf": torch.erf,
    "abs": torch.abs,
    "log": torch.log,
}

_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
    "pow": torch.pow,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "eq": lambda a, b: torch.eq(a, b).float(),
    "ne": lambda a, b: torch.ne(a, b).float(),
    "lt": lambda a, b: torch.lt(a, b).float(),
    "le": lambda a, b: torch.le(a, b).float(),
    "gt": lambda a, b: torch.gt(a, b).float(),
    "ge": lambda a, b: torch.ge(a, b).float(),
}


def _tensor_of(packed: PackedModel, op: Op, role: str) -> Tensor:
    v = np.asarray(packed.tensors[op.tensors[role]])
    return torch.from_numpy(v.astype(np.float32) if v.dtype == np.float64 else v.copy())


def _pool(op: Op) -> Callable[[_Step, Tensor], Tensor]:
    """``pool2d`` (and the legacy ``maxpool``) on NHWC values, with the runtime's far-edge
    ``extra_padding`` (torch's ceil mode) never counted in averages."""
    a = op.attrs
    kind = a.get("kind", "max")
    legacy = op.op == "maxpool"  # one int for both axes
    k = (a["kernel_size"],) * 2 if legacy else tuple(a["kernel_size"])
    s = (a["stride"],) * 2 if legacy else tuple(a["stride"])
    p = tuple(a.get("padding", (0, 0)))
    eh, ew = a.get("extra_padding", (0, 0))
    inc = a.get("count_include_pad", True)

    def fn(st: _Step, x: Tensor) -> Tensor:
        y = _nchw(x)
        if kind == "max":
            if eh or ew:
                y = F.pad(y, (0, ew, 0, eh), value=float("-inf"))
            return _nhwc(F.max_pool2d(y, k, s, p))
        if not (eh or ew):
            return _nhwc(F.avg_pool2d(y, k, s, p, count_include_pad=inc))
        ones = torch.ones_like(y[:1, :1])
        if inc:  # the zero padding counts, the far edge does not
            y, ones = (
                F.pad(y, (p[1], p[1], p[0], p[0])),
                F.pad(ones, (p[1], p[1], p[0], p[0]), value=1.0),
            )
            pp = (0, 0)
        else:
            pp = p
        y, ones = F.pad(y, (0, ew, 0, eh)), F.pad(ones, (0, ew, 0, eh))
        total = F.avg_pool2d(y, k, s, pp, count_include_pad=True, divisor_override=1)
        count = F.avg_pool2d(ones, k, s, pp, count_include_pad=True, divisor_override=1)
        return _nhwc(total / count)

    return fn


def _expand(shape: list[int]) -> Callable[[_Step, Tensor], Tensor]:
    def fn(s: _Step, x: Tensor) -> Tensor:
        lead = len(shape) - x.dim()
        full = [x.shape[i - lead] if v == -1 else v for i, v in enumerate(shape)]
        return x.expand(*full)

    return fn


def _generic(packed: PackedModel, op: Op) -> _Step | None:
    """The torch step of a general op (:mod:`onebit.runtime.generic`), or None."""
    a, kind = op.attrs, op.op
    role = {r: _tensor_of(packed, op, r) for r in op.tensors}
    if kind == "transpose":
        return _Step(lambda s, x: x.permute(*a["perm"]))
    if kind == "reshape":
        return _Step(lambda s, x: x.reshape(a["shape"]))
    if kind == "expand":
        return _Step(_expand(a["shape"]))
    if kind in ("binary", "matmul"):
        f = torch.matmul if kind == "matmul" else _BINARY[a["fn"]]
        has = "other" in role
        return _Step(lambda s, *xs: f(*_operand(packed, op, xs, s.other if has else None)), **role)
    if kind == "unary":
        return _Step(lambda s, x: _UNARY[a["fn"]](x))
    if kind == "where":

        def where(s: _Step, *xs: Tensor) -> Tensor:
            it = iter(xs)
            c, x, y = (getattr(s, r) if r in role else next(it) for r in ("cond", "x", "y"))
            return torch.where(c.bool(), x, y)

        return _Step(where, **role)
    if kind == "softmax":
        f = F.log_softmax if a.get("log") else F.softmax
        return _Step(lambda s, x: f(x, dim=a["axis"]))
    if kind == "layer_norm":
        n, eps = len(a["axes"]), a["eps"]
        if "weight" in role:  # the normalized shape as a constant (the ONNX export needs one)
            shape = tuple(role["weight"].shape)
            return _Step(
                lambda s, x: F.layer_norm(x, shape, s.weight, getattr(s, "bias", None), eps),
                **role,
            )

        def norm(s: _Step, x: Tensor) -> Tensor:
            dims = tuple(range(-n, 0))
            mu = x.mean(dims, keepdim=True)
            y = (x - mu) * torch.rsqrt(((x - mu) ** 2).mean(dims, keepdim=True) + eps)
            return y + s.bias if "bias" in role else y

        return _Step(norm, **role)
    if kind == "attention":

        def attention(s: _Step, q: Tensor, k: Tensor, v: Tensor, *mask: Tensor) -> Tensor:
            mk = mask[0] if mask else getattr(s, "mask", None)
            if mk is not None and a.get("mask") == "bool":
                mk = mk != 0
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mk, is_causal=bool(a.get("causal")), scale=a["scale"]
            )

        return _Step(attention, **role)
    if kind == "reduce":
        f = {"mean": torch.mean, "sum": torch.sum, "amax": torch.amax, "amin": torch.amin}[a["fn"]]
        return _Step(lambda s, x: f(x, dim=tuple(a["axes"]), keepdim=a["keepdim"]))
    if kind == "cat":
        return _Step(lambda s, *xs: torch.cat(xs, dim=a["axis"]))
    if kind == "pool2d":
        return _Step(_pool(op))
    if kind == "embedding":
        if "weight" in role:
            w = role["weight"]
        else:
            bits = packed.tensors[op.tensors["bits"]]
            w = torch.from_numpy(kernels.unpack_bits(bits, a["dim"]).astype(np.float32))
            w = w * role["alpha"][:, None]
        return _Step(lambda s, ids: F.embedding(ids.long(), s.weight), weight=w)
    if kind == "cast":
        dt = {"float32": torch.float32, "int64": torch.int64}[a["dtype"]]
        return _Step(lambda s, x: x.to(dt))
    if kind == "constant":

        def constant(s: _Step, *like: Tensor) -> Tensor:
            v = s.value
            return v if not like else v.expand(like[0].shape[0], *v.shape[1:])

        return _Step(constant, **role)
    return None


def _legacy(packed: PackedModel, op: Op) -> _Step | None:
    """The torch step of an op of the first format versions (NHWC values, as the runtime)."""
    a, kind = op.attrs, op.op
    if kind in ("linear", "conv"):
        return _layer(packed, op)
    if kind == "affine":
        return _Step(
            lambda s, x: x * s.scale + s.shift,
            scale=_tensor_of(packed, op, "scale"),
            shift=_tensor_of(packed, op, "shift"),
        )
    if kind == "relu":
        return _Step(lambda s, x: F.relu(x))
    if kind == "hardtanh":
        return _Step(lambda s, x: F.hardtanh(x, a["min"], a["max"]))
    if kind == "maxpool":
        return _Step(_pool(op))
    if kind == "avgpool":
        return _Step(lambda s, x: x.mean(dim=(1, 2)))
    if kind == "flatten":  # torch flattens NCHW: channel-major order
        return _Step(lambda s, x: torch.flatten(_nchw(x) if x.dim() == 4 else x, 1))
    if kind == "add":
        return _Step(lambda s, x, y: x + y)
    if kind == "slice":
        index = tuple(slice(*v) for v in a["slices"])
        return _Step(lambda s, x: x[index])
    if kind == "pad":
        flat = [v for pair in reversed(a["pads"]) for v in pair]  # last axis first
        return _Step(lambda s, x: F.pad(x, flat, value=float(a.get("value", 0.0))))
    return None


def _step(packed: PackedModel, op: Op) -> nn.Module:
    """The torch module that computes ``op`` on values in the runtime's layout."""
    step = _legacy(packed, op) or _generic(packed, op)
    if step is None:
        raise OnebitError(f"the float twin does not know op {op.op!r} ({op.name}).")
    return step


class FloatTwin(nn.Module):
    """A packed graph run in torch float32: one module per op, executed in the graph's order,
    on values laid out as the runtime lays them out (NHWC after convolutions: torch sees them as
    channels_last NCHW views, so no copies are made for it).

    Binary layers are float layers whose weights are ``alpha * (±1)`` unpacked from the bits
    and whose bias is the stored ``beta`` (BatchNorm folded in as packed); XNOR layers take
    ``sign`` of their (shifted) input; fused XNOR layers keep ±1 weights and apply their integer
    thresholds (see :func:`_layer`). Inputs are what the packed model takes: NCHW images (files
    of the first versions are transposed to NHWC first, as the runtime does), features, ids.
    """

    def __init__(self, packed: PackedModel) -> None:
        super().__init__()
        self.nhwc_input = packed.input.get("layout") != "graph"
        self.steps = nn.ModuleList()
        self.plan: list[tuple[str, list[str]]] = []  # (value name, input names); "" = output
        for op in packed.ops:
            if op.op == "output":
                self.plan.append(("", list(op.inputs)))
                continue
            self.steps.append(_step(packed, op))
            self.plan.append((op.name, list(op.inputs)))

    def forward(self, x: Tensor) -> Tensor:
        if self.nhwc_input and x.dim() == 4:
            x = _nhwc(x)
        env = {"input": x}
        steps = iter(self.steps)
        for name, inputs in self.plan:
            if not name:
                return env[inputs[0]]
            env[name] = next(steps)(*(env[i] for i in inputs))
        raise OnebitError("the packed graph has no output op.")


def example_batch(packed: PackedModel, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` inputs the packed model takes: standard normal floats, or token ids below the
    smallest vocabulary of its embeddings for integer inputs."""
    shape = (n, *packed.input.get("shape", ()))
    if packed.input.get("dtype") != "int64":
        return rng.standard_normal(shape, dtype=np.float32)
    rows = [
        packed.tensors[op.tensors["weight" if "weight" in op.tensors else "bits"]].shape[0]
        for op in packed.ops
        if op.op == "embedding"
    ]
    return rng.integers(0, min(rows, default=2), shape, dtype=np.int64)


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


def _onnx_models(twin: nn.Module, example: Tensor, folder: str) -> tuple[str, str] | None:
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
            (example,),
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
    conv = any(op.op == "conv" for op in packed.ops)
    wanted = list(baselines)
    if "torch_bf16" in wanted and not has_fast_bf16():
        wanted.remove("torch_bf16")
    tmp = tempfile.TemporaryDirectory()
    example = torch.from_numpy(example_batch(packed, 2, np.random.default_rng(1)))
    onnx = _onnx_models(twin, example, tmp.name) if {"ort_fp32", "ort_int8"} & set(wanted) else None
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
                x = example_batch(packed, b, rng)
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
                        "argmax": float((exact.argmax(-1) == approx.argmax(-1)).mean()),
                        "max_abs_diff": float(np.abs(exact - approx).max()),
                        "max_abs_diff_rel": float(np.abs(exact - approx).max()) / scale,
                    }
                set_activations(packed, "float")
                rows.append(row)
        torch.set_num_threads(threads[0])
        kernels.set_num_threads(threads[0])
        set_activations(packed, "float")
        profile: dict[str, float] = {}
        x1 = example_batch(packed, 1, rng)
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
