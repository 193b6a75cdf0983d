"""Booru-style tag text: splitting captions, underscores, kaomoji, escaping.

One definition shared by the tagger, the caption editor and the booru importer, so that the three
never disagree about what a tag is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Danbooru kaomoji whose underscores are part of the face (WD tagger contract, tagger.md section 5).
KAOMOJI: frozenset[str] = frozenset(
    {
        "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
        ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
    }
)  # fmt: skip

_SPLIT = re.compile(r"[,\n\r]+")
_ESCAPE = re.compile(r"([\\()])")
_UNESCAPE = re.compile(r"\\([\\()\[\]])")
_PROMPT_ESCAPE = re.compile(r"([\\()\[\]])")


def split_tags(caption: str) -> list[str]:
    """Split a caption into tags: commas or line breaks separate, spaces around tags are dropped,
    empty tags (repeated commas) vanish. A leading BOM is ignored."""
    caption = caption.lstrip("\ufeff")
    return [t for t in (part.strip() for part in _SPLIT.split(caption)) if t]


def join_tags(tags: Iterable[str]) -> str:
    """The caption text for ``tags`` (``", "``-separated, as kohya and the taggers write it)."""
    return ", ".join(tags)


def underscores_to_spaces(tag: str) -> str:
    """``long_hair`` -> ``long hair``; kaomoji such as ``^_^`` are kept as they are."""
    if tag in KAOMOJI:
        return tag
    return tag.replace("_", " ")


def tag_key(tag: str) -> str:
    """What makes two tags the same: case, underscores vs spaces and escaping do not count (CLIP's
    tokenizer lowercases; kaomoji keep their underscores)."""
    tag = unescape_parentheses(tag.strip())
    if tag not in KAOMOJI:
        tag = tag.replace("_", " ")
    return " ".join(tag.lower().split())


def dedupe_tags(tags: Iterable[str]) -> list[str]:
    """Drop empty and repeated tags (as :func:`tag_key` sees them), keeping the first spelling and
    the order."""
    seen: set[str] = set()
    out = []
    for tag in tags:
        tag = tag.strip()
        key = tag_key(tag)
        if key and key not in seen:
            seen.add(key)
            out.append(tag)
    return out


def escape_parentheses(tag: str) -> str:
    """Backslash-escape ``(``, ``)`` and ``\\`` as the WD tagger does for prompts."""
    return _ESCAPE.sub(r"\\\1", tag)


def unescape_parentheses(text: str) -> str:
    """Undo :func:`escape_parentheses` (and escaped brackets)."""
    return _UNESCAPE.sub(r"\1", text)


def escape_for_prompt(text: str) -> str:
    """Escape ``( ) [ ] \\`` so the webui's prompt parser reads a caption literally (no emphasis)."""
    return _PROMPT_ESCAPE.sub(r"\\\1", text)
