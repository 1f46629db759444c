"""Class-folder image datasets (``root/{train,test}/<class>/*.jpg``, PNG, ...): listed, decoded
once on a thread pool and cached as an ``.npz`` keyed by a fingerprint of the files."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from onebit.data.datasets import PathLike, Split
from onebit.data.find import user_cache_dir
from onebit.errors import OnebitError
from onebit.fileio import atomic_write

logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
_CACHE_VERSION = "onebit-image-folder-v2"


def _list_image_folder(root: Path) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """List ``root/{train,test}/<class>/<image>`` as relative paths with labels."""
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise OnebitError(
                f"{root} has no {split}/ folder; lay the images out as "
                f"{root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg."
            )
    classes = sorted(
        e.name for e in os.scandir(root / "train") if e.is_dir() and not e.name.startswith(".")
    )
    if not classes:
        raise OnebitError(
            f"{root / 'train'} has no class folders; put each class's images in train/<class>/."
        )
    index = {c: i for i, c in enumerate(classes)}
    files: dict[str, list[tuple[str, int]]] = {}
    for split in ("train", "test"):
        entries: list[tuple[int, int, str]] = []
        for cls in sorted(
            e.name for e in os.scandir(root / split) if e.is_dir() and not e.name.startswith(".")
        ):
            if cls not in index:
                raise OnebitError(
                    f"{root / split / cls} is a class that {root / 'train'} does not have; "
                    "give train/ and test/ the same class folders."
                )
            names = sorted(
                e.name
                for e in os.scandir(root / split / cls)
                if e.is_file()
                and not e.name.startswith(".")
                and os.path.splitext(e.name)[1].lower() in _IMAGE_SUFFIXES
            )
            entries.extend((pos, index[cls], f"{split}/{cls}/{n}") for pos, n in enumerate(names))
        if not entries:
            raise OnebitError(
                f"{root / split} holds no .jpg/.jpeg/.png images; "
                f"add images under {split}/<class>/."
            )
        # Interleave the classes (the first file of each class, then the second, ...) so that any
        # tail of the list, such as the validation split, holds every class in proportion.
        entries.sort()
        files[split] = [(rel, label) for _, label, rel in entries]
    return classes, files


def _fingerprint(root: Path, relpaths: Sequence[str]) -> str:
    """Sha256 of the relative path, size and mtime_ns of every file."""
    h = hashlib.sha256(_CACHE_VERSION.encode())
    for rel in relpaths:
        st = os.stat(root / rel)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _decode_into(out: np.ndarray, root: Path, relpaths: Sequence[str], start: int) -> int:
    """Decode images ``relpaths`` into ``out[start:]`` as (H, W, 3) uint8; return how many."""
    height, width = out.shape[1:3]
    for i, rel in enumerate(relpaths):
        path = root / rel
        try:
            with Image.open(path) as im:
                rgb = im if im.mode == "RGB" else im.convert("RGB")
                arr = np.asarray(rgb)
        except OSError as exc:
            raise OnebitError(
                f"Could not decode image {path} ({exc}); remove or replace it."
            ) from exc
        if arr.shape != (height, width, 3):
            raise OnebitError(
                f"Image {path} is {arr.shape[1]}x{arr.shape[0]} but the first one is "
                f"{width}x{height}; resize all images to one size."
            )
        out[start + i] = arr
    return len(relpaths)


def _decode_all(root: Path, relpaths: Sequence[str], progress: bool) -> np.ndarray:
    """Decode all images to a (N, 3, H, W) uint8 array, in chunks on a thread pool."""
    with Image.open(root / relpaths[0]) as im:
        width, height = im.size
    hwc = np.empty((len(relpaths), height, width, 3), dtype=np.uint8)
    chunk = 512
    starts = range(0, len(relpaths), chunk)
    workers = max(1, min(os.cpu_count() or 1, len(starts)))
    with (
        tqdm(total=len(relpaths), desc="decoding images", unit="img", disable=not progress) as bar,
        ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        futures = [pool.submit(_decode_into, hwc, root, relpaths[s : s + chunk], s) for s in starts]
        try:
            for fut in futures:
                bar.update(fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))


def _write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to the ``.npz`` file ``path`` atomically, creating its folder.

    Not flushed to disk before the rename: the cache can be decoded again, and an unreadable one
    is ignored.

    Raises:
        OnebitError: When the folder or the file cannot be written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OnebitError(f"cannot create folder {path.parent} ({exc.strerror or exc}).") from None

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(path, write, fsync=False)


def load_image_folder(
    root: PathLike, *, cache_dir: PathLike | None = None, progress: bool = False
) -> tuple[Split, Split, list[str]]:
    """Load a class-folder image dataset, decoding it once and caching the tensors.

    The layout is ``root/train/<class>/*.jpg`` and ``root/test/<class>/*.jpg`` (PNG, BMP and WebP
    too); classes are the sorted folder names of ``train/``. Examples come with the classes
    interleaved (first file of each class in class order, then the second file of each class, ...;
    files sorted by name), so that the last examples, which :func:`load_dataset` holds out for
    validation, cover every class rather than the last ones only. Decoded images are cached as an
    ``.npz`` in ``cache_dir`` under the sha256 fingerprint of every file's relative path, size and
    modification time, so any change to the source invalidates the cache.

    Args:
        root: The dataset folder.
        cache_dir: Cache folder; defaults to ``$XDG_CACHE_HOME/onebit/cache``.
        progress: Show a progress bar while decoding.

    Returns:
        ``(train, test, classes)`` with uint8 images ``(N, 3, H, W)``.

    Raises:
        OnebitError: When the layout is wrong, an image cannot be decoded or sizes differ.
    """
    root = Path(root)
    classes, files = _list_image_folder(root)
    relpaths = [rel for split in ("train", "test") for rel, _ in files[split]]
    labels = np.array([lab for split in ("train", "test") for _, lab in files[split]], np.int64)
    n_train = len(files["train"])
    digest = _fingerprint(root, relpaths)
    cache = Path(cache_dir) if cache_dir is not None else user_cache_dir() / "cache"
    cache_file = cache / f"imagefolder-{digest}.npz"

    x: np.ndarray | None = None
    if cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                if str(z["fingerprint"]) == digest and np.array_equal(z["y"], labels):
                    x = z["x"]
                    classes = [str(c) for c in z["classes"]]
        except (OSError, ValueError, KeyError, EOFError) as exc:
            logger.warning("ignoring unreadable cache %s (%s); decoding again", cache_file, exc)
        if x is not None:
            logger.info("loaded %d cached images of %s from %s", len(x), root, cache_file)
    if x is None:
        logger.info(
            "decoding %d images of %s once and caching them to %s", len(relpaths), root, cache_file
        )
        x = _decode_all(root, relpaths, progress)
        try:
            _write_npz_atomic(
                cache_file,
                {
                    "x": x,
                    "y": labels,
                    "classes": np.array(classes, dtype=str),
                    "fingerprint": np.array(digest),
                },
            )
        except OnebitError as exc:
            logger.warning("could not write the image cache: %s Continuing without it.", exc)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(labels)
    return (
        Split(xt[:n_train], yt[:n_train]),
        Split(xt[n_train:], yt[n_train:]),
        classes,
    )
