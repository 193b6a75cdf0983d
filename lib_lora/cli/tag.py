"""``python -m lib_lora tag``: caption a dataset folder with a WD tagger."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from lib_lora.common.errors import UserError

HELP = """Tag every image of a dataset folder with a WD tagger and write its caption file.

Images are found recursively (the N_name layout); each caption (<image>.txt) is written as soon as
its batch finishes, so an interrupted run keeps what it finished (Ctrl-C stops after the current
batch; press it again to quit at once). Registry models are downloaded into the Hugging Face
cache on first use; --model also takes a folder holding model.onnx and selected_tags.csv.
Unreadable images are skipped and listed at the end.

examples:
  python -m lib_lora tag dataset/ --add-tags irene
  python -m lib_lora tag dataset/ --model convnext-v3 --existing append --mcut
  python -m lib_lora tag --list-models
"""


def _tags(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", nargs="?", metavar="DIR", help="dataset folder (searched recursively)")
    parser.add_argument(
        "--model",
        default="wd-v1-4-swinv2-tagger-v2",
        metavar="NAME|PATH",
        help="registry model (see --list-models; default %(default)s) or a folder with model.onnx and selected_tags.csv",
    )
    parser.add_argument(
        "--threshold", type=float, default=0.35, metavar="P", help="general tag threshold (default %(default)s)"
    )
    parser.add_argument(
        "--character-threshold",
        type=float,
        default=0.85,
        metavar="P",
        help="character tag threshold (default %(default)s)",
    )
    parser.add_argument("--mcut", action="store_true", help="choose the general threshold per image with MCut")
    parser.add_argument(
        "--character-mcut", action="store_true", help="choose the character threshold per image with MCut (>= 0.15)"
    )
    parser.add_argument(
        "--existing",
        choices=("skip", "overwrite", "append", "prepend"),
        default="skip",
        help="what to do with images that already have a caption (default %(default)s)",
    )
    parser.add_argument(
        "--add-tags", default="", metavar="T,...", help="tags written first in every caption (the activation tag)"
    )
    parser.add_argument(
        "--exclude-tags", default="", metavar="T,...", help="tags never written (any case; re:REGEX for a pattern)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        metavar="N",
        help="images per inference call (default: 4 on CPU, 16 on GPU)",
    )
    parser.add_argument("--keep-underscores", action="store_true", help="write long_hair instead of long hair")
    parser.add_argument("--escape", action="store_true", help="escape parentheses (for prompts; not for training)")
    parser.add_argument("--ratings", action="store_true", help="also write the most likely rating tag")
    parser.add_argument(
        "--order", choices=("confidence", "alphabetical"), default="confidence", help="tag order (default %(default)s)"
    )
    parser.add_argument("--characters-first", action="store_true", help="put character tags before general tags")
    parser.add_argument(
        "--confidences",
        action="store_true",
        help="also keep every score in <folder>/.tagger/scores.json (caption editor)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cuda", "directml", "cpu"),
        default="auto",
        help="where to run the model (default %(default)s: CUDA, else DirectML, else CPU)",
    )
    parser.add_argument("--no-recursive", action="store_true", help="only the images directly in DIR")
    parser.add_argument("--offline", action="store_true", help="never download; use the Hugging Face cache only")
    parser.add_argument("--caption-extension", default=".txt", metavar="EXT", help="default %(default)s")
    parser.add_argument("--threads", type=int, default=0, metavar="N", help="onnxruntime threads (0 = its default)")
    parser.add_argument("--workers", type=int, default=0, metavar="N", help="decode threads (0 = min(4, CPUs))")
    parser.add_argument("--list-models", action="store_true", help="list the registry models and exit")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document")


def _list_models(as_json: bool) -> int:
    from lib_lora.tagger import DEFAULT_MODEL, MODELS, is_cached

    rows = []
    for spec in MODELS.values():
        rows.append(
            {
                "name": spec.name,
                "short_name": spec.short_name,
                "repo_id": spec.repo_id,
                "revision": spec.revision or "main",
                "size_mb": spec.size_mb,
                "balanced_threshold": spec.balanced_threshold,
                "cached": is_cached(spec.name),
                "default": spec.name == DEFAULT_MODEL,
            }
        )
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        flags = " (default)" if row["default"] else ""
        cached = "cached" if row["cached"] else "not downloaded"
        print(f"{row['short_name']:<16} {row['repo_id']:<42} {row['size_mb']:>5} MB  {cached}{flags}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.list_models:
        return _list_models(args.json)
    if not args.dir:
        raise UserError("Give the dataset folder to tag (python -m lib_lora tag DIR).")

    from tqdm import tqdm

    from lib_lora.events import Events, StopToken
    from lib_lora.tagger import TagFolderOptions, TagOptions, tag_folder

    tag_options = TagOptions(
        general_threshold=args.threshold,
        character_threshold=args.character_threshold,
        general_mcut=args.mcut,
        character_mcut=args.character_mcut,
        include_ratings=args.ratings,
        order=args.order,
        characters_first=args.characters_first,
        keep_underscores=args.keep_underscores,
        escape_parentheses=args.escape,
        exclude_tags=tuple(_tags(args.exclude_tags)),
        additional_tags=tuple(_tags(args.add_tags)),
    )
    options = TagFolderOptions(
        folder=args.dir,
        model=args.model,
        tags=tag_options,
        existing=args.existing,
        batch_size=args.batch_size,
        recursive=not args.no_recursive,
        confidences=args.confidences,
        device=args.device,
        threads=args.threads,
        workers=args.workers,
        caption_extension=args.caption_extension,
        allow_download=not args.offline,
    )

    class CliEvents(Events):
        def __init__(self) -> None:
            self.bar: tqdm | None = None

        def message(self, level: str, text: str) -> None:
            prefix = "" if level == "info" else f"{level}: "
            tqdm.write(prefix + text, file=sys.stderr)

        def progress(self, stage: str, done: int, total: int, text: str = "") -> None:
            if stage != "tagging":
                return  # huggingface_hub draws its own download bar
            if self.bar is None and done < total:
                # drawn on a terminal only (disable=None); logs get the summary lines instead
                self.bar = tqdm(total=total, unit="img", desc="tagging", file=sys.stderr, disable=None)
            if self.bar is not None:
                self.bar.n = done
                self.bar.refresh()
                if done >= total:
                    self.close()

        def close(self) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    events = CliEvents()
    stop = StopToken()
    previous = None
    if threading.current_thread() is threading.main_thread():

        def on_interrupt(signum: int, frame: object) -> None:
            stop.request("interrupted by Ctrl-C")
            tqdm.write("stopping after the current batch (Ctrl-C again to quit now)", file=sys.stderr)
            signal.signal(signal.SIGINT, signal.default_int_handler)

        previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        result = tag_folder(options, events, stop)
    finally:
        events.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    return 130 if result.stopped else 0
