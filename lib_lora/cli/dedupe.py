"""``python -m lib_lora dedupe``: move duplicate images of a dataset to ``_duplicates/``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = """Find duplicate images in a dataset folder and move the extra copies to DIR/_duplicates/.

Identical files, identical pixels and the same picture re-encoded or resized (perceptual hash
distance at most --auto-distance, confirmed by a local comparison) are moved; the copy kept is the
one with the higher resolution, then the larger file of the same format (a PNG that is
pixel-identical to a JPEG gives way to the JPEG). Nothing is deleted: captions travel with their
images, and a JSON report is written to DIR/_duplicates/. Pairs that are merely similar (crops,
recolours, small edits; distance up to --distance) are listed for review, not moved.

Distances (Hydrus' scale): 0 exact, 2 very similar, 4 similar, 8 speculative.

examples:
  python -m lib_lora dedupe datasets/irene --dry-run
  python -m lib_lora dedupe datasets/irene --distance 8 --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="the dataset folder (searched recursively)")
    parser.add_argument("--distance", type=int, default=4, help="list pairs up to this hash distance (default 4)")
    parser.add_argument("--auto-distance", type=int, default=None,
                        help="move pairs up to this distance when the local check agrees (default 2)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="report only; move nothing")
    parser.add_argument("--workers", type=int, default=0, help="decoding threads (default: one per core, up to 4)")
    parser.add_argument("--json", action="store_true", help="print one JSON document with the result")


def run(args: argparse.Namespace) -> int:
    from lib_lora.cli.import_ import console_events
    from lib_lora.common.errors import UserError
    from lib_lora.common.text import plural
    from lib_lora.events import StopToken
    from lib_lora.importer.dedupe import DedupeOptions, dedupe

    if not args.dir.is_dir():
        raise UserError(f"{args.dir} is not a folder.")
    auto = args.auto_distance if args.auto_distance is not None else min(2, max(0, args.distance))
    options = DedupeOptions(distance=args.distance, auto_distance=auto, dry_run=args.dry_run, workers=args.workers)
    events = console_events(quiet=args.json)
    result = dedupe(args.dir, options, events, StopToken())
    events.close()
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    scan = result.scan
    verb = "would move" if options.dry_run else "moved"
    for group in scan.groups:
        print(f"keep {group.keep.rel} ({group.keep.width}x{group.keep.height}, {group.keep.format})")
        for dup in group.duplicates:
            print(f"  {verb} {dup.image.rel} ({dup.image.width}x{dup.image.height}, {dup.image.format}): {dup.reason}")
    if scan.review:
        print("to review (not moved):")
        for pair in scan.review:
            print(f"  {pair.a.rel} <-> {pair.b.rel}: distance {pair.distance}, {pair.reason}")
    summary = (
        f"{plural(len(scan.images), 'image')}, {plural(len(scan.duplicates), 'duplicate')} {verb}, "
        f"{plural(len(scan.review), 'pair')} to review"
    )
    if scan.skipped:
        summary += f", {plural(len(scan.skipped), 'unreadable file')} skipped"
    if result.report:
        summary += f"; report: {result.report}"
    print(summary + ".", file=sys.stderr)
    return 0
