"""Image -> model input, exactly as the official WD tagger Space prepares it.

1. RGBA, alpha-composited onto opaque white (Pillow's ``alpha_composite``), then RGB;
2. padded to a centred white square of side ``max(w, h)`` (left/top offsets rounded down);
3. resized to the model's input size with Pillow's BICUBIC, only when the side differs;
4. float32 in 0..255, channels reversed to BGR, layout HWC (a batch stacks to NHWC).

16-bit greyscale (modes ``I;16*`` and ``I``, as Pillow opens 16-bit PNGs) is first scaled to 8 bits
by rounding ``v / 257``; Pillow's own conversion would clip everything above 255 to white.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

WHITE = (255, 255, 255)
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def _sixteen_to_eight(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.int64)
    values = np.clip(values, 0, 65535)
    return Image.fromarray(((values + 128) // 257).astype(np.uint8), "L")


def to_rgb_on_white(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB with any transparency composited onto white."""
    if image.mode == "RGB":
        return image  # opaque: compositing would change nothing
    if image.mode in _SIXTEEN_BIT:
        image = _sixteen_to_eight(image)
    elif image.mode == "F":
        image = image.convert("L")
    if image.mode != "RGBA":
        try:
            image = image.convert("RGBA")
        except ValueError:  # modes Pillow cannot take to RGBA directly (LAB, HSV, ...)
            image = image.convert("RGB").convert("RGBA")
    canvas = Image.new("RGBA", image.size, WHITE + (255,))
    canvas.alpha_composite(image)
    return canvas.convert("RGB")


def pad_to_square(image: Image.Image) -> Image.Image:
    """Centre ``image`` on a white square of side ``max(w, h)``."""
    width, height = image.size
    side = max(width, height)
    if width == height:
        return image
    square = Image.new("RGB", (side, side), WHITE)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def prepare_image(image: Image.Image, size: int) -> np.ndarray:
    """One image as the tagger's input: float32 ``[size, size, 3]``, BGR, 0..255."""
    square = pad_to_square(to_rgb_on_white(image))
    if square.size[0] != size:
        square = square.resize((size, size), Image.BICUBIC)
    array = np.asarray(square, dtype=np.float32)
    return np.ascontiguousarray(array[:, :, ::-1])


class ImageReadError(Exception):
    """An image file that cannot be decoded (corrupt, truncated, unsupported)."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode ``path`` (first frame of animations); raise :class:`ImageReadError`."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning, palette warnings
            with open(path, "rb") as handle:  # our handle: the decoded image outlives it, no copy
                image = Image.open(handle)
                image.load()
                return image
    except Image.DecompressionBombError:
        raise ImageReadError("the image is too large to decode safely") from None
    except FileNotFoundError:
        raise ImageReadError("the file disappeared") from None
    except Image.UnidentifiedImageError:
        raise ImageReadError("not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        text = str(exc).strip() or type(exc).__name__
        raise ImageReadError(f"cannot decode the image ({text})") from None


def load_and_prepare(path: str | os.PathLike, size: int) -> np.ndarray:
    """:func:`load_image` then :func:`prepare_image`; every failure is an :class:`ImageReadError`."""
    image = load_image(path)
    try:
        return prepare_image(image, size)
    except (OSError, ValueError, MemoryError) as exc:
        raise ImageReadError(f"cannot convert the image ({exc})") from None
