"""Loss masks follow the image's geometry exactly (resize, crop window, flip, EXIF orientation) and
come from a mask folder (red channel) or the image's alpha, as sd-scripts' masked_loss / alpha_mask."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lib_lora.data.buckets import BucketChoice
from lib_lora.data.images import load_and_transform
from lib_lora.data.masks import find_mask_file, load_alpha_mask, load_mask_image, transform_mask


def _halves(path: Path, size: tuple[int, int], mode: str = "RGB") -> None:
    """Left half white/red, right half black."""
    w, h = size
    array = np.zeros((h, w, 3), np.uint8)
    array[:, : w // 2] = 255
    Image.fromarray(array, "RGB").convert(mode).save(path)


def test_mask_gets_the_images_resize_crop_and_flip(tmp_path: Path) -> None:
    _halves(tmp_path / "img.png", (192, 64))
    _halves(tmp_path / "mask.png", (192, 64))
    choice = BucketChoice(bucket=(64, 64), resized=(192, 64), ar_error=0.0)
    for flip in (False, True):
        for seed in range(4):
            done = load_and_transform(
                tmp_path / "img.png", choice, flip=flip, random_crop=True, rng=random.Random(seed)
            )
            mask = transform_mask(load_mask_image(tmp_path / "mask.png"), choice, done.offset, flip)
            lit = (done.image[0] > 0).float()  # where the image is white
            assert mask.shape == (1, 64, 64) and torch.equal(mask[0], lit)
    # the random windows differ, so the check above covered different crops
    offsets = {
        load_and_transform(tmp_path / "img.png", choice, random_crop=True, rng=random.Random(s)).offset
        for s in range(4)
    }
    assert len(offsets) > 1


def test_alpha_mask_and_images_without_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 3] = 0
    rgba[:, 16:, 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    choice = BucketChoice(bucket=(32, 32), resized=(32, 32), ar_error=0.0)
    mask = transform_mask(load_alpha_mask(tmp_path / "a.png"), choice, (0, 0))
    assert float(mask[0, 0, 0]) == 0.0 and abs(float(mask[0, 0, 31]) - 128 / 255) < 1e-6
    Image.new("RGB", (32, 32)).save(tmp_path / "b.png")
    assert load_alpha_mask(tmp_path / "b.png") is None
    assert torch.equal(transform_mask(None, choice, (0, 0)), torch.ones(1, 32, 32))  # no alpha: all learned


def test_exif_rotated_mask_is_upright_like_its_image(tmp_path: Path) -> None:
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    Image.fromarray(array).save(tmp_path / "m.jpg", exif=exif, quality=100)
    mask = load_mask_image(tmp_path / "m.jpg")
    assert mask.size == (20, 40) and np.asarray(mask)[:20].mean() > 200 and np.asarray(mask)[20:].mean() < 50


def test_mask_file_lookup(tmp_path: Path) -> None:
    (tmp_path / "masks" / "5_char").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "masks" / "5_char" / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "masks" / "b.WEBP")
    assert find_mask_file(tmp_path / "masks", "5_char", "data/5_char/a.jpg") == tmp_path / "masks" / "5_char" / "a.png"
    assert find_mask_file(tmp_path / "masks", "5_char", "data/5_char/b.png") == tmp_path / "masks" / "b.WEBP"
    assert find_mask_file(tmp_path / "masks", "5_char", "data/5_char/c.png") is None
