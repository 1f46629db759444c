"""Any ``.npz`` file holding ``x`` and ``y`` (and optionally ``x_test`` and ``y_test``) arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from onebit.data.datasets import Split
from onebit.errors import OnebitError

_NPZ_TEST_FRACTION = 10  # hold out the last 1/10 as test when an npz has no test arrays


def _npz_labels(y: np.ndarray, key: str, path: Path) -> np.ndarray:
    if y.ndim != 1:
        raise OnebitError(f"{path}: {key} has shape {y.shape}; store labels as a 1-D array.")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise OnebitError(
                f"{path}: {key} holds values that are not whole numbers; store integer labels."
            )
    elif not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise OnebitError(f"{path}: {key} has dtype {y.dtype}; store integer labels.")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise OnebitError(f"{path}: {key} has negative labels; number classes from 0.")
    return y


def _npz_inputs(x: np.ndarray, key: str, path: Path) -> torch.Tensor:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim not in (2, 4):
        raise OnebitError(
            f"{path}: {key} has shape {x.shape}; use (N, F), (N, H, W) or (N, C, H, W)."
        )
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x))


def _load_npz(path: Path) -> tuple[Split, Split]:
    if not path.is_file():
        raise OnebitError(f"{path} is not a file; pass the path of an existing .npz file.")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise OnebitError(
            f"Could not read {path} as .npz ({exc}); save it with numpy.savez."
        ) from exc
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise OnebitError(
            f"{path} lacks the array(s) {', '.join(missing)}; save inputs as x and labels as y."
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise OnebitError(f"{path} has only one of x_test and y_test; save both or neither.")
    pairs = [("x", "y")] + ([("x_test", "y_test")] if "x_test" in arrays else [])
    splits = []
    for kx, ky in pairs:
        y = _npz_labels(arrays[ky], ky, path)
        x = arrays[kx]
        if x.ndim == 0 or len(x) != len(y):
            raise OnebitError(
                f"{path}: {kx} has {len(x) if x.ndim else 0} examples but {ky} has {len(y)}; "
                "give every example exactly one label."
            )
        splits.append(Split(_npz_inputs(x, kx, path), torch.from_numpy(y)))
    if len(splits) == 2:
        train, test = splits
        if train.x.shape[1:] != test.x.shape[1:]:
            raise OnebitError(
                f"{path}: x has examples of shape {tuple(train.x.shape[1:])} but x_test of "
                f"{tuple(test.x.shape[1:])}; give both the same shape."
            )
    else:
        full = splits[0]
        n_test = len(full) // _NPZ_TEST_FRACTION
        if n_test == 0:
            raise OnebitError(
                f"{path} holds {len(full)} examples, too few to hold out 10% as test; "
                "add x_test and y_test or more examples."
            )
        cut = len(full) - n_test
        train = Split(full.x[:cut], full.y[:cut])
        test = Split(full.x[cut:], full.y[cut:])
    return train, test
