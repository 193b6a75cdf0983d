"""The Test grid as one image: one row per LoRA file, one column per prompt, labelled; and where it
is saved. Hosts render the cells (their own txt2img / sampler); this only lays them out."""

from __future__ import annotations

import io
import os
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from lib_lora.common.errors import UserError
from lib_lora.common.fsutil import atomic_write_bytes

LABEL_WIDTH = 170
HEADER_HEIGHT = 56
MIN_CELL = 192  # smaller images are enlarged (nearest neighbour) to at least this


def _font(size: int = 14) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1
    except TypeError:
        return ImageFont.load_default()


def assemble_grid(
    images: Sequence[Image.Image], row_labels: Sequence[str], column_labels: Sequence[str]
) -> Image.Image:
    """``images`` row-major (for each row, every column) -> one labelled grid image."""
    rows, cols = len(row_labels), len(column_labels)
    if rows * cols != len(images) or not images:
        raise UserError(f"A {rows} x {cols} grid needs {rows * cols} images, got {len(images)}.")
    scale = max(1, -(-MIN_CELL // max(1, min(min(i.width, i.height) for i in images))))
    if scale > 1:  # tiny images (a demo model's) are enlarged so the grid stays readable
        images = [i.resize((i.width * scale, i.height * scale), Image.NEAREST) for i in images]
    cell_w = max(image.width for image in images)
    cell_h = max(image.height for image in images)
    label_w = LABEL_WIDTH if rows > 1 or row_labels[0] else 0
    grid = Image.new("RGB", (label_w + cols * cell_w, HEADER_HEIGHT + rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    font = _font()
    for c, label in enumerate(column_labels):
        wrapped = textwrap.shorten(label, width=max(12, cell_w // 7 * 2), placeholder="...")
        lines = textwrap.wrap(wrapped, width=max(8, cell_w // 7))[:3]
        draw.multiline_text((label_w + c * cell_w + 4, 4), "\n".join(lines), fill="black", font=font)
    for r, label in enumerate(row_labels):
        lines = textwrap.wrap(label, width=max(8, label_w // 8))[:4]
        draw.multiline_text((4, HEADER_HEIGHT + r * cell_h + 4), "\n".join(lines), fill="black", font=font)
        for c in range(cols):
            image = images[r * cols + c].convert("RGB")
            grid.paste(image, (label_w + c * cell_w, HEADER_HEIGHT + r * cell_h))
    return grid


def save_grid(grid: Image.Image, folder: str | os.PathLike, name: str) -> Path:
    """Write ``grid`` as ``<folder>/<name>-grids/grid-<time>.png`` (atomically); returns the path."""
    target = Path(folder) / f"{name}-grids"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create {target}: {exc.strerror or exc}.") from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = target / f"grid-{stamp}.png"
    n = 1
    while path.exists():
        n += 1
        path = target / f"grid-{stamp}-{n}.png"
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path
