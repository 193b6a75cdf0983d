"""Small generated images and dataset folders for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def pattern(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """An RGB image with a horizontal and a vertical gradient plus a little noise (no symmetry)."""
    width, height = size
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None].repeat(width, 1)
    noise = rng.integers(0, 24, size=(height, width))
    array = np.stack([x, y, (x + y + noise) % 256], axis=-1)
    return Image.fromarray(array.astype(np.uint8), "RGB")


def write_image(path: Path, size: tuple[int, int], seed: int = 0, **save_args: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = pattern(size, seed)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}[path.suffix.lower()]
    image.save(path, fmt, **save_args)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to a fraction of its bytes (a half-downloaded image)."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def make_dataset(root: Path, folders: dict[str, list[tuple[str, tuple[int, int], str | None]]]) -> Path:
    """``{"10_irene": [("a.png", (640, 480), "irene, 1girl"), ...]}``; caption None = no caption file."""
    for folder, images in folders.items():
        for index, (name, size, caption) in enumerate(images):
            path = write_image(root / folder / name, size, seed=index)
            if caption is not None:
                path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return root


def listing(root: Path) -> list[tuple[str, int, int]]:
    """Every file under ``root`` with its size and mtime (to prove nothing was written)."""
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def corrupt_zlib_png(path: Path, size: tuple[int, int] = (320, 320)) -> Path:
    """A PNG whose chunks all carry valid CRCs but whose IDAT zlib stream is broken in the middle
    (PIL's ``verify()`` passes it; decoding the pixels fails)."""
    import struct
    import zlib

    write_image(path, size)
    data = bytearray(path.read_bytes())
    pos = 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kind = bytes(data[pos + 4 : pos + 8])
        if kind == b"IDAT":
            body = pos + 8
            for k in range(length // 3, length // 3 + 64):  # garbage in the middle of the deflate stream
                data[body + k] ^= 0x5A
            crc = zlib.crc32(bytes(data[pos + 4 : body + length])) & 0xFFFFFFFF
            data[body + length : body + length + 4] = struct.pack(">I", crc)
            break
        pos += 12 + length
    path.write_bytes(bytes(data))
    return path
