"""Generated test images for the importer and dedupe tests: distinct, structured, quick to make."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def smooth_image(seed: int, size: tuple[int, int] = (160, 120), shapes: int = 6) -> Image.Image:
    """A smooth random RGB picture with a few shapes: every seed gives a visibly different image,
    with enough structure for a perceptual hash to tell them apart."""
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    base = Image.fromarray(coarse, "RGB").resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(base)
    for _ in range(shapes):
        x0, x1 = sorted(rng.integers(0, width, size=2).tolist())
        y0, y1 = sorted(rng.integers(0, height, size=2).tolist())
        x1, y1 = max(x1, x0 + width // 8), max(y1, y0 + height // 8)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    return base


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def image_bytes(seed: int, fmt: str = "PNG", size: tuple[int, int] = (160, 120)) -> bytes:
    """Encoded bytes of :func:`smooth_image` (``fmt`` PNG, JPEG, WEBP, GIF)."""
    image = smooth_image(seed, size)
    if fmt.upper() == "JPEG":
        return encode(image, "JPEG", quality=90)
    return encode(image, fmt.upper())
