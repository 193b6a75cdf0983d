"""Find duplicate images in a dataset and move the extra copies to ``_duplicates/`` (never delete).

Layers (reference/booru-and-dedupe.md section 6):

1. identical files (md5);
2. identical decoded pixels (a PNG saved from a JPEG, the same image re-saved);
3. a 64-bit DCT perceptual hash computed as Hydrus does, compared by Hamming distance with a
   multi-index search (no all-pairs loop);
4. a local-difference check before anything is dropped automatically: at a distance of at most
   ``auto_distance`` (default 2) a pair is a duplicate only if the aspect ratios agree, both or
   neither use transparency, and no part of the picture differs (colour tiles). Everything else
   up to ``distance`` (default 4; Hydrus: 0 exact, 2 very similar, 4 similar, 8 speculative) is a
   pair for review: recolours, crops and small edits land there, never in the bin.

In each group the copy to keep is chosen with Hydrus-like scores: higher resolution, then the
larger file of the same format; a PNG that is pixel-identical to a JPEG loses to the JPEG.

Entry points: :func:`scan` (find, change nothing), :func:`apply` (move, write the report),
:func:`dedupe` (both), and for a review UI :func:`move_to_duplicates`, :func:`restore_from_duplicates`
and :func:`keep_both`.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

from lib_lora.common.errors import UserError
from lib_lora.common.fsutil import atomic_write_text, replace_with_retry
from lib_lora.common.layout import IMAGE_EXTENSIONS, iter_image_files
from lib_lora.common.text import plural
from lib_lora.events import Events, StopToken

DUPLICATES_DIR = "_duplicates"
DECISIONS_FILE = "decisions.json"
BLANK_HASH = 0x8000000000000000  # only the DC bit: an image without structure
BLANK_TOLERANCE = 4
DEFAULT_DISTANCE = 4
AUTO_DISTANCE = 2
MAX_DISTANCE = 16  # Hydrus: "not much useful beyond 8", 14 is about garbage
SIDECAR_SUFFIXES = (".txt", ".caption", ".json", ".npz")

# local check (layer 4): both pictures at the same small size (32-128 px, set by the smaller image),
# slightly blurred, compared in 8x8-pixel tiles; resizing and re-encoding stay under the threshold,
# edits, recolours and crops do not
_TILE = 8
_BLUR_AT_64 = 1.5  # Gaussian sigma at 64 px, scaled with the size
MAX_ASPECT_DIFFERENCE = 0.02  # relative


def max_tile_difference(size: int) -> float:
    """Allowed mean absolute RGB difference (0-255) in the worst tile: 7 at 128 px, 10 at 32 px
    (small pictures carry more resampling and JPEG noise per tile)."""
    return 7.0 + 3.0 * (128 - size) / 96


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _dct_matrix(n: int = 32) -> np.ndarray:
    """Orthonormal DCT-II matrix: ``C @ x`` is the DCT of column vector x."""
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    matrix = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * x + 1) * k / (2 * n))
    matrix[0, :] = np.sqrt(1.0 / n)
    return matrix


_DCT8 = _dct_matrix(32)[:8]  # only the 8 lowest frequencies are kept


# ---------------------------------------------------------------------------------------------
# perceptual hash
def _grey_for_hash(image: Image.Image) -> tuple[Image.Image, bool]:
    """The greyscale picture the hash is taken from, and whether transparency is used.

    RGBA: shrink to at most 256x256 (area), grey, composited on white through alpha; else grey.
    """
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        return image.convert("L"), False
    rgba = image.convert("RGBA")
    if rgba.width > 256 or rgba.height > 256:
        scale = 256 / max(rgba.width, rgba.height)
        rgba = rgba.resize((max(1, round(rgba.width * scale)), max(1, round(rgba.height * scale))), Image.BOX)
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    grey = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float32)
    used = bool(alpha.min() < 1.0)
    composited = grey * alpha + 255.0 * (1.0 - alpha)
    return Image.fromarray(np.clip(composited + 0.5, 0, 255).astype(np.uint8), "L"), used


def phash_grey(grey: Image.Image) -> int:
    """The 64-bit DCT hash of a greyscale picture (Hydrus' procedure).

    Resize to 32x32 (area), 2-D DCT, keep the top-left 8x8, take the median of those 64 values
    without the DC term, bit = value > median, row by row, first bit most significant.
    """
    small = np.asarray(grey.resize((32, 32), Image.BOX), dtype=np.float64)
    # rounding removes floating-point noise: a flat picture has exactly zero AC terms (a blank hash)
    coefficients = np.round((_DCT8 @ small @ _DCT8.T).ravel(), 6)
    median = np.median(coefficients[1:])
    bits = coefficients > median
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def phash_image(image: Image.Image) -> int:
    """The perceptual hash of a PIL image."""
    grey, _ = _grey_for_hash(image)
    return phash_grey(grey)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def is_blank_hash(value: int) -> bool:
    """Hashes within 4 bits of ``0x8000000000000000`` carry no structure (flat images)."""
    return hamming(value, BLANK_HASH) <= BLANK_TOLERANCE


def popcount64(values: np.ndarray) -> np.ndarray:
    """Bits set in each uint64."""
    values = np.ascontiguousarray(values, dtype=np.uint64)
    return _POPCOUNT[values.view(np.uint8).reshape(-1, 8)].sum(axis=1, dtype=np.int32)


# ---------------------------------------------------------------------------------------------
# pair search
def _chunk_bounds(chunks: int) -> list[tuple[int, int]]:
    """Split 64 bits into ``chunks`` nearly equal (shift, width) pieces."""
    widths = [64 // chunks + (1 if i < 64 % chunks else 0) for i in range(chunks)]
    bounds, shift = [], 0
    for width in widths:
        bounds.append((shift, width))
        shift += width
    return bounds


def _flip_masks(width: int, radius: int) -> list[int]:
    """Every ``width``-bit mask with at most ``radius`` bits set (0 first)."""
    masks = [0]
    for r in range(1, radius + 1):
        masks += [sum(1 << b for b in bits) for bits in itertools.combinations(range(width), r)]
    return masks


def _search_plan(n: int, max_distance: int) -> tuple[int, int]:
    """(chunks, radius per chunk) for the multi-index search: ``chunks * (radius + 1) > max_distance``
    guarantees that a pair within ``max_distance`` is within ``radius`` on some chunk. Picks the
    cheapest by an estimate of probes (n * chunks * masks) plus candidates (pairs * chunks * masks / 2^width)."""
    best: tuple[float, int, int] | None = None
    for radius in range(3):
        chunks = min(64, -(-(max_distance + 1) // (radius + 1)))
        width = 64 // chunks
        if radius > width:
            continue
        masks = sum(math.comb(width, r) for r in range(radius + 1))
        cost = n * chunks * masks + (n * n / 2) * chunks * masks / 2.0**width
        if best is None or cost < best[0]:
            best = (cost, chunks, radius)
    assert best is not None
    return best[1], best[2]


def find_pairs(
    hashes: Sequence[int] | np.ndarray, max_distance: int, plan: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with ``hamming(hashes[i], hashes[j]) <= max_distance``.

    Multi-index hashing: the 64 bits are cut into chunks; two hashes within ``max_distance`` bits
    are within a small radius on at least one chunk (pigeonhole), so each hash is looked up only
    among the hashes whose chunk value is that close (a sorted index per chunk, probed with every
    flip mask of the radius) instead of being compared with every other hash. Returns
    ``(i, j, distance)`` arrays sorted by distance, then i, then j. ``plan`` = (chunks, radius)
    overrides the automatic choice (it must satisfy ``chunks * (radius + 1) > max_distance``).
    """
    h = np.asarray(hashes, dtype=np.uint64)
    n = len(h)
    empty = np.zeros(0, dtype=np.int64)
    if n < 2 or max_distance < 0:
        return empty, empty, empty
    chunks, radius = plan or _search_plan(n, max_distance)
    if chunks * (radius + 1) <= max_distance:
        raise ValueError(f"plan {plan} cannot find every pair within {max_distance}")
    codes: list[np.ndarray] = []
    everyone = np.arange(n, dtype=np.int64)
    for shift, width in _chunk_bounds(chunks):
        keys = ((h >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        for mask in _flip_masks(width, radius):
            probe = keys ^ mask
            lo = np.searchsorted(sorted_keys, probe, side="left")
            counts = np.searchsorted(sorted_keys, probe, side="right") - lo
            total = int(counts.sum())
            if total == 0:
                continue
            first = np.repeat(everyone, counts)
            starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
            second = order[starts + np.arange(total)]
            keep = first < second
            codes.append(first[keep] * n + second[keep])
    if not codes:
        return empty, empty, empty
    unique = np.unique(np.concatenate(codes))
    i, j = unique // n, unique % n
    distance = popcount64(h[i] ^ h[j]).astype(np.int64)
    keep = distance <= max_distance
    i, j, distance = i[keep], j[keep], distance[keep]
    order = np.lexsort((j, i, distance))
    return i[order], j[order], distance[order]


def naive_pairs(hashes: Sequence[int] | np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same answer as :func:`find_pairs` by comparing every pair (a baseline for tests/bench)."""
    h = np.asarray(hashes, dtype=np.uint64)
    firsts, seconds, distances = [], [], []
    for i in range(len(h) - 1):
        d = popcount64(h[i] ^ h[i + 1 :])
        hit = np.nonzero(d <= max_distance)[0]
        if hit.size:
            firsts.append(np.full(hit.size, i, dtype=np.int64))
            seconds.append(hit.astype(np.int64) + i + 1)
            distances.append(d[hit].astype(np.int64))
    if not firsts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    i, j, d = np.concatenate(firsts), np.concatenate(seconds), np.concatenate(distances)
    order = np.lexsort((j, i, d))
    return i[order], j[order], d[order]


# ---------------------------------------------------------------------------------------------
# data
@dataclass(frozen=True)
class DedupeOptions:
    distance: int = DEFAULT_DISTANCE  # pairs up to this distance are found (review queue)
    auto_distance: int = AUTO_DISTANCE  # at or below: duplicates when the local check agrees
    dry_run: bool = False
    workers: int = 0  # threads for decoding; 0 = up to 4, one per core

    def validate(self) -> None:
        if not 0 <= self.distance <= MAX_DISTANCE:
            raise UserError(
                f"--distance must be between 0 and {MAX_DISTANCE}, not {self.distance} "
                "(Hydrus: 0 exact, 2 very similar, 4 similar, 8 speculative)."
            )
        if not 0 <= self.auto_distance <= self.distance:
            raise UserError(
                f"--auto-distance must be between 0 and --distance ({self.distance}), not {self.auto_distance}."
            )


@dataclass
class ImageInfo:
    path: Path
    rel: str  # relative to the scanned folder, with forward slashes
    size: int  # bytes
    width: int
    height: int
    format: str  # PIL's name: PNG, JPEG, WEBP...
    md5: str
    phash: int | None  # None for a blank (structureless) image
    alpha: bool  # transparency actually used

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.rel,
            "width": self.width,
            "height": self.height,
            "bytes": self.size,
            "format": self.format,
            "md5": self.md5,
            "phash": f"{self.phash:016x}" if self.phash is not None else None,
        }


@dataclass
class Duplicate:
    image: ImageInfo
    reason: str
    distance: int | None = None  # perceptual-hash distance to the kept copy
    moved_to: Path | None = None


@dataclass
class DuplicateGroup:
    keep: ImageInfo
    duplicates: list[Duplicate]


@dataclass
class ReviewPair:
    a: ImageInfo
    b: ImageInfo
    distance: int
    reason: str


@dataclass
class DedupeScan:
    root: Path
    options: DedupeOptions
    images: list[ImageInfo] = field(default_factory=list)
    groups: list[DuplicateGroup] = field(default_factory=list)
    review: list[ReviewPair] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # unreadable images
    timings: dict[str, float] = field(default_factory=dict)
    stopped: bool = False

    @property
    def duplicates(self) -> list[Duplicate]:
        return [d for g in self.groups for d in g.duplicates]

    def to_dict(self) -> dict[str, Any]:
        def moved(d: Duplicate) -> str | None:
            return _rel(d.moved_to, self.root) if d.moved_to else None

        return {
            "root": str(self.root),
            "distance": self.options.distance,
            "auto_distance": self.options.auto_distance,
            "dry_run": self.options.dry_run,
            "images": len(self.images),
            "groups": [
                {
                    "keep": g.keep.to_dict(),
                    "duplicates": [
                        {**d.image.to_dict(), "reason": d.reason, "distance": d.distance, "moved_to": moved(d)}
                        for d in g.duplicates
                    ],
                }
                for g in self.groups
            ],
            "review": [
                {"a": p.a.to_dict(), "b": p.b.to_dict(), "distance": p.distance, "reason": p.reason}
                for p in self.review
            ],
            "skipped": [{"file": _rel(p, self.root), "error": e} for p, e in self.skipped],
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "stopped": self.stopped,
        }


@dataclass
class DedupeResult:
    scan: DedupeScan
    moved: list[tuple[Path, Path]] = field(default_factory=list)
    report: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        data = self.scan.to_dict()
        data["moved"] = [{"from": _rel(a, self.scan.root), "to": _rel(b, self.scan.root)} for a, b in self.moved]
        data["report"] = str(self.report) if self.report else None
        return data


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------
# reading images
def analyse_image(path: Path, root: Path) -> ImageInfo:
    """Read one image: size, md5, perceptual hash. Raises for unreadable files."""
    data = path.read_bytes()
    md5 = hashlib.md5(data).hexdigest()
    try:
        opened = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:  # PIL's own message names the in-memory buffer, not the file
        raise UnidentifiedImageError(f"cannot identify image file {path.name}") from None
    with opened as image:
        fmt = image.format or path.suffix.lstrip(".").upper()
        width, height = image.size
        if image.format == "JPEG" and min(width, height) > 512:
            image.draft("RGB", (256, 256))  # DCT-domain downscale: same hash, a fraction of the time
        image.load()
        grey, alpha = _grey_for_hash(image)
    value = phash_grey(grey)
    return ImageInfo(
        path=path,
        rel=_rel(path, root),
        size=len(data),
        width=width,
        height=height,
        format=fmt,
        md5=md5,
        phash=None if is_blank_hash(value) else value,
        alpha=alpha,
    )


def _load_rgb(path: Path, size: int | None = None) -> Image.Image:
    """The picture as RGB composited on white (optionally downscaled with area averaging)."""
    with Image.open(path) as image:
        if size and image.format == "JPEG":
            image.draft("RGB", (size * 2, size * 2))
        image.load()
        if image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            out = Image.alpha_composite(white, rgba).convert("RGB")
        else:
            out = image.convert("RGB")
    if size:
        out = out.resize((size, size), Image.BOX)
    return out


class _PixelCache:
    """Lazily computed per-image data for the pair checks (decoded only for candidate pairs)."""

    def __init__(self) -> None:
        self._digest: dict[Path, str] = {}
        self._thumb: dict[tuple[Path, int], np.ndarray] = {}

    def digest(self, info: ImageInfo) -> str:
        """md5 of the decoded pixels (mode and size included)."""
        if info.path not in self._digest:
            with Image.open(info.path) as image:
                image.load()
                mode = "RGBA" if info.alpha else "RGB"
                pixels = image.convert(mode)
            payload = f"{mode}:{pixels.width}x{pixels.height}:".encode() + pixels.tobytes()
            self._digest[info.path] = hashlib.md5(payload).hexdigest()
        return self._digest[info.path]

    def thumb(self, info: ImageInfo, size: int) -> np.ndarray:
        key = (info.path, size)
        if key not in self._thumb:
            small = _load_rgb(info.path, size).filter(ImageFilter.GaussianBlur(_BLUR_AT_64 * size / 64))
            self._thumb[key] = np.asarray(small, dtype=np.float32)
        return self._thumb[key]

    def same_pixels(self, a: ImageInfo, b: ImageInfo) -> bool:
        if (a.width, a.height) != (b.width, b.height) or a.alpha != b.alpha:
            return False
        return self.digest(a) == self.digest(b)


def check_size(a: ImageInfo, b: ImageInfo) -> int:
    """The side (multiple of 8, 32-128 px) at which a pair is compared: no larger than the smaller image."""
    smallest = min(a.width, a.height, b.width, b.height)
    return max(32, min(128, smallest // 8 * 8))


def tile_difference(a: np.ndarray, b: np.ndarray, tile: int = _TILE) -> float:
    """The worst tile's mean absolute difference between two equal-size RGB arrays (0-255)."""
    diff = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=2)
    h, w = diff.shape
    tiles = diff[: h - h % tile, : w - w % tile].reshape(h // tile, tile, w // tile, tile).mean(axis=(1, 3))
    return float(tiles.max())


def local_check(a: ImageInfo, b: ImageInfo, cache: _PixelCache | None = None) -> tuple[bool, str]:
    """Layer 4: may ``a`` and ``b`` (a close perceptual-hash pair) be treated as the same picture?

    Returns (ok, why not)."""
    cache = cache or _PixelCache()
    if a.alpha != b.alpha:
        return False, "transparency in only one of the two"
    ratio_a, ratio_b = a.width / max(1, a.height), b.width / max(1, b.height)
    if abs(ratio_a - ratio_b) / max(ratio_a, ratio_b) > MAX_ASPECT_DIFFERENCE:
        return False, f"different aspect ratios ({a.width}x{a.height} vs {b.width}x{b.height}: a crop?)"
    size = check_size(a, b)
    worst = tile_difference(cache.thumb(a, size), cache.thumb(b, size))
    if worst > max_tile_difference(size):
        return False, f"part of the picture differs (an edit or recolour? worst tile {worst:.0f}/255)"
    return True, ""


# ---------------------------------------------------------------------------------------------
# which copy to keep
def preference(a: ImageInfo, b: ImageInfo, pixel_identical: bool = False) -> int:
    """Hydrus-like score of keeping ``a`` over ``b`` (> 0: a is better)."""
    score = 0
    if a.pixels != b.pixels:
        big, small = max(a.pixels, b.pixels), max(1, min(a.pixels, b.pixels))
        points = 50 if big > 2 * small else 20
        score += points if a.pixels > b.pixels else -points
    if a.format == b.format and a.size != b.size:
        big, small = max(a.size, b.size), max(1, min(a.size, b.size))
        points = 20 if big > 2 * small else 10 if big > 1.05 * small else 0
        score += points if a.size > b.size else -points
    if pixel_identical:
        if a.format == "PNG" and b.format == "JPEG":
            score -= 100
        elif a.format == "JPEG" and b.format == "PNG":
            score += 100
    elif a.pixels == b.pixels and {a.format, b.format} == {"PNG", "JPEG"}:
        # same size, not the same pixels: the lossless copy is the less degraded one (a tie-break)
        score += 5 if a.format == "PNG" else -5
    return score


def choose_keeper(members: Sequence[ImageInfo], cache: _PixelCache) -> ImageInfo:
    """The copy to keep: best total preference against the others; ties -> has a caption, then path."""

    def identical(a: ImageInfo, b: ImageInfo) -> bool:
        return {a.format, b.format} == {"PNG", "JPEG"} and cache.same_pixels(a, b)

    def total(a: ImageInfo) -> int:
        return sum(preference(a, b, identical(a, b)) for b in members if b is not a)

    def has_caption(a: ImageInfo) -> bool:
        return a.path.with_suffix(".txt").exists()

    return sorted(members, key=lambda a: (-total(a), not has_caption(a), len(a.rel), a.rel))[0]


# ---------------------------------------------------------------------------------------------
# decisions the user made in review ("keep both")
def _decisions_path(root: Path) -> Path:
    return Path(root) / DUPLICATES_DIR / DECISIONS_FILE


def _load_decisions(root: Path) -> set[frozenset[str]]:
    path = _decisions_path(root)
    if not path.exists():
        return set()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {frozenset(pair) for pair in data.get("not_duplicates", []) if len(pair) == 2}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{path} is damaged and cannot be read; move it away to start the review afresh.") from exc


def keep_both(root: str | os.PathLike, a: str | os.PathLike, b: str | os.PathLike) -> None:
    """Record that ``a`` and ``b`` are not duplicates: later scans neither move nor list them."""
    root = Path(root)
    digests = []
    for path in (Path(a), Path(b)):
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise UserError(f"{path} does not exist.")
        digests.append(hashlib.md5(path.read_bytes()).hexdigest())
    if digests[0] == digests[1]:
        raise UserError(f"{a} and {b} are the same file content; one of them is a true duplicate.")
    pairs = _load_decisions(root)
    pairs.add(frozenset(digests))
    data = {"not_duplicates": sorted(sorted(p) for p in pairs)}
    atomic_write_text(_decisions_path(root), json.dumps(data, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# scan
class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def list_images(root: Path) -> list[Path]:
    """Images under ``root`` (recursive), skipping ``_duplicates`` and other tool/hidden folders."""
    return list(iter_image_files(root, recursive=True))


def _workers(requested: int) -> int:
    if requested > 0:
        return requested
    return max(1, min(4, os.cpu_count() or 1))


def scan(
    root: str | os.PathLike,
    options: DedupeOptions | None = None,
    events: Events | None = None,
    stop: StopToken | None = None,
) -> DedupeScan:
    """Find duplicate groups and review pairs under ``root``; nothing is changed on disk."""
    options = options or DedupeOptions()
    options.validate()
    events = events or Events()
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder.")
    # absolute: the images' paths must not depend on the current folder (the moves take a relative
    # path as relative to the dataset folder, and would put a relative folder in front twice)
    root = root.absolute()
    result = DedupeScan(root=root, options=options)
    paths = list_images(root)
    events.progress("hashing", 0, len(paths), "")

    # 1. read every image: md5, size, perceptual hash
    started = time.perf_counter()
    infos: list[ImageInfo] = []

    def analyse(path: Path) -> ImageInfo | tuple[Path, str]:
        try:
            return analyse_image(path, root)
        except Exception as exc:  # a corrupt file is reported, never the end of the scan
            return path, f"{type(exc).__name__}: {exc}"

    batch = 64
    with ThreadPoolExecutor(max_workers=_workers(options.workers)) as pool:
        for start in range(0, len(paths), batch):
            if stop is not None and stop.requested:
                result.stopped = True
                break
            for item in pool.map(analyse, paths[start : start + batch]):
                if isinstance(item, ImageInfo):
                    infos.append(item)
                else:
                    result.skipped.append(item)
                    events.warning(f"Skipped {_rel(item[0], root)}: cannot read it as an image ({item[1]}).")
            events.progress("hashing", min(start + batch, len(paths)), len(paths), "")
    result.images = infos
    result.timings["decode_and_hash"] = time.perf_counter() - started
    if result.stopped:
        return result

    # 2. pair search on the perceptual hashes (blank hashes take no part)
    started = time.perf_counter()
    hashed = [k for k, info in enumerate(infos) if info.phash is not None]
    pi, pj, pd = find_pairs([infos[k].phash for k in hashed], options.distance)
    result.timings["pair_search"] = time.perf_counter() - started

    # 3. decide: duplicates (md5, pixels, close + local check) and review pairs
    started = time.perf_counter()
    decisions = _load_decisions(root)
    cache = _PixelCache()
    uf = _UnionFind(len(infos))
    edge_reason: dict[tuple[int, int], tuple[str, int | None]] = {}

    def excluded(a: int, b: int) -> bool:
        return frozenset((infos[a].md5, infos[b].md5)) in decisions

    def join(a: int, b: int, reason: str, distance: int | None) -> None:
        uf.union(a, b)
        edge_reason[(min(a, b), max(a, b))] = (reason, distance)

    by_md5: dict[str, list[int]] = {}
    for k, info in enumerate(infos):
        by_md5.setdefault(info.md5, []).append(k)
    for members in by_md5.values():
        for other in members[1:]:
            join(members[0], other, "identical file", 0)
    # blank images can still be byte- or pixel-identical
    blanks: dict[tuple[int, int], list[int]] = {}
    for k, info in enumerate(infos):
        if info.phash is None:
            blanks.setdefault((info.width, info.height), []).append(k)
    for members in blanks.values():
        for x, a in enumerate(members):
            for b in members[x + 1 :]:
                if uf.find(a) != uf.find(b) and not excluded(a, b) and cache.same_pixels(infos[a], infos[b]):
                    join(a, b, "identical pixels", None)

    review: list[tuple[int, int, int, str]] = []
    total_pairs = len(pi)
    for n_pair, (x, y, distance) in enumerate(zip(pi.tolist(), pj.tolist(), pd.tolist())):
        if stop is not None and stop.requested:
            result.stopped = True
            break
        a, b = hashed[x], hashed[y]
        if uf.find(a) == uf.find(b) or excluded(a, b):
            continue
        ia, ib = infos[a], infos[b]
        if distance <= options.auto_distance:
            if distance == 0 and cache.same_pixels(ia, ib):
                join(a, b, "identical pixels", 0)
                continue
            ok, why = local_check(ia, ib, cache)
            if ok:
                join(a, b, f"same picture (hash distance {distance}, local check passed)", distance)
                continue
            review.append((a, b, distance, why))
        else:
            review.append((a, b, distance, f"similar (hash distance {distance})"))
        if n_pair % 256 == 0:
            events.progress("comparing", n_pair, total_pairs, "")
    events.progress("comparing", total_pairs, total_pairs, "")

    # 4. groups and the copy to keep in each
    members_of: dict[int, list[int]] = {}
    for k in range(len(infos)):
        members_of.setdefault(uf.find(k), []).append(k)
    moved: set[int] = set()
    for members in members_of.values():
        if len(members) < 2:
            continue
        keeper = choose_keeper([infos[k] for k in members], cache)
        keep_index = next(k for k in members if infos[k] is keeper)
        duplicates = []
        for k in members:
            if k == keep_index:
                continue
            reason, distance = edge_reason.get((min(k, keep_index), max(k, keep_index)), (None, None))
            if reason is None:  # joined through another member
                reason = _reason_against(infos[k], keeper, cache)
                distance = (
                    hamming(infos[k].phash, keeper.phash)
                    if infos[k].phash is not None and keeper.phash is not None
                    else None
                )
            duplicates.append(Duplicate(infos[k], reason, distance))
            moved.add(k)
        duplicates.sort(key=lambda d: d.image.rel)
        result.groups.append(DuplicateGroup(keeper, duplicates))
    result.groups.sort(key=lambda g: g.keep.rel)

    # review pairs: not already in one group, and neither side about to be moved
    seen_pairs: set[tuple[int, int]] = set()
    for a, b, distance, why in review:
        if a in moved or b in moved or uf.find(a) == uf.find(b):
            continue
        key = (min(a, b), max(a, b))
        if key in seen_pairs:
            continue
        seen_pairs.add(key)
        first, second = sorted((infos[a], infos[b]), key=lambda i: i.rel)
        result.review.append(ReviewPair(first, second, distance, why))
    result.review.sort(key=lambda p: (p.distance, p.a.rel, p.b.rel))
    result.timings["checks"] = time.perf_counter() - started
    n_dup = len(result.duplicates)
    events.info(
        f"{plural(len(infos), 'image')}: {plural(n_dup, 'duplicate')} in {plural(len(result.groups), 'group')}, "
        f"{plural(len(result.review), 'pair')} to review."
    )
    return result


def _reason_against(image: ImageInfo, keeper: ImageInfo, cache: _PixelCache) -> str:
    if image.md5 == keeper.md5:
        return "identical file"
    if cache.same_pixels(image, keeper):
        return "identical pixels"
    if image.phash is not None and keeper.phash is not None:
        return f"same picture (hash distance {hamming(image.phash, keeper.phash)} to the kept copy)"
    return "same picture (through another copy)"


# ---------------------------------------------------------------------------------------------
# moving files
def _sidecars(image: Path) -> list[Path]:
    """Files that belong to ``image``: same stem, caption/metadata/latent suffixes. Skipped when
    another image shares the stem (then they may be its files)."""
    folder = image.parent
    others = [
        p
        for p in folder.glob(_glob_escape(image.stem) + ".*")
        if p != image and p.suffix.lower() in IMAGE_EXTENSIONS and p.stem == image.stem
    ]
    if others:
        return []
    return [image.with_suffix(s) for s in SIDECAR_SUFFIXES if image.with_suffix(s).is_file()]


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)


def _free_target(target: Path, suffixes: Iterable[str]) -> Path:
    """``target``, or ``name-1.ext``... so that neither it nor its sidecars overwrite anything."""
    candidate, n = target, 0
    while candidate.exists() or any(candidate.with_suffix(s).exists() for s in suffixes):
        n += 1
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
    return candidate


def move_to_duplicates(root: str | os.PathLike, image: str | os.PathLike) -> Path:
    """Move ``image`` (and its caption/sidecars) to ``<root>/_duplicates/<same relative path>``.

    Returns the new path. Nothing is deleted; :func:`restore_from_duplicates` undoes it.
    """
    root = Path(root)
    image = Path(image)
    image = image if image.is_absolute() else root / image
    if not image.is_file():
        raise UserError(f"{image} does not exist.")
    try:
        rel = image.resolve().relative_to(root.resolve())
    except ValueError as exc:
        raise UserError(f"{image} is not inside {root}.") from exc
    if rel.parts and rel.parts[0] == DUPLICATES_DIR:
        raise UserError(f"{image} is already in {DUPLICATES_DIR}/.")
    sidecars = _sidecars(image)
    target = _free_target(root / DUPLICATES_DIR / rel, [s.suffix for s in sidecars])
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_with_retry(image, target)
        for sidecar in sidecars:
            replace_with_retry(sidecar, target.with_suffix(sidecar.suffix))
    except OSError as exc:
        raise UserError(f"Cannot move {image} to {target}: {exc.strerror or exc}.") from exc
    return target


def restore_from_duplicates(root: str | os.PathLike, moved: str | os.PathLike) -> Path:
    """Move a file from ``_duplicates/`` back where it came from (with its sidecars)."""
    root = Path(root)
    moved = Path(moved)
    moved = moved if moved.is_absolute() else root / moved
    try:
        rel = moved.resolve().relative_to((root / DUPLICATES_DIR).resolve())
    except ValueError as exc:
        raise UserError(f"{moved} is not in {root / DUPLICATES_DIR}.") from exc
    if not moved.is_file():
        raise UserError(f"{moved} does not exist.")
    target = root / rel
    sidecars = _sidecars(moved)
    for path in [target, *[target.with_suffix(s.suffix) for s in sidecars]]:
        if path.exists():
            raise UserError(f"Cannot restore {moved}: {path} exists.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_with_retry(moved, target)
        for sidecar in sidecars:
            replace_with_retry(sidecar, target.with_suffix(sidecar.suffix))
    except OSError as exc:
        raise UserError(f"Cannot move {moved} back to {target}: {exc.strerror or exc}.") from exc
    return target


def apply(scan_result: DedupeScan, events: Events | None = None, stop: StopToken | None = None) -> DedupeResult:
    """Move every duplicate of ``scan_result`` to ``_duplicates/`` and write the JSON report there
    (unless the scan was a dry run, or was stopped: then nothing moves)."""
    events = events or Events()
    result = DedupeResult(scan_result)
    if scan_result.options.dry_run or scan_result.stopped:
        return result
    duplicates = scan_result.duplicates
    root = scan_result.root
    try:
        for n, duplicate in enumerate(duplicates):
            if stop is not None and stop.requested:
                events.info("Stopped; the files moved so far are listed in the report.")
                break
            target = move_to_duplicates(root, duplicate.image.path)
            duplicate.moved_to = target
            result.moved.append((duplicate.image.path, target))
            events.progress("moving", n + 1, len(duplicates), duplicate.image.rel)
    finally:  # the report lists what was moved, even when a move failed half-way
        if duplicates or scan_result.review:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            report = _free_target(root / DUPLICATES_DIR / f"dedupe-report-{stamp}.json", ())
            atomic_write_text(report, json.dumps(result.to_dict(), indent=1) + "\n")
            result.report = report
    if result.moved:
        events.info(f"Moved {len(result.moved)} duplicate(s) to {root / DUPLICATES_DIR}.")
    return result


def dedupe(
    root: str | os.PathLike,
    options: DedupeOptions | None = None,
    events: Events | None = None,
    stop: StopToken | None = None,
) -> DedupeResult:
    """:func:`scan`, then :func:`apply` (a dry run only scans)."""
    found = scan(root, options, events, stop)
    return apply(found, events, stop)
