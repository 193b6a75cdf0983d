"""What the standalone app lets a browser do: only its own page drives it, and it serves only its own files.

The app listens on the user's machine and can read, write and train on any folder the user owns:
that is its job (a local tool, like the webui), so path fields take any folder — relative ones from
the folder the app was started in, always shown as the absolute path they resolve to. The danger is
another web page, open in the same browser, driving the app behind the user's back. Gradio itself
answers every origin (``access-control-allow-origin: *``), accepts cross-site websockets, and
``/file=`` serves any file under the working folder. :class:`LocalOnly`, put in front of Gradio's
routes (in place of its CORS middleware), refuses:

- a ``Host`` that is not a loopback name while the app listens on loopback (DNS rebinding: a
  hostile domain that resolves to 127.0.0.1 is another origin with a loopback address);
- an ``Origin`` that is not the app's own (``http://HOST:PORT`` as the request names it) and not one
  the user allowed with ``--allow-origin``; ``Origin: null`` too; websockets and event streams
  included;
- cross-site requests without an ``Origin`` (``Sec-Fetch-Site: cross-site`` / ``same-site``, e.g.
  an ``<img>`` on another page) except a top-level navigation, which only opens the page;
- ``/file=`` outside the folders the app serves: Gradio's temporary folder (uploads, the copies of
  the images the page shows), the thumbnail cache, the LoRA folder and the dataset / output folders
  the user chose in the tab (resolved, symlinks followed; dot-files never).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lib_lora.common.origin import LOOPBACK_NAMES, cross_site_refusal, host_name, normalize_origin


def is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


class FolderList:
    """The folders ``/file=`` may serve: fixed ones plus those the user chose while the app runs."""

    def __init__(self, fixed: Iterable[str | os.PathLike] = ()) -> None:
        self._lock = threading.Lock()
        self._folders: list[Path] = []
        # the same folders as strings, for Gradio's own ``allowed_paths`` check (it keeps this list
        # object, so folders added later are allowed there too)
        self.as_strings: list[str] = []
        for folder in fixed:
            self.add(folder)

    def add(self, folder: str | os.PathLike | None) -> None:
        if not folder or not str(folder).strip():
            return
        path = Path(os.path.realpath(os.path.expanduser(str(folder))))
        with self._lock:
            if path not in self._folders:
                self._folders.append(path)
                self.as_strings.append(str(path))

    def folders(self) -> list[Path]:
        with self._lock:
            return list(self._folders)

    def allows(self, target: str) -> bool:
        """True when ``target`` (a path as ``/file=`` names it) is a file inside one of the folders
        (after following symlinks) and no part of it starts with a dot."""
        if not target or "\x00" in target:
            return False
        path = Path(os.path.realpath(os.path.expanduser(target)))
        if any(part.startswith(".") for part in path.parts[1:]):
            return False
        return any(is_within(path, root) for root in self.folders())


class AccessPolicy:
    """The rules of the module docstring for one server (see :class:`LocalOnly`)."""

    def __init__(
        self, server_name: str, files: FolderList, allow_origins: Iterable[str] = (), check_host: bool | None = None
    ) -> None:
        self.server_name = server_name
        self.files = files
        self.allow_origins = frozenset(normalize_origin(o) for o in allow_origins)
        self.check_host = host_name(server_name) in LOOPBACK_NAMES if check_host is None else check_host

    def refusal(self, scope: dict[str, Any]) -> str | None:
        """Why the request is refused, or None."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        reason = cross_site_refusal(headers, self.allow_origins, self.check_host)
        if reason is not None:
            return reason
        path = scope.get("path", "")
        if path.startswith("/proxy=") or (path.startswith("/file=") and not self.files.allows(path[len("/file=") :])):
            return "This file is not served: only the app's own outputs and the folders chosen in it are."
        return None

    def extra_origin(self, scope: dict[str, Any]) -> bool:
        """True for a request from an origin the user allowed (it gets CORS headers for that origin)."""
        for key, value in scope.get("headers", []):
            if key.lower() == b"origin":
                try:
                    return normalize_origin(value.decode("latin-1")) in self.allow_origins
                except ValueError:
                    return False
        return False


class LocalOnly:
    """ASGI middleware enforcing an :class:`AccessPolicy`: a refused request gets 403 (a refused
    websocket is closed before it opens). Origins the user allowed get CORS headers for themselves
    only (never ``*``)."""

    def __init__(self, app: Callable, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy
        self.cors_app: Callable | None = None
        if policy.allow_origins:
            from starlette.middleware.cors import CORSMiddleware

            self.cors_app = CORSMiddleware(
                app, allow_origins=sorted(policy.allow_origins), allow_methods=["*"], allow_headers=["*"]
            )

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        reason = self.policy.refusal(scope)
        if reason is not None:
            if scope["type"] == "websocket":
                from starlette.websockets import WebSocketClose

                await WebSocketClose(code=1008, reason="refused")(scope, receive, send)
                return
            from starlette.responses import PlainTextResponse

            await PlainTextResponse(reason, status_code=403)(scope, receive, send)
            return
        if self.cors_app is not None and self.policy.extra_origin(scope):
            await self.cors_app(scope, receive, send)
            return
        await self.app(scope, receive, send)


CORS_MIDDLEWARE_NAMES = frozenset({"CORSMiddleware", "CustomCORSMiddleware"})


def secure_app(app: Any, policy: AccessPolicy) -> None:
    """Replace Gradio's CORS middleware (every origin allowed) by :class:`LocalOnly` on a FastAPI app
    that has not served a request yet."""
    from starlette.middleware import Middleware

    app.user_middleware = [m for m in app.user_middleware if m.cls.__name__ not in CORS_MIDDLEWARE_NAMES]
    app.user_middleware.insert(0, Middleware(LocalOnly, policy=policy))
    app.middleware_stack = None  # rebuilt on the first request


def gradio_temp_folder() -> str:
    """Where Gradio keeps uploads and the copies of the images it shows (3.41 and 4.x)."""
    import tempfile

    return os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")
