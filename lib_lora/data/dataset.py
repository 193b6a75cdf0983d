"""The dataset folder: scanning it (:func:`scan_dataset`) and planning buckets and batches
(:func:`assign_buckets` -> :class:`BucketPlan`).

Layout (sd-scripts' DreamBooth style): ``<train_data_dir>/<N>_<class tokens>/image.png`` with an
optional caption ``image.txt`` beside each image; N is how many times each image is seen per epoch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import re
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from lib_lora.common.errors import UserError
from lib_lora.common.fsutil import UnsafeFileError, read_small_file
from lib_lora.common.layout import RESERVED_DIRS, caption_path, iter_image_files, parse_subset_name
from lib_lora.common.text import plural
from lib_lora.data.buckets import BucketChoice, BucketError, BucketManager, BucketSettings, Size
from lib_lora.data.images import probe_image
from lib_lora.events import Events, StopToken

FEW_IMAGES = 5  # fewer usable images than this -> a warning
TINY_SIDE = 256  # images whose shorter side is under this -> a warning (they get upscaled)
_SHOWN = 5  # paths listed in one warning
_BARE_REPEATS = re.compile(r"^(\d+)_?$")  # "10" / "10_": sd-scripts accepts these with empty class tokens


@dataclass(frozen=True)
class Subset:
    """One ``N_name`` folder."""

    name: str  # the folder name, e.g. "10_irene" (the key of ss_dataset_dirs / ss_tag_frequency)
    path: Path
    repeats: int
    class_tokens: str
    image_count: int  # usable images
    is_reg: bool = False  # a regularization folder (from reg_data_dir)


@dataclass(frozen=True)
class ImageItem:
    """One usable image."""

    path: Path
    subset: int  # index into DatasetScan.subsets
    repeats: int
    caption: str  # first line of the caption file, else the class tokens, else ""
    size: Size  # upright (width, height)
    caption_source: str  # "file" | "class tokens" | "none" | "unreadable" (only in a scan that is not strict)


@dataclass
class DatasetScan:
    root: Path
    caption_extension: str
    subsets: list[Subset]
    items: list[ImageItem]
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (image, why it is not used)
    warnings: list[str] = field(default_factory=list)
    # (caption file, why) for caption files that exist but cannot be read as text: training refuses
    # the dataset until they are fixed; only a scan that is not strict returns with any
    unreadable_captions: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return len(self.items)

    @property
    def num_train_images(self) -> int:
        """Training images x repeats, regularization images not counted (sd-scripts'
        ``num_train_images``, ``ss_num_train_images``)."""
        return sum(item.repeats for item in self.items if not self.subsets[item.subset].is_reg)

    @property
    def num_reg_images(self) -> int:
        """Regularization images x their folders' repeats, before balancing (``ss_num_reg_images``)."""
        return sum(s.repeats * s.image_count for s in self.subsets if s.is_reg)

    def dataset_dirs_info(self) -> dict[str, dict[str, int]]:
        """``ss_dataset_dirs``: ``{folder name: {"n_repeats": N, "img_count": images}}``."""
        return {s.name: {"n_repeats": s.repeats, "img_count": s.image_count} for s in self.subsets if not s.is_reg}

    def reg_dataset_dirs_info(self) -> dict[str, dict[str, int]]:
        """``ss_reg_dataset_dirs``: as :meth:`dataset_dirs_info` for the regularization folders."""
        return {s.name: {"n_repeats": s.repeats, "img_count": s.image_count} for s in self.subsets if s.is_reg}

    def is_reg(self, item_index: int) -> bool:
        return self.subsets[self.items[item_index].subset].is_reg

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """``ss_tag_frequency``: per folder name, each ``,``-separated tag of each caption, stripped
        and lower-cased, counted per occurrence (repeats not counted), as sd-scripts does."""
        result: dict[str, dict[str, int]] = {s.name: {} for s in self.subsets}
        for item in self.items:
            counts = result[self.subsets[item.subset].name]
            for tag in item.caption.split(","):
                tag = tag.strip()
                if tag:
                    tag = tag.lower()
                    counts[tag] = counts.get(tag, 0) + 1
        return result

    def summary(self) -> str:
        return (
            f"{plural(self.num_images, 'image')} in {plural(len(self.subsets), 'folder')}, "
            f"{self.num_train_images} with repeats" + (f", {len(self.skipped)} skipped" if self.skipped else "")
        )


def balanced_reg_repeats(num_train_images: int, reg_repeats: Sequence[int]) -> list[int]:
    """Repeats per regularization image (in folder then file order) so that reg samples per epoch
    match the training samples, as sd-scripts' DreamBoothDataset: the first pass takes each image
    with its folder's repeats until the count is reached (later images get 0); further passes add
    1 to each image in turn. Surplus reg images are unused."""
    out = [0] * len(reg_repeats)
    if not reg_repeats:
        return out
    n = 0
    first = True
    while n < num_train_images:
        for i, repeats in enumerate(reg_repeats):
            if first:
                out[i] = repeats
                n += repeats
            else:
                out[i] += 1
                n += 1
            if n >= num_train_images:
                break
        first = False
    return out


def with_regularization(scan: DatasetScan, reg: DatasetScan) -> DatasetScan:
    """``scan`` plus the regularization images of ``reg`` (their folders marked ``is_reg``), each
    with its balanced repeats (:func:`balanced_reg_repeats`); images left at 0 are not used. They
    share the buckets with the training images, so batches mix both (as sd-scripts)."""
    offset = len(scan.subsets)
    subsets = scan.subsets + [dataclasses.replace(s, is_reg=True) for s in reg.subsets]
    repeats = balanced_reg_repeats(scan.num_train_images, [item.repeats for item in reg.items])
    items = list(scan.items) + [
        dataclasses.replace(item, subset=item.subset + offset, repeats=r)
        for item, r in zip(reg.items, repeats)
        if r > 0
    ]
    warnings = list(scan.warnings) + [f"regularization: {w}" for w in reg.warnings]
    if sum(item.repeats for item in reg.items) > scan.num_train_images:
        warnings.append("There are more regularization images than training images x repeats: some are not used.")
    return DatasetScan(scan.root, scan.caption_extension, subsets, items, scan.skipped + reg.skipped, warnings)


def _listing(paths: Sequence[Any], shown: int = _SHOWN) -> str:
    names = [str(p) for p in paths[:shown]]
    more = len(paths) - shown
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def _have(things: Sequence[Any]) -> str:
    return "has" if len(things) == 1 else "have"


def _subset_name(folder_name: str) -> tuple[int, str] | None:
    parsed = parse_subset_name(folder_name)
    if parsed is not None:
        return parsed.repeats, parsed.class_tokens
    bare = _BARE_REPEATS.match(folder_name)
    if bare and int(bare.group(1)) >= 1:
        return int(bare.group(1)), ""
    return None


def _has_images(folder: Path) -> bool:
    try:
        return next(iter_image_files(folder, recursive=False), None) is not None
    except OSError:
        return False


class _UnreadableCaption(Exception):
    """A caption file that exists but cannot be read as text; ``reason`` says why in a few words."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


def _read_caption(image: Path, caption_extension: str) -> str | None:
    """First line of the image's caption file, stripped; None when there is no caption file.
    Raises UnsafeFileError (a FIFO, a device, over 1 MiB: the image is skipped) or _UnreadableCaption."""
    path = caption_path(image, caption_extension)
    try:
        data = read_small_file(path, what="Caption file")
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return None
    except OSError as exc:
        raise _UnreadableCaption(path, f"cannot be read: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _UnreadableCaption(path, f"is not UTF-8 text (invalid byte at position {exc.start})") from exc
    text = text.lstrip("\ufeff")
    # the first line as Python's text mode reads it (\r\n and \r are line ends too)
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n", 1)[0].strip()


def unreadable_captions_message(root: Path, unreadable: Sequence[tuple[Path, str]]) -> UserError:
    """The one refusal naming every caption file that cannot be read (the first few, then a count)."""
    utf8 = all("UTF-8" in why for _, why in unreadable)
    fix = "Re-save it as UTF-8 text" if utf8 else "Fix it"
    if len(unreadable) == 1:
        path, why = unreadable[0]
        return UserError(
            f"Caption file {path} {why}: training refuses to start until it is fixed.",
            f"{fix}, or delete it to train that image with its folder's class tokens; nothing was changed.",
        )
    fix = "Re-save them as UTF-8 text" if utf8 else "Fix them"

    def short(path: Path) -> str:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            return str(path)

    shown = [f"{short(path)} {why}" for path, why in unreadable[:_SHOWN]]
    more = len(unreadable) - len(shown)
    names = "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
    return UserError(
        f"{len(unreadable)} caption files in {root} cannot be read, so training refuses to start: {names}.",
        f"{fix}, or delete them to train those images with their folder's class tokens; nothing was changed.",
    )


def _find_subsets(root: Path, ignored: list[Path] | None = None) -> list[tuple[Path, int, str]]:
    """The ``N_name`` folders of ``root``. A folder with images but no ``N_`` prefix beside real
    training folders is not used (as sd-scripts, which ignores it with a warning) and goes to
    ``ignored``; one with 0 repeats, or a dataset with no training folder at all, is refused."""
    if not root.exists():
        raise UserError(f"Dataset folder {root} does not exist.")
    if not root.is_dir():
        raise UserError(f"Dataset folder {root} is not a folder.")
    subsets: list[tuple[Path, int, str]] = []
    unprefixed: list[Path] = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name.startswith(".") or entry.name in RESERVED_DIRS:
            continue
        parsed = _subset_name(entry.name)
        if parsed is not None:
            subsets.append((entry, parsed[0], parsed[1]))
        elif _has_images(entry):
            unprefixed.append(entry)
    root_images = _has_images(root)
    if not subsets and root_images:
        parsed = _subset_name(root.name)
        if parsed is not None:
            raise UserError(
                f"{root} is a training folder itself ({parsed[0]} repeats of '{parsed[1]}'), not the dataset folder.",
                f"Point at its parent folder instead: {root.parent}",
            )
        raise UserError(
            f"{root} holds images directly, but training images must be in subfolders named N_name.",
            f"Move them into a subfolder such as {root / ('10_' + root.name)} (N = repeats per epoch) "
            "and point at the parent folder.",
        )
    zero_repeats = [p for p in unprefixed if re.match(r"0+_", p.name)]
    if subsets and unprefixed and not zero_repeats and ignored is not None:
        ignored.extend(unprefixed)
        unprefixed = []
    if unprefixed:
        first = (zero_repeats or unprefixed)[0]
        unprefixed = [first] + [p for p in unprefixed if p != first]
        others = f" (also: {_listing([p.name for p in unprefixed[1:]])})" if len(unprefixed) > 1 else ""
        zero = re.match(r"0+_(.*)", first.name)
        if zero:
            raise UserError(
                f"Folder '{first.name}' in {root} repeats its images 0 times per epoch{others}: the number "
                f"before the underscore must be at least 1, e.g. '10_{zero.group(1) or 'name'}'.",
                "Rename it, or move it out of the dataset folder.",
            )
        raise UserError(
            f"Folder '{first.name}' in {root} is not named N_name{others}: each training folder's name must "
            f"start with how many times its images are repeated per epoch and an underscore, e.g. '10_{first.name}'.",
            "Rename it, or move it out of the dataset folder.",
        )
    if not subsets:
        nested = [
            sub
            for entry in sorted(root.iterdir())
            if entry.is_dir() and not entry.name.startswith(".")
            for sub in sorted(entry.iterdir())
            if sub.is_dir() and _subset_name(sub.name) is not None
        ]
        if nested:
            raise UserError(
                f"{root} has no N_name training folders, but {nested[0].parent} has.",
                f"Point at {nested[0].parent} instead.",
            )
        raise UserError(
            f"Dataset folder {root} contains no training folders: put the images in subfolders named N_name, "
            "e.g. '10_mychar' (N = how many times each image is repeated per epoch)."
        )
    return subsets


def scan_dataset(
    train_data_dir: str | os.PathLike,
    caption_extension: str = ".txt",
    events: Events | None = None,
    stop: StopToken | None = None,
    workers: int | None = None,
    strict: bool = True,
) -> DatasetScan:
    """Find the subsets, images and captions under ``train_data_dir`` and check every image opens.

    Raises :class:`UserError` for a folder that is not ``N_name`` when there is no training folder
    (beside training folders it is not used, with a warning), a ``0_name`` folder, a dataset with no subsets, a
    path that is a subset itself, caption files that are not UTF-8 or cannot be read (all of them named, before
    the image check), or when no image is usable. With ``strict`` False (a view of the dataset, not a run) such
    captions do not raise: they are listed in ``unreadable_captions`` and their images kept, captioned "".
    Unreadable images are listed in ``skipped`` (and reported through ``events``), not fatal.
    Nothing is written. Stops with :class:`lib_lora.events.StopRequested` when ``stop`` fires.
    """
    events = events or Events()
    root = Path(train_data_dir)
    if not caption_extension.startswith("."):
        caption_extension = "." + caption_extension
    ignored: list[Path] = []
    found = _find_subsets(root, ignored)
    warnings: list[str] = []
    if ignored:
        names = _listing([p.name for p in ignored])
        warnings.append(
            f"{plural(len(ignored), 'folder')} in {root} {'is' if len(ignored) == 1 else 'are'} not used for training, "
            f"the name does not start with the repeats and an underscore (e.g. '10_{ignored[0].name}'): {names}"
        )

    if _has_images(root):
        warnings.append(f"images directly in {root} are not used: only its N_name subfolders are training data.")

    # captions first: a bad caption file is a hard error, found before the slow image check; a caption
    # that is no regular file or is too large to be one is reported and its image skipped
    images: list[tuple[int, Path, str | None]] = []
    skipped: list[tuple[Path, str]] = []
    unreadable: list[tuple[Path, str]] = []
    unreadable_images: set[Path] = set()
    for index, (folder, _repeats, _tokens) in enumerate(found):
        for image in iter_image_files(folder, recursive=False):
            try:
                images.append((index, image, _read_caption(image, caption_extension)))
            except UnsafeFileError as exc:
                skipped.append((image, exc.message.rstrip(".")))
            except _UnreadableCaption as exc:
                unreadable.append((exc.path, exc.reason))
                unreadable_images.add(image)
                images.append((index, image, ""))
    if unreadable and strict:
        raise unreadable_captions_message(root, unreadable)

    probes = probe_images([path for _, path, _ in images], events, stop, workers)

    items: list[ImageItem] = []
    missing_caption: list[Path] = []
    empty_caption: list[Path] = []
    tiny: list[Path] = []
    for (index, path, caption), probe in zip(images, probes):
        if isinstance(probe, str):
            skipped.append((path, probe))
            continue
        folder, repeats, tokens = found[index]
        if path in unreadable_images:
            source = "unreadable"
        elif caption:
            source = "file"
        else:
            missing_caption.append(path)
            if tokens:
                caption, source = tokens, "class tokens"
            else:
                caption, source = "", "none"
                empty_caption.append(path)
        if min(probe) < TINY_SIDE:
            tiny.append(path)
        items.append(ImageItem(path, index, repeats, caption, probe, source))

    counts = [0] * len(found)
    for item in items:
        counts[item.subset] += 1
    subsets = [
        Subset(folder.name, folder, repeats, tokens, counts[i]) for i, (folder, repeats, tokens) in enumerate(found)
    ]

    if skipped:
        warnings.append(
            f"{plural(len(skipped), 'image')} cannot be read and {'is' if len(skipped) == 1 else 'are'} skipped: "
            + _listing([f"{path.name} ({why})" for path, why in skipped])
        )
    if not items:
        if skipped:
            raise UserError(
                f"No usable images in {root}: {'the' if len(skipped) == 1 else 'all'} "
                f"{plural(len(skipped), 'image')} {'is' if len(skipped) == 1 else 'are'} unreadable or corrupt "
                f"(first: {skipped[0][0]}: {skipped[0][1]})."
            )
        raise UserError(
            f"No images in the training folders of {root} ({_listing([s.name for s in subsets])}); "
            "supported types: .png .jpg .jpeg .webp .bmp."
        )
    for subset in subsets:
        if subset.image_count == 0:
            warnings.append(f"training folder '{subset.name}' has no usable images.")
    if missing_caption:
        warnings.append(
            f"{plural(len(missing_caption), 'image')} {_have(missing_caption)} no caption file ({caption_extension}) "
            "or an empty one; "
            f"their folder's class tokens are used instead: {_listing([p.name for p in missing_caption])}"
        )
    if empty_caption:
        warnings.append(
            f"{plural(len(empty_caption), 'image')} {_have(empty_caption)} neither a caption nor class tokens and "
            "train with an empty "
            f"caption: {_listing([p.name for p in empty_caption])}"
        )
    if len(items) < FEW_IMAGES:
        warnings.append(f"only {plural(len(items), 'usable image')}: a LoRA usually needs at least 10-20.")
    if tiny:
        warnings.append(
            f"{plural(len(tiny), 'image')} {'is' if len(tiny) == 1 else 'are'} smaller than {TINY_SIDE} px on the shorter side and will be upscaled "
            f"(blurry training data): {_listing([p.name for p in tiny])}"
        )
    stems: dict[Path, list[Path]] = {}
    for item in items:
        stems.setdefault(item.path.with_suffix(""), []).append(item.path)
    clashes = [paths for paths in stems.values() if len(paths) > 1]
    if clashes:
        warnings.append(
            "images that differ only in extension share one caption file: "
            + _listing([" / ".join(p.name for p in paths) for paths in clashes])
        )
    for text in warnings:
        events.warning(text)
    return DatasetScan(root, caption_extension, subsets, items, skipped, warnings, unreadable)


def _probe_one(path: Path) -> Size | str:
    try:
        return probe_image(path).size
    except Exception as exc:  # any decoder failure means "unusable", never a crash
        reason = str(exc) or type(exc).__name__
        return reason.splitlines()[0][:200]


def probe_images(
    paths: Sequence[Path], events: Events | None = None, stop: StopToken | None = None, workers: int | None = None
) -> list[Size | str]:
    """Check every image with :func:`probe_image` (threads: PIL decodes without the GIL); per image its
    upright size, or the reason it cannot be used (the one image check of the scan and the editor)."""
    events = events or Events()
    total = len(paths)
    results: list[Size | str] = [""] * total
    if not total:
        return results
    workers = workers or min(8, os.cpu_count() or 1)
    done = 0
    events.progress("checking images", 0, total)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: dict[Future, int] = {}
        next_index = 0
        while next_index < total or pending:
            while next_index < total and len(pending) < workers * 4:
                pending[pool.submit(_probe_one, paths[next_index])] = next_index
                next_index += 1
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                results[pending.pop(future)] = future.result()
                done += 1
            events.progress("checking images", done, total)
            if stop is not None and stop.requested:
                for future in pending:
                    future.cancel()
                stop.raise_if_requested()
    return results


# ----------------------------------------------------------------------------------------------
# buckets and batches


class Sample(NamedTuple):
    """One image in one epoch: ``item`` indexes the plan's images, ``repeat`` counts 0..repeats-1."""

    item: int
    repeat: int


@dataclass(frozen=True)
class BucketRow:
    """One line of the bucket table."""

    index: int
    resolution: Size
    images: int  # distinct images
    count: int  # images x repeats
    batches: int


@dataclass
class BucketPlan:
    """Every image's bucket, the counts per bucket and each epoch's batches.

    ``labels`` name the images (paths, or ``WxH`` for bare sizes) in messages.
    """

    settings: BucketSettings
    batch_size: int
    sizes: list[Size]
    repeats: list[int]
    labels: list[str]
    choices: list[BucketChoice]
    buckets: list[Size]  # the buckets in use, sorted by (width, height) as sd-scripts
    item_bucket: list[int]  # per image: index into ``buckets``
    predefined: list[Size]  # sd-scripts' bucket list ([] with bucket_no_upscale)
    scan: DatasetScan | None = None

    def items_in(self, bucket: int) -> list[int]:
        return [i for i, b in enumerate(self.item_bucket) if b == bucket]

    def rows(self) -> list[BucketRow]:
        rows = []
        for index, resolution in enumerate(self.buckets):
            items = self.items_in(index)
            count = sum(self.repeats[i] for i in items)
            rows.append(BucketRow(index, resolution, len(items), count, math.ceil(count / self.batch_size)))
        return rows

    @property
    def num_samples(self) -> int:
        """Images x repeats: samples per epoch."""
        return sum(self.repeats)

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch: the sum over buckets of ceil(images x repeats / batch_size)
        (``ss_num_batches_per_epoch``; optimizer steps before gradient accumulation)."""
        return sum(row.batches for row in self.rows())

    def optimizer_steps_per_epoch(self, gradient_accumulation_steps: int = 1) -> int:
        return math.ceil(self.steps_per_epoch / max(1, gradient_accumulation_steps))

    @property
    def mean_ar_error(self) -> float:
        """Mean absolute aspect-ratio error over images, without repeats."""
        if not self.choices:
            return 0.0
        return sum(abs(c.ar_error) for c in self.choices) / len(self.choices)

    def bucket_info(self) -> dict[str, Any] | None:
        """``ss_bucket_info``: ``{"buckets": {"0": {"resolution": [w, h], "count": n}}, "mean_img_ar_error": x}``;
        counts include repeats (as sd-scripts). None without ``enable_bucket`` (sd-scripts writes null)."""
        if not self.settings.enable_bucket:
            return None
        buckets = {
            str(row.index): {"resolution": list(row.resolution), "count": row.count} for row in self.rows() if row.count
        }
        return {"buckets": buckets, "mean_img_ar_error": self.mean_ar_error}

    def log_lines(self) -> list[str]:
        """The bucket lines sd-scripts logs (counts include repeats)."""
        lines = [f"bucket {row.index}: resolution {row.resolution}, count: {row.count}" for row in self.rows()]
        if self.settings.enable_bucket:
            lines.append(f"mean ar error (without repeats): {self.mean_ar_error}")
        return lines

    def epoch_batches(self, seed: int, epoch: int) -> list[list[Sample]]:
        """The batches of one epoch, in training order.

        Every image enters its bucket once per repeat; samples are shuffled inside each bucket,
        cut into batches of ``batch_size`` (the last one of a bucket may be shorter), and the
        batches of all buckets shuffled together. A batch never mixes buckets. The result
        depends only on (``seed``, ``epoch``) and the plan, so any epoch can be rebuilt on resume.
        """
        rng = random.Random(f"lib_lora/epoch_batches/{seed}/{epoch}")
        batches: list[list[Sample]] = []
        for index in range(len(self.buckets)):
            samples = [Sample(i, r) for i in self.items_in(index) for r in range(self.repeats[i])]
            rng.shuffle(samples)
            batches += [samples[k : k + self.batch_size] for k in range(0, len(samples), self.batch_size)]
        rng.shuffle(batches)
        return batches


def plan_buckets(
    sizes: Sequence[Size],
    repeats: Sequence[int],
    manager: BucketManager,
    batch_size: int,
    labels: Sequence[str] | None = None,
    scan: DatasetScan | None = None,
) -> BucketPlan:
    """Bucket every image of ``sizes`` (each seen ``repeats[i]`` times per epoch)."""
    if batch_size < 1:
        raise UserError(f"batch size {batch_size} is invalid: it must be 1 or more.")
    if len(sizes) != len(repeats):
        raise ValueError("sizes and repeats differ in length")
    labels = list(labels) if labels is not None else [f"{w}x{h}" for w, h in sizes]
    choices = []
    for size, label in zip(sizes, labels):
        try:
            choices.append(manager.select(tuple(size)))
        except BucketError as exc:
            raise UserError(f"{label}: {exc.message}", "Remove the image or turn bucket_no_upscale off.") from exc
    buckets = sorted({c.bucket for c in choices})
    position = {b: i for i, b in enumerate(buckets)}
    return BucketPlan(
        settings=manager.settings,
        batch_size=batch_size,
        sizes=[tuple(s) for s in sizes],
        repeats=list(repeats),
        labels=labels,
        choices=choices,
        buckets=buckets,
        item_bucket=[position[c.bucket] for c in choices],
        predefined=list(manager.predefined),
        scan=scan,
    )


def assign_buckets(scan: DatasetScan, manager: BucketManager, batch_size: int) -> BucketPlan:
    """Bucket the scanned images; the plan's image ``i`` is ``scan.items[i]``."""
    return plan_buckets(
        [item.size for item in scan.items],
        [item.repeats for item in scan.items],
        manager,
        batch_size,
        labels=[str(item.path) for item in scan.items],
        scan=scan,
    )


def split_validation(scan: DatasetScan, validation_split: float, seed: int) -> tuple[DatasetScan, DatasetScan | None]:
    """Hold ``validation_split`` of each folder's images out of training (sd-scripts' ``validation_split``).

    Each folder's images are shuffled with ``random.Random(seed)``; training keeps the first
    ``ceil(n x (1 - validation_split))`` (sd-scripts' count), the rest are held out — never trained on
    (sd-scripts rounds the held-out count separately, which can share an image when both round up).
    A folder of one image stays in training. Returns (training scan, held-out scan or None).
    """
    if not validation_split:
        return scan, None
    train_items: list[ImageItem] = []
    held_items: list[ImageItem] = []
    for index in range(len(scan.subsets)):
        items = [item for item in scan.items if item.subset == index]
        random.Random(seed).shuffle(items)
        keep = max(1, math.ceil(len(items) * (1 - validation_split))) if items else 0
        train_items += items[:keep]
        held_items += items[keep:]
    if not held_items:
        return scan, None

    def part(items: list[ImageItem]) -> DatasetScan:
        counts = [sum(1 for item in items if item.subset == i) for i in range(len(scan.subsets))]
        subsets = [dataclasses.replace(s, image_count=n) for s, n in zip(scan.subsets, counts)]
        return dataclasses.replace(scan, subsets=subsets, items=items)

    return part(train_items), part(held_items)
