"""Run the standalone app (``python -m lib_lora serve``) in a subprocess and drive it with
Playwright on Debian's chromium (never ``playwright install``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = os.environ.get("LIB_LORA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"


def chromium_path() -> str:
    path = CHROMIUM if os.path.isfile(CHROMIUM) else shutil.which("chromium")
    if not path:
        raise RuntimeError("The browser tests need Debian's chromium (apt-get install chromium); .ci/run installs it.")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(
        f"serve did not answer at {url} within {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}"
    )


@contextlib.contextmanager
def serve(workdir: Path, *args: str) -> Iterator[tuple[str, Path]]:
    """Start ``python -m lib_lora serve`` on a free loopback port; yields (url, log file)."""
    port = free_port()
    log = workdir / "serve.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "lib_lora", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=workdir, stdout=handle, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(url, process, log)
        yield url, log
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def app_page(browser, url: str, errors: list[str], height: int = 1000):
    """A page on the app at ``url``: page errors collected into ``errors``, 30 s default timeout."""
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(30_000)
    page.goto(url)
    return page


def open_demo_app(pw, url: str, errors: list[str]):
    """Chromium on the app serving the demo model; returns (browser, page) once the page is up."""
    from playwright.sync_api import expect

    browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
    page = app_page(browser, url, errors)
    expect(el(page, "lora_trainer_header")).to_contain_text("demo")
    return browser, page


# -- page helpers (elem_ids of the tab) ----------------------------------------------------------------


def el(page, elem_id: str):
    """The element with this elem_id (Gradio 3 repeats a Markdown/HTML id on an inner element)."""
    return page.locator(f"#{elem_id}").first


def open_tab(page, name: str) -> None:
    import re

    page.locator("#lora_trainer_tabs > .tab-nav > button", has_text=re.compile(rf"^\s*{re.escape(name)}\s*$")).click()


def field(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input:not([type=checkbox]):not([type=radio])").first


def fill(page, elem_id: str, text: str) -> None:
    box = field(page, elem_id)
    box.fill(str(text))
    box.press("Tab")


def check(page, elem_id: str, on: bool) -> None:
    box = page.locator(f"#{elem_id} input[type=checkbox]")
    if box.is_checked() != on:
        box.click()


@contextlib.contextmanager
def answered(page, timeout: float = 60_000) -> Iterator[None]:
    """Wait, as the block ends, until the app has answered the event a click or an edit in the block
    triggers: for an event whose answer changes nothing a test can wait for on the page (the painter's
    brush size). Gradio 3 opens one queue socket per event and closes it once the answer is in the page."""
    with page.expect_websocket(lambda ws: "/queue/join" in ws.url, timeout=timeout) as info:
        yield
    socket = info.value
    if not socket.is_closed():
        socket.wait_for_event("close", timeout=timeout)


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# a pulsing orange border Gradio draws around a component whose event is still "generating"
VISIBLE_GENERATING_JS = """() => Array.from(document.querySelectorAll('#tab_lora_trainer .generating'))
    .filter(e => { const s = getComputedStyle(e); return s.opacity !== '0' && s.display !== 'none'
                   && s.borderTopColor !== 'rgba(0, 0, 0, 0)' && s.borderTopWidth !== '0px'; })
    .map(e => (e.closest('[id]') || e).id)"""
# the progress texts Gradio's trackers show (a tracker an event hides keeps its text, at opacity 0)
PROGRESS_TEXTS_JS = """() => Array.from(document.querySelectorAll('#tab_lora_trainer .progress-text, #tab_lora_trainer .meta-text, #tab_lora_trainer .meta-text-center'))
    .filter(e => { const w = e.closest('.wrap'); return !(w && getComputedStyle(w).opacity === '0'); })
    .map(e => e.innerText)"""
