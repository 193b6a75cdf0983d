"""Duplicate filter speed on a large generated dataset (issue 8: 10,000 images, target <= 60 s).

Generates N small, varied images (64-192 px smooth random pictures with shapes, PNG and JPEG) in a
temporary folder, of which about 8 % are planted duplicates (half-size copies and re-encoded
JPEGs), then runs the whole ``dedupe`` (hash every image, search pairs, check and group, move the
duplicates) and reports each phase. The pair search (multi-index hashing) is compared with the
all-pairs baseline (every hash against every other, vectorised with numpy) on the same hashes in
the same run, at the default distance and at distance 8.

    python bench/dedupe.py [--count 10000] [--distance 4] [--workers 0] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_lora.importer.dedupe import DedupeOptions, apply, find_pairs, naive_pairs, scan


def make_dataset(root: Path, count: int, seed: int = 0) -> int:
    """``count`` images under root/<N>_<name>/; returns the number of planted duplicates."""
    rng = np.random.default_rng(seed)
    folders = [root / f"{k + 1}_subject{k}" for k in range(8)]
    for folder in folders:
        folder.mkdir(parents=True)
    planted = 0
    k = 0
    while k < count:
        width, height = (int(v) for v in rng.integers(64, 193, size=2))
        coarse = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
        image = Image.fromarray(coarse, "RGB").resize((width, height), Image.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
            x1, y1 = x0 + int(rng.integers(8, width // 2 + 9)), y0 + int(rng.integers(8, height // 2 + 9))
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        folder = folders[k % len(folders)]
        if rng.random() < 0.5:
            image.save(folder / f"img{k:05d}.png", compress_level=1)
        else:
            image.save(folder / f"img{k:05d}.jpg", quality=90)
        k += 1
        if k < count and rng.random() < 0.087:  # a planted duplicate of this picture
            if rng.random() < 0.5:
                copy = image.resize((max(32, width // 2), max(32, height // 2)), Image.LANCZOS)
                copy.save(folder / f"img{k:05d}_half.png", compress_level=1)
            else:
                image.save(folder / f"img{k:05d}_q75.jpg", quality=75)
            planted += 1
            k += 1
    return planted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--distance", type=int, default=4)
    parser.add_argument("--workers", type=int, default=0, help="decoding threads (0: one per core, up to 4)")
    parser.add_argument("--keep", action="store_true", help="keep the generated folder")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="dedupe-bench-"))
    try:
        started = time.perf_counter()
        planted = make_dataset(root, args.count)
        generate = time.perf_counter() - started
        print(f"generated {args.count} images ({planted} planted duplicates) in {generate:.1f} s; "
              f"{os.cpu_count()} cores")  # fmt: skip

        started = time.perf_counter()
        found = scan(root, DedupeOptions(distance=args.distance, workers=args.workers))
        result = apply(found)
        total = time.perf_counter() - started
        moved = len(result.moved)
        # every planted copy is named *_half.png / *_q75.jpg; the original of each pair must stay
        wrong = sum(1 for src, _ in result.moved if not src.stem.endswith(("_half", "_q75")))
        t = found.timings
        print(f"dedupe total            {total:7.2f} s   (target <= 60 s)")
        print(f"  decode + hash         {t['decode_and_hash']:7.2f} s   ({len(found.images)} images)")
        print(f"  pair search           {t['pair_search']:7.3f} s")
        print(f"  checks + grouping     {t['checks']:7.2f} s   ({len(found.review)} pairs for review)")
        print(f"  moving                {total - sum(t.values()):7.2f} s   "
              f"({moved} moved of {planted} planted; {wrong} moved that were not planted copies)")  # fmt: skip

        hashes = np.array([i.phash for i in found.images if i.phash is not None], dtype=np.uint64)
        figures: dict[str, object] = {
            "count": args.count,
            "planted": planted,
            "moved": moved,
            "moved_not_planted": wrong,
            "review_pairs": len(found.review),
            "total_s": round(total, 3),
            "decode_and_hash_s": round(t["decode_and_hash"], 3),
            "pair_search_s": round(t["pair_search"], 4),
            "checks_s": round(t["checks"], 3),
            "cores": os.cpu_count(),
        }
        for distance in sorted({args.distance, 8}):
            started = time.perf_counter()
            fast = find_pairs(hashes, distance)
            fast_s = time.perf_counter() - started
            started = time.perf_counter()
            slow = naive_pairs(hashes, distance)
            slow_s = time.perf_counter() - started
            same = all(np.array_equal(a, b) for a, b in zip(fast, slow))
            print(f"pair search, distance {distance}: multi-index {fast_s:.3f} s, all pairs {slow_s:.3f} s, "
                  f"ratio {slow_s / fast_s:.1f}x, {len(fast[0])} pairs, same answer: {same}")  # fmt: skip
            figures[f"pairs_d{distance}"] = len(fast[0])
            figures[f"multi_index_d{distance}_s"] = round(fast_s, 4)
            figures[f"all_pairs_d{distance}_s"] = round(slow_s, 4)
            figures[f"ratio_d{distance}"] = round(slow_s / fast_s, 1)
            figures[f"same_answer_d{distance}"] = same
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(figures, indent=1) + "\n")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
