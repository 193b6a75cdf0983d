"""``python -m lib_lora buckets``: text and JSON, sd-scripts' numbers, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lib_lora.cli import main
from support.data_images import make_dataset

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "sdscripts_buckets.json").read_text())
CONFIGS = {c["name"]: c for c in GOLDEN["configs"]}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["buckets", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _config_args(config: dict) -> list[str]:
    w, h = config["resolution"]
    return [
        "--resolution", f"{w},{h}", "--min-bucket-reso", str(config["min"]),
        "--max-bucket-reso", str(config["max"]), "--bucket-reso-steps", str(config["steps"]),
    ]  # fmt: skip


@pytest.mark.parametrize("no_upscale", [False, True], ids=["upscale", "no_upscale"])
@pytest.mark.parametrize("name, family", [("guide-512", "sd1"), ("sdxl-1024-32", "sdxl"), ("sdxl-1024-64", "sdxl")])
def test_json_matches_sd_scripts(capsys: pytest.CaptureFixture[str], name: str, family: str, no_upscale: bool) -> None:
    config = CONFIGS[name]
    expected = config["no_upscale" if no_upscale else "upscale"]
    sizes = [tuple(s) for s, want in zip(GOLDEN["sizes"], expected) if want is not None]
    args = _config_args(config) + ["--family", family, "--json", "--batch-size", "2"]
    args += [a for w, h in sizes for a in ("--size", f"{w}x{h}")]
    if no_upscale:
        args.append("--no-upscale")
    code, out, err = _run(capsys, *args)
    assert code == 0, err
    document = json.loads(out)
    assert [[*i["bucket"], *i["resized"]] for i in document["images"]] == [w for w in expected if w is not None]
    assert [tuple(i["size"]) for i in document["images"]] == sizes
    if no_upscale:
        # no predefined list: the buckets the images made, in sd-scripts' sorted order
        assert document["buckets"] == [list(b) for b in sorted({tuple(i["bucket"]) for i in document["images"]})]
    else:
        assert document["buckets"] == config["buckets"]
    counts = {tuple(c["bucket"]): c["count"] for c in document["counts"]}
    assert document["steps_per_epoch"] == sum((n + 1) // 2 for n in counts.values())


def test_text_output_for_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dataset(
        tmp_path / "ds",
        {"10_irene": [("a.png", (1920, 1080), "x"), ("b.png", (512, 512), "x")], "2_b": [("c.png", (600, 800), "x")]},
    )
    code, out, _ = _run(capsys, str(root), "--resolution", "512", "--min-bucket-reso", "320",
                        "--max-bucket-reso", "1280", "--batch-size", "4")  # fmt: skip
    assert code == 0
    assert "9 buckets for resolution 512x512, 320-1280 step 64:" in out
    assert "320x704  320x768  384x640  448x576  512x512  576x448  640x384  704x320  768x320" in out
    assert "10_irene/a.png  1920x1080 -> bucket 640x384 (resized 683x384)" in out
    assert "2_b/c.png  600x800 -> bucket 448x576 (resized 448x597)" in out
    assert "bucket 0: resolution (448, 576), count: 2" in out
    assert "bucket 2: resolution (640, 384), count: 10" in out
    # 448x576: 2 -> 1 batch; 512x512: 10 -> 3; 640x384: 10 -> 3
    assert out.rstrip().endswith("images x repeats: 22, batch size 4: steps per epoch 7")


def test_json_for_a_dataset_and_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dataset(tmp_path / "ds", {"3_x": [("a.png", (800, 600), "x")]})
    code, out, _ = _run(capsys, str(root), "--resolution", "768,512", "--size", "1024x1024", "--json")
    assert code == 0
    document = json.loads(out)
    first, second = document["images"]
    assert first["path"] == str(root / "3_x" / "a.png") and first["repeats"] == 3
    assert second["size"] == [1024, 1024] and "path" not in second
    assert all(set(i) >= {"bucket", "resized"} for i in document["images"])
    assert document["buckets"][0] == [256, 1024] and len(document["buckets"]) == 19
    assert document["steps_per_epoch"] == 4


def test_no_bucket_mode(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--no-bucket", "--resolution", "512", "--size", "1920x1080", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["buckets"] == [[512, 512]]
    assert document["images"][0]["resized"] == [910, 512]


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "Nothing to place"),
        (["--size", "512x512", "--family", "sd1", "--bucket-reso-steps", "32"], "divisible by 64"),
        (["--size", "512x512", "--min-bucket-reso", "640"], "min_bucket_reso 640 is larger"),
        (["--size", "40x40", "--no-upscale"], "40x40: image size 40x40 is too small"),
        (["--size", "512x512", "--batch-size", "0"], "--batch-size 0 is invalid"),
    ],
)
def test_bad_input_is_one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_unprefixed_dataset_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dataset(tmp_path / "ds", {"irene": [("a.png", (300, 300), "x")]})
    code, _, err = _run(capsys, str(root))
    assert code == 2 and "Folder 'irene'" in err and "Traceback" not in err


def test_bad_size_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["buckets", "--size", "1920"])
    assert exit_info.value.code == 2
    assert "write it like 1920x1080" in capsys.readouterr().err


def test_module_import_is_light() -> None:
    code = "import sys, lib_lora.cli.buckets; assert not {'torch', 'PIL', 'numpy'} & set(sys.modules), sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
