"""Generated test images for the importer and dedupe tests: distinct, structured, quick to make."""

from __future__ import annotations

import functools
import io
from pathlib import Path

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


@functools.lru_cache(maxsize=512)
def image_bytes(seed: int, fmt: str = "PNG", size: tuple[int, int] = (160, 120)) -> bytes:
    """Encoded bytes of :func:`smooth_image` (``fmt`` PNG, JPEG, WEBP, GIF)."""
    image = smooth_image(seed, size)
    if fmt.upper() == "JPEG":
        return encode(image, "JPEG", quality=90)
    return encode(image, fmt.upper())


def planted_dataset(root: Path) -> dict[str, set[str]]:
    """A dataset with planted duplicates and look-alikes; returns what dedupe must do with it.

    ``moved``: files that must go to _duplicates/ (relative paths); ``kept``: the copy kept of
    each group; ``review``: pairs (as "a|b", sorted) that must be listed but not moved; the other
    images are all different and must be left alone.
    """
    subset, style = root / "10_irene", root / "5_style"
    subset.mkdir(parents=True)
    style.mkdir(parents=True)

    def caption(path: Path, text: str = "1girl, solo") -> None:
        path.with_suffix(".txt").write_text(text, encoding="utf-8")

    # A: the original PNG, a half-size copy and a re-encoded JPEG of the same size
    a = smooth_image(1, (512, 384), shapes=10)
    a.save(subset / "a.png")
    a.resize((256, 192), Image.LANCZOS).save(subset / "a_small.png")
    a.save(subset / "a.jpg", quality=85)
    caption(subset / "a.png")
    caption(subset / "a_small.png", "small copy")
    # B: a JPEG and a PNG saved from it (identical pixels): the JPEG stays
    smooth_image(2, (640, 480), shapes=10).save(subset / "b.jpg", quality=95)
    with Image.open(subset / "b.jpg") as decoded:
        decoded.save(subset / "b.png")
    # C: the same file twice, in two subsets
    smooth_image(3, (300, 300), shapes=10).save(subset / "c.png")
    (style / "c_copy.png").write_bytes((subset / "c.png").read_bytes())
    caption(subset / "c.png")
    caption(style / "c_copy.png", "copy caption")
    # D: the same JPEG at two qualities: the larger file stays
    d = smooth_image(4, (400, 300), shapes=10)
    d.save(subset / "d.jpg", quality=92)
    d.save(subset / "d_q60.jpg", quality=60)
    # E: a small crop; F: a recolour; G: transparent vs. white background -> review, never moved
    e = smooth_image(5, (512, 384), shapes=10)
    e.save(subset / "e.png")
    e.crop((10, 8, 502, 376)).save(subset / "e_crop.png")
    f = smooth_image(6, (512, 384), shapes=10)
    f.save(subset / "f.png")
    tinted = np.asarray(f).astype(np.float32)
    tinted[..., 0] *= 0.8
    tinted[..., 2] = tinted[..., 2] * 0.8 + 50
    Image.fromarray(np.clip(tinted, 0, 255).astype(np.uint8)).save(subset / "f_tint.png")
    g = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    ImageDraw.Draw(g).ellipse((40, 30, 200, 220), fill=(200, 40, 60, 255))
    ImageDraw.Draw(g).rectangle((90, 90, 150, 240), fill=(20, 120, 200, 255))
    g.save(style / "g.png")
    white = Image.new("RGBA", g.size, (255, 255, 255, 255))
    Image.alpha_composite(white, g).convert("RGB").save(style / "g_white.png")
    # different pictures
    for seed in range(10, 14):
        smooth_image(seed, (320, 240), shapes=10).save(style / f"other{seed}.png")
    # flat images: two with the same pixels (different bytes), one of another colour
    Image.new("RGB", (100, 100), (200, 100, 50)).save(style / "flat.png", compress_level=9)
    Image.new("RGB", (100, 100), (200, 100, 50)).save(style / "flat_again.bmp")
    Image.new("RGB", (100, 100), (20, 100, 250)).save(style / "flat_blue.png")
    # an unreadable file
    (style / "broken.png").write_bytes((subset / "c.png").read_bytes()[:200])
    return {
        "moved": {
            "10_irene/a_small.png",
            "10_irene/a.jpg",
            "10_irene/b.png",
            "5_style/c_copy.png",
            "10_irene/d_q60.jpg",
            "5_style/flat_again.bmp",
        },  # fmt: skip
        "kept": {"10_irene/a.png", "10_irene/b.jpg", "10_irene/c.png", "10_irene/d.jpg", "5_style/flat.png"},
        "review": {
            "10_irene/e.png|10_irene/e_crop.png",
            "10_irene/f.png|10_irene/f_tint.png",
            "5_style/g.png|5_style/g_white.png",
        },  # fmt: skip
        "skipped": {"5_style/broken.png"},
    }
