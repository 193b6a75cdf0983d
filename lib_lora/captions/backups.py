"""Backups of captions before the editor overwrites them: one zip per save in ``<dataset>/.caption-history/``.

Each save writes ``.caption-history/<YYYY-MM-DD_HH-MM-SS>.zip`` (atomically, before any caption is
touched) holding the previous version of every caption that save changes, at its path relative to the
dataset folder, plus ``.manifest.json`` listing every caption the save wrote (``"modified"``, or
``"created"`` when there was no caption file before). Unzipping a backup over the dataset folder puts
those captions back as they were.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lib_lora.common.errors import UserError
from lib_lora.common.fsutil import atomic_open

BACKUP_DIR_NAME = ".caption-history"
MANIFEST_NAME = ".manifest.json"


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    saved_at: str  # ISO timestamp (local time)
    modified: int  # captions whose previous version the backup holds
    created: int  # captions the save created (no previous version)


def backup_folder(root: str | os.PathLike) -> Path:
    return Path(root) / BACKUP_DIR_NAME


def _new_backup_path(folder: Path, now: datetime) -> Path:
    stem = now.strftime("%Y-%m-%d_%H-%M-%S")
    path = folder / f"{stem}.zip"
    n = 2
    while path.exists():
        path = folder / f"{stem}-{n}.zip"
        n += 1
    return path


def write_backup(
    root: str | os.PathLike,
    entries: Sequence[tuple[str, bytes | None]],
    now: datetime | None = None,
) -> Path:
    """Write one backup holding ``(caption path relative to root, previous bytes or None)`` entries.

    Raises UserError when it cannot be written (then nothing else should be written either).
    """
    now = now or datetime.now()
    folder = backup_folder(root)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"Cannot keep caption backups: {folder} is a file, not a folder.")
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the caption backup folder {folder}: {exc.strerror or exc}.") from exc
    path = _new_backup_path(folder, now)
    stamp = now.timetuple()[:6]
    manifest = {
        "saved_at": now.isoformat(timespec="microseconds"),
        "files": [{"caption": rel, "action": "modified" if raw is not None else "created"} for rel, raw in entries],
    }
    with atomic_open(path, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as zf:
        for rel, raw in entries:
            if raw is not None:
                zf.writestr(zipfile.ZipInfo(rel, date_time=stamp), raw)
        zf.writestr(zipfile.ZipInfo(MANIFEST_NAME, date_time=stamp), json.dumps(manifest, ensure_ascii=False))
    return path


def read_backup(path: str | os.PathLike) -> dict[str, bytes | None]:
    """``{caption path relative to the dataset: previous bytes, or None if the save created it}``."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read(MANIFEST_NAME).decode("utf-8"))
            out: dict[str, bytes | None] = {}
            for entry in manifest.get("files", []):
                rel = entry["caption"]
                out[rel] = zf.read(rel) if entry.get("action") == "modified" else None
            return out
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as exc:
        raise UserError(f"Caption backup {path} cannot be read: {exc}.") from exc


def list_backups(root: str | os.PathLike) -> list[BackupInfo]:
    """The dataset's caption backups, newest first (unreadable files are left out)."""
    folder = backup_folder(root)
    if not folder.is_dir():
        return []
    out = []
    for path in folder.glob("*.zip"):
        try:
            with zipfile.ZipFile(path) as zf:
                manifest = json.loads(zf.read(MANIFEST_NAME).decode("utf-8"))
            files = manifest.get("files", [])
            modified = sum(1 for f in files if f.get("action") == "modified")
            out.append(BackupInfo(path, str(manifest.get("saved_at", "")), modified, len(files) - modified))
        except (OSError, KeyError, ValueError, AttributeError, zipfile.BadZipFile):
            continue
    out.sort(key=lambda b: (b.saved_at, b.path.name), reverse=True)
    return out
