"""Picking LoKr in a real browser against ``python -m lib_lora serve`` (tiny-sd15): the "Network type"
dropdown fills in LoKr's starting values and the file size, one epoch trains, and the epoch file is a
LoKr that ``inspect`` reads back with a matching hash. Screenshot in test-artifacts/browser/6-lokr.png."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from playwright import sync_api as playwright

from lib_lora.cli import main
from support.browser_app import check, el, field, fill, open_demo_app, open_tab, serve, shot
from support.train_data import small_dataset

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_picking_lokr_in_the_dropdown_trains_a_lokr(tmp_path: Path) -> None:
    expect = playwright.expect
    data = small_dataset(tmp_path / "data")
    lora = tmp_path / "lora"
    errors: list[str] = []
    with serve(tmp_path, "--lora-dir", str(lora)) as (url, log), playwright.sync_playwright() as pw:
        browser, page = open_demo_app(pw, url, errors)
        try:
            fill(page, "lora_trainer_dataset_folder", str(data))
            open_tab(page, "Train")
            fill(page, "lora_trainer_cfg_resolution", "64")
            check(page, "lora_trainer_cfg_enable_bucket", False)
            fill(page, "lora_trainer_cfg_max_train_epochs", "1")
            fill(page, "lora_trainer_cfg_train_batch_size", "8")
            expect(field(page, "lora_trainer_cfg_network_dim")).to_have_value("8")  # the demo form's LoRA
            # the user opens "Network type" and picks LoKr from its list
            el(page, "lora_trainer_cfg_algo").locator("input").click()
            page.locator("ul.options li", has_text="lokr").click()
            expect(el(page, "lora_trainer_cfg_algo").locator("input")).to_have_value("lokr")
            expect(field(page, "lora_trainer_cfg_network_dim")).to_have_value("10000")  # LoKr's starting values
            expect(field(page, "lora_trainer_cfg_factor")).to_have_value("8")
            expect(el(page, "lora_trainer_estimate")).to_contain_text("File size: ~")
            el(page, "lora_trainer_start").click()
            expect(el(page, "lora_trainer_train_result")).to_contain_text("Training finished", timeout=150_000)
            expect(el(page, "lora_trainer_epochs")).to_contain_text("mylora.safetensors")
            shot(page, "6-lokr")
        finally:
            browser.close()
    assert errors == [], errors
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["inspect", str(lora / "mylora.safetensors"), "--json"]) == 0
    report = json.loads(out.getvalue())
    assert report["network"] == "LoKr" and "8" in report["lokr_factors"]
    assert report["sshs_model_hash"]["match"] is True
    assert json.loads(report["metadata"]["ss_network_args"])["algo"] == "lokr"
