"""The automatic pick in a real browser against ``python -m lib_lora serve`` (tiny-sd15): a run trained
with a held-out split (3 epoch files with their validation loss), then Test -> Score epochs -> the chart,
the pick in words and "Keep this one" -> the Lora folder as the README says. Screenshot in
test-artifacts/browser/5-score.png."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright import sync_api as playwright

from lib_lora.config import build_config
from lib_lora.jobs.train import train
from support.browser_app import ARTIFACTS, CHROMIUM_ARGS, app_page, chromium_path, serve
from support.tagger_tiny import write_tiny_tagger
from support.train_data import small_dataset

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _el(page, elem_id: str):
    return page.locator(f"#{elem_id}").first


def _fill(page, elem_id: str, text: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input:not([type=checkbox]):not([type=radio])").first
    box.fill(str(text))
    box.press("Tab")


def test_score_pick_and_keep_in_the_browser(tmp_path: Path) -> None:
    from lib_lora.standalone.models import load_model

    expect = playwright.expect
    lora = tmp_path / "lora"
    small_dataset(tmp_path / "data")
    cfg = build_config(
        {
            "train_data_dir": str(tmp_path / "data"), "output_dir": str(lora), "output_name": "mylora",
            "resolution": "64", "train_batch_size": 2, "max_train_epochs": 3, "save_every_n_epochs": 1, "seed": 7,
            "network_dim": 4, "network_alpha": 2, "learning_rate": 1e-3, "mixed_precision": "no",
            "validation_split": 0.4,
        },
        family="sd1",
    )  # fmt: skip
    train(cfg, load_model("tiny-sd15", device="cpu"))
    tagger = write_tiny_tagger(tmp_path / "tiny-tagger", size=64)
    errors: list[str] = []
    with serve(tmp_path, "--lora-dir", str(lora)) as (url, log), playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = app_page(browser, url, errors)
            page.locator("#lora_trainer_tabs > .tab-nav > button", has_text="Test").click()
            expect(_el(page, "lora_trainer_test_result")).to_contain_text("3 files of the newest run")
            page.get_by_text("Image settings (empty = the host's current txt2img values)").click()
            _fill(page, "lora_trainer_test_width", "64")
            _fill(page, "lora_trainer_test_height", "64")
            _fill(page, "lora_trainer_test_steps", "2")
            _fill(page, "lora_trainer_score_seeds", "1, 2")
            _fill(page, "lora_trainer_score_flex", "red theme")
            _fill(page, "lora_trainer_score_drift", "blue sky")
            _fill(page, "lora_trainer_score_tagger", str(tagger))
            # the cost is shown before anything starts
            expect(_el(page, "lora_trainer_score_cost")).to_contain_text("6 images per epoch file")
            expect(_el(page, "lora_trainer_score_cost")).to_contain_text("20 images for 3 files")
            _el(page, "lora_trainer_keep").click()  # too early: it says why ...
            expect(_el(page, "lora_trainer_keep_result")).to_contain_text("Score the epochs first")
            _el(page, "lora_trainer_score").click()
            result = _el(page, "lora_trainer_score_result")
            expect(result).to_contain_text("Core tags", timeout=180_000)
            # ... and the scores make that line obsolete: it is gone, the pick is in the Keep list
            expect(_el(page, "lora_trainer_keep_result")).not_to_contain_text("Score the epochs first")
            expect(page.locator("#lora_trainer_score_result svg polyline")).to_have_count(5)  # 4 scores + val loss
            expect(page.locator("#lora_trainer_score_result .lt-score-pick")).to_have_count(1)
            expect(result).to_contain_text("mylora-000001")
            reason = page.locator("#lora_trainer_score_result .lt-msg").first.inner_text()
            assert "best epoch" in reason or "No confident pick" in reason, reason
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "5-score.png"), full_page=True)
            _el(page, "lora_trainer_keep").click()
            expect(_el(page, "lora_trainer_keep_result")).to_contain_text("moved, not deleted")
            page.screenshot(path=str(ARTIFACTS / "5-score-kept.png"), full_page=True)
        finally:
            browser.close()
    assert errors == [], errors
    names = sorted(p.name for p in lora.iterdir())
    assert names == ["archive", "mylora-grids", "mylora-log.jsonl", "mylora.json", "mylora.safetensors"], names
    assert sorted(p.name for p in (lora / "archive").iterdir()) == [
        f"mylora-00000{e}.{ext}" for e in (1, 2, 3) for ext in ("json", "safetensors")
    ]
