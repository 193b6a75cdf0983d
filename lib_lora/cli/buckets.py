"""Show the aspect-ratio buckets, and which bucket each image (or size) goes to.

Buckets are computed exactly as sd-scripts does. Give a dataset folder (the parent of the N_name
folders), one or more --size WxH, or both. Prints the bucket list in sd-scripts' order, each
image's bucket and resized size (before the crop), the images per bucket (with repeats) and the
steps per epoch (batches, before gradient accumulation).

examples:
  python -m lib_lora buckets ./dataset --resolution 512 --min-bucket-reso 320 --max-bucket-reso 1280
  python -m lib_lora buckets --resolution 1024 --bucket-reso-steps 32 --size 1920x1080 --size 832x1216
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from lib_lora.common.errors import UserError

HELP = __doc__ or ""

_PAIR = re.compile(r"^\s*(\d+)\s*(?:[,x×X]\s*(\d+))?\s*$")


def _pair(text: str, what: str, square: bool) -> tuple[int, int]:
    match = _PAIR.match(text)
    if not match or (match.group(2) is None and not square):
        example = "512 or 768,512" if square else "1920x1080"
        raise argparse.ArgumentTypeError(f"{what} {text!r} is invalid: write it like {example}")
    width = int(match.group(1))
    height = int(match.group(2)) if match.group(2) is not None else width
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"{what} {text!r} is invalid: sides must be positive")
    return width, height


def parse_resolution(text: str) -> tuple[int, int]:
    """``512`` -> (512, 512); ``768,512`` -> (768, 512) (width, height), as sd-scripts' --resolution."""
    return _pair(text, "resolution", square=True)


def parse_size(text: str) -> tuple[int, int]:
    return _pair(text, "size", square=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", nargs="?", metavar="DATASET_DIR", help="dataset folder (holds N_name folders)")
    parser.add_argument(
        "--resolution", type=parse_resolution, default=(512, 512), help="SIZE or WIDTH,HEIGHT (default 512)"
    )
    parser.add_argument("--min-bucket-reso", type=int, default=256, help="smallest bucket side (default 256)")
    parser.add_argument("--max-bucket-reso", type=int, default=1024, help="largest bucket side (default 1024)")
    parser.add_argument("--bucket-reso-steps", type=int, default=64, help="bucket sides are multiples of this (64)")
    parser.add_argument("--no-upscale", action="store_true", help="bucket_no_upscale: buckets follow image sizes")
    parser.add_argument("--no-bucket", action="store_true", help="enable_bucket off: one bucket = the resolution")
    parser.add_argument(
        "--family",
        choices=("sd1", "sd2", "sdxl"),
        default=None,
        help="check bucket-reso-steps for this model family (SD1/SD2: multiple of 64, SDXL: of 32)",
    )
    parser.add_argument(
        "--size", type=parse_size, action="append", default=[], metavar="WxH", help="an image size to place"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="train batch size for steps per epoch (1)")
    parser.add_argument("--caption-extension", default=".txt", help="caption file extension (.txt)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def _stderr_events():
    """Events that print warnings to stderr and show a progress bar for long image checks on a terminal."""
    from lib_lora.events import Events

    class StderrEvents(Events):
        def __init__(self) -> None:
            self.bar = None

        def message(self, level: str, text: str) -> None:
            self._close()
            print(f"{level}: {text}", file=sys.stderr)

        def progress(self, stage: str, done: int, total: int, text: str = "") -> None:
            if not sys.stderr.isatty() or total < 50:
                return
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=stage, file=sys.stderr, leave=False)
            self.bar.n = done
            self.bar.refresh()
            if done >= total:
                self._close()

        def _close(self) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return StderrEvents()


def run(args: argparse.Namespace) -> int:
    from lib_lora.data.buckets import BucketManager, BucketSettings
    from lib_lora.data.dataset import plan_buckets, scan_dataset

    if args.dataset is None and not args.size:
        raise UserError("Nothing to place: give a dataset folder, or one or more --size WxH.")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} is invalid: it must be 1 or more.")
    settings = BucketSettings(
        resolution=args.resolution,
        enable_bucket=not args.no_bucket,
        min_bucket_reso=args.min_bucket_reso,
        max_bucket_reso=args.max_bucket_reso,
        bucket_reso_steps=args.bucket_reso_steps,
        bucket_no_upscale=args.no_upscale,
    )
    notes = settings.validate(args.family)
    manager = BucketManager(settings)

    sizes: list[tuple[int, int]] = []
    repeats: list[int] = []
    labels: list[str] = []
    kinds: list[str] = []
    scan = None
    events = _stderr_events()
    paths: list[str] = []
    if args.dataset is not None:
        scan = scan_dataset(args.dataset, args.caption_extension, events=events)
        for item in scan.items:
            sizes.append(item.size)
            repeats.append(item.repeats)
            labels.append(item.path.relative_to(scan.root).as_posix())
            paths.append(str(item.path))
            kinds.append("path")
    for size in args.size:
        sizes.append(size)
        paths.append("")
        repeats.append(1)
        labels.append(f"{size[0]}x{size[1]}")
        kinds.append("size")
    plan = plan_buckets(sizes, repeats, manager, args.batch_size, labels=labels, scan=scan)
    # sd-scripts' bucket list; with bucket_no_upscale there is none, the images make the buckets
    bucket_list = plan.buckets if settings.bucket_no_upscale and settings.enable_bucket else plan.predefined

    if args.json:
        images = []
        for i, choice in enumerate(plan.choices):
            entry: dict[str, object] = {}
            if kinds[i] == "path":
                entry["path"] = paths[i]
                entry["original_size"] = list(sizes[i])
                entry["repeats"] = repeats[i]
            else:
                entry["size"] = list(sizes[i])
            entry["bucket"] = list(choice.bucket)
            entry["resized"] = list(choice.resized)
            images.append(entry)
        document = {
            "buckets": [list(b) for b in bucket_list],
            "images": images,
            "counts": [
                {"bucket": list(r.resolution), "images": r.images, "count": r.count, "batches": r.batches}
                for r in plan.rows()
            ],
            "batch_size": args.batch_size,
            "num_train_images": plan.num_samples,
            "steps_per_epoch": plan.steps_per_epoch,
            "mean_ar_error": plan.mean_ar_error,
            "skipped": [{"path": str(p), "reason": why} for p, why in (scan.skipped if scan else [])],
            "warnings": notes,
        }
        print(json.dumps(document))
        return 0

    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    w, h = settings.resolution
    if not settings.enable_bucket:
        print(f"buckets off: every image is cover-resized and centre-cropped to {w}x{h}")
    elif settings.bucket_no_upscale:
        print(
            f"bucket_no_upscale, resolution {w}x{h}, step {settings.bucket_reso_steps}: "
            f"{len(plan.buckets)} buckets from the images"
        )
    else:
        print(
            f"{len(bucket_list)} buckets for resolution {w}x{h}, "
            f"{settings.effective_min_bucket_reso}-{settings.effective_max_bucket_reso} step {settings.bucket_reso_steps}:"
        )
    print("  " + "  ".join(f"{bw}x{bh}" for bw, bh in bucket_list))
    print()
    heads = [f"{labels[i]}  {w}x{h}" if kinds[i] == "path" else f"{w}x{h}" for i, (w, h) in enumerate(sizes)]
    width = max(len(head) for head in heads)
    for head, choice in zip(heads, plan.choices):
        bw, bh = choice.bucket
        rw, rh = choice.resized
        print(f"  {head:>{width}} -> bucket {bw}x{bh} (resized {rw}x{rh})")
    print()
    for line in plan.log_lines():
        print(line)
    print(f"images x repeats: {plan.num_samples}, batch size {args.batch_size}: steps per epoch {plan.steps_per_epoch}")
    if scan is not None and scan.skipped:
        print(f"{len(scan.skipped)} unreadable images skipped (see the warnings above)")
    return 0
