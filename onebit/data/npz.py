"""Any ``.npz`` file holding ``x`` and ``y`` (and optionally ``x_test`` and ``y_test``) arrays.

Inputs: integer arrays whose values all lie in 0..255 are pixels (stored as uint8, fed as
``x / 255``, as MNIST-style data is), whatever their integer dtype; other numbers are used as
they are (float32). NaN and infinite values are refused.

Held-out splits: without ``x_test``, the last tenth of the file is the test split, and the
validation split is the end of what remains. A file whose examples are grouped by class (sorted
by label, as many are) would then get held-out splits of one class, so for such a file the
examples are first put in a fixed, class-stratified shuffled order (:func:`stratified_order`):
every split then holds every class in its proportion. :func:`held_out_rows` says which rows of a
file the test split is, so ``onebit run`` can score exactly those.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import torch

from onebit.data.datasets import Split
from onebit.errors import OnebitError

_NPZ_TEST_FRACTION = 10  # hold out the last 1/10 as test when an npz has no test arrays

log = logging.getLogger(__name__)


def grouped_by_class(y: np.ndarray) -> bool:
    """Whether the labels come in a few long runs (sorted or grouped by class), where a split
    by position would hold out whole classes: at most two runs per class."""
    y = np.asarray(y).reshape(-1)
    if len(y) < 2:
        return False
    changes = int(np.count_nonzero(y[1:] != y[:-1]))
    classes = len(np.unique(y))
    return classes > 1 and changes < 2 * classes


def stratified_order(y: np.ndarray, seed: int = 0) -> np.ndarray:
    """A fixed shuffled order of the rows in which every class is spread evenly: rows sorted by
    their rank within their class (after a seeded shuffle) over the class's size, so any run of
    consecutive rows, the last tenth included, holds each class in its proportion."""
    y = np.asarray(y).reshape(-1)
    n = len(y)
    perm = np.random.default_rng(seed).permutation(n)
    _, inv, counts = np.unique(y[perm], return_inverse=True, return_counts=True)
    by_class = np.argsort(inv, kind="stable")
    starts = np.cumsum(counts) - counts
    rank = np.empty(n, dtype=np.int64)
    rank[by_class] = np.arange(n) - np.repeat(starts, counts)
    key = (rank + 0.5) / counts[inv]
    return perm[np.argsort(key, kind="stable")]


def split_order(y: np.ndarray) -> np.ndarray | None:
    """The order in which a split cut from the end of ``y``'s rows is representative: None
    (keep the file's order) unless the rows are grouped by class."""
    return stratified_order(y) if grouped_by_class(y) else None


def held_out_rows(y: np.ndarray) -> np.ndarray:
    """The rows of an npz file without ``x_test`` that the loader holds out as its test split
    (empty when the file is too small to hold any out)."""
    y = np.asarray(y).reshape(-1)
    n_test = len(y) // _NPZ_TEST_FRACTION
    order = split_order(y)
    rows = np.arange(len(y)) if order is None else order
    return np.sort(rows[len(y) - n_test :]) if n_test else rows[:0]


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


def _pixels(x: np.ndarray) -> bool:
    return bool(np.issubdtype(x.dtype, np.integer) and x.size and x.min() >= 0 and x.max() <= 255)


def _npz_inputs(x: np.ndarray, key: str, path: Path, pixels: bool) -> torch.Tensor:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim not in (2, 4):
        raise OnebitError(
            f"{path}: {key} has shape {x.shape}; use (N, F), (N, H, W) or (N, C, H, W)."
        )
    if 0 in x.shape:
        raise OnebitError(f"{path}: {key} has shape {x.shape}, which holds no values.")
    numeric = np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
    if not numeric and x.dtype != np.bool_:
        raise OnebitError(
            f"{path}: {key} has dtype {x.dtype}; store numbers (integer pixels or floats)."
        )
    if pixels:
        x = x.astype(np.uint8, copy=False)  # pixels, whatever their integer type: fed as x / 255
    elif np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(x)
        if bad.any():
            first = int(np.argwhere(bad)[0][0])
            raise OnebitError(
                f"{path}: {key} holds {int(bad.sum())} NaN or infinite values (the first in "
                f"example {first}); give finite numbers."
            )
    if x.dtype != np.uint8:
        with np.errstate(over="ignore"):  # float64 beyond float32's range: refused just below
            x = x.astype(np.float32)
        if not np.isfinite(x).all():  # float64 values beyond float32's range
            raise OnebitError(
                f"{path}: {key} holds values beyond float32's range; scale the inputs down."
            )
    return torch.from_numpy(np.ascontiguousarray(x))


def _load_npz(path: Path) -> tuple[Split, Split]:
    if not path.is_file():
        raise OnebitError(f"{path} is not a file; pass the path of an existing .npz file.")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OnebitError(
            f"Could not read {path} as .npz ({why}); save it with numpy.savez."
        ) from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise OnebitError(
            f"{path} lacks the array(s) {', '.join(missing)}; save inputs as x and labels as y."
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise OnebitError(f"{path} has only one of x_test and y_test; save both or neither.")
    pairs = [("x", "y")] + ([("x_test", "y_test")] if "x_test" in arrays else [])
    # integer pixels only if every input array is: the splits must be fed alike
    pixels = all(_pixels(arrays[kx]) for kx, _ in pairs)
    splits = []
    for kx, ky in pairs:
        y = _npz_labels(arrays[ky], ky, path)
        x = arrays[kx]
        if x.ndim == 0 or len(x) != len(y):
            raise OnebitError(
                f"{path}: {kx} has {len(x) if x.ndim else 0} examples but {ky} has {len(y)}; "
                "give every example exactly one label."
            )
        if len(y) == 0:
            raise OnebitError(f"{path}: {kx} holds no examples; give at least one.")
        splits.append(Split(_npz_inputs(x, kx, path, pixels), torch.from_numpy(y)))
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
        order = split_order(full.y.numpy())
        if order is not None:
            log.warning(
                "%s holds its examples grouped by class; its test and validation splits are "
                "drawn from a fixed class-stratified shuffle, not from its end",
                path,
            )
            idx = torch.from_numpy(order)
            full = Split(full.x[idx], full.y[idx])
        cut = len(full) - n_test
        train = Split(full.x[:cut], full.y[:cut])
        test = Split(full.x[cut:], full.y[cut:])
        return train, test
    order = split_order(train.y.numpy())  # the validation split comes from the end of train
    if order is not None:
        log.warning(
            "%s holds its training examples grouped by class; the validation split is drawn "
            "from a fixed class-stratified shuffle, not from their end",
            path,
        )
        idx = torch.from_numpy(order)
        train = Split(train.x[idx], train.y[idx])
    return train, test
