"""Is an HTTP request from the page of the app itself? The rule both hosts apply to their routes.

A local app that reads and writes the user's folders must not be driven by another web page open in
the same browser. A request is refused when:

- the app listens on loopback and the ``Host`` is not a loopback name (DNS rebinding: a hostile
  domain resolving to 127.0.0.1 is another origin with a loopback address);
- its ``Origin`` is not the app's own (``scheme://`` + the ``Host`` it was sent to) nor one the user
  allowed; ``Origin: null`` included;
- it has no ``Origin`` but the browser marks it cross-site (``Sec-Fetch-Site``), e.g. an ``<img>``
  or a form on another page, unless it is a top-level navigation (which only opens the page).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def normalize_origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL as a browser sends it in ``Origin`` (lower case, no path);
    ValueError for something that is not an http(s) URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) origin such as http://localhost:3000")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:7870
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def cross_site_refusal(
    headers: Mapping[str, str],
    allow_origins: Iterable[str] = (),
    check_host: bool = True,
    allow_origin_regex: str | None = None,
) -> str | None:
    """Why a request with these (lower-case) headers is refused by the rule above, or None."""
    host = headers.get("host", "")
    if check_host and host_name(host) not in LOOPBACK_NAMES:
        return f"Host {host!r} is not this app's address; open it as http://127.0.0.1 or http://localhost."
    origin = headers.get("origin")
    if origin is not None:
        try:
            origin_norm = normalize_origin(origin)
        except ValueError:
            return f"Requests from origin {origin!r} are refused."
        own = {f"{scheme}://{host.lower()}" for scheme in ("http", "https")}
        allowed = {normalize_origin(o) for o in allow_origins if o.strip()}
        if origin_norm in own or origin_norm in allowed:
            return None
        if allow_origin_regex and re.fullmatch(allow_origin_regex, origin.strip()):
            return None
        return f"Requests from another site ({origin}) are refused."
    site = headers.get("sec-fetch-site", "")
    if site in ("cross-site", "same-site") and headers.get("sec-fetch-mode") != "navigate":
        return "Requests from another site are refused."
    return None
