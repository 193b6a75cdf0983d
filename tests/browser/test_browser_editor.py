"""The caption editor in a real browser (``python -m lib_lora serve``): the caption box follows batch
edits and undo, "Put suggestions in the remove box" spares the activation tag, and an image the
trainer cannot read is left out and reported. A screenshot of each goes to test-artifacts/browser/."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright import sync_api as playwright

from lib_lora.data.demo import write_demo_dataset
from support.browser_app import ARTIFACTS, CHROMIUM_ARGS, chromium_path, serve
from support.data_images import corrupt_zlib_png

pytestmark = [pytest.mark.browser, pytest.mark.slow]
expect = playwright.expect


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, str]]:
    work = tmp_path_factory.mktemp("editor-app")
    with serve(work) as (url, _log), playwright.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield chromium, url
        finally:
            chromium.close()


@pytest.fixture
def page(browser) -> Iterator[object]:
    chromium, url = browser
    errors: list[str] = []
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(30_000)
    page.goto(url)
    yield page
    page.close()
    assert errors == [], errors


def _el(page, elem_id: str):
    return page.locator(f"#{elem_id}").first


def _fill(page, elem_id: str, text: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input:not([type=checkbox]):not([type=radio])").first
    box.fill(str(text))
    box.press("Tab")


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _load(page, folder: Path) -> None:
    _fill(page, "lora_trainer_dataset_folder", str(folder))
    page.locator("#lora_trainer_tabs > .tab-nav > button", has_text=re.compile(r"^\s*Tag & edit\s*$")).click()
    _el(page, "lora_trainer_editor_load").click()
    expect(_el(page, "lora_trainer_editor_status")).to_contain_text("Loaded 12 images")


def test_caption_box_follows_batch_edits_and_undo(page, tmp_path: Path) -> None:
    data = write_demo_dataset(tmp_path / "data", captions="simple").root
    _load(page, data)
    page.locator("#lora_trainer_gallery img").first.click()
    box = page.locator("#lora_trainer_caption textarea")
    expect(box).to_have_value(re.compile(r"^bluebird, "))
    original = box.input_value()
    _fill(page, "lora_trainer_add_text", "mychar")
    _el(page, "lora_trainer_add").click()
    expect(_el(page, "lora_trainer_editor_status")).to_contain_text("12 captions changed")
    expect(box).to_have_value(f"mychar, {original}")  # the box shows the batch edit at once
    # a per-image edit made from the refreshed box keeps the batch edit
    box.fill(f"mychar, {original}, my edit")
    _el(page, "lora_trainer_caption_apply").click()
    expect(_el(page, "lora_trainer_editor_status")).to_contain_text("Edit caption: 1 caption changed")
    expect(box).to_have_value(f"mychar, {original}, my edit")
    _el(page, "lora_trainer_editor_undo").click()
    expect(box).to_have_value(f"mychar, {original}")  # undo of the per-image edit
    _el(page, "lora_trainer_editor_undo").click()
    expect(box).to_have_value(original)  # undo of the batch edit
    _shot(page, "editor-caption-box-follows-undo")


def test_suggestions_never_put_the_activation_tag_in_the_remove_box(page, tmp_path: Path) -> None:
    data = write_demo_dataset(tmp_path / "data", captions="simple").root
    _load(page, data)
    _fill(page, "lora_trainer_add_text", "demochar")  # the activation tag, first, as the tagger writes it
    _el(page, "lora_trainer_add").click()
    expect(_el(page, "lora_trainer_editor_status")).to_contain_text("12 captions changed")
    _fill(page, "lora_trainer_f_include", "redfox")
    _el(page, "lora_trainer_f_apply").click()
    expect(_el(page, "lora_trainer_page_info")).to_contain_text("5 of 12 images shown")
    expect(_el(page, "lora_trainer_suggestions")).to_contain_text("red theme (5)")
    expect(_el(page, "lora_trainer_suggestions")).not_to_contain_text("demochar")
    _el(page, "lora_trainer_use_suggestions").click()
    remove = page.locator("#lora_trainer_remove_text textarea, #lora_trainer_remove_text input").first
    expect(remove).to_have_value("red theme, simple background")
    _el(page, "lora_trainer_remove").click()
    expect(_el(page, "lora_trainer_editor_status")).to_contain_text(
        "Remove: red theme, simple background: 5 captions changed"
    )
    expect(_el(page, "lora_trainer_tag_list")).to_contain_text("demochar")
    _shot(page, "editor-suggestions-spare-activation-tag")


def test_editor_leaves_out_an_image_the_trainer_cannot_read(page, tmp_path: Path) -> None:
    data = write_demo_dataset(tmp_path / "data", captions="simple").root
    corrupt_zlib_png(data / "3_redfox" / "broken.png").with_suffix(".txt").write_text("redfox, broken")
    _load(page, data)
    status = _el(page, "lora_trainer_editor_status")
    expect(status).to_contain_text("3_redfox/broken.png cannot be read and is left out (training skips it too)")
    expect(_el(page, "lora_trainer_page_info")).to_contain_text("12 of 12 images shown")
    expect(page.locator("#lora_trainer_gallery img")).to_have_count(12)
    _shot(page, "editor-unreadable-image-left-out")
