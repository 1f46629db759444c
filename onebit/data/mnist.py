"""MNIST and Fashion-MNIST: the four IDX files (gzipped or not) read into splits with
:func:`onebit.idx.read_idx`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from onebit.data.datasets import Split
from onebit.errors import OnebitError
from onebit.idx import read_idx  # numpy-only, shared with onebit.runtime

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _idx_present(folder: Path, stem: str) -> bool:
    return (folder / stem).is_file() or (folder / f"{stem}.gz").is_file()


def _load_idx_dataset(name: str, folder: Path) -> tuple[Split, Split]:
    arrays = {key: read_idx(folder / f"{stem}.gz") for key, stem in _IDX_FILES.items()}
    splits = []
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise OnebitError(
                f"The {name} {part} files in {folder} hold images of shape {images.shape} and "
                f"labels of shape {labels.shape}; replace them with the original files."
            )
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise OnebitError(
                f"The {name} {part} labels in {folder} hold classes outside 0..9; replace the "
                "files with the original ones."
            )
        x = torch.from_numpy(images.astype(np.uint8, copy=False)).unsqueeze(1)
        splits.append(Split(x, torch.from_numpy(labels.astype(np.int64))))
    return splits[0], splits[1]
