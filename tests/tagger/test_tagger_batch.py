"""Folder runs through the API: policies, sidecars, stop/interrupt, read-only folders, bad files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from lib_lora.common.errors import UserError
from lib_lora.events import Events, RecordingEvents, StopToken
from lib_lora.tagger import TagFolderOptions, TagOptions, confidences_path, tag_folder
from lib_lora.tagger.batch import read_scores
from lib_lora.tagger.models import local_model_files
from lib_lora.tagger.session import Tagger
from support.tagger_files import deny_writes_in, snapshot
from support.tagger_tiny import COLOURS, EXPECTED_CAPTIONS, write_tiny_tagger

SIZE = 64  # the tiny model's input size in these tests: fast, and no resampling of 64 px images


@pytest.fixture(scope="module")
def tagger(tmp_path_factory: pytest.TempPathFactory) -> Tagger:
    return Tagger(local_model_files(write_tiny_tagger(tmp_path_factory.mktemp("tiny"), size=SIZE)), device="cpu")


def make_images(folder: Path, names: list[str]) -> dict[str, Path]:
    """``red_1`` -> folder/red_1.png, a solid red square."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        path = folder / f"{name}.png"
        Image.new("RGB", (SIZE, SIZE), COLOURS[name.split("_")[0]]).save(path)
        out[name] = path
    return out


def caption(image: Path) -> str:
    return image.with_suffix(".txt").read_text(encoding="utf-8")


def test_existing_caption_policies(tmp_path: Path, tagger: Tagger) -> None:
    images = make_images(tmp_path / "5_irene", ["red", "blue", "black"])
    images["red"].with_suffix(".txt").write_text("1girl, my own tag\n", encoding="utf-8")
    images["blue"].with_suffix(".txt").write_text("  \n", encoding="utf-8")  # empty: tagged even with skip
    tags = TagOptions(additional_tags=("irene",))

    result = tag_folder(TagFolderOptions(tmp_path, tags=tags), tagger=tagger)
    assert (result.kept, result.written) == (1, 2)
    assert caption(images["red"]) == "1girl, my own tag\n"
    assert caption(images["blue"]) == "irene, " + EXPECTED_CAPTIONS["blue"]
    assert caption(images["black"]) == "irene, " + EXPECTED_CAPTIONS["black"]

    tag_folder(TagFolderOptions(tmp_path, tags=tags, existing="append"), tagger=tagger)
    red_tags = EXPECTED_CAPTIONS["red"].split(", ")
    assert caption(images["red"]) == ", ".join(["irene", "1girl", "my own tag", *red_tags[1:]])
    # appending again adds nothing: every tag is already there
    again = tag_folder(TagFolderOptions(tmp_path, tags=tags, existing="append"), tagger=tagger)
    assert again.written == 0 and again.unchanged == 3

    images["red"].with_suffix(".txt").write_text("my own tag, 1girl", encoding="utf-8")
    tag_folder(TagFolderOptions(tmp_path, tags=tags, existing="prepend"), tagger=tagger)
    assert caption(images["red"]) == ", ".join(["irene", *red_tags, "my own tag"])

    tag_folder(TagFolderOptions(tmp_path, existing="overwrite"), tagger=tagger)
    assert caption(images["red"]) == EXPECTED_CAPTIONS["red"]


def test_confidences_go_to_one_hidden_scores_file_per_folder(tmp_path: Path, tagger: Tagger) -> None:
    """No ``<stem>.tagger.json`` beside every image: one ``.tagger/scores.json`` per folder."""
    images = make_images(tmp_path, ["red", "green"])
    tag_folder(TagFolderOptions(tmp_path, confidences=True, tags=TagOptions(additional_tags=("irene",))), tagger=tagger)
    assert confidences_path(images["red"]) == tmp_path / ".tagger" / "scores.json"
    assert not list(tmp_path.glob("*.tagger.json"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".json") == []
    scores = json.loads(confidences_path(images["red"]).read_text(encoding="utf-8"))
    assert scores["version"] == 1 and sorted(scores["images"]) == ["green.png", "red.png"]
    doc = scores["images"]["red.png"]
    assert doc["tags"] == ["irene", *EXPECTED_CAPTIONS["red"].split(", ")]
    assert doc["character"]["hu tao (genshin impact)"] == pytest.approx(0.9168, abs=1e-3)
    assert max(doc["ratings"], key=doc["ratings"].get) == "sensitive"
    assert all(score >= 0.05 for score in doc["general"].values())


class StopAfter(Events):
    def __init__(self, stop: StopToken, images: int) -> None:
        self.stop, self.images = stop, images

    def progress(self, stage: str, done: int, total: int, text: str = "") -> None:
        if stage == "tagging" and done >= self.images:
            self.stop.request("test stop")


def test_stop_keeps_finished_batches_and_skip_continues(tmp_path: Path, tagger: Tagger) -> None:
    names = [f"{c}_{i}" for i in range(3) for c in ("red", "green", "blue")]  # 9 images
    images = make_images(tmp_path / "1_x", names)
    stop = StopToken()
    result = tag_folder(TagFolderOptions(tmp_path, batch_size=4, workers=2), StopAfter(stop, 4), stop, tagger=tagger)
    assert result.stopped and len(result.tagged) == 4
    written = sorted(p for p in tmp_path.rglob("*.txt"))
    assert len(written) == 4  # the first batch, complete; nothing half-written
    assert not [p for p in tmp_path.rglob(".tmp-*")]
    for path in written:
        assert path.read_text() == EXPECTED_CAPTIONS[path.stem.split("_")[0]]
    rest = tag_folder(TagFolderOptions(tmp_path, batch_size=4), tagger=tagger)
    assert (rest.kept, rest.written, rest.stopped) == (4, 5, False)
    assert all(caption(p) == EXPECTED_CAPTIONS[n.split("_")[0]] for n, p in images.items())


def test_interrupt_inside_a_batch_keeps_earlier_captions(
    tmp_path: Path, tagger: Tagger, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_images(tmp_path, [f"red_{i}" for i in range(6)])
    calls = {"n": 0}
    real_predict = Tagger.predict

    def interrupted_second_time(self: Tagger, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_predict(self, batch)

    monkeypatch.setattr(Tagger, "predict", interrupted_second_time)
    with pytest.raises(KeyboardInterrupt):
        tag_folder(TagFolderOptions(tmp_path, batch_size=2), tagger=tagger)
    assert sorted(p.name for p in tmp_path.glob("*.txt")) == ["red_0.txt", "red_1.txt"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_read_only_folder_is_one_clear_error_and_nothing_changes(
    tmp_path: Path, tagger: Tagger, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "2_ro"
    images = make_images(folder, ["red", "blue"])
    images["red"].with_suffix(".txt").write_text("keep me", encoding="utf-8")
    before = snapshot(tmp_path)
    deny_writes_in(folder, monkeypatch)
    try:
        with pytest.raises(UserError, match=r"Cannot write captions in .*2_ro: the folder is read-only") as info:
            tag_folder(TagFolderOptions(tmp_path, existing="overwrite"), tagger=tagger)
        assert "nothing was changed" in str(info.value)
        assert snapshot(tmp_path) == before
    finally:
        folder.chmod(0o755)


def test_unreadable_and_clashing_files_are_listed_and_left_alone(tmp_path: Path, tagger: Tagger) -> None:
    images = make_images(tmp_path, ["red", "blue"])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    Image.new("RGB", (SIZE, SIZE), COLOURS["green"]).save(tmp_path / "red.jpg")  # same caption file as red.png
    images["blue"].with_suffix(".txt").write_bytes(b"\xff\xfe not utf-8")
    events = RecordingEvents()
    result = tag_folder(TagFolderOptions(tmp_path, existing="overwrite"), events, tagger=tagger)
    reasons = {f.path.name: f.reason for f in result.failed}
    assert set(reasons) == {"broken.png", "red.png", "blue.png"}  # red.jpg comes first (sorted) and owns red.txt
    assert reasons["red.png"] == "it shares the caption file red.txt with red.jpg"
    assert "not UTF-8" in reasons["blue.png"]
    assert images["blue"].with_suffix(".txt").read_bytes() == b"\xff\xfe not utf-8"
    [warning] = [t for t in events.texts("warning") if "skipped" in t]
    assert warning.startswith("3 images were skipped:") and "broken.png" in warning


def test_progress_reaches_the_total_when_the_last_images_are_broken(tmp_path: Path, tagger: Tagger) -> None:
    make_images(tmp_path, ["red", "blue"])
    (tmp_path / "zz_broken.png").write_bytes(b"")
    events = RecordingEvents()
    result = tag_folder(TagFolderOptions(tmp_path, batch_size=2), events, tagger=tagger)
    assert (result.written, len(result.failed)) == (2, 1)
    assert events.last_progress[:3] == ("tagging", 3, 3)


def test_nothing_to_do_does_not_load_a_model(tmp_path: Path) -> None:
    images = make_images(tmp_path, ["red"])
    images["red"].with_suffix(".txt").write_text("done")
    events = RecordingEvents()
    result = tag_folder(TagFolderOptions(tmp_path, model="no-such-model"), events)
    assert result.kept == 1 and result.tagged == []
    assert "Nothing to tag" in events.texts("info")[0]


def test_bad_options_and_folders(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="batch size must be at least 1"):
        TagFolderOptions(tmp_path, batch_size=-1)
    with pytest.raises(UserError, match="existing-caption policy"):
        TagFolderOptions(tmp_path, existing="replace")
    with pytest.raises(UserError, match="does not exist"):
        tag_folder(TagFolderOptions(tmp_path / "missing"))


def test_fixed_batch_model_tags_a_folder_the_same(tmp_path: Path) -> None:
    fixed = Tagger(local_model_files(write_tiny_tagger(tmp_path / "fixed", size=SIZE, fixed_batch=1)), device="cpu")
    images = make_images(tmp_path / "data", ["red", "green", "blue", "black", "white"])
    result = tag_folder(TagFolderOptions(tmp_path / "data", batch_size=4), tagger=fixed)
    assert result.written == 5
    assert all(caption(p) == EXPECTED_CAPTIONS[n] for n, p in images.items())


def test_progress_and_summary_events(tmp_path: Path, tagger: Tagger) -> None:
    make_images(tmp_path, ["red", "blue", "green"])
    events = RecordingEvents()
    result = tag_folder(TagFolderOptions(tmp_path), events, tagger=tagger)
    assert events.last_progress[:3] == ("tagging", 3, 3)
    assert "on CPU (batch 4," in events.texts("info")[0]  # the automatic CPU batch size
    assert result.images_per_second > 0
    assert events.texts("info")[-1].startswith("Tagged 3 images in")
    doc = result.to_json()
    assert doc["written"] == 3 and doc["failed"] == [] and len(doc["tagged"]) == 3


def test_read_only_caption_is_left_alone_even_for_an_administrator(tmp_path: Path, tagger: Tagger) -> None:
    images = make_images(tmp_path, ["red", "blue"])
    protected = images["red"].with_suffix(".txt")
    protected.write_text("precious", encoding="utf-8")
    protected.chmod(0o444)
    try:
        result = tag_folder(TagFolderOptions(tmp_path, existing="overwrite"), tagger=tagger)
        assert protected.read_text(encoding="utf-8") == "precious"
        reasons = {f.path.name: f.reason for f in result.failed}
        assert "read-only" in reasons["red.png"]
        assert caption(images["blue"]) == EXPECTED_CAPTIONS["blue"]
    finally:
        protected.chmod(0o644)


def test_old_per_image_sidecars_are_migrated_into_the_scores_file(tmp_path: Path, tagger: Tagger) -> None:
    images = make_images(tmp_path, ["red", "green"])
    old = {"model": "old", "general": {"smile": 0.7}, "character": {}, "tags": ["smile"]}
    (tmp_path / "green.tagger.json").write_text(json.dumps(old), encoding="utf-8")
    (tmp_path / "red.tagger.json").write_text(json.dumps(old), encoding="utf-8")
    green_caption = images["green"].with_suffix(".txt")
    green_caption.write_text("smile", encoding="utf-8")  # green is kept (existing="skip"); red is tagged
    tag_folder(TagFolderOptions(tmp_path, confidences=True), tagger=tagger)
    scores = read_scores(tmp_path)
    assert scores["green.png"] == old  # carried over from the old sidecar
    assert scores["red.png"]["model"] != "old"  # the new run's scores win
    assert not list(tmp_path.glob("*.tagger.json"))  # migrated, then removed


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
@pytest.mark.parametrize("existing", ["skip", "overwrite"])
def test_a_caption_that_is_a_fifo_never_hangs_the_tagger(tmp_path: Path, tagger: Tagger, existing: str) -> None:
    import threading

    images = make_images(tmp_path, ["red", "green"])
    fifo = images["red"].with_suffix(".txt")
    os.mkfifo(fifo)
    box: list = []
    thread = threading.Thread(
        target=lambda: box.append(tag_folder(TagFolderOptions(tmp_path, existing=existing), tagger=tagger)),
        daemon=True,
    )
    thread.start()
    thread.join(30)
    if thread.is_alive():  # unblock the stuck reader, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert box, "the tagger hangs on a caption that is a FIFO"
    assert images["green"].with_suffix(".txt").read_text() == EXPECTED_CAPTIONS["green"]
    if existing == "overwrite":
        assert "not a regular file" in box[0].failed[0].reason
