"""The standalone app's HTTP surface as another web site (or a DNS-rebinding host name) sees it:
only its own page may drive it, and /file= serves only its own folders."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from support.browser_app import serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]
EVIL = "http://evil.example"
FRIEND = "http://localhost:3000"


def _get(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


async def _websocket_opens(url: str, origin: str) -> bool:
    import websockets

    try:
        async with websockets.connect(url, origin=origin, open_timeout=10) as ws:
            await ws.send(json.dumps({"hash": "x"}))
            await asyncio.wait_for(ws.recv(), 10)
            return True
    except Exception:
        return False


def test_only_the_apps_own_page_drives_it_and_only_its_files_are_served(tmp_path: Path) -> None:
    lora = tmp_path / "lora"
    lora.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(lora / "mylora-sample.png")
    (tmp_path / "secret.txt").write_text("not for the page")  # in the app's working folder
    with serve(tmp_path, "--lora-dir", str(lora), "--allow-origin", FRIEND) as (url, _log):
        port = url.rstrip("/").rsplit(":", 1)[1]
        status, headers, _ = _get(url)
        assert status == 200 and "access-control-allow-origin" not in headers
        # another site: refused, and never told "*"
        status, headers, body = _get(url + "config", {"Origin": EVIL})
        assert status == 403 and headers.get("access-control-allow-origin") is None, body
        status, _, _ = _get(url + "run/predict", {"Origin": EVIL, "Content-Type": "application/json"}, b"{}")
        assert status == 403
        status, _, _ = _get(url + "config", {"Origin": "null"})
        assert status == 403
        # the page itself, and the origin the user allowed (CORS for it alone)
        assert _get(url + "config", {"Origin": url.rstrip("/")})[0] == 200
        status, headers, _ = _get(url + "config", {"Origin": FRIEND})
        assert status == 200 and headers.get("access-control-allow-origin") == FRIEND
        # DNS rebinding: a foreign host name that resolves to 127.0.0.1
        assert _get(url + "config", {"Host": f"evil.example:{port}"})[0] == 403
        # an <img> on another page (no Origin, but the browser says cross-site)
        assert _get(url + "config", {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"})[0] == 403
        # the queue's websocket (gradio 3): not from another site
        ws = url.replace("http://", "ws://") + "queue/join"
        assert asyncio.run(_websocket_opens(ws, url.rstrip("/"))) is True
        assert asyncio.run(_websocket_opens(ws, EVIL)) is False
        # files: the LoRA folder's image yes; /etc/passwd and the working folder's files no
        status, headers, body = _get(f"{url}file={lora / 'mylora-sample.png'}")
        assert status == 200 and body[:4] == b"\x89PNG"
        assert _get(url + "file=/etc/passwd")[0] == 403
        assert _get(f"{url}file={tmp_path / 'secret.txt'}")[0] == 403
        assert _get(f"{url}file={lora}/../secret.txt")[0] == 403
        assert _get(url + "file=secret.txt")[0] == 403
