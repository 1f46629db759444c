"""IDX files (the MNIST format), gzipped or not: numpy only, so the packed-model runtime can read
them without torch."""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import IO

import numpy as np

from onebit.errors import OnebitError

__all__ = ["read_idx"]

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _resolve_gz(path: Path) -> Path:
    """Return ``path``, or its gzipped / plain twin when only that exists."""
    if path.is_file():
        return path
    twin = path.with_suffix("") if path.suffix == ".gz" else path.with_name(path.name + ".gz")
    if twin.is_file():
        return twin
    raise OnebitError(
        f"File {path} (or {twin.name}) does not exist; check the data folder or download the data."
    )


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not.

    The name may be given with or without ``.gz``: whichever variant exists is read.

    Args:
        path: Path of the file.

    Returns:
        The array, in native byte order, writable.

    Raises:
        OnebitError: When the file is missing, has a bad magic number or is truncated.
    """
    path = _resolve_gz(Path(path))
    opener: Callable[..., IO[bytes]] = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise OnebitError(
            f"Could not read {path} ({exc}); replace the file with a good copy."
        ) from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise OnebitError(
            f"{path} is not an IDX file (bad magic number); replace it with the original file."
        )
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise OnebitError(f"{path} is truncated (incomplete header); replace it with a good copy.")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims) * dtype.itemsize
    if len(data) - header != expected:
        raise OnebitError(
            f"{path} holds {len(data) - header} data bytes but its header announces {expected}; "
            "replace it with a good copy."
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)
