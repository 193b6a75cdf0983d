"""Loading a dataset's captions: layout, tolerant parsing, tagger confidences, statistics, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib_lora.captions import (
    TAGGER_SIDECAR_SUFFIX,
    LoadOptions,
    dataset_stats,
    load_dataset,
    parse_caption,
    tag_frequency,
)
from lib_lora.common.errors import UserError
from lib_lora.events import RecordingEvents, StopRequested, StopToken
from support.captions_data import make_dataset


@pytest.mark.parametrize(
    "raw, tags",
    [
        ("1girl, long_hair, smile", ("1girl", "long_hair", "smile")),
        ("1girl,,, smile,", ("1girl", "smile")),  # repeated / trailing commas
        ("  1girl ,smile  ,  blue  eyes ", ("1girl", "smile", "blue eyes")),  # stray spaces
        ("\ufeff1girl, smile", ("1girl", "smile")),  # BOM
        ("1girl, smile\r\nsolo\r\n", ("1girl", "smile", "solo")),  # CRLF, several lines
        ("1girl\n\nsmile\n", ("1girl", "smile")),  # one tag per line
        ("", ()),
        (" , ,\n", ()),
    ],
)
def test_parse_caption_is_tolerant(raw: str, tags: tuple[str, ...]) -> None:
    assert parse_caption(raw) == tags


def test_load_reads_nested_layout_and_captionless_images(tmp_path: Path) -> None:
    root = make_dataset(
        tmp_path / "ds",
        {
            "10_irene/a.png": "\ufeff1girl,, long_hair\r\n",
            "10_irene/b.JPG": "irene, smile",
            "10_irene/deeper/c.webp": None,
            "2_bg/d.png": "",
            "e.bmp": "solo",
        },
    )
    (root / "10_irene" / "orphan.txt").write_text("not an image's caption")
    (root / ".caption-history").mkdir()
    (root / ".caption-history" / "old.png").write_bytes(b"")
    ds = load_dataset(root)
    by_rel = {item.rel: item for item in ds.items}
    assert sorted(by_rel) == ["10_irene/a.png", "10_irene/b.JPG", "10_irene/deeper/c.webp", "2_bg/d.png", "e.bmp"]
    assert by_rel["10_irene/a.png"].tags == ("1girl", "long_hair")
    assert by_rel["10_irene/deeper/c.webp"].tags == ()
    assert not by_rel["10_irene/deeper/c.webp"].has_caption_file
    assert by_rel["2_bg/d.png"].has_caption_file and by_rel["2_bg/d.png"].tags == ()
    assert by_rel["10_irene/a.png"].caption_rel == "10_irene/a.txt"
    assert not any(item.dirty for item in ds.items)
    assert ds.problems == []


def test_load_not_recursive_and_other_caption_extension(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"a.png": "top", "10_x/b.png": "nested"}, caption_extension=".caption")
    ds = load_dataset(root, LoadOptions(caption_extension=".caption", recursive=False))
    assert [(i.rel, i.tags) for i in ds.items] == [("a.png", ("top",))]
    assert load_dataset(root).items[0].tags == ()  # .txt does not exist


@pytest.mark.parametrize("ext", ["txt", "", "."])
def test_bad_caption_extension_is_a_user_error(ext: str) -> None:
    with pytest.raises(UserError, match="The caption file extension must look like .txt"):
        LoadOptions(caption_extension=ext)


@pytest.mark.parametrize("ext", [".png", ".JPEG", ".webp", ".bmp"])
def test_an_image_type_is_no_caption_extension(ext: str) -> None:
    with pytest.raises(UserError, match=f"The caption file extension \\{ext} is an image type"):
        LoadOptions(caption_extension=ext)


def test_missing_dataset_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        load_dataset(tmp_path / "file")


def test_tagger_confidences_read_from_sidecar(tmp_path: Path) -> None:
    names = "abcdef"
    root = make_dataset(tmp_path / "ds", {f"{n}.png": "1girl, long hair" for n in names})
    # as the tagger writes it: scores per category, the caption's tags as a list
    sidecar = {
        "model": "wd",
        "ratings": {"general": 0.9},
        "general": {"1girl": 0.99, "long_hair": 0.8, "bad": "high", "flag": True},
        "character": {"hu_tao_(genshin_impact)": 0.95},
        "tags": ["1girl", "long hair"],
    }
    (root / f"a{TAGGER_SIDECAR_SUFFIX}").write_text(json.dumps(sidecar))
    (root / f"b{TAGGER_SIDECAR_SUFFIX}").write_text(json.dumps({"model": "wd", "tags": {"smile": 0.5}}))
    (root / f"c{TAGGER_SIDECAR_SUFFIX}").write_text("{not json")
    (root / f"d{TAGGER_SIDECAR_SUFFIX}").write_text(json.dumps(["a list"]))
    (root / f"e{TAGGER_SIDECAR_SUFFIX}").write_bytes(b"\xff\xfe")
    items = {i.rel: i for i in load_dataset(root).items}
    a = items["a.png"]
    assert a.confidence("1girl") == 0.99
    assert a.confidence("long hair") == 0.8  # the caption may use spaces where the tagger used underscores
    assert a.confidence("long_hair") == 0.8
    assert a.confidence("hu tao (genshin impact)") == 0.95
    assert a.confidence("bad") is None and a.confidence("flag") is None
    assert items["b.png"].confidence("smile") == 0.5
    for name in "cdef":
        assert items[f"{name}.png"].confidences is None
    assert load_dataset(root, LoadOptions(read_confidences=False)).items[0].confidences is None


def test_latin1_caption_is_reported_locked_and_untouched(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"a.png": "caf\xe9, 1girl".encode("latin-1"), "b.png": "1girl"})
    events = RecordingEvents()
    ds = load_dataset(root, events=events)
    a = ds.items[0]
    assert a.locked and a.tags == ()
    assert "not UTF-8" in a.problem and "a.txt" in a.problem
    assert [p.rel for p in ds.problems] == ["a.txt"]
    assert any("not UTF-8" in t for t in events.texts("warning"))
    assert not ds.items[1].locked


def test_caption_that_is_a_folder_is_reported(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"a.png": None})
    (root / "a.txt").mkdir()
    ds = load_dataset(root)
    assert ds.items[0].locked
    assert "is a folder" in ds.problems[0].message


def test_two_images_sharing_one_caption_edit_it_through_the_first(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"a.jpg": None, "a.png": "1girl"})
    ds = load_dataset(root)
    first, second = ds.items
    assert (first.rel, first.locked, first.tags) == ("a.jpg", False, ("1girl",))
    assert second.locked and second.tags == ("1girl",)
    assert "share the caption" in ds.problems[0].message


def test_stop_token_stops_loading(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"a.png": "x"})
    token = StopToken()
    token.request()
    with pytest.raises(StopRequested):
        load_dataset(root, stop=token)


def test_stats_frequency_folders_and_captionless(tmp_path: Path) -> None:
    root = make_dataset(
        tmp_path / "ds",
        {
            "10_irene/a.png": "1girl, smile, 1girl",
            "10_irene/b.png": "1girl",
            "10_irene/c.png": None,
            "3_bg/d.png": "scenery",
        },
    )
    ds = load_dataset(root)
    assert tag_frequency(ds.items) == {"1girl": 2, "smile": 1, "scenery": 1}  # once per image
    stats = dataset_stats(ds)
    assert stats.images == 4 and stats.captioned == 3
    assert stats.captionless == ("10_irene/c.png",)
    assert [(t.tag, t.count) for t in stats.tags] == [("1girl", 2), ("scenery", 1), ("smile", 1)]
    assert [(f.folder, f.images, f.captionless, f.repeats, f.class_tokens) for f in stats.folders] == [
        ("10_irene", 3, 1, 10, "irene"),
        ("3_bg", 1, 0, 3, "bg"),
    ]
    assert ds.class_tokens() == {"irene", "bg"}


def test_confidences_come_from_the_folders_scores_file(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"10_x/a.png": "smile", "10_x/b.png": "solo"})
    scores = {"version": 1, "images": {"a.png": {"model": "wd", "general": {"smile": 0.81}}, "b.png": "junk"}}
    (root / "10_x" / ".tagger").mkdir()
    (root / "10_x" / ".tagger" / "scores.json").write_text(json.dumps(scores), encoding="utf-8")
    items = {item.rel: item for item in load_dataset(root).items}
    assert items["10_x/a.png"].confidence("smile") == pytest.approx(0.81)
    assert items["10_x/b.png"].confidences is None


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="FIFOs are POSIX")
def test_a_caption_that_is_a_fifo_or_a_device_is_locked_never_read(tmp_path: Path) -> None:
    import os
    import threading

    root = make_dataset(tmp_path / "ds", {"10_x/a.png": None, "10_x/b.png": None, "10_x/c.png": "fine"})
    os.mkfifo(root / "10_x" / "a.txt")
    (root / "10_x" / "b.txt").symlink_to("/dev/zero")
    box: list = []
    thread = threading.Thread(target=lambda: box.append(load_dataset(root)), daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():  # unblock the stuck reader, then fail
        os.close(os.open(root / "10_x" / "a.txt", os.O_WRONLY | os.O_NONBLOCK))
    assert box, "loading hangs on a caption that is a FIFO"
    items = {item.rel: item for item in box[0].items}
    for rel in ("10_x/a.png", "10_x/b.png"):
        assert items[rel].locked and "not a regular file" in items[rel].problem
    assert items["10_x/c.png"].caption == "fine"
