"""Loading a dataset by name: finding its files, reading them in their format and assembling
the :class:`~onebit.data.datasets.Dataset` with its validation split and statistics."""

from __future__ import annotations

import logging
from pathlib import Path

from onebit.data.cifar import _is_cifar_binary_dir, load_cifar10_binary
from onebit.data.datasets import (
    _STATS,
    CLASS_NAMES,
    TEXT_DATASETS,
    Dataset,
    PathLike,
    Split,
    _check_name,
    _split_off_val,
    _stats,
)
from onebit.data.find import find_root
from onebit.data.image_folder import load_image_folder
from onebit.data.mnist import _load_idx_dataset
from onebit.data.npz import _load_npz
from onebit.data.text import _TEXT_FILES, char_dataset, read_text
from onebit.errors import OnebitError

logger = logging.getLogger(__name__)


def load_dataset(
    name: str,
    root: PathLike | None = None,
    *,
    val_size: int | None = 10000,
    path: PathLike | None = None,
    cache_dir: PathLike | None = None,
    progress: bool = False,
    seq_len: int = 100,
) -> Dataset:
    """Load a dataset into memory with train, validation and test splits.

    The validation split is the last ``val_size`` examples of the training file (deterministic;
    the classic 50k/10k split for MNIST; for an npz file grouped by class, of a fixed
    class-stratified shuffle of it, see :mod:`onebit.data.npz`). For a class-folder image copy the examples are in the
    interleaved order of :func:`load_image_folder`, so the validation split covers every class.
    ``val_size=0`` gives an empty validation split.

    Args:
        name: One of :data:`DATASETS`.
        root: A data root to search first (see :func:`find_root`), or for ``"npz"`` the file.
        val_size: Number of training examples held out for validation (None: 10,000, and a
            tenth of the training examples for ``"npz"``).
        path: For ``"npz"``: the ``.npz`` file with ``x``, ``y`` and optionally ``x_test``,
            ``y_test`` (without them the last 10% is held out as test before the validation split).
        cache_dir: Cache folder for decoded images (class-folder CIFAR-10 copies).
        progress: Show a progress bar while decoding images.
        seq_len: For text (``"linux-kernel"``, ``"text"`` with ``path`` the text file, ``.gz``
            or plain): the sequence length; text splits 80/10/10 by position (see
            :func:`char_dataset`) and ignores ``val_size``.

    Returns:
        The dataset.

    Raises:
        OnebitError: On an unknown name, missing or malformed files, or a bad ``val_size``.
    """
    _check_name(name)
    if name in TEXT_DATASETS:
        return _load_text(name, root, path, seq_len)
    train_full, test, classes, source = _read_splits(name, root, path, cache_dir, progress)
    if val_size is None:
        val_size = len(train_full) // 10 if name == "npz" else 10000
    train, val = _split_off_val(train_full, val_size)

    if name == "npz":
        mean, std = _stats(train.x)
        labels = [s.y for s in (train_full, test) if len(s)]
        num_classes = int(max(int(t.max()) for t in labels)) + 1
    else:
        mean, std = _STATS[name]
        num_classes = len(classes)
    logger.info(
        "loaded %s from %s: %d train, %d val, %d test",
        name,
        source,
        len(train),
        len(val),
        len(test),
    )
    return Dataset(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        input_shape=tuple(train.x.shape[1:]),
        mean=tuple(mean),
        std=tuple(std),
        augment=name == "cifar10",
        classes=classes,
        source=source,
    )


def _load_text(name: str, root: PathLike | None, path: PathLike | None, seq_len: int) -> Dataset:
    """The text dataset ``name`` (the file ``path`` or ``root`` for ``"text"``, found by
    :func:`find_root` for ``"linux-kernel"``) cut by :func:`char_dataset`."""
    if name == "text":
        src = path if path is not None else root
        if src is None:
            raise OnebitError("The text dataset needs a file; pass the path of the text file.")
        file = Path(src).expanduser()
    else:
        folder = find_root(name, root)
        file = next(folder / f for f in _TEXT_FILES if (folder / f).is_file())
    data = char_dataset(read_text(file), seq_len, name=name, source=f"text file {file}")
    logger.info(
        "loaded %s from %s: %d characters, vocabulary %d; %d/%d/%d sequences of %d",
        name,
        data.source,
        (len(data.train) + len(data.val) + len(data.test)) * seq_len,
        data.num_classes,
        len(data.train),
        len(data.val),
        len(data.test),
        seq_len,
    )
    return data


def _read_splits(
    name: str,
    root: PathLike | None,
    path: PathLike | None,
    cache_dir: PathLike | None,
    progress: bool,
) -> tuple[Split, Split, tuple[str, ...], str]:
    """Read the files of the (non-text) dataset ``name`` in their format.

    Returns:
        ``(train, test, classes, source)``: the full training split (before the validation split
        is cut off), the test split, the class names when known, and where and in which format
        the data was read.
    """
    if name == "npz":
        src = path if path is not None else root
        if src is None:
            raise OnebitError("The npz dataset needs a file; pass the path of the .npz file.")
        npz_path = Path(src).expanduser()
        train, test = _load_npz(npz_path)
        return train, test, CLASS_NAMES.get(name, ()), f"npz file {npz_path}"
    folder = find_root(name, root)
    if name != "cifar10":
        train, test = _load_idx_dataset(name, folder)
        return train, test, CLASS_NAMES.get(name, ()), f"IDX files in {folder}"
    if _is_cifar_binary_dir(folder):
        train, test, names = load_cifar10_binary(folder)
        return train, test, tuple(names), f"CIFAR-10 binary release in {folder}"
    train, test, names = load_image_folder(folder, cache_dir=cache_dir, progress=progress)
    return train, test, tuple(names), f"class-folder images in {folder}"
