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
from support.ui_tab import Select, value

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
    values = {"include": "", "include_mode": "and", "exclude": "", "exclude_mode": "or", "search": "", "search_mode": "contains", "page": 1, "per_page": 48, "selected": None, "shown_caption": None, "activation": "", "keep_tokens": 0, "keep_tokens_separator": ""}  # fmt: skip
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
