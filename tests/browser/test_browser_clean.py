"""The Clean sub-tab in a real browser against ``python -m lib_lora serve``: paint a mask with the
brush, preview, accept, undo, batch-apply one mask to every image, restore an original. Screenshots
go to test-artifacts/browser/clean-*.png."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright import sync_api as playwright

from support.browser_app import ARTIFACTS, CHROMIUM_ARGS, app_page, chromium_path, serve
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
            expect(page.locator("#lora_trainer_clean_painter canvas").last).to_be_visible()
            page.wait_for_timeout(800)

            # 1. paint over the watermark with a bigger brush, preview, accept
            slider = page.locator("#lora_trainer_clean_brush input[type=number]")
            slider.fill("30")
            slider.press("Enter")
            page.wait_for_timeout(1500)  # the brush update re-renders the painter: paint after it
            paint(page, (0.45, 0.82, 0.96, 0.96))  # too far to the left ...
            _el(page, "lora_trainer_clean_strokes").click()
            expect(_el(page, "lora_trainer_clean_status")).to_contain_text("The mask covers")
            painted = float(
                re.search(r"covers ([\d.]+)%", _el(page, "lora_trainer_clean_status").inner_text()).group(1)
            )
            page.wait_for_timeout(800)
            page.locator("#lora_trainer_clean_eraser input").check()  # ... so erase the left part
            paint(page, (0.4, 0.8, 0.55, 0.98))
            _el(page, "lora_trainer_clean_strokes").click()
            expect(_el(page, "lora_trainer_clean_status")).not_to_contain_text(f"covers {painted:.1f}%")
            erased = float(re.search(r"covers ([\d.]+)%", _el(page, "lora_trainer_clean_status").inner_text()).group(1))
            assert painted > 5 and 0 < erased < painted, (painted, erased)
            page.locator("#lora_trainer_clean_eraser input").uncheck()
            page.wait_for_timeout(800)
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
            page.wait_for_timeout(800)
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
