"""Booru import and duplicate review for a front end (thin layer over ``lib_lora.importer``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lib_lora.common.errors import UserError
from lib_lora.common.layout import too_many_repeats
from lib_lora.events import Events, StopToken
from lib_lora.importer import dedupe
from lib_lora.importer.booru_tags import CaptionOptions
from lib_lora.importer.clients import normalize_base_url
from lib_lora.importer.download import (
    MAX_LIMIT,
    ImportOptions,
    ImportResult,
    import_booru,
    too_many_images,
    unusable_folder_name,
)

SITES = ("danbooru", "gelbooru", "safebooru", "yandere", "konachan", "moebooru")
RATINGS = ("g", "s", "q", "e")
DUPLICATES_DIR = dedupe.DUPLICATES_DIR
DedupeScan = dedupe.DedupeScan
ReviewPair = dedupe.ReviewPair


def _whole(value: object, what: str, minimum: int = 1) -> int:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer() or number < minimum:
        got = "the box is empty" if value is None or not str(value).strip() else f"got {value}"
        raise UserError(f"{what} must be a whole number of at least {minimum} ({got}).")
    return int(number)


@dataclass(frozen=True)
class ImportRequest:
    """What the import panel collects."""

    site: str
    tags: str
    dataset: str
    name: str
    repeats: int = 10
    limit: int = 50
    ratings: tuple[str, ...] = ()  # g s q e; empty = all
    captions: str = "booru"  # booru | none
    user: str = ""
    api_key: str = ""
    base_url: str = ""

    def options(self) -> ImportOptions:
        if not (self.dataset or "").strip():
            raise UserError("No dataset folder chosen: choose it in the Dataset tab first.")
        if not (self.name or "").strip():
            raise UserError(
                "No folder name for the import: enter one in 'Import into folder name' (the character's name, "
                "e.g. mychar); the images go to the N_name folder of that name."
            )
        if self.site not in SITES:
            raise UserError(f"Site {self.site!r} is not known; choose one of {', '.join(SITES)}.")
        # the checks whose ImportOptions wording names command-line options, in the panel's words
        name = self.name.strip()
        if unusable_folder_name(name):
            raise UserError(
                f"'Import into folder name' {name!r} cannot be a folder name: use the character's name without "
                "/ \\ : or a leading dot, e.g. mychar."
            )
        out = Path(os.path.expanduser(self.dataset.strip()))
        if out.exists() and not out.is_dir():
            raise UserError(f"The dataset folder {out} is a file, not a folder: choose a folder in the Dataset tab.")
        base_url = (self.base_url or "").strip()
        if base_url:
            normalize_base_url(base_url, "The base URL")
        options = ImportOptions(
            site=self.site,
            tags=self.tags or "",
            out=out,
            name=name,
            repeats=self._repeats(),
            limit=self._limit(),
            ratings=",".join(self.ratings),
            captions=self.captions,
            caption=CaptionOptions(),
            base_url=base_url or None,
            api_key=(self.api_key or "").strip() or None,
            user=(self.user or "").strip() or None,
        )
        options.validate()
        return options

    def _repeats(self) -> int:
        repeats = _whole(self.repeats, "'Import repeats'")
        problem = too_many_repeats(repeats)
        if problem:  # the folder name N_name would make an epoch training refuses
            raise UserError(problem.replace("Repeats", "'Import repeats'", 1))
        return repeats

    def _limit(self) -> int:
        limit = _whole(self.limit, "'Number of images'")
        if limit > MAX_LIMIT:
            raise UserError(too_many_images(f"'Number of images' {limit:,}"))
        return limit


# The importer's refusals name the command line's options; the panel has fields with other labels.
# Whole phrases first (the page has no --min-score, --min-width or --exclude), then the options.
_PAGE_WORDS = (
    (
        "use --rating, --min-score, --min-width/--min-height and --exclude instead of extra tags, or log in with "
        "--user and --api-key",
        "tick Ratings instead of adding rating: tags, or log in with 'Login / user ID (optional)' and "
        "'API key (optional)'",
    ),
    ("pass --api-key KEY --user ID", "fill in 'API key (optional)' and 'Login / user ID (optional)'"),
    ("--user", "'Login / user ID (optional)'"),
    ("--api-key", "'API key (optional)'"),
    ("--base-url", "'Base URL (mirror, optional)'"),
)


def page_words(text: str) -> str:
    """``text`` with the import options' command-line names replaced by the panel's field labels."""
    for old, new in _PAGE_WORDS:
        text = text.replace(old, new)
    return text


def run_import(request: ImportRequest, events: Events | None = None, stop: StopToken | None = None) -> ImportResult:
    try:
        return import_booru(request.options(), events, stop)
    except UserError as exc:
        raise UserError(page_words(exc.message), page_words(exc.hint) if exc.hint else None) from exc


def import_summary(result: ImportResult) -> str:
    parts = [f"{len(result.downloaded)} downloaded", f"{len(result.already_have)} already there"]
    if result.failed:
        parts.append(f"{len(result.failed)} failed (first: {result.failed[0][1]})")
    if result.stopped:
        parts.append("stopped before the end")
    return f"Imported into {result.folder}: " + ", ".join(parts) + "."


def scan_duplicates(
    folder: str | os.PathLike, distance: int = dedupe.DEFAULT_DISTANCE, events: Events | None = None,
    stop: StopToken | None = None,
) -> dedupe.DedupeScan:  # fmt: skip
    """Find duplicate groups and review pairs (nothing moves)."""
    text = str(folder or "").strip()
    if not text:
        raise UserError("No dataset folder chosen: choose it in the Dataset tab first.")
    path = Path(text).expanduser()
    if not path.is_dir():
        where = path.absolute()
        raise UserError(
            f"Dataset folder {where} " + ("is a file, not a folder." if where.exists() else "does not exist.")
        )
    distance = _whole(distance, "'Duplicate distance'", 0)
    options = dedupe.DedupeOptions(distance=distance, auto_distance=min(dedupe.AUTO_DISTANCE, distance))
    return dedupe.scan(path, options, events, stop)


def move_exact_duplicates(scan: dedupe.DedupeScan, events: Events | None = None) -> dedupe.DedupeResult:
    """Move the scan's certain duplicates (the groups) to ``_duplicates/``, with a report."""
    return dedupe.apply(scan, events)


def move_to_duplicates(root: str | os.PathLike, image: str | os.PathLike) -> Path:
    return dedupe.move_to_duplicates(root, image)


def keep_both(root: str | os.PathLike, a: str | os.PathLike, b: str | os.PathLike) -> None:
    dedupe.keep_both(root, a, b)
