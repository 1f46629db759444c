"""``PackedModel``: a packed graph with its tensors, the interpreter that runs it, and ``load``.

The interpreter runs the ops of :mod:`onebit.runtime.ops` in order on float32 ``(N, F)`` or NHWC
values (NCHW inputs are transposed once at the start), keeping numpy's BLAS on one thread so the
kernels' thread pool is the only one (:func:`serial_blas`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from onebit import kernels
from onebit.errors import OnebitError
from onebit.runtime import format as fmt
from onebit.runtime import slicing
from onebit.runtime.generic import GENERIC_OPS
from onebit.runtime.ops import OPS, OPS_INPLACE, STRIDED_OPS, VIEW_OPS, Array, Op

TABLE = {**OPS, **GENERIC_OPS}
"""Every op the interpreter runs: the layers and layer-like ops, and the general ones."""
# views of their input (never written in place by the op after them)
_VIEWS = VIEW_OPS | {"transpose", "expand", "constant", "reshape"}

__all__ = ["PackedModel", "load", "serial_blas"]

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

    A batch runs as slices of a few examples when no op of the graph mixes examples
    (:mod:`onebit.runtime.slicing`): each slice's largest value then takes at most
    ``slice_bytes`` per kernel thread, so that it stays in cache. ``slice_bytes = 0`` runs
    every batch whole.
    """

    ops: list[Op]
    tensors: dict[str, Array]
    input: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)
    cache: dict[Any, Array] = field(default_factory=dict, repr=False)  # derived, never saved
    slice_bytes: int = slicing.SLICE_BYTES

    def __call__(
        self, x: npt.ArrayLike, profile: dict[str, float] | None = None, **inputs: npt.ArrayLike
    ) -> Array:
        """Logits for normalized float32 inputs ``(N, C, H, W)`` or ``(N, F)`` (or token ids).

        Args:
            x: the batch.
            profile: when given, seconds spent per op are added to it (a per-layer breakdown).
            inputs: the file's further inputs by name (``input["extra"]``, e.g. an
                ``attention_mask`` of a captured transformer), each with the batch of ``x``.
        """
        graph = self.input.get("layout") == "graph"
        dtype = np.int64 if self.input.get("dtype") == "int64" else np.float32
        xa = np.ascontiguousarray(np.asarray(x, dtype=dtype))
        shape = tuple(self.input.get("shape", ()))
        if shape and tuple(xa.shape[1:]) != shape:
            raise OnebitError(
                f"inputs have shape {tuple(xa.shape[1:])} per example; the model expects {shape}."
            )
        if xa.ndim == 4 and not graph:  # older files: the graph starts from NHWC
            xa = np.ascontiguousarray(xa.transpose(0, 2, 3, 1))  # NCHW -> NHWC
        extra = self._extra_inputs(xa.shape[0], inputs)
        with serial_blas():
            n = xa.shape[0]
            step = self._examples_per_slice(xa, extra)
            if step >= n:
                return self._run(xa, profile, extra)
            return np.concatenate(
                [
                    self._run(
                        xa[i : i + step], profile, {k: v[i : i + step] for k, v in extra.items()}
                    )
                    for i in range(0, n, step)
                ]
            )

    def _examples_per_slice(self, xa: Array, extra: dict[str, Array]) -> int:
        """How many examples of this batch to run at a time (the class doc): the whole batch
        unless the graph keeps examples apart, which one traced run at batch 2 decides on the
        first batch that could be sliced (its shapes also give the bytes per example)."""
        n = xa.shape[0]
        if self.slice_bytes <= 0 or n < 2:
            return n
        if "slicing" not in self.cache:
            two = {k: v[:2] for k, v in extra.items()}
            trace = {"input": (2, *xa.shape[1:])} | {k: tuple(v.shape) for k, v in two.items()}
            self._run(xa[:2], None, two, trace)
            tensors = {k: tuple(v.shape) for k, v in self.tensors.items()}
            self.cache["slicing"] = slicing.plan(  # type: ignore[assignment]
                self.ops, trace, tensors, ["input", *extra], 2
            )
        local, per = self.cache["slicing"]  # type: ignore[misc]
        if not local:
            return n
        return slicing.examples_per_slice(per, self.slice_bytes, kernels.get_num_threads())

    def _extra_inputs(self, n: int, given: dict[str, npt.ArrayLike]) -> dict[str, Array]:
        """The file's further inputs from the caller's keywords, checked."""
        specs = {e["name"]: e for e in self.input.get("extra", [])}
        unknown = sorted(set(given) - set(specs))
        if unknown:
            known = ", ".join(specs) or "none"
            raise OnebitError(f"the model has no input {unknown[0]!r} (its other inputs: {known}).")
        missing = [k for k in specs if k not in given]
        if missing:
            raise OnebitError(f"the model also needs the input {missing[0]!r}; pass it by name.")
        out = {}
        for name, e in specs.items():
            a = np.ascontiguousarray(
                np.asarray(given[name], dtype=np.int64 if e["dtype"] == "int64" else np.float32)
            )
            if a.shape != (n, *e["shape"]):
                raise OnebitError(
                    f"input {name!r} has shape {a.shape}; the model expects {(n, *e['shape'])}."
                )
            out[name] = a
        return out

    def _in_place(self) -> frozenset[str]:
        """Names of the ops that may overwrite their first input: an elementwise op that is the
        only reader of a value the runtime made itself (not the caller's input, not a view)."""
        if "in_place" not in self.cache:
            readers: dict[str, int] = {}
            for op in self.ops:
                for i in op.inputs:
                    readers[i] = readers.get(i, 0) + 1
            views = {op.name for op in self.ops if op.op in _VIEWS} | {"input"}
            views |= {e["name"] for e in self.input.get("extra", [])}  # the caller's arrays
            self.cache["in_place"] = frozenset(  # type: ignore[assignment]
                op.name
                for op in self.ops
                if op.op in OPS_INPLACE
                and op.inputs
                and op.inputs[0] not in views
                and readers[op.inputs[0]] == 1
            )
        return self.cache["in_place"]  # type: ignore[return-value]

    def _run(
        self,
        xa: Array,
        profile: dict[str, float] | None,
        extra: dict[str, Array] | None = None,
        trace: dict[str, tuple[int, ...]] | None = None,
    ) -> Array:
        """The graph on one batch, over :meth:`_steps` (``trace``: when given, every value's
        shape is put in it; ``profile``: seconds per op are added to it)."""
        names, steps, out, n = self._steps()
        if out < 0:
            raise OnebitError("the packed graph has no output op; the file is damaged.")
        env: list[Any] = [None] * n
        env[0] = xa
        for i, name in enumerate(names[1:], 1):
            env[i] = (extra or {})[name]
        for fn, own, op, ins, at, strided in steps:
            t0 = time.perf_counter() if profile is not None else 0.0
            args = [env[i] for i in ins]
            try:
                if own is not None and args[0].dtype == np.float32:
                    y = own(self, op, *args)
                else:
                    y = fn(self, op, *args)
            except (ValueError, IndexError, KeyError, TypeError) as e:
                # files are checked on load (onebit.runtime.schema); this is for graphs built
                # in memory that do not fit their inputs
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise OnebitError(
                    f"op {op.name!r} ({op.op}) cannot run on its input ({first[:160]})."
                ) from None
            env[at] = y if strided else np.ascontiguousarray(y)
            if trace is not None:
                trace[op.name] = tuple(y.shape)
            if profile is not None:
                profile[op.name] = profile.get(op.name, 0.0) + time.perf_counter() - t0
        return np.ascontiguousarray(env[out])

    def _steps(self) -> tuple[list[str], list[tuple[Any, ...]], int, int]:
        """The graph as a list of steps over numbered slots, made once per model: per op its
        function, its in-place variant (or None: an op that may overwrite its only reader's
        input, :meth:`_in_place`), the op, its input slots, its output slot and whether its
        result may stay strided; the inputs' names (slots 0, 1, ...), the output's slot (-1:
        none) and the number of slots. Numbered slots instead of per-op name lookups saved
        ~1 us per op (a tenth of a ViT's time at batch 1)."""
        if "steps" not in self.cache:
            in_place = self._in_place()
            names = ["input", *(e["name"] for e in self.input.get("extra", []))]
            slot = {n: i for i, n in enumerate(names)}
            steps: list[tuple[Any, ...]] = []
            out = -1
            for op in self.ops:
                if op.op == "output":
                    out = slot[op.inputs[0]]
                    break
                unknown = [i for i in op.inputs if i not in slot]
                if unknown:  # files are checked on load; graphs built in memory may not be
                    raise OnebitError(
                        f"op {op.name!r} ({op.op}) reads {unknown[0]!r}, which no earlier op makes."
                    )
                ins = tuple(slot[i] for i in op.inputs)
                slot[op.name] = len(slot)
                own = OPS_INPLACE[op.op] if op.name in in_place else None
                steps.append((TABLE[op.op], own, op, ins, slot[op.name], op.op in STRIDED_OPS))
            self.cache["steps"] = (names, steps, out, len(slot))  # type: ignore[assignment]
        return self.cache["steps"]  # type: ignore[return-value]

    def normalize(self, x: npt.ArrayLike) -> Array:
        """Raw inputs to the normalized float32 the net expects.

        Integer inputs (any integer dtype) are pixels 0..255 and are divided by 255, as in
        training, unless the model says it was trained on float inputs (``pixels: false`` in
        its input spec: numbers are then fed as they are). Float inputs are used as they are;
        for a pixel model they must lie in [0, 1] (that is, ``x / 255``). NaN and infinite
        values, integers outside 0..255 and non-numbers are refused with one sentence.
        """
        if self.input.get("dtype") == "int64":  # token ids: as they are
            ids = np.asarray(x)
            if not np.issubdtype(ids.dtype, np.integer):
                raise OnebitError(f"the model takes integer token ids, not {ids.dtype} values.")
            return ids.astype(np.int64)[None] if ids.ndim == len(self.input["shape"]) else ids
        xf = _raw_inputs(np.asarray(x), self.input.get("pixels"))
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
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise OnebitError(f"the batch size {batch_size!r} is not accepted; give a number >= 1.")
        xn = self.normalize(x)
        if len(xn) == 0:
            raise OnebitError("the inputs hold no examples; give at least one.")
        return np.concatenate([self(xn[i : i + batch_size]) for i in range(0, len(xn), batch_size)])

    def nbytes(self) -> int:
        """Bytes of all tensors (the payload of the file)."""
        return sum(int(v.nbytes) for v in self.tensors.values())

    def format_version(self) -> int:
        """The oldest format version that describes this model (:func:`format.format_version`)."""
        return fmt.format_version(self.ops)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the ``.onebit`` file atomically (temporary file, then rename)."""
        return fmt.write(path, self.ops, self.tensors, self.input, self.source)


def _raw_inputs(xa: Array, pixels: bool | None) -> Array:
    """float32 inputs from raw ones (see :meth:`PackedModel.normalize`)."""
    kind = xa.dtype.kind
    if kind not in "biuf":
        raise OnebitError(
            f"inputs have dtype {xa.dtype}; give numbers: integer pixels 0..255 or floats."
        )
    if kind in "iu":
        if pixels is False:  # a model of float inputs: numbers as they are
            return xa.astype(np.float32)
        if xa.size and (xa.min() < 0 or xa.max() > 255):
            raise OnebitError(
                f"inputs hold integers from {xa.min()} to {xa.max()}; integer inputs are pixels "
                "0..255 (give floats for other values)."
            )
        return xa.astype(np.float32) / np.float32(255.0)
    xf = xa.astype(np.float32)
    bad = ~np.isfinite(xf)
    if bad.any():
        first = int(np.argwhere(bad)[0][0]) if xf.ndim else 0
        raise OnebitError(
            f"inputs hold {int(bad.sum())} NaN or infinite values (the first in input {first}); "
            "give finite numbers."
        )
    if pixels is True and xf.size and (xf.min() < 0 or xf.max() > 1):
        raise OnebitError(
            f"inputs are floats from {xf.min():g} to {xf.max():g}, but this model reads pixels: "
            "give integers 0..255, or floats x / 255 in [0, 1]."
        )
    return xf


def load(path: str | os.PathLike[str]) -> PackedModel:
    """Read and check a ``.onebit`` file (format tag, version, graph, shapes, checksums).

    A file that is missing, not a onebit file, truncated, damaged or from a newer format
    version raises one ``OnebitError`` sentence. Ops of older versions that the format no
    longer has are translated into current ones (:data:`onebit.runtime.format.LEGACY_OPS`).
    """
    return PackedModel(*fmt.read(path))
