"""Scoring the epochs when training ends (``score_epochs``): the pick in the result, in the final
file's metadata (tensors untouched), in its json and the log; a Stop, an offline tagger or too few
files keep every trained file and say why in one sentence. Renderer and tagger are stand-ins with
planted signals (epoch 2 of 3 is the best), on one real tiny-sd15 run copied for each test."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file

from lib_lora.common.errors import UserError
from lib_lora.events import RecordingEvents, StopToken
from lib_lora.formats.metadata import sshs_model_hash_of_file
from lib_lora.formats.safetensors_io import read_header
from lib_lora.jobs import scoring
from lib_lora.jobs.epochs import list_lora_files
from lib_lora.jobs.lora_files import read_lora_file
from lib_lora.jobs.scoring import ScoreSettings, core_tags_of, score_finished_run
from lib_lora.jobs.train import train
from support.scoring_standins import planted_renderer, planted_tagger
from support.train_data import make_dataset, small_run_config

SETTINGS = ScoreSettings(seeds=(1, 2, 3, 4), flexibility_prompts=("red dress", "beach"), drift_prompts=("scenery",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, bundle):
    root = tmp_path_factory.mktemp("run")
    make_dataset(root / "data", {"1_alpha": [(64, 64), (64, 64)]})  # one step per epoch
    cfg = small_run_config(root, max_train_epochs=3, activation_text="tchar", score_epochs=True)
    result = train(cfg, bundle)
    assert result.status == "done" and result.scoring is None  # train() itself renders nothing
    return root, cfg, result


@pytest.fixture()
def run(trained, tmp_path: Path):
    """The trained run's files, copied: each test changes its own."""
    root, cfg, result = trained
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    cfg = cfg.replace(output_dir=str(out))
    return cfg, dataclasses.replace(result, log_path=out / "t-log.jsonl"), out


def _tagger(out: Path):
    """Epoch 2 is the best: fidelity reaches its top there, flexibility falls after it."""
    core = core_tags_of(out / "t.safetensors", exclude=["tchar"])
    assert core  # the run's captions have tags in most of them
    return planted_tagger(
        lambda e: min(0.9, 0.45 * e), lambda e: 0.85 if e <= 2 else 0.3, lambda e: 0.02 * e, 0.01, core=core
    )


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def _data(blob: bytes) -> bytes:
    return blob[8 + int.from_bytes(blob[:8], "little") :]


def test_the_pick_goes_into_the_result_the_final_files_metadata_its_json_and_the_log(run) -> None:
    cfg, result, out = run
    final = out / "t.safetensors"
    before = _snapshot(out)
    meta_before = read_header(final).metadata
    events, log = RecordingEvents(), []
    tagger = _tagger(out)
    scored = score_finished_run(
        cfg, result, planted_renderer(log), "unused", events, settings=SETTINGS, load_tagger=lambda m, e: tagger
    )
    assert scored.state == "done" and scored.final == final
    assert scored.sentence.startswith("t-000002 is the best epoch") and scored.report.pick.confident
    assert scored.sentence in events.texts("info")
    assert len(log) == 4 * (3 + 1)  # every file of the family (final included) and the base, per seed
    meta = read_header(final).metadata
    assert meta["lora_trainer_recommended_epoch"] == "2" and meta["lora_trainer_recommended_file"] == "t-000002"
    assert meta["lora_trainer_recommendation"] == scored.sentence
    table = json.loads(meta["lora_trainer_scores"])
    assert [e["file"] for e in table["epochs"]] == ["t-000001", "t-000002", "t"]
    assert table["recommended"] == "t-000002" and table["confident"] is True
    assert str(out) not in meta["lora_trainer_scores"]  # file names only: no folder of the user's in a shared file
    # nothing else changed: every other key as it was, the tensors' bytes identical, the hashes still true
    assert {k: v for k, v in meta.items() if not k.startswith("lora_trainer_")} == meta_before
    after = final.read_bytes()
    assert _data(after) == _data(before["t.safetensors"])
    assert meta["sshs_model_hash"] == sshs_model_hash_of_file(final)
    old = load_bytes(before["t.safetensors"])
    new = load_file(final)
    assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in old)
    read_lora_file(final)  # our loader (the webui stub's Lora uses it) reads it as a LoRA
    # the webui reads the header from its first two bytes and parses JSON values that start with "{"
    assert after[8:10] == b'{"' and json.loads(meta["lora_trainer_scores"])["reason"] == scored.sentence
    changed = {name for name, blob in _snapshot(out).items() if before.get(name) != blob}
    assert changed == {"t.safetensors", "t.json", "t-log.jsonl"}
    side = json.loads((out / "t.json").read_text(encoding="utf-8"))
    assert side["notes"].endswith(f"Scored after training: {scored.sentence}") and side["activation text"] == "tchar"
    row = json.loads((out / "t-log.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert row["step"] == result.steps and row["scores"]["recommended"] == "t-000002"
    assert [f.path.name for f in list_lora_files(out, "t")] == [
        "t-000001.safetensors",
        "t-000002.safetensors",
        "t.safetensors",
    ]


def test_off_nothing_is_rendered_and_nothing_changes(run) -> None:
    cfg, result, out = run
    before = _snapshot(out)
    log: list = []
    assert score_finished_run(cfg.replace(score_epochs=False), result, planted_renderer(log), None) is None
    assert log == [] and _snapshot(out) == before


def test_a_stop_during_the_scoring_keeps_every_file_as_it_was(run) -> None:
    cfg, result, out = run
    before = _snapshot(out)
    stop = StopToken()
    log: list = []
    inner = planted_renderer(log)

    def render(*args):
        if len(log) == 3:  # the user presses Stop while the fourth image row renders
            stop.request("test stop")
        return inner(*args)

    events = RecordingEvents()
    scored = score_finished_run(
        cfg, result, render, None, events, stop, settings=SETTINGS, load_tagger=lambda m, e: _tagger(out)
    )
    assert scored.state == "stopped" and scored.report is None
    assert scored.sentence == scoring.STOPPED_SCORING and "every trained file is kept" in scored.sentence
    assert len(log) == 4 and _snapshot(out) == before  # the row in progress was the last


def test_an_offline_tagger_leaves_the_training_as_it_is_and_says_why(run, tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    cfg, result, out = run
    before = _snapshot(out)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    log: list = []
    scored = score_finished_run(cfg, result, planted_renderer(log), "wd-v1-4-vit-tagger-v2", RecordingEvents())
    assert scored.state == "skipped" and log == [] and _snapshot(out) == before
    assert scored.sentence.startswith("The epochs were not scored: The tagger model wd-v1-4-vit-tagger-v2")
    assert "HF_HUB_OFFLINE" in scored.sentence and scored.sentence.endswith("score them later in the Test tab.")
    assert "\n" not in scored.sentence


def test_a_stopped_run_or_a_single_file_is_not_scored_in_one_sentence(run) -> None:
    cfg, result, out = run
    log: list = []
    stopped = score_finished_run(cfg, dataclasses.replace(result, status="stopped"), planted_renderer(log), None)
    assert stopped.state == "skipped" and "the run was stopped" in stopped.sentence
    # stopped before its first step (e.g. while caching latents): nothing saved, nothing to resume or score,
    # so no sentence that says to resume it (the run's own line says nothing was saved)
    events = RecordingEvents()
    early = dataclasses.replace(result, status="stopped", files=[], steps=0, state_dir=None)
    assert score_finished_run(cfg, early, planted_renderer(log), None, events) is None
    assert not [t for t in events.texts() if "scored" in t]
    for name in ("t-000001", "t-000002"):
        (out / f"{name}.safetensors").unlink()
    single = score_finished_run(cfg, result, planted_renderer(log), None)
    assert single.sentence == (
        "The epochs were not scored: the run saved only t.safetensors, nothing to compare it with "
        "(set Save every N epochs to save epoch files)."
    )
    assert log == []


def test_the_cost_before_start_counts_the_files_the_run_will_save() -> None:
    from lib_lora.config import TrainConfig

    cfg = TrainConfig(save_every_n_epochs=2, score_epochs=True)
    assert scoring.auto_cost(cfg, 10) == (5, 5 * 27 + 6)  # epochs 2, 4, 6, 8 and the final file
    assert scoring.auto_cost(cfg.replace(save_last_n_epochs=2), 10)[0] == 3
    assert "27 images per epoch file plus 6 without the LoRA: 141 images for 5 files" in scoring.auto_cost_sentence(
        cfg, 10
    )
    assert "needs two saved files" in scoring.auto_cost_sentence(cfg.replace(save_every_n_epochs=None), 10)
    # the setting's help says the same figure as the scoring renders
    help_text = TrainConfig.__dataclass_fields__["score_epochs"].metadata["help"]
    assert f"{scoring.AUTO_SETTINGS.images_per_epoch()} images per epoch file" in help_text
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = " ".join(readme[readme.index("**Score the epochs when training ends**") :].split("\n\n")[0].split())
    assert f"{scoring.AUTO_SETTINGS.images_per_epoch()} images per epoch file" in section


def test_a_damaged_final_file_is_refused_in_one_sentence_and_left_alone(tmp_path: Path) -> None:
    from lib_lora.formats.safetensors_io import update_metadata

    bad = tmp_path / "t.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(UserError, match="truncated or damaged"):
        update_metadata(bad, {"k": "v"})
    assert bad.read_bytes() == b"\x10\x00\x00\x00\x00\x00\x00\x00{}"
