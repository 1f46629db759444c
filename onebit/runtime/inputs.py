"""Reading the inputs a packed model runs on: IDX, ``.npz`` and image files (numpy, Pillow)."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from onebit.errors import OnebitError
from onebit.idx import read_idx

__all__ = ["Inputs", "load_inputs", "read_inputs"]

Array = npt.NDArray[Any]


@dataclass
class Inputs:
    """Inputs read from files, their labels when every file carries them, and what was read.

    Attributes:
        x: the inputs, one example per row.
        y: the labels, or None.
        parts: one phrase per file saying which arrays (or images) of it were read, and how
            many rows, e.g. ``"x_test/y_test of d.npz (64 rows)"``.
        files: ``(path, kind, rows)`` per file, ``kind`` being the arrays read (``x_test``,
            ``x``, ``idx``, ``images``).
    """

    x: Array
    y: Array | None
    parts: list[str] = field(default_factory=list)
    files: list[tuple[Path, str, int]] = field(default_factory=list)


def _labels(y: Any, n: int, where: str) -> Array:
    y = np.asarray(y)
    if y.ndim == 0 or len(y) != n:  # (N,), or (N, T) labels per position of a sequence
        raise OnebitError(f"{where} has {n} inputs but labels of shape {y.shape}; give one each.")
    if y.dtype.kind == "f" and (not np.isfinite(y).all() or not (y == np.round(y)).all()):
        raise OnebitError(f"{where} has labels that are not whole numbers; store class numbers.")
    if y.dtype.kind not in "biuf":
        raise OnebitError(f"{where} has labels of dtype {y.dtype}; store class numbers.")
    if y.size and y.min() < 0:
        raise OnebitError(f"{where} has negative labels; classes are numbered from 0.")
    return y.astype(np.int64)


def _npz(p: Path) -> tuple[Array, Array | None, str]:
    try:
        with np.load(p, allow_pickle=False) as z:
            kx = "x_test" if "x_test" in z.files else "x" if "x" in z.files else None
            if kx is None:
                raise OnebitError(f"{p} has no array 'x' (or 'x_test'); store the inputs as x.")
            x = z[kx]
            ky = "y_test" if kx == "x_test" else "y"
            y = z[ky] if ky in z.files else None
    except OnebitError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise OnebitError(f"{p} is not a readable .npz file ({why}).") from None
    if x.ndim == 0 or len(x) == 0:
        raise OnebitError(f"{p}: {kx} holds no examples.")
    return x, None if y is None else _labels(y, len(x), f"{p} ({ky})"), kx


def load_inputs(paths: Sequence[str | os.PathLike[str]]) -> Inputs:
    """Inputs (and labels when every file carries them) from IDX, .npz or image files.

    - ``.npz``: ``x_test``/``y_test`` when present (a dataset file), else ``x`` (and ``y``);
    - IDX (``*-idx3-ubyte[.gz]``): images; the matching ``*-labels-idx1-ubyte`` is read when present;
    - images (PNG, JPEG, ...): decoded with Pillow, one example each.

    Every problem (a missing or unreadable file, labels that do not fit, files of different
    example shapes) is one OnebitError sentence.
    """
    if not paths:
        raise OnebitError("give at least one input file (.npz, IDX or images).")
    xs: list[Array] = []
    ys: list[Array | None] = []
    out = Inputs(np.empty(0), None)
    images: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.is_file():
            raise OnebitError(f"input file {p} does not exist.")
        name = p.name.lower()
        if name.endswith(".npz"):
            x, y, kx = _npz(p)
            ky = "y_test" if kx == "x_test" else "y"
            what = f"{kx}/{ky}" if y is not None else kx
            out.parts.append(f"{what} of {p.name}, {len(x)} rows")
            out.files.append((p, kx, len(x)))
        elif "idx" in name:
            x = read_idx(p)
            if x.ndim == 0 or len(x) == 0:
                raise OnebitError(f"{p} holds no examples.")
            lab = p.with_name(p.name.replace("images-idx3", "labels-idx1"))
            y = _labels(read_idx(lab), len(x), str(lab)) if lab != p and lab.is_file() else None
            out.parts.append(f"{p.name}, {len(x)} rows")
            out.files.append((p, "idx", len(x)))
        else:
            images.append(p)
            continue
        xs.append(x)
        ys.append(y)
    if images:
        xs.append(_images(images))
        ys.append(None)
        out.parts.append(f"{len(images)} image file{'s' if len(images) > 1 else ''}")
        out.files.extend((p, "images", 1) for p in images)
    shapes = {tuple(a.shape[1:]) for a in xs}
    if len(shapes) > 1:
        raise OnebitError(
            f"the input files hold examples of different shapes ({', '.join(map(str, shapes))}); "
            "give files of one shape."
        )
    out.x = np.concatenate(xs) if len(xs) > 1 else xs[0]
    out.y = None if any(v is None for v in ys) else np.concatenate(ys)  # type: ignore[arg-type]
    return out


def _images(paths: list[Path]) -> Array:
    try:
        from PIL import Image
    except ImportError:
        raise OnebitError("reading image files needs Pillow: pip install pillow.") from None
    arrs = []
    for p in paths:
        try:
            with Image.open(p) as im:
                a = np.asarray(im)
        except Exception:  # Pillow raises many types for a file it cannot decode
            raise OnebitError(f"{p} is not an image, an IDX or an .npz file.") from None
        arrs.append(a.transpose(2, 0, 1) if a.ndim == 3 else a)
    if len({a.shape for a in arrs}) > 1:
        raise OnebitError(
            "the image files have different sizes or channel counts; give images of one size."
        )
    return np.stack(arrs)


def read_inputs(paths: Sequence[str | os.PathLike[str]]) -> tuple[Array, Array | None]:
    """``(x, y)`` of :func:`load_inputs` (``y`` None unless every file carries labels)."""
    got = load_inputs(paths)
    return got.x, got.y
