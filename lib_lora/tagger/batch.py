"""Tag a dataset folder: decode in a thread pool, infer in batches, write each caption at once.

Images are found recursively (the ``N_name`` layout; hidden and tool folders skipped). Worker
threads decode and preprocess the next images while the current batch runs through the model
(both release the GIL). After each batch its captions are written atomically, so an interrupted
run keeps what finished and a re-run with ``existing="skip"`` carries on. Unreadable images are
skipped and listed in the result; nothing else about them is touched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lib_lora.common.errors import UserError
from lib_lora.common.fsutil import atomic_write_text, is_read_only, read_small_file
from lib_lora.common.layout import (
    TAGGER_SIDECAR_SUFFIX,
    caption_extension_problem,
    caption_path,
    iter_image_files,
    tagger_scores_path,
)
from lib_lora.common.tags import join_tags, split_tags
from lib_lora.common.text import plural
from lib_lora.events import Events, StopToken
from lib_lora.tagger.labels import (
    EXISTING_POLICIES,
    Prediction,
    TagOptions,
    confidences_document,
    merge_caption,
    predict_tags,
)
from lib_lora.tagger.models import DEFAULT_MODEL
from lib_lora.tagger.preprocess import ImageReadError, load_and_prepare
from lib_lora.tagger.session import Tagger, load_tagger

CONFIDENCES_SUFFIX = TAGGER_SIDECAR_SUFFIX  # older versions: <stem>.tagger.json beside every image (still read)
SCORES_LIMIT = 64 << 20
MAX_BATCH_SIZE = 256  # images per inference call: more only fills memory (and 2x this many are decoded ahead)
MAX_THREADS = 256
_SCORES_EVERY = 256  # images between two writes of the scores files (and at the end)


def confidences_path(image: str | os.PathLike) -> Path:
    """The file holding ``image``'s scores: its folder's ``.tagger/scores.json``."""
    return tagger_scores_path(Path(image).parent)


def read_scores(folder: str | os.PathLike) -> dict[str, dict]:
    """Image file name -> scores document, from ``folder``'s scores file ({} when absent or unreadable)."""
    try:
        data = json.loads(read_small_file(tagger_scores_path(folder), SCORES_LIMIT, "Tagger scores"))
    except (OSError, ValueError, RecursionError, UserError):
        return {}
    images = data.get("images") if isinstance(data, dict) else None
    return (
        {k: v for k, v in images.items() if isinstance(k, str) and isinstance(v, dict)}
        if isinstance(images, dict)
        else {}
    )


class _ScoresWriter:
    """Every score >= 0.05 of each tagged image, kept per folder in ``<folder>/.tagger/scores.json``
    (written atomically every few hundred images and at the end). Older ``<stem>.tagger.json``
    sidecars in a folder are taken into its scores file and then removed (migrated)."""

    def __init__(self) -> None:
        self.folders: dict[Path, dict[str, dict]] = {}
        self.sidecars: dict[Path, list[Path]] = {}
        self.dirty: set[Path] = set()
        self.pending = 0

    def _load(self, folder: Path) -> dict[str, dict]:
        if folder not in self.folders:
            scores = read_scores(folder)
            sidecars = sorted(folder.glob("*" + CONFIDENCES_SUFFIX))
            images = {p.stem: p.name for p in iter_image_files(folder, recursive=False)} if sidecars else {}
            for sidecar in sidecars:
                name = images.get(sidecar.name[: -len(CONFIDENCES_SUFFIX)])
                if name is None or name in scores:
                    continue
                try:
                    doc = json.loads(read_small_file(sidecar, what="Tagger scores"))
                except (OSError, ValueError, RecursionError, UserError):
                    continue
                if isinstance(doc, dict):
                    scores[name] = doc
            self.folders[folder] = scores
            self.sidecars[folder] = [p for p in sidecars if p.name[: -len(CONFIDENCES_SUFFIX)] in images]
        return self.folders[folder]

    def add(self, image: Path, doc: dict) -> None:
        self._load(image.parent)[image.name] = doc
        self.dirty.add(image.parent)
        self.pending += 1
        if self.pending >= _SCORES_EVERY:
            self.flush()

    def flush(self) -> None:
        for folder in sorted(self.dirty):
            doc = {"version": 1, "images": self.folders[folder]}
            atomic_write_text(
                tagger_scores_path(folder), json.dumps(doc, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
            )
            for sidecar in self.sidecars.pop(folder, []):  # now in the scores file: the old sidecars go
                with contextlib.suppress(OSError):
                    sidecar.unlink()
            self.sidecars[folder] = []
            self.dirty.discard(folder)
        self.pending = 0


@dataclass(frozen=True)
class TagFolderOptions:
    """Everything a folder run needs; the UI builds one of these from its controls."""

    folder: str | os.PathLike
    model: str | os.PathLike = DEFAULT_MODEL  # registry name or a folder with model.onnx + selected_tags.csv
    tags: TagOptions = field(default_factory=TagOptions)
    existing: str = "skip"  # skip | overwrite | append | prepend
    batch_size: int = 0  # images per inference call; 0 = auto (4 on the CPU, 16 on a GPU)
    recursive: bool = True
    confidences: bool = False  # also keep every score in <folder>/.tagger/scores.json for the caption editor
    device: str = "auto"  # auto | cuda | directml | cpu
    threads: int = 0  # onnxruntime intra-op threads; 0 = its default (one per physical core)
    workers: int = 0  # decode threads; 0 = min(4, CPU count)
    caption_extension: str = ".txt"
    allow_download: bool = True
    cache_dir: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        if self.existing not in EXISTING_POLICIES:
            raise UserError(
                f"The existing-caption policy must be one of {', '.join(EXISTING_POLICIES)} (got {self.existing!r})."
            )
        if self.batch_size < 0:
            raise UserError(f"The batch size must be at least 1, or 0 for automatic (got {self.batch_size}).")
        if self.batch_size > MAX_BATCH_SIZE:
            raise UserError(
                f"The tagger batch size {self.batch_size:,} is too large: at most {MAX_BATCH_SIZE} images at once "
                "(8 to 16 suit most graphics cards; 0 chooses automatically)."
            )
        for value, what in ((self.workers, "decode threads"), (self.threads, "tagger threads")):
            if not 0 <= value <= MAX_THREADS:
                raise UserError(
                    f"The number of {what} must be between 0 (automatic) and {MAX_THREADS} (got {value:,})."
                )
        problem = caption_extension_problem(self.caption_extension)
        if problem:
            raise UserError(problem)


@dataclass(frozen=True)
class FailedImage:
    path: Path
    reason: str


@dataclass(frozen=True)
class TaggedImage:
    path: Path
    caption_path: Path
    tags: list[str]  # the caption as written (or as it already was)
    status: str  # "written" | "unchanged"


@dataclass
class TagFolderResult:
    folder: Path
    model: str = ""
    device: str = ""
    images: int = 0  # image files found
    kept: int = 0  # already captioned, left alone (existing="skip")
    tagged: list[TaggedImage] = field(default_factory=list)
    failed: list[FailedImage] = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0

    @property
    def written(self) -> int:
        return sum(1 for t in self.tagged if t.status == "written")

    @property
    def unchanged(self) -> int:
        return sum(1 for t in self.tagged if t.status == "unchanged")

    @property
    def images_per_second(self) -> float:
        return len(self.tagged) / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "folder": str(self.folder),
            "model": self.model,
            "device": self.device,
            "images": self.images,
            "written": self.written,
            "unchanged": self.unchanged,
            "kept": self.kept,
            "failed": [{"image": str(f.path), "reason": f.reason} for f in self.failed],
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "tagged": [
                {"image": str(t.path), "caption": str(t.caption_path), "status": t.status, "tags": t.tags}
                for t in self.tagged
            ],
        }


CPU_BATCH, GPU_BATCH = 4, 16


def auto_batch_size(tagger: Tagger) -> int:
    """On the CPU a ConvNeXt-base-sized tagger runs no faster per image beyond batch 2-4 and slower
    at 8 (activations leave the cache; see bench/tagger.py); a GPU gains up to about 16."""
    return CPU_BATCH if tagger.device == "CPU" else GPU_BATCH


class _ImageSkipped(Exception):
    pass


def _has_caption(path: Path) -> bool:
    """True when ``path`` holds at least one tag (an unreadable caption counts: it is left alone;
    a FIFO or device is never read)."""
    try:
        return bool(split_tags(read_small_file(path, what="Caption").decode("utf-8-sig")))
    except FileNotFoundError:
        return False
    except (OSError, UnicodeDecodeError, UserError):
        return True


def _check_writable(folder: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".tmp-write-check-", dir=folder)
    except OSError as exc:
        if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(
                f"Cannot write captions in {folder}: the folder is read-only (permission denied); nothing was changed."
            ) from None
        raise UserError(f"Cannot write captions in {folder}: {exc.strerror or exc}; nothing was changed.") from None
    os.close(fd)
    os.unlink(name)


def _is_disk_full(exc: BaseException) -> bool:
    cause = exc.__cause__
    return isinstance(cause, OSError) and cause.errno == errno.ENOSPC


class _CaptionWriter:
    def __init__(self, options: TagFolderOptions, model_name: str) -> None:
        self.options = options
        self.model_name = model_name
        self.scores = _ScoresWriter()

    def write(
        self, image: Path, caption: Path, prediction: Prediction, scores: np.ndarray, tagger: Tagger
    ) -> TaggedImage:
        existing_text = None
        if caption.exists():
            if is_read_only(caption):
                raise _ImageSkipped(f"its caption file {caption.name} is read-only; left unchanged")
            try:
                existing_text = read_small_file(caption, what="Its caption file").decode("utf-8-sig")
            except UnicodeDecodeError:
                raise _ImageSkipped(f"its caption file {caption.name} is not UTF-8 text; left unchanged") from None
            except UserError as exc:  # a FIFO, a device, too large
                raise _ImageSkipped(exc.message.rstrip(".")) from None
            except OSError as exc:
                raise _ImageSkipped(f"cannot read its caption file {caption.name} ({exc.strerror or exc})") from None
        tags = merge_caption(
            split_tags(existing_text or ""), prediction.tags, self.options.existing, self.options.tags.additional_tags
        )
        text = join_tags(tags)
        status = "unchanged"
        if existing_text is None or existing_text.strip() != text:
            atomic_write_text(caption, text)
            status = "written"
        if self.options.confidences:
            doc = confidences_document(prediction, scores, tagger.labels, self.options.tags, self.model_name)
            doc["tags"] = tags
            self.scores.add(image, doc)
        return TaggedImage(image, caption, tags, status)


def tag_folder(
    options: TagFolderOptions,
    events: Events | None = None,
    stop: StopToken | None = None,
    tagger: Tagger | None = None,
) -> TagFolderResult:
    """Tag every image under ``options.folder`` and write its caption. See the module docstring.

    ``tagger`` lets a caller reuse a loaded model; otherwise :func:`load_tagger` loads (and, on first
    use, downloads) ``options.model``. The model is not loaded at all when nothing needs tagging.
    """
    events = events or Events()
    stop = stop or StopToken()
    started = time.perf_counter()
    folder = Path(options.folder).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"The dataset folder {folder} does not exist." if not folder.exists() else f"{folder} is not a folder."
        )
    result = TagFolderResult(folder)

    todo: list[tuple[Path, Path]] = []
    owners: dict[Path, Path] = {}
    for image in iter_image_files(folder, recursive=options.recursive):
        result.images += 1
        caption = caption_path(image, options.caption_extension)
        if caption in owners:
            result.failed.append(
                FailedImage(image, f"it shares the caption file {caption.name} with {owners[caption].name}")
            )
            continue
        owners[caption] = image
        if options.existing == "skip" and _has_caption(caption):
            result.kept += 1
            continue
        todo.append((image, caption))
    if not todo:
        events.info(
            f"Nothing to tag in {folder}: {plural(result.images, 'image')}, {result.kept} already captioned"
            + (f", {len(result.failed)} skipped." if result.failed else ".")
        )
        _report_failures(result, events)
        result.seconds = time.perf_counter() - started
        return result
    for parent in sorted({image.parent for image, _ in todo}):
        _check_writable(parent)

    if tagger is None:
        tagger = load_tagger(
            options.model,
            device=options.device,
            threads=options.threads,
            cache_dir=options.cache_dir,
            allow_download=options.allow_download,
            events=events,
        )
    result.model, result.device = tagger.name, tagger.device
    workers = options.workers or min(4, os.cpu_count() or 1)
    batch_size = options.batch_size or auto_batch_size(tagger)
    events.info(
        f"Tagging {plural(len(todo), 'image')} with {tagger.name} on {tagger.device} (batch {batch_size}, "
        f"{workers} decode threads)" + (f"; {result.kept} captioned images kept." if result.kept else ".")
    )
    writer = _CaptionWriter(options, tagger.name)
    total, done = len(todo), 0
    events.progress("tagging", 0, total, "")

    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tagger-decode")
    pending: deque[tuple[Path, Path, Future]] = deque()
    queue = iter(todo)

    def submit_next() -> None:
        item = next(queue, None)
        if item is not None:
            pending.append((item[0], item[1], executor.submit(load_and_prepare, item[0], tagger.size)))

    def run_batch(items: list[tuple[Path, Path]], arrays: list[np.ndarray]) -> None:
        scores = tagger.predict(np.stack(arrays))
        for (image, caption), row in zip(items, scores):
            prediction = predict_tags(row, tagger.labels, options.tags)
            try:
                result.tagged.append(writer.write(image, caption, prediction, row, tagger))
            except _ImageSkipped as exc:
                result.failed.append(FailedImage(image, str(exc)))
            except UserError as exc:
                if _is_disk_full(exc):
                    raise
                result.failed.append(FailedImage(image, str(exc)))

    try:
        for _ in range(min(2 * batch_size + workers, total)):
            submit_next()
        items: list[tuple[Path, Path]] = []
        arrays: list[np.ndarray] = []
        while pending:
            if stop.requested:
                result.stopped = True
                break
            image, caption, future = pending.popleft()
            submit_next()
            try:
                arrays.append(future.result())
                items.append((image, caption))
            except ImageReadError as exc:
                result.failed.append(FailedImage(image, str(exc)))
                done += 1
            if len(items) == batch_size or (not pending and items):
                run_batch(items, arrays)
                done += len(items)
                items, arrays = [], []
                events.progress("tagging", done, total, image.name)
        if not result.stopped and done:
            events.progress("tagging", done, total, "")  # the last images may all have failed to decode
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        try:
            writer.scores.flush()  # also after a stop or an error: the captions written have their scores
        except UserError as exc:
            events.warning(f"The tagger's scores could not be saved: {exc}")

    result.seconds = time.perf_counter() - started
    summary = (
        f"Tagged {plural(len(result.tagged), 'image')} in {result.seconds:.1f} s ({result.images_per_second:.2f} images/s): "
        f"{plural(result.written, 'caption')} written, {result.unchanged} unchanged, {result.kept} kept"
    )
    if result.stopped:
        summary += (
            f"; stopped ({stop.reason or 'stop requested'}), {plural(total - done, 'image')} left for the next run"
        )
    events.info(summary + ".")
    _report_failures(result, events)
    return result


def _report_failures(result: TagFolderResult, events: Events) -> None:
    if result.failed:
        lines = "\n".join(f"  {f.path}: {f.reason}" for f in result.failed)
        count = len(result.failed)
        events.warning(f"{plural(count, 'image')} {'was' if count == 1 else 'were'} skipped:\n{lines}")
