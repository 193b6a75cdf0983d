"""Booru tags -> caption (reference/booru-and-dedupe.md section 7)."""

from __future__ import annotations

from lib_lora.importer.booru_tags import CaptionOptions, PostTags, caption_text, tag_text

POST = PostTags(
    general=("solo", "long_hair", "1girl", "^_^", "o_o", "x_x", "looking_at_viewer", "red_(medium)"),
    character=("irene_(kanniiepan)",),
    copyright=("original",),
    artist=("kanniiepan", "banned_artist"),
    meta=("highres", "absurdres", "commentary_request", "translated", "bad_id", "md5_mismatch"),
)


def test_default_caption_order_and_text() -> None:
    assert caption_text(POST, "g") == (
        "1girl, irene (kanniiepan), original, solo, long hair, ^_^, o_o, x_x, looking at viewer, red (medium)"
    )


def test_artist_quality_and_rating_on_request() -> None:
    text = caption_text(POST, "e", CaptionOptions(artist=True, quality=True, rating=True, prefix=("ireneLoRA",)))
    assert text == (
        "ireneLoRA, 1girl, irene (kanniiepan), original, kanniiepan, solo, long hair, ^_^, o_o, x_x, "
        "looking at viewer, red (medium), highres, absurdres, explicit, nsfw"
    )


def test_uncategorised_tags_drop_bookkeeping_meta() -> None:
    mixed = PostTags(general=("1girl", "highres", "commentary_request", "tagme", "long_hair", "translated"),
                     categorized=False)  # fmt: skip
    assert caption_text(mixed) == "1girl, long hair"
    assert caption_text(mixed, options=CaptionOptions(quality=True)) == "1girl, long hair, highres"


def test_short_tags_and_kaomoji_keep_underscores() -> None:
    assert tag_text("^_^") == "^_^" and tag_text("0_0") == "0_0" and tag_text("(o)_(o)") == "(o)_(o)"
    assert tag_text("long_hair") == "long hair"
    assert tag_text("c_c") == "c_c"  # three characters or fewer


def test_no_backslash_escaping_and_no_duplicates() -> None:
    tags = PostTags(general=("1girl", "1girl", "smile"), character=("hatsune_miku_(append)",))
    assert caption_text(tags) == "1girl, hatsune miku (append), smile"
