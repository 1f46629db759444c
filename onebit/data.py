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
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from onebit.errors import OnebitError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10", "npz", "linux-kernel", "text")

TEXT_DATASETS: tuple[str, ...] = ("linux-kernel", "text")
"""Character-level text: inputs are ``(N, T)`` token ids, targets the same shifted by one."""

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "cifar10": (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
}

# Published per-channel statistics of the training sets (of x / 255).
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

# Folder names looked for inside each candidate root, in order of preference.
_FOLDERS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist",),
    "fashion-mnist": ("fashion-mnist",),
    "cifar10": ("cifar-10-batches-bin", "cifar10-jpeg"),
    "linux-kernel": ("linux-kernel",),
}

# System-wide folders searched last (Debian's dataset-* packages install under the first).
SYSTEM_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch.bin"
_CIFAR_RECORD = 1 + 3 * 32 * 32

_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
_CACHE_VERSION = "onebit-image-folder-v2"

_NPZ_TEST_FRACTION = 10  # hold out the last 1/10 as test when an npz has no test arrays

_TEXT_FILES = ("input.txt.gz", "input.txt")  # a text corpus folder holds one of these
_TEXT_CUTS = (0.8, 0.9)  # train / validation / test = 80 / 10 / 10 % of the text, by position


# --------------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------------


@dataclass
class Split:
    """One split of a dataset, held in memory.

    Attributes:
        x: Inputs, ``(N, C, H, W)`` uint8 for images, float32 (``(N, C, H, W)`` or ``(N, F)``)
            for generic float data, or int64 token ids ``(N, T)`` for text.
        y: Integer class labels, ``(N,)`` int64; for text the next-token targets ``(N, T)``.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise OnebitError(
                f"A split has {self.x.shape[0]} inputs but {self.y.shape[0]} labels; "
                "give every input exactly one label."
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class Dataset:
    """A dataset with train/validation/test splits and what is needed to feed it to a model.

    Attributes:
        name: One of :data:`DATASETS`.
        train: Training split.
        val: Validation split (may be empty).
        test: Test split.
        num_classes: Number of classes.
        input_shape: Shape of one example, ``(C, H, W)`` or ``(F,)``.
        mean: Per-channel (or per-feature for flat data) mean used to normalize ``x / 255`` for
            uint8 data, or ``x`` for float data.
        std: Matching standard deviations.
        augment: Whether training should use random crop (pad 4) and horizontal flips.
        classes: Class names when known, else empty.
        source: Where and in which format the data was read, for records and logs.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False
    classes: tuple[str, ...] = ()
    source: str = ""


# --------------------------------------------------------------------------------------------------
# Finding data
# --------------------------------------------------------------------------------------------------


def user_cache_dir() -> Path:
    """Return onebit's per-user cache folder, ``$XDG_CACHE_HOME/onebit`` (``~/.cache/onebit``)."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "onebit"


def search_paths(root: PathLike | None = None) -> list[Path]:
    """Return the candidate data roots, in the order they are searched.

    Args:
        root: An explicit root, searched first when given.

    Returns:
        Explicit ``root``, then ``$ONEBIT_DATA``, ``./data``, ``$XDG_CACHE_HOME/onebit/data`` and
        the system folders of :data:`SYSTEM_DATA_DIRS`.
    """
    paths: list[Path] = []
    if root is not None:
        paths.append(Path(root).expanduser())
    env = os.environ.get("ONEBIT_DATA")
    if env:
        paths.append(Path(env).expanduser())
    paths.append(Path.cwd() / "data")
    paths.append(user_cache_dir() / "data")
    paths.extend(SYSTEM_DATA_DIRS)
    return paths


def _idx_present(folder: Path, stem: str) -> bool:
    return (folder / stem).is_file() or (folder / f"{stem}.gz").is_file()


def _is_dataset_dir(name: str, folder: Path) -> bool:
    if not folder.is_dir():
        return False
    if name in ("mnist", "fashion-mnist"):
        return _idx_present(folder, _IDX_FILES["train_images"])
    if name == "cifar10":
        return _is_cifar_binary_dir(folder) or _is_image_folder(folder)
    if name == "linux-kernel":
        return any((folder / f).is_file() for f in _TEXT_FILES)
    return False


def _is_cifar_binary_dir(folder: Path) -> bool:
    return (folder / _CIFAR_TRAIN_FILES[0]).is_file()


def _is_image_folder(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "test").is_dir()


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise OnebitError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")


def find_root(name: str, root: PathLike | None = None) -> Path:
    """Find the folder that holds the files of dataset ``name``.

    Each root of :func:`search_paths` is searched in turn; inside it the dataset's own folder
    (``mnist``, ``fashion-mnist``, ``cifar-10-batches-bin`` then ``cifar10-jpeg``) is looked for,
    and a root that itself directly holds the files counts too.

    Args:
        name: A dataset name other than ``"npz"``.
        root: An explicit root, searched first.

    Returns:
        The folder holding the dataset's files.

    Raises:
        OnebitError: When the name is unknown or the data is nowhere to be found.
    """
    _check_name(name)
    if name in ("npz", "text"):
        raise OnebitError(
            f"The {name} dataset has no standard location; pass the path of the file."
        )
    looked: list[str] = []
    for base in search_paths(root):
        for folder in (*(base / sub for sub in _FOLDERS[name]), base):
            looked.append(str(folder))
            if _is_dataset_dir(name, folder):
                if root is not None and base != Path(root).expanduser():
                    logger.warning("%s is not in %s; using %s instead", name, root, folder)
                logger.debug("found %s in %s", name, folder)
                return folder
    fix = f"run `onebit data download {name}`"
    if name == "fashion-mnist":
        fix += " or `apt-get install dataset-fashion-mnist`"
    if name == "linux-kernel":
        fix = (
            f"put the corpus there as linux-kernel/{_TEXT_FILES[0]} (the kernel/ and mm/ C "
            "sources of a Linux tree, concatenated)"
        )
    raise OnebitError(
        f"Dataset {name!r} was not found in any of {', '.join(looked)}; pass --data-root or set "
        f"ONEBIT_DATA to the folder that holds it, or {fix}."
    )


# --------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------


from onebit.idx import read_idx  # noqa: E402  (numpy-only, shared with onebit.runtime)


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


# --------------------------------------------------------------------------------------------------
# Class-folder images
# --------------------------------------------------------------------------------------------------


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        except OSError as exc:
            logger.warning("could not write cache %s (%s); continuing without it", cache_file, exc)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(labels)
    return (
        Split(xt[:n_train], yt[:n_train]),
        Split(xt[n_train:], yt[n_train:]),
        classes,
    )


# --------------------------------------------------------------------------------------------------
# Character-level text
# --------------------------------------------------------------------------------------------------


def read_text(path: PathLike) -> str:
    """Read a UTF-8 text file, gunzipping it when its name ends in ``.gz``.

    Raises:
        OnebitError: When the file is missing, unreadable or not UTF-8.
    """
    p = Path(path)
    if not p.is_file():
        raise OnebitError(f"{p} is not a file; pass the path of an existing text file.")
    try:
        if p.suffix == ".gz":
            with gzip.open(p, "rb") as fh:
                return fh.read().decode("utf-8")
        return p.read_bytes().decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise OnebitError(f"Could not read {p} as UTF-8 text ({exc}); pass a text file.") from exc


def char_dataset(text: str, seq_len: int = 100, *, name: str = "text", source: str = "") -> Dataset:
    """Cut a text into a character-level language-modelling dataset.

    The vocabulary is the sorted set of the text's characters (token id = rank, kept in
    ``Dataset.classes``). The text is split by position into train / validation / test = the first
    80 %, the next 10 % and the last 10 % (LAB's split), and each part into consecutive,
    non-overlapping sequences: with ``t`` the part's token ids, example ``k`` is
    ``x_k = t[kT : kT + T]`` and its targets ``y_k = t[kT + 1 : kT + T + 1]`` (the next
    character at every position; ``T = seq_len``). A part's last ``< T + 1`` characters are
    dropped. Every sequence is an independent example (a model starts it from a zero state).

    Args:
        text: The corpus.
        seq_len: ``T``, the sequence length.
        name: The dataset's name.
        source: Where the text came from, for records and logs.

    Returns:
        The dataset: ``x`` and ``y`` int64 ``(N, T)``, ``num_classes`` the vocabulary size,
        ``input_shape = (T,)`` (``mean``/``std`` are 0/1 and unused: token ids are not normalized).

    Raises:
        OnebitError: When ``seq_len < 1`` or a split would hold no sequence.
    """
    if seq_len < 1:
        raise OnebitError(f"seq_len is {seq_len}; pass a positive sequence length.")
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    vocab, ids_np = np.unique(codes, return_inverse=True)
    ids = torch.from_numpy(ids_np.astype(np.int64).reshape(-1))
    n = len(ids)
    cuts = [0, *(int(n * c) for c in _TEXT_CUTS), n]
    splits = []
    for lo, hi in itertools.pairwise(cuts):
        count = (hi - lo - 1) // seq_len
        if count < 1:
            raise OnebitError(
                f"{source or 'The text'} holds {n} characters, too few for 80/10/10 splits of "
                f"sequences of {seq_len}; use a longer text or a shorter seq_len."
            )
        part = ids[lo:hi]
        x = part[: count * seq_len].view(count, seq_len)  # views: x and y share the text
        y = part[1 : count * seq_len + 1].view(count, seq_len)
        splits.append(Split(x, y))
    train, val, test = splits
    return Dataset(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=len(vocab),
        input_shape=(seq_len,),
        mean=(0.0,),
        std=(1.0,),
        classes=tuple(chr(c) for c in vocab),
        source=source,
    )


def unnormalized(data: Dataset) -> Dataset:
    """The same dataset fed as ``x / 255`` in [0, 1] (mean 0, std 1 per channel) instead of
    standardized with its per-channel statistics; text token ids are unaffected either way."""
    return replace(data, mean=(0.0,) * len(data.mean), std=(1.0,) * len(data.std))


def subsample(data: Dataset, max_train: int | None = None, max_val: int | None = None) -> Dataset:
    """Keep at most ``max_train`` training and ``max_val`` validation examples (None: all).

    The kept examples are evenly spaced over the split (indices ``floor(k n / m)``, ``k < m``), so a
    subset of a text spans all of it rather than its beginning. The test split is never cut.

    Raises:
        OnebitError: When a limit is below 1.
    """

    def cut(split: Split, m: int | None, what: str) -> Split:
        if m is None or m >= len(split):
            return split
        if m < 1:
            raise OnebitError(f"data.{what} is {m}; pass a positive number of examples or none.")
        idx = torch.arange(m) * len(split) // m
        return Split(split.x[idx], split.y[idx])

    data.train = cut(data.train, max_train, "max_train")
    data.val = cut(data.val, max_val, "max_val")
    return data


# --------------------------------------------------------------------------------------------------
# Dataset assembly
# --------------------------------------------------------------------------------------------------


def _split_off_val(train: Split, val_size: int) -> tuple[Split, Split]:
    if val_size < 0:
        raise OnebitError(f"val_size is {val_size}; pass 0 or a positive number of examples.")
    n = len(train)
    if val_size >= n:
        raise OnebitError(
            f"val_size={val_size} leaves no training examples out of {n}; pass a smaller val_size."
        )
    cut = n - val_size
    return Split(train.x[:cut], train.y[:cut]), Split(train.x[cut:], train.y[cut:])


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
        x = torch.from_numpy(images.astype(np.uint8, copy=False)).unsqueeze(1)
        splits.append(Split(x, torch.from_numpy(labels.astype(np.int64))))
    return splits[0], splits[1]


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


def _stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (dim 1) mean and std of ``x / 255`` (uint8) or ``x``; zero std becomes 1."""
    dims = [0, *range(2, x.dim())]
    xf = x.to(torch.float64)
    if x.dtype == torch.uint8:
        xf = xf / 255.0
    mean = xf.mean(dim=dims)
    std = xf.std(dim=dims, correction=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())


def load_dataset(
    name: str,
    root: PathLike | None = None,
    *,
    val_size: int = 10000,
    path: PathLike | None = None,
    cache_dir: PathLike | None = None,
    progress: bool = False,
    seq_len: int = 100,
) -> Dataset:
    """Load a dataset into memory with train, validation and test splits.

    The validation split is the last ``val_size`` examples of the training file (deterministic;
    the classic 50k/10k split for MNIST). For a class-folder image copy the examples are in the
    interleaved order of :func:`load_image_folder`, so the validation split covers every class.
    ``val_size=0`` gives an empty validation split.

    Args:
        name: One of :data:`DATASETS`.
        root: A data root to search first (see :func:`find_root`), or for ``"npz"`` the file.
        val_size: Number of training examples held out for validation.
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
    classes: tuple[str, ...] = CLASS_NAMES.get(name, ())
    augment = False
    if name == "npz":
        src = path if path is not None else root
        if src is None:
            raise OnebitError("The npz dataset needs a file; pass the path of the .npz file.")
        npz_path = Path(src).expanduser()
        train_full, test = _load_npz(npz_path)
        source = f"npz file {npz_path}"
    else:
        folder = find_root(name, root)
        if name == "cifar10":
            augment = True
            if _is_cifar_binary_dir(folder):
                train_full, test, names = load_cifar10_binary(folder)
                source = f"CIFAR-10 binary release in {folder}"
            else:
                train_full, test, names = load_image_folder(
                    folder, cache_dir=cache_dir, progress=progress
                )
                source = f"class-folder images in {folder}"
            classes = tuple(names)
        else:
            train_full, test = _load_idx_dataset(name, folder)
            source = f"IDX files in {folder}"
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
        augment=augment,
        classes=classes,
        source=source,
    )


# --------------------------------------------------------------------------------------------------
# Batching and augmentation
# --------------------------------------------------------------------------------------------------


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Return the number of (global) batches :func:`batches` yields for ``n`` examples."""
    if batch_size <= 0:
        raise OnebitError(f"batch_size is {batch_size}; pass a positive batch size.")
    return n // batch_size if drop_last else -(-n // batch_size)


def _crop_flip_params(
    n: int, pad: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return offsets[0], offsets[1], flips


def _apply_crop_flip(
    x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad)) if pad else x
    rows = dy[:, None] + torch.arange(h)  # (N, H)
    cols = torch.arange(w).expand(n, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]  # (N, W)
    # one flat index per output pixel into the padded image, shared by all channels
    flat = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(n, 1, h * w)
    out = padded.reshape(n, c, -1).gather(2, flat.expand(n, c, h * w))
    return out.view(n, c, h, w)


def random_crop_flip(
    x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Randomly crop and horizontally flip every image of a batch (CIFAR-style augmentation).

    Each image is zero-padded by ``pad`` on every side, cropped back to its size at a random
    offset, and mirrored left-right with probability 0.5. Vectorized over the batch.

    Args:
        x: Images ``(N, C, H, W)`` of any dtype.
        pad: Padding in pixels.
        generator: Random generator, for reproducible results.

    Returns:
        Augmented images, same shape and dtype as ``x``.
    """
    if x.dim() != 4:
        raise OnebitError(
            f"random_crop_flip needs images of shape (N, C, H, W), got {tuple(x.shape)}; "
            "turn augmentation off for flat data."
        )
    if pad < 0:
        raise OnebitError(f"pad is {pad}; pass 0 or a positive number of pixels.")
    dy, dx, flip = _crop_flip_params(x.shape[0], pad, generator)
    return _apply_crop_flip(x, pad, dy, dx, flip)


def batches(
    split: Split,
    batch_size: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: bool = False,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    channels_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate over a split in normalized float32 batches.

    Inputs become ``((x / 255 if uint8 else x) - mean) / std`` per channel; integer inputs other
    than uint8 are token ids and come out unchanged (int64; ``mean``/``std`` unused). For data-parallel
    training every global batch of ``batch_size`` examples is cut into ``world_size`` contiguous
    shards and this rank gets shard ``rank``; all ranks must pass generators seeded alike so they
    agree on the order (and the augmentation, which is drawn for the whole global batch). A last
    partial global batch is cut as evenly as possible, so its shards may differ in size by one.

    Args:
        split: The data.
        batch_size: Global batch size (over all ranks).
        mean: Per-channel mean (one value, or one per channel / feature).
        std: Per-channel standard deviation.
        shuffle: Visit examples in a random permutation drawn from ``generator``.
        generator: Random generator for the order and augmentation.
        augment: Apply :func:`random_crop_flip` (pad 4) to image batches.
        rank: This process's rank.
        world_size: Number of data-parallel processes.
        drop_last: Drop the last global batch when it is smaller than ``batch_size``.
        channels_last: Return 4-D inputs in channels-last memory format.

    Yields:
        ``(x, y)`` with ``x`` float32 (int64 for token ids) and ``y`` int64.

    Raises:
        OnebitError: On a bad batch size, rank or world size, or mean/std of the wrong length.
    """
    n_batches = num_batches(len(split), batch_size, drop_last)
    if world_size < 1 or not 0 <= rank < world_size:
        raise OnebitError(
            f"rank={rank} and world_size={world_size} are inconsistent; "
            "pass world_size >= 1 and 0 <= rank < world_size."
        )
    if batch_size % world_size:
        raise OnebitError(
            f"batch_size={batch_size} is not divisible by world_size={world_size}; "
            "pass a batch size that is a multiple of the number of processes."
        )
    if shuffle and world_size > 1 and generator is None:
        raise OnebitError(
            "Shuffling across several processes needs a generator; pass one seeded the same "
            "on every rank."
        )
    x_all, y_all = split.x, split.y
    tokens = not x_all.dtype.is_floating_point and x_all.dtype != torch.uint8  # text: token ids
    channels = x_all.shape[1] if x_all.dim() > 1 and not tokens else 1
    shape = [1, -1] + [1] * max(0, x_all.dim() - 2)
    mean_t = torch.as_tensor(tuple(mean), dtype=torch.float32)
    std_t = torch.as_tensor(tuple(std), dtype=torch.float32)
    for what, t in (("mean", mean_t), ("std", std_t)):
        if t.numel() not in (1, channels):
            raise OnebitError(
                f"{what} has {t.numel()} values but the data has {channels} channels; "
                f"pass one {what} per channel."
            )
    if x_all.dtype == torch.uint8:  # fold the /255 into the constants
        mean_t, std_t = mean_t * 255.0, std_t * 255.0
    mean_t, std_t = mean_t.view(shape), std_t.view(shape)
    if augment and x_all.dim() != 4:
        raise OnebitError(
            f"augment needs image data (N, C, H, W) but the data is {tuple(x_all.shape)}; "
            "turn augmentation off."
        )

    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for b in range(n_batches):
        idx = order[b * batch_size : (b + 1) * batch_size]
        size = idx.numel()
        bounds = [size * r // world_size for r in range(world_size + 1)]
        lo, hi = bounds[rank], bounds[rank + 1]
        params = _crop_flip_params(size, 4, generator) if augment else None
        shard = idx[lo:hi]
        x = x_all[shard]
        if params is not None:
            dy, dx, flip = (p[lo:hi] for p in params)
            x = _apply_crop_flip(x, 4, dy, dx, flip)
        if not tokens:
            x = x.to(torch.float32).sub_(mean_t).div_(std_t)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, y_all[shard]


# --------------------------------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------------------------------

_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_CIFAR_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"

# sha256 of the *decompressed* IDX files (robust to a mirror recompressing the .gz).
_IDX_SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
        ),
        "train-labels-idx1-ubyte": (
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
        ),
        "t10k-images-idx3-ubyte": (
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
        ),
        "t10k-labels-idx1-ubyte": (
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
        ),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
        ),
        "train-labels-idx1-ubyte": (
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
        ),
        "t10k-images-idx3-ubyte": (
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
        ),
        "t10k-labels-idx1-ubyte": (
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
        ),
    },
}


def _gz_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with gzip.open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, dest: Path, progress: bool) -> str:
    """Download ``url`` to ``dest`` atomically; return the md5 of what was downloaded."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    md5 = hashlib.md5()
    logger.info("downloading %s to %s", url, dest)
    try:
        with os.fdopen(fd, "wb") as out:
            req = urllib.request.Request(url, headers={"User-Agent": "onebit"})
            with urllib.request.urlopen(req, timeout=60) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(
                    total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress
                ) as bar:
                    for block in iter(lambda: resp.read(1 << 20), b""):
                        out.write(block)
                        md5.update(block)
                        bar.update(len(block))
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OnebitError(
            f"Could not download {url} ({exc}); check the network connection or put the files "
            f"in {dest.parent} by hand."
        ) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return md5.hexdigest()


def _download_idx(name: str, folder: Path, progress: bool) -> None:
    base = _MNIST_URL if name == "mnist" else _FASHION_URL
    for stem, sha in _IDX_SHA256[name].items():
        dest = folder / f"{stem}.gz"
        if dest.is_file() and _gz_sha256(dest) == sha:
            logger.info("%s is already there and intact", dest)
            continue
        _fetch(base + dest.name, dest, progress)
        try:
            got = _gz_sha256(dest)
        except (OSError, EOFError):
            got = "unreadable"
        if got != sha:
            dest.unlink(missing_ok=True)
            raise OnebitError(
                f"The downloaded {dest.name} does not match its known checksum; run the "
                "download again or fetch the file by hand."
            )


def _download_cifar10(root: Path, progress: bool) -> Path:
    folder = root / _FOLDERS["cifar10"][0]
    if all((folder / f).is_file() for f in (*_CIFAR_TRAIN_FILES, _CIFAR_TEST_FILE)):
        logger.info("%s already holds the CIFAR-10 binary release", folder)
        return folder
    archive = root / "cifar-10-binary.tar.gz"
    md5 = _fetch(_CIFAR_URL, archive, progress)
    if md5 != _CIFAR_MD5:
        archive.unlink(missing_ok=True)
        raise OnebitError(
            f"The downloaded {archive.name} does not match its known checksum; run the "
            "download again or fetch the file by hand."
        )
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".cifar-extract-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                tar.extractall(tmp)
        extracted = tmp / folder.name
        if not extracted.is_dir():
            raise OnebitError(
                f"{archive} does not contain {folder.name}/; download the archive again."
            )
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(extracted, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    archive.unlink(missing_ok=True)
    return folder


def download(name: str, root: PathLike | None = None, *, progress: bool = False) -> Path:
    """Download a dataset from its canonical location and verify it.

    MNIST comes from the ossci-datasets mirror of the original files, Fashion-MNIST from Zalando's
    bucket, CIFAR-10 as the binary release from the University of Toronto (extracted). Files are
    written atomically and checked against known checksums. Never called implicitly.

    Args:
        name: ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.
        root: Data root to download into; defaults to ``$XDG_CACHE_HOME/onebit/data``.
        progress: Show a progress bar.

    Returns:
        The folder holding the dataset's files (what :func:`find_root` will find).

    Raises:
        OnebitError: On an unknown name, a network failure or a checksum mismatch.
    """
    _check_name(name)
    if name in ("npz", "text"):
        raise OnebitError(f"The {name} dataset is your own file and cannot be downloaded.")
    if name == "linux-kernel":
        raise OnebitError(
            "The linux-kernel corpus has no download address: concatenate the kernel/ and mm/ C "
            "sources of a Linux source tree (files sorted by path, non-ASCII bytes as '?') into "
            f"<data root>/linux-kernel/{_TEXT_FILES[0]}."
        )
    base = Path(root).expanduser() if root is not None else user_cache_dir() / "data"
    base.mkdir(parents=True, exist_ok=True)
    if name == "cifar10":
        return _download_cifar10(base, progress)
    folder = base / _FOLDERS[name][0]
    _download_idx(name, folder, progress)
    return folder
