"""Batch operations on captions: pure functions ``tags -> tags`` wrapped as small operation objects.

An operation never touches files and never changes its input; :func:`run_operation` applies one to a
set of items and returns only the captions it changed (the session turns that into an undoable step).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lib_lora.captions.filters import compile_regex
from lib_lora.captions.model import (
    CaptionItem,
    TagCount,
    Tags,
    normalize_tag,
    parse_caption,
    parse_tag_list,
    ranked_counts,
    tag_frequency,
)
from lib_lora.common.errors import UserError
from lib_lora.common.tags import dedupe_tags, join_tags, underscores_to_spaces

SORT_KEYS = ("alpha", "frequency", "confidence")


@dataclass(frozen=True)
class OpContext:
    """What an operation may look at besides the tags: dataset-wide frequency, this image's confidences."""

    frequency: Mapping[str, int] = field(default_factory=dict)
    confidences: Mapping[str, float] | None = None


class Operation:
    """A batch operation. Subclasses are frozen dataclasses with ``label`` and ``apply``."""

    needs_frequency = False

    @property
    def label(self) -> str:  # shown in the history list
        raise NotImplementedError

    def apply(self, tags: Tags, ctx: OpContext) -> Tags:
        raise NotImplementedError


def _label_tags(tags: Sequence[str]) -> str:
    text = join_tags(tags)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class AddTags(Operation):
    """Add tags at the front (in the given order, moved there if already present: the activation
    tag ends up first, never twice) or at the end (only those not yet present)."""

    tags: tuple[str, ...]
    position: str = "front"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", tuple(dedupe_tags(parse_tag_list(self.tags))))
        if self.position not in ("front", "end"):
            raise UserError(f"Position {self.position!r} is not known; use 'front' or 'end'.")

    @property
    def label(self) -> str:
        return f"add at the {self.position}: {_label_tags(self.tags)}"

    def apply(self, tags: Tags, ctx: OpContext) -> Tags:
        if not self.tags:
            return tags
        if self.position == "front":
            new = set(self.tags)
            return self.tags + tuple(t for t in tags if t not in new)
        present = set(tags)
        return tags + tuple(t for t in self.tags if t not in present)


@dataclass(frozen=True)
class RemoveTags(Operation):
    """Remove every occurrence of these tags."""

    tags: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", parse_tag_list(self.tags))

    @property
    def label(self) -> str:
        return f"remove: {_label_tags(self.tags)}"

    def apply(self, tags: Tags, ctx: OpContext) -> Tags:
        gone = set(self.tags)
        return tuple(t for t in tags if t not in gone)


@dataclass(frozen=True)
class ReplaceText(Operation):
    """Search and replace, per tag or over the whole caption, plain or regular expression.

    - per tag, plain: a tag equal to ``old`` becomes ``new``;
    - per tag, regex: a tag the pattern matches *entirely* becomes ``new`` with ``\\1`` / ``\\g<name>``
      expanded from the capture groups;
    - whole caption (the caption as ``"tag, tag, tag"``): every occurrence of ``old`` (text or pattern)
      is replaced.

    The result is split into tags again: a ``new`` holding commas gives several tags, an empty one
    removes the tag.
    """

    old: str
    new: str
    regex: bool = False
    whole_caption: bool = False
    ignore_case: bool = False
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.old:
            raise UserError("The text to replace is empty.")
        if self.regex:
            pattern = compile_regex(self.old, self.ignore_case)
            object.__setattr__(self, "_pattern", pattern)
            _check_template(pattern, self.new)
        elif self.ignore_case:
            object.__setattr__(self, "_pattern", re.compile(re.escape(self.old), re.IGNORECASE))

    @property
    def label(self) -> str:
        where = "caption" if self.whole_caption else "tags"
        kind = "regex " if self.regex else ""
        return f"replace {kind}{self.old!r} with {self.new!r} in {where}"

    def apply(self, tags: Tags, ctx: OpContext) -> Tags:
        if self.whole_caption:
            text = join_tags(tags)
            if self._pattern is not None:
                replaced = self._expand_errors(lambda: self._pattern.sub(self._template(), text))
            else:
                replaced = text.replace(self.old, self.new)
            return tags if replaced == text else parse_caption(replaced)
        out: list[str] = []
        changed = False
        for tag in tags:
            result = self._replace_tag(tag)
            if result is None:
                out.append(tag)
            else:
                changed = True
                out.extend(parse_caption(result))
        return tuple(out) if changed else tags

    def _replace_tag(self, tag: str) -> str | None:
        if self._pattern is None:
            return self.new if tag == self.old else None
        match = self._pattern.fullmatch(tag)
        if match is None:
            return None
        if not self.regex:
            return self.new
        return self._expand_errors(lambda: match.expand(self.new))

    def _template(self) -> str:
        # a plain, case-insensitive replacement must not interpret backslashes in ``new``
        return self.new if self.regex else self.new.replace("\\", "\\\\")

    def _expand_errors(self, fn: Callable[[], str]) -> str:
        try:
            return fn()
        except (re.error, IndexError) as exc:
            raise UserError(f"Replacement {self.new!r} for {self.old!r} is not valid: {exc}.") from exc


def _check_template(pattern: re.Pattern[str], template: str) -> None:
    """Fail early (before any caption changes) on a replacement naming a group the pattern lacks or
    holding a bad escape: ``sub`` parses the template even when there is nothing to replace."""
    try:
        pattern.sub(template, "")
    except (re.error, IndexError) as exc:
        raise UserError(
            f"Replacement {template!r} for the regular expression {pattern.pattern!r} is not valid: {exc}."
        ) from exc


@dataclass(frozen=True)
class UnderscoresToSpaces(Operation):
    """``long_hair`` -> ``long hair``; kaomoji (``^_^``, ``>_<`` ...) are kept as they are."""

    @property
    def label(self) -> str:
        return "underscores to spaces"

    def apply(self, tags: Tags, ctx: OpContext) -> Tags:
        out = (normalize_tag(underscores_to_spaces(t)) if "_" in t else t for t in tags)
        return tuple(t for t in out if t)


@dataclass(frozen=True)
class Dedupe(Operation):
    """Remove repeated tags, keeping the first occurrence."""

    @property
    def label(self) -> str:
        return "remove duplicate tags"

    def apply(self, tags: Tags, ctx: OpContext) -> Tags:
        return tuple(dedupe_tags(tags))


@dataclass(frozen=True)
class SortTags(Operation):
    """Sort tags: ``alpha`` (A-Z), ``frequency`` (most frequent in the dataset first) or ``confidence``
    (the tagger's most confident first; tags without a confidence follow in their order).
    ``keep_first`` tags at the front stay where they are (the activation tag, ``keep_tokens``).
    Ties are broken alphabetically; ``reverse`` flips the main order."""

    key: str = "alpha"
    keep_first: int = 0
    reverse: bool = False

    def __post_init__(self) -> None:
        if self.key not in SORT_KEYS:
            raise UserError(f"Sort order {self.key!r} is not known; use one of {', '.join(SORT_KEYS)}.")
        if self.keep_first < 0:
            raise UserError(f"keep_first must be 0 or more, not {self.keep_first}.")

    @property
    def needs_frequency(self) -> bool:
        return self.key == "frequency"

    @property
    def label(self) -> str:
        keep = f", first {self.keep_first} kept" if self.keep_first else ""
        return f"sort by {self.key}{' (reversed)' if self.reverse else ''}{keep}"

    def apply(self, tags: Tags, ctx: OpContext) -> Tags:
        head, rest = tags[: self.keep_first], tags[self.keep_first :]
        sign = -1 if self.reverse else 1
        if self.key == "alpha":
            ordered = sorted(rest, key=lambda t: (t.casefold(), t), reverse=self.reverse)
        elif self.key == "frequency":
            freq = ctx.frequency
            ordered = sorted(rest, key=lambda t: (-sign * freq.get(t, 0), t))
        else:
            conf = ctx.confidences or {}
            known = [t for t in rest if t in conf]
            unknown = [t for t in rest if t not in conf]
            ordered = sorted(known, key=lambda t: (-sign * conf[t], t)) + unknown
        return head + tuple(ordered)


@dataclass(frozen=True)
class MoveToFront(Operation):
    """Move these tags (where present) to the front, in the given order (for ``keep_tokens``)."""

    tags: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", tuple(dedupe_tags(parse_tag_list(self.tags))))

    @property
    def label(self) -> str:
        return f"move to front: {_label_tags(self.tags)}"

    def apply(self, tags: Tags, ctx: OpContext) -> Tags:
        present = set(tags)
        front = tuple(t for t in self.tags if t in present)
        if not front:
            return tags
        moved = set(front)
        return front + tuple(t for t in tags if t not in moved)


@dataclass(frozen=True)
class SetCaption(Operation):
    """Replace the whole caption with ``text`` (the per-image edit box)."""

    text: str

    @property
    def label(self) -> str:
        return "edit caption"

    def apply(self, tags: Tags, ctx: OpContext) -> Tags:
        return parse_caption(self.text)


def run_operation(
    op: Operation,
    items: Sequence[CaptionItem],
    indices: Iterable[int],
    frequency: Mapping[str, int] | None = None,
) -> dict[int, Tags]:
    """Apply ``op`` to ``items[i]`` for ``i`` in ``indices``; returns ``{index: new tags}`` for the
    captions it changed. Locked captions are left alone. Nothing is modified."""
    if op.needs_frequency and frequency is None:
        frequency = tag_frequency(items)
    shared = OpContext(frequency=frequency or {})
    changed: dict[int, Tags] = {}
    for i in indices:
        item = items[i]
        if item.locked:
            continue
        ctx = shared if item.confidences is None else OpContext(shared.frequency, item.confidences)
        new = op.apply(item.tags, ctx)
        if new != item.tags:
            changed[i] = new
    return changed


def common_tags(
    items: Sequence[CaptionItem],
    indices: Iterable[int] | None = None,
    threshold: float = 0.9,
    exclude: Iterable[str] = (),
) -> list[TagCount]:
    """Tags present in at least ``threshold`` of the images (the character's inherent traits that
    guides prune so the activation tag absorbs them); ``exclude`` (e.g. the activation tag) left out."""
    if not 0 < threshold <= 1:
        raise UserError(f"Threshold {threshold} must be above 0 and at most 1 (e.g. 0.9 for 90 %).")
    chosen = [items[i] for i in indices] if indices is not None else list(items)
    chosen = [item for item in chosen if not item.locked]
    if not chosen:
        return []
    skip = set(exclude)
    total = len(chosen)
    ranked = ranked_counts(tag_frequency(chosen), total)
    # compare counts, not floats: 9 of 10 images is exactly 90 %
    return [tc for tc in ranked if tc.count >= threshold * total - 1e-9 and tc.tag not in skip]
