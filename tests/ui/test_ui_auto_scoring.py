"""The Train tab with "Score the epochs when training ends" on, on the standalone app's real host
(tiny-sd15 training); the renders and the tagger are stand-ins with planted signals (epoch 2 of 3
is the best), so the pick is known: the cost before Start, the pick in words in the result, the
recommendation in the final file's metadata, and the Stop button ending the scoring with every file kept."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lib_lora.formats import safetensors_io
from lib_lora.jobs import scoring
from lib_lora.jobs.scoring import ScoreSettings, core_tags_of
from lib_lora.standalone.app import StandaloneHost
from lib_lora.ui.host import GridResult
from lib_lora.ui.tab import build_tab
from support.scoring_standins import Fake, epoch_of, planted_tagger
from support.train_data import make_dataset
from support.ui_tab import form_args

SETTINGS = {
    "resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 64, "train_batch_size": 4, "network_dim": 4,
    "network_alpha": 2, "max_train_epochs": "3", "save_every_n_epochs": "1", "mixed_precision": "no", "seed": 3,
    "learning_rate": 1e-3, "activation_text": "tchar", "score_epochs": True,
}  # fmt: skip


@pytest.fixture()
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = make_dataset(tmp_path / "data", {"1_alpha": [(64, 64)] * 3, "1_beta": [(64, 64)] * 2})
    lora = tmp_path / "lora"
    host = StandaloneHost(None, lora, device="cpu")
    _, tab = build_tab(host)
    monkeypatch.setattr(
        scoring, "AUTO_SETTINGS", ScoreSettings(seeds=(1, 2, 3), flexibility_prompts=("beach",), drift_prompts=("sky",))
    )
    requests: list = []
    asked: list = []
    lives: list = []

    def render_grid(request, events, stop):  # what the host's sampler would draw, as the planted tagger reads it
        requests.append(request)
        lives.append(tab.train.poll(0)[0])  # the live view under Start while the scoring runs
        path = request.lora_files[0]
        images = [Fake(epoch_of(path), p, request.weight, request.seed + i) for i, p in enumerate(request.prompts)]
        return GridResult(images, [Path(path).stem], list(request.prompts))

    def load_tagger(model, events):
        asked.append(model)
        core = core_tags_of(lora / "mylora.safetensors", exclude=["tchar"])
        return planted_tagger(lambda e: min(0.9, 0.45 * e), lambda e: 0.85 if e <= 2 else 0.3, lambda e: 0.02 * e, 0.01, core=core)  # fmt: skip

    monkeypatch.setattr(host, "render_grid", render_grid)
    monkeypatch.setattr(scoring, "load_tag_scorer", load_tagger)
    return tab, host, data, lora, requests, asked, lives


def test_the_result_names_the_recommended_epoch_and_the_final_file_holds_it(app) -> None:
    tab, host, data, lora, requests, asked, lives = app
    choice = next(iter(host.output_dir_choices()))
    args = form_args(tab, **SETTINGS)
    estimate = tab.train.check(str(data), "mylora", choice, "", *args)
    assert (
        "After training, scoring renders 9 images per epoch file plus 3 without the LoRA: 30 images for 3 files"
        in estimate
    ), estimate
    result = tab.train.start_training("t", str(data), "mylora", choice, "", *args)
    assert "Training finished" in result and "mylora-000002 is the best epoch" in result, result
    assert result.count("<polyline") == 4 and "lt-score-table" in result  # the Test tab's chart and table
    assert "the scores are written into mylora.safetensors&#x27;s metadata" in result
    assert asked == [host.settings().tagger_model] == ["demo-tagger"]  # the tagger of the host's settings
    assert requests and all(not r.save for r in requests)  # no grid images are assembled or saved
    # the live view: the cost first, then the images done with the time left, as the Test tab's scoring says
    assert "Scoring 3 files: 9 images per file (3 seeds x 3 prompts) + 3 of the base model = 30 images." in lives[0]
    assert "scoring the epochs: 0/30 images" in lives[0] and "scoring 0/30" in lives[0]
    assert re.search(r"scoring the epochs: 11/30 images, about \d+ s left", lives[5]), lives[5]
    after = tab.train.poll(0)[0]  # once it is over: what was done, no time left
    assert "scoring the epochs: 30/30 images" in after and "30/30 images, about" not in after, after
    meta = safetensors_io.read_header(lora / "mylora.safetensors").metadata
    assert meta["lora_trainer_recommended_epoch"] == "2"
    assert not any(
        k.startswith("lora_trainer_") for k in safetensors_io.read_header(lora / "mylora-000002.safetensors").metadata
    )
    assert "mylora-grids" not in {p.name for p in lora.iterdir()}
    status = host.jobs.current("train")
    assert "mylora-000002 is the best epoch" in tab.train.outcome_html(status)  # a reloaded page says the same
    listing = tab.test.list_epochs("mylora", choice, "", str(data), "")[-1]  # the Test tab, on opening
    assert "Scored after training: mylora-000002 is the best epoch" in listing, listing


def test_keep_this_one_uses_the_stored_pick_without_scoring_again(app) -> None:
    """After a scored run, a fresh Test tab (the webui restarted, no Score pressed) offers the stored
    pick in "Epoch to keep" when it opens or is refreshed, and Keep this one keeps that file."""
    tab, host, data, lora, requests, asked, lives = app
    choice = next(iter(host.output_dir_choices()))
    tab.train.start_training("t", str(data), "mylora", choice, "", *form_args(tab, **SETTINGS))
    scored = len(requests)
    blocks, fresh = build_tab(host)
    for trigger in (fresh.test.refresh, fresh.test_tab):  # both list the stored pick into "Epoch to keep"
        assert any(
            trigger._id in d["targets"] and d["outputs"] == [fresh.test.keep_choice._id] for d in blocks.dependencies
        )
    listing = fresh.test.list_epochs("mylora", choice, "", str(data), "")[-1]
    assert "Keep this one (below) keeps it without scoring again." in listing, listing
    picked = fresh.test.stored_pick("mylora", choice, "")
    assert picked["value"] == "mylora-000002" and picked["choices"] == ["mylora-000001", "mylora-000002", "mylora"]
    fresh.test.files.clear()  # the listing and the pick are separate events: the Keep must not rely on their order
    kept = fresh.test.keep_epoch("mylora", choice, "", picked["value"])[0]
    assert "Kept mylora-000002 as mylora.safetensors" in kept, kept
    assert len(requests) == scored  # nothing was rendered again
    assert (lora / "archive" / "mylora-000002.safetensors").read_bytes() == (lora / "mylora.safetensors").read_bytes()
    left = fresh.test.stored_pick("mylora", choice, "")  # kept: nothing left to pick, the dropdown unchanged
    assert "value" not in left and "choices" not in left, left


def test_stop_during_the_scoring_keeps_every_file_and_says_so(app) -> None:
    tab, host, data, lora, requests, asked, lives = app
    choice = next(iter(host.output_dir_choices()))
    inner = host.render_grid

    def render_then_stop(request, events, stop):
        if len(requests) == 2:
            said = tab.train.stop_training()  # the Train tab's own Stop button
            assert "Stopping the scoring after the current image; every trained file is kept." in said, said
        return inner(request, events, stop)

    host.render_grid = render_then_stop
    result = tab.train.start_training("t", str(data), "mylora", choice, "", *form_args(tab, **SETTINGS))
    assert "Training finished" in result and scoring.STOPPED_SCORING in result, result
    # the live view under it said 'Training mylora: stopped' beside 'Training finished': the training was done
    live = tab.train.poll(0)[0]
    assert "Training mylora: done, scoring stopped" in live and ": stopped" not in live, live
    assert len(requests) == 3  # the render in progress was the last
    names = sorted(p.name for p in lora.glob("*.safetensors"))
    assert names == ["mylora-000001.safetensors", "mylora-000002.safetensors", "mylora.safetensors"]
    assert not any(
        k.startswith("lora_trainer_") for k in safetensors_io.read_header(lora / "mylora.safetensors").metadata
    )
