"""Preprocessing matches arrays computed by hand, bit for bit (float32), for every image mode.

The hand computation follows the official tagger's recipe: composite onto white, pad to a centred
white square (offsets rounded down), resize with BICUBIC only when the side differs, BGR float32.
Pillow's alpha compositing onto opaque white rounds ``(v * a + 255 * (255 - a)) / 255`` half up.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_lora.tagger.preprocess import ImageReadError, load_and_prepare, load_image, prepare_image

RNG = np.random.default_rng(1234)


def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 RGB composited onto white, rounded half up (integer arithmetic)."""
    rgb = rgb.astype(np.int64)
    a = alpha.astype(np.int64)[..., None]
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def pad_white(rgb: np.ndarray) -> np.ndarray:
    h, w, _ = rgb.shape
    side = max(h, w)
    out = np.full((side, side, 3), 255, dtype=np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = rgb
    return out


def model_input(rgb_square: np.ndarray) -> np.ndarray:
    return rgb_square.astype(np.float32)[:, :, ::-1]


def assert_bit_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape
    assert actual.tobytes() == np.ascontiguousarray(expected, dtype=np.float32).tobytes()


def test_rgb_is_padded_centred_and_reversed_to_bgr() -> None:
    rgb = RNG.integers(0, 256, (5, 3, 3), dtype=np.uint8)  # 3 wide, 5 high
    out = prepare_image(Image.fromarray(rgb, "RGB"), 5)
    expected = np.full((5, 5, 3), 255, dtype=np.uint8)
    expected[:, 1:4] = rgb  # (5 - 3) // 2 = 1 column of white on the left, 1 on the right
    assert_bit_equal(out, expected.astype(np.float32)[:, :, ::-1])
    assert out[0, 1].tolist() == [float(rgb[0, 0, 2]), float(rgb[0, 0, 1]), float(rgb[0, 0, 0])]  # B, G, R


def test_odd_padding_puts_the_extra_pixel_after_the_image() -> None:
    rgb = RNG.integers(0, 256, (4, 7, 3), dtype=np.uint8)  # 7 wide, 4 high: 3 rows of padding
    out = prepare_image(Image.fromarray(rgb, "RGB"), 7)
    assert (out[0] == 255).all()  # one row above
    assert (out[5:] == 255).all()  # two rows below
    assert_bit_equal(out[1:5], rgb.astype(np.float32)[:, :, ::-1])


def test_rgba_is_composited_onto_white() -> None:
    rgb = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (4, 6), dtype=np.uint8)
    alpha[0, 0], alpha[0, 1], alpha[1, 0] = 0, 255, 128
    image = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    expected = model_input(pad_white(over_white(rgb, alpha)))
    out = prepare_image(image, 6)
    assert_bit_equal(out, expected)
    assert out[1, 0].tolist() == [255.0, 255.0, 255.0]  # fully transparent pixel -> white (row 1: padding above)


def test_la_grey_with_alpha() -> None:
    grey = RNG.integers(0, 256, (3, 3), dtype=np.uint8)
    alpha = np.array([[0, 255, 100], [7, 250, 255], [128, 1, 0]], dtype=np.uint8)
    image = Image.fromarray(np.dstack([grey, alpha]), "LA")
    expected = model_input(over_white(np.repeat(grey[..., None], 3, axis=2), alpha))
    assert_bit_equal(prepare_image(image, 3), expected)


def test_palette_with_transparent_index() -> None:
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette.ravel().tolist())
    image.info["transparency"] = 2  # index 2 is transparent (GIF style / PNG tRNS)
    rgb = palette[indices]
    rgb[indices == 2] = 255
    assert_bit_equal(prepare_image(image, 4), model_input(pad_white(rgb)))


def test_palette_with_per_entry_alpha_from_a_png(tmp_path: Path) -> None:
    palette = RNG.integers(0, 256, (4, 3), dtype=np.uint8)
    alphas = bytes([255, 0, 90, 200])
    indices = np.array([[0, 1], [2, 3], [3, 0]], dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette.ravel().tolist())
    path = tmp_path / "p.png"
    image.save(path, transparency=alphas)
    reopened = load_image(path)
    assert reopened.mode == "P"
    expected = over_white(palette[indices], np.frombuffer(alphas, dtype=np.uint8)[indices])
    assert_bit_equal(prepare_image(reopened, 3), model_input(pad_white(expected)))


def test_greyscale_l() -> None:
    grey = RNG.integers(0, 256, (2, 5), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    assert_bit_equal(prepare_image(Image.fromarray(grey, "L"), 5), model_input(pad_white(rgb)))


def test_one_bit() -> None:
    grey = np.array([[255, 0, 255], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)
    image = Image.fromarray(grey, "L").convert("1", dither=Image.Dither.NONE)
    assert image.mode == "1"
    rgb = np.repeat(grey[..., None], 3, axis=2)
    assert_bit_equal(prepare_image(image, 3), model_input(rgb))


def test_cmyk() -> None:
    cmyk = RNG.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    c = cmyk[..., :3].astype(np.int64)
    not_k = 255 - cmyk[..., 3:4].astype(np.int64)
    rgb = (not_k - (c * not_k + 127) // 255).astype(np.uint8)  # (255-c)(255-k)/255, rounded half up
    assert_bit_equal(prepare_image(Image.fromarray(cmyk, "CMYK"), 4), model_input(pad_white(rgb)))


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    values = np.array([[0, 128, 129, 257], [300, 32896, 65278, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    grey = ((values.astype(np.int64) + 128) // 257).astype(np.uint8)  # round(v / 257)
    assert grey.tolist() == [[0, 0, 1, 1], [1, 128, 254, 255]]
    expected = model_input(pad_white(np.repeat(grey[..., None], 3, axis=2)))
    assert_bit_equal(prepare_image(image, 4), expected)


def test_sixteen_bit_png_opens_as_mode_i_and_matches(tmp_path: Path) -> None:
    values = RNG.integers(0, 65536, (3, 3), dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    image = load_image(path)
    assert image.mode == "I"
    grey = ((values.astype(np.int64) + 128) // 257).astype(np.uint8)
    assert_bit_equal(prepare_image(image, 3), model_input(np.repeat(grey[..., None], 3, axis=2)))


def test_resized_with_bicubic_only_when_the_side_differs() -> None:
    rgba = RNG.integers(0, 256, (4, 7, 4), dtype=np.uint8)
    image = Image.fromarray(rgba, "RGBA")
    padded = pad_white(over_white(rgba[..., :3], rgba[..., 3]))  # 7 x 7
    resized = np.asarray(Image.fromarray(padded, "RGB").resize((5, 5), Image.BICUBIC))
    assert_bit_equal(prepare_image(image, 5), model_input(resized))
    # same side: no resampling at all (a resize to the same size would still be a no-op, but the
    # padded pixels must come through untouched)
    assert_bit_equal(prepare_image(image, 7), model_input(padded))


def test_output_is_contiguous_hwc() -> None:
    out = prepare_image(Image.new("RGB", (10, 6), (10, 20, 30)), 8)
    assert out.shape == (8, 8, 3) and out.flags["C_CONTIGUOUS"]


def test_broken_files_raise_image_read_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(good, "PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    for path in (text, empty, truncated, tmp_path / "missing.png"):
        with pytest.raises(ImageReadError):
            load_and_prepare(path, 8)


def test_loaded_image_is_usable_after_its_file_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "a.webp"
    Image.new("RGB", (5, 5), (0, 0, 255)).save(path, lossless=True)
    image = load_image(path)
    path.unlink()  # the decoded pixels do not depend on the file any more
    assert prepare_image(image, 5)[2, 2].tolist() == [255.0, 0.0, 0.0]
