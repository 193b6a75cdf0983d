"""Batch operations as pure functions on tag tuples (table-driven), and filters."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib_lora.captions import (
    AddTags,
    Dedupe,
    MoveToFront,
    RemoveTags,
    ReplaceText,
    SortTags,
    TagFilter,
    UnderscoresToSpaces,
    common_tags,
    filter_items,
    load_dataset,
    run_operation,
    search_tags,
)
from lib_lora.captions.ops import OpContext
from lib_lora.common.errors import UserError
from lib_lora.common.tags import KAOMOJI
from support.captions_data import make_dataset

CTX = OpContext()


def tags(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


@pytest.mark.parametrize(
    "op, before, after",
    [
        # activation tag first, never twice
        (AddTags(("irene",)), "1girl, smile", "irene, 1girl, smile"),
        (AddTags(("irene",)), "1girl, irene, smile, irene", "irene, 1girl, smile"),
        (AddTags(("irene",)), "irene, 1girl", "irene, 1girl"),
        (AddTags(("irene, solo",)), "1girl, solo", "irene, solo, 1girl"),
        (AddTags(("solo",), "end"), "1girl", "1girl, solo"),
        (AddTags(("solo",), "end"), "solo, 1girl", "solo, 1girl"),
        (RemoveTags(("smile, solo",)), "1girl, smile, solo, smile", "1girl"),
        (RemoveTags(("absent",)), "1girl", "1girl"),
        # replace: per tag, plain = whole tag only
        (ReplaceText("1girl", "1woman"), "1girl, 1girls", "1woman, 1girls"),
        (ReplaceText("1girl", ""), "1girl, smile", "smile"),
        (ReplaceText("hat", "hat, red hat"), "hat, smile", "hat, red hat, smile"),
        (ReplaceText("SMILE", "grin", ignore_case=True), "smile", "grin"),
        # per tag, regex: the pattern matches the whole tag; capture groups expand
        (
            ReplaceText(r"(\w+) hair", r"\1 hairstyle", regex=True),
            "long hair, hair, smile",
            "long hairstyle, hair, smile",
        ),
        (ReplaceText(r"(.+)_\((.+)\)", r"\1, \2", regex=True), "hu_tao_(genshin_impact)", "hu_tao, genshin_impact"),
        (ReplaceText(r"(?P<c>\w+)_eyes", r"\g<c> eyes", regex=True), "blue_eyes", "blue eyes"),
        (ReplaceText("hair", "X", regex=True), "long hair", "long hair"),  # not the whole tag
        # whole caption
        (ReplaceText("long ", "", whole_caption=True), "long hair, long legs", "hair, legs"),
        (ReplaceText(r"(\w+), smile", r"smile, \1", regex=True, whole_caption=True), "a, b, smile", "a, smile, b"),
        (ReplaceText("1girl, ", "", whole_caption=True), "1girl, solo", "solo"),
        (
            UnderscoresToSpaces(),
            "long_hair, ^_^, >_<, hu_tao_(genshin_impact)",
            "long hair, ^_^, >_<, hu tao (genshin impact)",
        ),
        (UnderscoresToSpaces(), "_, a__b", "a b"),  # no empty or double-spaced tags
        (Dedupe(), "a, b, a, c, b", "a, b, c"),
        # the same tag for CLIP (which lowercases) and for the tagger: first spelling kept; kaomoji differ
        (
            Dedupe(),
            r"long hair, Long Hair, long_hair, hu tao \(genshin impact\), hu_tao_(genshin_impact), ^_^, ^ ^",
            r"long hair, hu tao \(genshin impact\), ^_^, ^ ^",
        ),
        (SortTags("alpha"), "b, A, c, a", "A, a, b, c"),
        (SortTags("alpha", keep_first=1), "irene, c, b, a", "irene, a, b, c"),
        (SortTags("alpha", reverse=True), "a, c, b", "c, b, a"),
        (MoveToFront(("solo, 1girl",)), "smile, 1girl, solo", "solo, 1girl, smile"),
        (MoveToFront(("absent",)), "smile, 1girl", "smile, 1girl"),
    ],
)
def test_operation(op: object, before: str, after: str) -> None:
    assert op.apply(tags(before), CTX) == tags(after)  # type: ignore[attr-defined]


def test_every_kaomoji_survives_underscores_to_spaces() -> None:
    result = UnderscoresToSpaces().apply(tuple(sorted(KAOMOJI)), CTX)
    assert result == tuple(sorted(KAOMOJI))


def test_sort_by_frequency_and_confidence() -> None:
    freq = {"common": 10, "mid": 5, "rare": 1}
    assert SortTags("frequency").apply(("rare", "common", "mid", "unknown"), OpContext(freq)) == (
        "common",
        "mid",
        "rare",
        "unknown",
    )
    conf = {"a": 0.5, "b": 0.9, "c": 0.7}
    # tags without a confidence (added by hand) follow in their order
    got = SortTags("confidence", keep_first=1).apply(("irene", "a", "hand", "b", "c", "z"), OpContext({}, conf))
    assert got == ("irene", "b", "c", "a", "hand", "z")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ReplaceText("(unclosed", "x", regex=True), r"Regular expression '\(unclosed' is not valid"),
        (
            lambda: ReplaceText("(a)", r"\2", regex=True),
            r"Replacement '\\\\2' .* is not valid: invalid group reference",
        ),
        (lambda: ReplaceText("a", r"\g<nope>", regex=True), "unknown group name"),
        (lambda: ReplaceText("", "x"), "empty"),
        (lambda: SortTags("length"), "Sort order 'length' is not known"),
        (lambda: AddTags(("x",), "middle"), "Position 'middle'"),
    ],
)
def test_bad_operation_options_are_user_errors(make: object, message: str) -> None:
    with pytest.raises(UserError, match=message):
        make()  # type: ignore[operator]


def test_run_operation_touches_only_given_indices_and_skips_locked(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"a.png": "x", "b.png": "y", "c.png": b"\xe9"})
    items = load_dataset(root).items
    changed = run_operation(AddTags(("t",)), items, [1, 2])
    assert changed == {1: ("t", "y")}
    assert items[1].tags == ("y",)  # pure: nothing modified


def test_common_tags_threshold_and_exclusion(tmp_path: Path) -> None:
    files = {f"{i}.png": "irene, red hair" + (", smile" if i < 9 else "") for i in range(10)}
    files["9.png"] += ", rare"
    items = load_dataset(make_dataset(tmp_path / "ds", files)).items
    got = [(t.tag, t.count) for t in common_tags(items, threshold=0.9, exclude=("irene",))]
    assert got == [("red hair", 10), ("smile", 9)]  # 9 of 10 is exactly 90 %
    assert [t.tag for t in common_tags(items, threshold=1.0, exclude=())] == ["irene", "red hair"]
    assert [t.tag for t in common_tags(items, indices=[9], threshold=1.0)] == ["irene", "rare", "red hair"]
    with pytest.raises(UserError, match="Threshold"):
        common_tags(items, threshold=90)


def _filtered(tmp_path: Path, tag_filter: TagFilter) -> list[str]:
    root = make_dataset(
        tmp_path / "ds",
        {
            "a.png": "1girl, smile, long hair",
            "b.png": "1girl, solo",
            "c.png": "1boy, smile",
            "d.png": "scenery",
        },
    )
    items = load_dataset(root).items
    return [items[i].rel[0] for i in filter_items(items, tag_filter)]


@pytest.mark.parametrize(
    "tag_filter, expected",
    [
        (TagFilter(), "abcd"),
        (TagFilter.build(include="1girl, smile"), "a"),
        (TagFilter.build(include="1girl, smile", include_mode="or"), "abc"),
        (TagFilter.build(exclude="smile, solo"), "d"),
        (TagFilter.build(exclude="1girl, smile", exclude_mode="and"), "bcd"),
        (TagFilter.build(include="smile", exclude="1boy"), "a"),
        (TagFilter.build(search="HAIR"), "a"),
        (TagFilter.build(search="HAIR", case_sensitive=True), ""),
        (TagFilter.build(search="1", search_mode="prefix"), "abc"),
        (TagFilter.build(search="ry", search_mode="suffix"), "d"),
        (TagFilter.build(search="smile", search_mode="exact"), "ac"),
        (TagFilter.build(search=r"^1(girl|boy)$", search_mode="regex"), "abc"),
        (TagFilter.build(selection=["b.png", "d.png"]), "bd"),
        (TagFilter.build(include="1girl", selection=["b.png", "d.png"]), "b"),
    ],
)
def test_filters(tmp_path: Path, tag_filter: TagFilter, expected: str) -> None:
    assert "".join(_filtered(tmp_path, tag_filter)) == expected


def test_bad_filters_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"Regular expression '\[' is not valid"):
        _filtered(tmp_path, TagFilter.build(search="[", search_mode="regex"))
    with pytest.raises(UserError, match="Search mode"):
        TagFilter.build(search="x", search_mode="glob").matcher()
    with pytest.raises(UserError, match="include_mode"):
        TagFilter.build(include="x", include_mode="xor").matcher()


def test_search_tags_narrows_a_tag_list() -> None:
    assert search_tags(["long hair", "short hair", "smile"], "hair") == ["long hair", "short hair"]
    assert search_tags(["a", "b"], "") == ["a", "b"]
