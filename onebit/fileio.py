"""The one atomic writer: every file onebit writes goes through :func:`atomic_write`.

A file is written under a temporary name in its own folder, flushed to disk and renamed over
the target, so a reader (or a run killed mid-write) sees the old file or the new one, never half
of one. Imports neither torch nor numpy: the runtime uses it too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from onebit.errors import OnebitError

__all__ = [
    "LOCK_NAME",
    "TMP_MARK",
    "atomic_folder",
    "atomic_write",
    "check_folder",
    "check_writable",
    "folder_lock",
    "make_folder",
    "remove_stale_temps",
    "temp_path",
    "user_cache_dir",
]

TMP_MARK = ".tmp-onebit-"
"""Part of every temporary name (``.<stem><TMP_MARK><pid>-<random><suffix>``), so leftovers of a
killed write can be recognized, and told from the temporary files of a process still writing."""

_TMP_PID = re.compile(re.escape(TMP_MARK) + r"(\d+)-")

LOCK_NAME = ".onebit-lock"
"""The lock file of a folder one onebit process at a time may write (:func:`folder_lock`)."""


def user_cache_dir() -> Path:
    """onebit's per-user cache folder: ``$XDG_CACHE_HOME/onebit`` (default ``~/.cache/onebit``)."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "onebit"


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path`` that keeps its suffix (writers such as
    matplotlib and numpy choose the format from it)."""
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    return path.with_name(f".{path.stem}{TMP_MARK}{token}{path.suffix}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike[str], *, all_of_them: bool = False) -> list[Path]:
    """Delete what killed writes left in ``folder``: entries whose name carries :data:`TMP_MARK`
    and whose writing process is gone (``all_of_them``: every such entry, for a folder whose
    :func:`folder_lock` the caller holds, so no other process writes there). Returns them."""
    d = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(d))
    except OSError:
        return removed
    for e in entries:
        if TMP_MARK not in e.name:
            continue
        m = _TMP_PID.search(e.name)
        if not all_of_them and m is not None and _alive(int(m.group(1))):
            continue
        p = Path(e.path)
        with contextlib.suppress(OSError):
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


def check_folder(path: str | os.PathLike[str], what: str = "folder") -> Path:
    """``path`` as a Path if files may be written into it (it is a folder, or can be made as
    one), else one OnebitError sentence naming ``what`` (e.g. ``--out``)."""
    p = Path(path)
    probe = p
    while True:
        try:
            st = probe.stat()
        except (FileNotFoundError, NotADirectoryError):
            if probe.parent == probe:
                raise OnebitError(
                    f"{what} {p} cannot be made (no existing folder above it)."
                ) from None
            probe = probe.parent
            continue
        except OSError as e:
            raise OnebitError(f"{what} {p} cannot be used ({e.strerror}).") from None
        break
    if not stat.S_ISDIR(st.st_mode):
        if probe == p:
            raise OnebitError(f"{what} {p} is a file, not a folder; give a folder.")
        raise OnebitError(f"{what} {p} cannot be made: {probe} is a file, not a folder.")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == p else f" ({probe} is not writable)"
        raise OnebitError(f"{what} {p} is read-only{where}; give a folder you can write.")
    return p


def make_folder(path: str | os.PathLike[str], what: str = "folder") -> Path:
    """Make folder ``path`` (and its parents) after :func:`check_folder`; one sentence on failure."""
    p = check_folder(path, what)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OnebitError(f"cannot make {what} {p} ({e.strerror or e}).") from None
    return p


_HELD: dict[Path, tuple[int, int]] = {}  # folder -> (fd, depth) of the locks this process holds


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], what: str = "") -> Iterator[Path]:
    """Hold ``folder``'s lock (``fcntl.flock`` on its :data:`LOCK_NAME` file, made if missing)
    while the block runs: a second onebit process asking for it gets one OnebitError sentence
    instead of writing the same files. The kernel releases it when the process ends, however it
    ends (kill included); re-entrant within one process. ``what`` names the user's remedy."""
    import fcntl

    d = make_folder(folder)
    key = d.resolve()
    if key in _HELD:
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        try:
            yield d
        finally:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth - 1)
        return
    lock = d / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise OnebitError(f"cannot lock {d} ({e.strerror}); give a folder you can write.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        finally:
            os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise OnebitError(f"cannot lock {d} ({e.strerror}).") from None
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise OnebitError(
            f"{d} is in use by another onebit process{who}; wait for it to finish"
            + (f" or {what}." if what else ".")
        ) from None
    # the lock file holds the pid of its holder, for the sentence above; it is the lock itself,
    # so it is written in place (a rename would give a new file that nobody has locked)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = (fd, 1)
    try:
        yield d
    finally:
        fd, depth = _HELD.pop(key)
        os.close(fd)  # releases the flock


def check_writable(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path if a regular file may be written there, else one OnebitError sentence.

    Refused: an existing folder, device, socket or pipe (``-o /dev/full`` must not replace the
    device node), and a folder that does not exist.
    """
    p = Path(path)
    if not str(path) or p.name in ("", ".", ".."):
        raise OnebitError(f"{str(path)!r} is not the path of a file; give a file name.")
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as e:
        raise OnebitError(f"cannot write {p} ({e.strerror}).") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise OnebitError(f"{p} is {kind}; give the path of a file to write.")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OnebitError(f"cannot write {p}: folder {parent} does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OnebitError(f"cannot write {p}: folder {parent} is read-only.")
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


def atomic_folder(path: str | os.PathLike[str], files: dict[str, bytes | str]) -> Path:
    """Make folder ``path`` holding ``files`` (name -> content) atomically: the files are
    written into a temporary folder beside it, which is then renamed to ``path``, so a reader
    (or a process killed midway) sees no folder or the whole one, never a half-made one.

    Raises:
        FileExistsError: ``path`` exists and is not an empty folder (the caller picks another
            name, or reports it).
        OnebitError: the folder cannot be made (read-only, disk full, ...).
    """
    p = Path(path)
    parent = make_folder(p.parent)
    tmp = parent / f".{p.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
        try:
            os.rename(tmp, p)  # replaces nothing but an empty folder
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise FileExistsError(errno.EEXIST, f"{p} exists", str(p)) from None
            raise
    except FileExistsError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OnebitError(f"cannot make {p} ({e.strerror or e}).") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return p
