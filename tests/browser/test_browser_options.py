"""Issue 17's training options in a real browser against ``python -m lib_lora serve`` (tiny-sd15): the
per-block table under Train > Advanced settings, and the caption editor's gallery marking images with
masks. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright import sync_api as playwright

from lib_lora.data.demo import write_demo_dataset
from support.browser_app import ARTIFACTS, el, field, fill, open_demo_app, open_tab, serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]
expect = playwright.expect


def _shot_between(page, first: str, last: str, name: str) -> None:
    """A screenshot of the page from element ``first`` down to element ``last``."""
    top, bottom = el(page, first).bounding_box(), el(page, last).bounding_box()
    assert top and bottom
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    scroll = page.evaluate("window.scrollY")  # bounding boxes are in viewport coordinates
    clip = {"x": 0, "y": top["y"] + scroll - 8, "width": 1400, "height": bottom["y"] + bottom["height"] - top["y"] + 16}
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), clip=clip, full_page=True)


def _cell(page, row: int, col: int):
    return el(page, "lora_trainer_block_table").locator("tbody tr").nth(row).locator("td").nth(col)


def _type_cell(page, row: int, col: int, text: str) -> None:
    _cell(page, row, col).dblclick()
    page.keyboard.press("Control+A")
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def test_block_table_edits_the_kohya_strings_and_follows_them(tmp_path: Path) -> None:
    errors: list[str] = []
    with serve(tmp_path, "--lora-dir", "lora") as (url, _log), playwright.sync_playwright() as pw:
        browser, page = open_demo_app(pw, url, errors)
        try:
            open_tab(page, "Train")
            el(page, "lora_trainer_advanced").locator("text=Advanced settings").first.click()
            table = el(page, "lora_trainer_block_table")
            table.scroll_into_view_if_needed()
            expect(el(page, "lora_trainer_block_status")).to_contain_text("Numbering for SD1.x: 25 blocks")
            expect(table.locator("tbody tr")).to_have_count(25)
            expect(_cell(page, 12, 1)).to_have_text("M00 middle")

            # a cell edited -> sd-scripts' string (the folded field the CLI/TOML key names)
            _type_cell(page, 16, 2, "0.5")
            up = field(page, "lora_trainer_cfg_up_lr_weight")
            expect(up).to_have_value("1,1,1,0.5,1,1,1,1,1,1,1,1")
            expect(_cell(page, 13, 2)).to_have_text("1")  # the rest of the up blocks: default factor 1, shown

            # a bad cell: one sentence naming the block; the string stays
            _type_cell(page, 20, 3, "big")
            expect(el(page, "lora_trainer_block_status")).to_contain_text(
                "Block 20 (OUT07 up): the dim must be a whole number of 0 or more, not 'big'."
            )
            assert field(page, "lora_trainer_cfg_block_dims").input_value() == ""
            _type_cell(page, 20, 3, "2")
            network_dim = str(int(float(field(page, "lora_trainer_cfg_network_dim").input_value())))
            dims = ",".join([network_dim] * 20 + ["2"] + [network_dim] * 4)  # empty cells: the network's dim
            expect(field(page, "lora_trainer_cfg_block_dims")).to_have_value(dims)

            # a string typed (or pasted from a guide) -> the table follows
            page.locator("text=The same as sd-scripts' comma-separated settings").first.click()
            fill(page, "lora_trainer_cfg_down_lr_weight", "0,0,0,0,0,0,1,1,1,1,1,1")
            expect(_cell(page, 5, 2)).to_have_text("0")
            expect(_cell(page, 6, 2)).to_have_text("1")
            _shot_between(page, "lora_trainer_block_intro", "lora_trainer_block_strings", "17-block-table")
            expect(el(page, "lora_trainer_estimate")).not_to_contain_text("not valid")
        finally:
            browser.close()
    assert errors == [], errors


def test_editor_gallery_marks_the_images_with_masks(tmp_path: Path) -> None:
    from PIL import Image

    data = write_demo_dataset(tmp_path / "data", captions="simple").root
    masks = tmp_path / "masks"
    (masks / "3_redfox").mkdir(parents=True)
    Image.new("L", (8, 8), 255).save(masks / "3_redfox" / "redfox_02.png")
    Image.new("L", (8, 8), 255).save(masks / "bluebird_01.png")
    errors: list[str] = []
    with serve(tmp_path, "--lora-dir", "lora") as (url, _log), playwright.sync_playwright() as pw:
        browser, page = open_demo_app(pw, url, errors)
        try:
            fill(page, "lora_trainer_dataset_folder", str(data))
            open_tab(page, "Train")  # the mask folder is a training setting (masked_loss + conditioning_data_dir)
            el(page, "lora_trainer_advanced").locator("text=Advanced settings").first.click()
            fill(page, "lora_trainer_cfg_conditioning_data_dir", str(masks))
            open_tab(page, "Tag & edit")
            el(page, "lora_trainer_editor_load").click()
            expect(el(page, "lora_trainer_editor_status")).to_contain_text("Loaded 12 images")
            info = el(page, "lora_trainer_page_info")
            expect(info).to_contain_text("2 of the 12 images on this page have one (marked mask)")
            gallery = el(page, "lora_trainer_gallery")
            expect(gallery).to_contain_text("mask · 3_redfox/redfox_02.png")
            expect(gallery).to_contain_text("mask · 2_bluebird/bluebird_01.png")
            assert gallery.inner_text().count("mask · ") == 2
            _shot_between(page, "lora_trainer_gallery", "lora_trainer_page_info", "17-editor-mask-marks")
            # the mask source changed on the Train tab: the marks follow without a reload
            open_tab(page, "Train")
            fill(page, "lora_trainer_cfg_conditioning_data_dir", "")
            open_tab(page, "Tag & edit")
            expect(info).not_to_contain_text("Masks")
            assert "mask · " not in gallery.inner_text()
        finally:
            browser.close()
    assert errors == [], errors
