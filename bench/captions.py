"""Caption editor speed on a large dataset: load, filter, one batch edit, preview, save, undo.

Generates a dataset of N captions (default 20,000; empty placeholder images, since the editor never
decodes images) in a temporary folder, then times each phase of an editing session. The baseline,
measured in the same run on the same files, is the bare minimum any editor must do: read every caption
file once, and write every changed caption once with a plain ``open().write()`` (no atomic rename, no
backup, no conflict check).

    python bench/captions.py [--count 20000] [--tags 25] [--share 0.7]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_lora.captions import CaptionSession, TagFilter
from lib_lora.common.tags import KAOMOJI

T = TypeVar("T")


def make_dataset(root: Path, count: int, tags_per_caption: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    vocab = [f"tag_{i}_{'x' * (i % 7)}" for i in range(3000)] + sorted(KAOMOJI)
    weights = [1.0 / (1 + i) ** 0.8 for i in range(len(vocab))]
    folders = [root / f"{rng.randint(1, 20)}_subject{i}" for i in range(10)]
    for folder in folders:
        folder.mkdir(parents=True)
    for i in range(count):
        folder = folders[i % len(folders)]
        (folder / f"{i:06d}.png").write_bytes(b"")
        if i % 50 == 0:
            continue  # some images have no caption
        head = ["1girl"] if rng.random() < 0.7 else ["1boy"]
        tags = head + rng.choices(vocab, weights, k=tags_per_caption)
        (folder / f"{i:06d}.txt").write_text(", ".join(tags) + "\n", encoding="utf-8")


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def baseline_read(root: Path) -> tuple[int, list[Path]]:
    paths = [Path(folder) / name for folder, _, files in os.walk(root) for name in files if name.endswith(".txt")]
    total = 0
    for path in paths:
        with open(path, "rb") as handle:
            total += len(handle.read())
    return total, paths


def baseline_write(paths: list[Path]) -> None:
    for path in paths:
        data = path.read_bytes()
        with open(path.with_suffix(".plain"), "wb") as handle:
            handle.write(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000, help="captions (images) to generate")
    parser.add_argument("--tags", type=int, default=25, help="tags per caption")
    parser.add_argument("--dir", default=None, help="parent folder for the dataset (default: system temp)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-captions-", dir=args.dir))
    root = work / "dataset"
    try:
        t_gen, _ = timed(lambda: make_dataset(root, args.count, args.tags))
        print(f"dataset: {args.count} images, ~{args.tags} tags per caption, generated in {t_gen:.2f} s ({root})")

        t_read, (nbytes, paths) = timed(lambda: baseline_read(root))
        t_load, session = timed(lambda: CaptionSession.open(root))
        t_filter, shown = timed(lambda: session.set_filter(TagFilter.build(include="1girl")))
        t_search, found = timed(
            lambda: session.set_filter(TagFilter.build(search=r"^tag_1\d_", search_mode="regex", exclude="1boy"))
        )
        session.set_filter(TagFilter.build(include="1girl"))
        t_op, op = timed(lambda: session.add_tags("subject", "front"))
        t_us, us = timed(session.underscores_to_spaces)
        t_dedupe, _ = timed(session.dedupe)
        t_sort, _ = timed(lambda: session.sort("frequency", keep_first=1))
        t_undo, _ = timed(session.undo)
        t_redo, _ = timed(session.redo)
        t_preview, preview = timed(lambda: session.preview(sample=5))
        changed_paths = [session.items[i].caption_file for i in session.dirty_indices()]
        t_write, _ = timed(lambda: baseline_write([p for p in changed_paths if p.exists()]))
        t_save, result = timed(session.save)
        assert result.ok, result
        written = len(result.written) + len(result.created)

        print(f"baseline: read {len(paths)} caption files ({nbytes / 1e6:.1f} MB) in {t_read:.3f} s; ")
        print(f"          plain write of the {written} changed captions in {t_write:.3f} s")
        rows = [
            ("load (parse + confidences lookup)", t_load, f"{len(session.items)} images", t_load / t_read),
            ("filter: include 1girl", t_filter, f"{len(shown)} shown", None),
            ("filter: regex search + exclude", t_search, f"{len(found)} shown", None),
            ("add activation tag at front", t_op, f"{op.changed} changed", None),
            ("underscores to spaces", t_us, f"{us.changed} changed", None),
            ("dedupe", t_dedupe, "", None),
            ("sort by frequency", t_sort, "", None),
            ("undo / redo (sort)", t_undo + t_redo, "", None),
            ("preview", t_preview, f"{preview.changed} pending", None),
            ("save (check, backup zip, atomic writes)", t_save, f"{written} written", t_save / t_write),
        ]
        print(f"{'phase':<42} {'seconds':>8}  {'vs baseline':>11}  detail")
        for name, seconds, detail, ratio in rows:
            r = f"{ratio:>10.1f}x" if ratio is not None else " " * 11
            print(f"{name:<42} {seconds:>8.3f}  {r}  {detail}")
        interactive = t_load + t_filter + t_op + t_save
        print(f"load + filter + one edit + save: {interactive:.2f} s for {args.count} captions")
        backup_size = result.backup.stat().st_size if result.backup else 0
        print(f"backup: {result.backup.name if result.backup else '-'} ({backup_size / 1e6:.1f} MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
