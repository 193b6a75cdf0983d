"""No lost work, in a real browser against ``python -m lib_lora serve`` (tiny-sd15): a second Start with
the same name is refused with Resume / a new name / Overwrite; Stop, then Resume from the list
continues the run to its end; Overwrite moves the old run to the trash. Screenshots go to
test-artifacts/browser/run-safety-*.png."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
from playwright import sync_api as playwright

from support.browser_app import CHROMIUM_ARGS, app_page, check, chromium_path, el, fill, serve, shot
from support.train_data import make_dataset

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _steps(path: Path) -> int:
    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        return int(json.loads(handle.read(size))["__metadata__"]["ss_steps"])


def _settings(page, epochs: int) -> None:
    """Two images, batch 1: two steps per epoch (the page's own demo dataset is the workflow test's)."""
    fill(page, "lora_trainer_cfg_resolution", "64")
    check(page, "lora_trainer_cfg_enable_bucket", False)
    fill(page, "lora_trainer_cfg_max_train_epochs", str(epochs))
    fill(page, "lora_trainer_cfg_save_every_n_epochs", "1")
    fill(page, "lora_trainer_cfg_train_batch_size", "1")
    fill(page, "lora_trainer_cfg_network_dim", "4")
    check(page, "lora_trainer_cfg_network_train_unet_only", True)


def test_same_name_is_refused_then_stop_resume_and_overwrite_in_the_browser(tmp_path: Path) -> None:
    expect = playwright.expect
    data = tmp_path / "data"
    lora = tmp_path / "lora"
    errors: list[str] = []
    with serve(tmp_path, "--lora-dir", str(lora)) as (url, log), playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = app_page(browser, url, errors)
            make_dataset(data, {"1_redfox": [(64, 64), (64, 64)]})
            fill(page, "lora_trainer_dataset_folder", str(data))
            page.locator("#lora_trainer_tabs > .tab-nav > button", has_text=re.compile(r"^\s*Train\s*$")).click()
            expect(el(page, "lora_trainer_model_info")).to_contain_text("tiny-sd15")
            _settings(page, epochs=1)
            result = el(page, "lora_trainer_train_result")

            # 1. a finished run, then Start again with the same name: refused, the three ways offered
            el(page, "lora_trainer_start").click()
            expect(result).to_contain_text("Training finished: 2 steps", timeout=150_000)
            first = (lora / "mylora.safetensors").read_bytes()
            el(page, "lora_trainer_start").click()
            expect(result).to_contain_text("A run named mylora already exists", timeout=60_000)
            expect(result).to_contain_text("nothing was started")
            new_name = el(page, "lora_trainer_use_new_name")
            expect(new_name).to_be_visible()
            expect(new_name).to_contain_text("Use the name mylora-2")
            expect(el(page, "lora_trainer_overwrite")).to_be_visible()
            expect(el(page, "lora_trainer_resume")).to_be_visible()
            assert (lora / "mylora.safetensors").read_bytes() == first  # untouched
            assert not list(lora.glob("mylora-step*"))
            shot(page, "run-safety-1-same-name-refused")

            # 2. the new name, a longer run, Stop, then Resume from the list to the end
            new_name.click()
            expect(page.locator("#lora_trainer_name textarea, #lora_trainer_name input").first).to_have_value(
                "mylora-2"
            )
            # long enough (800 steps) to be still running when Stop is pressed on a fast machine
            fill(page, "lora_trainer_cfg_max_train_epochs", "400")
            fill(page, "lora_trainer_cfg_save_every_n_epochs", "100")
            el(page, "lora_trainer_start").click()
            expect(el(page, "lora_trainer_live")).to_contain_text(re.compile(r"step [1-9]\d*/800"), timeout=120_000)
            el(page, "lora_trainer_stop").click()
            expect(result).to_contain_text("Stopped at step", timeout=60_000)
            stopped_at = int(re.search(r"Stopped at step (\d+)", result.inner_text()).group(1))
            assert 0 < stopped_at < 800 and (lora / "mylora-2-state" / "state.json").is_file()
            choice = page.locator("#lora_trainer_resume_list input").first
            expect(choice).to_have_value(re.compile(rf"^mylora-2 \(stopped at step {stopped_at}, "))
            shot(page, "run-safety-2-stopped-resume-listed")
            el(page, "lora_trainer_resume").click()
            expect(result).to_contain_text("Training finished: 800 steps", timeout=400_000)
            assert _steps(lora / "mylora-2.safetensors") == 800
            assert not (lora / "mylora-2-state").exists()
            shot(page, "run-safety-3-resumed-to-the-end")

            # 3. Overwrite, pressed on purpose after the refusal: the old run moves to the trash
            fill(page, "lora_trainer_name", "mylora")
            fill(page, "lora_trainer_cfg_max_train_epochs", "1")
            fill(page, "lora_trainer_cfg_save_every_n_epochs", "1")
            el(page, "lora_trainer_start").click()
            expect(result).to_contain_text("A run named mylora already exists", timeout=60_000)
            el(page, "lora_trainer_overwrite").click()
            expect(result).to_contain_text("Training finished: 2 steps", timeout=150_000)
            (trash,) = (lora / ".trash").iterdir()
            assert (trash / "mylora.safetensors.old").read_bytes() == first
            assert (lora / "mylora.safetensors").is_file() and (lora / "mylora-2.safetensors").is_file()
            shot(page, "run-safety-4-overwritten")
        finally:
            browser.close()
    assert errors == [], errors
