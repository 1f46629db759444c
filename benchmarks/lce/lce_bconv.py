"""Time one binary 3x3 convolution in Larq Compute Engine (LCE), single-threaded.

Runs inside the LCE virtual environment made by ``setup.sh`` (larq-compute-engine 0.16,
numpy < 2), *not* in the project's venv::

    benchmarks/lce/.venv/bin/python benchmarks/lce/lce_bconv.py [--quick] [--out FILE]

No TensorFlow is needed: the LCE package's ``__init__`` imports its converter (and so
TensorFlow), so this script loads two files of the installed wheel directly:

* ``tflite/python/interpreter_wrapper_lite.so``: the TFLite interpreter with the LCE ops
  registered (``LceQuantize``, ``LceBconv2d``, ...);
* ``mlir/python/tflite_schema.py``: flatc-generated Python code for the TFLite schema, used to
  write a small model in memory.

Models (all NHWC, batch 1, 3x3, stride 1, "same" zero padding, Cin = Cout = 256 by default):

* ``float_in``: float32 input -> ``LceQuantize`` (sign + bitpack to int32 words) ->
  ``LceBconv2d`` (float32 output, post-activation multiplier 1 and bias 0, so the output is the
  exact +-1 convolution) -> output.  Same work as onebit's ``binary_conv2d`` on float input.
* ``packed_in``: already-bitpacked int32 input ``(1, H, W, Cin/32)`` -> ``LceBconv2d`` -> float
  output.  Same work as onebit's ``binary_conv2d`` on packed input.
* ``quantize_only``: float input -> ``LceQuantize`` -> bitpacked output (the packing step and the
  interpreter's input/output copies on their own).
* ``packed_in_onepad``: like ``packed_in`` but with LCE's "one-padding" (``pad_values=1``, the
  border is +1 instead of 0: the variant LCE's converter prefers, since it needs no correction
  pass).  Informational: different semantics from onebit's zero padding.

Each is run with LCE's two optimized BConv2D kernels (``bgemm``: im2col + ruy BGEMM, the
interpreter default; ``indirect_bgemm``: XNNPack-style indirect BGEMM) and, for the record, the
``reference`` kernel.  Every result is checked against a numpy +-1 convolution.

The interpreter wrapper only exposes ``predict(inputs)``, so a timed call includes copying the
input into the interpreter and the output out of it (200 KB of float32 each way at the default
shape); ``quantize_only`` gives an upper bound of that overhead.

Prints one JSON object (``lce_ms`` = the faster optimized kernel on ``float_in``).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from types import ModuleType

import numpy as np

KERNELS = {  # name -> (use_reference_bconv, use_indirect_bgemm)
    "bgemm": (False, False),
    "indirect_bgemm": (False, True),
    "reference": (True, False),
}
OPTIMIZED_KERNELS = ("bgemm", "indirect_bgemm")


# ----------------------------------------------------------------------------- loading LCE


def lce_dir() -> str:
    # find_spec on a top-level package does not execute its __init__ (which imports TF).
    spec = importlib.util.find_spec("larq_compute_engine")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "larq_compute_engine is not installed here; run benchmarks/lce/setup.sh and use "
            "the LCE venv's python."
        )
    return next(iter(spec.submodule_search_locations))


def load_file(name: str, path: str) -> ModuleType:
    loader = None
    if path.endswith(".so"):
        loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None and spec.loader is not None, path
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_lce() -> tuple[ModuleType, ModuleType]:
    d = lce_dir()
    wrapper = load_file(
        "interpreter_wrapper_lite",
        os.path.join(d, "tflite", "python", "interpreter_wrapper_lite.so"),
    )
    schema = load_file("lce_tflite_schema", os.path.join(d, "mlir", "python", "tflite_schema.py"))
    assert "tensorflow" not in sys.modules
    return wrapper, schema


# ---------------------------------------------------------------------------- bit packing


def bitpack32(x: np.ndarray) -> np.ndarray:
    """LCE bitpacking along the last axis: bit i of word j is channel 32*j+i, set iff x < 0."""
    *lead, c = x.shape
    words = -(-c // 32)
    bits = np.zeros((*lead, words * 32), dtype=np.uint8)
    bits[..., :c] = x < 0
    bits = bits.reshape(*lead, words, 32).astype(np.uint64)
    packed = (bits << np.arange(32, dtype=np.uint64)).sum(axis=-1).astype(np.uint32)
    return packed.view(np.int32)


# --------------------------------------------------------------------------- model writing


def build_model(
    schema: ModuleType,
    kind: str,
    w_ohwi: np.ndarray,
    h: int,
    w: int,
    stride: int = 1,
) -> bytes:
    """A one-layer TFLite model (see the module docstring for ``kind``)."""
    import flatbuffers
    from flatbuffers import flexbuffers

    S = schema
    cout, kh, kw, cin = w_ohwi.shape
    cw = -(-cin // 32)
    tt = S.TensorType

    class AlignedBuffer(S.BufferT):
        """Buffer whose data vector is 16-byte aligned in the file (weights read as int32)."""

        def Pack(self, builder):  # flatbuffers naming
            data = None
            if self.data is not None:
                raw = np.ascontiguousarray(self.data).view(np.uint8).ravel()
                builder.StartVector(1, raw.size, 16)
                builder.head -= raw.size
                builder.Bytes[builder.head : builder.head + raw.size] = raw.tobytes()
                data = builder.EndVector()
            S.BufferStart(builder)
            if data is not None:
                S.BufferAddData(builder, data)
            return S.BufferEnd(builder)

    buffers = [AlignedBuffer()]  # buffer 0: the empty sentinel
    tensors = []

    def tensor(name, shape, dtype, data=None):
        t = S.TensorT()
        t.name = name
        t.shape = list(shape)
        t.type = dtype
        if data is not None:
            b = AlignedBuffer()
            b.data = np.ascontiguousarray(data)
            buffers.append(b)
            t.buffer = len(buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    opcodes: list[str] = []

    def operator(custom_code, inputs, outputs, options=None):
        if custom_code not in opcodes:
            opcodes.append(custom_code)
        op = S.OperatorT()
        op.opcodeIndex = opcodes.index(custom_code)
        op.inputs = list(inputs)
        op.outputs = list(outputs)
        if options is not None:
            op.customOptions = np.frombuffer(bytes(flexbuffers.Dumps(options)), dtype=np.uint8)
            op.customOptionsFormat = S.CustomOptionsFormat.FLEXBUFFERS
        return op

    ops = []
    if kind in ("float_in", "quantize_only"):
        x_in = tensor("x", (1, h, w, cin), tt.FLOAT32)
        x_packed = tensor("x_packed", (1, h, w, cw), tt.INT32)
        ops.append(operator("LceQuantize", [x_in], [x_packed]))
    elif kind in ("packed_in", "packed_in_onepad"):
        x_in = x_packed = tensor("x_packed", (1, h, w, cw), tt.INT32)
    else:
        raise ValueError(kind)

    if kind == "quantize_only":
        out = x_packed
    else:
        oh = -(-h // stride)
        ow = -(-w // stride)
        filt = tensor("filter_packed", (cout, kh, kw, cw), tt.INT32, bitpack32(w_ohwi))
        mult = tensor("post_mul", (cout,), tt.FLOAT32, np.ones(cout, np.float32))
        bias = tensor("post_bias", (cout,), tt.FLOAT32, np.zeros(cout, np.float32))
        out = tensor("y", (1, oh, ow, cout), tt.FLOAT32)
        options = {  # the keys LCE's converter writes for LceBconv2d (all ints)
            "channels_in": cin,
            "dilation_height_factor": 1,
            "dilation_width_factor": 1,
            "fused_activation_function": S.ActivationFunctionType.NONE,
            "pad_values": 1 if kind == "packed_in_onepad" else 0,
            "padding": S.Padding.SAME,
            "stride_height": stride,
            "stride_width": stride,
        }
        # inputs: input, filter, post_activation_multiplier, post_activation_bias, thresholds
        # (thresholds are only used for bitpacked int32 output: -1 = optional tensor absent)
        ops.append(operator("LceBconv2d", [x_packed, filt, mult, bias, -1], [out], options))

    sub = S.SubGraphT()
    sub.tensors = tensors
    sub.inputs = [x_in]
    sub.outputs = [out]
    sub.operators = ops
    sub.name = "main"

    model = S.ModelT()
    model.version = 3
    model.description = f"onebit benchmark: {kind}"
    model.buffers = buffers
    model.subgraphs = [sub]
    model.operatorCodes = []
    for code in opcodes:
        oc = S.OperatorCodeT()
        oc.builtinCode = S.BuiltinOperator.CUSTOM
        oc.deprecatedBuiltinCode = S.BuiltinOperator.CUSTOM
        oc.customCode = code
        oc.version = 1
        model.operatorCodes.append(oc)

    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# ------------------------------------------------------------------------------ reference


def conv_pm1(x: np.ndarray, w_ohwi: np.ndarray, pad_value: float = 0.0) -> np.ndarray:
    """+-1 conv (sign(x) with x >= 0 -> +1), stride 1, 'same' padding with ``pad_value``."""
    xs = np.where(x >= 0, 1.0, -1.0)
    ws = np.where(w_ohwi >= 0, 1.0, -1.0)
    n, h, w, _ = xs.shape
    cout, kh, kw, _ = ws.shape
    ph, pw = kh // 2, kw // 2
    xp = np.pad(xs, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=pad_value)
    out = np.zeros((n, h, w, cout))
    for i in range(kh):
        for j in range(kw):
            out += xp[:, i : i + h, j : j + w, :] @ ws[:, i, j, :].T
    return out


# -------------------------------------------------------------------------------- timing


def time_calls(fns: dict, rounds: int, number: int, warmup: int, raw: bool = False) -> dict:
    """Interleaved timing: each round runs every fn ``number`` times, timing each call.

    Returns per-name median/min/mean (ms) and, with ``raw``, the samples themselves.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(number):
                t0 = time.perf_counter_ns()
                fn()
                samples[name].append((time.perf_counter_ns() - t0) / 1e6)
    out = {k: summarize(v) for k, v in samples.items()}
    if raw:
        for k, v in samples.items():
            out[k]["samples_ms"] = v
    return out


def summarize(v: list[float]) -> dict:
    return {
        "median_ms": statistics.median(v),
        "min_ms": min(v),
        "mean_ms": statistics.fmean(v),
        "n": len(v),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=14, help="H = W (default 14)")
    ap.add_argument("--channels", type=int, default=256, help="Cin = Cout (default 256)")
    ap.add_argument("--kernel", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--number", type=int, default=20, help="timed calls per variant per round")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-reference", action="store_true", help="skip the reference kernel")
    ap.add_argument("--quick", action="store_true", help="few repetitions (smoke test)")
    ap.add_argument("--raw", action="store_true", help="include every timed sample in the JSON")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.number, args.warmup = 2, 5, 2

    wrapper, schema = load_lce()
    h = w = args.size
    cin = cout = args.channels
    k = args.kernel
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((1, h, w, cin)).astype(np.float32)
    w_oihw = rng.standard_normal((cout, cin, k, k)).astype(np.float32)  # torch layout
    w_ohwi = np.ascontiguousarray(w_oihw.transpose(0, 2, 3, 1))
    x_packed = bitpack32(x)

    ref_zero = conv_pm1(x, w_ohwi, 0.0)
    ref_one = conv_pm1(x, w_ohwi, 1.0)
    assert not np.array_equal(ref_zero, ref_one)  # the check can tell the two paddings apart

    models = ["float_in", "packed_in", "packed_in_onepad", "quantize_only"]
    kernels = [kn for kn in KERNELS if not (args.no_reference and kn == "reference")]
    fns = {}
    checks = {}
    for kind in models:
        model = build_model(schema, kind, w_ohwi, h, w)
        feed = [x] if kind in ("float_in", "quantize_only") else [x_packed]
        for kn in ["bgemm"] if kind == "quantize_only" else kernels:
            ref_bconv, indirect = KERNELS[kn]
            interp = wrapper.LiteInterpreter(model, 1, ref_bconv, indirect, False)
            y = interp.predict(feed)[0]
            name = kind if kind == "quantize_only" else f"{kind}/{kn}"
            if kind == "quantize_only":
                ok = y.shape == x_packed.shape and bool(np.array_equal(y, x_packed))
                err = None
            else:
                ref = ref_one if kind == "packed_in_onepad" else ref_zero
                ok = y.shape == ref.shape and bool(np.array_equal(y.astype(np.float64), ref))
                err = float(np.abs(y - ref).max()) if y.shape == ref.shape else None
            checks[name] = {"ok": ok, "output_shape": list(y.shape), "max_abs_err": err}
            fns[name] = lambda it=interp, f=feed: it.predict(f)

    timings = time_calls(fns, args.rounds, args.number, args.warmup, raw=args.raw)

    def best(kind):
        cands = {kn: timings[f"{kind}/{kn}"]["median_ms"] for kn in OPTIMIZED_KERNELS}
        kn = min(cands, key=cands.get)
        return cands[kn], kn

    lce_ms, lce_kernel = best("float_in")
    lce_packed_ms, lce_packed_kernel = best("packed_in")
    result = {
        "lce_ms": lce_ms,
        "lce_kernel": lce_kernel,
        "lce_packed_ms": lce_packed_ms,
        "lce_packed_kernel": lce_packed_kernel,
        "lce_quantize_only_ms": timings["quantize_only"]["median_ms"],
        "lce_version": importlib.metadata.version("larq-compute-engine"),
        "shape": {
            "batch": 1,
            "height": h,
            "width": w,
            "in_channels": cin,
            "out_channels": cout,
            "kernel": [k, k],
            "stride": 1,
            "padding": "same (zero)",
            "layout": "NHWC",
        },
        "correct": all(c["ok"] for c in checks.values()),
        "checks": checks,
        "timings": timings,
        "threads": 1,
        "timing": {
            "rounds": args.rounds,
            "number": args.number,
            "warmup": args.warmup,
            "statistic": "median of per-call wall times (interpreter predict())",
        },
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
