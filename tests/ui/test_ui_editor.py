"""The caption editor's handlers in-process: the caption box follows the session, suggestions spare
the activation tag, unreadable images are left out as the trainer leaves them out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lib_lora.data.dataset import scan_dataset
from lib_lora.data.demo import write_demo_dataset
from lib_lora.ui.tab import build_tab
from support.data_images import corrupt_zlib_png
from support.ui_host import FakeHost
from support.ui_tab import Select, unchanged, value

pytestmark = pytest.mark.ui

STATUS, INFO, CAPTION, SHOWN = 7, 8, 9, 10


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_demo_dataset(tmp_path / "data", captions="simple").root


@pytest.fixture
def tab(tmp_path: Path):
    return build_tab(FakeHost(tmp_path))[1]


def _text(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", html or "")


def _view(state, **kw):
    values = {"include": "", "include_mode": "and", "exclude": "", "exclude_mode": "or", "search": "", "search_mode": "contains", "page": 1, "per_page": 48, "selected": None, "shown_caption": None, "activation": "", "keep_tokens": 0, "keep_tokens_separator": "", "conditioning_data_dir": None, "alpha_mask": False}  # fmt: skip
    values.update(kw)
    return [state, *values.values()]


def _select(ed, session, index: int = 0):
    rel, _, caption, shown = ed.select_image(session, 1, 48, Select(index))
    return rel, caption, shown


def test_caption_box_follows_batch_edits_undo_and_redo(tab, dataset: Path) -> None:
    ed = tab.editor
    session = ed.load(*_view(None), str(dataset), ".txt")[0]
    rel, caption, shown = _select(ed, session)
    assert caption == shown == session.item(rel).caption
    out = ed.add_tags(*_view(session, selected=rel, shown_caption=shown), "mychar", "front")
    assert value(out[CAPTION]) == f"mychar, {caption}" == value(out[SHOWN])
    assert rel in _text(out[INFO])
    out = ed.undo(*_view(session, selected=rel, shown_caption=value(out[SHOWN])))
    assert value(out[CAPTION]) == caption
    out = ed.redo(*_view(session, selected=rel, shown_caption=caption))
    assert value(out[CAPTION]) == f"mychar, {caption}"
    out = ed.discard(*_view(session, selected=rel))
    assert value(out[CAPTION]) == caption


def test_apply_from_a_stale_box_never_reverts_a_batch_edit(tab, dataset: Path) -> None:
    ed = tab.editor
    session = ed.load(*_view(None), str(dataset), ".txt")[0]
    rel, caption, shown = _select(ed, session)
    ed.add_tags(*_view(session), "mychar", "front")  # the box was not refreshed (e.g. an older page)
    out = ed.edit_caption(*_view(session, selected=rel, shown_caption=shown), caption + ", my edit")
    assert session.item(rel).caption == f"mychar, {caption}"  # the batch edit is still there
    assert "nothing was applied" in _text(out[STATUS])
    assert value(out[CAPTION]) == f"mychar, {caption}" == value(out[SHOWN])
    # with the refreshed box the edit applies
    ed.edit_caption(*_view(session, selected=rel, shown_caption=value(out[SHOWN])), f"mychar, {caption}, my edit")
    assert session.item(rel).caption == f"mychar, {caption}, my edit"


def test_suggestions_never_put_the_activation_tag_in_the_remove_box(tab, dataset: Path) -> None:
    ed = tab.editor
    session = ed.load(*_view(None), str(dataset), ".txt")[0]
    ed.add_tags(*_view(session), "demochar", "front")  # as the tagger writes the activation tag
    ed.add_tags(*_view(session), "trigger two", "end")
    red = {"include": "redfox"}  # the guide's view: one character's images
    out = ed.show(*_view(session, keep_tokens=1, activation="trigger two", **red))
    remove, _ = ed.suggestions_to_remove(*_view(session, keep_tokens=1, activation="trigger two", **red))
    assert value(remove) == "red theme, simple background"
    assert "red theme (5)" in _text(out[4]) and "demochar" not in _text(out[4]) and "trigger two" not in _text(out[4])
    # keep_tokens 0 and an empty activation box: the first tag is still kept out
    remove, _ = ed.suggestions_to_remove(*_view(session, keep_tokens=0, **red))
    assert value(remove) == "red theme, simple background, trigger two"
    ed.remove_tags(*_view(session, **red), value(remove))
    assert all(item.tags[0] == "demochar" for item in session.items)


def test_editor_leaves_out_and_reports_an_image_the_trainer_skips(tab, dataset: Path) -> None:
    bad = corrupt_zlib_png(dataset / "3_redfox" / "broken.png")
    bad.with_suffix(".txt").write_text("redfox, broken", encoding="utf-8")
    skipped = dict(scan_dataset(dataset).skipped)
    assert bad in skipped  # the trainer skips it
    out = ed_load = tab.editor.load(*_view(None), str(dataset), ".txt")
    session = ed_load[0]
    assert "3_redfox/broken.png" not in {item.rel for item in session.items}
    assert len(session.items) == 12 and len(out[1]) == 12
    status = _text(out[STATUS])
    assert "3_redfox/broken.png cannot be read and is left out (training skips it too)" in status
    assert skipped[bad] in status  # the same reason as the trainer's


# -- loss masks marked in the gallery (issue 17: masked_loss / alpha_mask) -----------------------------


def _marked(out) -> dict[str, str]:
    """gallery caption -> rel for each thumbnail: ``{rel: mark}`` ("" when unmarked)."""
    marks = {}
    for _thumb, caption in out[1]:
        head = caption.split(": ", 1)[0].removeprefix("* ")
        mark, _, rel = head.rpartition(" · ")
        marks[rel] = mark
    return marks


def test_gallery_marks_the_images_with_a_mask_file_as_training_finds_them(tab, dataset: Path, tmp_path: Path) -> None:
    from PIL import Image

    from lib_lora.data.masks import MaskSource

    masks = tmp_path / "masks"
    (masks / "3_redfox").mkdir(parents=True)
    Image.new("L", (8, 8), 255).save(masks / "3_redfox" / "redfox_02.png")  # in the subset's own folder
    Image.new("L", (8, 8), 255).save(masks / "bluebird_01.webp")  # or directly in the mask folder
    Image.new("L", (8, 8), 255).save(masks / "2_greenleaf.png")  # named like no image: no mask
    ed = tab.editor
    session = ed.load(*_view(None), str(dataset), ".txt")[0]
    out = ed.show(*_view(session, conditioning_data_dir=str(masks)))
    marks = _marked(out)
    assert {rel for rel, m in marks.items() if m} == {"3_redfox/redfox_02.png", "2_bluebird/bluebird_01.png"}
    assert set(marks.values()) == {"mask", ""}
    # the same images the training's mask lookup (data.masks) finds; the rest are the ones it reports missing
    scan = scan_dataset(dataset)
    missing = {p.relative_to(dataset).as_posix() for p in MaskSource(scan, mask_dir=masks).missing()}
    assert missing == {rel for rel, m in marks.items() if not m}
    info = _text(out[2])
    assert f"mask folder {masks}" in info and f"2 of the {len(marks)} images on this page have one" in info
    # no mask source on the Train tab: no marks, no note
    out = ed.show(*_view(session))
    assert set(_marked(out).values()) == {""} and "Masks" not in _text(out[2])


def test_gallery_marks_transparent_images_with_alpha_mask(tab, dataset: Path) -> None:
    from PIL import Image

    from lib_lora.data.masks import load_alpha_mask

    path = dataset / "2_greenleaf" / "greenleaf_02.png"
    with Image.open(path) as image:
        rgba = image.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(path)
    ed = tab.editor
    session = ed.load(*_view(None), str(dataset), ".txt")[0]
    marks = _marked(ed.show(*_view(session, alpha_mask=True)))
    assert {rel for rel, m in marks.items() if m} == {"2_greenleaf/greenleaf_02.png"}
    assert marks["2_greenleaf/greenleaf_02.png"] == "alpha mask"
    assert all((load_alpha_mask(dataset / rel) is not None) == bool(m) for rel, m in marks.items())
    assert set(_marked(ed.show(*_view(session, alpha_mask=False))).values()) == {""}


def test_choosing_a_mask_source_on_the_train_tab_refreshes_the_gallery(tab, dataset: Path, tmp_path: Path) -> None:
    ed = tab.editor
    form = tab.train.form.components
    wired = [
        d for fn, d in zip(tab.blocks.fns, tab.blocks.dependencies) if getattr(fn.fn, "__name__", "") == "refresh_marks"
    ]
    triggers = {t[0] if isinstance(t, (list, tuple)) else t for d in wired for t in d["targets"]}
    assert {form["conditioning_data_dir"]._id, form["alpha_mask"]._id} <= triggers
    assert all(ed.gallery._id in d["outputs"] for d in wired)
    # nothing loaded yet: the editor's screen is left as it is (no "load the captions" over its status)
    assert all(unchanged(u) for u in ed.refresh_marks(*_view(None, alpha_mask=True)))
    session = ed.load(*_view(None), str(dataset), ".txt")[0]
    out = ed.refresh_marks(*_view(session, conditioning_data_dir=str(tmp_path / "none")))
    assert "0 of the" in _text(out[2])


def test_every_editor_message_is_a_sentence(tab, dataset: Path) -> None:
    """Each batch operation, undo, redo, discard and save answers with a capital letter first, as the rest
    of the app does ("Add at the front: mychar: 12 captions changed", not "add at the front: ...")."""
    ed = tab.editor
    session = ed.load(*_view(None), str(dataset), ".txt")[0]
    steps = [
        ("add", lambda: ed.add_tags(*_view(session), "mychar", "front"), "Add at the front: mychar: 12 captions"),
        ("remove", lambda: ed.remove_tags(*_view(session), "redfox"), "Remove: redfox: 5 captions"),
        ("replace", lambda: ed.replace(*_view(session), "mychar", "hero", False, False), None),
        ("front", lambda: ed.move_to_front(*_view(session), "hero"), "Move to front: hero:"),
        ("sort", lambda: ed.sort_tags(*_view(session), "alpha", 1), None),
        ("spaces", lambda: ed.underscores(*_view(session)), None),
        ("dedupe", lambda: ed.dedupe(*_view(session)), None),
        ("undo", lambda: ed.undo(*_view(session)), "Undo "),
        ("redo", lambda: ed.redo(*_view(session)), "Redo "),
        ("save", lambda: ed.save(*_view(session), "ask"), "Saved 12 captions"),
        ("nothing to discard", lambda: ed.discard(*_view(session)), "No unsaved changes to discard."),
        ("remove a missing tag", lambda: ed.remove_tags(*_view(session), "nowhere"), "Remove: nowhere: 0 captions"),
        ("edit again", lambda: ed.add_tags(*_view(session), "extra", "end"), "Add at the end: extra: 12 captions"),
        ("discard", lambda: ed.discard(*_view(session)), "Discard unsaved changes: 12 captions changed"),
    ]
    for name, step, expected in steps:
        status = " ".join(_text(step()[STATUS]).split())
        assert status[:1].isupper(), f"{name}: {status!r}"
        if expected:
            assert status.startswith(expected), f"{name}: {status!r}"
        if ": 0 captions changed" in status or status.startswith("No "):
            assert "Not saved yet" not in status, f"{name}: {status!r}"  # nothing was changed


def test_discard_is_not_followed_by_not_saved_yet(tab, dataset: Path) -> None:
    """'Discard unsaved changes: 12 captions changed of 12 shown. Not saved yet.' after a discard, when
    nothing is left to save."""
    ed = tab.editor
    session = ed.load(*_view(None), str(dataset), ".txt")[0]
    ed.add_tags(*_view(session), "mychar", "front")
    status = " ".join(_text(ed.discard(*_view(session))[STATUS]).split())
    assert status.startswith("Discard unsaved changes: 12 captions changed") and "Not saved yet" not in status
    assert session.dirty_count == 0


def test_loading_another_folder_with_unsaved_changes_names_both_folders(tab, dataset: Path, tmp_path: Path) -> None:
    ed = tab.editor
    session = ed.load(*_view(None), str(dataset), ".txt")[0]
    ed.add_tags(*_view(session, include="redfox"), "mychar", "front")
    other = tmp_path / "other"
    other.mkdir()
    status = " ".join(_text(ed.load(*_view(session), str(other), ".txt")[STATUS]).split())
    assert f"5 unsaved caption changes in {dataset} are kept: save or discard them before loading {other}." in status
    ed.discard(*_view(session))
    ed.edit_caption(*_view(session, selected=session.items[0].rel, shown_caption=session.items[0].caption), "x")
    status = " ".join(_text(ed.load(*_view(session), str(dataset), ".txt")[STATUS]).split())
    assert f"1 unsaved caption change in {dataset} is kept: save or discard it to reload." in status, status


def test_the_page_box_never_runs_past_the_last_page(tab, dataset: Path) -> None:
    """Next page on 'Page 1 of 1' put 2, 3, 4 ... in the Page box (the gallery stayed on page 1), so
    Previous page then seemed to do nothing; a typed 999 stayed in the box beside 'Page 1 of 1'."""
    ed = tab.editor
    session = ed.load(*_view(None), str(dataset), ".txt")[0]
    assert ed.turn_page(1, 1, session, 48) == 1  # 12 images: one page of 48
    assert ed.turn_page(999, 0, session, 48) == 1  # a typed page number, clamped
    assert ed.turn_page(3, 1, session, 4) == 3 and ed.turn_page(3, -1, session, 4) == 2  # 3 pages of 4
    ed.show(*_view(session, include="redfox"))  # 5 images shown: 2 pages of 4
    assert ed.turn_page(2, 1, session, 4) == 2
    assert ed.turn_page("abc", 1, session, 4) == 1
