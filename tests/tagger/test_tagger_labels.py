"""selected_tags.csv reading, thresholds, MCut and caption post-processing / merging."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lib_lora.common.errors import UserError
from lib_lora.tagger.labels import (
    Labels,
    TagOptions,
    confidences_document,
    mcut_threshold,
    merge_caption,
    predict_tags,
    read_labels,
    tag_key,
)

CSV = """tag_id,name,category,count
9999999,general,9,1
9999998,sensitive,9,1
9999997,questionable,9,1
9999996,explicit,9,1
1,long_hair,0,100
2,^_^,0,90
3,hu_tao_(genshin_impact),4,80
4,smile,0,70
5,>_<,0,60
6,star_(symbol),0,50
7,amiya_(arknights),4,40
8,open_mouth,0,30
"""


@pytest.fixture()
def labels(tmp_path: Path) -> Labels:
    path = tmp_path / "selected_tags.csv"
    path.write_text(CSV, encoding="utf-8")
    return read_labels(path)


def scores(**values: float) -> np.ndarray:
    order = [
        "general",
        "sensitive",
        "questionable",
        "explicit",
        "long_hair",
        "^_^",
        "hu_tao_(genshin_impact)",
        "smile",
        ">_<",
        "star_(symbol)",
        "amiya_(arknights)",
        "open_mouth",
    ]
    return np.array([values.get(name, 0.01) for name in order], dtype=np.float32)


def test_categories_come_from_the_column_not_the_position(labels: Labels) -> None:
    assert labels.rating.tolist() == [0, 1, 2, 3]
    assert labels.character.tolist() == [6, 10]
    assert labels.general.tolist() == [4, 5, 7, 8, 9, 11]


def test_bad_label_files_are_named(tmp_path: Path) -> None:
    bad_header = tmp_path / "a.csv"
    bad_header.write_text("id,tag\n1,long_hair\n")
    with pytest.raises(UserError, match=r"a\.csv is not a WD tagger label file"):
        read_labels(bad_header)
    bad_row = tmp_path / "b.csv"
    bad_row.write_text("tag_id,name,category,count\n1,long_hair,general,5\n")
    with pytest.raises(UserError, match=r"b\.csv line 2"):
        read_labels(bad_row)
    with pytest.raises(UserError, match="does not exist"):
        read_labels(tmp_path / "missing.csv")
    binary = tmp_path / "c.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(UserError, match="not a UTF-8"):
        read_labels(binary)


def test_thresholds_order_kaomoji_and_ratings(labels: Labels) -> None:
    s = scores(general=0.2, sensitive=0.7, long_hair=0.9, smile=0.5, **{"^_^": 0.6, "hu_tao_(genshin_impact)": 0.88})
    s[labels.names.index("amiya_(arknights)")] = 0.84  # below the character threshold
    s[labels.names.index("open_mouth")] = 0.35  # equal to the threshold: not selected (strictly greater)
    p = predict_tags(s, labels, TagOptions())
    assert p.tags == ["long hair", "hu tao (genshin impact)", "^_^", "smile"]
    assert p.ratings == pytest.approx({"general": 0.2, "sensitive": 0.7, "questionable": 0.01, "explicit": 0.01})
    assert p.rating == "sensitive"
    assert "sensitive" not in p.tags  # ratings only on request
    with_rating = predict_tags(s, labels, TagOptions(include_ratings=True, additional_tags=("irene",)))
    assert with_rating.tags[:3] == ["irene", "sensitive", "long hair"]


def test_equal_scores_sort_by_name_and_alphabetical_order(labels: Labels) -> None:
    s = scores(smile=0.6, long_hair=0.6, **{">_<": 0.9})
    assert predict_tags(s, labels, TagOptions()).tags == [">_<", "long hair", "smile"]
    s2 = scores(smile=0.9, long_hair=0.5, **{"star_(symbol)": 0.7})
    assert predict_tags(s2, labels, TagOptions(order="alphabetical")).tags == ["long hair", "smile", "star (symbol)"]


def test_characters_first(labels: Labels) -> None:
    s = scores(long_hair=0.99, **{"hu_tao_(genshin_impact)": 0.9})
    assert predict_tags(s, labels, TagOptions(characters_first=True)).tags == ["hu tao (genshin impact)", "long hair"]


def test_underscores_escape_and_exclude(labels: Labels) -> None:
    s = scores(long_hair=0.9, **{"^_^": 0.8, "star_(symbol)": 0.7, "hu_tao_(genshin_impact)": 0.95})
    kept = predict_tags(s, labels, TagOptions(keep_underscores=True))
    assert kept.tags == ["hu_tao_(genshin_impact)", "long_hair", "^_^", "star_(symbol)"]
    escaped = predict_tags(s, labels, TagOptions(escape_parentheses=True))
    assert escaped.tags == [r"hu tao \(genshin impact\)", "long hair", "^_^", r"star \(symbol\)"]
    excluded = predict_tags(s, labels, TagOptions(exclude_tags=("Long_Hair", "^_^", r"re:.*\(symbol\)")))
    assert excluded.tags == ["hu tao (genshin impact)"]


def test_mcut_is_the_midpoint_of_the_largest_gap() -> None:
    assert mcut_threshold(np.array([0.9, 0.85, 0.3, 0.2])) == pytest.approx(0.575)
    assert mcut_threshold(np.array([0.1, 0.95, 0.5])) == pytest.approx(0.725)
    assert mcut_threshold(np.array([0.4])) == 0.0


def test_mcut_per_category_with_the_character_floor(labels: Labels) -> None:
    s = scores(long_hair=0.8, smile=0.75, **{"^_^": 0.2, ">_<": 0.18, "hu_tao_(genshin_impact)": 0.12})
    s[labels.names.index("amiya_(arknights)")] = 0.02
    p = predict_tags(s, labels, TagOptions(general_mcut=True, character_mcut=True))
    assert p.general_threshold == pytest.approx((0.75 + 0.2) / 2)
    assert [t for t, _ in p.general] == ["long hair", "smile"]
    # the character gap (0.12 vs 0.02) gives 0.07, floored at 0.15: hu tao stays out
    assert p.character_threshold == pytest.approx(0.15)
    assert p.character == []
    # without MCut the defaults apply: 0.35 keeps long hair and smile only, too
    assert predict_tags(s, labels, TagOptions()).tags == ["long hair", "smile"]


def test_options_are_validated() -> None:
    with pytest.raises(UserError, match="general threshold"):
        TagOptions(general_threshold=1.5)
    with pytest.raises(UserError, match="tag order"):
        TagOptions(order="random")
    with pytest.raises(UserError, match="regular expression"):
        TagOptions(exclude_tags=("re:(",))


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("skip", ["1girl", "Smile"]),
        ("overwrite", ["irene", "long hair", "smile"]),
        ("append", ["irene", "1girl", "Smile", "long hair"]),
        ("prepend", ["irene", "long hair", "smile", "1girl"]),
    ],
)
def test_existing_caption_policies_merge_without_duplicates(policy: str, expected: list[str]) -> None:
    existing = ["1girl", "Smile"]
    new = ["irene", "long hair", "smile"]  # the tagger's tags, the additional tag first
    assert merge_caption(existing, new, policy, ["irene"]) == expected


def test_duplicates_are_found_across_spelling() -> None:
    assert tag_key("Long_Hair") == tag_key("long hair")
    assert tag_key(r"hu tao \(genshin impact\)") == tag_key("hu_tao_(genshin_impact)")
    assert tag_key("^_^") != tag_key("^ ^")
    existing = ["long_hair", r"star \(symbol\)"]
    assert merge_caption(existing, ["long hair", "star (symbol)", "smile"], "append") == [
        "long_hair",
        r"star \(symbol\)",
        "smile",
    ]


def test_an_empty_caption_is_tagged_even_with_skip() -> None:
    assert merge_caption([], ["irene", "smile"], "skip", ["irene"]) == ["irene", "smile"]
    with pytest.raises(UserError, match="existing-caption policy"):
        merge_caption([], [], "merge")


def test_confidences_document(labels: Labels) -> None:
    s = scores(long_hair=0.91234, smile=0.04, **{"hu_tao_(genshin_impact)": 0.5})
    options = TagOptions()
    p = predict_tags(s, labels, options)
    doc = confidences_document(p, s, labels, options, "tiny")
    assert doc["general"] == {"long hair": pytest.approx(0.9123)}  # smile (0.04) is under the 0.05 floor
    assert doc["character"] == {"hu tao (genshin impact)": 0.5}  # kept although below its threshold
    assert set(doc["ratings"]) == {"general", "sensitive", "questionable", "explicit"}
    assert doc["tags"] == ["long hair"] and doc["character_threshold"] == 0.85
