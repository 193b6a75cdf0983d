"""``python -m lib_lora captions``: the guide's steps, dry run, JSON, stats and bad input, end to end."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lib_lora.captions import BACKUP_DIR_NAME, TAGGER_SIDECAR_SUFFIX, list_backups, read_backup
from lib_lora.cli import main
from support.captions_data import make_dataset, snapshot

# a folder as the WD tagger leaves it: underscores, kaomoji, a tag twice once underscores go
TAGGED = {
    "10_irene/01.png": "1girl, solo, long_hair, smile, ^_^, looking_at_viewer\n",
    "10_irene/02.png": "1girl, long_hair, long hair, >_<, blue_eyes",
    "10_irene/03.png": "irene, 1girl, hu_tao_(genshin_impact), o_o",
    "10_irene/04.png": None,
    "10_irene/more/05.jpg": "\ufeff1girl,,  red_eyes ,\r\n",
}
EXPECTED = {
    "10_irene/01.txt": "irene, 1girl, solo, long hair, smile, ^_^, looking at viewer\n",
    "10_irene/02.txt": "irene, 1girl, long hair, >_<, blue eyes",
    "10_irene/03.txt": "irene, 1girl, hu tao (genshin impact), o_o",
    "10_irene/04.txt": "irene",
    "10_irene/more/05.txt": "irene, 1girl, red eyes\r\n",
}
GUIDE = ["--add-front", "irene", "--underscores-to-spaces", "--dedupe"]


def run_cli(*args: str) -> int:
    return main(["captions", *args])


@pytest.fixture()
def tagged(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds", TAGGED)


def test_guide_steps_give_the_expected_captions_and_backups(tagged: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(tagged)
    assert run_cli(str(tagged), *GUIDE) == 0
    out = capsys.readouterr().out
    assert "5 of 5 images matched; saved 5 captions; 1 new" in out
    for rel, text in EXPECTED.items():
        assert (tagged / rel).read_bytes() == text.encode("utf-8"), rel
    # a backup of every changed caption exists
    [backup] = list_backups(tagged)
    assert backup.path.parent == tagged / BACKUP_DIR_NAME
    saved = read_backup(backup.path)
    for rel in EXPECTED:
        assert saved[rel] == before.get(rel), rel
    # running the same steps again changes nothing and keeps no new backup
    assert run_cli(str(tagged), *GUIDE) == 0
    assert len(list_backups(tagged)) == 1


def test_dry_run_changes_nothing(tagged: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(tagged)
    assert run_cli(str(tagged), *GUIDE, "--dry-run") == 0
    assert snapshot(tagged) == before
    out = capsys.readouterr().out
    assert "dry run: 5 of 5 captions would change (1 new caption file)" in out
    assert "  - 1girl, long_hair, long hair, >_<, blue_eyes\n  + irene, 1girl, long hair, >_<, blue eyes" in out
    assert "10_irene/04.txt\n  - (no caption file)\n  + irene" in out


def test_dry_run_json_lists_before_and_after(tagged: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(tagged)
    assert run_cli(str(tagged), *GUIDE, "--dry-run", "--json") == 0
    assert snapshot(tagged) == before
    doc = json.loads(capsys.readouterr().out)
    assert doc["dry_run"] is True and doc["images"] == 5 and doc["backup"] is None
    changed = {c["caption"]: (c["before"], c["after"]) for c in doc["changed"]}
    assert changed["10_irene/04.txt"] == (None, "irene")
    assert changed["10_irene/03.txt"] == (
        "irene, 1girl, hu_tao_(genshin_impact), o_o",
        "irene, 1girl, hu tao (genshin impact), o_o",
    )
    assert [s["operation"] for s in doc["operations"]] == [
        "add at the front: irene",
        "underscores to spaces",
        "remove duplicate tags",
    ]


def test_json_run_reports_backup(tagged: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        run_cli(str(tagged), "--filter", "solo, blue_eyes", "--filter-mode", "or", "--remove", "1girl", "--json") == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["matched"] == 2
    assert sorted(c["caption"] for c in doc["changed"]) == ["10_irene/01.txt", "10_irene/02.txt"]
    assert Path(doc["backup"]).is_file()
    assert (tagged / "10_irene/03.txt").read_text() == "irene, 1girl, hu_tao_(genshin_impact), o_o"


def test_order_of_application_and_regex_replace(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"a.png": "smile, long_hair, blue_eyes, 1girl"})
    args = ["--add-front", "irene", "--add-end", "solo", "--remove", "smile", "--replace", r"(\w+)_eyes", r"\1 eyes"]
    assert run_cli(str(root), *args, "--regex", "--underscores-to-spaces", "--sort", "alpha") == 0
    # replace runs before underscores go; sorting keeps the added "irene" first
    assert (root / "a.txt").read_text() == "irene, 1girl, blue eyes, long hair, solo"


def test_whole_caption_replace(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"a.png": "1girl, solo, smile"})
    assert run_cli(str(root), "--replace", "solo, smile", "smiling alone", "--whole-caption") == 0
    assert (root / "a.txt").read_text() == "1girl, smiling alone"


def test_stats_text_and_json(tagged: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_cli(str(tagged), "--stats") == 0
    out = capsys.readouterr().out
    assert "images: 5 (4 captioned, 1 without caption)" in out
    assert "     4           1       10  10_irene\n" in out  # images, no caption, repeats, folder
    assert "       4   80.0%  1girl" in out
    assert "images without caption:\n  10_irene/04.png" in out
    assert run_cli(str(tagged), "--stats", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tags"][0] == {"tag": "1girl", "count": 4, "share": 0.8}
    assert doc["captionless"] == ["10_irene/04.png"]
    assert doc["folders"] == [
        {"folder": "10_irene", "images": 4, "captionless": 1, "repeats": 10, "class_tokens": "irene"},
        {"folder": "10_irene/more", "images": 1, "captionless": 0, "repeats": None, "class_tokens": None},
    ]
    assert [t["tag"] for t in doc["common_tags"]] == []
    assert run_cli(str(tagged), "--stats", "--json", "--threshold", "0.8") == 0
    assert [t["tag"] for t in json.loads(capsys.readouterr().out)["common_tags"]] == ["1girl"]


# ---------------------------------------------------------------- bad input: one clear message, nothing lost


def test_latin1_caption_is_reported_and_left_untouched(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    latin1 = "café, 1girl".encode("latin-1")
    root = make_dataset(tmp_path / "ds", {"a.png": latin1, "b.png": "1girl"})
    assert run_cli(str(root), *GUIDE) == 1
    err = capsys.readouterr().err
    assert f"warning: Caption {root / 'a.txt'} is not UTF-8 text" in err
    assert "left untouched" in err
    assert (root / "a.txt").read_bytes() == latin1
    assert (root / "b.txt").read_text() == "irene, 1girl"
    assert "a.txt" not in read_backup(list_backups(root)[0].path)


def test_caption_that_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_dataset(tmp_path / "ds", {"a.png": None, "b.png": "x"})
    (root / "a.txt").mkdir()
    (root / "a.txt" / "keep.me").write_text("inside")
    assert run_cli(str(root), *GUIDE) == 1
    assert f"warning: Caption {root / 'a.txt'} is a folder, not a file" in capsys.readouterr().err
    assert (root / "a.txt" / "keep.me").read_text() == "inside"
    assert (root / "b.txt").read_text() == "irene, x"


def test_read_only_caption(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_dataset(tmp_path / "ds", {"a.png": "1girl", "b.png": "x"})
    (root / "a.txt").chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    try:
        assert run_cli(str(root), *GUIDE) == 1
        captured = capsys.readouterr()
        assert f"warning: Caption {root / 'a.txt'} is read-only: it was left untouched" in captured.err
        assert "1 could not be written" in captured.out
        assert (root / "a.txt").read_text() == "1girl"
        assert (root / "b.txt").read_text() == "irene, x"
    finally:
        (root / "a.txt").chmod(0o644)


def test_invalid_regex_is_one_clear_error_and_changes_nothing(tagged: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(tagged)
    assert run_cli(str(tagged), "--add-front", "irene", "--replace", "(unclosed", "x", "--regex") == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "error: Regular expression '(unclosed' is not valid: missing ), unterminated subpattern at position 0.\n"
    )
    assert captured.out == ""
    assert snapshot(tagged) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--stats", "--dedupe"], "--stats only shows statistics"),
        ([], "Nothing to do"),
        (["--regex", "--dedupe"], "--regex and --whole-caption only apply to --replace"),
        (["--add-front", " , "], "--add-front holds no tags"),
        (["--caption-extension", "txt", "--dedupe"], "The caption file extension must look like .txt (got 'txt')."),
        # --top -5 showed every tag, as if it were left out
        (
            ["--stats", "--top", "-5"],
            "--top -5 is not valid: give how many of the most frequent tags to show, at least 1",
        ),
        (["--stats", "--top", "0"], "--top 0 is not valid"),
        (["--dedupe", "--top", "3"], "--top only applies to --stats."),
        (["--stats", "--threshold", "0"], "--threshold 0.0 is not valid: it must be above 0 and at most 1"),
        (["--stats", "--threshold", "nan"], "--threshold nan is not valid"),
    ],
)
def test_usage_errors(tagged: Path, capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    before = snapshot(tagged)
    assert run_cli(str(tagged), *args) == 2
    captured = capsys.readouterr()
    assert message in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
    assert captured.out == "" and snapshot(tagged) == before


@pytest.mark.parametrize("extension", [".jpg", ".PNG"])
def test_an_image_type_as_caption_extension_is_refused_and_changes_nothing(
    tagged: Path, capsys: pytest.CaptureFixture, extension: str
) -> None:
    """--caption-extension .jpg wrote the captions of the PNG images as text files named 01.jpg (taken for
    broken images by training); with .PNG on Windows, where names ignore case, it would overwrite the images."""
    before = snapshot(tagged)
    assert run_cli(str(tagged), "--caption-extension", extension, "--add-front", "irene") == 2
    assert f"The caption file extension {extension} is an image type" in capsys.readouterr().err
    assert snapshot(tagged) == before


def test_missing_or_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_cli(str(tmp_path / "nope"), "--dedupe") == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run_cli(str(tmp_path / "empty"), "--stats") == 2
    assert "Found no images" in capsys.readouterr().err


def test_verb_runs_as_a_module(tagged: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lib_lora", "captions", str(tagged), "--stats", "--json"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["images"] == 5


def test_sort_by_tagger_confidence_keeps_the_activation_tag_first(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"a.png": "smile, 1girl, long_hair, by hand"})
    scores = {"model": "wd", "general": {"1girl": 0.99, "long_hair": 0.8, "smile": 0.4}, "character": {}}
    (root / f"a{TAGGER_SIDECAR_SUFFIX}").write_text(json.dumps(scores))
    assert run_cli(str(root), "--add-front", "irene", "--underscores-to-spaces", "--sort", "confidence") == 0
    assert (root / "a.txt").read_text() == "irene, 1girl, long hair, smile, by hand"


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="FIFOs are POSIX")
def test_a_caption_that_is_a_fifo_does_not_hang_the_verb(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import os
    import threading

    root = make_dataset(tmp_path / "ds", {"10_x/a.png": None, "10_x/b.png": "solo"})
    os.mkfifo(root / "10_x" / "a.txt")
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(run_cli(str(root), "--add-front", "x")), daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():  # unblock the stuck reader, then fail
        os.close(os.open(root / "10_x" / "a.txt", os.O_WRONLY | os.O_NONBLOCK))
    assert codes, "the captions verb hangs on a caption that is a FIFO"
    err = capsys.readouterr().err
    assert "a.txt is not a regular file" in err
    assert (root / "10_x" / "b.txt").read_text() == "x, solo"
