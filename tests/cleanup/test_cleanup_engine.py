"""The LaMa engine with tiny ONNX models that have LaMa's exact signatures (both export forms):
the masked region is replaced, every other pixel is kept, originals come back byte for byte, and
big, odd-sized, transparent and EXIF-rotated images round-trip."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_lora.cleanup import history
from lib_lora.cleanup.clean import clean_folder, clean_image, load_lama, preview_clean, restore_folder, write_preview
from lib_lora.cleanup.lama import FOUR_CHANNEL, IMAGE_MASK, mask_boxes, output_to_rgb, to_model_input
from lib_lora.common.errors import UserError
from support.lama_tiny import write_model
from support.tagger_files import deny_writes_in, snapshot

FORMS = [IMAGE_MASK, FOUR_CHANNEL]
BACKGROUND = (40, 120, 200)
MARK = (250, 20, 20)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("lama")
    return {
        IMAGE_MASK: write_model(folder / "lama_fp32.onnx", IMAGE_MASK),
        FOUR_CHANNEL: write_model(folder / "lama_4ch.onnx", FOUR_CHANNEL),
    }


def lama(models: dict[str, Path], form: str):
    return load_lama(str(models[form]), device="cpu")


def textured(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A flat background with fine noise: any changed pixel outside the mask would show."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-6, 7, size=(height, width, 3))
    return np.clip(np.array(BACKGROUND) + noise, 0, 255).astype(np.uint8)


def marked(
    width: int, height: int, boxes: list[tuple[int, int, int, int]], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(image with red marks, the mask covering them with 3 px to spare)."""
    rgb = textured(width, height, seed)
    mask = np.zeros((height, width), dtype=bool)
    for left, top, right, bottom in boxes:
        rgb[top:bottom, left:right] = MARK
        mask[max(0, top - 3) : bottom + 3, max(0, left - 3) : right + 3] = True
    return rgb, mask


def save(array: np.ndarray, path: Path, **kwargs) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


def assert_cleaned(
    before: np.ndarray, after: np.ndarray, mask: np.ndarray, exact_outside: bool = True, filled: bool = True
) -> None:
    if exact_outside:
        assert np.array_equal(after[~mask], before[~mask]), "pixels outside the mask changed"
    else:  # JPEG: blocks (16 px MCUs) that hold masked pixels are re-encoded; the rest moves by rounding only
        near = np.zeros_like(mask)
        ys, xs = np.nonzero(mask)
        near[max(0, ys.min() - 16) : ys.max() + 17, max(0, xs.min() - 16) : xs.max() + 17] = True
        assert np.abs(after[~near].astype(int) - before[~near].astype(int)).max() <= 3
    assert not (after[mask][:, 0] > 200).any(), "the red mark is still there"
    if filled:  # the hole holds the background colour (the tiny model fills with the context's mean)
        assert np.abs(after[mask].astype(int) - np.array(BACKGROUND)).max() <= 8


# ------------------------------------------------------------------------------ the model's contract


def test_contract_is_read_from_the_model(models: dict[str, Path]) -> None:
    carve = lama(models, IMAGE_MASK).contract
    assert (carve.form, carve.inputs, carve.output, carve.size) == (IMAGE_MASK, ("image", "mask"), "output", (512, 512))
    dynamic = lama(models, FOUR_CHANNEL).contract
    assert (dynamic.form, dynamic.inputs, dynamic.size, dynamic.multiple) == (FOUR_CHANNEL, ("input",), None, 32)


def test_inputs_are_prepared_as_the_real_exports_expect(models: dict[str, Path]) -> None:
    rgb = np.full((64, 64, 3), 255, dtype=np.uint8)
    rgb[0, 0] = (51, 102, 0)
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:20, 10:20] = True
    feed = to_model_input(lama(models, IMAGE_MASK).contract, rgb, mask)
    image, hole = feed["image"], feed["mask"]
    assert image.shape == (1, 3, 64, 64) and image.dtype == np.float32  # CHW RGB, 0..1 (np.array / 255)
    assert np.allclose(image[0, :, 0, 0], [0.2, 0.4, 0.0]) and image.max() == 1.0
    assert hole.shape == (1, 1, 64, 64) and set(np.unique(hole)) == {0.0, 1.0} and hole.sum() == 100
    (packed,) = to_model_input(lama(models, FOUR_CHANNEL).contract, rgb, mask).values()
    assert packed.shape == (1, 4, 64, 64)
    assert packed[0, :3, 10:20, 10:20].max() == 0.0  # the hole is zeroed in the RGB channels
    assert np.array_equal(packed[0, 3], mask.astype(np.float32))


def test_output_range_follows_the_export() -> None:
    """Carve's graph returns 0..255 (clamp(inpainted * 255)), g-ronimo's 0..1: both read right."""
    rgb = textured(32, 32)
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:16, 8:16] = True
    chw = rgb.transpose(2, 0, 1)[None].astype(np.float32)
    assert np.array_equal(output_to_rgb(chw, rgb, mask), rgb)
    assert np.array_equal(output_to_rgb(chw / 255.0, rgb, mask), rgb)


@pytest.mark.parametrize(
    "shape, found",
    [([1, 3, 512, 512], "x tensor(float) [1, 3, 512, 512]"), ([1, 448, 448, 3], "[1, 448, 448, 3]")],
)
def test_a_model_with_other_inputs_is_refused_in_one_sentence(tmp_path: Path, shape: list, found: str) -> None:
    import onnx

    from support.lama_tiny import build_other

    path = tmp_path / "other.onnx"
    onnx.save(build_other(shape), str(path))
    with pytest.raises(UserError) as caught:
        load_lama(str(path), device="cpu")
    text = str(caught.value)
    assert "is not a LaMa inpainting model" in text and found in text
    assert text.count(". ") == 0 and text.endswith(".")


def test_a_missing_model_is_one_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError, match="lama-carve is not in the Hugging Face cache and downloads are turned off"):
        load_lama("lama-carve", allow_download=False)
    with pytest.raises(UserError, match="does not exist"):
        load_lama(str(tmp_path / "nothing.onnx"))
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="is not a valid ONNX model file"):
        load_lama(str(tmp_path / "broken.onnx"), device="cpu")


def test_the_registry_model_is_fetched_once_into_the_hub_cache(
    tmp_path: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    from lib_lora.cleanup.models import MODELS, resolve_lama
    from support.tagger_hub import FakeHub

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    spec = MODELS["lama-carve"]
    content = models[IMAGE_MASK].read_bytes()
    with FakeHub({(spec.repo_id, spec.filename): content}) as hub:
        first = resolve_lama("lama-carve", endpoint=hub.endpoint, cache_dir=tmp_path / "hub")
        downloads = [r for r in hub.requests if r[0] == "GET"]
        second = resolve_lama("lama-carve", endpoint=hub.endpoint, cache_dir=tmp_path / "hub")
    assert first.source == "download" and second.source == "cache"
    assert second.path.read_bytes() == content and len(downloads) == 1
    assert "models--Carve--LaMa-ONNX" in str(second.path)


# ------------------------------------------------------------------------------ regions


def test_far_apart_marks_are_processed_in_their_own_boxes() -> None:
    mask = np.zeros((2000, 3000), dtype=bool)
    mask[1900:1960, 2700:2980] = True  # watermark, bottom right
    mask[40:90, 30:200] = True  # signature, top left
    boxes = mask_boxes(mask, margin=128, min_side=(512, 512))
    assert len(boxes) == 2
    for left, top, right, bottom in boxes:
        assert right - left <= 600 and bottom - top <= 600  # never the whole 3000x2000 image
        assert right - left >= 512 and bottom - top >= 512  # grown to the model's size, no upscaling


# ------------------------------------------------------------------------------ files


@pytest.mark.parametrize("form", FORMS)
def test_clean_replaces_the_mask_and_keeps_every_other_pixel(tmp_path: Path, models, form: str) -> None:
    rgb, mask = marked(640, 480, [(300, 200, 420, 240)])
    image = save(rgb, tmp_path / "a.png")
    original = image.read_bytes()
    clean_image(image, mask, lama(models, form), root=tmp_path)
    after = np.asarray(Image.open(image))
    assert_cleaned(rgb, after, mask)
    kept = tmp_path / ".clean-history" / "a.png" / "0001.png"
    assert kept.read_bytes() == original
    history.restore(tmp_path, image)
    assert image.read_bytes() == original
    assert not (tmp_path / ".clean-history").exists()


@pytest.mark.parametrize("form", FORMS)
def test_big_image_round_trips_at_full_resolution(tmp_path: Path, models, form: str) -> None:
    rgb, mask = marked(3000, 2000, [(2700, 1900, 2980, 1960), (30, 40, 200, 90)], seed=3)
    image = save(rgb, tmp_path / "big.png")
    original = image.read_bytes()
    clean_image(image, mask, lama(models, form), root=tmp_path)
    after = np.asarray(Image.open(image))
    assert after.shape == (2000, 3000, 3)
    assert_cleaned(rgb, after, mask)
    history.restore(tmp_path, image)
    assert image.read_bytes() == original


@pytest.mark.parametrize("form", FORMS)
def test_odd_sized_image(tmp_path: Path, models, form: str) -> None:
    rgb, mask = marked(513, 777, [(0, 700, 140, 777), (480, 0, 513, 30)], seed=5)  # marks touching the edges
    image = save(rgb, tmp_path / "odd.png")
    original = image.read_bytes()
    clean_image(image, mask, lama(models, form), root=tmp_path)
    assert_cleaned(rgb, np.asarray(Image.open(image)), mask)
    history.restore(tmp_path, image)
    assert image.read_bytes() == original


def test_rgba_keeps_its_alpha_and_colours(tmp_path: Path, models) -> None:
    rgb, mask = marked(300, 200, [(100, 80, 180, 110)])
    alpha = np.full((200, 300), 255, dtype=np.uint8)
    alpha[:, :40] = 0  # a transparent strip
    alpha[:, 40:60] = 128
    rgba = np.dstack([rgb, alpha])
    image = save(rgba, tmp_path / "t.png")
    original = image.read_bytes()
    clean_image(image, mask, lama(models, IMAGE_MASK), root=tmp_path)
    after = np.asarray(Image.open(image))
    assert after.shape == (200, 300, 4)
    assert np.array_equal(after[..., 3], alpha)
    # LaMa sees the image on white (as training does): the transparent strip is white context
    assert_cleaned(rgb, after[..., :3], mask, filled=False)
    history.restore(tmp_path, image)
    assert image.read_bytes() == original


def _exif_rotated_jpeg(path: Path, upright: np.ndarray) -> Path:
    """Store ``upright`` rotated, with EXIF orientation 6 (a phone photo held upright)."""
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # orientation 6 undoes this
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, format="JPEG", quality=92, exif=exif.tobytes())
    return path


def test_exif_rotated_jpeg_is_cleaned_upright_and_keeps_its_orientation(tmp_path: Path, models) -> None:
    from PIL import ImageOps

    rgb, mask = marked(400, 600, [(50, 500, 200, 540)])  # upright 400x600, mark near the bottom
    image = _exif_rotated_jpeg(tmp_path / "phone.jpg", rgb)
    original = image.read_bytes()
    seen_before = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(original))))
    assert seen_before.shape == (600, 400, 3)
    clean_image(image, mask, lama(models, FOUR_CHANNEL), root=tmp_path)
    with Image.open(image) as reopened:
        assert reopened.getexif().get(0x0112) == 6 and reopened.size == (600, 400)
        seen_after = np.asarray(ImageOps.exif_transpose(reopened))
    # JPEG: the unmasked pixels move by re-encoding rounding only (same quantisation tables)
    assert_cleaned(seen_before, seen_after, mask, exact_outside=False)
    history.restore(tmp_path, image)
    assert image.read_bytes() == original


def test_undo_goes_back_one_cleaning_and_restore_to_the_original(tmp_path: Path, models) -> None:
    rgb, mask = marked(200, 200, [(20, 20, 60, 40), (120, 150, 180, 170)])
    first_mask, second_mask = mask.copy(), mask.copy()
    first_mask[100:] = False
    second_mask[:100] = False
    image = save(rgb, tmp_path / "two.png")
    original = image.read_bytes()
    model = lama(models, IMAGE_MASK)
    clean_image(image, first_mask, model, root=tmp_path)
    once = image.read_bytes()
    clean_image(image, second_mask, model, root=tmp_path)
    assert history.cleaned_images(tmp_path) == {"two.png": 2}
    history.undo(tmp_path, image)
    assert image.read_bytes() == once
    history.restore(tmp_path, image)
    assert image.read_bytes() == original
    assert history.cleaned_images(tmp_path) == {}


def test_restore_refuses_an_image_changed_since_cleaning(tmp_path: Path, models) -> None:
    rgb, mask = marked(120, 120, [(20, 20, 60, 40)])
    image = save(rgb, tmp_path / "x.png")
    clean_image(image, mask, lama(models, IMAGE_MASK), root=tmp_path)
    save(textured(120, 120, seed=9), image)  # edited in another program
    edited = image.read_bytes()
    with pytest.raises(UserError, match="was changed after it was cleaned"):
        history.restore(tmp_path, image)
    assert image.read_bytes() == edited and (tmp_path / ".clean-history" / "x.png" / "0001.png").is_file()


def test_preview_writes_nothing_until_accepted(tmp_path: Path, models) -> None:
    rgb, mask = marked(200, 150, [(50, 50, 90, 70)])
    image = save(rgb, tmp_path / "p.png")
    before = snapshot(tmp_path)
    preview = preview_clean(image, mask, lama(models, IMAGE_MASK))
    assert snapshot(tmp_path) == before
    assert_cleaned(rgb, preview.result, mask)
    write_preview(preview, tmp_path)
    assert np.array_equal(np.asarray(Image.open(image)), preview.result)


# ------------------------------------------------------------------------------ batch


def test_one_mask_scaled_to_every_image_of_a_batch(tmp_path: Path, models) -> None:
    corner = np.zeros((100, 100), dtype=bool)
    corner[85:97, 60:97] = True  # the same watermark corner, drawn on a 100x100 canvas
    sizes = [(400, 400), (800, 600), (333, 517)]
    originals = {}
    for i, (w, h) in enumerate(sizes):
        rgb = textured(w, h, seed=i)
        rgb[int(h * 0.87) : int(h * 0.95), int(w * 0.62) : int(w * 0.95)] = MARK
        path = save(rgb, tmp_path / f"{i}.png")
        originals[path] = (path.read_bytes(), rgb)
    result = clean_folder(tmp_path, lama(models, IMAGE_MASK), mask=corner)
    assert sorted(result.cleaned) == sorted(originals) and not result.failed
    for path in originals:
        after = np.asarray(Image.open(path))
        assert not (after[..., 0] > 200).any(), f"{path.name}: the watermark is still there"
    restored, refused = restore_folder(tmp_path)
    assert len(restored) == 3 and refused == []
    assert all(path.read_bytes() == raw for path, (raw, _) in originals.items())


def test_masks_folder_mirrors_the_dataset(tmp_path: Path, models) -> None:
    data, masks = tmp_path / "data", tmp_path / "masks"
    (data / "5_char").mkdir(parents=True)
    (masks / "5_char").mkdir(parents=True)
    rgb, mask = marked(256, 256, [(10, 10, 80, 30)])
    save(rgb, data / "5_char" / "a.png")
    save(rgb, data / "5_char" / "b.jpg", quality=95)
    save(rgb, data / "5_char" / "c.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(masks / "5_char" / "a.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(masks / "5_char" / "b.png")  # any extension
    Image.new("L", (256, 256), 0).save(masks / "5_char" / "c.png")  # an empty mask: left alone
    untouched = (data / "5_char" / "c.png").read_bytes()
    result = clean_folder(data, lama(models, IMAGE_MASK), masks_dir=masks)
    assert [p.name for p in result.cleaned] == ["a.png", "b.jpg"]
    assert result.skipped == [(data / "5_char" / "c.png", "empty mask")]
    assert (data / "5_char" / "c.png").read_bytes() == untouched
    assert set(history.cleaned_images(data)) == {"5_char/a.png", "5_char/b.jpg"}


# ------------------------------------------------------------------------------ bad input


def test_unreadable_image_changes_nothing(tmp_path: Path, models) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match=r"broken.png cannot be read .*nothing was changed"):
        clean_image(broken, np.ones((10, 10), dtype=bool), lama(models, IMAGE_MASK), root=tmp_path)
    assert snapshot(tmp_path) == before


def test_empty_mask_changes_nothing(tmp_path: Path, models) -> None:
    image = save(textured(64, 64), tmp_path / "e.png")
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match="mask for e.png is empty"):
        clean_image(image, np.zeros((64, 64), dtype=bool), lama(models, IMAGE_MASK), root=tmp_path)
    with pytest.raises(UserError, match="The mask is empty"):
        clean_folder(tmp_path, lama(models, IMAGE_MASK), mask=np.zeros((8, 8), dtype=bool))
    assert snapshot(tmp_path) == before


def test_read_only_folder_changes_nothing(tmp_path: Path, models, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    rgb, mask = marked(100, 100, [(10, 10, 40, 30)])
    image = save(rgb, folder / "r.png")
    before = snapshot(folder)
    deny_writes_in(folder, monkeypatch)
    try:
        with pytest.raises(UserError, match="read-only; nothing was changed"):
            clean_image(image, mask, lama(models, IMAGE_MASK), root=folder)
        assert snapshot(folder) == before
    finally:
        folder.chmod(0o755)


def test_failed_image_write_leaves_no_history_step(tmp_path: Path, models, monkeypatch: pytest.MonkeyPatch) -> None:
    from lib_lora.cleanup import history as history_module

    rgb, mask = marked(100, 100, [(10, 10, 40, 30)])
    image = save(rgb, tmp_path / "w.png")
    before = snapshot(tmp_path)
    real = history_module.atomic_write_bytes

    def fail_on_image(path, data, durable=True):
        if Path(path) == image:
            raise UserError(f"Cannot write {path}: the disk is full.")
        return real(path, data, durable)

    monkeypatch.setattr(history_module, "atomic_write_bytes", fail_on_image)
    with pytest.raises(UserError, match="disk is full"):
        clean_image(image, mask, lama(models, IMAGE_MASK), root=tmp_path)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / ".clean-history").exists()
    shutil.rmtree(tmp_path / ".clean-history", ignore_errors=True)


def test_palette_and_greyscale_keep_their_pixels(tmp_path: Path, models) -> None:
    rgb, mask = marked(160, 120, [(100, 90, 140, 110)])
    grey = save(np.asarray(Image.fromarray(rgb).convert("L")), tmp_path / "g.png")
    palette = tmp_path / "p.png"
    Image.fromarray(rgb).quantize(64).save(palette)
    for path in (grey, palette):
        before = np.asarray(Image.open(path).convert("RGB"))
        clean_image(path, mask, lama(models, IMAGE_MASK), root=tmp_path)
        after = np.asarray(Image.open(path).convert("RGB"))
        assert np.array_equal(after[~mask], before[~mask]), path.name
    assert Image.open(grey).mode == "L"


def test_sixteen_bit_image_is_refused_and_kept(tmp_path: Path, models) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)).save(path)
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match="16-bit or float pixels"):
        clean_image(path, np.ones((40, 40), dtype=bool), lama(models, IMAGE_MASK), root=tmp_path)
    assert snapshot(tmp_path) == before
