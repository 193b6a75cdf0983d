"""``python -m lib_lora clean``: remove text, signatures, watermarks and censor bars with LaMa."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lib_lora.common.errors import UserError

HELP = """Paint-over cleaning with LaMa: the white parts of a mask are filled in from their surroundings.

One image with its mask, or a folder with a folder of masks (same relative path and name, any
image extension; images without a mask are left alone), or a folder with one mask for every image
(--mask: it is scaled to each image's size, e.g. the same watermark corner). Masks are white (or
painted, for a transparent PNG) where the image should be cleaned, in the upright image's
coordinates. Before an image is overwritten its exact bytes go to <folder>/.clean-history/;
--undo puts back the version before the last cleaning, --restore the original, byte for byte.
The model (Carve/LaMa-ONNX, 208 MB) is downloaded into the Hugging Face cache on first use;
--model also takes any LaMa .onnx file.

examples:
  python -m lib_lora clean dataset/10_char/img01.png --mask img01-mask.png
  python -m lib_lora clean dataset/ --masks masks/
  python -m lib_lora clean dataset/10_char --mask corner-watermark.png
  python -m lib_lora clean dataset/ --restore
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="IMAGE|DIR", help="an image, or a dataset folder (searched recursively)")
    parser.add_argument("--mask", metavar="MASK", help="the mask image (for a folder: one mask for every image)")
    parser.add_argument("--masks", metavar="DIR", help="a folder of masks mirroring the dataset folder")
    parser.add_argument("--restore", action="store_true", help="put the originals back (image or whole folder)")
    parser.add_argument("--undo", action="store_true", help="put back the version before the last cleaning (image)")
    parser.add_argument(
        "--model", default="lama-carve", metavar="NAME|PATH", help="lama-carve (default), lama-dynamic or a .onnx file"
    )
    parser.add_argument("--margin", type=int, default=128, metavar="PX", help="context around each mask area")
    parser.add_argument("--device", choices=("auto", "cuda", "directml", "cpu"), default="auto")
    parser.add_argument("--offline", action="store_true", help="never download; use the Hugging Face cache only")
    parser.add_argument("--no-recursive", action="store_true", help="only the images directly in DIR")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document")


def _emit(args: argparse.Namespace, text: str, body: dict) -> None:
    print(json.dumps(body, ensure_ascii=False) if args.json else text)


def run(args: argparse.Namespace) -> int:
    from lib_lora.cleanup import history
    from lib_lora.cleanup.clean import clean_folder, clean_image, history_root, load_lama, read_mask, restore_folder

    target = Path(args.target).expanduser()
    if not target.exists():
        raise UserError(f"{target} does not exist.")
    if args.restore or args.undo:
        if args.restore and args.undo:
            raise UserError("Give --restore or --undo, not both.")
        if target.is_dir():
            if args.undo:
                raise UserError("--undo works on one image; use --restore for a whole folder.")
            restored, refused = restore_folder(target)
            for _image, why in refused:
                print(f"warning: {why}", file=sys.stderr)
            _emit(args, f"restored {len(restored)} originals", {"restored": [str(p) for p in restored],
                  "refused": [str(p) for p, _ in refused]})  # fmt: skip
            return 0 if not refused else 1
        root = history_root(target)
        done = history.restore(root, target) if args.restore else history.undo(root, target)
        _emit(args, f"{'restored' if args.restore else 'undid the last cleaning of'} {done}", {"image": str(done)})
        return 0
    if args.mask and args.masks:
        raise UserError("Give --mask (one mask) or --masks (a folder of masks), not both.")
    if not args.mask and not args.masks:
        raise UserError("Give the mask: --mask MASK.png (or --masks DIR for a folder).")
    if target.is_file() and args.masks:
        raise UserError("--masks takes a folder of masks for a dataset folder; for one image use --mask.")
    if args.margin < 0:
        raise UserError(f"--margin is the context in pixels around each mask area: 0 or more, not {args.margin}.")
    mask = read_mask(args.mask) if args.mask else None
    if mask is not None and not mask.any():
        raise UserError(f"The mask {args.mask} is empty (no white or painted pixels); nothing was changed.")

    if target.is_file():  # a bad image is reported before a model is loaded (or downloaded)
        from lib_lora.cleanup.images import read_source

        read_source(target)

    from lib_lora.events import Events

    class CliEvents(Events):
        def message(self, level: str, text: str) -> None:
            print(text if level == "info" else f"{level}: {text}", file=sys.stderr)

    events = CliEvents()
    lama = load_lama(args.model, device=args.device, allow_download=not args.offline, events=events)
    if target.is_file():
        preview = clean_image(target, mask, lama, root=history_root(target), margin=args.margin)
        _emit(args, f"cleaned {target} ({preview.changed_pixels} pixels, {lama.device})",
              {"image": str(target), "pixels": preview.changed_pixels, "device": lama.device})  # fmt: skip
        return 0
    result = clean_folder(
        target, lama, masks_dir=args.masks, mask=mask, recursive=not args.no_recursive, margin=args.margin,
        events=events,
    )  # fmt: skip
    for _image, why in result.failed:
        print(f"warning: {why}", file=sys.stderr)
    body = {
        "cleaned": [str(p) for p in result.cleaned],
        "skipped": [{"image": str(p), "why": why} for p, why in result.skipped],
        "failed": [{"image": str(p), "error": why} for p, why in result.failed],
    }
    _emit(args, result.summary(), body)
    return 0 if not result.failed else 1
