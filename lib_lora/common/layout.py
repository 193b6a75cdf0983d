"""The dataset folder layout every trainer GUI uses: ``<dataset>/<N>_<name>/image.png``.

``N`` is how many times each image is repeated per epoch, ``name`` the class tokens. A caption is
``<stem>.txt`` beside the image.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Folders our own tools create inside a dataset; never training data.
RESERVED_DIRS: frozenset[str] = frozenset({"_duplicates", ".caption-history", "_rejected"})
# The tagger's scores (for the caption editor): one file per image folder, in a hidden folder
# (``<folder>/.tagger/scores.json``, {"version": 1, "images": {image file name: scores document}}).
# Older versions wrote ``<stem>.tagger.json`` beside every image; those are still read, and migrated.
TAGGER_SCORES_DIR = ".tagger"
TAGGER_SCORES_NAME = "scores.json"
TAGGER_SIDECAR_SUFFIX = ".tagger.json"
_SUBSET = re.compile(r"^(\d+)_(.+)$")
# The most steps one epoch may have (config refuses more; a folder whose repeats alone exceed it
# makes an epoch training refuses, so the tools that name folders refuse it first).
MAX_STEPS = 10_000_000


@dataclass(frozen=True)
class SubsetName:
    repeats: int
    class_tokens: str


def parse_subset_name(folder_name: str) -> SubsetName | None:
    """``"10_irene"`` -> SubsetName(10, "irene"); None when the name does not follow ``N_name``.

    As sd-scripts: the first ``_``-separated token must be an integer >= 1; the rest (underscores
    kept) are the class tokens.
    """
    match = _SUBSET.match(folder_name)
    if not match:
        return None
    repeats = int(match.group(1))
    if repeats < 1:
        return None
    return SubsetName(repeats, match.group(2))


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _skip_dir(name: str) -> bool:
    return name.startswith(".") or name in RESERVED_DIRS


def iter_image_files(root: str | os.PathLike, recursive: bool = True) -> Iterator[Path]:
    """Image files under ``root`` in a stable (sorted) order; hidden and tool folders are skipped."""
    root = Path(root)
    if not recursive:
        for entry in sorted(root.iterdir()):
            if entry.is_file() and is_image_file(entry) and not entry.name.startswith("."):
                yield entry
        return
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _skip_dir(d))
        for name in sorted(files):
            if not name.startswith(".") and is_image_file(name):
                yield Path(folder) / name


def tagger_scores_path(folder: str | os.PathLike) -> Path:
    """``<folder>/.tagger/scores.json``: the tagger's scores for the images of ``folder``."""
    return Path(folder) / TAGGER_SCORES_DIR / TAGGER_SCORES_NAME


def caption_path(image: str | os.PathLike, caption_extension: str = ".txt") -> Path:
    """``a/b.png`` -> ``a/b.txt``."""
    image = Path(image)
    return image.with_name(image.stem + caption_extension)


def caption_extension_problem(extension: str) -> str | None:
    """Why ``extension`` cannot name caption files (one sentence), or None: it must look like ``.txt``,
    and never be an image type (a caption written as ``a.png`` would overwrite or pose as an image)."""
    if not extension or not extension.startswith(".") or len(extension) < 2 or "/" in extension or "\\" in extension:
        return f"The caption file extension must look like .txt (got {extension!r})."
    if extension.lower() in IMAGE_EXTENSIONS:
        return (
            f"The caption file extension {extension} is an image type: captions saved as {extension} files would "
            "overwrite images or be taken for them; use .txt (or .caption)."
        )
    return None


def too_many_repeats(repeats: int) -> str | None:
    """The sentence refusing ``repeats`` that even one image would turn into an epoch training
    refuses (more than MAX_STEPS steps); None when the number is usable."""
    if repeats <= MAX_STEPS:
        return None
    return (
        f"Repeats {repeats:,} is too many: training refuses an epoch of more than {MAX_STEPS:,} steps; "
        "use fewer repeats (usually 1-100)."
    )
