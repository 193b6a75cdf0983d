"""The generated demo dataset and its CLI verb."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from lib_lora.cli import main
from lib_lora.common.errors import UserError
from lib_lora.data.dataset import scan_dataset
from lib_lora.data.demo import DEMO_SUBSETS, write_demo_dataset


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_demo_dataset_is_a_valid_varied_deterministic_dataset(tmp_path: Path) -> None:
    first = write_demo_dataset(tmp_path / "a")
    second = write_demo_dataset(tmp_path / "b")
    assert _digest(first.root) == _digest(second.root)  # same bytes every time
    assert not first.captions and not list(first.root.rglob("*.txt"))

    scan = scan_dataset(first.root)
    assert [s.name for s in scan.subsets] == sorted(s.folder for s in DEMO_SUBSETS)
    assert scan.num_images == sum(len(s.sizes) for s in DEMO_SUBSETS) >= 10
    assert not scan.skipped
    ratios = {round(w / h, 2) for w, h in (item.size for item in scan.items)}
    assert any(r < 1 for r in ratios) and any(r > 1 for r in ratios) and 1.0 in ratios
    # the folders differ in colour (a tagger tells them apart)
    means = {}
    for subset in DEMO_SUBSETS:
        image = (
            Image.open(first.root / subset.folder / f"{subset.name}_01.png").convert("RGB").resize((1, 1), Image.BOX)
        )
        means[subset.name] = image.getpixel((0, 0))
    assert means["redfox"][0] > means["redfox"][2] and means["bluebird"][2] > means["bluebird"][0]


def test_simple_captions(tmp_path: Path) -> None:
    result = write_demo_dataset(tmp_path / "d", captions="simple")
    assert len(result.captions) == len(result.images)
    text = (tmp_path / "d" / "3_redfox" / "redfox_01.txt").read_text(encoding="utf-8")
    assert text.startswith("redfox, red theme")


def test_refuses_a_folder_that_is_not_empty_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        write_demo_dataset(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    with pytest.raises(UserError, match="captions"):
        write_demo_dataset(tmp_path / "new", captions="fancy")
    assert not (tmp_path / "new").exists()


def test_cli_demo_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo-dataset", str(tmp_path / "demo"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["images"]) == sum(len(s.sizes) for s in DEMO_SUBSETS)
    assert all(Path(p).is_file() for p in data["images"])
    assert main(["demo-dataset", str(tmp_path / "demo")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_cli_demo_dataset_next_step_can_be_pasted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a folder with a space and non-ASCII letters: the suggested command quotes it, and it names the
    # demo tagger (the default WD tagger is a download)
    folder = tmp_path / "my data" / "Ärger"
    assert main(["demo-dataset", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f'next: python -m lib_lora tag "{folder}" --model demo-tagger' in out, out
