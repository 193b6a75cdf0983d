"""A dataset's captions in memory: loading, tolerant parsing, tagger confidences, statistics.

A dataset is the folder a trainer reads (``<root>/<N>_<name>/image.png``, any depth); every image is one
:class:`CaptionItem` whose caption is ``<stem><caption_extension>`` beside it. Captions are
comma-separated tags; line breaks, repeated commas, stray spaces, a UTF-8 BOM and CRLF line ends are all
tolerated. An image without a caption file has an empty caption. A caption that cannot be read as UTF-8
(or is a folder, or unreadable) is *locked*: it is reported, shown with no tags, never edited and never
written.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lib_lora.common.errors import UserError
from lib_lora.common.fsutil import SMALL_FILE_LIMIT, read_small_file
from lib_lora.common.layout import (
    TAGGER_SIDECAR_SUFFIX,
    caption_extension_problem,
    caption_path,
    iter_image_files,
    parse_subset_name,
    tagger_scores_path,
)
from lib_lora.common.tags import join_tags, split_tags, underscores_to_spaces
from lib_lora.events import Events, StopToken

DEFAULT_CAPTION_EXTENSION = ".txt"
# The tagger writes its scores per image folder in ``.tagger/scores.json`` (common.layout), one document
# per image: {"model": str, "ratings": {...}, "general": {tag: score}, "character": {tag: score},
# "tags": [caption tags]}; older versions wrote the same document beside the image as
# ``<stem>.tagger.json`` (still read). A ``"tags"`` mapping {tag: score} is read too.

Tags = tuple[str, ...]


def normalize_tag(tag: str) -> str:
    """Trim a tag and collapse runs of whitespace inside it (``"long  hair "`` -> ``"long hair"``)."""
    return " ".join(tag.split())


# whitespace that needs more than split_tags' trimming: tabs and other spaces, or runs of spaces
_ODD_SPACE = re.compile(r"[^\S \n\r]| {2,}")


def parse_caption(text: str) -> Tags:
    """Tags of a caption text: commas and line breaks separate; empty tags and stray spaces vanish."""
    if _ODD_SPACE.search(text) is None:
        return tuple(split_tags(text))
    return tuple(t for t in (normalize_tag(part) for part in split_tags(text)) if t)


def parse_tag_list(tags: str | Iterable[str]) -> Tags:
    """Tags given by a user: one comma-separated string or a sequence of tags (each may hold commas)."""
    if isinstance(tags, str):
        return parse_caption(tags)
    out: list[str] = []
    for tag in tags:
        out.extend(parse_caption(tag))
    return tuple(out)


def decode_caption(raw: bytes) -> str:
    """UTF-8 text of a caption file (a BOM is dropped); raises UnicodeDecodeError for other encodings."""
    return raw.decode("utf-8-sig")


def trailing_newline(text: str) -> str:
    """The line end a caption text finishes with (kept when the caption is rewritten)."""
    if text.endswith("\r\n"):
        return "\r\n"
    if text.endswith(("\n", "\r")):
        return text[-1]
    return ""


def encode_caption(tags: Sequence[str], newline: str = "") -> bytes:
    """The bytes written for ``tags``: UTF-8 without BOM, ``", "``-separated, then ``newline``."""
    return (join_tags(tags) + newline).encode("utf-8")


@dataclass(frozen=True)
class LoadOptions:
    caption_extension: str = DEFAULT_CAPTION_EXTENSION
    recursive: bool = True
    read_confidences: bool = True  # read the tagger's scores (``.tagger/scores.json``, old sidecars)

    def __post_init__(self) -> None:
        problem = caption_extension_problem(self.caption_extension)
        if problem:
            raise UserError(problem)


@dataclass(frozen=True)
class FileProblem:
    """A file the editor could not use or write; ``rel`` is relative to the dataset folder."""

    rel: str
    message: str


@dataclass
class CaptionItem:
    """One image and its caption.

    ``tags`` is the current (possibly edited) caption; ``saved_tags`` and ``disk_raw`` are what the
    caption file held when it was loaded or last saved (``disk_raw`` None: there was no caption file).
    """

    rel: str  # image path relative to the dataset folder, "/"-separated
    image: Path
    caption_file: Path
    tags: Tags
    saved_tags: Tags
    disk_raw: bytes | None
    newline: str = ""  # line end after the caption when it is rewritten
    confidences: dict[str, float] | None = None
    problem: str | None = None  # set: the caption is locked (reported, never edited or written)

    @property
    def folder(self) -> str:
        """The image's folder relative to the dataset ("" for the dataset folder itself)."""
        head, _, _ = self.rel.rpartition("/")
        return head

    @property
    def caption_rel(self) -> str:
        head = self.rel.rpartition("/")[0]
        cap = self.caption_file.name
        return f"{head}/{cap}" if head else cap

    @property
    def locked(self) -> bool:
        return self.problem is not None

    @property
    def has_caption_file(self) -> bool:
        return self.disk_raw is not None

    @property
    def dirty(self) -> bool:
        """True when saving would write this caption."""
        return self.problem is None and self.tags != self.saved_tags

    @property
    def caption(self) -> str:
        return join_tags(self.tags)

    @property
    def saved_caption(self) -> str:
        return join_tags(self.saved_tags)

    def confidence(self, tag: str) -> float | None:
        """The tagger's confidence for ``tag`` (spelled with spaces or underscores), if known."""
        if not self.confidences:
            return None
        return self.confidences.get(tag)

    def set_disk_state(self, raw: bytes | None) -> None:
        """Take ``raw`` (the caption file's bytes, None if absent) as the new on-disk baseline."""
        self.disk_raw = raw
        self.problem = None
        if raw is None:
            self.saved_tags = ()
            return
        try:
            text = decode_caption(raw)
        except UnicodeDecodeError as exc:
            self.saved_tags = ()
            self.problem = _not_utf8_message(self.caption_file, exc)
            return
        self.saved_tags = parse_caption(text)
        self.newline = trailing_newline(text)


@dataclass(frozen=True)
class TagCount:
    tag: str
    count: int  # images whose caption holds the tag
    fraction: float  # count / images considered


@dataclass(frozen=True)
class FolderStats:
    folder: str  # relative to the dataset ("" = the dataset folder)
    images: int
    captionless: int
    repeats: int | None  # from an ``N_name`` folder name, else None
    class_tokens: str | None


@dataclass(frozen=True)
class DatasetStats:
    images: int
    captioned: int
    captionless: tuple[str, ...]  # image paths (relative) without a caption or with an empty one
    tags: tuple[TagCount, ...]  # most frequent first, ties by name
    folders: tuple[FolderStats, ...]
    problems: tuple[FileProblem, ...]


@dataclass
class Dataset:
    root: Path
    options: LoadOptions
    items: list[CaptionItem]
    problems: list[FileProblem] = field(default_factory=list)  # found while loading

    def __len__(self) -> int:
        return len(self.items)

    def index_of(self, rel: str) -> int:
        """Index of the image ``rel`` (relative path, "/"-separated); UserError if unknown."""
        index = self._index().get(rel.replace("\\", "/"))
        if index is None:
            raise UserError(f"Image {rel!r} is not part of the dataset {self.root}.")
        return index

    def _index(self) -> dict[str, int]:
        cached = getattr(self, "_rel_index", None)
        if cached is None or len(cached) != len(self.items):
            cached = {item.rel: i for i, item in enumerate(self.items)}
            self._rel_index = cached
        return cached

    def class_tokens(self) -> set[str]:
        """The class tokens of the ``N_name`` folders (usually the activation tag)."""
        out = set()
        for item in self.items:
            for part in item.folder.split("/"):
                subset = parse_subset_name(part)
                if subset:
                    out.add(normalize_tag(subset.class_tokens))
        return out


def tag_frequency(items: Iterable[CaptionItem]) -> Counter[str]:
    """How many captions hold each tag (a tag repeated in one caption counts once)."""
    counts: Counter[str] = Counter()
    for item in items:
        counts.update(set(item.tags))
    return counts


def ranked_counts(counts: Counter[str], total: int) -> tuple[TagCount, ...]:
    """``counts`` as TagCounts, most frequent first, ties alphabetical."""
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return tuple(TagCount(tag, n, n / total if total else 0.0) for tag, n in ordered)


def dataset_stats(dataset: Dataset) -> DatasetStats:
    items = dataset.items
    captionless = tuple(item.rel for item in items if not item.locked and not item.tags)
    folders: dict[str, list[CaptionItem]] = {}
    for item in items:
        folders.setdefault(item.folder, []).append(item)
    folder_stats = []
    for folder in sorted(folders):
        members = folders[folder]
        subset = parse_subset_name(folder.rsplit("/", 1)[-1]) if folder else None
        folder_stats.append(
            FolderStats(
                folder=folder,
                images=len(members),
                captionless=sum(1 for m in members if not m.locked and not m.tags),
                repeats=subset.repeats if subset else None,
                class_tokens=subset.class_tokens if subset else None,
            )
        )
    problems = tuple(dataset.problems)
    return DatasetStats(
        images=len(items),
        captioned=sum(1 for item in items if item.tags),
        captionless=captionless,
        tags=ranked_counts(tag_frequency(items), len(items)),
        folders=tuple(folder_stats),
        problems=problems,
    )


def _not_utf8_message(path: Path, exc: UnicodeDecodeError) -> str:
    return (
        f"Caption {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}; "
        "Latin-1 or another legacy encoding?): it is left untouched and cannot be edited until it is saved as UTF-8."
    )


CONFIDENCES_LIMIT = 64 << 20  # a folder's scores file: ~100 scores per image, thousands of images


def confidences_from_document(data: object) -> dict[str, float] | None:
    """Tag confidences from one image's tagger document; None when it is not in the expected shape."""
    if not isinstance(data, dict):
        return None
    out: dict[str, float] = {}
    for key in ("general", "character", "tags"):
        scores = data.get(key)
        if not isinstance(scores, dict):
            continue
        for tag, value in scores.items():
            if not isinstance(tag, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name = normalize_tag(tag)
            if name:
                out.setdefault(name, float(value))
    if not out:
        return None
    # the caption may spell a tag with spaces or underscores: answer both
    for name, value in list(out.items()):
        out.setdefault(underscores_to_spaces(name), value)
        out.setdefault(name.replace(" ", "_"), value)
    return out


def _read_json(path: Path, limit: int) -> object:
    """The JSON document in ``path``; None when it is absent, unsafe to read (UserError) or not JSON."""
    try:
        return json.loads(read_small_file(path, limit, "Tagger scores").decode("utf-8-sig"))
    except (OSError, ValueError, RecursionError, UserError):
        return None


def read_confidences(path: Path) -> dict[str, float] | None:
    """Tag confidences from an old per-image tagger sidecar (``<stem>.tagger.json``); None when it is
    missing, unsafe to read or not in the expected shape."""
    return confidences_from_document(_read_json(path, SMALL_FILE_LIMIT))


def read_folder_confidences(folder: Path) -> dict[str, dict[str, float]]:
    """Image file name -> confidences, from the folder's ``.tagger/scores.json`` (empty when absent)."""
    data = _read_json(tagger_scores_path(folder), CONFIDENCES_LIMIT)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, dict):
        return {}
    out = {}
    for name, doc in images.items():
        scores = confidences_from_document(doc)
        if isinstance(name, str) and scores:
            out[name] = scores
    return out


def read_caption_file(path: Path) -> tuple[bytes | None, str | None]:
    """(bytes, None), (None, None) when there is no caption file, or (None, problem) when it is unusable
    (a folder, a FIFO or device, over the size cap, unreadable)."""
    try:
        return read_small_file(path, SMALL_FILE_LIMIT, "Caption"), None
    except FileNotFoundError:
        return None, None
    except IsADirectoryError:
        return None, f"Caption {path} is a folder, not a file: it is left untouched."
    except UserError as exc:  # not a regular file, or too large
        return None, exc.message
    except PermissionError:
        if path.is_dir():
            return None, f"Caption {path} is a folder, not a file: it is left untouched."
        return None, f"Caption {path} cannot be read (permission denied): it is left untouched."
    except OSError as exc:
        return None, f"Caption {path} cannot be read ({exc.strerror or exc}): it is left untouched."


def load_item(
    root_prefix: int,
    image: Path,
    options: LoadOptions,
    siblings: frozenset[str] | None = None,
    folder_scores: dict[str, dict[str, float]] | None = None,
) -> CaptionItem:
    """Read one image's caption (and tagger scores); ``root_prefix`` is ``len(str(root)) + 1``.
    ``siblings``: the casefolded names in the image's folder, when known (saves failed opens);
    ``folder_scores``: the folder's ``.tagger/scores.json`` already read (else it is read here)."""
    rel = str(image)[root_prefix:].replace(os.sep, "/")
    cap = caption_path(image, options.caption_extension)
    if siblings is None or cap.name.casefold() in siblings:
        raw, problem = read_caption_file(cap)
    else:
        raw, problem = None, None
    item = CaptionItem(rel=rel, image=image, caption_file=cap, tags=(), saved_tags=(), disk_raw=None)
    if problem is not None:
        item.problem = problem
    else:
        item.set_disk_state(raw)
        item.tags = item.saved_tags
    if options.read_confidences:
        scores = read_folder_confidences(image.parent) if folder_scores is None else folder_scores
        item.confidences = scores.get(image.name)
        sidecar = image.stem + TAGGER_SIDECAR_SUFFIX
        if item.confidences is None and (siblings is None or sidecar.casefold() in siblings):
            item.confidences = read_confidences(image.with_name(sidecar))  # an older version's sidecar
    return item


def _folder_names(folder: Path) -> frozenset[str] | None:
    try:
        return frozenset(name.casefold() for name in os.listdir(folder))
    except OSError:
        return None


def check_dataset_folder(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser().absolute()
    if not path.exists():
        raise UserError(f"Dataset folder {path} does not exist.")
    if not path.is_dir():
        raise UserError(f"Dataset folder {path} is not a folder.")
    return path


def load_dataset(
    root: str | os.PathLike,
    options: LoadOptions | None = None,
    events: Events | None = None,
    stop: StopToken | None = None,
    image_check: Callable[[Sequence[Path]], Sequence[str | None]] | None = None,
) -> Dataset:
    """Load every image's caption under ``root``.

    Unusable captions are reported (``Dataset.problems`` and ``events.warning``) and locked, never fatal.
    ``image_check`` (the trainer's own image check, given by the caller) returns, per image, None or
    why it cannot be read: such images are left out and reported, as the trainer skips them.
    Raises :class:`lib_lora.events.StopRequested` if ``stop`` fires (a half-loaded dataset is useless).
    """
    options = options or LoadOptions()
    events = events or Events()
    root = check_dataset_folder(root)
    images = list(iter_image_files(root, recursive=options.recursive))
    prefix = len(str(root).rstrip(os.sep)) + 1
    unreadable: list[FileProblem] = []
    if image_check is not None and images:
        usable = []
        for image, why in zip(images, image_check(images)):
            if why is None:
                usable.append(image)
                continue
            rel = str(image)[prefix:].replace(os.sep, "/")
            message = f"Image {rel} cannot be read and is left out (training skips it too): {why}."
            unreadable.append(FileProblem(rel, message))
            events.warning(message)
        images = usable
    items: list[CaptionItem] = []
    problems: list[FileProblem] = unreadable
    total = len(images)
    listings: dict[Path, frozenset[str] | None] = {}
    scores: dict[Path, dict[str, dict[str, float]]] = {}
    owners: dict[str, str] = {}  # caption path (casefolded) -> the first image using it
    for i, image in enumerate(images):
        if stop is not None and i % 256 == 0:
            stop.raise_if_requested()
        folder = image.parent
        if folder not in listings:
            listings[folder] = _folder_names(folder)
            scores[folder] = read_folder_confidences(folder) if options.read_confidences else {}
        item = load_item(prefix, image, options, listings[folder], scores[folder])
        owner = owners.setdefault(item.caption_rel.casefold(), item.rel)
        if owner != item.rel and item.problem is None:
            # a.png and a.jpg both read a.txt: only the first one edits it, so one save never writes it twice
            item.problem = (
                f"Images {owner} and {item.rel} share the caption {item.caption_file}: "
                f"it is edited through {owner} only (rename one of the images to give it its own caption)."
            )
        if item.problem:
            problems.append(FileProblem(item.caption_rel, item.problem))
            events.warning(item.problem)
        items.append(item)
        if i % 1000 == 999:
            events.progress("loading captions", i + 1, total)
    events.progress("loading captions", total, total)
    return Dataset(root=root, options=options, items=items, problems=problems)
