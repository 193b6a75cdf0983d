"""Loading images (modes, alpha, orientation), the integrity probe and the bucket transform."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib_lora.data.buckets import BucketChoice, BucketManager, BucketSettings, crop_ltrb
from lib_lora.data.images import load_image_rgb, probe_image, to_tensor, transform
from support.data_images import pattern, truncate, write_image


def _exif_rotated_jpeg(path: Path, stored: tuple[int, int], orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    pattern(stored).save(path, "JPEG", exif=exif.tobytes())
    return path


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".bmp"])
def test_probe_reads_the_size_and_rejects_truncated_files(tmp_path: Path, ext: str) -> None:
    good = write_image(tmp_path / f"good{ext}", (300, 200))
    assert probe_image(good).size == (300, 200)
    bad = tmp_path / f"bad{ext}"
    bad.write_bytes(good.read_bytes())
    truncate(bad, 0.7)
    with pytest.raises(Exception):  # noqa: B017 - any decoder error: the scan turns it into a reason
        probe_image(bad)


def test_probe_and_load_agree_on_exif_orientation(tmp_path: Path) -> None:
    path = _exif_rotated_jpeg(tmp_path / "phone.jpg", (400, 300), orientation=6)
    assert probe_image(path).size == (300, 400)
    image = load_image_rgb(path)
    assert image.size == (300, 400) and image.mode == "RGB"
    # orientation 6 = rotate 90 clockwise to display: the stored top-left corner ends up top-right
    stored = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    shown = np.asarray(image, dtype=np.int16)
    assert np.abs(shown[0, -1] - stored[0, 0]).max() < 24


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255  # red...
    rgba[:8, :, 3] = 0  # ...invisible in the top half
    rgba[8:, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_image_rgb(tmp_path / "a.png"))
    assert (out[:8] == 255).all()
    assert (out[8:] == [255, 0, 0]).all()


def test_palette_with_transparency_greyscale_cmyk_and_16_bit(tmp_path: Path) -> None:
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (0, 4, 8, 8))
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png", transparency=0)
    out = np.asarray(load_image_rgb(tmp_path / "p.png"))
    assert (out[:4] == 255).all() and (out[4:] == [0, 255, 0]).all()

    Image.new("L", (8, 8), 100).save(tmp_path / "l.png")
    assert (np.asarray(load_image_rgb(tmp_path / "l.png")) == 100).all()

    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert np.asarray(load_image_rgb(tmp_path / "c.jpg")).min() > 240  # no ink = white

    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "i16.png")
    assert (np.asarray(load_image_rgb(tmp_path / "i16.png")) == 255).all()


def test_to_tensor_range() -> None:
    image = Image.fromarray(np.array([[[0, 255, 51]]], np.uint8), "RGB")
    assert to_tensor(image).tolist() == [[[-1.0]], [[1.0]], [[pytest.approx(-0.6)]]]
    assert to_tensor(image).dtype == torch.float32


def test_transform_resizes_crops_centred_and_flips() -> None:
    manager = BucketManager(BucketSettings((512, 512), True, 320, 1280, 64))
    image = pattern((1920, 1080))
    choice = manager.select(image.size)
    assert choice.bucket == (640, 384) and choice.resized == (683, 384)
    out = transform(image, choice)
    assert out.image.shape == (3, 384, 640)
    assert out.image.min() >= -1 and out.image.max() <= 1
    assert out.original_size == (1920, 1080)
    assert out.crop_ltrb == crop_ltrb((640, 384), (1920, 1080))
    # red channel = horizontal gradient: the centred crop trims 21 px left and 22 right of the resized image
    expected_left = (21 / 683) * 2 - 1
    assert out.image[0, 100, 0].item() == pytest.approx(expected_left, abs=0.02)
    flipped = transform(image, choice, flip=True)
    assert torch.equal(flipped.image, torch.flip(out.image, dims=[2]))
    assert flipped.crop_ltrb == out.crop_ltrb  # stored unflipped; crop_top_left mirrors it


def test_random_crop_is_seeded() -> None:
    image = pattern((1000, 600))
    choice = BucketChoice(bucket=(512, 512), resized=(853, 512), ar_error=0.0)
    first = transform(image, choice, random_crop=True, rng=random.Random(4)).image
    second = transform(image, choice, random_crop=True, rng=random.Random(4)).image
    other = [transform(image, choice, random_crop=True, rng=random.Random(s)).image for s in range(5, 9)]
    assert torch.equal(first, second)
    assert any(not torch.equal(first, o) for o in other)


def test_tiny_image_is_upscaled_to_its_bucket() -> None:
    manager = BucketManager(BucketSettings((512, 512), True, 320, 1280, 64))
    choice = manager.select((64, 96))
    assert choice.bucket == (384, 640) and choice.resized == (427, 640)
    out = transform(pattern((64, 96)), choice)
    assert out.image.shape == (3, 640, 384)
