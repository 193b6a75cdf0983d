"""Write a small generated demo dataset (N_name folders, varied aspect ratios) to try the workflow.

Three folders (3_redfox, 2_bluebird, 2_greenleaf) of coloured drawings in portrait, landscape and
square sizes; the same images every time. Without captions the tagger writes them; with
--captions simple each image gets its folder's name and a few words.

examples:
  python -m lib_lora demo-dataset demo
  python -m lib_lora demo-dataset demo --captions simple
"""

from __future__ import annotations

import argparse
import json

HELP = __doc__ or ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="the new dataset folder (must not exist, or be empty)")
    parser.add_argument(
        "--captions", choices=("none", "simple"), default="none", help="none (tag them later) or simple captions"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    from lib_lora.cli import shell_arg
    from lib_lora.data.demo import write_demo_dataset

    result = write_demo_dataset(args.folder, captions=args.captions)
    if args.json:
        print(
            json.dumps(
                {
                    "root": str(result.root),
                    "folders": [str(p) for p in result.folders],
                    "images": [str(p) for p in result.images],
                    "captions": [str(p) for p in result.captions],
                }
            )
        )
    else:
        print(result.summary())
        print(
            f"next: python -m lib_lora tag {shell_arg(result.root)} --model demo-tagger   (the built-in demo "
            "tagger, no download; or open the folder in the app: python -m lib_lora serve)"
        )
    return 0
