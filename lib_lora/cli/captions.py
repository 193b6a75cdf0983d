"""``python -m lib_lora captions``: batch-edit a dataset's captions, or show its tag statistics."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lib_lora.common.errors import UserError

HELP = """Batch-edit captions (activation tag, underscores, duplicates, replace, sort) or show tag statistics.

The edits apply to the images the filter matches (all images without --filter/--exclude), in this
order: --add-front, --add-end, --remove, --replace, --underscores-to-spaces, --dedupe, --sort,
--move-to-front. TAGS are comma-separated. With --add-front and --sort, the added tags stay first.
Only captions that change are written, each atomically; their previous versions are kept in
DIR/.caption-history/<date_time>.zip. A caption that is not UTF-8, is a folder or is read-only is
reported and left untouched (exit status 1).

examples:
  python -m lib_lora captions dataset --add-front "irene" --underscores-to-spaces --dedupe
  python -m lib_lora captions dataset --filter "1girl, solo" --remove "solo" --dry-run
  python -m lib_lora captions dataset --replace "(.+) hair" "\\1 hairstyle" --regex
  python -m lib_lora captions dataset --stats
"""

EDIT_FLAGS = (
    "add_front",
    "add_end",
    "remove",
    "replace",
    "underscores_to_spaces",
    "dedupe",
    "sort",
    "move_to_front",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="dataset folder (searched recursively: DIR/10_name/image.png)")
    parser.add_argument("--caption-extension", default=".txt", metavar="EXT", help="caption file extension (.txt)")
    parser.add_argument("--no-recursive", action="store_true", help="only the images directly in DIR")
    sel = parser.add_argument_group("which images")
    sel.add_argument("--filter", metavar="TAGS", default="", help="only images with these tags")
    sel.add_argument(
        "--filter-mode", choices=("and", "or"), default="and", help="images with all (and) or any (or) --filter tag"
    )
    sel.add_argument("--exclude", metavar="TAGS", default="", help="leave out images with any of these tags")
    ops = parser.add_argument_group("edits (applied in this order)")
    ops.add_argument("--add-front", metavar="TAGS", help="put these tags first (moved there if present; never twice)")
    ops.add_argument("--add-end", metavar="TAGS", help="append these tags where missing")
    ops.add_argument("--remove", metavar="TAGS", help="remove these tags")
    ops.add_argument(
        "--replace",
        nargs=2,
        metavar=("OLD", "NEW"),
        help="replace tag OLD with NEW (NEW may hold commas, or be empty to remove)",
    )
    ops.add_argument(
        "--regex", action="store_true", help="OLD is a regular expression matching a whole tag; NEW may use \\1"
    )
    ops.add_argument(
        "--whole-caption", action="store_true", help="replace inside the whole caption text ('tag, tag, ...')"
    )
    ops.add_argument("--underscores-to-spaces", action="store_true", help="long_hair -> long hair (kaomoji kept)")
    ops.add_argument("--dedupe", action="store_true", help="remove repeated tags (first one kept)")
    ops.add_argument(
        "--sort",
        choices=("alpha", "frequency", "confidence"),
        help="sort tags: A-Z, most frequent in the dataset first, or the tagger's confidence",
    )
    ops.add_argument("--move-to-front", metavar="TAGS", help="move these tags to the front where present")
    out = parser.add_argument_group("output")
    out.add_argument("--dry-run", action="store_true", help="show what would change and write nothing")
    out.add_argument("--json", action="store_true", help="print one JSON document (changed files, before/after)")
    out.add_argument(
        "--on-conflict",
        choices=("skip", "overwrite"),
        default="skip",
        help="a caption changed on disk meanwhile: leave it (skip, default) or overwrite it (backed up first)",
    )
    out.add_argument(
        "--stats", action="store_true", help="print the tag frequency table, captionless images, images per folder"
    )
    out.add_argument(
        "--top", type=int, default=None, metavar="N", help="with --stats: only the N most frequent tags (default: all)"
    )
    out.add_argument(
        "--threshold",
        type=float,
        default=0.9,
        metavar="F",
        help="with --stats: list tags in at least this share of images as pruning candidates (0.9)",
    )


def _edit_requested(args: argparse.Namespace) -> bool:
    return any(getattr(args, name) for name in EDIT_FLAGS)


def run(args: argparse.Namespace) -> int:
    from lib_lora.captions import CaptionSession, LoadOptions
    from lib_lora.events import Events

    if args.stats and _edit_requested(args):
        raise UserError("--stats only shows statistics; run the edits without --stats.")
    if not args.stats and not _edit_requested(args):
        raise UserError(
            "Nothing to do: give an edit (--add-front, --remove, --replace, --underscores-to-spaces, ...) or --stats."
        )
    if (args.regex or args.whole_caption) and not args.replace:
        raise UserError("--regex and --whole-caption only apply to --replace OLD NEW.")
    if args.top is not None and args.top < 1:
        raise UserError(
            f"--top {args.top} is not valid: give how many of the most frequent tags to show, at least 1 "
            "(leave --top out to show every tag)."
        )
    if args.top is not None and not args.stats:
        raise UserError("--top only applies to --stats.")
    if not 0 < args.threshold <= 1:
        raise UserError(f"--threshold {args.threshold} is not valid: it must be above 0 and at most 1 (0.9 is 90 %).")

    class _Console(Events):
        def message(self, level: str, text: str) -> None:
            if level != "info":
                print(f"{level}: {text}", file=sys.stderr)

    ops = _operations(args) if not args.stats else []  # validated (regex ...) before anything is read
    events = _Console()
    options = LoadOptions(caption_extension=args.caption_extension, recursive=not args.no_recursive)
    session = CaptionSession.open(args.dir, options, events)
    if not session.items:
        raise UserError(
            f"Found no images in {session.root} (looked for .png .jpg .jpeg .webp .bmp"
            f"{'' if args.no_recursive else ', in subfolders too'})."
        )
    if args.stats:
        return _stats(session, args)
    return _edit(session, args, ops, events)


def _operations(args: argparse.Namespace) -> list[Any]:
    from lib_lora.captions import (
        AddTags,
        Dedupe,
        MoveToFront,
        RemoveTags,
        ReplaceText,
        SortTags,
        UnderscoresToSpaces,
        parse_caption,
    )

    ops: list[Any] = []
    front = parse_caption(args.add_front or "")
    if args.add_front:
        if not front:
            raise UserError("--add-front holds no tags.")
        ops.append(AddTags(front, "front"))
    if args.add_end:
        ops.append(AddTags((args.add_end,), "end"))
    if args.remove:
        ops.append(RemoveTags((args.remove,)))
    if args.replace:
        old, new = args.replace
        ops.append(ReplaceText(old, new, regex=args.regex, whole_caption=args.whole_caption))
    if args.underscores_to_spaces:
        ops.append(UnderscoresToSpaces())
    if args.dedupe:
        ops.append(Dedupe())
    if args.sort:
        ops.append(SortTags(args.sort, keep_first=len(front)))
    if args.move_to_front:
        ops.append(MoveToFront((args.move_to_front,)))
    return ops


def _edit(session: Any, args: argparse.Namespace, ops: list[Any], events: Any) -> int:
    from lib_lora.captions import TagFilter, summary_line

    matched = session.set_filter(
        TagFilter.build(include=args.filter, include_mode=args.filter_mode, exclude=args.exclude)
    )
    steps = []
    for op in ops:
        result = session.apply(op)
        steps.append({"operation": result.label, "changed": result.changed})
    pending = session.pending()
    problems = [{"path": p.rel, "message": p.message} for p in session.problems]
    doc: dict[str, Any] = {
        "dataset": str(session.root),
        "images": len(session.items),
        "matched": len(matched),
        "dry_run": bool(args.dry_run),
        "operations": steps,
        "changed": [{"image": c.rel, "caption": c.caption, "before": c.before, "after": c.after} for c in pending],
        "backup": None,
        "conflicts": [],
        "problems": problems,
    }
    failed = bool(problems)
    if args.dry_run:
        if not args.json:
            _print_changes(pending, len(session.items), len(matched))
    else:
        save = session.save(on_conflict=args.on_conflict, events=events)
        written = set(save.written) | set(save.created)
        doc["changed"] = [c for c in doc["changed"] if c["caption"] in written]
        doc["backup"] = str(save.backup) if save.backup else None
        doc["conflicts"] = [
            {"caption": c.caption, "reason": c.reason, "resolution": c.resolution, "on_disk": c.on_disk, "ours": c.ours}
            for c in save.conflicts
        ]
        doc["problems"] += [{"path": p.rel, "message": p.message} for p in save.failed]
        failed = failed or not save.ok
        if not args.json:
            print(f"{len(matched)} of {len(session.items)} images matched; {summary_line(save)}")
    if args.json:
        print(json.dumps(doc, ensure_ascii=False, indent=1))
    return 1 if failed else 0


def _print_changes(pending: list[Any], total: int, matched: int) -> None:
    created = sum(1 for c in pending if c.before is None)
    new = f" ({created} new caption file{'s' if created != 1 else ''})" if created else ""
    print(f"dry run: {len(pending)} of {total} captions would change{new}; {matched} images matched; nothing written")
    for change in pending:
        print(change.caption)
        print(f"  - {change.before if change.before is not None else '(no caption file)'}")
        print(f"  + {change.after}")


def _stats(session: Any, args: argparse.Namespace) -> int:
    from lib_lora.captions import dataset_stats

    stats = dataset_stats(session.dataset)
    # a listing (nothing is removed): every common tag but the class tokens, the first tags included
    common = session.suggest_common_tags(args.threshold, visible_only=False, keep_tokens=0)
    tags = stats.tags[: args.top] if args.top is not None else stats.tags
    if args.json:
        doc = {
            "dataset": str(session.root),
            "images": stats.images,
            "captioned": stats.captioned,
            "distinct_tags": len(stats.tags),
            "tags": [{"tag": t.tag, "count": t.count, "share": round(t.fraction, 4)} for t in tags],
            "common_tags": [{"tag": t.tag, "count": t.count, "share": round(t.fraction, 4)} for t in common],
            "captionless": list(stats.captionless),
            "folders": [
                {
                    "folder": f.folder,
                    "images": f.images,
                    "captionless": f.captionless,
                    "repeats": f.repeats,
                    "class_tokens": f.class_tokens,
                }
                for f in stats.folders
            ],
            "problems": [{"path": p.rel, "message": p.message} for p in stats.problems],
        }
        print(json.dumps(doc, ensure_ascii=False, indent=1))
        return 0
    print(f"dataset: {session.root}")
    print(f"images: {stats.images} ({stats.captioned} captioned, {len(stats.captionless)} without caption)")
    print("images per folder:")
    print(f"  {'images':>6}  {'no caption':>10}  {'repeats':>7}  folder")
    for f in stats.folders:
        repeats = str(f.repeats) if f.repeats is not None else "-"
        print(f"  {f.images:>6}  {f.captionless:>10}  {repeats:>7}  {f.folder or '.'}")
    shown = f", {len(tags)} most frequent shown" if len(tags) < len(stats.tags) else ""
    print(f"tags ({len(stats.tags)} distinct{shown}):")
    print(f"  {'count':>6}  {'share':>6}  tag")
    for t in tags:
        print(f"  {t.count:>6}  {t.fraction:>6.1%}  {t.tag}")
    if common:
        listed = ", ".join(f"{t.tag} ({t.fraction:.0%})" for t in common)
        print(f"in at least {args.threshold:.0%} of images (candidates to prune for the activation tag): {listed}")
    if stats.captionless:
        print("images without caption:")
        for rel in stats.captionless:
            print(f"  {rel}")
    if stats.problems:
        print("problems:")
        for p in stats.problems:
            print(f"  {p.message}")
    return 0
