"""The ``.onebit`` file: writing, reading and checking it, and the translation of legacy ops.

A ``.onebit`` file is a safetensors file (no pickle, safe to load from strangers) whose tensors
are the packed weights (uint64 bit rows: bit = ``w >= 0``, i.e. +1), per-channel float32 scales
and shifts (the binary weight scale and BatchNorm folded together) and float weights of the
layers kept in float; its string metadata holds

- ``format = "onebit"`` and ``format_version``: the oldest version that describes the graph
  (:func:`format_version`): ``"1"``; ``"2"`` when a convolution is grouped (``attrs["groups"]``);
  ``"3"`` when the graph uses the generic ``slice`` or ``pad`` ops. A reader refuses a newer
  version than it knows instead of running ops it would misread;
- ``graph``: JSON list of ops ``{"op", "name", "inputs", "attrs", "tensors"}`` in execution
  order (see :mod:`onebit.runtime.ops`);
- ``input``: JSON ``{"shape": [C, H, W] or [F], "mean", "std"}`` (inputs are normalized by it);
- ``checksums``: JSON ``{tensor name: sha256 of its bytes}``, checked on load;
- ``source``: JSON describing where the model came from (config, method), informational.

Legacy ops: versions 1 and 2 had ``shortcut_a`` (a ResNet option-A shortcut: ``x[:, ::s, ::s]``
then ``pad // 2`` zero channels before and ``pad - pad // 2`` after, NHWC); it is read as a
``slice`` followed by a ``pad``, which compute the same values.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from onebit.errors import OnebitError
from onebit.fileio import atomic_write
from onebit.runtime.ops import OPS, Array, Op

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LEGACY_OPS",
    "format_version",
    "read",
    "write",
]

FORMAT = "onebit"
FORMAT_VERSION = 3
# Version 2 added grouped/depthwise convolutions (``attrs["groups"]``), version 3 the generic
# ``slice`` and ``pad`` ops (which replaced the architecture-specific ``shortcut_a``). A file is
# written as the oldest version that describes it, so a model without these still loads in an
# older reader; one with them is refused by that reader instead of being computed wrongly.
_V3_OPS = frozenset({"slice", "pad"})


def format_version(ops: list[Op]) -> int:
    """The oldest format version that describes ``ops``: 3 with ``slice``/``pad`` ops, else 2
    with grouped convolutions, else 1."""
    if any(op.op in _V3_OPS for op in ops):
        return 3
    if any(op.attrs.get("groups", 1) != 1 for op in ops):
        return 2
    return 1


def _sha(a: Array) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).view(np.uint8).tobytes()).hexdigest()


def write(
    path: str | os.PathLike[str],
    ops: list[Op],
    tensors: dict[str, Array],
    spec: dict[str, Any],
    source: dict[str, Any],
) -> Path:
    """Write a ``.onebit`` file atomically (:func:`onebit.fileio.atomic_write`); returns its path."""
    from safetensors.numpy import save_file

    meta = {
        "format": FORMAT,
        "format_version": str(format_version(ops)),
        "graph": json.dumps([op.to_dict() for op in ops]),
        "input": json.dumps(spec),
        "checksums": json.dumps({k: _sha(v) for k, v in tensors.items()}),
        "source": json.dumps(source),
    }
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(arrays, str(tmp), meta))


def _shortcut_a(op: Op) -> list[Op]:
    """Legacy ``shortcut_a`` (``stride`` s, ``pad`` p, NHWC) as ``slice`` + ``pad``; the ``pad``
    op keeps the legacy op's name, so the ops that read its value are unchanged."""
    s, p = int(op.attrs["stride"]), int(op.attrs["pad"])
    sub = f"{op.name}.slice"
    full = [0, None, 1]
    return [
        Op("slice", sub, list(op.inputs), {"slices": [full, [0, None, s], [0, None, s], full]}),
        Op("pad", op.name, [sub], {"pads": [[0, 0], [0, 0], [0, 0], [p // 2, p - p // 2]]}),
    ]


LEGACY_OPS: dict[str, Callable[[Op], list[Op]]] = {"shortcut_a": _shortcut_a}
"""Ops older files use, each with its translation into current ops (applied on read)."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_attrs(op: Op) -> str | None:
    """What is wrong with the attributes of a ``slice`` or ``pad`` op, or None."""
    a = op.attrs
    if op.op in ("slice", "pad") and not isinstance(a, dict):
        return "attrs must be an object"
    if op.op == "slice":
        s = a.get("slices")
        ok = isinstance(s, list) and all(
            isinstance(e, list)
            and len(e) == 3
            and all(v is None or _is_int(v) for v in e[:2])
            and _is_int(e[2])
            and e[2] >= 1
            for e in s
        )
        return None if ok else "slices must be [start, stop, step] lists with step >= 1"
    if op.op == "pad":
        p = a.get("pads")
        ok = isinstance(p, list) and all(
            isinstance(e, list) and len(e) == 2 and all(_is_int(v) and v >= 0 for v in e) for e in p
        )
        value = a.get("value", 0.0)
        if not ok or not isinstance(value, int | float) or isinstance(value, bool):
            return "pads must be [before, after] lists of ints >= 0 and value a number"
    return None


def read(
    path: str | os.PathLike[str],
) -> tuple[list[Op], dict[str, Array], dict[str, Any], dict[str, Any]]:
    """Read and check a ``.onebit`` file (format tag, version, graph, tensors, checksums).

    Returns ``(ops, tensors, input spec, source)``, legacy ops translated (:data:`LEGACY_OPS`).
    A file that is missing, not a onebit file, truncated, damaged or from a newer format version
    raises one ``OnebitError`` sentence.
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
        stored = [Op(**d) for d in json.loads(meta["graph"])]
        checksums = json.loads(meta["checksums"])
        spec = json.loads(meta["input"])
        source = json.loads(meta.get("source", "{}"))
        ops = [new for op in stored for new in LEGACY_OPS.get(op.op, lambda o: [o])(op)]
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
        problem = _check_attrs(op)
        if problem is not None:
            raise OnebitError(f"{p} has a damaged {op.op} op {op.name!r} ({problem}).")
        for role, name in op.tensors.items():
            if name not in tensors:
                raise OnebitError(f"{p} is missing tensor {name!r} ({op.name}.{role}).")
    return ops, tensors, spec, source
