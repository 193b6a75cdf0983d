"""The whole workflow in a real browser against ``python -m lib_lora serve`` (tiny-sd15):
demo dataset -> tag (tiny ONNX tagger) -> batch edit and save -> train 2 epochs -> epochs listed and
loss chart -> Test grid. A screenshot of each sub-tab goes to test-artifacts/browser/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright import sync_api as playwright

from support.browser_app import ARTIFACTS, open_demo_app, serve
from support.tagger_tiny import write_tiny_tagger

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _el(page, elem_id: str):
    """The element with this elem_id (Gradio 3 repeats a Markdown/HTML id on an inner element)."""
    return page.locator(f"#{elem_id}").first


def _tab(page, name: str) -> None:
    page.locator("#lora_trainer_tabs > .tab-nav > button", has_text=re.compile(rf"^\s*{re.escape(name)}\s*$")).click()


def _fill(page, elem_id: str, text: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input:not([type=checkbox]):not([type=radio])").first
    box.fill(str(text))
    box.press("Tab")


def _check(page, elem_id: str, on: bool) -> None:
    box = page.locator(f"#{elem_id} input[type=checkbox]")
    if box.is_checked() != on:
        box.click()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_whole_workflow_in_the_browser(tmp_path: Path) -> None:
    expect = playwright.expect
    tagger = write_tiny_tagger(tmp_path / "tiny-tagger", size=64)
    data = tmp_path / "data"
    lora = tmp_path / "lora"
    errors: list[str] = []
    with serve(tmp_path, "--lora-dir", str(lora)) as (url, log), playwright.sync_playwright() as pw:
        browser, page = open_demo_app(pw, url, errors)
        try:
            # 1. Dataset: the demo dataset, its folders and buckets
            _fill(page, "lora_trainer_dataset_folder", str(data))
            _el(page, "lora_trainer_make_demo").click()
            expect(_el(page, "lora_trainer_dataset_status")).to_contain_text("wrote 12 images", ignore_case=True)
            overview = _el(page, "lora_trainer_dataset_overview")
            for folder in ("3_redfox", "2_bluebird", "2_greenleaf"):
                expect(overview).to_contain_text(folder)
            expect(_el(page, "lora_trainer_buckets")).to_contain_text("steps per epoch")
            _shot(page, "1-dataset")

            # 2. Tag & edit: tag with the tiny tagger, add a tag to every caption, save
            _tab(page, "Tag & edit")
            expect(_el(page, "lora_trainer_tagger_provider")).to_contain_text("Tagging runs on the")
            _fill(page, "lora_trainer_tagger_local", str(tagger))
            _fill(page, "lora_trainer_tagger_activation", "demochar")
            _el(page, "lora_trainer_tag_start").click()
            expect(_el(page, "lora_trainer_tag_result")).to_contain_text("12 captions written", timeout=90_000)
            expect(_el(page, "lora_trainer_editor_status")).to_contain_text("Loaded 12 images", timeout=30_000)
            expect(page.locator("#lora_trainer_gallery img").first).to_be_visible()
            _fill(page, "lora_trainer_add_text", "demo style")
            page.locator("#lora_trainer_add_where label", has_text="end").click()
            _el(page, "lora_trainer_add").click()
            expect(_el(page, "lora_trainer_editor_status")).to_contain_text("12 captions changed")
            expect(_el(page, "lora_trainer_preview")).to_contain_text("12 captions will be written")
            # a per-image edit: pick the first thumbnail, change its caption
            page.locator("#lora_trainer_gallery img").first.click()
            caption_box = page.locator("#lora_trainer_caption textarea")
            expect(caption_box).to_have_value(re.compile(r"^demochar, .*demo style$"))
            expect(_el(page, "lora_trainer_selected_info")).to_contain_text("2_bluebird/bluebird_01.png")
            caption_box.fill("demochar, blue theme, demo style")
            _el(page, "lora_trainer_caption_apply").click()
            expect(_el(page, "lora_trainer_editor_status")).to_contain_text("Edit caption: 1 caption changed")
            _el(page, "lora_trainer_save").click()
            expect(_el(page, "lora_trainer_editor_status")).to_contain_text("Saved 12 captions")
            caption = (data / "3_redfox" / "redfox_01.txt").read_text(encoding="utf-8")
            assert caption.startswith("demochar, ") and caption.rstrip().endswith("demo style"), caption
            edited = (data / "2_bluebird" / "bluebird_01.txt").read_text(encoding="utf-8")
            assert edited.strip() == "demochar, blue theme, demo style", edited
            _shot(page, "2-tag-and-edit")

            # 3. Train: 2 epochs on tiny-sd15, small settings
            _tab(page, "Train")
            expect(_el(page, "lora_trainer_model_info")).to_contain_text("tiny-sd15")
            _fill(page, "lora_trainer_cfg_resolution", "64")
            _check(page, "lora_trainer_cfg_enable_bucket", False)
            _fill(page, "lora_trainer_cfg_max_train_epochs", "2")
            _fill(page, "lora_trainer_cfg_save_every_n_epochs", "1")
            _fill(page, "lora_trainer_cfg_train_batch_size", "8")
            _fill(page, "lora_trainer_cfg_network_dim", "4")
            _check(page, "lora_trainer_cfg_network_train_unet_only", True)
            _fill(page, "lora_trainer_cfg_sample_every_n_epochs", "1")
            _fill(page, "lora_trainer_cfg_sample_prompts", "demochar, demo style --s 2")
            expect(_el(page, "lora_trainer_estimate")).to_contain_text("4 steps per epoch")
            _el(page, "lora_trainer_start").click()
            expect(_el(page, "lora_trainer_train_result")).to_contain_text("Training finished", timeout=150_000)
            epochs = _el(page, "lora_trainer_epochs")
            expect(epochs).to_contain_text("mylora-000001.safetensors")
            expect(epochs).to_contain_text("mylora.safetensors")  # the last epoch, as sd-scripts names it
            expect(page.locator("#lora_trainer_chart svg polyline")).to_have_count(2)
            expect(_el(page, "lora_trainer_live")).to_contain_text("done")
            expect(page.locator("#lora_trainer_samples img").first).to_be_visible()
            assert len(list((lora / "mylora-samples").glob("*.png"))) == 2
            assert (lora / "mylora-000001.safetensors").is_file() and (lora / "mylora.safetensors").is_file()
            assert (lora / "mylora.json").is_file()
            _shot(page, "3-train")

            # 4. Test: the epoch x prompt grid
            _tab(page, "Test")
            expect(_el(page, "lora_trainer_test_result")).to_contain_text("2 files of the newest run")
            expect(page.locator("#lora_trainer_test_prompts textarea")).to_have_value(re.compile("demochar"))
            page.get_by_text("Image settings (empty = the host's current txt2img values)").click()
            _fill(page, "lora_trainer_test_width", "64")
            _fill(page, "lora_trainer_test_height", "64")
            _fill(page, "lora_trainer_test_steps", "3")
            _el(page, "lora_trainer_test_render").click()
            expect(_el(page, "lora_trainer_test_result")).to_contain_text("2 files x", timeout=120_000)
            expect(page.locator("#lora_trainer_grid img")).to_be_visible()
            assert list((lora / "mylora-grids").glob("grid-*.png"))
            _el(page, "lora_trainer_send").click()
            expect(page.locator("#lora_trainer_send_prompt textarea")).to_have_value(
                re.compile(r"^demochar, .*<lora:mylora:1>$")
            )
            _shot(page, "4-test")
        finally:
            browser.close()
    assert errors == [], errors
