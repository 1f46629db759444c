"""The one atomic writer: every file onebit writes goes through :func:`atomic_write`.

A file is written under a temporary name in its own folder, flushed to disk and renamed over
the target, so a reader (or a run killed mid-write) sees the old file or the new one, never half
of one. Imports neither torch nor numpy: the runtime uses it too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from onebit.errors import OnebitError

__all__ = ["TMP_MARK", "atomic_write", "check_writable", "temp_path", "user_cache_dir"]

TMP_MARK = ".tmp-onebit-"
"""Part of every temporary name (``.<stem><TMP_MARK><random><suffix>``), so leftovers of a
killed write can be recognized."""


def user_cache_dir() -> Path:
    """onebit's per-user cache folder: ``$XDG_CACHE_HOME/onebit`` (default ``~/.cache/onebit``)."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "onebit"


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path`` that keeps its suffix (writers such as
    matplotlib and numpy choose the format from it)."""
    return path.with_name(f".{path.stem}{TMP_MARK}{secrets.token_hex(4)}{path.suffix}")


def check_writable(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path if a regular file may be written there, else one OnebitError sentence.

    Refused: an existing folder, device, socket or pipe (``-o /dev/full`` must not replace the
    device node), and a folder that does not exist.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OnebitError(f"cannot write {p} ({e.strerror}).") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise OnebitError(f"{p} is {kind}; give the path of a file to write.")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OnebitError(f"cannot write {p}: folder {parent} does not exist.")
    return p


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str | Callable[[Path], object],
    *,
    fsync: bool = True,
) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path.

    Args:
        path: the target file (its folder must exist; see :func:`check_writable`).
        data: the bytes or text (UTF-8) to write, or a function that writes the file at the
            temporary path it is given (``torch.save``, ``safetensors``, ``savefig``, ...).
        fsync: flush the file to disk before the rename (off for scratch files).

    Raises:
        OnebitError: the target cannot be written (see :func:`check_writable`), or writing failed
            (disk full, permissions); the temporary file is removed.
    """
    p = check_writable(path)
    tmp = temp_path(p)
    try:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, p)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OnebitError(f"cannot write {p} ({e.strerror or e}).") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return p
