"""Loss masks for sd-scripts' ``masked_loss`` / ``alpha_mask``.

A mask weights the loss per latent pixel (1 = trained, 0 = ignored). It comes from either
- a mask folder (``conditioning_data_dir``, as sd-scripts' conditioning images): an image with the
  training image's stem, in ``<folder>/<subset folder>/`` or directly in ``<folder>/``; its red
  channel / 255 is the mask; or
- the training image's own alpha channel / 255 (``alpha_mask``; an image without alpha is all 1).

The mask goes through exactly the image's geometry: EXIF orientation, cover-resize to the bucket
choice (same filter), the same crop window, the same flip. It does not change the latents, so the
latent cache is unaffected by it: masks are read at batch time (a changed mask applies at once).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lib_lora.data.buckets import BucketChoice
from lib_lora.data.images import _ORIENTATION_FIX, _orientation, resize

MASK_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def find_mask_file(mask_dir: str | Path, subset_folder: str, image: str | Path) -> Path | None:
    """The mask for ``image``: ``<mask_dir>/<subset_folder>/<stem>.*``, else ``<mask_dir>/<stem>.*``."""
    stem = Path(image).stem
    for folder in (Path(mask_dir) / subset_folder, Path(mask_dir)):
        for ext in MASK_EXTENSIONS:
            for candidate in (folder / (stem + ext), folder / (stem + ext.upper())):
                if candidate.is_file():
                    return candidate
    return None


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    fix = _ORIENTATION_FIX.get(orientation)
    return image.transpose(fix) if fix is not None else image


def load_mask_image(path: str | Path) -> Image.Image:
    """A mask file's red channel as an upright 8-bit ``L`` image."""
    with Image.open(path) as image:
        orientation = _orientation(image)
        image.load()
        red = image.convert("RGB").getchannel("R")
    return _upright(red, orientation)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info


def has_alpha(path: str | Path) -> bool:
    """Whether the image has an alpha channel (its header only): what ``alpha_mask`` masks with."""
    with Image.open(path) as image:
        return _has_alpha(image)


def load_alpha_mask(path: str | Path) -> Image.Image | None:
    """The training image's alpha channel as an upright ``L`` image; None when it has no alpha."""
    with Image.open(path) as image:
        orientation = _orientation(image)
        image.load()
        if not _has_alpha(image):
            return None
        alpha = image.convert("RGBA").getchannel("A")
    return _upright(alpha, orientation)


def transform_mask(
    mask: Image.Image | None, choice: BucketChoice, offset: tuple[int, int], flip: bool = False
) -> torch.Tensor:
    """``mask`` resized to ``choice.resized`` (the image's filter), cropped at ``offset`` (the image's
    crop window) to ``choice.bucket``, mirrored when ``flip``: float32 [1, H, W] in 0..1. None = all 1."""
    bucket_w, bucket_h = choice.bucket
    if mask is None:
        return torch.ones(1, bucket_h, bucket_w)
    resized = resize(mask, choice.resized)
    left, top = offset
    if (left, top) != (0, 0) or resized.size != (bucket_w, bucket_h):
        resized = resized.crop((left, top, left + bucket_w, top + bucket_h))
    if flip:
        resized = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(resized, dtype=np.uint8).astype(np.float32) / 255.0
    return torch.from_numpy(array.copy()).unsqueeze(0)


class MaskSource:
    """The masks of a scanned dataset: ``mask_dir`` (a mask folder) or ``alpha`` (the images' alpha).
    The loaded masks are kept (small ``L`` images) and transformed per sample."""

    def __init__(self, scan, mask_dir: str | Path | None = None, alpha: bool = False) -> None:
        self.scan = scan
        self.mask_dir = Path(mask_dir) if mask_dir else None
        self.alpha = alpha
        self._loaded: dict[int, Image.Image | None] = {}

    def missing(self) -> list[Path]:
        """Training images without a mask file (mask folder only; regularization images without one
        are learned whole)."""
        if self.mask_dir is None:
            return []
        return [
            item.path
            for item in self.scan.items
            if not getattr(self.scan.subsets[item.subset], "is_reg", False)
            and find_mask_file(self.mask_dir, self.scan.subsets[item.subset].name, item.path) is None
        ]

    def image(self, item_index: int) -> Image.Image | None:
        if item_index not in self._loaded:
            item = self.scan.items[item_index]
            if self.mask_dir is not None:
                path = find_mask_file(self.mask_dir, self.scan.subsets[item.subset].name, item.path)
                self._loaded[item_index] = None if path is None else load_mask_image(path)
            else:
                self._loaded[item_index] = load_alpha_mask(item.path)
        return self._loaded[item_index]

    def tensor(self, item_index: int, choice: BucketChoice, offset: tuple[int, int], flip: bool) -> torch.Tensor:
        return transform_mask(self.image(item_index), choice, offset, flip)
