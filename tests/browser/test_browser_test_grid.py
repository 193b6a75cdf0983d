"""The Test tab's epoch x prompt grid as the browser shows it: a small (demo model, 64 px) grid at its
own pixel size, never blown up to the page's width; a big one (4 epochs x 3 prompts of 1024 px)
shrunk to the width, a click shows it full size, another fits it again. The tab runs in-process on
a fake host whose grid is laid out by the real ``assemble_grid``; no model. Screenshots go to
test-artifacts/browser/test-grid-*.png."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image
from playwright import sync_api as playwright

from lib_lora.jobs.grid import assemble_grid
from lib_lora.standalone.app import build_app
from lib_lora.ui.host import GridRequest, GridResult
from support.browser_app import ARTIFACTS, CHROMIUM_ARGS, chromium_path, el, fill, free_port, open_tab
from support.ui_host import FakeHost, write_fake_lora

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PROMPTS = ["mylora, 1girl, solo, smile", "mylora, red dress, standing in a garden", "mylora, sitting, library"]


class GridHost(FakeHost):
    """Cells of the requested size in plain colours, laid out by the standalone app's assemble_grid."""

    def render_grid(self, request: GridRequest, events, stop) -> GridResult:
        size = request.width or 64
        count = len(request.lora_files) * len(request.prompts)
        images = [Image.new("RGB", (size, size), (30 + 15 * i, 110, 160)) for i in range(count)]
        rows = [p.stem for p in request.lora_files]
        return GridResult(images, rows, list(request.prompts), assemble_grid(images, rows, list(request.prompts)))


def shown(page) -> dict:
    """The grid's image as laid out: its box, its own pixel size and the block it sits in."""
    return page.evaluate(
        """() => { const i = document.querySelector('#lora_trainer_grid img'); const r = i.getBoundingClientRect();
        const b = document.querySelector('#lora_trainer_grid').getBoundingClientRect();
        return {width: r.width, height: r.height, natural: i.naturalWidth, natural_h: i.naturalHeight, block: b.width}; }"""
    )


def render(page, size: int) -> dict:
    fill(page, "lora_trainer_test_width", str(size))
    fill(page, "lora_trainer_test_height", str(size))
    el(page, "lora_trainer_test_render").click()
    page.wait_for_function(
        f"() => {{ const i = document.querySelector('#lora_trainer_grid img'); return i && i.complete && i.naturalWidth > {size * 3}; }}"
    )
    playwright.expect(page.locator("#lora_trainer_grid .wrap").first).to_have_class(re.compile(r"\bhide\b"))
    # Gradio fades the loading veil out over the new grid: measure (and shoot) once it is gone
    page.wait_for_function("() => getComputedStyle(document.querySelector('#lora_trainer_grid .wrap')).opacity === '0'")
    return shown(page)


def test_the_grid_is_shown_at_a_readable_size(tmp_path: Path) -> None:
    expect = playwright.expect
    host = GridHost(tmp_path)
    host.out.mkdir(parents=True)
    for epoch in range(1, 5):
        write_fake_lora(host.out / f"mylora-{epoch:06d}.safetensors", epoch, epoch * 10)
    app = build_app(host)  # the standalone app's page, on the fake host
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    errors: list[str] = []
    try:
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.set_default_timeout(60_000)
                page.goto(url)
                open_tab(page, "Train")
                fill(page, "lora_trainer_name", "mylora")
                open_tab(page, "Test")
                expect(el(page, "lora_trainer_test_result")).to_contain_text("4 files of the newest run")
                fill(page, "lora_trainer_test_prompts", "\n".join(PROMPTS))
                page.get_by_text("Image settings (empty = the host's current txt2img values)").click()

                # the demo model's 64 px images (enlarged to 192 px cells in the grid): their own size
                small = render(page, 64)
                assert small["natural"] < small["block"]
                assert small["width"] == pytest.approx(small["natural"], abs=1), small  # not blown up
                assert small["height"] == pytest.approx(small["natural_h"], abs=1), small
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                el(page, "lora_trainer_grid").screenshot(path=str(ARTIFACTS / "test-grid-1-small.png"))

                # a real model's 1024 px images: fit the width, in proportion; a click shows them full size
                big = render(page, 1024)
                assert big["natural"] > big["block"] and big["width"] <= big["block"], big
                assert big["width"] / big["height"] == pytest.approx(big["natural"] / big["natural_h"], rel=0.01)
                page.screenshot(path=str(ARTIFACTS / "test-grid-2-big.png"))
                page.locator("#lora_trainer_grid img").click()
                expect(el(page, "lora_trainer_grid")).to_have_class(re.compile(r"\blt-full\b"))
                full = shown(page)
                assert full["width"] == pytest.approx(full["natural"], abs=1), full
                page.screenshot(path=str(ARTIFACTS / "test-grid-3-big-full-size.png"))
                page.locator("#lora_trainer_grid img").click(position={"x": 20, "y": 20})
                expect(el(page, "lora_trainer_grid")).not_to_have_class(re.compile(r"\blt-full\b"))
                assert shown(page)["width"] <= big["block"]
            finally:
                browser.close()
    finally:
        app.close()
    assert errors == [], errors
