"""``python -m lib_lora clean``: one image, a folder with a masks folder, one mask for a folder, undo,
restore, and bad input as one ``error:`` line with nothing changed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_lora.cli import main
from support.lama_tiny import build_other, write_model
from support.tagger_files import snapshot

RED = (250, 20, 20)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("lama") / "lama_fp32.onnx")


def picture(path: Path, size: tuple[int, int] = (200, 160)) -> Path:
    rgb = np.full((size[1], size[0], 3), (40, 120, 200), dtype=np.uint8)
    rgb[size[1] - 30 : size[1] - 10, size[0] - 60 : size[0] - 10] = RED  # a bottom-right watermark
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def corner_mask(path: Path, size: tuple[int, int] = (200, 160)) -> Path:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    w, h = size
    mask[int(h * 0.78) : int(h * 0.97), int(w * 0.67) : int(w * 0.98)] = 255  # covers picture()'s mark
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)
    return path


def has_red(path: Path) -> bool:
    return bool((np.asarray(Image.open(path).convert("RGB"))[..., 0] > 200).any())


def test_one_image_then_undo(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture) -> None:
    image = picture(tmp_path / "a.png")
    original = image.read_bytes()
    mask = corner_mask(tmp_path / "masks" / "a.png")
    assert main(["clean", str(image), "--mask", str(mask), "--model", str(model), "--device", "cpu"]) == 0
    assert "cleaned" in capsys.readouterr().out
    assert not has_red(image)
    assert (tmp_path / ".clean-history" / "a.png" / "0001.png").read_bytes() == original
    assert main(["clean", str(image), "--undo"]) == 0
    assert image.read_bytes() == original


def test_a_margin_larger_than_the_image_takes_the_whole_image_and_a_negative_one_is_refused(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture
) -> None:
    """--margin 1000000000 failed with 'unexpected MemoryError: Unable to allocate 55.5 PiB'."""
    image = picture(tmp_path / "a.png")
    mask = corner_mask(tmp_path / "masks" / "a.png")
    argv = ["clean", str(image), "--mask", str(mask), "--model", str(model), "--device", "cpu", "--margin"]
    original = image.read_bytes()
    assert main([*argv, "-5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --margin is the context in pixels around each mask area: 0 or more, not -5.", err
    assert image.read_bytes() == original
    assert main([*argv, "1000000000"]) == 0, capsys.readouterr().err
    assert "cleaned" in capsys.readouterr().out and not has_red(image)


def test_folder_with_masks_folder_then_restore(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    images = [picture(data / "10_x" / f"{n}.png") for n in ("a", "b", "c")]
    originals = {p: p.read_bytes() for p in images}
    corner_mask(tmp_path / "masks" / "10_x" / "a.png")
    corner_mask(tmp_path / "masks" / "10_x" / "b.png", size=(100, 80))  # scaled to the image
    argv = ["clean", str(data), "--masks", str(tmp_path / "masks"), "--model", str(model), "--json"]
    assert main(argv) == 0
    body = json.loads(capsys.readouterr().out)
    assert [Path(p).name for p in body["cleaned"]] == ["a.png", "b.png"]
    assert body["skipped"] == [{"image": str(images[2]), "why": "no mask"}]
    assert not has_red(images[0]) and not has_red(images[1]) and has_red(images[2])
    assert main(["clean", str(data), "--restore"]) == 0
    assert "restored 2 originals" in capsys.readouterr().out
    assert all(p.read_bytes() == raw for p, raw in originals.items())


def test_one_mask_for_a_whole_folder(tmp_path: Path, model: Path) -> None:
    data = tmp_path / "data"
    images = [picture(data / "a.png"), picture(data / "b.png", size=(400, 320))]
    mask = corner_mask(tmp_path / "corner.png")
    assert main(["clean", str(data), "--mask", str(mask), "--model", str(model)]) == 0
    assert not any(has_red(p) for p in images)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no-model", "is not in the Hugging Face cache and downloads are turned off"),
        ("other-model", "is not a LaMa inpainting model"),
        ("unreadable", "cannot be read"),
        ("empty-mask", "is empty"),
        ("read-only", "is read-only; nothing was changed"),
        ("no-mask", "Give the mask"),
        ("mask-folder", "is a folder, not an image: give one mask image."),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    tmp_path: Path,
    model: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    expected: str,
) -> None:
    import onnx
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    data = tmp_path / "data"
    image = picture(data / "a.png")
    mask = corner_mask(tmp_path / "mask.png")
    argv = ["clean", str(image), "--mask", str(mask), "--device", "cpu", "--model", str(model)]
    if case == "no-model":
        argv = ["clean", str(image), "--mask", str(mask), "--offline"]
    elif case == "other-model":
        onnx.save(build_other([1, 448, 448, 3]), str(tmp_path / "tagger.onnx"))
        argv[-1] = str(tmp_path / "tagger.onnx")
    elif case == "unreadable":
        image.write_bytes(b"GIF89a broken")
    elif case == "empty-mask":
        Image.new("L", (200, 160), 0).save(mask)
    elif case == "read-only":
        image.chmod(0o444)
    elif case == "mask-folder":
        argv[3] = str(tmp_path)
    elif case == "no-mask":
        argv = ["clean", str(image), "--model", str(model)]
    before = snapshot(tmp_path / "data")
    try:
        assert main(argv) == 2
    finally:
        image.chmod(0o644)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert snapshot(tmp_path / "data") == before
