"""Finding data on disk: the candidate roots (:func:`search_paths`), the folder each dataset is
looked for in, and :func:`find_root`; also onebit's per-user cache folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from onebit.data.cifar import _is_cifar_binary_dir
from onebit.data.datasets import PathLike, _check_name
from onebit.data.mnist import _IDX_FILES, _idx_present
from onebit.data.text import _TEXT_FILES
from onebit.errors import OnebitError
from onebit.fileio import user_cache_dir

logger = logging.getLogger(__name__)

# Folder names looked for inside each candidate root, in order of preference.
_FOLDERS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist",),
    "fashion-mnist": ("fashion-mnist",),
    "cifar10": ("cifar-10-batches-bin", "cifar10-jpeg"),
    "linux-kernel": ("linux-kernel",),
}

# System-wide folders searched last (Debian's dataset-* packages install under the first).
SYSTEM_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)


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


def _is_image_folder(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "test").is_dir()


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
