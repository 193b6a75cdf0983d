"""Caption processing: sd-scripts' order and random draws (golden outputs produced by sd-scripts)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lib_lora.common.errors import UserError
from lib_lora.data.captions import CaptionOptions, is_static, process_caption

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "sdscripts_captions.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("index", range(len(GOLDEN["options"])), ids=lambda i: json.dumps(GOLDEN["options"][i]))
def test_same_output_as_sd_scripts_for_the_same_seed(index: int) -> None:
    options = CaptionOptions(**GOLDEN["options"][index])
    cases = [c for c in GOLDEN["cases"] if c[0] == index]
    assert cases
    for _, caption_index, seed, epoch, expected in cases:
        rng = random.Random(seed)
        got = [process_caption(GOLDEN["captions"][caption_index], options, epoch, rng) for _ in expected]
        assert got == expected, (GOLDEN["captions"][caption_index], seed, epoch)


CAPTION = "irene, 1girl, solo, long hair, smile, blue eyes"


def test_no_options_keep_the_caption() -> None:
    assert process_caption(CAPTION, CaptionOptions(), 1, random.Random(0)) == CAPTION


def test_keep_tokens_keeps_the_trigger_first_while_the_rest_shuffles() -> None:
    options = CaptionOptions(shuffle_caption=True, keep_tokens=1)
    rng = random.Random(3)
    outputs = [process_caption(CAPTION, options, 1, rng) for _ in range(50)]
    assert all(o.startswith("irene, ") for o in outputs)
    assert len(set(outputs)) > 10
    assert all(sorted(o.split(", ")) == sorted(CAPTION.split(", ")) for o in outputs)


def test_separator_fixes_a_prefix_and_a_suffix() -> None:
    caption = "masterpiece, irene ||| red dress, outdoors, smile, hat ||| watermark"
    options = CaptionOptions(shuffle_caption=True, keep_tokens_separator="|||")
    rng = random.Random(1)
    outputs = [process_caption(caption, options, 1, rng) for _ in range(40)]
    for out in outputs:
        tags = out.split(", ")
        assert tags[:2] == ["masterpiece", "irene"] and tags[-1] == "watermark"
        assert sorted(tags[2:-1]) == ["hat", "outdoors", "red dress", "smile"]
        assert "|||" not in out
    assert len(set(outputs)) > 5


def test_prefix_and_suffix_join_with_a_space() -> None:
    options = CaptionOptions(caption_prefix="trigger,", caption_suffix=", best quality")
    assert process_caption("1girl", options, 1, random.Random(0)) == "trigger, 1girl , best quality"


def test_whole_caption_dropout_rate_with_a_seeded_rng() -> None:
    options = CaptionOptions(caption_dropout_rate=0.25)
    rng = random.Random(42)
    outputs = [process_caption(CAPTION, options, 1, rng) for _ in range(2000)]
    dropped = outputs.count("")
    assert 400 < dropped < 600
    assert set(outputs) == {"", CAPTION}
    again = random.Random(42)
    assert [process_caption(CAPTION, options, 1, again) for _ in range(2000)] == outputs


def test_dropout_every_n_epochs_is_epoch_based() -> None:
    options = CaptionOptions(caption_dropout_every_n_epochs=3)
    got = [process_caption(CAPTION, options, epoch, random.Random(0)) for epoch in range(1, 8)]
    assert got == [CAPTION, CAPTION, "", CAPTION, CAPTION, "", CAPTION]


def test_tag_dropout_drops_only_the_shuffled_part() -> None:
    options = CaptionOptions(caption_tag_dropout_rate=1.0, keep_tokens=2)
    assert process_caption(CAPTION, options, 1, random.Random(0)) == "irene, 1girl"


def test_secondary_separator_becomes_the_separator_after_shuffling() -> None:
    options = CaptionOptions(shuffle_caption=True, keep_tokens=1, secondary_separator=";;;")
    rng = random.Random(0)
    outputs = {process_caption("irene, red;;;dress, smile", options, 1, rng) for _ in range(30)}
    assert all("red,dress" in o and o.startswith("irene, ") for o in outputs)


def test_wildcards_pick_one_choice() -> None:
    options = CaptionOptions(enable_wildcard=True)
    rng = random.Random(0)
    outputs = {process_caption("a {red|blue} car, {{braces}}", options, 1, rng) for _ in range(40)}
    assert outputs == {"a red car, {braces}", "a blue car, {braces}"}


def test_is_static() -> None:
    assert is_static(CaptionOptions(keep_tokens=2, caption_prefix="x", secondary_separator=";"))
    for changing in (
        {"shuffle_caption": True},
        {"caption_tag_dropout_rate": 0.1},
        {"caption_dropout_rate": 0.05},
        {"caption_dropout_every_n_epochs": 5},
        {"enable_wildcard": True},
    ):
        assert not is_static(CaptionOptions(**changing)), changing


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"caption_dropout_rate": 1.5}, "caption_dropout_rate 1.5 is invalid"),
        ({"caption_tag_dropout_rate": -0.1}, "caption_tag_dropout_rate -0.1 is invalid"),
        ({"keep_tokens": -1}, "keep_tokens -1 is invalid"),
        ({"caption_separator": ""}, "caption_separator is empty"),
    ],
)
def test_bad_options_are_named(bad: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        CaptionOptions(**bad).validate()
