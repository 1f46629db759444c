"""CIFAR-10's canonical binary release (``data_batch_1.bin`` ... ``test_batch.bin``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from onebit.data.datasets import CLASS_NAMES, PathLike, Split
from onebit.errors import OnebitError

_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch.bin"
_CIFAR_RECORD = 1 + 3 * 32 * 32


def _is_cifar_binary_dir(folder: Path) -> bool:
    return (folder / _CIFAR_TRAIN_FILES[0]).is_file()


def load_cifar10_binary(root: PathLike) -> tuple[Split, Split, list[str]]:
    """Read the canonical CIFAR-10 binary release.

    Args:
        root: Folder holding ``data_batch_1.bin`` ... ``data_batch_5.bin`` and ``test_batch.bin``
            (each record: 1 label byte then 3072 bytes of R, G, B planes).

    Returns:
        ``(train, test, classes)`` with uint8 images ``(N, 3, 32, 32)``.

    Raises:
        OnebitError: When a file is missing or has a size that is not a whole number of records.
    """
    root = Path(root)

    def read(names: Sequence[str]) -> Split:
        parts = []
        for name in names:
            path = root / name
            if not path.is_file():
                raise OnebitError(
                    f"CIFAR-10 file {path} is missing; download the binary release again."
                )
            raw = np.fromfile(path, dtype=np.uint8)
            if raw.size == 0 or raw.size % _CIFAR_RECORD:
                raise OnebitError(
                    f"{path} is not a whole number of {_CIFAR_RECORD}-byte CIFAR-10 records; "
                    "download the binary release again."
                )
            parts.append(raw.reshape(-1, _CIFAR_RECORD))
        records = np.concatenate(parts)
        x = np.ascontiguousarray(records[:, 1:]).reshape(-1, 3, 32, 32)
        y = records[:, 0].astype(np.int64)
        if y.max() >= 10:
            raise OnebitError(
                f"A CIFAR-10 file in {root} has a label above 9; download the binary release again."
            )
        return Split(torch.from_numpy(x), torch.from_numpy(y))

    train = read(_CIFAR_TRAIN_FILES)
    test = read((_CIFAR_TEST_FILE,))
    classes = list(CLASS_NAMES["cifar10"])
    meta = root / "batches.meta.txt"
    if meta.is_file():
        names = [line.strip() for line in meta.read_text().splitlines() if line.strip()]
        if len(names) == 10:
            classes = names
    return train, test, classes
