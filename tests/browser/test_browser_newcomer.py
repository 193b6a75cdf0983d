"""What a newcomer trying the page with wrong input sees, in a real browser against
``python -m lib_lora serve`` (tiny-sd15): every refused click says why, and the message stays on the
page (no live status line overwrites it a moment later)."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright import sync_api as playwright

from support.browser_app import CHROMIUM_ARGS, app_page, chromium_path, el, fill, serve, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]
expect = playwright.expect


def test_a_refused_import_says_why_and_the_message_stays(tmp_path: Path) -> None:
    errors: list[str] = []
    with serve(tmp_path, "--lora-dir", "lora") as (url, _log), playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = app_page(browser, url, errors)
            fill(page, "lora_trainer_dataset_folder", "data")
            page.get_by_text("Import from a booru").click()
            fill(page, "lora_trainer_query", "hatsune_miku")  # tags, but no folder name
            el(page, "lora_trainer_import_start").click()
            panel = el(page, "lora_trainer_import")
            expect(panel).to_contain_text("No folder name for the import", timeout=15_000)
            page.wait_for_timeout(2500)  # the status line polls every second: the reason must stay
            expect(panel).to_contain_text("No folder name for the import: enter one in 'Import into folder name'")
            shot(page, "newcomer-import-refused")
        finally:
            browser.close()
    assert not (tmp_path / "data").exists()  # nothing was created
    assert errors == [], errors
