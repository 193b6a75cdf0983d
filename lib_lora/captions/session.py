"""An editing session over one dataset: filter, batch edits, per-image edits, undo/redo, preview, save.

A front end (the Gradio tab, the CLI) holds one :class:`CaptionSession` per user. Nothing is written
until :meth:`CaptionSession.save`, which writes only the captions that changed, each atomically, after
keeping their previous versions in one backup zip (``.caption-history/``). A caption changed on disk
since it was loaded is never overwritten silently: it is reported as a :class:`Conflict` and the caller
chooses to overwrite it, skip it or reload it.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from lib_lora.captions import backups
from lib_lora.captions.filters import TagFilter, filter_items
from lib_lora.captions.model import (
    CaptionItem,
    Dataset,
    FileProblem,
    LoadOptions,
    TagCount,
    Tags,
    decode_caption,
    encode_caption,
    load_dataset,
    normalize_tag,
    parse_caption,
    parse_tag_list,
    ranked_counts,
    read_caption_file,
    tag_frequency,
)
from lib_lora.captions.ops import (
    AddTags,
    Dedupe,
    MoveToFront,
    Operation,
    RemoveTags,
    ReplaceText,
    SetCaption,
    SortTags,
    UnderscoresToSpaces,
    common_tags,
    run_operation,
)
from lib_lora.common.errors import UserError
from lib_lora.common.fsutil import atomic_write_bytes, is_read_only, sync_files
from lib_lora.common.tags import dedupe_tags
from lib_lora.common.text import plural
from lib_lora.events import Events, StopToken

CONFLICT_CHOICES = ("ask", "skip", "overwrite", "reload")

ItemKey = int | str  # an index into the dataset or an image path relative to it


@dataclass(frozen=True)
class EditResult:
    """What one edit (or undo/redo) did."""

    label: str
    changed: int  # captions whose tags changed
    considered: int = 0  # captions the edit was applied to (the filtered set)
    locked: int = 0  # of those, captions left alone because they are locked (unreadable, not UTF-8...)


@dataclass(frozen=True)
class HistoryEntry:
    label: str
    before: dict[int, Tags]
    after: dict[int, Tags]


@dataclass(frozen=True)
class PendingChange:
    """A caption that saving would write."""

    rel: str  # image path relative to the dataset
    caption: str  # caption file path relative to the dataset
    before: str | None  # the caption as on disk (normalised), None when the file does not exist yet
    after: str
    added: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass(frozen=True)
class Preview:
    """Before saving: how many captions change, and a sample of before/after."""

    changed: int
    created: int  # of those, caption files that do not exist yet
    total: int  # images in the dataset
    samples: tuple[PendingChange, ...]
    tags_added: tuple[tuple[str, int], ...]  # (tag, in how many captions), most common first
    tags_removed: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Conflict:
    """A caption changed on disk since it was loaded (or last saved) while it also has unsaved edits."""

    rel: str
    caption: str
    reason: str  # one sentence for the user
    on_disk: str | None  # the file's text now (None: deleted, or not readable as UTF-8)
    loaded: str | None  # the text when loaded (None: there was no file)
    ours: str  # what saving would write
    resolution: str = "ask"  # "ask" (waiting for the user), "skip", "overwrite" or "reload"


@dataclass
class SaveResult:
    written: list[str] = field(default_factory=list)  # caption paths (relative) rewritten
    created: list[str] = field(default_factory=list)  # caption files that did not exist before
    backup: Path | None = None  # the zip holding the previous versions
    conflicts: list[Conflict] = field(default_factory=list)
    failed: list[FileProblem] = field(default_factory=list)  # read-only, folder, disk error ...
    stopped: bool = False  # the stop token fired; the captions not yet written are still unsaved

    @property
    def unresolved(self) -> list[Conflict]:
        """Conflicts still waiting: their edits are unsaved and the file on disk was left alone."""
        return [c for c in self.conflicts if c.resolution in ("ask", "skip")]

    @property
    def ok(self) -> bool:
        return not self.unresolved and not self.failed and not self.stopped


class _ChangedMeanwhile(Exception):
    """The caption file is no longer what was backed up: another program wrote it meanwhile."""

    def __init__(self, raw: bytes | None) -> None:
        super().__init__("changed on disk while saving")
        self.raw = raw


def _before_swap(path: Path) -> None:
    """Runs right before a caption's compare-and-swap (a seam for tests that race the save)."""


def _unchanged_since(path: Path, expected: bytes | None) -> Callable[[], None]:
    """The compare of the compare-and-swap: raise _ChangedMeanwhile unless ``path`` still holds
    ``expected`` (None: still does not exist)."""

    def check() -> None:
        _before_swap(path)
        raw, problem = read_caption_file(path)
        if problem is not None or raw != expected:
            raise _ChangedMeanwhile(raw)

    return check


def _text_or_none(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return decode_caption(raw)
    except UnicodeDecodeError:
        return None


class CaptionSession:
    """One dataset being edited. All batch edits apply to the filtered images (:meth:`visible`)."""

    def __init__(self, dataset: Dataset, history_limit: int = 200) -> None:
        self.dataset = dataset
        self.history_limit = history_limit
        self._filter = TagFilter()
        self._undo: list[HistoryEntry] = []
        self._redo: list[HistoryEntry] = []
        self._version = 0  # bumped on every change of tags (caches key on it)
        self._visible: tuple[int, list[int]] | None = None
        self._frequency: tuple[int, Counter[str]] | None = None
        self._lock = threading.RLock()

    @classmethod
    def open(
        cls,
        root: str | os.PathLike,
        options: LoadOptions | None = None,
        events: Events | None = None,
        stop: StopToken | None = None,
    ) -> CaptionSession:
        """Load ``root`` (see :func:`lib_lora.captions.model.load_dataset`) and start a session on it."""
        return cls(load_dataset(root, options, events, stop))

    # ----------------------------------------------------------------- items, filter
    @property
    def root(self) -> Path:
        return self.dataset.root

    @property
    def items(self) -> list[CaptionItem]:
        return self.dataset.items

    @property
    def problems(self) -> list[FileProblem]:
        return self.dataset.problems

    def index(self, key: ItemKey) -> int:
        if isinstance(key, int):
            if not 0 <= key < len(self.items):
                raise UserError(
                    f"Image number {key} is out of range (the dataset has {plural(len(self.items), 'image')})."
                )
            return key
        return self.dataset.index_of(key)

    def item(self, key: ItemKey) -> CaptionItem:
        return self.items[self.index(key)]

    @property
    def filter(self) -> TagFilter:
        return self._filter

    def set_filter(self, tag_filter: TagFilter | None) -> list[int]:
        """Show (and edit) only the images ``tag_filter`` matches; returns their indices.
        Raises UserError for an invalid filter (the previous filter stays)."""
        tag_filter = tag_filter or TagFilter()
        tag_filter.matcher()  # validate first
        with self._lock:
            self._filter = tag_filter
            self._visible = None
            return self.visible()

    def visible(self) -> list[int]:
        """Indices of the images the current filter matches (re-evaluated after edits)."""
        with self._lock:
            if self._visible is None or self._visible[0] != self._version:
                self._visible = (self._version, filter_items(self.items, self._filter))
            return list(self._visible[1])

    def visible_items(self) -> list[CaptionItem]:
        return [self.items[i] for i in self.visible()]

    # ----------------------------------------------------------------- tag lists
    def frequency(self) -> Counter[str]:
        """Tag -> number of captions holding it, over the whole dataset (current, unsaved tags)."""
        with self._lock:
            if self._frequency is None or self._frequency[0] != self._version:
                self._frequency = (self._version, tag_frequency(self.items))
            return self._frequency[1]

    def tag_counts(self, visible_only: bool = True) -> tuple[TagCount, ...]:
        """Tags with their counts, most frequent first; by default over the filtered images only."""
        if not visible_only:
            return ranked_counts(self.frequency(), len(self.items))
        shown = self.visible_items()
        return ranked_counts(tag_frequency(shown), len(shown))

    def protected_tags(
        self,
        keep_tokens: int = 1,
        keep_tokens_separator: str = "",
        activation: str | Iterable[str] = (),
        visible_only: bool = True,
    ) -> set[str]:
        """Tags a pruning suggestion must never name, because removing them would remove the trigger:
        the ``N_name`` folders' class tokens, the activation tag(s) given, and every tag that sits in
        the kept head of a caption (its first ``keep_tokens`` tags: the default 1 is where the tagger
        and the guides put the activation tag; and the text before ``keep_tokens_separator``)."""
        out = set(self.dataset.class_tokens())
        out.update(parse_tag_list(activation))
        head = max(0, int(keep_tokens or 0))
        for item in self.visible_items() if visible_only else self.items:
            out.update(item.tags[:head])
            if keep_tokens_separator:
                for tag in item.tags:
                    if keep_tokens_separator in tag:  # "mychar ||| smile": the tag holding it too
                        out.add(tag)
                        before = normalize_tag(tag.split(keep_tokens_separator, 1)[0])
                        if before:
                            out.add(before)
                        break
                    out.add(tag)
        return out

    def suggest_common_tags(
        self,
        threshold: float = 0.9,
        exclude: Iterable[str] | None = None,
        visible_only: bool = True,
        keep_tokens: int = 1,
        keep_tokens_separator: str = "",
        activation: str | Iterable[str] = (),
    ) -> list[TagCount]:
        """Tags in at least ``threshold`` of the (filtered) images: candidates to prune so the activation
        tag absorbs them. Never the activation tag: ``exclude`` defaults to :meth:`protected_tags`."""
        if exclude is None:
            skip = self.protected_tags(keep_tokens, keep_tokens_separator, activation, visible_only)
        else:
            skip = set(exclude)
        indices = self.visible() if visible_only else None
        return common_tags(self.items, indices, threshold, skip)

    # ----------------------------------------------------------------- edits
    def apply(self, op: Operation, keys: Iterable[ItemKey] | None = None) -> EditResult:
        """Apply ``op`` to the filtered images (or to ``keys``) as one undoable step."""
        with self._lock:
            indices = self.visible() if keys is None else [self.index(k) for k in keys]
            freq = self.frequency() if op.needs_frequency else None
            changed = run_operation(op, self.items, indices, freq)
            locked = sum(1 for i in indices if self.items[i].locked)
            before = {i: self.items[i].tags for i in changed}
            self._commit(HistoryEntry(op.label, before, changed))
            return EditResult(op.label, len(changed), len(indices), locked)

    def add_tags(self, tags: str | Sequence[str], position: str = "front") -> EditResult:
        return self.apply(AddTags(tuple(tags) if not isinstance(tags, str) else (tags,), position))

    def remove_tags(self, tags: str | Sequence[str]) -> EditResult:
        return self.apply(RemoveTags(tuple(tags) if not isinstance(tags, str) else (tags,)))

    def replace(
        self, old: str, new: str, regex: bool = False, whole_caption: bool = False, ignore_case: bool = False
    ) -> EditResult:
        return self.apply(ReplaceText(old, new, regex, whole_caption, ignore_case))

    def underscores_to_spaces(self) -> EditResult:
        return self.apply(UnderscoresToSpaces())

    def dedupe(self) -> EditResult:
        return self.apply(Dedupe())

    def sort(self, key: str = "alpha", keep_first: int = 0, reverse: bool = False) -> EditResult:
        return self.apply(SortTags(key, keep_first, reverse))

    def move_to_front(self, tags: str | Sequence[str]) -> EditResult:
        return self.apply(MoveToFront(tuple(tags) if not isinstance(tags, str) else (tags,)))

    def edit(self, key: ItemKey, text: str) -> EditResult:
        """Set one image's caption to ``text`` (the per-image edit box). UserError if it is locked."""
        with self._lock:
            item = self.item(key)
            if item.locked:
                raise UserError(item.problem or f"Caption {item.caption_file} cannot be edited.")
            return self.apply(SetCaption(text), [self.index(key)])

    def discard_changes(self, keys: Iterable[ItemKey] | None = None) -> EditResult:
        """Put the captions (all, or ``keys``) back to their saved version; undoable."""
        with self._lock:
            indices = range(len(self.items)) if keys is None else [self.index(k) for k in keys]
            after = {i: self.items[i].saved_tags for i in indices if self.items[i].dirty}
            before = {i: self.items[i].tags for i in after}
            label = "discard unsaved changes"
            self._commit(HistoryEntry(label, before, after))
            return EditResult(label, len(after), len(indices))

    def _commit(self, entry: HistoryEntry) -> None:
        if not entry.after:
            return
        self._set_tags(entry.after)
        self._push(entry)

    def _push(self, entry: HistoryEntry) -> None:
        self._undo.append(entry)
        del self._undo[: -self.history_limit]
        self._redo.clear()

    def _set_tags(self, tags: Mapping[int, Tags]) -> None:
        for i, new in tags.items():
            self.items[i].tags = new
        self._version += 1

    # ----------------------------------------------------------------- history
    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def history(self) -> tuple[list[str], list[str]]:
        """Labels of the steps that can be undone (oldest first) and redone (next first)."""
        return [e.label for e in self._undo], [e.label for e in reversed(self._redo)]

    def undo(self) -> EditResult | None:
        """Undo the last edit; None when there is nothing to undo."""
        with self._lock:
            if not self._undo:
                return None
            entry = self._undo.pop()
            self._set_tags(entry.before)
            self._redo.append(entry)
            return EditResult(f"undo {entry.label}", len(entry.before))

    def redo(self) -> EditResult | None:
        with self._lock:
            if not self._redo:
                return None
            entry = self._redo.pop()
            self._set_tags(entry.after)
            self._undo.append(entry)
            return EditResult(f"redo {entry.label}", len(entry.after))

    # ----------------------------------------------------------------- preview
    def dirty_indices(self) -> list[int]:
        return [i for i, item in enumerate(self.items) if item.dirty]

    @property
    def dirty_count(self) -> int:
        return sum(1 for item in self.items if item.dirty)

    def pending(self, keys: Iterable[ItemKey] | None = None) -> list[PendingChange]:
        """Every caption saving would write, with before/after text."""
        indices = self.dirty_indices() if keys is None else [self.index(k) for k in keys]
        out = []
        for i in indices:
            item = self.items[i]
            if not item.dirty:
                continue
            old, new = set(item.saved_tags), set(item.tags)
            out.append(
                PendingChange(
                    rel=item.rel,
                    caption=item.caption_rel,
                    before=item.saved_caption if item.has_caption_file else None,
                    after=item.caption,
                    added=tuple(dedupe_tags(t for t in item.tags if t not in old)),
                    removed=tuple(dedupe_tags(t for t in item.saved_tags if t not in new)),
                )
            )
        return out

    def preview(self, sample: int = 5) -> Preview:
        changes = self.pending()
        added: Counter[str] = Counter()
        removed: Counter[str] = Counter()
        for change in changes:
            added.update(set(change.added))
            removed.update(set(change.removed))
        return Preview(
            changed=len(changes),
            created=sum(1 for c in changes if c.before is None),
            total=len(self.items),
            samples=tuple(changes[:sample]),
            tags_added=tuple(sorted(added.items(), key=lambda kv: (-kv[1], kv[0]))),
            tags_removed=tuple(sorted(removed.items(), key=lambda kv: (-kv[1], kv[0]))),
        )

    # ----------------------------------------------------------------- disk
    def _conflict(self, item: CaptionItem, raw: bytes | None) -> Conflict:
        if raw is None:
            reason = f"Caption {item.caption_file} was deleted on disk since it was loaded."
        elif item.disk_raw is None:
            reason = f"Caption {item.caption_file} was created on disk since the dataset was loaded."
        else:
            reason = f"Caption {item.caption_file} was changed on disk since it was loaded."
        return Conflict(
            rel=item.rel,
            caption=item.caption_rel,
            reason=reason,
            on_disk=_text_or_none(raw),
            loaded=_text_or_none(item.disk_raw),
            ours=item.caption,
        )

    def check_disk(self, keys: Iterable[ItemKey] | None = None) -> list[Conflict]:
        """Captions with unsaved edits whose file changed on disk since load/save (what :meth:`save`
        would report), checked now without writing anything."""
        indices = self.dirty_indices() if keys is None else [self.index(k) for k in keys]
        out = []
        for i in indices:
            item = self.items[i]
            if not item.dirty:
                continue
            raw, problem = read_caption_file(item.caption_file)
            if problem is None and raw != item.disk_raw:
                out.append(self._conflict(item, raw))
        return out

    def changed_on_disk(self) -> list[str]:
        """Images whose caption file differs from what was loaded (edited elsewhere), dirty or not."""
        out = []
        for item in self.items:
            raw, problem = read_caption_file(item.caption_file)
            if (problem is None and raw != item.disk_raw) or (problem is not None and item.problem is None):
                out.append(item.rel)
        return out

    def reload(self, keys: Iterable[ItemKey]) -> EditResult:
        """Take these captions' current on-disk version (dropping unsaved edits; the step is undoable)."""
        with self._lock:
            indices = [self.index(k) for k in keys]
            before = {i: self.items[i].tags for i in indices}
            for i in indices:
                self._reload_item(self.items[i])
            after = {i: self.items[i].tags for i in indices}
            changed = {i: t for i, t in after.items() if t != before[i]}
            entry = HistoryEntry("reload from disk", {i: before[i] for i in changed}, changed)
            if changed:
                self._push(entry)
            self._version += 1
            return EditResult(entry.label, len(changed), len(indices))

    def _reload_item(self, item: CaptionItem) -> None:
        raw, problem = read_caption_file(item.caption_file)
        if problem is not None:
            item.problem = problem
            item.tags = item.saved_tags = ()
            return
        item.set_disk_state(raw)
        item.tags = item.saved_tags

    def save(
        self,
        on_conflict: str = "ask",
        choices: Mapping[str, str] | None = None,
        events: Events | None = None,
        stop: StopToken | None = None,
    ) -> SaveResult:
        """Write every changed caption.

        For each one: the file is read again; if it changed on disk since load, ``choices[rel]`` (else
        ``on_conflict``) decides: ``"ask"``/``"skip"`` leave it alone and report it, ``"overwrite"``
        writes ours (the on-disk version goes to the backup), ``"reload"`` takes the on-disk version.
        A read-only caption, or one that became a folder, is reported in ``failed`` and left alone.
        Then one backup zip with the previous version of every caption about to be written is saved in
        ``.caption-history/``; only then are the captions written, each atomically and as a
        compare-and-swap: at the moment of the replace the file is read again, and if another
        program changed it since it was backed up, it is not replaced but reported in ``conflicts``
        (its new text stays on disk, ours stays as an unsaved edit, the old one is in the backup).
        Captions not written keep their unsaved edits. Raises UserError (writing nothing) if the
        backup fails.
        """
        choices = dict(choices or {})
        for choice in [on_conflict, *choices.values()]:
            if choice not in CONFLICT_CHOICES:
                raise UserError(f"Conflict choice {choice!r} is not known; use one of {', '.join(CONFLICT_CHOICES)}.")
        events = events or Events()
        result = SaveResult()
        with self._lock:
            dirty = self.dirty_indices()
            plan: list[tuple[int, bytes | None, bytes]] = []  # (index, bytes on disk now, bytes to write)
            reload_keys: list[int] = []
            for n, i in enumerate(dirty):
                if stop is not None and stop.requested:
                    result.stopped = True
                    return result
                if n % 1000 == 999:
                    events.progress("checking captions", n + 1, len(dirty))
                item = self.items[i]
                raw, problem = read_caption_file(item.caption_file)
                if problem is not None:
                    result.failed.append(FileProblem(item.caption_rel, problem))
                    continue
                if raw != item.disk_raw:
                    choice = choices.get(item.rel, on_conflict)
                    conflict = self._conflict(item, raw)
                    result.conflicts.append(replace(conflict, resolution=choice))
                    if choice == "reload":
                        reload_keys.append(i)
                        continue
                    if choice != "overwrite":
                        continue
                if raw is not None and is_read_only(item.caption_file):
                    result.failed.append(
                        FileProblem(
                            item.caption_rel,
                            f"Caption {item.caption_file} is read-only: it was left untouched "
                            "(make it writable and save again; the edit is kept).",
                        )
                    )
                    continue
                plan.append((i, raw, encode_caption(item.tags, item.newline)))
            if reload_keys:
                self.reload(reload_keys)
            if not plan:
                self._report(result, events)
                return result

            # the previous versions are safe on disk before any caption is touched
            result.backup = backups.write_backup(self.root, [(self.items[i].caption_rel, raw) for i, raw, _ in plan])
            for n, (i, raw, data) in enumerate(plan):
                if stop is not None and stop.requested:
                    result.stopped = True
                    break
                item = self.items[i]
                try:
                    # the backup is already durable: one flush at the end instead of two fsyncs per file;
                    # compare-and-swap: only the text that went into the backup is ever replaced
                    atomic_write_bytes(
                        item.caption_file, data, durable=False, before_replace=_unchanged_since(item.caption_file, raw)
                    )
                except _ChangedMeanwhile as exc:
                    reason = (
                        f"Caption {item.caption_file} was changed by another program while it was being saved: "
                        "its new text was left in place and your edit was not written (it is kept, unsaved)."
                    )
                    result.conflicts.append(replace(self._conflict(item, exc.raw), reason=reason))
                    continue
                except UserError as exc:
                    result.failed.append(FileProblem(item.caption_rel, f"{exc} The edit is kept; nothing was lost."))
                    continue
                # what was written parses back to exactly these tags (every edit keeps them normalised)
                item.disk_raw, item.saved_tags = data, item.tags
                (result.written if raw is not None else result.created).append(item.caption_rel)
                if n % 500 == 499:
                    events.progress("saving captions", n + 1, len(plan))
            sync_files([self.items[i].caption_file for i, _, _ in plan])
            events.progress("saving captions", len(plan), len(plan))
            self._version += 1
            self._report(result, events)
            return result

    @staticmethod
    def _report(result: SaveResult, events: Events) -> None:
        for conflict in result.unresolved:
            events.warning(f"{conflict.reason} It was not overwritten; choose overwrite, skip or reload.")
        for problem in result.failed:
            events.warning(problem.message)

    # ----------------------------------------------------------------- backups
    def backups(self) -> list[backups.BackupInfo]:
        return backups.list_backups(self.root)

    def restore(self, backup: str | os.PathLike, keys: Iterable[ItemKey] | None = None) -> EditResult:
        """Put captions back to their version in ``backup`` (all it holds, or ``keys``) as one undoable
        edit; save to write them. A caption the backed-up save created comes back empty."""
        content = backups.read_backup(backup)
        by_caption = {item.caption_rel: i for i, item in enumerate(self.items)}
        wanted = None if keys is None else {self.index(k) for k in keys}
        after: dict[int, Tags] = {}
        for rel, raw in content.items():
            i = by_caption.get(rel)
            if i is None or (wanted is not None and i not in wanted) or self.items[i].locked:
                continue
            text = _text_or_none(raw) if raw is not None else ""
            if text is None:
                continue
            tags = parse_caption(text)
            if tags != self.items[i].tags:
                after[i] = tags
        with self._lock:
            label = f"restore from {Path(backup).name}"
            self._commit(HistoryEntry(label, {i: self.items[i].tags for i in after}, after))
            return EditResult(label, len(after), len(content))


def summary_line(result: SaveResult) -> str:
    """One line describing a save, for logs and status bars."""
    parts = [f"saved {plural(len(result.written) + len(result.created), 'caption')}"]
    if result.created:
        parts.append(f"{len(result.created)} new")
    if result.backup:
        parts.append(f"previous versions in {result.backup}")
    if result.unresolved:
        parts.append(f"{len(result.unresolved)} changed on disk and not overwritten")
    if result.failed:
        parts.append(f"{len(result.failed)} could not be written")
    if result.stopped:
        parts.append("stopped before the end")
    return "; ".join(parts)


__all__ = [
    "CONFLICT_CHOICES",
    "CaptionSession",
    "Conflict",
    "EditResult",
    "HistoryEntry",
    "PendingChange",
    "Preview",
    "SaveResult",
    "summary_line",
]
