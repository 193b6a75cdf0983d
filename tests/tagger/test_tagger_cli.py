"""``python -m lib_lora tag``: the issue's acceptance run on 50 mixed images, flags, and bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from lib_lora.cli import main
from support.tagger_files import deny_writes_in, snapshot
from support.tagger_tiny import COLOURS, EXPECTED_CAPTIONS, TINY_LABELS, write_tiny_tagger

ROOT = Path(__file__).resolve().parents[2]

# non-square images: white padding changes the means (see support/tagger_tiny.py for the model)
WIDE_RED = "1girl, solo, hu tao (genshin impact), looking at viewer, smile, long hair, ^_^, red theme"
TALL_BLUE = "1girl, long hair, solo, blue sky, looking at viewer, smile"


def solid(colour: str, size: tuple[int, int] = (64, 64), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, COLOURS[colour])


def transparent(mode: str = "RGBA") -> Image.Image:
    return Image.new(mode, (80, 80), (30, 200, 40, 0) if mode == "RGBA" else (30, 0))


def palette(colour: str, transparent_index: bool = False) -> Image.Image:
    image = Image.new("P", (70, 70), 0)
    image.putpalette(list(COLOURS[colour]) * 256)
    if transparent_index:
        image.info["transparency"] = 0
    return image


def sixteen_bit(value: int) -> Image.Image:
    return Image.fromarray(np.full((40, 40), value, dtype=np.uint16))


def build_dataset(root: Path) -> dict[str, str]:
    """50 files (47 images, 3 broken) in the N_name layout; returns {relative path: expected caption}."""
    expected: dict[str, str] = {}

    def add(rel: str, image: Image.Image, caption: str, **save: object) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **save)
        expected[rel] = caption

    for colour in COLOURS:
        add(f"10_irene/{colour}_448.png", solid(colour, (448, 448)), EXPECTED_CAPTIONS[colour])
        add(f"10_irene/{colour}_64.png", solid(colour, (64, 64)), EXPECTED_CAPTIONS[colour])
        add(f"10_irene/{colour}_600.png", solid(colour, (600, 600)), EXPECTED_CAPTIONS[colour])
        add(f"3_style/{colour}_q95.jpg", solid(colour, (448, 448)), EXPECTED_CAPTIONS[colour], quality=95)
        add(f"3_style/{colour}_lossless.webp", solid(colour, (100, 100)), EXPECTED_CAPTIONS[colour], lossless=True)
        add(f"3_style/extra/{colour}.bmp", solid(colour, (50, 50)), EXPECTED_CAPTIONS[colour])
    add("3_style/rgba_red.png", solid("red", mode="RGBA"), EXPECTED_CAPTIONS["red"])
    add("3_style/rgba_blue.png", solid("blue", mode="RGBA"), EXPECTED_CAPTIONS["blue"])
    add("3_style/clear.png", transparent(), EXPECTED_CAPTIONS["white"])
    add("3_style/clear_lossless.webp", transparent(), EXPECTED_CAPTIONS["white"], lossless=True)
    add("3_style/la_black.png", Image.new("LA", (60, 60), (0, 255)), EXPECTED_CAPTIONS["black"])
    add("3_style/la_clear.png", transparent("LA"), EXPECTED_CAPTIONS["white"])
    add("3_style/l_black.png", Image.new("L", (60, 60), 0), EXPECTED_CAPTIONS["black"])
    add("3_style/l_white.jpg", Image.new("L", (60, 60), 255), EXPECTED_CAPTIONS["white"])
    add("3_style/p_red.png", palette("red"), EXPECTED_CAPTIONS["red"])
    add("3_style/p_blue.png", palette("blue"), EXPECTED_CAPTIONS["blue"])
    add("3_style/p_clear.png", palette("black", transparent_index=True), EXPECTED_CAPTIONS["white"])
    add("3_style/cmyk_red.jpg", Image.new("CMYK", (64, 64), (0, 255, 255, 0)), EXPECTED_CAPTIONS["red"], quality=95)
    add("3_style/grey16_white.png", sixteen_bit(65535), EXPECTED_CAPTIONS["white"])
    add("3_style/grey16_black.png", sixteen_bit(0), EXPECTED_CAPTIONS["black"])
    add("1_wide/red_448x336.png", solid("red", (448, 336)), WIDE_RED)
    add("1_wide/red_896x672.png", solid("red", (896, 672)), WIDE_RED)
    add("1_wide/blue_336x448.png", solid("blue", (336, 448)), TALL_BLUE)
    assert len(expected) == 47

    (root / "1_wide/notes.png").write_text("not an image, just a misnamed text file")
    good = (root / "10_irene/red_64.png").read_bytes()
    (root / "1_wide/truncated.jpg").write_bytes(solid_jpeg_bytes()[:300])
    (root / "1_wide/empty.webp").write_bytes(b"")
    assert good  # the broken files sit beside good ones
    # not part of the dataset: hidden folders and our own tool folders are skipped
    for skipped in (".thumbs/red.png", "_duplicates/red.png"):
        (root / skipped).parent.mkdir(parents=True, exist_ok=True)
        solid("red").save(root / skipped)
    # an existing caption (kept by the default policy) and an empty one (tagged)
    (root / "10_irene/red_64.txt").write_text("my own caption, 1girl", encoding="utf-8")
    expected["10_irene/red_64.png"] = "my own caption, 1girl"
    (root / "10_irene/green_64.txt").write_text("", encoding="utf-8")
    return expected


def solid_jpeg_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    solid("blue", (256, 256)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def run_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "lib_lora", "tag", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_tagger(tmp_path_factory.mktemp("model"))


def test_fifty_mixed_images_then_skip_changes_nothing(tmp_path: Path, tiny_model: Path) -> None:
    dataset = tmp_path / "dataset"
    expected = build_dataset(dataset)

    first = run_cli([str(dataset), "--model", str(tiny_model), "--json", "--batch-size", "8"], tmp_path)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["images"] == 50
    assert (report["written"], report["kept"], report["unchanged"]) == (46, 1, 0)
    assert sorted(Path(f["image"]).name for f in report["failed"]) == ["empty.webp", "notes.png", "truncated.jpg"]
    for rel, caption in expected.items():
        text = (dataset / rel).with_suffix(".txt").read_text(encoding="utf-8")
        assert text == caption, rel
    assert not (dataset / ".thumbs/red.txt").exists() and not (dataset / "_duplicates/red.txt").exists()
    assert not list(dataset.rglob(".tmp-*"))
    # the broken ones are reported to the user, with the reason, at the end
    assert "3 images were skipped:" in first.stderr
    assert "notes.png: not an image Pillow can read" in first.stderr
    assert "warning: Tagging runs on the CPU" in first.stderr

    before = snapshot(dataset)
    second = run_cli([str(dataset), "--model", str(tiny_model), "--existing", "skip", "--json"], tmp_path)
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert (report["written"], report["kept"]) == (0, 47)
    assert snapshot(dataset) == before


def test_flags_reach_the_captions(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "5_x"
    folder.mkdir()
    solid("red").save(folder / "red.png")
    solid("blue").save(folder / "blue.png")
    (folder / "blue.txt").write_text("blue hair", encoding="utf-8")
    args = [str(tmp_path), "--model", str(tiny_model), "--device", "cpu"]
    assert main(["tag", *args, "--existing", "prepend", "--add-tags", "irene, solo focus", "--ratings",
                 "--exclude-tags", "long hair,^_^", "--escape", "--keep-underscores"]) == 0  # fmt: skip
    red = (folder / "red.txt").read_text()
    assert red == (
        r"irene, solo focus, sensitive, 1girl, hu_tao_\(genshin_impact\), solo, looking_at_viewer, smile, red_theme"
    )
    blue = (folder / "blue.txt").read_text()
    assert blue == "irene, solo focus, questionable, 1girl, solo, blue_sky, >_<, blue hair"

    assert main(["tag", *args, "--existing", "overwrite", "--threshold", "0.6", "--character-threshold", "0.95"]) == 0
    assert (folder / "red.txt").read_text() == "1girl, solo, looking at viewer, smile"
    # MCut replaces the general threshold: red's general scores .953 .900 .690 .690 .574 .550 .450 | .119 ...
    # have their largest gap below red theme, so 0.95 no longer applies
    assert (
        main(["tag", *args, "--existing", "overwrite", "--mcut", "--threshold", "0.95", "--order", "alphabetical"]) == 0
    )
    assert (folder / "red.txt").read_text() == (
        "1girl, ^_^, hu tao (genshin impact), long hair, looking at viewer, red theme, smile, solo"
    )
    assert main(["tag", *args, "--existing", "overwrite", "--characters-first", "--confidences"]) == 0
    assert (folder / "red.txt").read_text().startswith("hu tao (genshin impact), 1girl, solo")
    assert "red.png" in json.loads((folder / ".tagger" / "scores.json").read_text())["images"]
    capsys.readouterr()


def test_provider_warning_when_cuda_is_asked_for(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    solid("red").save(tmp_path / "red.png")
    assert main(["tag", str(tmp_path), "--model", str(tiny_model), "--device", "cuda"]) == 0
    err = capsys.readouterr().err
    assert "warning: Tagging runs on the CPU: CUDA was asked for but this onnxruntime" in err
    assert "install onnxruntime-gpu" in err


def _model_without_csv(tmp_path: Path) -> Path:
    return write_tiny_tagger(tmp_path / "no_csv", with_labels=False)


def _model_with_wrong_csv(tmp_path: Path) -> Path:
    return write_tiny_tagger(tmp_path / "wrong_csv", n_labels=len(TINY_LABELS) - 2)


def _not_a_tagger(tmp_path: Path) -> Path:
    return write_tiny_tagger(tmp_path / "nchw", input_shape=[1, 3, 448, 448])


@pytest.mark.parametrize(
    "make_model, message",
    [
        (_model_without_csv, r"error: The model folder .*no_csv has no selected_tags\.csv"),
        (_model_with_wrong_csv, rf"error: .*selected_tags\.csv lists {len(TINY_LABELS)} tags but the model .* has {len(TINY_LABELS) - 2} outputs"),
        (_not_a_tagger, r"error: The model .*model\.onnx is not a WD tagger: its input is tensor\(float\) \[1, 3, 448, 448\]"),
    ],
    ids=["no-csv", "label-count", "not-a-tagger"],
)  # fmt: skip
def test_bad_models_give_one_clear_message_and_keep_captions(
    tmp_path: Path, make_model: Callable[[Path], Path], message: str, capsys: pytest.CaptureFixture
) -> None:
    dataset = tmp_path / "data" / "1_a"
    dataset.mkdir(parents=True)
    solid("red").save(dataset / "red.png")
    solid("blue").save(dataset / "blue.png")
    (dataset / "red.txt").write_text("precious, hand written", encoding="utf-8")
    before = snapshot(tmp_path / "data")
    code = main(["tag", str(tmp_path / "data"), "--model", str(make_model(tmp_path)), "--existing", "overwrite"])
    err = capsys.readouterr().err
    assert code == 2
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "Traceback" not in err
    assert re.search(message, error_lines[0]), error_lines[0]
    assert snapshot(tmp_path / "data") == before


def test_read_only_folder_from_the_cli(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "data" / "1_a"
    folder.mkdir(parents=True)
    solid("red").save(folder / "red.png")
    solid("blue").save(folder / "blue.png")
    (folder / "red.txt").write_text("", encoding="utf-8")
    before = snapshot(tmp_path / "data")
    deny_writes_in(folder, monkeypatch)
    try:
        code = main(["tag", str(tmp_path / "data"), "--model", str(tiny_model), "--existing", "overwrite"])
    finally:
        folder.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"error: Cannot write captions in {folder}: the folder is read-only (permission denied); nothing was changed."
    )
    assert snapshot(tmp_path / "data") == before


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["tag"]) == 2
    assert "Give the dataset folder" in capsys.readouterr().err
    assert main(["tag", str(tmp_path / "nope"), "--model", "vit-v3"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["tag", str(tmp_path), "--threshold", "2"]) == 2
    assert "general threshold must be between 0 and 1" in capsys.readouterr().err


def test_list_models(capsys: pytest.CaptureFixture) -> None:
    assert main(["tag", "--list-models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 10 and [r["name"] for r in rows if r["default"]] == ["wd-v1-4-swinv2-tagger-v2"]


@pytest.mark.parametrize("extension", [".png", ".JPG", ".webp"])
def test_an_image_type_as_caption_extension_is_refused_and_writes_nothing(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture, extension: str
) -> None:
    """--caption-extension .png wrote each JPEG's caption as a text file named like an image (a.png),
    which training then took for a broken image."""
    folder = tmp_path / "data" / "10_irene"
    folder.mkdir(parents=True)
    solid("red").save(folder / "a.jpg")
    solid("blue").save(folder / "b.bmp")
    before = snapshot(tmp_path / "data")
    code = main(["tag", str(tmp_path / "data"), "--model", str(tiny_model), "--caption-extension", extension])
    err = capsys.readouterr().err
    assert code == 2 and f"The caption file extension {extension} is an image type" in err, err
    assert snapshot(tmp_path / "data") == before


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--batch-size", "100000", "The tagger batch size 100,000 is too large: at most 256 images at once"),
        ("--workers", "100000", "The number of decode threads must be between 0 (automatic) and 256 (got 100,000)."),
        ("--threads", "-2", "The number of tagger threads must be between 0 (automatic) and 256 (got -2)."),
    ],
)
def test_absurd_batch_and_thread_counts_are_refused_before_tagging(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture, flag: str, value: str, words: str
) -> None:
    """--batch-size 1000000000 ran for minutes on 17 images (it queued two billion decode slots) and
    then printed 'batch 1000000000' as if that were a setting."""
    folder = tmp_path / "data" / "10_irene"
    folder.mkdir(parents=True)
    solid("red").save(folder / "a.png")
    code = main(["tag", str(tmp_path / "data"), "--model", str(tiny_model), flag, value])
    err = capsys.readouterr().err
    assert code == 2 and words in err, err
    assert not (folder / "a.txt").exists()
