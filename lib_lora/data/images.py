"""Reading training images and turning them into bucket-sized tensors.

* :func:`probe_image` — size and a full decode, used by the dataset scan and the caption editor.
* :func:`load_image_rgb` — the decoded image as RGB, upright, transparency composited on white.
* :func:`transform` — cover-resize to the bucket choice, crop, flip, to a [-1, 1] float tensor.

Orientation: JPEG/WebP EXIF orientation is applied, so an image trains the way a viewer shows it
(sd-scripts ignores it and trains rotated phone photos sideways). The probed size is the upright
size, and bucket choices are made from it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from lib_lora.data.buckets import BucketChoice, Size, crop_ltrb, crop_offsets

_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that makes the image upright
_ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTED_FORMATS = {"JPEG", "MPO", "WEBP"}
BACKGROUND = (255, 255, 255)  # transparent pixels become white (as the WD taggers see them)


class ImageProbe(NamedTuple):
    size: Size  # upright (width, height)
    orientation: int  # EXIF orientation, 1 = as stored


def _orientation(image: Image.Image) -> int:
    if image.format not in _ORIENTED_FORMATS:
        return 1
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # unreadable EXIF never makes an image unusable
        return 1
    return value if value in _ORIENTATION_FIX else 1


def _upright_size(size: Size, orientation: int) -> Size:
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def probe_image(path: str | Path) -> ImageProbe:
    """Read ``path``'s header and decode it completely; raise on a corrupt or truncated file.

    Every pixel is decoded (JPEG at 1/8 scale in draft mode, which still reads the whole stream), so
    a file that would stop training later (a PNG with valid CRCs around a broken zlib stream, a
    truncated JPEG) is found by the scan instead. Raises ``OSError``/``ValueError``/... from PIL.
    This is the one image check: the training scan and the caption editor both use it.
    """
    with Image.open(path) as image:
        size = image.size
        orientation = _orientation(image)
        if image.format in ("JPEG", "MPO"):
            image.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
        image.load()
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"invalid image size {size[0]}x{size[1]}")
    return ImageProbe(_upright_size(size, orientation), orientation)


def _flatten(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16-bit / float greyscale: scale to 8 bits instead of clipping
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, "L")
        mode = "L"
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return image.convert("RGB")
    return image


def load_image_rgb(path: str | Path) -> Image.Image:
    """``path`` decoded as an upright 8-bit RGB image (EXIF orientation applied, alpha on white;
    greyscale, palette, CMYK and 16-bit images converted)."""
    with Image.open(path) as image:
        orientation = _orientation(image)
        image.load()
        result = _flatten(image)
        if result is image:
            result = image.copy()
    fix = _ORIENTATION_FIX.get(orientation)
    return result.transpose(fix) if fix is not None else result


def resize(image: Image.Image, size: Size) -> Image.Image:
    """Resize as sd-scripts' default: area averaging when shrinking, Lanczos when enlarging.

    (sd-scripts uses OpenCV's INTER_AREA; PIL's BOX filter is the same area average without OpenCV.)
    """
    if image.size == tuple(size):
        return image
    shrinking = image.size[0] >= size[0] and image.size[1] >= size[1]
    return image.resize(tuple(size), Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> float32 tensor [3, H, W] in [-1, 1] (torchvision ToTensor + Normalize(0.5, 0.5))."""
    array = np.asarray(image, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
    return tensor.to(torch.float32).div(255).sub(0.5).div(0.5)


class Transformed(NamedTuple):
    image: torch.Tensor  # [3, H, W] float32 in [-1, 1], H, W = the bucket
    crop_ltrb: tuple[float, float, float, float]  # sd-scripts' value; see buckets.crop_top_left
    original_size: Size  # (width, height) before resizing
    offset: tuple[int, int] = (0, 0)  # (left, top) of the crop window in the resized image (for its mask)


def transform(
    image: Image.Image,
    choice: BucketChoice,
    flip: bool = False,
    random_crop: bool = False,
    rng: random.Random | None = None,
) -> Transformed:
    """Resize ``image`` to ``choice.resized``, crop it to ``choice.bucket`` (centred, or at a
    random offset), mirror it when ``flip``, and convert it to a tensor.

    ``crop_ltrb`` is sd-scripts' SDXL crop box for the unflipped image; the SDXL conditioning
    value for a flipped sample comes from :func:`lib_lora.data.buckets.crop_top_left`.
    """
    original_size = image.size
    resized = resize(image, choice.resized)
    left, top = crop_offsets(choice.resized, choice.bucket, random_crop, rng)
    bucket_w, bucket_h = choice.bucket
    if (left, top) != (0, 0) or resized.size != (bucket_w, bucket_h):
        resized = resized.crop((left, top, left + bucket_w, top + bucket_h))
    if flip:
        resized = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return Transformed(to_tensor(resized), crop_ltrb(choice.bucket, original_size), original_size, (left, top))


def load_and_transform(
    path: str | Path,
    choice: BucketChoice,
    flip: bool = False,
    random_crop: bool = False,
    rng: random.Random | None = None,
    loader: Callable[[str | Path], Image.Image] = load_image_rgb,
) -> Transformed:
    """:func:`load_image_rgb` then :func:`transform`."""
    return transform(loader(path), choice, flip, random_crop, rng)
