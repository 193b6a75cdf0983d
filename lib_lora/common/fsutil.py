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
import shutil
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
    # one decimal: "1.4 MiB", never "1.43051 MiB"; the 1 MiB limit stays "1 MiB"
    return f"{size / (1 << 20):.1f}".removesuffix(".0") + " MiB" if size >= (1 << 20) else f"{size} bytes"


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


class WriteError(UserError):
    """A write that failed (disk full, permission denied...): the target is left as it was."""


def write_error(
    target: str | os.PathLike, exc: OSError, full_disk_hint: str = "Free some space and try again; nothing was changed."
) -> UserError:
    """The one-line message for a failed write: disk full, permission, or the system's own words."""
    if exc.errno == errno.ENOSPC:
        return WriteError(f"Cannot write {target}: the disk is full.", full_disk_hint)
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return WriteError(
            f"Cannot write {target}: permission denied (a read-only file or folder, or the file is open in "
            "another program)."
        )
    return WriteError(f"Cannot write {target}: {exc.strerror or exc}.")


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


# -- folders a job writes into: writable, room enough, one writer at a time ---------------------------


def check_writable(folder: str | os.PathLike, create: bool = False) -> None:
    """Prove a file can be written in ``folder`` (a temp file, removed at once): a read-only folder is
    reported before any work, in one sentence. A missing folder is created when ``create``, else its
    nearest existing parent is checked (so a check alone leaves no folder behind)."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe.parent != probe and not create:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"Cannot write into {folder}: {probe} is a file, not a folder.")
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX + "write-check.", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise write_error(folder, exc) from None


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free space where ``folder`` (or its nearest existing parent) lives; None when unknown."""
    path = Path(folder).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def remove_orphan_temps(folder: str | os.PathLike, owned: Callable[[str], bool]) -> list[Path]:
    """Remove the temporary files a killed :func:`atomic_open` left in ``folder`` for targets whose
    name ``owned`` accepts (call it only while holding the lock that makes those targets yours)."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(_TMP_PREFIX) or not entry.is_file():
            continue
        target = name[len(_TMP_PREFIX) :].rsplit(".", 1)[0]  # mkstemp appends ".<random>"
        if owned(target):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


class LockHeld(UserError):
    """Another process holds the lock; ``holder`` is its process id when known."""

    def __init__(self, message: str, holder: int | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class FileLock:
    """An exclusive OS lock on a small file (``flock`` on POSIX, ``msvcrt.locking`` on Windows).

    The operating system releases it when the holder ends, however it ends (a killed process too), so
    a stale lock never blocks a new run. The file holds the holder's process id (for the message) and
    is removed on release. ``acquire`` never waits: it returns False when another holder has it.
    """

    _PID_AT = 16  # Windows: the locked byte is 0; the pid is written after it so others can read it

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.holder: int | None = None
        self._fd: int | None = None

    def acquire(self) -> bool:
        for _ in range(10):  # the previous holder may remove the file between our open and our lock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise write_error(self.path, exc) from None
            if not _os_lock(fd):
                self.holder = self._read_pid(fd)
                os.close(fd)
                return False
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if not same:
                _os_unlock(fd)
                os.close(fd)
                continue
            os.lseek(fd, self._PID_AT, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            return True
        return False

    def _read_pid(self, fd: int) -> int | None:
        try:
            os.lseek(fd, self._PID_AT, os.SEEK_SET)
            return int(os.read(fd, 32).decode("ascii", "replace").strip() or "x")
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if os.name == "posix":  # remove while still holding it: a newcomer then locks a fresh file
            with contextlib.suppress(OSError):
                self.path.unlink()
        _os_unlock(fd)
        os.close(fd)
        if os.name != "posix":
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _os_lock(fd: int) -> bool:
    if os.name == "nt":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _os_unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        if os.name == "nt":
            import msvcrt

            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_UN)
