"""What the page shows, in a real browser against ``python -m lib_lora serve`` (tiny-sd15): the
settings check, the labels, the quick start's demo tagger offline, and screens that went stale
(status lines, the step estimate, a reloaded page during a run, progress borders and ETA).
A screenshot of each goes to test-artifacts/browser/."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

import pytest
from playwright import sync_api as playwright

from support.browser_app import (
    PROGRESS_TEXTS_JS,
    VISIBLE_GENERATING_JS,
    answered,
    check,
    el,
    field,
    fill,
    open_demo_app,
    open_tab,
    serve,
    shot,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
expect = playwright.expect


def test_settings_check_labels_and_the_demo_preset_note(tmp_path: Path) -> None:
    errors: list[str] = []
    with serve(tmp_path, "--lora-dir", "lora") as (url, _log), playwright.sync_playwright() as pw:
        browser, page = open_demo_app(pw, url, errors)
        try:
            # a relative dataset path is shown as the absolute path it means; the buttons are above
            fill(page, "lora_trainer_dataset_folder", "missing")
            overview = el(page, "lora_trainer_dataset_overview")
            expect(overview).to_contain_text(f"Dataset folder {tmp_path / 'missing'} does not exist")
            expect(overview).to_contain_text("buttons above")
            fill(page, "lora_trainer_dataset_folder", "data")
            el(page, "lora_trainer_make_demo").click()
            expect(el(page, "lora_trainer_dataset_status")).to_contain_text(f"Dataset folder: {tmp_path / 'data'}")

            open_tab(page, "Train")
            # plain labels, the sd-scripts key under each
            for elem, label, key in [
                ("lora_trainer_cfg_clip_skip", "CLIP skip", "clip_skip"),
                ("lora_trainer_cfg_lr_scheduler", "Learning rate schedule", "lr_scheduler"),
                ("lora_trainer_cfg_shuffle_caption", "Shuffle tags", "shuffle_caption"),
                ("lora_trainer_cfg_max_train_epochs", "Epochs", "max_train_epochs"),
            ]:
                expect(el(page, elem)).to_contain_text(label)
                expect(el(page, elem)).to_contain_text(f"[sd-scripts: {key}]")
            labels = page.locator("#tab_lora_trainer [data-testid='block-info']").all_inner_texts()
            assert labels and not [t for t in labels if "_" in t], labels
            # the preset says the demo form starts smaller than the preset describes
            expect(el(page, "lora_trainer_preset")).to_contain_text("For the demo model the form starts smaller")
            expect(el(page, "lora_trainer_estimate")).to_contain_text("steps per epoch")

            # absurd values: every problem at once, in the labels' words, no step count
            fill(page, "lora_trainer_cfg_max_train_epochs", "-2")
            fill(page, "lora_trainer_cfg_resolution", "100000")
            fill(page, "lora_trainer_cfg_train_batch_size", "2.5")
            fill(page, "lora_trainer_name", "")
            estimate = el(page, "lora_trainer_estimate")
            expect(estimate).to_contain_text("LoRA name is empty: type a name for the LoRA files.")
            live = estimate.inner_text()
            for line in (
                "Batch size = 2.5 is not valid: it must be a whole number.",
                "Epochs = -2 is not valid: it must be at least 1.",
                "Resolution = '100000' is not valid: each side must be a multiple of 8 from 64 to 4096 pixels.",
            ):
                assert line in live, live
            assert "steps per epoch" not in live and "VRAM" not in live and "output_name" not in live
            shot(page, "5-settings-check")
            with answered(page):  # the button says the same
                el(page, "lora_trainer_check").click()
            assert el(page, "lora_trainer_estimate").inner_text() == live
            el(page, "lora_trainer_start").click()
            expect(el(page, "lora_trainer_train_result")).to_contain_text("Epochs = -2 is not valid")
        finally:
            browser.close()
    assert errors == [], errors


def test_quick_start_offline_and_no_stale_screens(tmp_path: Path) -> None:
    data = tmp_path / "data"
    errors: list[str] = []
    with serve(tmp_path, "--lora-dir", str(tmp_path / "lora")) as (url, _log), playwright.sync_playwright() as pw:
        browser, page = open_demo_app(pw, url, errors)
        try:
            # Start before the dataset exists, Stop with nothing running: both lines go once stale
            open_tab(page, "Train")
            result = el(page, "lora_trainer_train_result")
            el(page, "lora_trainer_stop").click()
            expect(result).to_contain_text("No training is running.")
            fill(page, "lora_trainer_cfg_max_train_epochs", "3")  # an edit: the line is about before it
            expect(result).not_to_contain_text("No training is running.")
            open_tab(page, "Dataset")
            fill(page, "lora_trainer_dataset_folder", str(data))
            open_tab(page, "Train")
            el(page, "lora_trainer_start").click()
            expect(result).to_contain_text("does not exist", timeout=120_000)
            expect(el(page, "lora_trainer_estimate")).to_contain_text("does not exist")

            # the demo dataset: the Train tab's estimate and status follow without a Train edit
            open_tab(page, "Dataset")
            el(page, "lora_trainer_make_demo").click()
            expect(el(page, "lora_trainer_dataset_status")).to_contain_text("wrote 12 images", ignore_case=True)
            open_tab(page, "Train")
            expect(el(page, "lora_trainer_estimate")).to_contain_text("steps per epoch")
            expect(result).not_to_contain_text("does not exist")

            # the built-in demo tagger, offline (serve runs with HF_HUB_OFFLINE=1)
            open_tab(page, "Tag & edit")
            expect(page.locator("#lora_trainer_tagger_model input")).to_have_value("demo-tagger")
            expect(el(page, "lora_trainer_tagger_model")).to_contain_text("built-in demo tagger")
            el(page, "lora_trainer_tag_start").click()
            expect(el(page, "lora_trainer_tag_result")).to_contain_text("12 captions written", timeout=90_000)
            assert "red theme" in (data / "3_redfox" / "redfox_01.txt").read_text(encoding="utf-8")
            shot(page, "6-demo-tagger")

            # a run with settings other than the defaults
            open_tab(page, "Train")
            fill(page, "lora_trainer_name", "reloaded")
            fill(page, "lora_trainer_cfg_resolution", "64")
            check(page, "lora_trainer_cfg_enable_bucket", False)
            fill(page, "lora_trainer_cfg_train_batch_size", "8")
            fill(page, "lora_trainer_cfg_network_dim", "2")
            # a run no machine finishes while the test watches it (the most epochs, 40000 steps, ~40 min here):
            # it is stopped twice, so it is still running at each Stop however fast the machine is, and no
            # slow machine has to train it to the end; a file every 110 epochs keeps the grid small
            fill(page, "lora_trainer_cfg_max_train_epochs", "10000")
            fill(page, "lora_trainer_cfg_save_every_n_epochs", "110")
            el(page, "lora_trainer_start").click()
            live = el(page, "lora_trainer_live")
            expect(live).to_contain_text("Training reloaded: running", timeout=60_000)
            texts: list[str] = []
            updates: set[str] = set()
            deadline = time.time() + 120
            while len(updates) < 8:  # eight updates of the live view (it polls the run every second)
                assert time.time() < deadline, f"the live view stopped changing: {live.inner_text()}"
                texts += page.evaluate(PROGRESS_TEXTS_JS)
                updates.add(live.inner_text())
                page.wait_for_timeout(250)
            # one progress (the live view, with the run's own ETA), not a second Gradio bar whose ETA is
            # the queue's average of unrelated events ("57.7/0.1s")
            assert not [t for t in texts if re.search(r"\d+\.\d/\d+(\.\d)?s", t)], texts
            expect(live).to_contain_text("ETA", timeout=180_000)

            # reload during the run: the dataset folder and the run's settings come back
            page.reload()
            expect(field(page, "lora_trainer_dataset_folder")).to_have_value(str(data))
            open_tab(page, "Train")
            expect(field(page, "lora_trainer_name")).to_have_value("reloaded")
            expect(field(page, "lora_trainer_cfg_resolution")).to_have_value("64")
            expect(field(page, "lora_trainer_cfg_train_batch_size")).to_have_value("8")
            expect(page.locator("#lora_trainer_cfg_enable_bucket input[type=checkbox]")).not_to_be_checked()
            shot(page, "7-reloaded-during-a-run")

            # Stop from the reloaded page: the "Stopping..." line gives way to how the run ended
            expect(live).to_contain_text("running", timeout=30_000)
            el(page, "lora_trainer_stop").click()
            expect(result).to_contain_text("Stopping after this step")
            expect(result).to_contain_text("Stopped at step", timeout=240_000)
            expect(result).not_to_contain_text("Stopping after this step")
            stopped_at = int(re.search(r"Stopped at step (\d+)", result.inner_text()).group(1))
            # no orange "generating" border left anywhere (they pulsed around the live views forever):
            # they go once the run's last events have answered
            page.wait_for_function(f"() => ({VISIBLE_GENERATING_JS})().length === 0")
            shot(page, "8-stopped-no-stale-lines")
            assert html.unescape(el(page, "lora_trainer_estimate").inner_text()).count("Error") == 0

            # the newcomer goes on in the same page: Resume the stopped run from the list (it trains on from
            # where it stopped), Stop it again, then Test it
            el(page, "lora_trainer_resume_refresh").click()
            expect(page.locator("#lora_trainer_resume_list input").first).to_have_value(
                re.compile(rf"^reloaded \(stopped at step {stopped_at}, ")
            )
            el(page, "lora_trainer_resume").click()
            page.wait_for_function(
                "(stopped) => { const m = /step (\\d+)\\//.exec(document.querySelector('#lora_trainer_live').innerText);"
                " return m && Number(m[1]) > stopped; }",
                arg=stopped_at,
                timeout=240_000,
            )
            el(page, "lora_trainer_stop").click()
            expect(result).to_contain_text(re.compile(r"Stopped at step \d+; saved: "), timeout=240_000)
            assert int(re.search(r"Stopped at step (\d+)", result.inner_text()).group(1)) > stopped_at
            open_tab(page, "Test")
            page.get_by_text("Image settings (empty = the host's current txt2img values)").click()
            fill(page, "lora_trainer_test_width", "64")
            fill(page, "lora_trainer_test_height", "64")
            fill(page, "lora_trainer_test_steps", "2")
            el(page, "lora_trainer_test_render").click()
            expect(el(page, "lora_trainer_test_result")).to_contain_text("files x", timeout=180_000)
            expect(page.locator("#lora_trainer_grid img")).to_be_visible()
            shot(page, "9-resumed-then-tested")
        finally:
            browser.close()
    assert errors == [], errors
