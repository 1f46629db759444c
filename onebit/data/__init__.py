"""Datasets for onebit: finding, reading, caching, splitting and batching them.

Supported datasets are MNIST and Fashion-MNIST (IDX files, gzipped or not), CIFAR-10 (the canonical
binary release, or a class-folder JPEG/PNG copy that is decoded once and cached) and any ``.npz``
file holding ``x`` and ``y`` arrays, and character-level text (the ``linux-kernel`` corpus, or any
text file as ``text``) cut into sequences of token ids for language models. Everything is held in
memory as tensors (images as ``uint8``, text as ``int64`` token ids) and turned into batches by
:func:`batches` (images and float data normalized to ``float32``, token ids left as they are),
which also does CIFAR-style augmentation and cuts global batches into per-rank shards for
data-parallel training.

Nothing is ever downloaded implicitly: :func:`download` fetches the canonical files when asked.

The package re-exports the public API of its modules, one concern each:

- :mod:`~onebit.data.datasets`: :class:`Split`, :class:`Dataset`, the dataset names, class names
  and statistics, :func:`subsample`, :func:`unnormalized`;
- :mod:`~onebit.data.find`: where data is looked for (:func:`find_root`, :func:`search_paths`,
  :data:`SYSTEM_DATA_DIRS`, :func:`user_cache_dir`);
- readers, one per format: :mod:`~onebit.data.mnist` (IDX files, read with
  :func:`onebit.idx.read_idx`), :mod:`~onebit.data.cifar` (CIFAR-10 binary release),
  :mod:`~onebit.data.image_folder` (class-folder images, decoded once and cached),
  :mod:`~onebit.data.npz` and :mod:`~onebit.data.text` (character-level text);
- :mod:`~onebit.data.load`: :func:`load_dataset`, which finds and reads a dataset by name;
- :mod:`~onebit.data.batches`: :func:`batches`, :func:`num_batches`, :func:`random_crop_flip`;
- :mod:`~onebit.data.download`: :func:`download`.

:data:`SYSTEM_DATA_DIRS` is read here, on the package, at every search: set
``onebit.data.SYSTEM_DATA_DIRS`` to change the system folders searched.
"""

from __future__ import annotations

from onebit.data.batches import batches, num_batches, random_crop_flip
from onebit.data.cifar import load_cifar10_binary
from onebit.data.datasets import _STATS as _STATS
from onebit.data.datasets import (
    CLASS_NAMES,
    DATASETS,
    TEXT_DATASETS,
    Dataset,
    PathLike,
    Split,
    subsample,
    unnormalized,
)
from onebit.data.download import download
from onebit.data.find import SYSTEM_DATA_DIRS, find_root, search_paths, user_cache_dir
from onebit.data.image_folder import load_image_folder
from onebit.data.load import load_dataset
from onebit.data.text import char_dataset, read_text
from onebit.idx import read_idx

__all__ = [
    "CLASS_NAMES",
    "DATASETS",
    "SYSTEM_DATA_DIRS",
    "TEXT_DATASETS",
    "Dataset",
    "PathLike",
    "Split",
    "batches",
    "char_dataset",
    "download",
    "find_root",
    "load_cifar10_binary",
    "load_dataset",
    "load_image_folder",
    "num_batches",
    "random_crop_flip",
    "read_idx",
    "read_text",
    "search_paths",
    "subsample",
    "unnormalized",
    "user_cache_dir",
]
