"""Reading an image to clean, and writing the cleaned pixels back in the file's own format.

- **Orientation**: as ``lib_lora.data.images`` (what training sees): the EXIF orientation of JPEG/MPO/
  WebP files is applied, so the mask is painted on the upright image; the result is turned back to the
  stored orientation and the EXIF block is written unchanged, so viewers and training still agree.
- **Alpha**: LaMa sees the image composited on white (as training and the tagger see it); only the
  RGB of masked pixels is replaced, the alpha channel is kept as it was.
- **Unchanged pixels**: PNG, BMP and WebP (written lossless) keep every pixel outside the mask exactly.
  A JPEG is re-encoded with its own quantisation tables and chroma subsampling, so unmasked pixels
  move by JPEG rounding only (a few levels), never by a new quality setting. ICC profile and EXIF are
  carried over. Palette images are written as RGB(A) with the same colours; 16-bit images are refused
  (an 8-bit rewrite would change every pixel).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin

from lib_lora.common.errors import UserError

_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> (the transpose that makes the image upright, the one that undoes it)
_ORIENTATION = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_LEFT_RIGHT),
    3: (Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_180),
    4: (Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.FLIP_TOP_BOTTOM),
    5: (Image.Transpose.TRANSPOSE, Image.Transpose.TRANSPOSE),
    6: (Image.Transpose.ROTATE_270, Image.Transpose.ROTATE_90),
    7: (Image.Transpose.TRANSVERSE, Image.Transpose.TRANSVERSE),
    8: (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270),
}
_ORIENTED_FORMATS = {"JPEG", "MPO", "WEBP"}  # as lib_lora.data.images
WRITABLE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "WEBP": ".webp", "BMP": ".bmp"}
WHITE = (255, 255, 255)


@dataclass
class SourceImage:
    """One image file as read: its exact bytes, its decoded pixels in the stored orientation."""

    path: Path
    data: bytes
    image: Image.Image  # decoded, stored orientation, mode as working mode (RGB, RGBA, L or LA)
    format: str
    orientation: int
    info: dict

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def upright_size(self) -> tuple[int, int]:
        w, h = self.image.size
        return (h, w) if self.orientation in (5, 6, 7, 8) else (w, h)

    def upright(self) -> Image.Image:
        fix = _ORIENTATION.get(self.orientation)
        return self.image.transpose(fix[0]) if fix else self.image

    def upright_rgb(self) -> np.ndarray:
        """uint8 [H, W, 3], upright, transparency composited on white (what LaMa and training see)."""
        image = self.upright()
        if image.mode in ("RGBA", "LA"):
            rgba = image.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, WHITE + (255,))
            canvas.alpha_composite(rgba)
            image = canvas
        return np.asarray(image.convert("RGB"))


def _working_mode(image: Image.Image, path: Path) -> Image.Image:
    mode = image.mode
    if mode in ("RGB", "RGBA", "L", "LA"):
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        raise UserError(
            f"The image {path} has 16-bit or float pixels; cleaning writes 8-bit images, so it is left as it is."
        )
    has_alpha = mode in ("PA", "La", "RGBa") or "transparency" in image.info
    try:
        return image.convert("RGBA" if has_alpha else "RGB")
    except (ValueError, OSError) as exc:
        raise UserError(
            f"The image {path} uses the colour mode {mode}, which cannot be converted to RGB ({exc})."
        ) from None


def read_source(path: str | os.PathLike) -> SourceImage:
    """Read and decode ``path``; one :class:`UserError` for a missing, unreadable or unwritable format."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"The image {path} does not exist.") from None
    except OSError as exc:
        raise UserError(f"The image {path} cannot be read: {exc.strerror or exc}.") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opened = Image.open(io.BytesIO(data))
            opened.load()
    except Exception as exc:  # any decoder failure is the same problem for the user
        text = str(exc).strip() or type(exc).__name__
        raise UserError(f"The image {path} cannot be read ({text}); nothing was changed.") from None
    fmt = opened.format or ""
    if fmt not in WRITABLE_FORMATS:
        raise UserError(f"The image {path} is a {fmt or 'unknown'} file; cleaning writes PNG, JPEG, WebP or BMP only.")
    orientation = 1
    if fmt in _ORIENTED_FORMATS:
        try:
            value = opened.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # unreadable EXIF never makes an image unusable
            value = 1
        orientation = value if value in _ORIENTATION else 1
    info = dict(opened.info)
    if fmt in ("JPEG", "MPO"):
        info["_qtables"] = getattr(opened, "quantization", None)
        info["_subsampling"] = JpegImagePlugin.get_sampling(opened) if opened.mode in ("RGB", "YCbCr") else -1
    return SourceImage(path, data, _working_mode(opened, path), fmt, orientation, info)


def apply_result(source: SourceImage, upright_result: np.ndarray, upright_mask: np.ndarray) -> Image.Image:
    """The stored image with the masked pixels' colour replaced by ``upright_result``'s (alpha kept)."""
    fix = _ORIENTATION.get(source.orientation)
    result = Image.fromarray(upright_result)
    mask = Image.fromarray(upright_mask.astype(np.uint8) * 255, "L")
    if fix:  # back to the stored orientation: transposes are exact pixel permutations
        result, mask = result.transpose(fix[1]), mask.transpose(fix[1])
    stored = np.array(source.image)
    where = np.asarray(mask) > 0
    colours = np.asarray(result)
    if source.image.mode in ("RGB", "RGBA"):
        stored[..., :3][where] = colours[where]
    else:  # L / LA: the grey value Pillow's RGB -> L conversion gives
        grey = np.asarray(result.convert("L"))
        if stored.ndim == 2:
            stored[where] = grey[where]
        else:
            stored[..., 0][where] = grey[where]
    return Image.fromarray(stored, source.image.mode)


def encode_like(source: SourceImage, image: Image.Image) -> bytes:
    """``image`` encoded in ``source``'s format with its metadata (see the module docstring)."""
    info = source.info
    options: dict = {}
    if info.get("icc_profile"):
        options["icc_profile"] = info["icc_profile"]
    if info.get("exif"):
        options["exif"] = info["exif"]
    fmt = "JPEG" if source.format == "MPO" else source.format
    if fmt == "JPEG":
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        if info.get("_qtables"):
            options["qtables"] = info["_qtables"]
            if info.get("_subsampling", -1) in (0, 1, 2):
                options["subsampling"] = info["_subsampling"]
        else:
            options["quality"] = 95
        if info.get("progressive") or info.get("progression"):
            options["progressive"] = True
    elif fmt == "WEBP":
        options.update(lossless=True, exact=True, quality=100)
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.mode else "RGB")
    elif fmt == "PNG":
        if info.get("dpi"):
            options["dpi"] = info["dpi"]
    elif fmt == "BMP":
        options.pop("exif", None)
        options.pop("icc_profile", None)
        if image.mode == "LA":
            image = image.convert("RGBA")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
