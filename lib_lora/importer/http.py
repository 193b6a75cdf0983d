"""A small, polite HTTP client over the standard library (no requests/httpx).

What it does for every request, the way a booru wants to be talked to:

- an honest User-Agent naming this project and its version (and the user's login when given);
- at most one request per ``min_interval`` seconds to the same host;
- retries with a growing pause (1, 2, 3, 4 s) on 5xx answers, timeouts and dropped connections;
- on HTTP 429 it waits ``Retry-After`` when the server sends it, else 60 s;
- a Cloudflare challenge page (403/503 with ``cf-mitigated`` or the challenge HTML) is reported at
  once instead of being retried: no amount of retrying gets past it, and pretending to be a
  browser gets whole IP ranges banned.

The network itself is behind a :class:`Transport` and the pauses behind a ``sleep`` function, so
tests inject both and never wait for real.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from lib_lora import PROJECT_URL, __version__
from lib_lora.common.errors import UserError
from lib_lora.events import Events, StopRequested, StopToken

DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 4  # 5 attempts in all
DEFAULT_MIN_INTERVAL = 1.0
RATE_LIMIT_WAIT = 60.0  # a 429 without Retry-After
MAX_RETRY_AFTER = 600.0  # never sit longer than this on one 429
_CHUNK = 64 * 1024

# Errors that mean "the connection broke", worth another try.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    urllib.error.URLError,
    http.client.HTTPException,  # IncompleteRead, RemoteDisconnected, BadStatusLine
    ConnectionError,  # reset, aborted, refused
    TimeoutError,
    socket.timeout,
    OSError,
)


def user_agent(login: str | None = None) -> str:
    """``TrainLoRA/<version> (+<project URL>)``, or ``(by <login>)`` when logged in."""
    if login:
        return f"TrainLoRA/{__version__} (by {login})"
    return f"TrainLoRA/{__version__} (+{PROJECT_URL})"


def basic_auth(login: str, secret: str) -> str:
    """The ``Authorization`` header value for HTTP Basic auth."""
    token = base64.b64encode(f"{login}:{secret}".encode()).decode("ascii")
    return f"Basic {token}"


class RawResponse(Protocol):
    """What a transport returns: status, headers (case-insensitive ``get``) and a readable body."""

    status: int
    headers: Any

    def read(self, amt: int | None = None) -> bytes: ...

    def close(self) -> None: ...


class Transport(Protocol):
    def open(self, url: str, headers: Mapping[str, str], timeout: float) -> RawResponse:
        """Send a GET; return the response whatever its status (raise only for network failures)."""
        ...


class _KeepErrorResponses(urllib.request.HTTPErrorProcessor):
    """Follow redirects as usual, but hand every other status back as a response (no HTTPError)."""

    def http_response(self, request, response):
        if 300 <= response.status < 400:
            return super().http_response(request, response)
        return response

    https_response = http_response


class _UrllibResponse:
    def __init__(self, response: Any) -> None:
        self._response = response
        self.status = int(getattr(response, "status", None) or response.getcode())
        self.headers = response.headers

    def read(self, amt: int | None = None) -> bytes:
        return self._response.read(amt) if amt is not None else self._response.read()

    def close(self) -> None:
        self._response.close()


class _WebOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) addresses only (urllib's own handler also follows ``ftp://``)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = urllib.parse.urljoin(req.full_url, newurl)
        if urllib.parse.urlsplit(target).scheme.lower() not in WEB_SCHEMES:
            raise urllib.error.HTTPError(target, code, f"{msg} (a redirect to a non-web address refused)", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class UrllibTransport:
    """The real network: ``urllib`` with http(s) redirects followed, proxies from the environment,
    and every status returned as a response. Only ``http``/``https`` addresses are ever opened
    (urllib alone would read ``file://`` paths and fetch ``ftp://``)."""

    def __init__(self) -> None:
        opener = urllib.request.OpenerDirector()
        for handler in (
            urllib.request.ProxyHandler(),
            urllib.request.UnknownHandler(),
            urllib.request.HTTPHandler(),
            urllib.request.HTTPSHandler(),
            urllib.request.HTTPDefaultErrorHandler(),
            _WebOnlyRedirects(),
            _KeepErrorResponses(),
        ):
            opener.add_handler(handler)
        self._opener = opener

    def open(self, url: str, headers: Mapping[str, str], timeout: float) -> RawResponse:
        check_web_url(url)
        request = urllib.request.Request(url, headers=dict(headers), method="GET")
        try:
            response = self._opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:  # a redirect that could not be followed
            return _UrllibResponse(exc)
        return _UrllibResponse(response)


@dataclass
class Response:
    """A finished request: status, headers (lower-case names) and the whole body."""

    url: str
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class HttpError(UserError):
    """The server answered with an error status (after any retries)."""

    def __init__(self, message: str, status: int, url: str, server_message: str = "", hint: str | None = None):
        super().__init__(message, hint)
        self.status = status
        self.url = url
        self.server_message = server_message


class NetworkError(UserError):
    """The server could not be reached (after the retries)."""


class CloudflareChallenge(UserError):
    """The site put a Cloudflare browser check in front of the API."""


WEB_SCHEMES = ("http", "https")


class NotAWebAddress(UserError):
    """An address that is not http(s): never opened (a ``file://`` path would read a local file)."""


def check_web_url(url: str) -> None:
    """Raise :class:`NotAWebAddress` unless ``url`` is an ``http``/``https`` address with a host."""
    parts = urllib.parse.urlsplit(str(url or ""))
    if parts.scheme.lower() not in WEB_SCHEMES or not parts.hostname:
        shown = redact_url(str(url))[:120]
        raise NotAWebAddress(f"'{shown}' is not a web address (only http and https are downloaded).")


def redact_url(url: str) -> str:
    """The URL with secrets (``api_key``, ``password_hash``, ``login``) masked, for messages."""
    parts = urllib.parse.urlsplit(url)
    if not parts.query:
        return url
    query = [
        (k, "***" if k.lower() in ("api_key", "password_hash", "key", "token") else v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, safe=":,<>")))


def with_params(url: str, params: Mapping[str, Any] | None) -> str:
    if not params:
        return url
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None and v != ""}, safe=":,")
    return url + ("&" if "?" in url else "?") + query


def _lower_headers(headers: Any) -> dict[str, str]:
    if headers is None:
        return {}
    items = headers.items() if hasattr(headers, "items") else headers
    return {str(k).lower(): str(v) for k, v in items}


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def looks_like_html(body: bytes) -> bool:
    head = body[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head[:200]


def is_cloudflare_challenge(status: int, headers: Mapping[str, str], body: bytes = b"") -> bool:
    """True for Cloudflare's interstitial (the "Just a moment..." page), not for a plain 403."""
    if headers.get("cf-mitigated", "").lower() == "challenge":
        return True
    if status not in (403, 429, 503):
        return False
    sample = body[:4096].lower()
    return looks_like_html(body) and (
        b"just a moment" in sample or b"cf-chl" in sample or b"challenge-platform" in sample or b"cf_chl" in sample
    )


def interruptible_sleep(seconds: float, check: Callable[[], None]) -> None:
    """Sleep ``seconds`` in short slices, calling ``check`` (which may raise) between them."""
    end = time.monotonic() + seconds
    while True:
        check()
        remaining = end - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(remaining, 0.25))


class RateLimiter:
    """At most one request per ``min_interval`` seconds per host."""

    def __init__(self, min_interval: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.min_interval = min_interval
        self._clock = clock
        self._sleep = sleep
        self._last: dict[str, float] = {}

    def wait(self, host: str) -> None:
        last = self._last.get(host)
        if last is not None and self.min_interval > 0:
            remaining = last + self.min_interval - self._clock()
            if remaining > 0:
                self._sleep(remaining)
        self._last[host] = self._clock()


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc.lower()


def _server_message(body: bytes) -> str:
    """The human part of a booru error body (``{"message": ...}`` / ``{"reason": ...}``), if any."""
    try:
        data = json.loads(body.decode("utf-8", errors="replace"))
    except (ValueError, UnicodeDecodeError):
        return ""
    if isinstance(data, dict):
        for key in ("message", "reason", "error"):
            value = data.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return ""


class HttpClient:
    """GET requests with the manners described in the module docstring.

    ``sleep`` receives every pause (rate limit, backoff, 429 wait); the default one sleeps in short
    slices and stops early when ``stop`` fires. ``events`` gets a warning line for each retry.
    """

    def __init__(
        self,
        *,
        login: str | None = None,
        transport: Transport | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        retries: int = DEFAULT_RETRIES,
        timeout: float = DEFAULT_TIMEOUT,
        rate_limit_wait: float = RATE_LIMIT_WAIT,
        max_retry_after: float = MAX_RETRY_AFTER,
        stop: StopToken | None = None,
        events: Events | None = None,
    ) -> None:
        self.user_agent = user_agent(login)
        self.transport: Transport = transport or UrllibTransport()
        self.stop = stop
        self.events = events or Events()
        self._sleep_fn = sleep
        self.retries = retries
        self.timeout = timeout
        self.rate_limit_wait = rate_limit_wait
        self.max_retry_after = max_retry_after
        self.limiter = RateLimiter(min_interval, clock, self.sleep)

    # -- pauses -------------------------------------------------------------------------------
    def sleep(self, seconds: float) -> None:
        """Pause ``seconds``; raise StopRequested if the stop token fires meanwhile."""
        self.check_stop()
        if seconds <= 0:
            return
        if self._sleep_fn is not None:
            self._sleep_fn(seconds)
        else:
            interruptible_sleep(seconds, self.check_stop)
        self.check_stop()

    def check_stop(self) -> None:
        if self.stop is not None and self.stop.requested:
            raise StopRequested(self.stop.reason)

    # -- requests -----------------------------------------------------------------------------
    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {"User-Agent": self.user_agent, "Accept": "*/*", "Accept-Encoding": "identity"}
        if extra:
            headers.update(extra)
        return headers

    def backoff(self, attempt: int, what: str, url: str) -> None:
        """The pause before attempt ``attempt + 1`` (1, 2, 3, 4 s), announced to the user."""
        self.events.warning(f"{what} from {_host(url)}; retrying in {attempt} s (attempt {attempt + 1}).")
        self.sleep(float(attempt))

    def retry_after_wait(self, headers: Mapping[str, str], url: str, attempt: int) -> None:
        wait = parse_retry_after(headers.get("retry-after"))
        if wait is None:
            wait = self.rate_limit_wait
        wait = min(wait, self.max_retry_after)
        self.events.warning(
            f"{_host(url)} says we are going too fast (HTTP 429); waiting {wait:g} s (attempt {attempt + 1})."
        )
        self.sleep(wait)

    def open(self, url: str, headers: Mapping[str, str] | None = None) -> tuple[RawResponse, dict[str, str], int]:
        """Send a GET and return ``(response, lower-case headers, attempts used)`` once the server
        answers with something other than 429/5xx (or the retries are spent).

        The body is not read: the caller streams it and closes the response. Network errors and
        5xx/429 answers are retried here; a Cloudflare challenge raises :class:`CloudflareChallenge`.
        """
        check_web_url(url)
        sent = self._headers(headers)
        host = _host(url)
        last_problem = ""
        for attempt in range(1, self.retries + 2):
            self.check_stop()
            self.limiter.wait(host)
            try:
                response = self.transport.open(url, sent, self.timeout)
            except NETWORK_ERRORS as exc:
                if _is_permanent_network_error(exc):
                    raise NetworkError(f"Cannot reach {host}: {describe_error(exc)}.") from exc
                last_problem = describe_error(exc)
                if attempt > self.retries:
                    break
                self.backoff(attempt, f"Connection problem ({last_problem})", url)
                continue
            status = response.status
            lowered = _lower_headers(response.headers)
            if status == 429 or status >= 500 or status == 403:
                body = _read_some(response)
                if is_cloudflare_challenge(status, lowered, body):
                    raise CloudflareChallenge(
                        f"{host} answered with a Cloudflare browser check (HTTP {status}) instead of data.",
                        "Try again later or from another network; this tool identifies itself honestly and "
                        "does not try to pass browser checks.",
                    )
                if status == 403:
                    return _BufferedResponse(status, response.headers, body), lowered, attempt
                server = _server_message(body)
                last_problem = f"HTTP {status}" + (f" ({server})" if server else "")
                if attempt > self.retries:
                    raise HttpError(
                        f"{host} kept answering {last_problem} (tried {attempt} times).",
                        status,
                        redact_url(url),
                        server,
                        "The site may be down or busy; run the same command again later (finished files are kept).",
                    )
                if status == 429:
                    self.retry_after_wait(lowered, url, attempt)
                else:
                    self.backoff(attempt, f"Server error {last_problem}", url)
                continue
            return response, lowered, attempt
        raise NetworkError(
            f"Cannot reach {host}: {last_problem} (tried {self.retries + 1} times).",
            "Check your connection and the site's status, then run the same command again; finished files are kept.",
        )

    def get(
        self, url: str, params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None
    ) -> Response:
        """GET ``url`` and read the whole body (retrying a body that breaks off)."""
        full_url = with_params(url, params)
        for attempt in range(1, self.retries + 2):
            response, lowered, _ = self.open(full_url, headers)
            try:
                body = response.read()
            except NETWORK_ERRORS as exc:
                if attempt > self.retries:
                    raise NetworkError(f"Cannot read the answer of {_host(url)}: {describe_error(exc)}.") from exc
                self.backoff(attempt, f"Connection dropped ({describe_error(exc)})", full_url)
                continue
            finally:
                response.close()
            return Response(full_url, response.status, lowered, body)
        raise AssertionError("unreachable")

    def get_json(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        site: str = "",
    ) -> Any:
        """GET and decode JSON. Error statuses raise :class:`HttpError`; an HTML page or other
        non-JSON body raises a UserError saying so (usually a wrong ``--base-url``)."""
        response = self.get(url, params, headers)
        name = site or _host(url)
        if not response.ok:
            server = _server_message(response.body)
            detail = f": {server}" if server else ""
            raise HttpError(
                f"{name} answered HTTP {response.status} for {redact_url(response.url)}{detail}.",
                response.status,
                response.url,
                server,
            )
        body = response.body.strip()
        if not body:
            return None
        if looks_like_html(body):
            raise UserError(
                f"{name} returned an HTML page instead of JSON data for {redact_url(response.url)}.",
                "Check --base-url: it must be the site's root (for example https://danbooru.donmai.us), "
                "and the site must offer the API this importer speaks.",
            )
        try:
            return json.loads(body.decode("utf-8-sig", errors="strict"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise UserError(
                f"{name} returned something that is not JSON for {redact_url(response.url)}.",
                "Check --base-url and the site type (danbooru, gelbooru, safebooru, moebooru).",
            ) from exc


class _BufferedResponse:
    """A response whose (short) body was already read."""

    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self._body = body

    def read(self, amt: int | None = None) -> bytes:
        if amt is None:
            data, self._body = self._body, b""
        else:
            data, self._body = self._body[:amt], self._body[amt:]
        return data

    def close(self) -> None:
        self._body = b""


def _read_some(response: RawResponse, limit: int = 256 * 1024) -> bytes:
    """Read an error body (bounded) and close the response; a broken body reads as empty."""
    try:
        return response.read(limit) or b""
    except NETWORK_ERRORS:
        return b""
    finally:
        with contextlib.suppress(NETWORK_ERRORS):
            response.close()


def _is_permanent_network_error(exc: BaseException) -> bool:
    """Errors no retry can fix: an unknown host name, a bad certificate, an unsupported scheme."""
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, socket.gaierror):
        return True
    if type(reason).__name__ in ("SSLCertVerificationError", "CertificateError"):
        return True
    return isinstance(exc, urllib.error.URLError) and isinstance(reason, str) and "unknown url type" in reason


def describe_error(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(exc, urllib.error.URLError) and reason is not None:
        exc = reason if isinstance(reason, BaseException) else exc
        if isinstance(reason, str):
            return reason
    if isinstance(exc, socket.gaierror):
        return "unknown host name"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, http.client.IncompleteRead):
        return "connection closed before the end of the data"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "server closed the connection"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
