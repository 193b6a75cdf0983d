"""A stand-in for the Hugging Face Hub's file endpoint, and a hand-built local HF cache.

``FakeHub`` serves ``/{repo_id}/resolve/{revision}/{filename}`` on 127.0.0.1 (HEAD and GET, the
headers ``hf_hub_download`` reads: ``X-Repo-Commit``, ``ETag``, ``Content-Length``), so the real
huggingface_hub download code runs without a network. ``make_cache_entry`` writes the cache layout
(``models--owner--name/refs/<rev>``, ``snapshots/<commit>/<file>``) by hand for offline tests.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, files: dict[tuple[str, str], bytes], commit: str = COMMIT) -> None:
        """``files``: ``(repo_id, filename) -> content``, served for any revision."""
        self.files = files
        self.commit = commit
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _lookup(self) -> bytes | None:
                hub.requests.append((self.command, self.path))
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return None
                repo_id, filename = "/".join(parts[:2]), "/".join(parts[4:])
                return hub.files.get((repo_id, filename))

            def _headers(self, content: bytes) -> None:
                self.send_response(200)
                self.send_header("X-Repo-Commit", hub.commit)
                self.send_header("ETag", '"' + hashlib.sha256(content).hexdigest() + '"')
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()

            def _missing(self) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:
                content = self._lookup()
                if content is None:
                    self._missing()
                else:
                    self._headers(content)

            def do_GET(self) -> None:
                content = self._lookup()
                if content is None:
                    self._missing()
                    return
                self._headers(content)
                self.wfile.write(content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def make_cache_entry(
    cache_dir: Path, repo_id: str, files: dict[str, bytes], revision: str = "main", commit: str = COMMIT
) -> Path:
    """Write ``files`` into the HF cache layout for ``repo_id`` at ``revision``; returns the snapshot."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        (snapshot / name).write_bytes(content)  # a copy, as the cache does where symlinks are unavailable
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot
