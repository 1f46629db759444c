"""Reading the inputs a packed model runs on: IDX, ``.npz`` and image files (numpy, Pillow)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from onebit.errors import OnebitError
from onebit.idx import read_idx

__all__ = ["read_inputs"]

Array = npt.NDArray[Any]


def read_inputs(paths: Sequence[str | os.PathLike[str]]) -> tuple[Array, Array | None]:
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
