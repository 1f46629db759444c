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

from onebit.errors import OnebitError
from onebit.runtime import format as fmt
from onebit.runtime.ops import OPS, OPS_INPLACE, STRIDED_OPS, VIEW_OPS, Array, Op

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
                return np.ascontiguousarray(env[op.inputs[0]])
            own = op.name in in_place and env[op.inputs[0]].dtype == np.float32
            fn = OPS_INPLACE[op.op] if own else OPS[op.op]
            y = fn(self, op, *(env[i] for i in op.inputs))
            env[op.name] = y if op.op in STRIDED_OPS else np.ascontiguousarray(y)
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
        """The oldest format version that describes this model (:func:`format.format_version`)."""
        return fmt.format_version(self.ops)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the ``.onebit`` file atomically (temporary file, then rename)."""
        return fmt.write(path, self.ops, self.tensors, self.input, self.source)


def load(path: str | os.PathLike[str]) -> PackedModel:
    """Read and check a ``.onebit`` file (format tag, version, graph, shapes, checksums).

    A file that is missing, not a onebit file, truncated, damaged or from a newer format
    version raises one ``OnebitError`` sentence. Ops of older versions that the format no
    longer has are translated into current ones (:data:`onebit.runtime.format.LEGACY_OPS`).
    """
    return PackedModel(*fmt.read(path))
