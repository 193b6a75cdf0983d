"""Booru tags -> a training caption.

Rules (reference: booru-and-dedupe.md section 7): count tags (``1girl``...) first, then characters,
copyrights, optionally artists, then the general tags; bookkeeping meta tags are dropped;
underscores become spaces except in kaomoji and tags of three characters or fewer (``^_^``,
``o_o``); tags are joined with ``", "`` and never backslash-escaped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from lib_lora.common.tags import dedupe_tags, join_tags, underscores_to_spaces

# "1girl", "2girls", "6+boys", "multiple_others" ...
_COUNT_TAG = re.compile(r"^(?:\d+\+?|multiple_)(?:girl|boy|other)s?$")
# image-size meta tags, kept only when asked for
QUALITY_TAGS: frozenset[str] = frozenset({"lowres", "highres", "absurdres", "incredibly_absurdres"})
# bookkeeping meta, dropped by substring (bad_id, commentary_request, translated, md5_mismatch...)
META_DROP_SUBSTRINGS: tuple[str, ...] = (
    "(medium)",
    "commentary",
    "bad",
    "translat",
    "request",
    "mismatch",
    "revision",
    "audio",
    "video",
)
# meta tags recognised by name when a site does not say which tags are meta
_KNOWN_META: frozenset[str] = frozenset(
    {"tagme", "duplicate", "resized", "upscaled", "image_sample", "third-party_edit", "jpeg_artifacts", "scan"}
)
# HakuBooru's words for the ratings; "safe" is the old three-level scheme's lowest rating
RATING_WORDS: dict[str, tuple[str, ...]] = {
    "g": ("safe",),
    "safe": ("safe",),
    "s": ("sensitive",),
    "q": ("nsfw",),
    "e": ("explicit", "nsfw"),
}


@dataclass(frozen=True)
class PostTags:
    """A post's tags by category, as the site spells them (underscores kept).

    ``categorized`` is False when the site gave one mixed list (then everything is in ``general``
    and meta tags are recognised by name).
    """

    general: tuple[str, ...] = ()
    character: tuple[str, ...] = ()
    copyright: tuple[str, ...] = ()
    artist: tuple[str, ...] = ()
    meta: tuple[str, ...] = ()
    categorized: bool = True

    def all(self) -> tuple[str, ...]:
        return self.general + self.character + self.copyright + self.artist + self.meta

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "general": list(self.general),
            "character": list(self.character),
            "copyright": list(self.copyright),
            "artist": list(self.artist),
            "meta": list(self.meta),
        }


@dataclass(frozen=True)
class CaptionOptions:
    """What goes into a caption besides characters, copyrights and general tags."""

    artist: bool = False  # artist tags (wanted for style LoRAs, not for character LoRAs)
    quality: bool = False  # highres / absurdres / lowres
    rating: bool = False  # the rating as words (safe, sensitive, nsfw, explicit)
    prefix: tuple[str, ...] = field(default=())  # e.g. a trigger word, written first as given


def tag_text(tag: str) -> str:
    """A booru tag as caption text: underscores -> spaces, except kaomoji and tags of <= 3 characters."""
    if len(tag) <= 3:
        return tag
    return underscores_to_spaces(tag)


def is_bookkeeping_meta(tag: str) -> bool:
    lowered = tag.lower()
    return any(part in lowered for part in META_DROP_SUBSTRINGS) or lowered in _KNOWN_META


def caption_tags(tags: PostTags, rating: str = "", options: CaptionOptions | None = None) -> list[str]:
    """The caption's tags in order, already converted to caption text."""
    options = options or CaptionOptions()
    general = list(tags.general)
    meta = list(tags.meta)
    if not tags.categorized:
        # one mixed list: pull recognisable meta out of it
        meta = [t for t in general if t in QUALITY_TAGS or is_bookkeeping_meta(t)]
        general = [t for t in general if t not in meta]
    counts = [t for t in general if _COUNT_TAG.match(t)]
    rest = [t for t in general if not _COUNT_TAG.match(t)]
    ordered: list[str] = counts + list(tags.character) + list(tags.copyright)
    if options.artist:
        ordered += [t for t in tags.artist if "banned" not in t.lower()]
    ordered += rest
    if options.quality:
        ordered += [t for t in meta if t in QUALITY_TAGS]
    out = [tag_text(t) for t in ordered if t]
    if options.rating:
        out += list(RATING_WORDS.get(rating, ()))
    out = list(options.prefix) + out
    return dedupe_tags(t for t in out if t)


def caption_text(tags: PostTags, rating: str = "", options: CaptionOptions | None = None) -> str:
    """The caption file's text (``", "``-joined, no trailing newline)."""
    return join_tags(caption_tags(tags, rating, options))


def split_booru_tags(text: str | None) -> tuple[str, ...]:
    """A booru's space-separated tag string as a tuple (empty strings dropped)."""
    if not text:
        return ()
    return tuple(t for t in text.split() if t)


def contains_any(tags: Iterable[str], wanted: Iterable[str]) -> str | None:
    """The first tag of ``wanted`` present in ``tags`` (case-insensitive), or None."""
    have = {t.lower() for t in tags}
    for tag in wanted:
        if tag.lower() in have:
            return tag
    return None
