"""``score``: pick the best epoch of a LoRA family from rendered images, the WD tagger and the validation loss."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

HELP = """Score every epoch file of a LoRA (name-000001.safetensors ... name.safetensors) and recommend one.

Each file renders the activation prompt, the activation prompt with each flexibility prompt, and each drift
prompt (no activation tag) at fixed seeds; the WD tagger reads the images. fidelity = the character's core
tags found, flexibility = the flexibility prompts' tags found, drift = how much the LoRA changes images
without its activation tag. The score is their F-beta; a pick is "confident" only when it beats the next
epoch by more than the seed noise. --keep makes the pick name.safetensors and moves the other files into
archive/ (never deletes).

Examples:
  python -m lib_lora score output --name mylora --model tiny-sd15
  python -m lib_lora score output --name mylora --seeds 1,2,3,4 --json
  python -m lib_lora score output --name mylora --keep
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="the folder holding the LoRA files (e.g. the webui's Lora folder)")
    parser.add_argument("--name", required=True, help="the LoRA name (output_name)")
    parser.add_argument(
        "--model", default="tiny-sd15", help="base model: a .safetensors checkpoint or tiny-sd15 / tiny-sdxl"
    )
    parser.add_argument("--tagger", default=None, help="WD tagger: a registry name or a folder with model.onnx")
    parser.add_argument("--seeds", default="1234,5678,9012", help="comma-separated seeds (more seeds, less noise)")
    parser.add_argument(
        "--flexibility", default=None, help="flexibility prompts separated by | (default: a built-in list)"
    )
    parser.add_argument("--drift", default=None, help="drift prompts separated by | (default: a built-in list)")
    parser.add_argument("--activation", default=None, help="activation text (default: from the newest file's .json)")
    parser.add_argument("--beta", type=float, default=None, help="F-beta's beta: above 1 favours fidelity (default 2)")
    parser.add_argument("--weight", type=float, default=1.0, help="LoRA weight for the renders")
    parser.add_argument("--width", type=int, default=None, help="image width (default: 512/1024; 128 for demo models)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20, help="sampling steps")
    parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the pick: copy it to NAME.safetensors, archive the rest"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _prompts(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if text is None:
        return default
    return tuple(p.strip() for p in text.split("|") if p.strip())


def sampler_renderer(
    bundle: Any, model: str, width: int | None = None, height: int | None = None, steps: int = 20
) -> Callable[..., list[Any]]:
    """The scoring's renderer on the standalone sampler: 128 px for the demo models, else the family's
    size (512 / 1024), ``steps`` sampling steps, the LoRA files applied at the given weight."""
    from pathlib import Path

    from lib_lora.standalone.models import is_builtin
    from lib_lora.standalone.sampler import generate

    size = 128 if is_builtin(model) else (1024 if bundle.family == "sdxl" else 512)

    def render(paths, prompts, weight, seed, events, stop) -> list[Any]:
        return generate(
            bundle, list(prompts), seed=seed, steps=steps, width=width or size, height=height or size,
            lora=[(Path(p), weight) for p in paths], stop=stop,
        )  # fmt: skip

    return render


def print_report(report: Any) -> None:
    """The score table, the core tags and the pick in words."""
    from lib_lora.jobs import scoring

    rows = [list(scoring.TABLE_HEADERS), *report.table_rows()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(f"core tags: {', '.join(report.core_tags) or '(none)'}")
    print(report.pick.reason)
    print(f"{report.images} images in {report.seconds:.0f} s")


def run(args: argparse.Namespace) -> int:
    import json
    import signal
    import sys

    import torch

    from lib_lora.common.errors import UserError
    from lib_lora.events import Events, StopToken
    from lib_lora.jobs import scoring
    from lib_lora.jobs.score_math import DEFAULT_BETA
    from lib_lora.standalone.models import load_model

    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--seeds {args.seeds!r} is not a comma-separated list of whole numbers.") from None
    settings = scoring.ScoreSettings(
        seeds=seeds,
        flexibility_prompts=_prompts(args.flexibility, scoring.DEFAULT_FLEXIBILITY_PROMPTS),
        drift_prompts=_prompts(args.drift, scoring.DEFAULT_DRIFT_PROMPTS),
        beta=DEFAULT_BETA if args.beta is None else args.beta,
        weight=args.weight,
    )
    files = scoring.lora_family(args.folder, args.name)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    quiet = args.json

    class CliEvents(Events):
        def message(self, level: str, text: str) -> None:
            if not quiet or level != "info":  # stderr: stdout stays the table or the JSON
                print({"warning": "warning: ", "error": "error: "}.get(level, "") + text, file=sys.stderr)

        def progress(self, stage: str, done: int, total: int, text: str = "") -> None:
            if stage == "scoring" and not quiet:
                print(f"scoring: {text}", file=sys.stderr)

    events = CliEvents()
    stop = StopToken()
    bundle = load_model(args.model, device=device)
    tagger = scoring.load_tag_scorer(args.tagger, events)
    render = sampler_renderer(bundle, args.model, args.width, args.height, args.steps)

    def on_sigint(signum, frame) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.request("Ctrl-C")
        print("Stopping after this image (Ctrl-C again to quit now)...", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        report = scoring.score_epochs(files, render, tagger, settings, events, stop, activation=args.activation)
    finally:
        signal.signal(signal.SIGINT, previous)
    kept = None
    if args.keep and report.best is not None:
        kept = scoring.keep_epoch(report.files[report.pick.best], args.folder, args.name)
    if args.json:
        data = report.to_json()
        if kept is not None:
            data["kept"] = {
                "file": str(kept.kept),
                "from": str(kept.source),
                "archived": [str(p) for p in kept.archived],
            }
        print(json.dumps(data, indent=1))
        return 0
    print_report(report)
    if kept is not None:
        print(
            f"kept {kept.source.name} as {kept.kept.name}; the other files are in {kept.kept.parent / scoring.ARCHIVE_DIR}"
        )
    return 0
