"""The ``.onebit`` file: writing, reading and checking it, and the translation of legacy ops.

A ``.onebit`` file is a safetensors file (no pickle, safe to load from strangers) whose tensors
are the packed weights (uint64 bit rows: bit = ``w >= 0``, i.e. +1), per-channel float32 scales
and shifts (the binary weight scale and BatchNorm folded together) and float weights of the
layers kept in float; its string metadata holds

- ``format = "onebit"`` and ``format_version``: the oldest version that describes the graph
  (:func:`format_version`): ``"1"``; ``"2"`` when a convolution is grouped (``attrs["groups"]``);
  ``"3"`` when the graph uses the generic ``slice`` or ``pad`` ops; ``"4"`` with the general ops
  of a captured graph; ``"5"`` with the fused ``attention`` op. A reader refuses a newer
  version than it knows instead of running ops it would misread;
- ``graph``: JSON list of ops ``{"op", "name", "inputs", "attrs", "tensors"}`` in execution
  order (see :mod:`onebit.runtime.ops`);
- ``input``: JSON ``{"shape": [C, H, W] or [F], "mean", "std", "pixels"}`` (inputs are
  normalized by it; ``pixels``: the model was trained on integer pixels, fed as ``x / 255``);
- ``checksums``: JSON ``{tensor name: sha256 of its bytes}``;
- ``file_checksum``: sha256 over all of the above and every tensor's name, dtype, shape and
  bytes (:func:`file_digest`), so no byte of the header, graph or tensors can change unnoticed.
  Older readers ignore it (a file is still readable by the oldest reader of its version); files
  written before it existed are checked by their per-tensor checksums, which must then cover
  every tensor;
- ``source``: JSON describing where the model came from (config, method), informational.

Reading checks more than the checksums: unknown metadata fields, graph fields, op attributes
and tensor roles are refused, and every op is checked against its row of
:data:`onebit.runtime.schema.SCHEMA` (attribute rules, the dtype and shape of each tensor, the
shapes of the values between ops), so an edited file is refused with one sentence instead of
being run into a wrong answer or a crash.

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
from onebit.runtime.generic import GENERIC_OPS
from onebit.runtime.ops import OPS, Array, Op
from onebit.runtime.schema import GraphError, check_graph

__all__ = [
    "FILE_CHECKSUM",
    "FORMAT",
    "FORMAT_VERSION",
    "LEGACY_OPS",
    "file_digest",
    "format_version",
    "is_onebit_file",
    "read",
    "write",
]

FORMAT = "onebit"
FORMAT_VERSION = 5
# Version 2 added grouped/depthwise convolutions (``attrs["groups"]``), version 3 the generic
# ``slice`` and ``pad`` ops (which replaced the architecture-specific ``shortcut_a``). A file is
# written as the oldest version that describes it, so a model without these still loads in an
# older reader; one with them is refused by that reader instead of being computed wrongly.
_V3_OPS = frozenset({"slice", "pad"})
# Version 4: graphs captured with torch.export (``input.layout = "graph"``), with the general ops
# of onebit.runtime.generic and layers' input thresholds. Version 5: the fused attention op
# (torch's scaled_dot_product_attention kept whole instead of its decomposition).
_V5_OPS = frozenset({"attention"})
_V4_OPS = frozenset(GENERIC_OPS) - _V5_OPS


def format_version(ops: list[Op]) -> int:
    """The oldest format version that describes ``ops``: 5 with the fused ``attention`` op, 4
    with the general ops of a captured graph, 3 with ``slice``/``pad`` ops, 2 with grouped
    convolutions, else 1 (:func:`_needed_version`, which also says why)."""
    return _needed_version(ops)[0]


def _sha(a: Array) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).view(np.uint8).tobytes()).hexdigest()


def write(
    path: str | os.PathLike[str],
    ops: list[Op],
    tensors: dict[str, Array],
    spec: dict[str, Any],
    source: dict[str, Any],
) -> Path:
    """Write a ``.onebit`` file atomically (:func:`onebit.fileio.atomic_write`); returns its path.

    The graph is checked as :func:`read` checks it first, so no file is written that a reader
    would refuse."""
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    problem = _check_model(ops, arrays, json.loads(json.dumps(spec)))
    if problem is not None:
        raise OnebitError(f"cannot write {path}: the model's graph is invalid ({problem}).")
    meta = {
        "format": FORMAT,
        "format_version": str(format_version(ops)),
        "graph": json.dumps([op.to_dict() for op in ops]),
        "input": json.dumps(spec),
        "checksums": json.dumps({k: _sha(v) for k, v in arrays.items()}),
        "source": json.dumps(source),
    }
    meta[FILE_CHECKSUM] = file_digest(meta, arrays)
    return atomic_write(path, lambda tmp: save_file(arrays, str(tmp), meta))


def is_onebit_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file that starts like a ``.onebit`` file (a safetensors header
    whose metadata carries the onebit format tag); reads the header only."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return False
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000:
                return False
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return False
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and meta.get("format") == FORMAT


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


_META_KEYS = frozenset({"format", "format_version", "graph", "input", "checksums", "source"})
FILE_CHECKSUM = "file_checksum"
"""The metadata key of the whole-file checksum (see :func:`file_digest`)."""
_OP_KEYS = frozenset({"op", "name", "inputs", "attrs", "tensors"})


def file_digest(meta: dict[str, str], tensors: dict[str, Array]) -> str:
    """sha256 over the whole file's content: every metadata entry but the checksum itself (the
    format tag and version, the graph, the input spec, the per-tensor checksums and the
    source), then each tensor's name, dtype, shape and bytes, in name order. Stored as
    ``file_checksum``: an edit of any byte of the header, the graph or a tensor fails it."""
    h = hashlib.sha256(b"onebit-file-checksum-1\0")
    for k in sorted(meta):
        if k != FILE_CHECKSUM:
            h.update(json.dumps([k, meta[k]]).encode() + b"\0")
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode() + b"\0")
        h.update(a.view(np.uint8).tobytes())
    return h.hexdigest()


def _check_model(ops: list[Op], tensors: dict[str, Array], spec: Any) -> str | None:
    try:
        check_graph(ops, tensors, spec)
    except GraphError as e:
        return str(e)
    return None


def _read_safetensors(p: Path) -> tuple[dict[str, str], dict[str, Array]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="np") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, TypeError, OverflowError, MemoryError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OnebitError(
            f"{p} is not a onebit model file (unreadable safetensors: {first[:200]})."
        ) from None
    except BaseException as e:  # the Rust reader panics on some damaged headers
        if type(e).__name__ != "PanicException":
            raise
        raise OnebitError(f"{p} is not a onebit model file (unreadable safetensors).") from None
    return dict(meta), tensors


def _stored_op(d: Any) -> Op:
    """One graph entry as an Op, its fields and their types checked."""
    if not isinstance(d, dict):
        raise GraphError("a graph entry is not an object")
    unknown = sorted(set(d) - _OP_KEYS)
    if unknown:
        raise GraphError(f"a graph entry has an unknown field {unknown[0]!r}")
    for key in ("op", "name", "inputs"):
        if key not in d:
            raise GraphError(f"a graph entry lacks its field {key!r}")
    op, name, inputs = d["op"], d["name"], d["inputs"]
    attrs, tensors = d.get("attrs", {}), d.get("tensors", {})
    if not isinstance(op, str) or not isinstance(name, str) or not name:
        raise GraphError("a graph entry's op and name are not strings")
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise GraphError(f"op {name!r}: its inputs are not a list of names")
    if not isinstance(attrs, dict):
        raise GraphError(f"op {name!r}: its attrs are not an object")
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tensors.items()
    ):
        raise GraphError(f"op {name!r}: its tensors are not an object of names")
    return Op(op, name, list(inputs), dict(attrs), dict(tensors))


def _needed_version(stored: list[Op]) -> tuple[int, str]:
    """The oldest format version the stored ops need, and why."""
    if any(op.op in _V5_OPS for op in stored):
        return 5, "the attention op"
    if any(op.op in _V4_OPS or "act_shift" in op.tensors for op in stored):
        return 4, "the general ops of captured graphs (or input thresholds)"
    if any(op.op in _V3_OPS for op in stored):
        return 3, "slice and pad ops"
    if any(op.attrs.get("groups", 1) != 1 for op in stored):
        return 2, "grouped convolutions"
    return 1, ""


def read(
    path: str | os.PathLike[str],
) -> tuple[list[Op], dict[str, Array], dict[str, Any], dict[str, Any]]:
    """Read and check a ``.onebit`` file: format tag and version, the metadata fields (unknown
    ones refused), the whole-file checksum (or, in files written before onebit stored one, the
    per-tensor checksums, which must then cover every tensor), and the graph against
    :data:`onebit.runtime.schema.SCHEMA`: every op's attributes, the dtype and shape of every
    tensor, the shapes of the values between ops from the input to the output.

    Returns ``(ops, tensors, input spec, source)``, legacy ops translated (:data:`LEGACY_OPS`).
    A file that is missing, not a onebit file, truncated, damaged, edited or from a newer format
    version raises one ``OnebitError`` sentence; nothing in it runs code.
    """
    p = Path(path)
    if p.is_dir():
        raise OnebitError(f"{p} is a folder; give the path of a .onebit model file.")
    if not p.is_file():
        raise OnebitError(f"{p} does not exist.")
    meta, tensors = _read_safetensors(p)
    if meta.get("format") != FORMAT:
        raise OnebitError(f"{p} is not a onebit model file (no onebit format tag).")
    text = meta.get("format_version", "0")
    version = int(text) if text.isascii() and text.isdigit() and len(text) < 6 else 0
    if version > FORMAT_VERSION:
        raise OnebitError(
            f"{p} uses onebit format version {version}, newer than this onebit reads "
            f"({FORMAT_VERSION}); upgrade onebit."
        )
    if version < 1 or text != str(version):
        raise OnebitError(f"{p} has no valid onebit format version ({text[:20]!r}).")
    unknown = sorted(set(meta) - _META_KEYS - {FILE_CHECKSUM})
    if unknown:
        raise OnebitError(
            f"{p} has an unknown metadata field {unknown[0][:40]!r}; the file is damaged."
        )
    if FILE_CHECKSUM in meta and file_digest(meta, tensors) != meta[FILE_CHECKSUM]:
        raise OnebitError(f"{p} fails its checksum; the file is damaged or was edited.")
    try:
        raw_graph = json.loads(meta["graph"])
        checksums = json.loads(meta["checksums"])
        spec = json.loads(meta["input"])
        source = json.loads(meta.get("source", "{}"))
    except (KeyError, ValueError) as e:
        what = f"no {e.args[0]!r} entry" if isinstance(e, KeyError) else "invalid JSON"
        raise OnebitError(f"{p} has damaged onebit metadata ({what}).") from None
    if FILE_CHECKSUM not in meta:  # a file written before onebit stored the whole-file checksum
        if not isinstance(checksums, dict):
            raise OnebitError(f"{p} has damaged onebit metadata (checksums is not an object).")
        for name in sorted(set(tensors) | set(checksums)):
            if name not in tensors:
                raise OnebitError(f"{p} is missing tensor {name!r}; the file is damaged.")
            if name not in checksums:
                raise OnebitError(
                    f"{p} has no checksum for tensor {name!r}; the file is damaged or was edited."
                )
            if _sha(tensors[name]) != checksums[name]:
                raise OnebitError(
                    f"{p} fails its checksum for tensor {name!r}; the file is damaged."
                )
    if not isinstance(source, dict):
        raise OnebitError(f"{p} has damaged onebit metadata (source is not an object).")
    try:
        if not isinstance(raw_graph, list):
            raise GraphError("the graph is not a list of ops")
        stored = [_stored_op(d) for d in raw_graph]
        for op in stored:
            if (
                op.op not in OPS
                and op.op not in GENERIC_OPS
                and op.op not in LEGACY_OPS
                and op.op != "output"
            ):
                raise OnebitError(
                    f"{p} uses op {op.op[:40]!r} that this onebit does not know; upgrade onebit."
                )
        need, why = _needed_version(stored)
        if need > version:
            raise GraphError(f"it uses {why}, which need format version {need}, not {version}")
        ops = [new for op in stored for new in LEGACY_OPS.get(op.op, lambda o: [o])(op)]
    except GraphError as e:
        raise OnebitError(f"{p} has a damaged graph ({e}).") from None
    except (KeyError, TypeError, ValueError) as e:  # a legacy op's attributes
        raise OnebitError(f"{p} has a damaged legacy op ({type(e).__name__}).") from None
    problem = _check_model(ops, tensors, spec)
    if problem is not None:
        raise OnebitError(f"{p} has a damaged graph ({problem}).")
    return ops, tensors, spec, source
