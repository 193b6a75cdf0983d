"""The tagger's label file and what turns its scores into caption tags.

``selected_tags.csv`` lists one row per model output, in output order (header
``tag_id,name,category,count``); categories are 9 rating, 0 general, 4 character. Indices are chosen
by the category column, never by position. Post-processing follows the official WD tagger Space:
a general threshold (0.35) and a character threshold (0.85), each optionally replaced by MCut,
scores compared with ``>``; rating tags only when asked; underscores become spaces except in
kaomoji; parentheses escaped only on request (training captions stay unescaped).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lib_lora.common.errors import UserError
from lib_lora.common.tags import (
    dedupe_tags,
    escape_parentheses,
    tag_key,
    underscores_to_spaces,
    unescape_parentheses,
)

RATING, GENERAL, CHARACTER = 9, 0, 4
LABELS_FILE = "selected_tags.csv"
CHARACTER_MCUT_FLOOR = 0.15
ORDERS = ("confidence", "alphabetical")


@dataclass(frozen=True, eq=False)
class Labels:
    """The rows of a ``selected_tags.csv``: raw Danbooru names and the output indices per category."""

    names: tuple[str, ...]
    categories: np.ndarray  # int, one per model output
    source: Path | None = None

    def __post_init__(self) -> None:
        if len(self.names) != len(self.categories):
            raise ValueError("names and categories differ in length")

    def __len__(self) -> int:
        return len(self.names)

    def indices(self, category: int) -> np.ndarray:
        return np.flatnonzero(self.categories == category)

    @property
    def rating(self) -> np.ndarray:
        return self.indices(RATING)

    @property
    def general(self) -> np.ndarray:
        return self.indices(GENERAL)

    @property
    def character(self) -> np.ndarray:
        return self.indices(CHARACTER)


def read_labels(path: str | Path) -> Labels:
    """Read a ``selected_tags.csv``; a file that is not one raises a :class:`UserError` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"The tagger label file {path} does not exist.") from None
    except UnicodeDecodeError:
        raise UserError(f"The tagger label file {path} is not a UTF-8 text file.") from None
    except OSError as exc:
        raise UserError(f"Cannot read the tagger label file {path}: {exc.strerror or exc}.") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise UserError(f"The tagger label file {path} is empty.")
    header = [cell.strip().lower() for cell in rows[0]]
    if "name" not in header or "category" not in header:
        raise UserError(
            f"{path} is not a WD tagger label file: its first line must be the header "
            f"tag_id,name,category,count (found {','.join(rows[0])[:80]!r})."
        )
    name_col, cat_col = header.index("name"), header.index("category")
    names: list[str] = []
    categories: list[int] = []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            name = row[name_col].strip()
            category = int(row[cat_col])
        except (IndexError, ValueError):
            raise UserError(
                f"{path} line {line_no} is not a valid label row (expected tag_id,name,category,count)."
            ) from None
        if not name:
            raise UserError(f"{path} line {line_no} has an empty tag name.")
        names.append(name)
        categories.append(category)
    if not names:
        raise UserError(f"The tagger label file {path} lists no tags.")
    return Labels(tuple(names), np.asarray(categories, dtype=np.int64), path)


def mcut_threshold(scores: np.ndarray) -> float:
    """Maximum Cut Thresholding: the midpoint of the largest gap between neighbouring sorted scores.

    Fewer than two scores have no gap; the result is then 0.0 (everything selected).
    """
    values = np.sort(np.asarray(scores, dtype=np.float64).ravel())[::-1]
    if values.size < 2:
        return 0.0
    gaps = values[:-1] - values[1:]
    i = int(np.argmax(gaps))
    return float((values[i] + values[i + 1]) / 2)


@dataclass(frozen=True)
class TagOptions:
    """How scores become caption tags (one object shared by the CLI, the UI and the batch job)."""

    general_threshold: float = 0.35
    character_threshold: float = 0.85
    general_mcut: bool = False  # replace the general threshold by MCut over the general scores
    character_mcut: bool = False  # MCut over the character scores, floored at 0.15
    include_ratings: bool = False  # write the most likely rating tag (general/sensitive/...)
    order: str = "confidence"  # "confidence" (descending, ties by name) or "alphabetical"
    characters_first: bool = False
    keep_underscores: bool = False
    escape_parentheses: bool = False  # for prompts; caption files for training stay unescaped
    exclude_tags: tuple[str, ...] = ()  # exact (underscores == spaces, any case) or "re:<regex>"
    additional_tags: tuple[str, ...] = ()  # written first, e.g. the activation tag

    def __post_init__(self) -> None:
        for label, value in (
            ("general threshold", self.general_threshold),
            ("character threshold", self.character_threshold),
        ):
            if not 0.0 <= value <= 1.0:
                raise UserError(f"The {label} must be between 0 and 1 (got {value}).")
        if self.order not in ORDERS:
            raise UserError(f"The tag order must be one of {', '.join(ORDERS)} (got {self.order!r}).")
        for pattern in self.exclude_tags:
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise UserError(
                        f"The exclude pattern {pattern!r} is not a valid regular expression: {exc}."
                    ) from None

    def format_tag(self, name: str, escape: bool | None = None) -> str:
        """A raw label name as it appears in a caption (underscores, escaping)."""
        tag = name if self.keep_underscores else underscores_to_spaces(name)
        if self.escape_parentheses if escape is None else escape:
            tag = escape_parentheses(tag)
        return tag


class _Excluder:
    def __init__(self, patterns: Iterable[str]) -> None:
        self.exact: set[str] = set()
        self.regexes: list[re.Pattern[str]] = []
        for pattern in patterns:
            if pattern.startswith("re:"):
                self.regexes.append(re.compile(pattern[3:], re.IGNORECASE))
            elif pattern.strip():
                self.exact.add(tag_key(pattern))

    def __call__(self, tag: str) -> bool:
        key = tag_key(tag)
        if key in self.exact:
            return True
        plain = unescape_parentheses(tag)
        return any(r.fullmatch(plain) or r.fullmatch(key) for r in self.regexes)


@dataclass
class Prediction:
    """One image's result: every rating score, the selected tags with their scores, the caption tags."""

    ratings: dict[str, float]
    general: list[tuple[str, float]]  # selected, (caption tag, score), best first
    character: list[tuple[str, float]]
    general_threshold: float  # the thresholds actually used (MCut resolved)
    character_threshold: float
    tags: list[str] = field(default_factory=list)  # caption tags, additional tags first

    @property
    def rating(self) -> str:
        return max(self.ratings, key=self.ratings.__getitem__) if self.ratings else ""


def _sorted_pairs(pairs: list[tuple[str, float]], order: str) -> list[tuple[str, float]]:
    if order == "alphabetical":
        return sorted(pairs, key=lambda p: p[0])
    return sorted(pairs, key=lambda p: (-p[1], p[0]))


def predict_tags(scores: np.ndarray, labels: Labels, options: TagOptions) -> Prediction:
    """Turn one image's scores (one per label) into a :class:`Prediction`."""
    scores = np.asarray(scores, dtype=np.float32).ravel()
    if scores.shape[0] != len(labels):
        raise ValueError(f"{scores.shape[0]} scores for {len(labels)} labels")
    ratings = {labels.names[i]: float(scores[i]) for i in labels.rating}

    general_idx, character_idx = labels.general, labels.character
    general_scores, character_scores = scores[general_idx], scores[character_idx]
    g_thr = mcut_threshold(general_scores) if options.general_mcut else options.general_threshold
    c_thr = options.character_threshold
    if options.character_mcut:
        c_thr = max(CHARACTER_MCUT_FLOOR, mcut_threshold(character_scores))

    exclude = _Excluder(options.exclude_tags)

    def selected(indices: np.ndarray, values: np.ndarray, threshold: float) -> list[tuple[str, float]]:
        out = []
        for i in np.flatnonzero(values > threshold):
            tag = options.format_tag(labels.names[indices[i]])
            if not exclude(tag):
                out.append((tag, float(values[i])))
        return _sorted_pairs(out, options.order)

    general = selected(general_idx, general_scores, g_thr)
    character = selected(character_idx, character_scores, c_thr)
    if options.characters_first:
        model_tags = [t for t, _ in character] + [t for t, _ in general]
    else:
        model_tags = [t for t, _ in _sorted_pairs(general + character, options.order)]
    prediction = Prediction(ratings, general, character, g_thr, c_thr)
    rating_tags = []
    if options.include_ratings and ratings:
        rating = options.format_tag(prediction.rating)
        if not exclude(rating):
            rating_tags.append(rating)
    prediction.tags = dedupe_tags([*options.additional_tags, *rating_tags, *model_tags])
    return prediction


EXISTING_POLICIES = ("skip", "overwrite", "append", "prepend")


def merge_caption(
    existing: Sequence[str], new_tags: Sequence[str], policy: str, additional_tags: Sequence[str] = ()
) -> list[str]:
    """The caption tags to write for ``policy`` given the tags already in the caption file.

    ``new_tags`` is the tagger's result (it may start with ``additional_tags``). Additional tags
    always come first so that ``keep_tokens`` keeps them; no tag appears twice. ``skip`` keeps an
    existing caption as it is (and tags an empty one).
    """
    if policy not in EXISTING_POLICIES:
        raise UserError(f"The existing-caption policy must be one of {', '.join(EXISTING_POLICIES)} (got {policy!r}).")
    existing = [t for t in existing if t.strip()]
    if policy == "skip":
        return list(existing) if existing else dedupe_tags(new_tags)
    if policy == "overwrite" or not existing:
        return dedupe_tags([*additional_tags, *new_tags])
    if policy == "append":
        return dedupe_tags([*additional_tags, *existing, *new_tags])
    return dedupe_tags([*additional_tags, *new_tags, *existing])


def confidences_document(
    prediction: Prediction, scores: np.ndarray, labels: Labels, options: TagOptions, model: str, floor: float = 0.05
) -> dict:
    """The JSON sidecar for the caption editor: ratings and every tag scoring at least ``floor``."""
    scores = np.asarray(scores, dtype=np.float32).ravel()

    def category(indices: np.ndarray) -> dict[str, float]:
        pairs = [
            (options.format_tag(labels.names[i], escape=False), round(float(scores[i]), 4))
            for i in indices
            if scores[i] >= floor
        ]
        return dict(sorted(pairs, key=lambda p: (-p[1], p[0])))

    return {
        "model": model,
        "general_threshold": round(prediction.general_threshold, 4),
        "character_threshold": round(prediction.character_threshold, 4),
        "ratings": {options.format_tag(k, escape=False): round(v, 4) for k, v in prediction.ratings.items()},
        "general": category(labels.general),
        "character": category(labels.character),
        "tags": prediction.tags,
    }
