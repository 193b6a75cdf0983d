"""Booru API clients: Danbooru, Gelbooru, Gelbooru 0.2 sites (safebooru.org) and Moebooru.

Each client turns a tag search into pages of :class:`Post` (one shape for every site) and knows
its site's paging, authentication and error messages. Filtering (rating, size, score, excluded
tags, hidden/deleted posts, file types) is shared: :func:`skip_reason`.

Facts: reference/booru-and-dedupe.md sections 1-4.
"""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lib_lora.common.errors import UserError
from lib_lora.importer.booru_tags import PostTags, split_booru_tags
from lib_lora.importer.http import HttpClient, HttpError, basic_auth

# still images a trainer can read; gif/video/zip/ugoira/swf/avif are skipped
STILL_EXTENSIONS: frozenset[str] = frozenset({"jpg", "jpeg", "png", "webp"})

# Danbooru metatags that do not count toward the anonymous 2-tag limit (``order:`` does count)
DANBOORU_FREE_METATAGS: frozenset[str] = frozenset(
    {
        "status", "rating", "limit", "id", "date", "age", "filesize", "filetype", "parent", "child", "md5",
        "width", "height", "duration", "mpixels", "ratio", "score", "upvote", "downvotes", "favcount",
        "embedded", "tagcount", "pixiv_id", "pixiv",
    }
)  # fmt: skip
DANBOORU_ANONYMOUS_TAG_LIMIT = 2

_TAG_TYPES = {0: "general", 1: "artist", 3: "copyright", 4: "character", 5: "meta"}
_TAG_TYPE_WORDS = {
    "general": "general",
    "tag": "general",
    "artist": "artist",
    "copyright": "copyright",
    "character": "character",
    "meta": "meta",
    "metadata": "meta",
    "circle": "artist",  # moebooru: a group of artists
    "faults": "meta",  # moebooru: image faults (jpeg artifacts...)
}


@dataclass
class Post:
    """One post, in the same shape whatever the site.

    ``rating`` is ``g``/``s``/``q``/``e`` (Danbooru's letters), ``safe`` on sites with the old
    three-level scheme (Moebooru, safebooru), or ``""`` when unknown. ``md5`` and ``file_url`` are
    None for posts the site hides from this account.
    """

    site: str
    site_key: str
    id: int
    md5: str | None
    file_url: str | None
    file_ext: str
    width: int
    height: int
    rating: str
    score: int
    tags: PostTags
    file_size: int | None = None
    preview_url: str | None = None
    source: str = ""
    parent_id: int | None = None
    deleted: bool = False
    banned: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        """The download-archive key ``<site>:<id>``."""
        return f"{self.site_key}:{self.id}"

    @property
    def page_url(self) -> str:
        return str(self.raw.get("_page_url", ""))


@dataclass(frozen=True)
class SearchFilters:
    """Which posts to keep. ``ratings`` holds Danbooru letters (g, s, q, e); empty = all."""

    ratings: frozenset[str] = frozenset()
    min_width: int = 0
    min_height: int = 0
    min_score: int | None = None
    exclude_tags: tuple[str, ...] = ()
    include_deleted: bool = False


SKIP_REASONS = {
    "hidden": "hidden from this account (no file URL or md5)",
    "deleted": "deleted",
    "banned": "banned",
    "file type": "not a still image (video, gif, zip/ugoira...)",
    "rating": "rating not wanted",
    "too small": "smaller than the minimum size",
    "score": "score below the minimum",
    "excluded tag": "has an excluded tag",
}


def skip_reason(post: Post, filters: SearchFilters) -> str | None:
    """Why ``post`` is not imported (a key of SKIP_REASONS), or None to keep it."""
    if not post.file_url or not post.md5:
        return "hidden"
    if post.deleted and not filters.include_deleted:
        return "deleted"
    if post.banned:
        return "banned"
    if post.file_ext.lower() not in STILL_EXTENSIONS:
        return "file type"
    if filters.ratings and not rating_matches(post.rating, filters.ratings):
        return "rating"
    if (filters.min_width and 0 < post.width < filters.min_width) or (
        filters.min_height and 0 < post.height < filters.min_height
    ):
        return "too small"
    if filters.min_score is not None and post.score < filters.min_score:
        return "score"
    if filters.exclude_tags:
        have = {t.lower() for t in post.tags.all()}
        if any(t.lower() in have for t in filters.exclude_tags):
            return "excluded tag"
    return None


def rating_matches(rating: str, wanted: Iterable[str]) -> bool:
    """Old-scheme ``safe`` counts as both ``g`` and ``s``; an unknown rating never matches."""
    wanted = set(wanted)
    if rating == "safe":
        return bool(wanted & {"g", "s"})
    return rating in wanted


RATING_LETTERS = {
    "g": "g",
    "general": "g",
    "s": "s",
    "sensitive": "s",
    "q": "q",
    "questionable": "q",
    "e": "e",
    "explicit": "e",
    "safe": "g",  # as a filter word, "safe" means general
}


def parse_ratings(text: str | Iterable[str] | None) -> frozenset[str]:
    """``"g,s"`` / ``["general", "q"]`` -> {"g", "s"}; raises UserError for an unknown rating."""
    if not text:
        return frozenset()
    items = text.replace(" ", ",").split(",") if isinstance(text, str) else list(text)
    out = set()
    for item in items:
        item = item.strip().lower()
        if not item:
            continue
        if item not in RATING_LETTERS:
            raise UserError(
                f"Unknown rating '{item}': use g (general), s (sensitive), q (questionable) or e (explicit), "
                "comma-separated."
            )
        out.add(RATING_LETTERS[item])
    return frozenset(out)


def normalize_base_url(url: str, option: str = "--base-url") -> str:
    """``https://host/path/`` -> ``https://host/path``; a UserError for anything that is not an
    http(s) address."""
    text = (url or "").strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise UserError(
            f"{option} '{url}' is not a web address: use the site's root such as https://danbooru.donmai.us."
        )
    try:
        _ = parts.port  # a non-numeric port raises here
    except ValueError as exc:
        raise UserError(f"{option} '{url}' has an invalid port number.") from exc
    if any(c.isspace() for c in parts.netloc):
        raise UserError(f"{option} '{url}' contains spaces in the host name.")
    return urllib.parse.urlunsplit((parts.scheme.lower(), parts.netloc, parts.path.rstrip("/"), "", ""))


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _ext_from_url(url: str | None) -> str:
    if not url:
        return ""
    path = urllib.parse.urlsplit(url).path
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _clean_md5(value: Any) -> str | None:
    text = str(value or "").strip().lower()
    if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
        return text
    return None


class BooruClient:
    """Base class: one site (base URL), one HTTP client, pages of posts."""

    site: ClassVar[str] = ""
    label: ClassVar[str] = ""
    default_base_url: ClassVar[str] = ""
    max_page_size: ClassVar[int] = 100

    def __init__(
        self,
        http: HttpClient,
        base_url: str | None = None,
        login: str | None = None,
        api_key: str | None = None,
    ) -> None:
        self.http = http
        self.base_url = normalize_base_url(base_url) if base_url else self.default_base_url
        self.login = (login or "").strip() or None
        self.api_key = (api_key or "").strip() or None
        self.host = urllib.parse.urlsplit(self.base_url).netloc.lower()
        default_host = urllib.parse.urlsplit(self.default_base_url).netloc.lower()
        self.site_key = self.site if self.host == default_host else f"{self.site}@{self.host}"

    # the domains the site's API names for its files (reference/booru-and-dedupe.md), by default host
    default_file_domains: ClassVar[dict[str, tuple[str, ...]]] = {}

    @property
    def file_domains(self) -> tuple[str, ...]:
        """Domains a post's file may come from: the API's own host and its subdomains, and the
        site's CDN as the API names it (Danbooru: ``cdn.donmai.us``; Gelbooru: ``img3.gelbooru.com``)."""
        hostname = (urllib.parse.urlsplit(self.base_url).hostname or "").lower()
        return (hostname, *self.default_file_domains.get(hostname, ()))

    def file_url_problem(self, url: str | None) -> str | None:
        """Why a post's file address is not downloaded (None when it is fine): only http(s), only the
        site's own hosts; the API's own host also on its own port."""
        parts = urllib.parse.urlsplit(str(url or ""))
        if parts.scheme.lower() not in ("http", "https"):
            return f"its file address is not a web address ({parts.scheme or 'no'} scheme); only http(s) is downloaded"
        try:
            hostname, port = (parts.hostname or "").lower(), parts.port
        except ValueError:
            return "its file address has an invalid port"
        base = urllib.parse.urlsplit(self.base_url)
        default = {"http": 80, "https": 443}[parts.scheme.lower()]
        if hostname == (base.hostname or "").lower() and (port or default) == (
            base.port or _DEFAULT_PORTS[base.scheme]
        ):
            return None
        if (port or default) == default and any(
            hostname == domain or hostname.endswith("." + domain) for domain in self.file_domains
        ):
            return None
        return f"its file is on {hostname or 'no host'}, not on {self.label}'s own servers ({', '.join(self.file_domains)})"

    def check_query(self, query: str) -> None:
        """Raise UserError for a query the site would refuse (before any request)."""

    def pages(self, query: str, page_size: int) -> Iterator[list[Post]]:
        """Batches of posts, newest first, until the site has no more."""
        raise NotImplementedError

    def url(self, path: str) -> str:
        return self.base_url + path


class DanbooruClient(BooruClient):
    site = "danbooru"
    label = "Danbooru"
    default_base_url = "https://danbooru.donmai.us"
    default_file_domains: ClassVar[dict[str, tuple[str, ...]]] = {"danbooru.donmai.us": ("donmai.us",)}
    max_page_size = 200

    def __init__(
        self, http: HttpClient, base_url: str | None = None, login: str | None = None, api_key: str | None = None
    ):
        super().__init__(http, base_url, login, api_key)
        if bool(self.login) != bool(self.api_key):
            raise UserError(
                "Danbooru needs both --user (your user name) and --api-key (Profile -> API Key), or neither."
            )

    def _headers(self) -> dict[str, str]:
        return {"Authorization": basic_auth(self.login, self.api_key)} if self.login and self.api_key else {}

    @staticmethod
    def counted_terms(query: str) -> list[str]:
        """The search terms that count toward Danbooru's tag limit (free metatags do not)."""
        counted = []
        for term in query.split():
            bare = term.lstrip("-~")
            name, sep, _ = bare.partition(":")
            if sep and name.lower() in DANBOORU_FREE_METATAGS:
                continue
            counted.append(term)
        return counted

    def check_query(self, query: str) -> None:
        if self.login:
            return  # the account's level decides; the server answers 422 if it is too many
        counted = self.counted_terms(query)
        if len(counted) > DANBOORU_ANONYMOUS_TAG_LIMIT:
            raise UserError(_danbooru_tag_limit_message(counted))

    def pages(self, query: str, page_size: int) -> Iterator[list[Post]]:
        limit = max(1, min(page_size, self.max_page_size))
        # the b<id> cursor has no depth cap but forces id order; an explicit order: needs page numbers
        numbered = any(t.lower().startswith("order:") for t in query.split())
        cursor: int | None = None
        page = 1
        while True:
            params: dict[str, Any] = {"tags": query, "limit": limit}
            if numbered:
                params["page"] = page
            elif cursor is not None:
                params["page"] = f"b{cursor}"
            try:
                data = self.http.get_json(self.url("/posts.json"), params, self._headers(), site=self.label)
            except HttpError as exc:
                if exc.status == 410:  # "You cannot go beyond page 1000."
                    self.http.events.warning(
                        f"Danbooru stops numbered pages at page {page - 1}: {exc.server_message or 'HTTP 410'}"
                    )
                    return
                raise self._explain(exc, query) from exc
            if isinstance(data, dict) and data.get("success") is False:
                raise UserError(f"Danbooru refused the search: {data.get('message') or data.get('error')}.")
            if data is None:
                data = []
            if not isinstance(data, list):
                raise UserError(
                    f"Danbooru answered {self.url('/posts.json')} with something other than a list of posts."
                )
            if not data:
                return
            posts = [self._post(item) for item in data if isinstance(item, dict) and "id" in item]
            yield posts
            ids = [p.id for p in posts]
            if numbered:
                page += 1
            elif ids:
                lowest = min(ids)
                if cursor is not None and lowest >= cursor:
                    return  # the server ignored the cursor; do not loop forever
                cursor = lowest
            else:
                return

    def _explain(self, exc: HttpError, query: str) -> UserError:
        if exc.status == 422 and "tag" in exc.server_message.lower():
            return UserError(_danbooru_tag_limit_message(self.counted_terms(query), exc.server_message))
        if exc.status == 401:
            return UserError(
                "Danbooru rejected the login (HTTP 401): check --user (your user name, not e-mail) and "
                "--api-key (Profile -> API Key; never your password)."
            )
        if exc.status == 403:
            return UserError(
                "Danbooru refused the request (HTTP 403): the API key lacks the permission to read posts, "
                "or your account/IP is blocked.",
                exc.server_message or None,
            )
        return exc

    def _post(self, item: dict[str, Any]) -> Post:
        file_url = item.get("file_url") or None
        ext = str(item.get("file_ext") or _ext_from_url(file_url)).lower()
        tags = PostTags(
            general=split_booru_tags(item.get("tag_string_general")),
            character=split_booru_tags(item.get("tag_string_character")),
            copyright=split_booru_tags(item.get("tag_string_copyright")),
            artist=split_booru_tags(item.get("tag_string_artist")),
            meta=split_booru_tags(item.get("tag_string_meta")),
        )
        if not tags.all() and item.get("tag_string"):
            tags = PostTags(general=split_booru_tags(item.get("tag_string")), categorized=False)
        post_id = _int(item.get("id"))
        raw = dict(item)
        raw["_page_url"] = f"{self.base_url}/posts/{post_id}"
        return Post(
            site=self.site,
            site_key=self.site_key,
            id=post_id,
            md5=_clean_md5(item.get("md5")),
            file_url=file_url,
            file_ext=ext,
            width=_int(item.get("image_width")),
            height=_int(item.get("image_height")),
            rating=str(item.get("rating") or "").lower()[:1],
            score=_int(item.get("score")),
            tags=tags,
            file_size=_int(item.get("file_size"), 0) or None,
            preview_url=item.get("preview_file_url") or None,
            source=str(item.get("source") or ""),
            parent_id=_int(item.get("parent_id"), 0) or None,
            deleted=bool(item.get("is_deleted")),
            banned=bool(item.get("is_banned")),
            raw=raw,
        )


def _danbooru_tag_limit_message(counted: list[str], server: str = "") -> str:
    listed = " ".join(counted)
    said = f' (Danbooru says: "{server}")' if server else ""
    return (
        f"Danbooru lets anonymous and Member accounts search at most {DANBOORU_ANONYMOUS_TAG_LIMIT} tags at a time, "
        f"and '{listed}' counts {len(counted)}{said}. Metatags such as rating:, score:, width:, height:, "
        "status:, filetype:, date:, id: and md5: are free (order: is not); use --rating, --min-score, "
        "--min-width/--min-height and --exclude instead of extra tags, or log in with --user and --api-key "
        "(Gold accounts may use 6 tags)."
    )


class GelbooruClient(BooruClient):
    """gelbooru.com: the dapi JSON API; every request needs api_key + user_id since 2025."""

    site = "gelbooru"
    label = "Gelbooru"
    default_base_url = "https://gelbooru.com"
    max_page_size = 100
    depth_cap = 20000  # results beyond pid*limit ~ 20,000 come back empty
    categorized_tags = True  # one tag-type lookup per page of posts

    def __init__(
        self, http: HttpClient, base_url: str | None = None, login: str | None = None, api_key: str | None = None
    ):
        super().__init__(http, base_url, login, api_key)
        self._tag_types: dict[str, str] = {}
        if self.login is not None and not self.login.isdigit():
            raise UserError(
                f"{self.label} wants the numeric user ID for --user, not '{self.login}' "
                "(My Account -> Options -> API Access Credentials shows it)."
            )
        if self.requires_credentials() and not (self.login and self.api_key):
            raise UserError(
                f"{self.label} requires an API key and user ID for every request.",
                "Log in at https://gelbooru.com, open My Account -> Options -> API Access Credentials, and pass "
                "--api-key KEY --user ID (the numeric user ID).",
            )

    def requires_credentials(self) -> bool:
        return self.host.endswith("gelbooru.com")

    def _auth_params(self) -> dict[str, str]:
        if self.login and self.api_key:
            return {"api_key": self.api_key, "user_id": self.login}
        return {}

    def _api(self, params: dict[str, Any]) -> Any:
        params = {"page": "dapi", "json": 1, **params, **self._auth_params()}
        try:
            return self.http.get_json(self.url("/index.php"), params, site=self.label)
        except HttpError as exc:
            if exc.status == 401:
                raise UserError(
                    f"{self.label} refused the request (HTTP 401): the API key or user ID is missing or wrong.",
                    "Copy both from My Account -> Options -> API Access Credentials and pass --api-key KEY --user ID.",
                ) from exc
            raise

    @staticmethod
    def _post_list(data: Any) -> list[dict[str, Any]]:
        if data is None or data == "":
            return []
        if isinstance(data, dict):
            data = data.get("post", [])
            if isinstance(data, dict):  # a single post is sometimes not wrapped in a list
                data = [data]
        if not isinstance(data, list):
            return []
        return [item for item in data if isinstance(item, dict) and "id" in item]

    def pages(self, query: str, page_size: int) -> Iterator[list[Post]]:
        limit = max(1, min(page_size, self.max_page_size))
        sorted_query = any(t.lower().startswith("sort:") for t in query.split())
        pid = 0
        below_id: int | None = None
        while True:
            tags = query if below_id is None else f"{query} id:<{below_id}".strip()
            items = self._post_list(self._api({"s": "post", "q": "index", "tags": tags, "limit": limit, "pid": pid}))
            if not items:
                return
            posts = [self._post(item) for item in items]
            if self.categorized_tags:
                posts = self._categorize(posts)
            yield posts
            lowest = min(p.id for p in posts)
            if not sorted_query and (pid + 2) * limit > self.depth_cap:
                # switch to an id cursor before the site's depth cap; ids are newest first
                below_id, pid = lowest, 0
            else:
                pid += 1

    def _rating(self, value: Any) -> str:
        text = str(value or "").lower()
        return {
            "general": "g",
            "sensitive": "s",
            "questionable": "q",
            "explicit": "e",
            "safe": "safe",
            "s": "safe",
            "q": "q",
            "e": "e",
        }.get(text, "")

    def _file_url(self, item: dict[str, Any]) -> str | None:
        url = item.get("file_url") or None
        if url and url.startswith("//"):
            url = urllib.parse.urlsplit(self.base_url).scheme + ":" + url
        return url

    def _post(self, item: dict[str, Any]) -> Post:
        file_url = self._file_url(item)
        md5 = _clean_md5(item.get("md5") or item.get("hash"))
        tags_text = html.unescape(str(item.get("tags") or ""))
        post_id = _int(item.get("id"))
        raw = dict(item)
        raw["_page_url"] = f"{self.base_url}/index.php?page=post&s=view&id={post_id}"
        image = str(item.get("image") or "")
        ext = _ext_from_url(file_url) or (image.rsplit(".", 1)[-1].lower() if "." in image else "")
        return Post(
            site=self.site,
            site_key=self.site_key,
            id=post_id,
            md5=md5,
            file_url=file_url,
            file_ext=ext,
            width=_int(item.get("width")),
            height=_int(item.get("height")),
            rating=self._rating(item.get("rating")),
            score=_int(item.get("score")),
            tags=PostTags(general=split_booru_tags(tags_text), categorized=False),
            preview_url=item.get("preview_url") or None,
            source=str(item.get("source") or ""),
            parent_id=_int(item.get("parent_id"), 0) or None,
            deleted=str(item.get("status") or "").lower() == "deleted",
            raw=raw,
        )

    def _categorize(self, posts: list[Post]) -> list[Post]:
        """Split each post's mixed tags by category with the tag API (names cached across pages)."""
        wanted = sorted({t for p in posts for t in p.tags.general if t not in self._tag_types})
        try:
            for chunk in _chunks_by_length(wanted, 3000):
                self._lookup_tag_types(chunk)
        except HttpError as exc:
            self.http.events.warning(
                f"{self.label}'s tag list is unavailable ({exc}); captions keep every tag uncategorised."
            )
            return posts
        out = []
        for post in posts:
            groups: dict[str, list[str]] = {"general": [], "character": [], "copyright": [], "artist": [], "meta": []}
            for tag in post.tags.general:
                groups[self._tag_types.get(tag, "general")].append(tag)
            post.tags = PostTags(
                general=tuple(groups["general"]),
                character=tuple(groups["character"]),
                copyright=tuple(groups["copyright"]),
                artist=tuple(groups["artist"]),
                meta=tuple(groups["meta"]),
            )
            out.append(post)
        return out

    def _lookup_tag_types(self, names: list[str]) -> None:
        data = self._api({"s": "tag", "q": "index", "names": " ".join(names), "limit": len(names)})
        items = data.get("tag", []) if isinstance(data, dict) else data if isinstance(data, list) else []
        if isinstance(items, dict):
            items = [items]
        for item in items:
            if isinstance(item, dict) and item.get("name"):
                self._tag_types[html.unescape(str(item["name"]))] = _category(item.get("type"))
        for name in names:  # unknown to the site: general
            self._tag_types.setdefault(name, "general")


def _category(value: Any) -> str:
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        return _TAG_TYPE_WORDS.get(value.strip().lower(), "general")
    return _TAG_TYPES.get(_int(value, 0), "general")


def _chunks_by_length(names: list[str], max_chars: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for name in names:
        if chunk and size + len(name) + 1 > max_chars:
            yield chunk
            chunk, size = [], 0
        chunk.append(name)
        size += len(name) + 1
    if chunk:
        yield chunk


class Gelbooru02Client(GelbooruClient):
    """Gelbooru 0.2 clones (safebooru.org, tbib, xbooru): same dapi, bare JSON lists, no categories."""

    site = "safebooru"
    label = "Safebooru"
    default_base_url = "https://safebooru.org"
    max_page_size = 100
    depth_cap = 10**9
    categorized_tags = False

    def requires_credentials(self) -> bool:
        return False

    def _file_url(self, item: dict[str, Any]) -> str | None:
        url = super()._file_url(item)
        if url:
            return url
        directory, image = item.get("directory"), item.get("image")
        if directory is None or not image:
            return None
        return f"{self.base_url}/images/{directory}/{image}"


class MoebooruClient(BooruClient):
    """Moebooru (yande.re, konachan): ``/post.json`` with page numbers; tag types via api_version=2."""

    site = "moebooru"
    label = "Moebooru"
    default_base_url = "https://yande.re"
    default_file_domains: ClassVar[dict[str, tuple[str, ...]]] = {"konachan.com": ("konachan.net",)}
    max_page_size = 100

    def _auth_params(self) -> dict[str, str]:
        # moebooru's API login is login + password_hash (SHA1 of the site's salted password)
        if self.login and self.api_key:
            return {"login": self.login, "password_hash": self.api_key}
        return {}

    def pages(self, query: str, page_size: int) -> Iterator[list[Post]]:
        limit = max(1, min(page_size, self.max_page_size))
        page = 1
        while True:
            params = {"tags": query, "limit": limit, "page": page, "api_version": 2, "include_tags": 1}
            data = self.http.get_json(self.url("/post.json"), {**params, **self._auth_params()}, site=self.label)
            types: dict[str, str] = {}
            if isinstance(data, dict):
                types = {str(k): _category(v) for k, v in (data.get("tags") or {}).items()}
                data = data.get("posts", [])
            if not isinstance(data, list) or not data:
                return
            posts = [self._post(item, types) for item in data if isinstance(item, dict) and "id" in item]
            if not posts:
                return
            yield posts
            page += 1

    def _post(self, item: dict[str, Any], types: dict[str, str]) -> Post:
        names = split_booru_tags(item.get("tags"))
        if types:
            groups: dict[str, list[str]] = {"general": [], "character": [], "copyright": [], "artist": [], "meta": []}
            for tag in names:
                groups[types.get(tag, "general")].append(tag)
            tags = PostTags(**{k: tuple(v) for k, v in groups.items()})
        else:
            tags = PostTags(general=names, categorized=False)
        file_url = item.get("file_url") or None
        rating = {"s": "safe", "q": "q", "e": "e"}.get(str(item.get("rating") or "").lower()[:1], "")
        post_id = _int(item.get("id"))
        raw = dict(item)
        raw["_page_url"] = f"{self.base_url}/post/show/{post_id}"
        return Post(
            site=self.site,
            site_key=self.site_key,
            id=post_id,
            md5=_clean_md5(item.get("md5")),
            file_url=file_url,
            file_ext=str(item.get("file_ext") or _ext_from_url(file_url)).lower(),
            width=_int(item.get("width")),
            height=_int(item.get("height")),
            rating=rating,
            score=_int(item.get("score")),
            tags=tags,
            file_size=_int(item.get("file_size"), 0) or None,
            preview_url=item.get("preview_url") or None,
            source=str(item.get("source") or ""),
            parent_id=_int(item.get("parent_id"), 0) or None,
            deleted=str(item.get("status") or "").lower() == "deleted",
            raw=raw,
        )


SITES: dict[str, type[BooruClient]] = {
    "danbooru": DanbooruClient,
    "gelbooru": GelbooruClient,
    "safebooru": Gelbooru02Client,
    "moebooru": MoebooruClient,
}
# other names people use -> (site type, base URL)
ALIASES: dict[str, tuple[str, str]] = {
    "yandere": ("moebooru", "https://yande.re"),
    "yande.re": ("moebooru", "https://yande.re"),
    "konachan": ("moebooru", "https://konachan.com"),
    "gelbooru02": ("safebooru", "https://safebooru.org"),
}


def site_names() -> list[str]:
    return list(SITES) + list(ALIASES)


def make_client(
    site: str,
    http: HttpClient,
    base_url: str | None = None,
    login: str | None = None,
    api_key: str | None = None,
) -> BooruClient:
    """The client for ``site`` (a name of SITES or ALIASES); UserError for anything else."""
    name = (site or "").strip().lower()
    if name in ALIASES:
        name, alias_url = ALIASES[name]
        base_url = base_url or alias_url
    cls = SITES.get(name)
    if cls is None:
        raise UserError(
            f"Unknown site '{site}': choose danbooru, gelbooru, safebooru or moebooru "
            "(yandere and konachan are moebooru sites); add --base-url for a mirror or your own instance."
        )
    return cls(http, base_url=base_url, login=login, api_key=api_key)
