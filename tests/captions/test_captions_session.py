"""The editing session: filtered batch edits, per-image edit, undo/redo, preview, safe save, conflicts."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest

from lib_lora.captions import (
    BACKUP_DIR_NAME,
    CaptionSession,
    TagFilter,
    list_backups,
    read_backup,
)
from lib_lora.common.errors import UserError
from lib_lora.events import RecordingEvents, StopToken
from support.captions_data import caption_text, make_dataset, snapshot

FILES = {
    "10_irene/a.png": "1girl, long_hair, ^_^, smile, long_hair\n",
    "10_irene/b.png": "irene, 1girl, blue_eyes",
    "10_irene/c.png": None,
    "1_bg/d.png": "scenery, no_humans",
}


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds", FILES)


def captions(session: CaptionSession) -> dict[str, str]:
    return {item.rel: item.caption for item in session.items}


def test_batch_edits_apply_to_the_filtered_images_only(root: Path) -> None:
    session = CaptionSession.open(root)
    assert session.set_filter(TagFilter.build(include="1girl")) == [0, 1]
    result = session.add_tags("irene")
    assert (result.changed, result.considered) == (1, 2)
    assert captions(session) == {
        "10_irene/a.png": "irene, 1girl, long_hair, ^_^, smile, long_hair",
        "10_irene/b.png": "irene, 1girl, blue_eyes",
        "10_irene/c.png": "",
        "1_bg/d.png": "scenery, no_humans",
    }
    assert session.tag_counts()[0].tag in ("1girl", "irene")
    assert {t.tag for t in session.tag_counts()} == {"irene", "1girl", "long_hair", "^_^", "smile", "blue_eyes"}


def test_filter_is_reevaluated_after_edits(root: Path) -> None:
    session = CaptionSession.open(root)
    session.set_filter(TagFilter.build(include="smile"))
    assert [session.items[i].rel for i in session.visible()] == ["10_irene/a.png"]
    session.remove_tags("smile")
    assert session.visible() == []


def test_guide_steps_then_undo_redo_round_trip(root: Path) -> None:
    session = CaptionSession.open(root)
    original = captions(session)
    session.add_tags("irene", "front")
    session.underscores_to_spaces()
    session.dedupe()
    final = captions(session)
    assert final["10_irene/a.png"] == "irene, 1girl, long hair, ^_^, smile"
    assert final["10_irene/c.png"] == "irene"
    assert session.history() == (["add at the front: irene", "underscores to spaces", "remove duplicate tags"], [])

    assert session.undo() is not None and session.undo() is not None and session.undo() is not None
    assert session.undo() is None
    assert captions(session) == original
    assert session.dirty_count == 0
    assert session.redo() is not None and session.redo() is not None and session.redo() is not None
    assert session.redo() is None
    assert captions(session) == final

    session.undo()
    session.sort("alpha")  # a new edit drops what could be redone
    assert not session.can_redo


def test_edits_that_change_nothing_are_not_history(root: Path) -> None:
    session = CaptionSession.open(root)
    assert session.remove_tags("absent").changed == 0
    assert not session.can_undo


def test_per_image_edit(root: Path) -> None:
    session = CaptionSession.open(root)
    session.edit("10_irene/c.png", "irene,  solo,,")
    assert session.item("10_irene/c.png").tags == ("irene", "solo")
    session.undo()
    assert session.item(2).tags == ()
    with pytest.raises(UserError, match="not part of the dataset"):
        session.edit("nope.png", "x")


def test_locked_caption_cannot_be_edited(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"a.png": "caf\xe9".encode("latin-1")})
    session = CaptionSession.open(root)
    with pytest.raises(UserError, match="not UTF-8"):
        session.edit(0, "x")
    assert session.add_tags("irene").locked == 1
    assert session.dirty_count == 0


def test_preview_counts_and_samples(root: Path) -> None:
    session = CaptionSession.open(root)
    session.add_tags("irene")
    session.underscores_to_spaces()
    preview = session.preview(sample=2)
    assert (preview.changed, preview.created, preview.total) == (4, 1, 4)
    assert len(preview.samples) == 2
    first = preview.samples[0]
    assert first.before == "1girl, long_hair, ^_^, smile, long_hair"
    assert first.after == "irene, 1girl, long hair, ^_^, smile, long hair"
    assert first.added == ("irene", "long hair") and first.removed == ("long_hair",)
    assert dict(preview.tags_added)["irene"] == 3  # b already had it
    assert session.pending()[2].before is None  # c.txt does not exist yet


def test_save_writes_only_changed_files_with_backup(root: Path) -> None:
    before = snapshot(root)
    session = CaptionSession.open(root)
    session.set_filter(TagFilter.build(include="1girl"))
    session.add_tags("irene")
    session.underscores_to_spaces()
    session.set_filter(None)
    session.add_tags("solo", "end")  # c.txt gets created

    result = session.save()
    assert result.ok
    assert result.written == ["10_irene/a.txt", "10_irene/b.txt", "1_bg/d.txt"]
    assert result.created == ["10_irene/c.txt"]
    assert caption_text(root, "10_irene/a.txt") == "irene, 1girl, long hair, ^_^, smile, long hair, solo\n"
    assert caption_text(root, "10_irene/b.txt") == "irene, 1girl, blue eyes, solo"
    assert caption_text(root, "10_irene/c.txt") == "solo"
    assert caption_text(root, "1_bg/d.txt") == "scenery, no_humans, solo"

    # the backup holds exactly the previous version of every caption that save changed
    assert result.backup is not None and result.backup.parent == root / BACKUP_DIR_NAME
    assert read_backup(result.backup) == {
        "10_irene/a.txt": before["10_irene/a.txt"],
        "10_irene/b.txt": before["10_irene/b.txt"],
        "10_irene/c.txt": None,
        "1_bg/d.txt": before["1_bg/d.txt"],
    }
    assert session.dirty_count == 0

    # nothing changed since: a second save writes nothing and keeps no new backup
    again = session.save()
    assert again.written == [] and again.backup is None
    assert len(list_backups(root)) == 1


def test_unchanged_captions_are_not_rewritten(root: Path) -> None:
    session = CaptionSession.open(root)
    session.set_filter(TagFilter.build(include="scenery"))
    mtimes = {p: os.stat(p).st_mtime_ns for p in root.rglob("*.txt")}
    session.replace("no_humans", "no humans")
    assert session.save().written == ["1_bg/d.txt"]
    for path, mtime in mtimes.items():
        if path.name != "d.txt":
            assert os.stat(path).st_mtime_ns == mtime, path


def test_undo_after_save_then_save_restores_previous_text(root: Path) -> None:
    session = CaptionSession.open(root)
    session.replace("scenery", "landscape")
    session.save()
    session.undo()
    session.save()
    assert caption_text(root, "1_bg/d.txt") == "scenery, no_humans"
    assert len(list_backups(root)) == 2


def test_caption_edited_on_disk_is_not_overwritten_silently(root: Path) -> None:
    session = CaptionSession.open(root)
    session.add_tags("solo", "end")
    (root / "10_irene/b.txt").write_text("edited elsewhere", encoding="utf-8")
    assert [c.caption for c in session.check_disk()] == ["10_irene/b.txt"]

    events = RecordingEvents()
    result = session.save(events=events)
    assert caption_text(root, "10_irene/b.txt") == "edited elsewhere"
    assert not result.ok
    [conflict] = result.unresolved
    assert conflict.caption == "10_irene/b.txt" and "changed on disk" in conflict.reason
    assert conflict.on_disk == "edited elsewhere" and conflict.ours == "irene, 1girl, blue_eyes, solo"
    assert any("changed on disk" in t for t in events.texts("warning"))
    # the others were saved; the conflicting edit is still pending
    assert caption_text(root, "10_irene/a.txt").endswith(", solo\n")
    assert session.item("10_irene/b.png").dirty


def test_conflict_overwrite_keeps_the_disk_version_in_the_backup(root: Path) -> None:
    session = CaptionSession.open(root)
    session.add_tags("solo", "end")
    (root / "10_irene/b.txt").write_text("edited elsewhere", encoding="utf-8")
    session.save()
    result = session.save(choices={"10_irene/b.png": "overwrite"})
    assert result.ok and result.written == ["10_irene/b.txt"]
    assert caption_text(root, "10_irene/b.txt") == "irene, 1girl, blue_eyes, solo"
    assert read_backup(result.backup) == {"10_irene/b.txt": b"edited elsewhere"}


def test_conflict_reload_takes_the_disk_version(root: Path) -> None:
    session = CaptionSession.open(root)
    session.add_tags("solo", "end")
    (root / "10_irene/b.txt").write_text("edited, elsewhere", encoding="utf-8")
    result = session.save(on_conflict="reload")
    assert result.ok and "10_irene/b.txt" not in result.written
    assert session.item("10_irene/b.png").tags == ("edited", "elsewhere")
    assert not session.item("10_irene/b.png").dirty
    assert caption_text(root, "10_irene/b.txt") == "edited, elsewhere"


def test_caption_deleted_on_disk_is_a_conflict(root: Path) -> None:
    session = CaptionSession.open(root)
    session.add_tags("irene")
    (root / "1_bg/d.txt").unlink()
    result = session.save()
    assert [c.reason for c in result.unresolved] == [
        f"Caption {root / '1_bg/d.txt'} was deleted on disk since it was loaded."
    ]
    assert not (root / "1_bg/d.txt").exists()


def test_read_only_caption_is_left_untouched_and_the_edit_kept(root: Path) -> None:
    target = root / "1_bg/d.txt"
    target.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    try:
        session = CaptionSession.open(root)
        session.add_tags("irene")
        result = session.save()
        assert [p.rel for p in result.failed] == ["1_bg/d.txt"]
        assert "is read-only" in result.failed[0].message
        assert target.read_text(encoding="utf-8") == "scenery, no_humans"
        assert session.item("1_bg/d.png").dirty
        assert caption_text(root, "10_irene/a.txt").startswith("irene, ")
        target.chmod(0o644)
        assert session.save().written == ["1_bg/d.txt"]
    finally:
        target.chmod(0o644)


def test_caption_replaced_by_a_folder_before_save_is_reported(root: Path) -> None:
    session = CaptionSession.open(root)
    session.add_tags("irene")
    (root / "1_bg/d.txt").unlink()
    (root / "1_bg/d.txt").mkdir()
    result = session.save()
    assert ["is a folder" in p.message for p in result.failed] == [True]
    assert (root / "1_bg/d.txt").is_dir()


def test_failed_backup_writes_nothing(root: Path) -> None:
    (root / BACKUP_DIR_NAME).write_text("in the way")
    before = snapshot(root)
    session = CaptionSession.open(root)
    session.add_tags("solo", "end")
    with pytest.raises(UserError, match="backup"):
        session.save()
    assert snapshot(root) == before
    assert session.dirty_count == 4


def test_stop_token_leaves_remaining_edits_unsaved(root: Path) -> None:
    session = CaptionSession.open(root)
    session.add_tags("solo", "end")
    token = StopToken()
    token.request()
    result = session.save(stop=token)
    assert result.stopped and not result.written
    assert session.dirty_count == 4


def test_restore_from_backup_is_an_undoable_edit(root: Path) -> None:
    session = CaptionSession.open(root)
    session.add_tags("irene")
    session.underscores_to_spaces()
    first = session.save()
    restored = session.restore(first.backup)
    assert restored.changed == 4
    assert session.item("10_irene/c.png").tags == ()
    session.save()
    assert caption_text(root, "10_irene/a.txt") == FILES["10_irene/a.png"]
    assert caption_text(root, "10_irene/c.txt") == ""
    [newest, oldest] = list_backups(root)
    assert (oldest.modified, oldest.created) == (3, 1)  # a, b, d changed; c created
    assert (newest.modified, newest.created) == (4, 0)  # all four put back (c emptied)


def test_backup_zip_can_be_unzipped_over_the_dataset(root: Path) -> None:
    before = snapshot(root)
    session = CaptionSession.open(root)
    session.add_tags("irene")
    backup = session.save().backup
    with zipfile.ZipFile(backup) as zf:
        zf.extractall(root, members=[n for n in zf.namelist() if not n.startswith(".")])
    for rel in ("10_irene/a.txt", "10_irene/b.txt", "1_bg/d.txt"):
        assert (root / rel).read_bytes() == before[rel]


def test_suggested_common_tags_skip_the_activation_tag(tmp_path: Path) -> None:
    files = {f"10_irene/{i}.png": "irene, red hair, green eyes" + (", smile" if i % 2 else "") for i in range(10)}
    session = CaptionSession.open(make_dataset(tmp_path / "ds", files))
    assert [t.tag for t in session.suggest_common_tags(0.9)] == ["green eyes", "red hair"]
    assert [t.tag for t in session.suggest_common_tags(0.5, exclude=())] == ["green eyes", "irene", "red hair", "smile"]


def test_caption_created_on_disk_for_a_captionless_image_is_a_conflict(root: Path) -> None:
    session = CaptionSession.open(root)
    session.edit("10_irene/c.png", "irene, solo")
    (root / "10_irene/c.txt").write_text("written by the tagger meanwhile", encoding="utf-8")
    result = session.save()
    assert [c.reason for c in result.unresolved] == [
        f"Caption {root / '10_irene/c.txt'} was created on disk since the dataset was loaded."
    ]
    assert caption_text(root, "10_irene/c.txt") == "written by the tagger meanwhile"


def test_changed_on_disk_lists_edits_made_elsewhere_even_without_own_edits(root: Path) -> None:
    session = CaptionSession.open(root)
    assert session.changed_on_disk() == []
    (root / "1_bg/d.txt").write_text("other", encoding="utf-8")
    (root / "10_irene/c.txt").write_text("new", encoding="utf-8")
    assert session.changed_on_disk() == ["10_irene/c.png", "1_bg/d.png"]
    assert session.check_disk() == []  # no unsaved edits there: nothing would be overwritten
    session.reload(["1_bg/d.png"])
    assert session.item("1_bg/d.png").tags == ("other",)
    assert session.changed_on_disk() == ["10_irene/c.png"]


def test_discard_changes_is_undoable(root: Path) -> None:
    session = CaptionSession.open(root)
    session.add_tags("solo", "end")
    assert session.discard_changes(["1_bg/d.png"]).changed == 1
    assert session.dirty_count == 3
    session.discard_changes()
    assert session.dirty_count == 0
    session.undo()
    assert session.dirty_count == 3


def test_move_to_front_and_sort_on_the_session(root: Path) -> None:
    session = CaptionSession.open(root)
    session.set_filter(TagFilter.build(include="1girl"))
    session.sort("alpha")
    session.move_to_front("irene, 1girl")
    assert [session.items[i].caption for i in session.visible()] == [
        "1girl, ^_^, long_hair, long_hair, smile",
        "irene, 1girl, blue_eyes",
    ]


def test_history_is_bounded(root: Path) -> None:
    session = CaptionSession(CaptionSession.open(root).dataset, history_limit=3)
    for i in range(5):
        session.edit(0, f"tag{i}")
    assert len(session.history()[0]) == 3
    while session.undo():
        pass
    assert session.item(0).tags == ("tag1",)


# -- item 12.5: the save is a compare-and-swap ------------------------------------------------------------


def _race_after_backup(monkeypatch: pytest.MonkeyPatch, path: Path, text: str) -> None:
    """Another program writes ``path`` right after the backup was taken, before the caption is written."""
    from lib_lora.captions import backups

    real = backups.write_backup

    def write_backup_then_race(*args, **kwargs):
        result = real(*args, **kwargs)
        path.write_text(text, encoding="utf-8")
        return result

    monkeypatch.setattr(backups, "write_backup", write_backup_then_race)


def test_caption_changed_between_backup_and_write_is_not_overwritten(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = CaptionSession.open(root)
    session.add_tags("irene")
    caption = root / "1_bg/d.txt"
    _race_after_backup(monkeypatch, caption, "written by another program")
    result = session.save()
    # the other program's text is on disk, ours is kept unsaved, the original is in the backup
    assert caption.read_text(encoding="utf-8") == "written by another program"
    assert read_backup(result.backup)["1_bg/d.txt"] == b"scenery, no_humans"
    (conflict,) = result.unresolved
    assert conflict.caption == "1_bg/d.txt" and conflict.on_disk == "written by another program"
    assert "while it was being saved" in conflict.reason and not result.ok
    assert session.item("1_bg/d.png").dirty and session.item("1_bg/d.png").caption == "irene, scenery, no_humans"
    assert caption_text(root, "10_irene/a.txt").startswith("irene, 1girl")  # the others were written
    # the next save sees the change as an ordinary conflict; overwrite backs the other text up first
    monkeypatch.undo()
    again = session.save(on_conflict="overwrite")
    assert again.ok and caption.read_text(encoding="utf-8") == "irene, scenery, no_humans"
    assert read_backup(again.backup)["1_bg/d.txt"] == b"written by another program"


def test_compare_and_swap_checks_at_the_replace_itself(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race injected at the last moment (after the new text is written to its temp file, right
    before the rename): still not overwritten; a caption created meanwhile is not replaced either."""
    from lib_lora.captions import session as session_module

    session = CaptionSession.open(root)
    session.edit("10_irene/a.png", "irene, solo")
    session.edit("10_irene/c.png", "irene, new")  # no caption file yet
    raced = {root / "10_irene/a.txt": "edited at the last moment", root / "10_irene/c.txt": "created meanwhile"}

    def race(path: Path) -> None:
        if path in raced:
            path.write_text(raced.pop(path), encoding="utf-8")

    monkeypatch.setattr(session_module, "_before_swap", race)
    result = session.save()
    assert caption_text(root, "10_irene/a.txt") == "edited at the last moment"
    assert caption_text(root, "10_irene/c.txt") == "created meanwhile"
    assert sorted(c.caption for c in result.unresolved) == ["10_irene/a.txt", "10_irene/c.txt"]
    assert not list((root / "10_irene").glob(".tmp-*"))  # the unused temp files are gone


# -- item 12.4: suggestions never name the activation tag -----------------------------------------------


def test_suggestions_protect_the_first_kept_tags_and_the_given_activation_tag(tmp_path: Path) -> None:
    files = {f"1_x/{i}.png": "mychar, red hair, green eyes, extra ||| smile" for i in range(10)}
    session = CaptionSession.open(make_dataset(tmp_path / "ds", files))
    names = lambda **kw: [t.tag for t in session.suggest_common_tags(0.9, **kw)]  # noqa: E731
    # the first tag (where the tagger writes the activation tag) is never suggested by default
    assert "mychar" not in names()
    assert names(keep_tokens=2) == ["extra ||| smile", "green eyes"]
    assert names(keep_tokens=0, activation="mychar, red hair") == ["extra ||| smile", "green eyes"]
    assert names(keep_tokens=0, keep_tokens_separator="|||") == []
    assert "mychar" in names(keep_tokens=0)  # nothing protects it: listed (the CLI's plain listing)
