"""The caption editor for a front end: open a session, thumbnails the browser can fetch.

The editing itself is :class:`lib_lora.captions.CaptionSession` (one per user); this module only
re-exports what a UI needs and makes small thumbnails, so a large dataset does not send full-size
images to the browser and files outside the app's folder can be shown (the thumbnails live in
the system's temp folder, which Gradio serves).
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageOps

from lib_lora.captions import (
    CONFLICT_CHOICES,
    SEARCH_MODES,
    SORT_KEYS,
    CaptionSession,
    LoadOptions,
    SaveResult,
    TagFilter,
    load_dataset,
    summary_line,
)
from lib_lora.common.errors import UserError
from lib_lora.data.dataset import probe_images
from lib_lora.data.masks import find_mask_file, has_alpha
from lib_lora.events import Events, StopToken

__all__ = [
    "CONFLICT_CHOICES",
    "SEARCH_MODES",
    "SORT_KEYS",
    "CaptionSession",
    "SaveResult",
    "TagFilter",
    "open_session",
    "summary_line",
    "thumbnail",
]

THUMB_SIZE = 256
_THUMB_DIR_NAME = "lib_lora-thumbnails"
_LOCK = threading.Lock()


def open_session(
    root: str | os.PathLike,
    caption_extension: str = ".txt",
    events: Events | None = None,
    stop: StopToken | None = None,
) -> CaptionSession:
    text = str(root or "").strip()
    if not text:
        raise UserError("No dataset folder chosen: choose it in the Dataset tab first.")
    path = Path(text).expanduser()
    if not path.is_dir():
        raise UserError(f"Dataset folder {path} does not exist." if not path.exists() else f"{path} is not a folder.")
    options = LoadOptions(caption_extension=caption_extension or ".txt")
    return CaptionSession(
        load_dataset(path, options, events, stop, image_check=lambda paths: check_images(paths, stop))
    )


def check_images(paths: Sequence[Path], stop: StopToken | None = None) -> list[str | None]:
    """Per image, None or why training cannot read it: the training scan's own check, so the editor
    leaves out (and reports) exactly the images the trainer skips."""
    return [None if isinstance(probe, tuple) else probe for probe in probe_images(list(paths), stop=stop)]


def thumbnail_folder() -> Path:
    # not a dot-folder: Gradio refuses to serve paths with a part starting with "."
    folder = Path(tempfile.gettempdir()) / _THUMB_DIR_NAME
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _placeholder(size: int) -> Path:
    path = thumbnail_folder() / f"unreadable-{size}.png"
    if not path.exists():
        image = Image.new("RGB", (size, size), (200, 200, 200))
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    return path


def thumbnail(image: str | os.PathLike, size: int = THUMB_SIZE) -> Path:
    """A JPEG at most ``size`` px on its longer side (cached by path, mtime and file size); a grey
    placeholder for an image that cannot be read."""
    image = Path(image)
    try:
        stat = image.stat()
    except OSError:
        return _placeholder(size)
    key = hashlib.sha1(f"{image.resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{size}".encode()).hexdigest()[:24]
    path = thumbnail_folder() / f"{key}.jpg"
    if path.exists():
        return path
    try:
        with Image.open(image) as opened:
            opened.draft("RGB", (size, size))
            picture = ImageOps.exif_transpose(opened)
            picture.thumbnail((size, size))
            if picture.mode in ("RGBA", "LA", "P"):
                picture = picture.convert("RGBA")
                background = Image.new("RGB", picture.size, (255, 255, 255))
                background.paste(picture, mask=picture.getchannel("A"))
                picture = background
            elif picture.mode != "RGB":
                picture = picture.convert("RGB")
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            picture.save(tmp, format="JPEG", quality=85)
        with _LOCK:
            os.replace(tmp, path)
    except Exception:  # a corrupt image gets the placeholder, never breaks the gallery
        return _placeholder(size)
    return path


MASK_FILE = "mask"
ALPHA_MASK = "alpha mask"


def mask_marks(images: Sequence[tuple[str, str | os.PathLike]], mask_dir: str | None, alpha: bool) -> dict[str, str]:
    """Which of ``images`` (path relative to the dataset folder, file) have a loss mask, found as
    training finds it (:mod:`lib_lora.data.masks`): with a mask folder (``conditioning_data_dir``)
    its same-named file in ``<folder>/<N_name folder>/`` or ``<folder>/`` -> :data:`MASK_FILE`;
    else with ``alpha_mask`` the image's transparency -> :data:`ALPHA_MASK`. Images without one are left out."""
    marks: dict[str, str] = {}
    if mask_dir:
        for rel, image in images:
            subset = rel.replace("\\", "/").rpartition("/")[0].split("/")[0]
            if find_mask_file(mask_dir, subset, image) is not None:
                marks[rel] = MASK_FILE
    elif alpha:
        for rel, image in images:
            try:
                stat = os.stat(image)
            except OSError:
                continue
            if _has_alpha_cached(str(image), stat.st_mtime_ns, stat.st_size):
                marks[rel] = ALPHA_MASK
    return marks


@functools.lru_cache(maxsize=4096)
def _has_alpha_cached(path: str, mtime_ns: int, size: int) -> bool:
    try:
        return has_alpha(path)
    except (OSError, ValueError, Image.DecompressionBombError):
        return False  # an unreadable image has no usable mask (the scan names it)
