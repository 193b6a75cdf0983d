"""What the Dataset sub-tab shows: the folders, their repeats and counts, warnings, the bucket table.

Thin functions over ``lib_lora.data`` for a UI: they return plain dataclasses and report problems
as text instead of raising, so a live view can always show something. The (slow-ish) image scan is
cached per folder and reused until a training folder changes, so the bucket table can follow every
setting change without reading the images again.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from lib_lora.common.errors import UserError
from lib_lora.common.layout import RESERVED_DIRS, caption_path, iter_image_files, parse_subset_name, too_many_repeats
from lib_lora.common.text import plural
from lib_lora.config import TrainConfig, check_rules
from lib_lora.data.buckets import BucketManager, BucketSettings
from lib_lora.data.dataset import (
    DatasetScan,
    assign_buckets,
    scan_dataset,
    unreadable_captions_message,
    with_regularization,
)
from lib_lora.data.demo import DemoResult, write_demo_dataset
from lib_lora.events import Events


@dataclass(frozen=True)
class FolderRow:
    """One subfolder of the dataset folder."""

    name: str
    repeats: int | None  # None: not an N_name folder (not used for training)
    class_tokens: str
    images: int
    captioned: int
    note: str = ""


@dataclass
class DatasetOverview:
    root: Path
    folders: list[FolderRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None  # why the folder cannot be trained on as it is
    scan: DatasetScan | None = None

    @property
    def images(self) -> int:
        return sum(f.images for f in self.folders if f.repeats)

    @property
    def images_with_repeats(self) -> int:
        return sum(f.images * f.repeats for f in self.folders if f.repeats)


@dataclass
class BucketSummary:
    rows: list[tuple[str, int, int, int]]  # (resolution "WxH", images, images x repeats, batches)
    steps_per_epoch: int  # optimizer steps
    epochs: int
    total_steps: int
    warnings: list[str] = field(default_factory=list)
    reg_samples: int = 0  # regularization images per epoch (balanced to the training samples)


_SCANS: dict[tuple[str, str], tuple[tuple, DatasetScan]] = {}
_SCANS_LOCK = threading.Lock()


def _signature(root: Path) -> tuple:
    """Changes when a training folder gains, loses or renames an image (folder mtimes)."""
    parts = []
    try:
        parts.append((root.name, root.stat().st_mtime_ns))
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.is_dir():
                parts.append((entry.name, entry.stat().st_mtime_ns))
    except OSError:
        return ()
    return tuple(parts)


def cached_scan(
    root: str | os.PathLike, caption_extension: str = ".txt", events: Events | None = None, strict: bool = True
) -> DatasetScan:
    """``scan_dataset`` reused while the folders are unchanged (raises UserError as it does; with
    ``strict`` False, unreadable caption files are listed in the scan instead, as ``scan_dataset``)."""
    path = Path(root).expanduser()
    key = (str(path.resolve()), caption_extension)
    signature = _signature(path)
    with _SCANS_LOCK:
        hit = _SCANS.get(key)
    if hit and signature and hit[0] == signature:
        scan = hit[1]
    else:
        scan = scan_dataset(path, caption_extension, events=events, strict=False)
        with _SCANS_LOCK:
            _SCANS[key] = (signature, scan)
    if strict and scan.unreadable_captions:
        raise unreadable_captions_message(scan.root, scan.unreadable_captions)
    return scan


def scan_or_none(root: str | os.PathLike, caption_extension: str = ".txt") -> DatasetScan | None:
    """The (cached) scan, or None when the folder is not a dataset (no message). Unreadable caption
    files do not hide it: the overview names them, and the step counts stay visible."""
    if not str(root or "").strip():
        return None
    try:
        return cached_scan(root, caption_extension, strict=False)
    except UserError:
        return None


def forget_scan(root: str | os.PathLike) -> None:
    """Drop the cached scan of ``root`` (after captions change, for example)."""
    wanted = str(Path(root).expanduser().resolve())
    with _SCANS_LOCK:
        for key in [k for k in _SCANS if k[0] == wanted]:
            del _SCANS[key]


def _folder_row(
    entry: Path,
    caption_extension: str,
    unreadable: frozenset[Path] = frozenset(),
    skipped: frozenset[Path] = frozenset(),
) -> FolderRow:
    images = list(iter_image_files(entry, recursive=False))
    captioned = bad = 0
    for image in images:
        cap = caption_path(image, caption_extension)
        if cap in unreadable:  # a caption training cannot read is no caption
            bad += 1
            continue
        with contextlib.suppress(OSError):
            captioned += cap.stat().st_size > 0
    parsed = parse_subset_name(entry.name)
    if parsed is None:
        note = (
            f"not used: the name must start with the repeats and an underscore, e.g. 10_{entry.name}"
            if images
            else "not a training folder (no N_ prefix)"
        )
        return FolderRow(entry.name, None, "", len(images), captioned, note)
    note = "no images" if not images else ("no captions yet" if not captioned and not bad else "")
    if bad:
        note = f"{plural(bad, 'caption file')} cannot be read"
    unused = sum(image in skipped for image in images)
    if unused:  # the images column counts files; say how many training skips (the warning below says why)
        note = "; ".join(filter(None, (note, f"{plural(unused, 'image')} skipped")))
    return FolderRow(entry.name, parsed.repeats, parsed.class_tokens, len(images), captioned, note)


def overview(root: str | os.PathLike, caption_extension: str = ".txt") -> DatasetOverview:
    """The dataset folder as the Dataset sub-tab lists it; never raises for user problems."""
    text = str(root or "").strip()
    if not text:
        return DatasetOverview(Path("."), error="No dataset folder chosen: enter a folder path (or create one).")
    path = Path(os.path.abspath(Path(text).expanduser()))  # a relative path: from the working folder, shown absolute
    result = DatasetOverview(path)
    if not path.exists():
        result.error = (
            f"Dataset folder {path} does not exist: create it with the buttons above "
            "(Create training folder, or Create demo dataset in this folder), or check the path."
        )
        return result
    if not path.is_dir():
        result.error = f"Dataset folder {path} is a file, not a folder."
        return result
    try:
        entries = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        result.error = f"Dataset folder {path} cannot be read: {exc.strerror or exc}."
        return result
    unreadable: frozenset[Path] = frozenset()
    skipped: frozenset[Path] = frozenset()
    try:
        result.scan = cached_scan(path, caption_extension, strict=False)
    except UserError as exc:
        result.error = str(exc)
    else:
        result.warnings = list(result.scan.warnings)
        skipped = frozenset(p for p, _ in result.scan.skipped)
        if result.scan.unreadable_captions:  # training refuses (cached_scan's strict error): say so, show the rest
            result.error = str(unreadable_captions_message(result.scan.root, result.scan.unreadable_captions))
            unreadable = frozenset(p for p, _ in result.scan.unreadable_captions)
    result.folders = [
        _folder_row(e, caption_extension, unreadable, skipped) for e in entries if e.name not in RESERVED_DIRS
    ]
    return result


def bucket_summary(scan: DatasetScan, cfg: TrainConfig, family: str | None = None) -> BucketSummary:
    """The bucket table and step counts for ``cfg``'s bucket settings and batch size.

    Raises UserError (naming the setting) for values that cannot work."""
    from lib_lora.engine.loop import Schedule

    settings = BucketSettings(
        resolution=cfg.resolution_wh, enable_bucket=cfg.enable_bucket, min_bucket_reso=cfg.min_bucket_reso,
        max_bucket_reso=cfg.max_bucket_reso, bucket_reso_steps=cfg.bucket_reso_steps,
        bucket_no_upscale=cfg.bucket_no_upscale,
    )  # fmt: skip
    warnings = settings.validate(family if family in ("sd1", "sdxl") else None)
    reg_samples = 0
    if cfg.reg_data_dir:
        try:
            scan = with_regularization(scan, cached_scan(cfg.reg_data_dir, cfg.caption_extension))
        except UserError as exc:
            warnings.append(f"Regularization folder: {exc}")
        else:
            reg_samples = sum(i.repeats for i in scan.items if scan.subsets[i.subset].is_reg)
    plan = assign_buckets(scan, BucketManager(settings), cfg.train_batch_size)
    schedule = Schedule.plan(
        plan.steps_per_epoch, cfg.gradient_accumulation_steps, cfg.max_train_epochs, cfg.max_train_steps
    )
    rows = [(f"{r.resolution[0]}x{r.resolution[1]}", r.images, r.count, r.batches) for r in plan.rows() if r.images]
    return BucketSummary(
        rows, schedule.steps_per_epoch, schedule.num_epochs, schedule.total_steps, warnings, reg_samples
    )


def check_config(cfg: TrainConfig) -> None:
    """Every rule of the settings (UserError naming the first broken one)."""
    check_rules(cfg)


def create_dataset(root: str | os.PathLike, name: str, repeats: int) -> Path:
    """Create ``root/<repeats>_<name>`` (and ``root``); returns the new training folder.

    UserError for an empty or unusable name, repeats below 1 or above what training accepts, or a root that is a file."""
    text = str(root or "").strip()
    if not text:
        raise UserError("No dataset folder given: enter the folder that will hold the N_name training folders.")
    name = (name or "").strip()
    if not name or any(c in name for c in '/\\:*?"<>|') or name.startswith("."):
        raise UserError(f"Training folder name {name!r} is not valid: give a plain name such as the character's name.")
    try:
        value = float(repeats)
    except (TypeError, ValueError):
        value = 0.5
    if not value.is_integer() or value < 1:
        raise UserError(f"Repeats must be a whole number of at least 1 (got {repeats!r}).")
    count = int(value)
    problem = too_many_repeats(count)  # training refuses an epoch that size (even one image makes it)
    if problem:
        raise UserError(problem)
    path = Path(os.path.abspath(Path(text).expanduser()))  # relative: from the working folder
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a dataset folder.")
    if parse_subset_name(path.name) is not None and path.exists() and any(iter_image_files(path, recursive=False)):
        raise UserError(
            f"{path} is itself a training folder ({path.name}); choose its parent as the dataset folder instead."
        )
    folder = path / f"{count}_{name}"
    same = [p for p in path.glob(f"*_{name}") if p.is_dir() and parse_subset_name(p.name)] if path.exists() else []
    if folder.exists() or same:
        raise UserError(f"A training folder for {name!r} already exists in {path}: {(same or [folder])[0].name}.")
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"Cannot create {folder}: {exc.strerror or exc}.") from None
    return folder


def make_demo_dataset(root: str | os.PathLike, captions: str = "none") -> DemoResult:
    """The generated demo dataset (see ``lib_lora.data.demo``) written into ``root``."""
    if not str(root or "").strip():
        raise UserError("No folder given for the demo dataset: enter a new (or empty) folder path.")
    return write_demo_dataset(root, captions)
