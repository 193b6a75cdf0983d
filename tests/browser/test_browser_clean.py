"""The Clean sub-tab in a real browser against ``python -m lib_lora serve``: paint a mask with the
brush, preview, accept, undo, batch-apply one mask to every image, restore an original. Screenshots
go to test-artifacts/browser/clean-*.png."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from playwright import sync_api as playwright

from support.browser_app import ARTIFACTS, CHROMIUM_ARGS, answered, app_page, chromium_path, serve
from support.lama_tiny import write_model

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RED = (250, 20, 20)


def _el(page, elem_id: str):
    return page.locator(f"#{elem_id}").first


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _fill(page, elem_id: str, text: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(str(text))
    box.press("Tab")


def has_red(path: Path) -> bool:
    return bool((np.asarray(Image.open(path).convert("RGB"))[..., 0] > 200).any())


def make_dataset(root: Path) -> dict[Path, bytes]:
    out = {}
    for n, (w, h) in enumerate([(480, 360), (640, 480)]):
        y, x = np.mgrid[0:h, 0:w]
        rgb = np.stack([40 + x * 60 // w, 120 + y * 60 // h, np.full_like(x, 200)], axis=-1).astype(np.uint8)
        rgb[int(h * 0.84) : int(h * 0.94), int(w * 0.62) : int(w * 0.94)] = RED  # the watermark corner
        path = root / "5_demo" / f"img{n}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(path)
        out[path] = path.read_bytes()
    return out


PAINTER_READY_JS = """(width) => { const p = document.querySelector('#lora_trainer_clean_painter');
    const i = p && p.querySelector('img'); const canvases = p ? Array.from(p.querySelectorAll('canvas')) : [];
    return Boolean(i && i.complete && i.naturalWidth === width && canvases.length
        && canvases.every(c => c.width === width) && !p.querySelector('.wrap.default:not(.hide)')); }"""


def painter_shows(page, width: int) -> None:
    """Wait until the painter shows the picked image (``width`` pixels wide) to paint on, as the user
    sees it: the image loaded, the sketch's canvases sized to it, no loading veil. (A pick, Add strokes,
    Undo... first empty the painter, then a chained event shows the image again: strokes painted in
    between land on nothing.)"""
    page.wait_for_function(PAINTER_READY_JS, arg=width)


def paint(page, box: tuple[float, float, float, float]) -> None:
    """Drag the brush over ``box`` (fractions of the canvas) in horizontal strokes."""
    canvas = page.locator("#lora_trainer_clean_painter canvas").last
    area = canvas.bounding_box()
    assert area and area["width"] > 50, area
    x0, y0 = area["x"] + area["width"] * box[0], area["y"] + area["height"] * box[1]
    x1, y1 = area["x"] + area["width"] * box[2], area["y"] + area["height"] * box[3]
    y = y0
    while y <= y1:
        page.mouse.move(x0, y)
        page.mouse.down()
        page.mouse.move(x1, y, steps=12)
        page.mouse.up()
        y += 6


def test_clean_in_the_browser(tmp_path: Path) -> None:
    expect = playwright.expect
    model = write_model(tmp_path / "lama" / "lama_fp32.onnx")
    data = tmp_path / "data"
    originals = make_dataset(data)
    first, second = sorted(originals)
    errors: list[str] = []
    with serve(tmp_path) as (url, log), playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = app_page(browser, url, errors, height=1100)
            _fill(page, "lora_trainer_dataset_folder", str(data))
            page.locator("#lora_trainer_tabs > .tab-nav > button", has_text=re.compile(r"^\s*Clean\s*$")).click()
            _fill(page, "lora_trainer_clean_local", str(model))
            _el(page, "lora_trainer_clean_load").click()
            expect(_el(page, "lora_trainer_clean_status")).to_contain_text("2 images in")
            page.locator("#lora_trainer_clean_gallery .thumbnail-item").first.click()
            expect(_el(page, "lora_trainer_clean_selected")).to_contain_text("5_demo/img0.png")
            painter_shows(page, 480)

            # 1. paint over the watermark with a bigger brush, preview, accept
            slider = page.locator("#lora_trainer_clean_brush input[type=number]")
            with answered(page):  # the new size reaches the painter (a stroke under way then jumps)
                slider.fill("30")
                slider.press("Enter")
            painter_shows(page, 480)
            paint(page, (0.45, 0.82, 0.96, 0.96))  # too far to the left ...
            _el(page, "lora_trainer_clean_strokes").click()
            expect(_el(page, "lora_trainer_clean_status")).to_contain_text("The mask covers")
            painted = float(
                re.search(r"covers ([\d.]+)%", _el(page, "lora_trainer_clean_status").inner_text()).group(1)
            )
            painter_shows(page, 480)  # the image again, the kept mask in red
            page.locator("#lora_trainer_clean_eraser input").check()  # ... so erase the left part
            paint(page, (0.4, 0.8, 0.55, 0.98))
            _el(page, "lora_trainer_clean_strokes").click()
            expect(_el(page, "lora_trainer_clean_status")).not_to_contain_text(f"covers {painted:.1f}%")
            erased = float(re.search(r"covers ([\d.]+)%", _el(page, "lora_trainer_clean_status").inner_text()).group(1))
            assert painted > 5 and 0 < erased < painted, (painted, erased)
            page.locator("#lora_trainer_clean_eraser input").uncheck()
            painter_shows(page, 480)
            _shot(page, "clean-0-mask-erased")
            _el(page, "lora_trainer_clean_preview").click()
            expect(_el(page, "lora_trainer_clean_status")).to_contain_text("pixels filled in", timeout=60_000)
            expect(page.locator("#lora_trainer_clean_result img")).to_be_visible()
            assert first.read_bytes() == originals[first]  # a preview writes nothing
            _shot(page, "clean-1-preview")
            _el(page, "lora_trainer_clean_accept").click()
            expect(_el(page, "lora_trainer_clean_status")).to_contain_text("original is in .clean-history")
            assert not has_red(first)
            expect(_el(page, "lora_trainer_clean_gallery")).to_contain_text("cleaned (1x)")
            _shot(page, "clean-2-accepted")

            # 2. undo puts the original back
            _el(page, "lora_trainer_clean_undo").click()
            expect(_el(page, "lora_trainer_clean_status")).to_contain_text("Undid the last cleaning")
            assert first.read_bytes() == originals[first]

            # 3. batch: one mask over both images
            painter_shows(page, 480)
            paint(page, (0.6, 0.82, 0.96, 0.96))
            _el(page, "lora_trainer_clean_select_all").click()
            expect(_el(page, "lora_trainer_clean_batch_images")).to_contain_text("img1.png")
            _el(page, "lora_trainer_clean_batch").click()
            expect(_el(page, "lora_trainer_clean_status")).to_contain_text("Cleaned 2 images", timeout=60_000)
            assert not has_red(first) and not has_red(second)
            expect(_el(page, "lora_trainer_clean_gallery")).to_contain_text("cleaned (1x) · 5_demo/img1.png")
            _shot(page, "clean-3-batch")

            # 4. restore the original of the second image
            page.locator("#lora_trainer_clean_gallery .thumbnail-item").nth(1).click()
            expect(_el(page, "lora_trainer_clean_selected")).to_contain_text("5_demo/img1.png")
            _el(page, "lora_trainer_clean_restore").click()
            expect(_el(page, "lora_trainer_clean_status")).to_contain_text("Restored the original of 5_demo/img1.png")
            assert second.read_bytes() == originals[second]
            _shot(page, "clean-4-restored")

            # 5. bad input: an empty mask is one message, nothing written
            _el(page, "lora_trainer_clean_clear").click()
            expect(_el(page, "lora_trainer_clean_status")).to_contain_text("Mask cleared")
            _el(page, "lora_trainer_clean_preview").click()
            expect(_el(page, "lora_trainer_clean_status")).to_contain_text("The mask is empty")
            assert second.read_bytes() == originals[second]
        finally:
            browser.close()
    assert errors == [], errors


class HeldSockets:
    """Gradio's queue sockets (one per event) through Playwright; the server's answers on the sockets
    opened from number :attr:`hold_from` on are held back until :meth:`release`: an event that
    takes a moment (the pick of a big file), made as long as the test needs."""

    def __init__(self) -> None:
        self.hold_from: int | None = None
        self.held: dict[int, list] = {}
        self.opened = 0

    def __call__(self, ws) -> None:
        index, self.opened = self.opened, self.opened + 1
        server = ws.connect_to_server()
        ws.on_message(lambda message: server.send(message))
        if self.hold_from is not None and index >= self.hold_from:
            self.held[index] = []

        def answer(message) -> None:
            if index in self.held:
                self.held[index].append((ws, message))
            else:
                ws.send(message)

        server.on_message(answer)

    def release(self) -> None:
        self.hold_from = None
        for index in list(self.held):
            for ws, message in self.held.pop(index):
                ws.send(message)


PAINTER_CANVASES = "() => Array.from(document.querySelectorAll('#lora_trainer_clean_painter canvas')).map(c => c.width)"


def test_painting_right_after_picking_lands_under_the_pointer(tmp_path: Path) -> None:
    """Pick a tall image while a wide one is in the painter and paint at once: a stroke begun before
    the pick arrives is dropped with the old image (Gradio 3's sketch went on drawing it in the new
    image's geometry, from somewhere the pointer never was); the painter is never clickable (no
    upload dialog) while it is empty; a stroke as soon as the new image shows lands under the pointer.
    A wide image fits the painter's column (it was drawn wider, its sides cut off)."""
    expect = playwright.expect
    data = tmp_path / "data"
    for n, (w, h) in enumerate([(640, 360), (300, 600)]):
        path = data / "5_demo" / f"img{n}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), (40, 120, 200)).save(path)
    sockets = HeldSockets()
    errors: list[str] = []
    choosers: list = []
    with serve(tmp_path) as (url, log), playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("filechooser", lambda chooser: choosers.append(chooser))
            page.set_default_timeout(30_000)
            page.route_web_socket(re.compile(r"/queue/join"), lambda ws: sockets(ws))
            page.goto(url)
            _fill(page, "lora_trainer_dataset_folder", str(data))
            page.locator("#lora_trainer_tabs > .tab-nav > button", has_text=re.compile(r"^\s*Clean\s*$")).click()
            _el(page, "lora_trainer_clean_load").click()
            expect(_el(page, "lora_trainer_clean_status")).to_contain_text("2 images in")
            thumbs = page.locator("#lora_trainer_clean_gallery .thumbnail-item")
            thumbs.first.click()
            page.wait_for_function(f"() => ({PAINTER_CANVASES})().includes(640)")
            area = page.locator("#lora_trainer_clean_painter").bounding_box()
            cx, cy = area["x"] + area["width"] / 2, area["y"] + area["height"] / 2
            wide = page.locator("#lora_trainer_clean_painter canvas").first.bounding_box()
            assert wide["x"] >= area["x"] and wide["x"] + wide["width"] <= area["x"] + area["width"], (wide, area)
            assert wide["width"] / wide["height"] == pytest.approx(640 / 360, abs=0.02)  # all of it, in proportion

            # 1. the pick of the tall image is under way; a stroke begins on the wide one and goes on
            strokes: list[list[tuple[float, float]]] = [[(cx - 20, cy + 150)]]  # where the pointer went, pressed
            sockets.hold_from = first = sockets.opened
            thumbs.nth(1).click()
            page.mouse.move(*strokes[0][0])
            page.mouse.down()
            for step in range(1, 6):
                strokes[0].append((cx - 20 + step * 4, cy + 150))
                page.mouse.move(*strokes[0][-1])
            assert page.evaluate(PAINTER_CANVASES)[:1] == [640]  # still the wide image
            sockets.release()
            for step in range(1, 41):  # until the wide image is gone, and on
                strokes[0].append((cx + step, cy + 150))
                page.mouse.move(*strokes[0][-1])
                page.wait_for_timeout(40)
                if 640 not in page.evaluate(PAINTER_CANVASES) and step > 25:
                    break
            page.mouse.up()
            assert sockets.opened > first

            # 2. paint as soon as the tall image shows
            page.wait_for_function(f"() => ({PAINTER_CANVASES})().includes(300)")
            box = page.locator("#lora_trainer_clean_painter canvas").last.bounding_box()
            assert box["width"] / box["height"] == pytest.approx(0.5, abs=0.02), box
            strokes.append(
                [
                    (box["x"] + box["width"] * (0.3 + step * 0.4 / 12), box["y"] + box["height"] * 0.25)
                    for step in range(13)
                ]
            )
            page.mouse.move(*strokes[1][0])
            page.mouse.down()
            for point in strokes[1][1:]:
                page.mouse.move(*point)
            page.mouse.up()
            # 3. keep the strokes: the painter is empty until it shows the mask; a click there opens nothing
            sockets.hold_from = sockets.opened + 1  # the click's own answer comes, showing the image waits
            _el(page, "lora_trainer_clean_strokes").click()
            expect(_el(page, "lora_trainer_clean_status")).to_contain_text("The mask covers")
            page.wait_for_function(f"() => ({PAINTER_CANVASES})().length === 0")
            empty = page.locator("#lora_trainer_clean_painter [data-testid=image]").bounding_box()
            page.mouse.click(empty["x"] + empty["width"] / 2, empty["y"] + empty["height"] / 2)
            page.wait_for_timeout(300)
            sockets.release()
            # the painter then shows the image with the kept mask in red
            page.wait_for_function(
                "() => { const i = document.querySelector('#lora_trainer_clean_painter img');"
                " return i && i.complete && i.naturalWidth === 300 && i.src.startsWith('data:'); }"
            )
            page.wait_for_timeout(300)
            # (an element shot: a full-page one resizes the viewport, and the sketch re-lays itself out)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.locator("#lora_trainer_clean_painter").screenshot(path=str(ARTIFACTS / "clean-5-paint-after-pick.png"))
            src = page.evaluate("() => document.querySelector('#lora_trainer_clean_painter img').src")
        finally:
            browser.close()
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")).astype(int)
    red = shown[..., 0] > shown[..., 2]  # (40, 120, 200) tinted red by the kept mask
    # where the pointer went while pressed, in the tall image's pixels, widened by the brush (20 px)
    under = Image.new("L", (300, 600), 0)
    draw = ImageDraw.Draw(under)
    for stroke in strokes:
        points = [((px - box["x"]) / box["width"] * 300, (py - box["y"]) / box["height"] * 600) for px, py in stroke]
        draw.line(points, fill=255, width=36)
        for px, py in points:  # the brush's round ends
            draw.ellipse((px - 18, py - 18, px + 18, py + 18), fill=255)
    stray = red & (np.asarray(under) == 0)
    assert red[150, 95:205].mean() > 0.9, "the stroke after the pick is not in the mask"
    assert stray.sum() == 0, f"{stray.sum()} mask pixels where the pointer never was, e.g. {np.argwhere(stray)[:3]}"
    assert choosers == [], "a click on the empty painter opened the upload dialog"
    assert errors == [], errors
