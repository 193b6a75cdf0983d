"""Atomic file writes, and safe reads of small files.

Every write goes to a temporary file in the target's folder, is flushed and fsynced, then renamed
over the target with ``os.replace``: a reader (the webui, another tool) never sees a half-written
file. On Windows a target that another process holds open cannot be replaced for a moment; the
rename is retried briefly before giving up.

Small text files that come with a dataset (captions, tagger scores) are read with
:func:`read_small_file`: only regular files (a symlink only when it points at one), never more than
a size cap, so a FIFO cannot hang a scan and a link to ``/dev/zero`` cannot fill the memory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from lib_lora.common.errors import UserError

_TMP_PREFIX = ".tmp-"
SMALL_FILE_LIMIT = 1 << 20  # 1 MiB: far above any real caption


class UnsafeFileError(UserError):
    """A file that is not read: not a regular file (FIFO, device, socket), or larger than the cap."""


def _mib(size: int) -> str:
    return f"{size / (1 << 20):g} MiB" if size >= (1 << 20) else f"{size} bytes"


def read_small_file(path: str | os.PathLike, limit: int = SMALL_FILE_LIMIT, what: str = "File") -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes.

    A symlink is followed only when its target is a regular file. Raises ``FileNotFoundError`` when
    there is no such file, ``IsADirectoryError`` for a folder, :class:`UnsafeFileError` (one sentence
    starting with ``what``) for a FIFO, device or socket or a file over ``limit``, and ``OSError``
    for other read failures. A FIFO is never opened for reading (no read can block).
    """
    path = Path(path)
    info = os.stat(path)  # follows symlinks: a link to /dev/zero is seen as the device it is
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFileError(f"{what} {path} is not a regular file (a pipe, device or socket): it is not read.")
    if info.st_size > limit:
        raise UnsafeFileError(f"{what} {path} is {_mib(info.st_size)}, over the {_mib(limit)} limit: it is not read.")
    # O_NONBLOCK: a file swapped for a FIFO after the check still cannot block the open
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeFileError(f"{what} {path} is not a regular file (a pipe, device or socket): it is not read.")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:  # it grew after the check
        raise UnsafeFileError(f"{what} {path} is over the {_mib(limit)} limit: it is not read.")
    return b"".join(chunks)


def replace_with_retry(src: str | os.PathLike, dst: str | os.PathLike, attempts: int = 20, delay: float = 0.05) -> None:
    """``os.replace(src, dst)``, retried while the target is locked (Windows sharing violations)."""
    for attempt in range(attempts):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if attempt == attempts - 1:
                raise
            time.sleep(delay * (1 + attempt))


def _fsync_path(path: str | os.PathLike, flags: int) -> None:
    """fsync a file or folder by path; failures (unsupported, vanished) are ignored."""
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    if os.name == "posix":  # folders cannot be opened for fsync on Windows
        _fsync_path(folder, os.O_RDONLY)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike,
    mode: str = "wb",
    encoding: str | None = None,
    durable: bool = True,
    before_replace: Callable[[], None] | None = None,
) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left exactly as it was.
    ``durable=False`` skips the fsyncs (file and folder): the replacement is still atomic for
    readers, but may not survive a power cut; for batches that flush once at the end (``sync_files``).
    ``before_replace`` runs once the new content is complete, right before the rename: an exception
    it raises cancels the write (compare-and-swap: check the target is still what it was).
    """
    if "w" not in mode:
        raise ValueError("atomic_open is for writing")
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise UserError(f"Cannot write {target}: it is a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX + target.name + ".", dir=folder)
    except OSError as exc:
        raise write_error(target, exc) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline="" if "b" not in mode else None) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        _copy_mode(target, tmp)
        if before_replace is not None:
            before_replace()
        replace_with_retry(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, UserError):
            raise write_error(target, exc) from exc
        raise
    if durable:
        _fsync_dir(folder)


def _copy_mode(target: Path, tmp: Path) -> None:
    """Keep the permissions of a file being replaced (mkstemp creates 0600 files)."""
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    with contextlib.suppress(OSError):
        os.chmod(tmp, mode)


def write_error(
    target: str | os.PathLike, exc: OSError, full_disk_hint: str = "Free some space and try again; nothing was changed."
) -> UserError:
    """The one-line message for a failed write: disk full, permission, or the system's own words."""
    if exc.errno == errno.ENOSPC:
        return UserError(f"Cannot write {target}: the disk is full.", full_disk_hint)
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(
            f"Cannot write {target}: permission denied (a read-only file or folder, or the file is open in "
            "another program)."
        )
    return UserError(f"Cannot write {target}: {exc.strerror or exc}.")


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes, durable: bool = True, before_replace: Callable[[], None] | None = None
) -> None:
    """Write ``data`` to ``path`` atomically (``before_replace``: see :func:`atomic_open`)."""
    with atomic_open(path, "wb", durable=durable, before_replace=before_replace) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8", durable: bool = True) -> None:
    """Write ``text`` to ``path`` atomically (no newline translation)."""
    with atomic_open(path, "w", encoding=encoding, durable=durable) as handle:
        handle.write(text)


def sync_files(paths: Sequence[str | os.PathLike]) -> None:
    """Make files written with ``durable=False`` durable: one ``os.sync()`` where it exists, else an
    fsync per file (and folder)."""
    if hasattr(os, "sync"):
        os.sync()
        return
    for path in paths:
        _fsync_path(path, os.O_RDWR)
    for folder in {Path(p).parent for p in paths}:
        _fsync_dir(folder)


def is_temp_file(path: str | os.PathLike) -> bool:
    """True for the temporary files :func:`atomic_open` creates (hidden from listings)."""
    return Path(path).name.startswith(_TMP_PREFIX)


def is_read_only(path: str | os.PathLike) -> bool:
    """True when the file's permission bits allow nobody to write it (a file the user protected).

    The mode bits, not ``os.access``: an administrator account passes ``os.access`` for every file,
    and an atomic save (temp file + rename) would replace a protected file without a word.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
