"""A fake booru on 127.0.0.1 that speaks the Danbooru, Gelbooru, Gelbooru 0.2 and Moebooru APIs.

It serves the JSON shapes each site returns (reference/booru-and-dedupe.md sections 1-4) and the
image files with ``Range`` support, records every request, and injects faults on demand: error
statuses (500, 503, 429 with or without Retry-After, a Cloudflare challenge), a connection dropped
or reset in the middle of a file, an HTML page or garbage instead of an image, HTML instead of
JSON.

    with FakeBooru("danbooru", posts) as booru:
        booru.fail_api(500, times=2)
        booru.fail_file(post.md5, "drop")
        ... base_url=booru.base_url ...
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import html
import io
import json
import socket
import struct
import threading
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

FREE_METATAGS = {
    "status", "rating", "limit", "id", "date", "age", "filesize", "filetype", "parent", "child", "md5",
    "width", "height", "duration", "mpixels", "ratio", "score", "upvote", "downvotes", "favcount",
    "embedded", "tagcount", "pixiv_id", "pixiv",
}  # fmt: skip
_CATEGORY_NUMBERS = {"general": 0, "artist": 1, "copyright": 3, "character": 4, "meta": 5}
_MOEBOORU_WORDS = {"general": "general", "artist": "artist", "copyright": "copyright", "character": "character",
                   "meta": "faults"}  # fmt: skip
_GELBOORU_RATINGS = {"g": "general", "s": "sensitive", "q": "questionable", "e": "explicit"}
_OLD_RATINGS = {"g": "safe", "s": "safe", "q": "questionable", "e": "explicit"}


@functools.lru_cache(maxsize=1024)
def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@functools.lru_cache(maxsize=1024)
def _size(data: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:
        return 0, 0


@dataclass
class FakePost:
    id: int
    data: bytes | None  # the file; None for a post without a file (still listed)
    ext: str = "png"
    general: list[str] = field(default_factory=list)
    character: list[str] = field(default_factory=list)
    copyright: list[str] = field(default_factory=list)
    artist: list[str] = field(default_factory=list)
    meta: list[str] = field(default_factory=list)
    rating: str = "g"  # Danbooru letter
    score: int = 10
    hidden: bool = False  # listed without file_url / md5 (restricted for this account)
    deleted: bool = False
    banned: bool = False
    md5_override: str | None = None  # claim another md5 than the file's (cross-site copies)
    url_override: str | None = None  # the file_url the API names (a hostile site: file://, another host)
    declared_size: int | None = None  # the file_size the API declares (a hostile site lies)

    @property
    def md5(self) -> str:
        if self.md5_override:
            return self.md5_override
        return _md5(self.data or b"")

    def all_tags(self) -> list[str]:
        return self.general + self.character + self.copyright + self.artist + self.meta

    def size(self) -> tuple[int, int]:
        return _size(self.data or b"")


@dataclass
class RecordedRequest:
    path: str
    query: dict[str, str]
    headers: dict[str, str]

    @property
    def is_file(self) -> bool:
        return self.path.startswith(("/data/", "/images/", "/image/"))


@dataclass
class Fault:
    kind: str  # "status" | "drop" | "reset" | "html" | "garbage" | "cloudflare" | "endless" | "redirect"
    status: int = 500
    retry_after: str | None = None
    body: bytes | None = None


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # dropped/reset connections are the point of some faults


class FakeBooru:
    def __init__(
        self,
        kind: str,
        posts: list[FakePost],
        *,
        max_limit: int | None = None,
        credentials: dict[str, str] | None = None,
        depth_cap: int | None = None,
        account_tag_limit: int | None = None,
    ) -> None:
        assert kind in ("danbooru", "gelbooru", "gelbooru02", "moebooru"), kind
        self.kind = kind
        self.posts = sorted(posts, key=lambda p: -p.id)
        self.max_limit = max_limit
        self.credentials = credentials or {}  # login/user_id -> api key
        self.depth_cap = depth_cap
        self.account_tag_limit = account_tag_limit  # Danbooru tag limit of logged-in users (None: unlimited)
        self.requests: list[RecordedRequest] = []
        self.api_faults: deque[Fault] = deque()
        self.file_faults: dict[str, deque[Fault]] = {}
        self.html_instead_of_json = False
        self.endless_sent = False
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> FakeBooru:
        handler = type("Handler", (_Handler,), {"booru": self})
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- faults ------------------------------------------------------------------------------
    def fail_api(self, status: int = 500, times: int = 1, retry_after: str | None = None, body: bytes | None = None):
        for _ in range(times):
            self.api_faults.append(Fault("status", status, retry_after, body))

    def cloudflare_api(self) -> None:
        self.api_faults.append(Fault("cloudflare", 403))

    def fail_file(
        self,
        md5: str,
        kind: str,
        times: int = 1,
        status: int = 500,
        retry_after: str | None = None,
        body: bytes | None = None,
    ):
        queue = self.file_faults.setdefault(md5, deque())
        for _ in range(times):
            queue.append(Fault(kind, status, retry_after, body))

    # -- what happened -----------------------------------------------------------------------
    def file_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.is_file]

    def api_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if not r.is_file]

    def file_url(self, post: FakePost) -> str:
        md5 = post.md5
        if self.kind == "danbooru":
            return f"{self.base_url}/data/original/{md5[:2]}/{md5[2:4]}/{md5}.{post.ext}"
        if self.kind == "gelbooru":
            return f"{self.base_url}/images/{md5[:2]}/{md5[2:4]}/{md5}.{post.ext}"
        if self.kind == "gelbooru02":
            return f"{self.base_url}/images/{post.id // 1000}/{self._image_name(post)}"
        name = urllib.parse.quote(f"yande.re {post.id} {' '.join(post.all_tags()[:3])}.{post.ext}")
        return f"{self.base_url}/image/{md5}/{name}"

    @staticmethod
    def _image_name(post: FakePost) -> str:
        return f"pic{post.id}_{post.md5[:6]}.{post.ext}"

    def find_file(self, path: str) -> FakePost | None:
        for post in self.posts:
            if post.data is not None and urllib.parse.urlsplit(self.file_url(post)).path == path:
                return post
        return None

    # -- searching ---------------------------------------------------------------------------
    def matching(self, query: str) -> list[FakePost]:
        out = []
        for post in self.posts:
            tags = set(post.all_tags())
            ok = True
            for term in query.split():
                negate = term.startswith("-")
                bare = term.lstrip("-")
                name, sep, value = bare.partition(":")
                if sep and name in ("id",) and value.startswith("<"):
                    ok = post.id < int(value[1:])
                elif sep and name == "rating":
                    wanted = set(value.split(","))
                    ok = (post.rating in wanted) != negate
                elif sep and name in FREE_METATAGS | {"order", "sort"}:
                    ok = True
                else:
                    ok = (bare in tags) != negate
                if not ok:
                    break
            if ok:
                out.append(post)
        return out


class _Handler(BaseHTTPRequestHandler):
    booru: FakeBooru
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing ----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        if self.booru.html_instead_of_json:
            self._send(200, b"<!DOCTYPE html><html><head><title>Welcome</title></head><body>Hi</body></html>",
                       "text/html; charset=utf-8")  # fmt: skip
            return
        self._send(status, json.dumps(data).encode(), "application/json; charset=utf-8")

    def _apply_fault(self, fault: Fault, data: bytes | None = None) -> bool:
        """Answer with the fault; True when the request was handled."""
        if fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            body = fault.body or json.dumps({"success": False, "message": f"fake error {fault.status}"}).encode()
            self._send(fault.status, body, "application/json", headers)
            return True
        if fault.kind == "cloudflare":
            page = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>cf-chl</body></html>"
            self._send(403, page, "text/html", {"cf-mitigated": "challenge"})
            return True
        if fault.kind == "html":
            self._send(200, b"<!DOCTYPE html><html><body>Not found, have some ads</body></html>", "text/html")
            return True
        if fault.kind == "garbage":
            self._send(200, b"\x00\x01garbage, not an image" * 20, "image/jpeg")
            return True
        if fault.kind == "redirect":  # to the address in the fault's body (file://, ftp://...)
            self._send(302, b"", "text/plain", {"Location": (fault.body or b"").decode()})
            return True
        if fault.kind == "endless":  # a hostile server: a PNG header, then bytes without end or length
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(b"\x89PNG\r\n\x1a\n")
            chunk = b"\x00" * 65536
            with contextlib.suppress(OSError):
                for _ in range(fault.status):  # status = how many 64 KiB chunks at most
                    self.wfile.write(chunk)
            self.booru.endless_sent = True
            return True
        return False

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        path = urllib.parse.unquote(parts.path)
        record = RecordedRequest(path, query, {k.lower(): v for k, v in self.headers.items()})
        booru = self.booru
        with booru._lock:
            booru.requests.append(record)
        if record.is_file:
            self._file(parts.path)
            return
        with booru._lock:
            fault = booru.api_faults.popleft() if booru.api_faults else None
        if fault is not None and self._apply_fault(fault):
            return
        if booru.kind == "danbooru" and path == "/posts.json":
            self._danbooru(query)
        elif booru.kind in ("gelbooru", "gelbooru02") and path == "/index.php" and query.get("page") == "dapi":
            self._gelbooru(query)
        elif booru.kind == "moebooru" and path == "/post.json":
            self._moebooru(query)
        else:
            self._send(404, b"<html><body>404 Not Found</body></html>", "text/html")

    # -- files -------------------------------------------------------------------------------
    def _file(self, raw_path: str) -> None:
        booru = self.booru
        post = booru.find_file(raw_path)
        if post is None or post.data is None:
            self._send(404, b"not found", "text/plain")
            return
        data = post.data
        with booru._lock:
            queue = booru.file_faults.get(post.md5)
            fault = queue.popleft() if queue else None
        if fault is not None and fault.kind not in ("drop", "reset") and self._apply_fault(fault):
            return
        start = 0
        status = 200
        headers = {}
        range_header = self.headers.get("Range")
        if range_header and range_header.startswith("bytes="):
            start = int(range_header[6:].split("-", 1)[0] or 0)
            if start >= len(data):
                self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "image/png" if post.ext == "png" else "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if fault is not None and fault.kind in ("drop", "reset"):
            self.wfile.write(body[: max(1, len(body) // 2)])
            self.wfile.flush()
            if fault.kind == "reset":  # RST instead of FIN: the client's read raises ConnectionResetError
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            if fault.kind == "drop":
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
            self.connection.close()
            return
        self.wfile.write(body)

    # -- Danbooru ----------------------------------------------------------------------------
    def _danbooru(self, query: dict[str, str]) -> None:
        booru = self.booru
        auth = self.headers.get("Authorization")
        logged_in = False
        if auth:
            import base64

            login, _, key = base64.b64decode(auth.split(" ", 1)[1]).decode().partition(":")
            if booru.credentials.get(login) != key:
                self._json({"success": False, "error": "SessionLoader::AuthenticationFailure",
                            "message": "Invalid API key"}, 401)  # fmt: skip
                return
            logged_in = True
        tags = query.get("tags", "")
        counted = [t for t in tags.split() if t.lstrip("-~").partition(":")[0] not in FREE_METATAGS
                   or not t.lstrip("-~").partition(":")[1]]  # fmt: skip
        limit_for_user = booru.account_tag_limit if logged_in else 2
        if limit_for_user is not None and len(counted) > limit_for_user:
            self._json({"success": False, "error": "PostQuery::TagLimitError",
                        "message": "You cannot search for more than 2 tags at a time."}, 422)  # fmt: skip
            return
        limit = min(int(query.get("limit") or 20), 200, booru.max_limit or 200)
        posts = booru.matching(tags)
        page = query.get("page", "1")
        if page.startswith("b"):
            posts = [p for p in posts if p.id < int(page[1:])]
        elif page.startswith("a"):
            posts = [p for p in posts if p.id > int(page[1:])][-limit:]
        else:
            number = int(page)
            if number > 1000:
                self._json({"success": False, "message": "You cannot go beyond page 1000."}, 410)
                return
            posts = posts[(number - 1) * limit :]
        self._json([self._danbooru_post(p) for p in posts[:limit]])

    def _danbooru_post(self, post: FakePost) -> dict[str, Any]:
        width, height = post.size()
        item: dict[str, Any] = {
            "id": post.id,
            "created_at": "2024-01-01T00:00:00.000-05:00",
            "score": post.score,
            "fav_count": post.score,
            "rating": post.rating,
            "image_width": width,
            "image_height": height,
            "file_ext": post.ext,
            "file_size": post.declared_size if post.declared_size is not None else len(post.data or b""),
            "is_deleted": post.deleted,
            "is_banned": post.banned,
            "parent_id": None,
            "has_children": False,
            "source": "https://example.com/source",
            "tag_string": " ".join(post.all_tags()),
            "tag_string_general": " ".join(post.general),
            "tag_string_character": " ".join(post.character),
            "tag_string_copyright": " ".join(post.copyright),
            "tag_string_artist": " ".join(post.artist),
            "tag_string_meta": " ".join(post.meta),
        }
        if not post.hidden and post.data is not None:
            url = post.url_override or self.booru.file_url(post)
            item.update({"md5": post.md5, "file_url": url, "large_file_url": url, "preview_file_url": url})
        return item

    # -- Gelbooru ----------------------------------------------------------------------------
    def _gelbooru(self, query: dict[str, str]) -> None:
        booru = self.booru
        if booru.credentials and booru.credentials.get(query.get("user_id", "")) != query.get("api_key"):
            self._send(401, b'"Missing authentication. Go to api access credentials on your account page."',
                       "application/json")  # fmt: skip
            return
        if query.get("s") == "tag":
            names = query.get("names", "").split()
            types: dict[str, int] = {}
            for post in booru.posts:
                for category, number in _CATEGORY_NUMBERS.items():
                    for tag in getattr(post, category):
                        types[tag] = number
            tags = [{"id": i, "name": html.escape(n, quote=True).replace("&#x27;", "&#039;"), "count": 1,
                     "type": types[n], "ambiguous": 0} for i, n in enumerate(names) if n in types]  # fmt: skip
            self._json({"@attributes": {"limit": 100, "offset": 0, "count": len(tags)}, "tag": tags})
            return
        limit = min(int(query.get("limit") or 100), 100 if booru.kind == "gelbooru" else 1000, booru.max_limit or 1000)
        pid = int(query.get("pid") or 0)
        posts = booru.matching(query.get("tags", ""))
        offset = pid * limit
        if booru.depth_cap is not None and offset >= booru.depth_cap:
            page: list[FakePost] = []
        else:
            page = posts[offset : offset + limit]
        if booru.kind == "gelbooru02":
            if not page:
                self._send(200, b"", "application/json")  # safebooru answers an empty body
                return
            self._json([self._gelbooru_post(p) for p in page])
            return
        data: dict[str, Any] = {"@attributes": {"limit": limit, "offset": offset, "count": len(posts)}}
        if page:
            data["post"] = [self._gelbooru_post(p) for p in page]
        self._json(data)

    def _gelbooru_post(self, post: FakePost) -> dict[str, Any]:
        width, height = post.size()
        escaped = html.escape(" ".join(post.all_tags()), quote=True).replace("&#x27;", "&#039;")
        old = self.booru.kind == "gelbooru02"
        item: dict[str, Any] = {
            "id": post.id,
            "width": width,
            "height": height,
            "score": post.score,
            "rating": (_OLD_RATINGS if old else _GELBOORU_RATINGS)[post.rating],
            "tags": escaped,
            "parent_id": 0,
            "owner": "danbooru",
            "status": "deleted" if post.deleted else "active",
            "source": "",
        }
        if not post.hidden and post.data is not None:
            if old:
                item.update({"directory": str(post.id // 1000), "image": self.booru._image_name(post),
                             "hash": post.md5})  # fmt: skip
            else:
                item.update({"md5": post.md5, "file_url": self.booru.file_url(post),
                             "directory": f"{post.md5[:2]}/{post.md5[2:4]}", "image": f"{post.md5}.{post.ext}"})  # fmt: skip
        return item

    # -- Moebooru ----------------------------------------------------------------------------
    def _moebooru(self, query: dict[str, str]) -> None:
        booru = self.booru
        limit = min(int(query.get("limit") or 40), 1000, booru.max_limit or 1000)
        page = int(query.get("page") or 1)
        posts = booru.matching(query.get("tags", ""))[(page - 1) * limit : page * limit]
        items = [self._moebooru_post(p) for p in posts]
        if query.get("api_version") == "2":
            types = {}
            for post in posts:
                for category, word in _MOEBOORU_WORDS.items():
                    for tag in getattr(post, category):
                        types[tag] = word
            self._json({"posts": items, "pools": [], "pool_posts": [], "tags": types})
        else:
            self._json(items)

    def _moebooru_post(self, post: FakePost) -> dict[str, Any]:
        width, height = post.size()
        item: dict[str, Any] = {
            "id": post.id,
            "tags": " ".join(post.all_tags()),
            "created_at": 1700000000,
            "score": post.score,
            "rating": {"g": "s", "s": "s", "q": "q", "e": "e"}[post.rating],
            "width": width,
            "height": height,
            "file_ext": post.ext,
            "file_size": post.declared_size if post.declared_size is not None else len(post.data or b""),
            "status": "deleted" if post.deleted else "active",
            "parent_id": None,
            "has_children": False,
            "source": "",
        }
        if not post.hidden and post.data is not None:
            url = self.booru.file_url(post)
            item.update({"md5": post.md5, "file_url": url, "jpeg_url": url, "sample_url": url, "preview_url": url})
        return item


# ---------------------------------------------------------------------------------------------
# ready-made data and helpers for the importer tests
IRENE = "irene_(kanniiepan)"


def irene_posts() -> tuple[list[FakePost], list[FakePost]]:
    """(every post the fake site has, the visible still images a search for IRENE must import).

    45 visible stills (PNG and JPEG, ids 1001...), plus posts the importer must leave out: hidden
    (no file_url/md5), deleted, banned, a video, an ugoira zip, a gif, and posts of another
    character.
    """
    from support.importer_images import image_bytes

    visible = []
    for n in range(45):
        fmt = "JPEG" if n % 3 == 0 else "PNG"
        visible.append(
            FakePost(
                id=1001 + n * 2,
                data=image_bytes(n, fmt, size=(96 + (n % 5) * 8, 80)),
                ext="jpg" if fmt == "JPEG" else "png",
                general=["1girl", "solo", "long_hair", "o_o" if n % 2 else "^_^", "looking_at_viewer"],
                character=[IRENE],
                copyright=["original"],
                artist=["kanniiepan"],
                meta=["highres", "commentary_request", "bad_id"],
                rating="gs"[n % 2],
                score=n,
            )
        )
    others = [
        FakePost(2001, image_bytes(501), character=[IRENE], general=["1girl"], hidden=True),
        FakePost(2003, image_bytes(502), character=[IRENE], general=["1girl"], hidden=True),
        FakePost(2005, image_bytes(503), character=[IRENE], general=["1girl"], hidden=True),
        FakePost(2007, image_bytes(504), character=[IRENE], general=["1girl"], deleted=True),
        FakePost(2009, image_bytes(505), character=[IRENE], general=["1girl"], deleted=True),
        FakePost(2011, image_bytes(506), character=[IRENE], general=["1girl"], banned=True),
        FakePost(2013, b"\x00\x00\x00\x18ftypmp42 fake video", ext="mp4", character=[IRENE]),
        FakePost(2015, b"PK\x03\x04 fake ugoira", ext="zip", character=[IRENE]),
        FakePost(2017, image_bytes(507, "GIF"), ext="gif", character=[IRENE]),
    ]
    unrelated = [FakePost(3001 + k, image_bytes(600 + k), character=["someone_else"]) for k in range(5)]
    return visible + others + unrelated, visible


def patch_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make every pause of the importer's HTTP client instant; returns the list of pauses asked for."""
    import lib_lora.importer.http as http_module

    sleeps: list[float] = []
    monkeypatch.setattr(http_module, "interruptible_sleep", lambda seconds, check: sleeps.append(seconds))
    return sleeps
