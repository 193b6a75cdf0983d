"""``python -m lib_lora import``: booru search -> dataset folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lib_lora.common.errors import UserError

HELP = """Download images and their tags from a booru into a dataset folder.

Sites: danbooru, gelbooru (needs --api-key and --user: gelbooru.com -> My Account -> Options ->
API Access Credentials), safebooru (and other Gelbooru 0.2 sites via --base-url), moebooru
(yande.re by default; konachan with --base-url https://konachan.com or the site name konachan).

Images land in OUT/<repeats>_<name>/ as <md5>.<ext>, each with a <md5>.txt caption made from the
post's tags (characters, copyrights and general tags; meta tags dropped; underscores -> spaces),
unless --captions none. A booru-archive.json in OUT remembers what was downloaded, so running
the same command again downloads nothing new, and an image already fetched from another site is
not fetched twice. Requests are paced (about one per second per site) and retried politely.

Danbooru lets anonymous users search only 2 tags at a time; metatags such as rating:, score:,
width:, height:, status: and md5: are free. Use --rating, --min-score, --min-width/--min-height
and --exclude to filter instead.

examples:
  python -m lib_lora import danbooru "irene_(kanniiepan)" --out datasets/irene --name Irene --limit 100
  python -m lib_lora import safebooru "hakurei_reimu solo" --out datasets/reimu --rating g,s --dry-run
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("site", help="danbooru, gelbooru, safebooru or moebooru (also: yandere, konachan)")
    parser.add_argument("tags", help='the tag search, quoted, e.g. "irene_(kanniiepan) solo"')
    parser.add_argument("--out", required=True, type=Path, help="the dataset folder (its N_name subfolder is created)")
    parser.add_argument("--name", help="class tokens of the subfolder (default: the first tag without its qualifier)")
    parser.add_argument("--repeats", type=int, default=1, help="repeats per epoch, the N of N_name (default 1)")
    parser.add_argument("--limit", type=int, default=100, help="at most this many posts (default 100)")
    parser.add_argument("--rating", default="", help="keep only these ratings, e.g. g,s (g general, s sensitive, "
                        "q questionable, e explicit)")  # fmt: skip
    parser.add_argument("--min-width", type=int, default=0, help="skip images narrower than this")
    parser.add_argument("--min-height", type=int, default=0, help="skip images shorter than this")
    parser.add_argument("--min-score", type=int, default=None, help="skip posts with a lower score")
    parser.add_argument("--exclude", action="append", default=[], metavar="TAGS",
                        help="skip posts with any of these tags (comma-separated; repeatable)")  # fmt: skip
    parser.add_argument("--captions", choices=("booru", "none"), default="booru",
                        help="write captions from the booru tags (default) or none (leave it to the tagger)")  # fmt: skip
    parser.add_argument("--artist-tags", action="store_true", help="keep artist tags in captions (style LoRAs)")
    parser.add_argument("--quality-tags", action="store_true", help="keep highres/absurdres/lowres in captions")
    parser.add_argument("--rating-tags", action="store_true", help="add the rating as words (safe, nsfw...)")
    parser.add_argument("--trigger", default="", help="a trigger word written first in every caption")
    parser.add_argument("--metadata", action="store_true", help="also save each post as <md5>.json")
    parser.add_argument("--base-url", help="the site's address, for a mirror or your own instance")
    parser.add_argument("--api-key", help="API key (Danbooru: Profile -> API Key; Gelbooru: API Access Credentials)")
    parser.add_argument("--user", help="login name (Danbooru, Moebooru) or numeric user ID (Gelbooru)")
    parser.add_argument("--dry-run", action="store_true", help="search and list the posts, download nothing")
    parser.add_argument("--json", action="store_true", help="print one JSON document with the result")


def default_name(tags: str) -> str:
    """``"irene_(kanniiepan) solo"`` -> ``"irene"``: the first plain tag, qualifier and underscores dropped."""
    for term in tags.split():
        if term.startswith(("-", "~")) or ":" in term:
            continue
        base = term.split("_(", 1)[0] if "_(" in term else term
        name = base.replace("_", " ").strip()
        if name and all(c not in name for c in "/\\*?"):
            return name
    return ""


def run(args: argparse.Namespace) -> int:
    from lib_lora.events import StopToken
    from lib_lora.importer.booru_tags import CaptionOptions
    from lib_lora.importer.download import ImportOptions, import_booru, search

    if not args.tags.strip():  # said first: without tags there is no default --name either
        raise UserError('No tags to search for: give the booru tags, e.g. "irene_(kanniiepan)".')
    name = args.name if args.name is not None else default_name(args.tags)
    if not name:
        raise UserError("Give the subfolder's class tokens with --name (e.g. --name Irene).")
    exclude = tuple(t.strip() for item in args.exclude for t in item.split(",") if t.strip())
    options = ImportOptions(
        site=args.site,
        tags=args.tags,
        out=args.out,
        name=name,
        repeats=args.repeats,
        limit=args.limit,
        ratings=args.rating,
        min_width=args.min_width,
        min_height=args.min_height,
        min_score=args.min_score,
        exclude_tags=exclude,
        captions=args.captions,
        caption=CaptionOptions(
            artist=args.artist_tags,
            quality=args.quality_tags,
            rating=args.rating_tags,
            prefix=(args.trigger.strip(),) if args.trigger.strip() else (),
        ),
        metadata=args.metadata,
        base_url=args.base_url,
        api_key=args.api_key,
        user=args.user,
    )
    events = console_events(quiet=args.json)
    stop = StopToken()
    if args.dry_run:
        found = search(options, events, stop)
        if args.json:
            posts = [
                {
                    "post": p.key,
                    "md5": p.md5,
                    "url": p.page_url,
                    "file_url": p.file_url,
                    "width": p.width,
                    "height": p.height,
                    "rating": p.rating,
                    "score": p.score,
                }  # fmt: skip
                for p in found.posts
            ]
            print(json.dumps({"site": found.site, "query": found.query, "posts": posts, "skipped": found.skipped}))
        else:
            for p in found.posts:
                print(f"{p.key}\t{p.width}x{p.height}\t{p.rating}\t{p.score}\t{p.page_url}")
            print(f"{len(found.posts)} posts would be imported into {options.folder}", file=sys.stderr)
        return 0
    result = import_booru(options, events, stop)
    events.close()
    if args.json:
        print(json.dumps(result.to_dict()))
    if result.failed:
        print(f"{len(result.failed)} file(s) could not be downloaded; run the same command again to retry them.",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def console_events(quiet: bool = False):
    """Events for a terminal: warnings and summaries on stderr, a tqdm bar for progress when
    stderr is a terminal (``quiet``: warnings only, for --json). Shared with the dedupe verb."""
    from lib_lora.events import Events

    class ConsoleEvents(Events):
        def __init__(self) -> None:
            self._bar = None
            self._stage = ""
            self._tty = sys.stderr.isatty()

        def message(self, level: str, text: str) -> None:
            if quiet and level == "info":
                return
            line = text if level == "info" else f"{level}: {text}"
            if self._bar is not None:
                self._bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr)

        def progress(self, stage: str, done: int, total: int, text: str = "") -> None:
            if quiet or not self._tty:
                return
            if stage != self._stage or self._bar is None:
                self.close()
                from tqdm import tqdm

                self._bar = tqdm(total=total or None, desc=stage, file=sys.stderr, leave=False)
                self._stage = stage
            bar = self._bar
            if total and bar.total != total:
                bar.total = total
            bar.n = done
            if text:
                bar.set_postfix_str(text[-40:], refresh=False)
            bar.refresh()

        def close(self) -> None:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    return ConsoleEvents()
