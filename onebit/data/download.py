"""Downloading the canonical files of MNIST, Fashion-MNIST and CIFAR-10, verified against known
checksums. Never called implicitly."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from onebit.data.cifar import _CIFAR_TEST_FILE, _CIFAR_TRAIN_FILES
from onebit.data.datasets import PathLike, _check_name
from onebit.data.find import _FOLDERS, user_cache_dir
from onebit.data.text import _TEXT_FILES
from onebit.errors import OnebitError
from onebit.fileio import atomic_write, make_folder

logger = logging.getLogger(__name__)

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
    make_folder(dest.parent, "the data folder")
    md5 = hashlib.md5()
    logger.info("downloading %s to %s", url, dest)

    def fetch_to(tmp: Path) -> None:
        try:
            with open(tmp, "wb") as out:
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
        except (urllib.error.URLError, OSError) as exc:
            raise OnebitError(
                f"Could not download {url} ({exc}); check the network connection or put the "
                f"files in {dest.parent} by hand."
            ) from exc

    atomic_write(dest, fetch_to)  # removes the partial file when the download fails
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
    finally:  # on success and failure alike; a later download fetches the archive again
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
    make_folder(base, "--root")
    if name == "cifar10":
        return _download_cifar10(base, progress)
    folder = base / _FOLDERS[name][0]
    _download_idx(name, folder, progress)
    return folder
