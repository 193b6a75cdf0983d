"""Tiny caption datasets on disk for the caption editor tests.

Images are empty placeholder files: the caption editor never decodes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def make_dataset(root: Path, files: Mapping[str, str | bytes | None], caption_extension: str = ".txt") -> Path:
    """Create ``root`` with one placeholder image per key (``"10_irene/a.png"``) and its caption:
    text is written as UTF-8 bytes exactly as given, bytes as they are, None means no caption file."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, caption in files.items():
        image = root / rel
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(b"")
        if caption is None:
            continue
        data = caption.encode("utf-8") if isinstance(caption, str) else caption
        image.with_name(image.stem + caption_extension).write_bytes(data)
    return root


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file under ``root`` (relative path -> bytes; folders -> None), to compare before/after."""
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = None if path.is_dir() else path.read_bytes()
    return out


def caption_text(root: Path, rel_caption: str) -> str:
    return (root / rel_caption).read_text(encoding="utf-8")
