"""Run packed 1-bit models: the ``.onebit`` file format and a numpy + kernels interpreter.

This module imports neither torch nor the training code: a packed model loads and runs with
numpy, safetensors and ``onebit.kernels`` only.

File format (version 1; version 2 adds ``groups`` to convolutions): a safetensors file (no pickle, safe to load from strangers) whose
tensors are the packed weights (uint64 bit rows: bit = ``w >= 0``, i.e. +1), per-channel float32
scales and shifts (the binary weight scale and BatchNorm folded together) and float weights of the
layers kept in float; its string metadata holds

- ``format = "onebit"``, ``format_version = "1"`` (``"2"`` when a convolution is grouped);
- ``graph``: JSON list of ops ``{"op", "name", "inputs", "attrs", "tensors"}`` in execution order;
- ``input``: JSON ``{"shape": [C, H, W] or [F], "mean", "std"}`` (inputs are normalized by it);
- ``checksums``: JSON ``{tensor name: sha256 of its bytes}``, checked on load;
- ``source``: JSON describing where the model came from (config, method), informational.

Tensors between ops are float32 ``(N, F)`` or NHWC ``(N, H, W, C)`` arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from onebit import kernels
from onebit.errors import OnebitError
from onebit.idx import read_idx

__all__ = ["FORMAT", "FORMAT_VERSION", "Op", "PackedModel", "load"]

FORMAT = "onebit"
FORMAT_VERSION = 2
# Version 2 added grouped/depthwise convolutions (``attrs["groups"]``). A file without them is
# written as version 1, so it still loads in a version-1 reader; one with them is version 2,
# which a version-1 reader refuses instead of computing a dense convolution by mistake.


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


Array = npt.NDArray[Any]


def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _linear(m: PackedModel, op: Op, x: Array) -> Array:
    t, a = m.tensors, op.attrs
    mode = a["mode"]
    if mode == "float":
        y = x @ t[op.tensors["weight"]].T
        if "bias" in op.tensors:
            y += t[op.tensors["bias"]]
        return y
    bits = t[op.tensors["bits"]]
    if mode == "binary_weights":
        alpha, beta = t[op.tensors["alpha"]], t[op.tensors["beta"]]
        return kernels.binary_float_gemm(x, bits, a["in_features"], alpha, beta)
    xb = x if a.get("input") == "bits" else kernels.pack_bits(x)
    return _xnor_out(m, op, kernels.xnor_gemm(xb, bits, a["in_features"]))


def _xnor_out(m: PackedModel, op: Op, acc: Array) -> Array:
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


def _unpacked(m: PackedModel, op: Op, k: int) -> Array:
    """The ±1 float32 ``(N, K)`` weights of a binary layer, unpacked once per loaded model."""
    key = (op.name, "pm1")
    if key not in m.cache:
        m.cache[key] = kernels.unpack_bits(m.tensors[op.tensors["bits"]], k).astype(np.float32)
    return m.cache[key]


def _tap_bits(m: PackedModel, op: Op) -> Array:
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


def _grouped_conv(m: PackedModel, op: Op, x: Array) -> Array:
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
        x = np.where(x >= 0, np.float32(1), np.float32(-1))
    cols = kernels.im2col(x, (kh, kw), (sh, sw), (ph, pw))  # (N*Ho*Wo, kh*kw*C), native
    n, ho, wo = x.shape[0], _conv_out(x.shape[1], kh, sh, ph), _conv_out(x.shape[2], kw, sw, pw)
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


def _conv(m: PackedModel, op: Op, x: Array) -> Array:
    t, a = m.tensors, op.attrs
    if a.get("groups", 1) != 1:
        return _grouped_conv(m, op, x)
    kh, kw = a["kernel_size"]
    stride, pad = tuple(a["stride"]), tuple(a["padding"])
    n, h, w, _ = x.shape
    ho, wo = _conv_out(h, kh, stride[0], pad[0]), _conv_out(w, kw, stride[1], pad[1])
    cout = a["out_channels"]
    mode = a["mode"]
    if mode == "binary":  # x: float NHWC, or packed uint64 NHWC words when input == "bits"
        acc = kernels.binary_conv2d(
            x, _tap_bits(m, op), stride=stride, padding=pad, in_channels=a["in_channels"]
        )
        y = _xnor_out(m, op, acc.reshape(-1, cout))
        return y.reshape(n, ho, wo, -1)
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


def _affine(m: PackedModel, op: Op, x: Array) -> Array:
    return x * m.tensors[op.tensors["scale"]] + m.tensors[op.tensors["shift"]]


def _maxpool(m: PackedModel, op: Op, x: Array) -> Array:
    k, s = op.attrs["kernel_size"], op.attrs["stride"]
    n, h, w, c = x.shape
    if k == s and h % k == 0 and w % k == 0:
        return x.reshape(n, h // k, k, w // k, k, c).max(axis=(2, 4))
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::s, ::s]
    return win.max(axis=(-2, -1))


def _flatten(m: PackedModel, op: Op, x: Array) -> Array:
    if x.ndim == 4:  # torch flattens NCHW: channel-major order
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x).reshape(x.shape[0], -1)


def _shortcut_a(m: PackedModel, op: Op, x: Array) -> Array:
    """ResNet option-A shortcut: subsample by ``stride``, zero-pad the channels by ``pad``."""
    s, pad = op.attrs["stride"], op.attrs["pad"]
    x = x[:, ::s, ::s, :]
    out = np.zeros((*x.shape[:3], x.shape[3] + pad), dtype=x.dtype)  # faster than np.pad
    out[..., pad // 2 : pad // 2 + x.shape[3]] = x
    return out


def _hardtanh(x: Array, lo: float, hi: float) -> Array:
    y = np.maximum(x, np.float32(lo))  # two ufunc passes beat np.clip's slower generic path
    return np.minimum(y, np.float32(hi), out=y)


def _affine_(m: PackedModel, op: Op, x: Array) -> Array:
    x *= m.tensors[op.tensors["scale"]]
    x += m.tensors[op.tensors["shift"]]
    return x


def _add_(m: PackedModel, op: Op, a: Array, b: Array) -> Array:
    return np.add(a, b, out=a) if a.shape == b.shape else a + b


# In-place forms of elementwise ops, used when the op is the only reader of its first input:
# at batch 64 a fresh output array per op (page faults on every call) cost more than the math.
OPS_INPLACE: dict[str, Callable[..., Array]] = {
    "affine": _affine_,
    "relu": lambda m, op, x: np.maximum(x, np.float32(0), out=x),
    "hardtanh": lambda m, op, x: kernels.clamp_(x, op.attrs["min"], op.attrs["max"]),
    "add": _add_,
}
VIEW_OPS = frozenset({"flatten"})  # may return a view of their input: never written in place


OPS: dict[str, Callable[..., Array]] = {
    "linear": _linear,
    "conv": _conv,
    "affine": _affine,
    "relu": lambda m, op, x: np.maximum(x, 0, dtype=np.float32),
    "hardtanh": lambda m, op, x: _hardtanh(x, op.attrs["min"], op.attrs["max"]),
    "maxpool": _maxpool,
    "avgpool": lambda m, op, x: x.mean(axis=(1, 2), dtype=np.float32),
    "flatten": _flatten,
    "shortcut_a": _shortcut_a,
    "add": lambda m, op, a, b: a + b,
}


_blas: list[Any] | None = None  # numpy's BLAS libraries, found on first use (not at import)


@contextmanager
def serial_blas() -> Iterator[None]:
    """Inside, numpy's BLAS (OpenBLAS, MKL, ...) runs on one thread; its setting is restored after.

    Why: a packed model interleaves the kernels' threads with numpy float GEMMs (the
    first and last layers). Two thread pools on the same cores fight, because each pool's idle
    workers busy-wait for a while after their work: on this 2-core machine a 2-thread ResNet-18
    at batch 1 ran 7x slower than at one thread until numpy's BLAS was kept to one thread. The
    kernels' thread setting is then the model's only source of threads, and a "1 thread" figure
    means one thread. Needs ``threadpoolctl``; without it this does nothing.
    """
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # optional at run time: only the speed of mixed models depends on it
            _blas = []
        else:
            _blas = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    old = [lib.get_num_threads() for lib in _blas]
    for lib, n in zip(_blas, old, strict=True):
        if n != 1:
            lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(_blas, old, strict=True):
            if n != 1:
                lib.set_num_threads(n)


@dataclass
class PackedModel:
    """A packed binary network: ops, tensors, and how inputs are normalized.

    ``model(x)`` takes float32 NCHW (or ``(N, F)``) inputs already normalized like the training
    data; ``model.predict_raw(x)`` normalizes raw inputs (uint8 images or floats) first.
    """

    ops: list[Op]
    tensors: dict[str, Array]
    input: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)
    cache: dict[Any, Array] = field(default_factory=dict, repr=False)  # derived, never saved

    def __call__(self, x: npt.ArrayLike, profile: dict[str, float] | None = None) -> Array:
        """Logits for normalized float32 inputs ``(N, C, H, W)`` or ``(N, F)``.

        Args:
            x: the batch.
            profile: when given, seconds spent per op are added to it (a per-layer breakdown).
        """
        xa = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        if xa.ndim == 4:
            xa = np.ascontiguousarray(xa.transpose(0, 2, 3, 1))  # NCHW -> NHWC
        with serial_blas():
            return self._run(xa, profile)

    def _in_place(self) -> frozenset[str]:
        """Names of the ops that may overwrite their first input: an elementwise op that is the
        only reader of a value the runtime made itself (not the caller's input, not a view)."""
        if "in_place" not in self.cache:
            readers: dict[str, int] = {}
            for op in self.ops:
                for i in op.inputs:
                    readers[i] = readers.get(i, 0) + 1
            views = {op.name for op in self.ops if op.op in VIEW_OPS} | {"input"}
            self.cache["in_place"] = frozenset(  # type: ignore[assignment]
                op.name
                for op in self.ops
                if op.op in OPS_INPLACE
                and op.inputs
                and op.inputs[0] not in views
                and readers[op.inputs[0]] == 1
            )
        return self.cache["in_place"]  # type: ignore[return-value]

    def _run(self, xa: Array, profile: dict[str, float] | None) -> Array:
        env: dict[str, Array] = {"input": xa}
        in_place = self._in_place()
        for op in self.ops:
            t0 = time.perf_counter() if profile is not None else 0.0
            if op.op == "output":
                return env[op.inputs[0]]
            own = op.name in in_place and env[op.inputs[0]].dtype == np.float32
            fn = OPS_INPLACE[op.op] if own else OPS[op.op]
            env[op.name] = np.ascontiguousarray(fn(self, op, *(env[i] for i in op.inputs)))
            if profile is not None:
                profile[op.name] = profile.get(op.name, 0.0) + time.perf_counter() - t0
        raise OnebitError("the packed graph has no output op; the file is damaged.")

    def normalize(self, x: npt.ArrayLike) -> Array:
        """Raw inputs (uint8 in [0, 255] or floats) to the normalized float32 the net expects."""
        xa = np.asarray(x)
        xf = xa.astype(np.float32) / 255.0 if xa.dtype == np.uint8 else xa.astype(np.float32)
        shape = tuple(self.input["shape"])
        if xf.shape == shape:  # one example
            xf = xf[None]
        elif len(shape) == 3 and shape[0] == 1 and xf.shape[1:] == shape[1:]:
            xf = xf[:, None]  # (N, H, W) grey images
        if tuple(xf.shape[1:]) != shape:
            raise OnebitError(
                f"inputs have shape {tuple(xf.shape[1:])} per example; the model expects {shape}."
            )
        mean = np.asarray(self.input["mean"], dtype=np.float32)
        std = np.asarray(self.input["std"], dtype=np.float32)
        if len(shape) == 3:
            mean, std = mean.reshape(1, -1, 1, 1), std.reshape(1, -1, 1, 1)
        return (xf - mean) / std

    def predict_raw(self, x: npt.ArrayLike, batch_size: int = 256) -> Array:
        """Logits for raw inputs, in batches."""
        xn = self.normalize(x)
        return np.concatenate([self(xn[i : i + batch_size]) for i in range(0, len(xn), batch_size)])

    def nbytes(self) -> int:
        """Bytes of all tensors (the payload of the file)."""
        return sum(int(v.nbytes) for v in self.tensors.values())

    def format_version(self) -> int:
        """The oldest format version that describes this model (2 with grouped convolutions)."""
        return 2 if any(op.attrs.get("groups", 1) != 1 for op in self.ops) else 1

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ``.onebit`` file atomically (temporary file, then rename)."""
        from safetensors.numpy import save_file

        p = Path(path)
        meta = {
            "format": FORMAT,
            "format_version": str(self.format_version()),
            "graph": json.dumps([op.to_dict() for op in self.ops]),
            "input": json.dumps(self.input),
            "checksums": json.dumps({k: _sha(v) for k, v in self.tensors.items()}),
            "source": json.dumps(self.source),
        }
        tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
        save_file({k: np.ascontiguousarray(v) for k, v in self.tensors.items()}, str(tmp), meta)
        os.replace(tmp, p)
        return p


def _sha(a: Array) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).view(np.uint8).tobytes()).hexdigest()


def load(path: str | os.PathLike) -> PackedModel:
    """Read and check a ``.onebit`` file (format tag, version, graph, shapes, checksums).

    A file that is missing, not a onebit file, truncated, damaged or from a newer format
    version raises one ``OnebitError`` sentence.
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise OnebitError(f"{p} does not exist.")
    try:
        with safe_open(str(p), framework="np") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise OnebitError(
            f"{p} is not a onebit model file (unreadable safetensors: {str(e).splitlines()[0]})."
        ) from None
    if meta.get("format") != FORMAT:
        raise OnebitError(f"{p} is not a onebit model file (no onebit format tag).")
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        version = 0
    if version > FORMAT_VERSION:
        raise OnebitError(
            f"{p} uses onebit format version {version}, newer than this onebit reads "
            f"({FORMAT_VERSION}); upgrade onebit."
        )
    if version < 1:
        raise OnebitError(f"{p} has no valid onebit format version.")
    try:
        ops = [Op(**d) for d in json.loads(meta["graph"])]
        checksums = json.loads(meta["checksums"])
        spec = json.loads(meta["input"])
        source = json.loads(meta.get("source", "{}"))
    except (KeyError, TypeError, ValueError) as e:
        raise OnebitError(f"{p} has damaged onebit metadata ({type(e).__name__}).") from None
    for name, digest in checksums.items():
        if name not in tensors:
            raise OnebitError(f"{p} is missing tensor {name!r}; the file is damaged.")
        if _sha(tensors[name]) != digest:
            raise OnebitError(f"{p} fails its checksum for tensor {name!r}; the file is damaged.")
    for op in ops:
        if op.op not in OPS and op.op != "output":
            raise OnebitError(
                f"{p} uses op {op.op!r} that this onebit does not know; upgrade onebit."
            )
        for role, name in op.tensors.items():
            if name not in tensors:
                raise OnebitError(f"{p} is missing tensor {name!r} ({op.name}.{role}).")
    return PackedModel(ops, tensors, spec, source)


def read_inputs(paths: Sequence[str | os.PathLike]) -> tuple[Array, Array | None]:
    """Inputs (and labels when the files carry them) from IDX, .npz or image files.

    - ``.npz``: ``x_test``/``y_test`` when present (a dataset file), else ``x`` (and ``y``);
    - IDX (``*-idx3-ubyte[.gz]``): images; the matching ``*-labels-idx1-ubyte`` is read when present;
    - images (PNG, JPEG, ...): decoded with Pillow, one example each.
    """
    xs, ys = [], []
    images = []
    for raw in paths:
        p = Path(raw)
        if not p.is_file():
            raise OnebitError(f"input file {p} does not exist.")
        name = p.name.lower()
        if name.endswith(".npz"):
            with np.load(p) as z:
                kx = "x_test" if "x_test" in z else "x" if "x" in z else None
                if kx is None:
                    raise OnebitError(f"{p} has no array 'x' (or 'x_test').")
                xs.append(z[kx])
                ky = "y_test" if kx == "x_test" else "y"
                ys.append(z.get(ky))
        elif "idx" in name:
            x = read_idx(p)
            xs.append(x)
            lab = p.with_name(p.name.replace("images-idx3", "labels-idx1"))
            ys.append(read_idx(lab) if lab != p and lab.is_file() else None)
        else:
            images.append(p)
    if images:
        try:
            from PIL import Image
        except ImportError:
            raise OnebitError("reading image files needs Pillow: pip install pillow.") from None
        arrs = []
        for p in images:
            try:
                with Image.open(p) as im:
                    a = np.asarray(im)
            except OSError:
                raise OnebitError(f"{p} is not an image, an IDX or an .npz file.") from None
            arrs.append(a.transpose(2, 0, 1) if a.ndim == 3 else a)
        xs.append(np.stack(arrs))
        ys.append(None)
    x = np.concatenate(xs) if len(xs) > 1 else xs[0]
    y = None if any(v is None for v in ys) else np.concatenate(ys)
    return x, y
