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
TEXT_CELL = 256  # the labels grow with the cells: x2 from 512 px cells, x4 from 1024 px (readable shrunk to a page)
FONT_SIZE = 14


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1
    except TypeError:
        return ImageFont.load_default()


def _draw_text(grid: Image.Image, xy: tuple[int, int], text: str, scale: int) -> None:
    """``text`` at ``xy``, ``scale`` times the base size (a sized font where Pillow has one, else the
    fixed bitmap font drawn small and enlarged pixel for pixel)."""
    font = _font(FONT_SIZE * scale)
    if scale == 1 or isinstance(font, ImageFont.FreeTypeFont):
        ImageDraw.Draw(grid).multiline_text(xy, text, fill="black", font=font)
        return
    box = ImageDraw.Draw(grid).multiline_textbbox((0, 0), text, font=font)
    small = Image.new("RGB", (max(1, box[2]), max(1, box[3])), "white")
    ImageDraw.Draw(small).multiline_text((0, 0), text, fill="black", font=font)
    grid.paste(small.resize((small.width * scale, small.height * scale), Image.NEAREST), xy)


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
    text = max(1, min(cell_w, cell_h) // TEXT_CELL)
    label_w = LABEL_WIDTH * text if rows > 1 or row_labels[0] else 0
    header = HEADER_HEIGHT * text
    grid = Image.new("RGB", (label_w + cols * cell_w, header + rows * cell_h), "white")
    chars = max(8, cell_w // (7 * text))  # the bitmap font is about 7 px a character at scale 1
    for c, label in enumerate(column_labels):
        wrapped = textwrap.shorten(label, width=max(12, chars * 2), placeholder="...")
        lines = textwrap.wrap(wrapped, width=chars)[:3]
        _draw_text(grid, (label_w + c * cell_w + 4 * text, 4 * text), "\n".join(lines), text)
    for r, label in enumerate(row_labels):
        lines = textwrap.wrap(label, width=max(8, LABEL_WIDTH // 8))[:4]
        _draw_text(grid, (4 * text, header + r * cell_h + 4 * text), "\n".join(lines), text)
        for c in range(cols):
            image = images[r * cols + c].convert("RGB")
            grid.paste(image, (label_w + c * cell_w, header + r * cell_h))
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
