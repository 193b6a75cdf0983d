"""The originals of cleaned images: ``<dataset>/.clean-history/<image path>/``.

Before an image is overwritten, its exact bytes are written (atomically) to the next numbered file of
its history folder — ``0001.png`` is the original, ``0002.png`` the version before the second
cleaning, ... — and ``log.json`` records each step with the SHA-256 of the file it wrote. *Undo*
puts back the newest saved version, *restore* the original, byte for byte; both refuse when the
image was changed by something else since it was cleaned (that version is not in the history, so
overwriting it would lose it). The folder is hidden (a dot-folder), so the dataset scan, the tagger
and training never see it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lib_lora.common.errors import UserError
from lib_lora.common.fsutil import atomic_write_bytes, atomic_write_text, is_read_only

HISTORY_DIR_NAME = ".clean-history"
LOG_NAME = "log.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rel(root: Path, image: Path) -> Path:
    try:
        return image.resolve().relative_to(root.resolve())
    except ValueError:
        raise UserError(f"The image {image} is not inside the dataset folder {root}.") from None


def history_folder(root: str | os.PathLike, image: str | os.PathLike) -> Path:
    root = Path(root)
    return root / HISTORY_DIR_NAME / _rel(root, Path(image))


def find_root(image: str | os.PathLike) -> Path | None:
    """The nearest folder above ``image`` whose ``.clean-history`` has a history for it."""
    image = Path(image).resolve()
    for parent in image.parents:
        if (parent / HISTORY_DIR_NAME / image.relative_to(parent) / LOG_NAME).is_file():
            return parent
    return None


@dataclass(frozen=True)
class Step:
    version: str  # the saved file in the history folder (the image as it was before this step)
    before: str  # its SHA-256
    after: str  # SHA-256 of what the step wrote
    at: str

    def as_json(self) -> dict:
        return {"version": self.version, "before": self.before, "after": self.after, "at": self.at}


def read_log(folder: Path) -> list[Step]:
    path = folder / LOG_NAME
    if not path.is_file():
        return []
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return [Step(s["version"], s["before"], s["after"], s.get("at", "")) for s in raw["steps"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"The cleaning history {path} cannot be read ({exc}); its saved versions are untouched."
        ) from None


def _write_log(folder: Path, image_rel: str, steps: list[Step]) -> None:
    body = {"image": image_rel, "steps": [s.as_json() for s in steps]}
    atomic_write_text(folder / LOG_NAME, json.dumps(body, indent=1, ensure_ascii=False))


def check_writable(image: Path, root: Path) -> None:
    """Refuse a read-only image or folder before anything is written (mode bits, as the caption editor)."""
    for path, what in ((image, "image"), (image.parent, "folder"), (root, "dataset folder")):
        if path.exists() and is_read_only(path):
            raise UserError(f"The {what} {path} is read-only; nothing was changed.")


def write_with_history(root: str | os.PathLike, image: str | os.PathLike, before: bytes, after: bytes) -> Path:
    """Save ``before`` (the image's current bytes) as the next version, then write ``after`` over the
    image, atomically each. On any failure nothing is left half-done: the image is as it was and the
    history holds no step for it. Returns the history folder."""
    root, image = Path(root), Path(image)
    check_writable(image, root)
    folder = history_folder(root, image)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"Cannot create the cleaning history folder {folder}: {exc.strerror or exc}; nothing was changed."
        ) from None
    steps = read_log(folder)
    version = f"{len(steps) + 1:04d}{image.suffix.lower()}"
    step = Step(version, sha256(before), sha256(after), datetime.now().isoformat(timespec="seconds"))
    written: list[Path] = []
    try:
        atomic_write_bytes(folder / version, before)
        written.append(folder / version)
        _write_log(folder, _rel(root, image).as_posix(), [*steps, step])
        atomic_write_bytes(image, after)
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(Exception):
            if steps:
                _write_log(folder, _rel(root, image).as_posix(), steps)
            else:
                shutil.rmtree(folder)
                _prune_empty(folder.parent, root / HISTORY_DIR_NAME)
        raise
    return folder


def _current_or_refuse(image: Path, folder: Path, steps: list[Step]) -> None:
    try:
        current = sha256(image.read_bytes())
    except FileNotFoundError:
        return  # a deleted image: putting the saved version back loses nothing
    except OSError as exc:
        raise UserError(f"The image {image} cannot be read: {exc.strerror or exc}.") from None
    if current != steps[-1].after:
        raise UserError(
            f"The image {image} was changed after it was cleaned, so it is left as it is; "
            f"its earlier versions are kept in {folder}."
        )


def undo(root: str | os.PathLike, image: str | os.PathLike) -> Path:
    """Put back the version before the newest cleaning (byte-identical). Returns the image path."""
    root, image = Path(root), Path(image)
    folder = history_folder(root, image)
    steps = read_log(folder)
    if not steps:
        raise UserError(f"The image {image} has not been cleaned; there is nothing to undo.")
    _current_or_refuse(image, folder, steps)
    check_writable(image, root)
    last = steps[-1]
    atomic_write_bytes(image, (folder / last.version).read_bytes())
    if len(steps) == 1:
        shutil.rmtree(folder, ignore_errors=True)
        _prune_empty(folder.parent, root / HISTORY_DIR_NAME)
    else:
        _write_log(folder, _rel(root, image).as_posix(), steps[:-1])
        with contextlib.suppress(OSError):
            (folder / last.version).unlink()
    return image


def restore(root: str | os.PathLike, image: str | os.PathLike) -> Path:
    """Put the original back (byte-identical) and drop the image's history. Returns the image path."""
    root, image = Path(root), Path(image)
    folder = history_folder(root, image)
    steps = read_log(folder)
    if not steps:
        raise UserError(f"The image {image} has not been cleaned; its file is already the original.")
    _current_or_refuse(image, folder, steps)
    check_writable(image, root)
    original = (folder / steps[0].version).read_bytes()
    if sha256(original) != steps[0].before:
        raise UserError(
            f"The saved original {folder / steps[0].version} does not match its recorded checksum; nothing was changed."
        )
    atomic_write_bytes(image, original)
    shutil.rmtree(folder, ignore_errors=True)
    _prune_empty(folder.parent, Path(root) / HISTORY_DIR_NAME)
    return image


def _prune_empty(folder: Path, top: Path) -> None:
    while folder != top.parent and folder.is_dir():
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == top:
            return
        folder = folder.parent


def cleaned_images(root: str | os.PathLike) -> dict[str, int]:
    """``{image path relative to root (posix): number of cleaning steps}`` for images with a history."""
    top = Path(root) / HISTORY_DIR_NAME
    if not top.is_dir():
        return {}
    out = {}
    for log in top.rglob(LOG_NAME):
        with contextlib.suppress(UserError):
            steps = read_log(log.parent)
            if steps:
                out[log.parent.relative_to(top).as_posix()] = len(steps)
    return out
