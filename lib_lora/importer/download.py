"""Search a booru and download the results into a dataset folder.

Entry points for every front end (CLI, Gradio panel):

- :func:`search` -- the posts a search would import (for a preview), with the skip counts;
- :func:`import_booru` -- search and download (or :func:`download_posts` for posts already found).

Downloads are resumable and never leave a half-written image behind: bytes go to
``<md5>.part`` (resumed with ``Range``), the size, image signature and md5 are checked, the
caption and sidecar are written atomically, and only then is the part renamed to ``<md5>.<ext>``
(the extension taken from the file's signature, the name never from the server). A JSON archive in
the dataset folder remembers every post (``<site>:<id>``) and every md5 downloaded, so a second
run, or the same image on another site, downloads nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lib_lora.common.errors import UserError
from lib_lora.common.fsutil import atomic_write_text, replace_with_retry, write_error
from lib_lora.common.layout import parse_subset_name, too_many_repeats
from lib_lora.events import Events, StopRequested, StopToken
from lib_lora.importer.booru_tags import CaptionOptions, caption_text
from lib_lora.importer.clients import (
    SKIP_REASONS,
    BooruClient,
    Post,
    SearchFilters,
    make_client,
    parse_ratings,
    skip_reason,
)
from lib_lora.importer.http import (
    NETWORK_ERRORS,
    HttpClient,
    HttpError,
    NetworkError,
    NotAWebAddress,
    describe_error,
    looks_like_html,
)

ARCHIVE_NAME = "booru-archive.json"
PART_SUFFIX = ".part"
_CHUNK = 64 * 1024
_MAX_CONSECUTIVE_NETWORK_FAILURES = 5
_ARCHIVE_EVERY = 20  # archive writes: every 20 new files and at the end (the file grows with the dataset)
# A file may be at most its declared size plus a little (sites round, CDNs re-encode metadata), and
# never more than the hard ceiling (Danbooru's own upload limit is 100 MB): a hostile server that
# sends more is cut off and its part removed, instead of filling the disk.
SIZE_SLACK_RATIO = 0.10
SIZE_SLACK_BYTES = 1 << 20
MAX_FILE_BYTES = 256 << 20
# the most posts one import fetches: a LoRA dataset is tens to a few hundred images, and a typo such as
# 100000000 would otherwise search page after page for hours (and strain the site) before anyone noticed
MAX_LIMIT = 10_000


# ---------------------------------------------------------------------------------------------
# options and results
@dataclass
class ImportOptions:
    """Everything an import needs; a UI collects its fields into one of these."""

    site: str
    tags: str
    out: Path  # the dataset folder (parent of ``N_name``)
    name: str  # class tokens of the subset folder
    repeats: int = 1
    limit: int = 100
    ratings: frozenset[str] | str = frozenset()  # g, s, q, e; empty = all
    min_width: int = 0
    min_height: int = 0
    min_score: int | None = None
    exclude_tags: tuple[str, ...] = ()
    captions: str = "booru"  # "booru" | "none" (leave captions to the tagger)
    caption: CaptionOptions = field(default_factory=CaptionOptions)
    metadata: bool = False  # write the post as ``<md5>.json`` beside the image
    base_url: str | None = None
    api_key: str | None = None
    user: str | None = None  # login (Danbooru, Moebooru) or numeric user ID (Gelbooru)
    include_deleted: bool = False

    def filters(self) -> SearchFilters:
        ratings = self.ratings if isinstance(self.ratings, frozenset) else parse_ratings(self.ratings)
        return SearchFilters(
            ratings=ratings,
            min_width=max(0, int(self.min_width or 0)),
            min_height=max(0, int(self.min_height or 0)),
            min_score=self.min_score,
            exclude_tags=tuple(t.strip() for t in self.exclude_tags if t and t.strip()),
            include_deleted=self.include_deleted,
        )

    @property
    def folder(self) -> Path:
        return Path(self.out) / f"{self.repeats}_{self.name.strip()}"

    def validate(self) -> None:
        """Raise UserError for options that cannot work (before any request)."""
        if not self.tags or not self.tags.strip():
            raise UserError('No tags to search for: give the booru tags, e.g. "irene_(kanniiepan)".')
        if not isinstance(self.limit, int) or self.limit < 1:
            raise UserError(f"--limit must be a whole number of posts of at least 1, not {self.limit!r}.")
        if self.limit > MAX_LIMIT:
            raise UserError(too_many_images(f"--limit {self.limit:,}"))
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise UserError(f"--repeats must be a whole number of at least 1, not {self.repeats!r}.")
        problem = too_many_repeats(self.repeats)
        if problem:
            raise UserError(problem)
        # a negative minimum was once taken as no minimum without a word
        for option, value in (("--min-width", self.min_width), ("--min-height", self.min_height)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise UserError(f"{option} must be a whole number of pixels, 0 or more, not {value!r}.")
        name = (self.name or "").strip()
        if unusable_folder_name(name):
            raise UserError(
                f"--name '{self.name}' cannot be used as a folder name: give the class tokens, e.g. --name Irene."
            )
        if parse_subset_name(f"{self.repeats}_{name}") is None:
            raise UserError(f"'{self.repeats}_{name}' is not a valid dataset folder name (N_name).")
        if self.captions not in ("booru", "none"):
            raise UserError(f"--captions must be 'booru' or 'none', not '{self.captions}'.")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file, not a dataset folder.")
        self.filters()  # ratings parse


def too_many_images(what: str) -> str:
    """The sentence refusing an image count over :data:`MAX_LIMIT`; ``what`` names the field and its value."""
    return (
        f"{what} is more images than one import fetches (at most {MAX_LIMIT:,}): a LoRA usually needs "
        "20 to 300 good images; ask for fewer."
    )


def unusable_folder_name(name: str) -> bool:
    """True when the class tokens ``name`` cannot be one folder's name (empty, a path separator or
    drive colon, a leading dot)."""
    name = (name or "").strip()
    return not name or any(c in name for c in "/\\:") or name.startswith(".")


@dataclass
class SearchResult:
    """The posts a search would import, in site order, and why others were left out."""

    site: str
    query: str
    posts: list[Post]
    skipped: dict[str, int]
    stopped: bool = False

    def skipped_text(self) -> str:
        return ", ".join(f"{n} {SKIP_REASONS.get(k, k)}" for k, n in self.skipped.items() if n)


@dataclass
class ImportedFile:
    key: str
    md5: str
    image: Path
    caption: Path | None
    metadata: Path | None


@dataclass
class ImportResult:
    site: str
    query: str
    folder: Path
    found: int = 0  # posts that passed the filters (up to the limit)
    downloaded: list[ImportedFile] = field(default_factory=list)
    already_have: list[str] = field(default_factory=list)  # post keys skipped: archive / same md5 / file present
    skipped: dict[str, int] = field(default_factory=dict)  # filter reasons -> count
    failed: list[tuple[str, str]] = field(default_factory=list)  # (post key, reason)
    stopped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "query": self.query,
            "folder": str(self.folder),
            "found": self.found,
            "downloaded": [
                {
                    "post": f.key,
                    "md5": f.md5,
                    "image": str(f.image),
                    "caption": str(f.caption) if f.caption else None,
                    "metadata": str(f.metadata) if f.metadata else None,
                }
                for f in self.downloaded
            ],
            "already_have": list(self.already_have),
            "skipped": dict(self.skipped),
            "failed": [{"post": k, "reason": r} for k, r in self.failed],
            "stopped": self.stopped,
        }


class DownloadFailed(Exception):
    """One file could not be fetched; the import goes on with the next post.

    ``network`` is True when the site could not be reached at all (too many of those in a row
    abort the import); ``bad_content`` when what arrived was not the image (a web page, garbage,
    a wrong md5), which is worth one fresh try."""

    def __init__(self, message: str, network: bool = False, bad_content: bool = False) -> None:
        super().__init__(message)
        self.network = network
        self.bad_content = bad_content


# ---------------------------------------------------------------------------------------------
# the download archive
class DownloadArchive:
    """``<dataset>/booru-archive.json``: post keys and md5s already downloaded.

    Keyed by ``<site>:<id>`` (a post found again by another search is not fetched again) plus a
    global md5 set (the same image on another site is not fetched again). Written atomically.
    """

    def __init__(self, dataset: Path) -> None:
        self.path = Path(dataset) / ARCHIVE_NAME
        self.posts: dict[str, str] = {}
        self.files: dict[str, str] = {}
        self._dirty = False
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                posts, files = data.get("posts", {}), data.get("files", {})
                if not isinstance(posts, dict) or not isinstance(files, dict):
                    raise ValueError("bad shape")
            except (OSError, ValueError, AttributeError) as exc:
                raise UserError(
                    f"The download archive {self.path} is damaged and cannot be read.",
                    "Move it away (the next import then checks the files present by their md5 names).",
                ) from exc
            self.posts = {str(k): str(v) for k, v in posts.items()}
            self.files = {str(k): str(v) for k, v in files.items()}

    def has_post(self, key: str) -> bool:
        return key in self.posts

    def has_md5(self, md5: str) -> bool:
        return md5 in self.files

    def add(self, key: str, md5: str, relpath: str | None) -> None:
        if self.posts.get(key) != md5:
            self.posts[key] = md5
            self._dirty = True
        if md5 not in self.files or (relpath and self.files[md5] != relpath):
            self.files[md5] = relpath or self.files.get(md5, "")
            self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        data = {"version": 1, "posts": self.posts, "files": self.files}
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")
        self._dirty = False


def _existing_md5_files(dataset: Path) -> dict[str, Path]:
    """Images already in the dataset named ``<md5>.<ext>`` (any subset folder, one level deep)."""
    found: dict[str, Path] = {}
    if not dataset.is_dir():
        return found
    for folder in [dataset, *sorted(p for p in dataset.iterdir() if p.is_dir())]:
        with contextlib.suppress(OSError):
            for entry in folder.iterdir():
                stem, _, ext = entry.name.rpartition(".")
                if ext.lower() in ("jpg", "jpeg", "png", "webp") and _is_md5(stem) and entry.is_file():
                    found.setdefault(stem.lower(), entry)
    return found


def _is_md5(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdefABCDEF" for c in text)


# ---------------------------------------------------------------------------------------------
# file checks
def sniff_image_type(head: bytes) -> str | None:
    """The image type from a file's first bytes: jpg, png, webp, gif, avif, bmp; None if unknown."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "avif"
    if head.startswith(b"BM"):
        return "bmp"
    return None


_STILL_TYPES = ("jpg", "png", "webp")


def _disk_error(path: Path, exc: OSError) -> UserError:
    return write_error(
        path,
        exc,
        "Free some space and run the same import again; finished files are kept and the unfinished one was removed.",
    )


def _open_part(path: Path, mode: str) -> IO[bytes]:
    """Open a ``.part`` file for writing (a seam for tests that simulate a full disk)."""
    return open(path, mode)


def _content_range(headers: dict[str, str]) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` -> (100, 1000); unknown parts are None."""
    value = headers.get("content-range", "")
    if not value.lower().startswith("bytes"):
        return None, None
    spec = value[5:].strip()
    rng, _, total = spec.partition("/")
    start = None
    if "-" in rng:
        with contextlib.suppress(ValueError):
            start = int(rng.split("-", 1)[0])
    try:
        total_int = int(total) if total.strip() != "*" else None
    except ValueError:
        total_int = None
    return start, total_int


def size_cap(declared: int | None) -> int:
    """The most bytes a file may have: its declared size with slack, never above MAX_FILE_BYTES."""
    if not declared or declared <= 0:
        return MAX_FILE_BYTES
    return min(MAX_FILE_BYTES, int(declared * (1 + SIZE_SLACK_RATIO)) + SIZE_SLACK_BYTES)


def _too_large(size: int, cap: int, declared: int | None) -> DownloadFailed:
    said = f"the {declared / (1 << 20):.1f} MiB the site declared" if declared else "the size limit"
    return DownloadFailed(
        f"the server sent more than {cap / (1 << 20):.1f} MiB ({said} allows at most that; "
        f"got {size / (1 << 20):.1f} MiB or more), so the download was stopped and removed"
    )


def fetch_to_part(
    http: HttpClient,
    url: str,
    part: Path,
    expected_size: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> int:
    """Download ``url`` into ``part``, resuming what is there with ``Range``. Returns the size.

    A connection that drops mid-file is resumed from where it stopped (backoff 1, 2, 3, 4 s);
    ``416`` for a non-empty part means it is already complete. Raises :class:`DownloadFailed` for a
    file that cannot be had (4xx, a web page instead of the image, retries spent), UserError for a
    disk problem (the part is then removed), StopRequested when stopped (the part is kept).
    A file larger than :func:`size_cap` of ``expected_size`` (announced, or while it streams) is a
    DownloadFailed and its part is removed.
    """
    cap = size_cap(expected_size)
    attempt = 0
    while True:
        attempt += 1
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            response, resp_headers, _ = http.open(url, headers)
        except (NetworkError, HttpError) as exc:  # unreachable, or 5xx/429 until the retries ran out
            raise DownloadFailed(str(exc), network=True) from exc
        status = response.status
        total: int | None = None
        try:
            if have > cap:
                part.unlink(missing_ok=True)
                raise _too_large(have, cap, expected_size)
            if status == 416 and have:
                _, total = _content_range(resp_headers)
                if total is not None and total != have:
                    # the part is longer than the file: start again
                    part.unlink()
                    if attempt > http.retries:
                        raise DownloadFailed("the server refuses to resume the download (HTTP 416)")
                    continue
                return have
            if status == 200:
                mode, have = "wb", 0
                total = _int_or_none(resp_headers.get("content-length"))
            elif status == 206:
                start, total = _content_range(resp_headers)
                if start != have:  # the server resumed from elsewhere: start again
                    part.unlink(missing_ok=True)
                    if attempt > http.retries:
                        raise DownloadFailed("the server does not resume downloads where they stopped")
                    continue
                mode = "ab"
                if total is None:
                    length = _int_or_none(resp_headers.get("content-length"))
                    total = have + length if length is not None else None
            else:
                if 300 <= status < 400:
                    raise DownloadFailed(
                        f"HTTP {status}: a redirect to an address that is not downloaded (only http(s))"
                    )
                raise DownloadFailed(f"HTTP {status}" + (" (the file is gone)" if status in (404, 410) else ""))
            content_type = resp_headers.get("content-type", "").lower()
            if content_type.startswith(("text/", "application/json")):
                sample = response.read(512) or b""
                what = "a web page" if looks_like_html(sample) or "html" in content_type else f"'{content_type}'"
                raise DownloadFailed(f"the server sent {what} instead of the image", bad_content=True)
            if total is not None and total > cap:
                if mode == "ab":
                    part.unlink(missing_ok=True)
                raise _too_large(total, cap, expected_size)
            received, broke = _stream(response, part, mode, have, total, http, progress, cap)
            if broke == _OVER_CAP:
                part.unlink(missing_ok=True)
                raise _too_large(have + received, cap, expected_size)
        finally:
            with contextlib.suppress(*NETWORK_ERRORS):
                response.close()
        size = have + received
        complete = broke is None and (total is None or size >= total)
        if complete:
            if (total is not None and size > total) or (expected_size and total is None and size != expected_size):
                part.unlink(missing_ok=True)
                expected = total if total is not None else expected_size
                raise DownloadFailed(f"received {size} bytes instead of {expected}", bad_content=True)
            return size
        reason = broke or f"connection closed after {size} of {total} bytes"
        if attempt > http.retries:
            raise DownloadFailed(f"{reason}; gave up after {attempt} attempts (the partial file is kept)")
        http.backoff(attempt, f"Download interrupted ({reason})", url)


def _stream(
    response: Any,
    part: Path,
    mode: str,
    have: int,
    total: int | None,
    http: HttpClient,
    progress: Callable[[int, int | None], None] | None,
    cap: int = MAX_FILE_BYTES,
) -> tuple[int, str | None]:
    """Append the body to ``part``; (bytes received, why the connection broke or None).
    Stops with ``_OVER_CAP`` as the reason once the part would grow past ``cap`` bytes."""
    received = 0
    broke: str | None = None
    try:
        handle = _open_part(part, mode)
    except OSError as exc:
        raise _disk_error(part, exc) from exc
    try:
        while True:
            http.check_stop()
            try:
                chunk = response.read(_CHUNK)
            except NETWORK_ERRORS as exc:
                broke = describe_error(exc)
                break
            if not chunk:
                break
            if have + received + len(chunk) > cap:
                broke = _OVER_CAP
                break
            try:
                handle.write(chunk)
            except OSError as exc:
                raise _disk_error(part, exc) from exc
            received += len(chunk)
            if progress is not None:
                progress(have + received, total)
    finally:
        try:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        except OSError as exc:
            with contextlib.suppress(OSError):
                handle.close()
            raise _disk_error(part, exc) from exc
    return received, broke


_OVER_CAP = "over the size cap"


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_part(part: Path, expected_md5: str | None) -> str:
    """Check a complete ``.part``: an image signature we can train on and (when known) the md5.

    Returns the extension to use. Raises DownloadFailed (and removes the part) otherwise.
    """
    with open(part, "rb") as handle:
        head = handle.read(64)
    kind = sniff_image_type(head)
    if kind is None:
        what = "a web page" if looks_like_html(head) else "not an image"
        part.unlink(missing_ok=True)
        raise DownloadFailed(f"the file that arrived is {what}", bad_content=True)
    if kind not in _STILL_TYPES:
        part.unlink(missing_ok=True)
        raise DownloadFailed(f"the file that arrived is a {kind.upper()}, not a still image a trainer reads")
    if expected_md5:
        actual = _file_md5(part)
        if actual != expected_md5:
            part.unlink(missing_ok=True)
            raise DownloadFailed(
                f"the file that arrived does not match its md5 ({actual} instead of {expected_md5})", bad_content=True
            )
    return kind


# ---------------------------------------------------------------------------------------------
# search
def _make_http(options: ImportOptions, http: HttpClient | None, events: Events, stop: StopToken | None) -> HttpClient:
    if http is not None:
        if stop is not None and http.stop is None:
            http.stop = stop
        return http
    return HttpClient(login=options.user if options.api_key else None, stop=stop, events=events)


def make_site_client(options: ImportOptions, http: HttpClient) -> BooruClient:
    return make_client(options.site, http, base_url=options.base_url, login=options.user, api_key=options.api_key)


def iter_matching_posts(
    client: BooruClient,
    query: str,
    filters: SearchFilters,
    limit: int,
    skipped: dict[str, int],
    events: Events,
) -> Iterator[Post]:
    """Posts that pass ``filters``, up to ``limit``; counts the others in ``skipped``."""
    seen: set[int] = set()
    count = 0
    page_size = client.max_page_size  # full pages: fewer requests when many posts are left out
    for batch in client.pages(query, page_size):
        new = 0
        for post in batch:
            if post.id in seen:
                continue
            seen.add(post.id)
            new += 1
            reason = skip_reason(post, filters)
            if reason:
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            count += 1
            yield post
            if count >= limit:
                return
        events.progress("searching", count, limit, f"{count} posts found")
        if not new:
            return  # the site sent the same page again


def search(
    options: ImportOptions,
    events: Events | None = None,
    stop: StopToken | None = None,
    http: HttpClient | None = None,
) -> SearchResult:
    """The posts ``options`` would import (no download), e.g. for a preview grid."""
    events = events or Events()
    options.validate()
    http = _make_http(options, http, events, stop)
    client = make_site_client(options, http)
    query = options.tags.strip()
    client.check_query(query)
    skipped: dict[str, int] = {}
    posts: list[Post] = []
    result = SearchResult(client.site_key, query, posts, skipped)
    events.progress("searching", 0, options.limit, f"searching {client.label} for {query}")
    try:
        for post in iter_matching_posts(client, query, options.filters(), options.limit, skipped, events):
            posts.append(post)
    except StopRequested:
        result.stopped = True
    events.progress("searching", len(posts), options.limit, f"{len(posts)} posts found")
    if skipped:
        events.info(f"Left out: {result.skipped_text()}.")
    return result


# ---------------------------------------------------------------------------------------------
# download
def import_booru(
    options: ImportOptions,
    events: Events | None = None,
    stop: StopToken | None = None,
    http: HttpClient | None = None,
) -> ImportResult:
    """Search and download into ``<out>/<repeats>_<name>/``; see the module docstring."""
    events = events or Events()
    http = _make_http(options, http, events, stop)
    found = search(options, events, stop, http)
    if found.stopped:
        result = ImportResult(found.site, found.query, options.folder, found=len(found.posts), skipped=found.skipped)
        result.stopped = True
        return result
    return download_posts(options, found.posts, events, stop, http, skipped=found.skipped)


def download_posts(
    options: ImportOptions,
    posts: list[Post],
    events: Events | None = None,
    stop: StopToken | None = None,
    http: HttpClient | None = None,
    skipped: dict[str, int] | None = None,
) -> ImportResult:
    """Download ``posts`` (from :func:`search`, possibly a subset the user picked)."""
    events = events or Events()
    options.validate()
    http = _make_http(options, http, events, stop)
    dataset = Path(options.out)
    folder = options.folder
    site = posts[0].site_key if posts else options.site
    result = ImportResult(site, options.tags.strip(), folder, found=len(posts), skipped=dict(skipped or {}))
    archive = DownloadArchive(dataset)
    client = make_site_client(options, http)  # which hosts may serve the files (no request is made)
    present = _existing_md5_files(dataset)
    total = len(posts)
    network_failures = 0
    events.progress("downloading", 0, total, "")
    try:
        for index, post in enumerate(posts):
            http.check_stop()
            md5 = post.md5 or ""
            if archive.has_post(post.key) or archive.has_md5(md5) or md5 in present:
                if md5 in present and not archive.has_md5(md5):
                    archive.add(post.key, md5, _rel(present[md5], dataset))
                else:
                    archive.add(post.key, md5, None)
                result.already_have.append(post.key)
                events.progress("downloading", index + 1, total, f"{post.key}: already in the dataset")
                continue
            try:
                problem = client.file_url_problem(post.file_url) if post.file_url else None
                if problem:
                    raise DownloadFailed(problem)
                imported = _download_one(options, post, folder, http, events, index, total)
            except NotAWebAddress as exc:
                result.failed.append((post.key, str(exc)))
                events.warning(f"Skipped {post.key}: {exc}")
                continue
            except DownloadFailed as exc:
                result.failed.append((post.key, str(exc)))
                events.warning(f"Skipped {post.key}: {exc}.")
                if exc.network:
                    network_failures += 1
                    if network_failures >= _MAX_CONSECUTIVE_NETWORK_FAILURES:
                        raise NetworkError(
                            f"Gave up after {network_failures} downloads in a row failed: {exc}.",
                            "Run the same import again later; finished files are kept.",
                        ) from exc
                continue
            except (UserError, StopRequested):
                raise  # a full disk, a stop, the site unreachable: the whole import's business
            except Exception as exc:  # one odd post never ends the import
                reason = f"unexpected {type(exc).__name__}: {exc}"
                result.failed.append((post.key, reason))
                events.warning(f"Skipped {post.key}: {reason}.")
                continue
            network_failures = 0
            archive.add(post.key, md5, _rel(imported.image, dataset))
            present[md5] = imported.image
            if len(result.downloaded) % _ARCHIVE_EVERY == _ARCHIVE_EVERY - 1:
                archive.save()  # now and then; a file saved meanwhile is recognised by its md5 name
            result.downloaded.append(imported)
            events.progress("downloading", index + 1, total, imported.image.name)
    except StopRequested:
        result.stopped = True
        events.info("Stopped; finished files are kept and an unfinished download resumes next time.")
    finally:
        with contextlib.suppress(UserError):
            archive.save()
    n_new = len(result.downloaded)
    summary = f"{n_new} new image{'s' if n_new != 1 else ''} in {folder}"
    if result.already_have:
        summary += f", {len(result.already_have)} already there"
    if result.failed:
        summary += f", {len(result.failed)} failed"
    events.info(summary + ".")
    return result


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _download_one(
    options: ImportOptions,
    post: Post,
    folder: Path,
    http: HttpClient,
    events: Events,
    index: int,
    total: int,
) -> ImportedFile:
    if not post.md5 or not post.file_url:
        raise DownloadFailed("the site hides this post's file from this account")
    md5 = post.md5
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(folder, exc) from exc
    part = folder / (md5 + PART_SUFFIX)

    def progress(done: int, size: int | None) -> None:
        events.progress("downloading", index, total, f"{post.key}: {done // 1024} KiB")

    restarted = False
    while True:
        try:
            fetch_to_part(http, post.file_url, part, post.file_size, progress)
            ext = verify_part(part, md5)
            break
        except DownloadFailed as exc:
            # what arrived was not the image (a hiccup, or a stale part): one fresh try
            if exc.bad_content and not restarted:
                restarted = True
                part.unlink(missing_ok=True)
                http.backoff(1, f"Bad download for {post.key} ({exc})", post.file_url)
                continue
            raise
        except UserError:
            part.unlink(missing_ok=True)  # disk full: free the space, leave nothing half-written
            raise
    image = folder / f"{md5}.{ext}"
    caption = folder / f"{md5}.txt" if options.captions == "booru" else None
    metadata = folder / f"{md5}.json" if options.metadata else None
    written: list[Path] = []
    try:
        if caption is not None:
            atomic_write_text(caption, caption_text(post.tags, post.rating, options.caption))
            written.append(caption)
        if metadata is not None:
            atomic_write_text(metadata, json.dumps(_metadata(post), indent=1, ensure_ascii=False) + "\n")
            written.append(metadata)
        try:
            replace_with_retry(part, image)
        except OSError as exc:
            raise _disk_error(image, exc) from exc
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
        raise
    return ImportedFile(post.key, md5, image, caption, metadata)


def _metadata(post: Post) -> dict[str, Any]:
    raw = {k: v for k, v in post.raw.items() if not k.startswith("_")}
    return {
        "site": post.site,
        "post": post.key,
        "id": post.id,
        "url": post.page_url,
        "md5": post.md5,
        "rating": post.rating,
        "score": post.score,
        "width": post.width,
        "height": post.height,
        "source": post.source,
        "tags": post.tags.to_dict(),
        "downloaded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "raw": raw,
    }
