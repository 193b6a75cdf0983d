"""Epoch scoring with planted signals: a renderer + tagger stand-in where the true best epoch is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lib_lora.common.errors import UserError
from lib_lora.events import RecordingEvents, StopRequested, StopToken
from lib_lora.formats import safetensors_io
from lib_lora.jobs.epochs import LoraFile
from lib_lora.jobs.score_math import EpochScore, SeedScore, cosine_drift, f_beta, pick_best
from lib_lora.jobs.scoring import TABLE_HEADERS, ScoreSettings, core_tags_of, keep_epoch, lora_family, score_epochs
from support.scoring_standins import CORE, Fake, planted_renderer, planted_tagger


def _files(n: int) -> list[LoraFile]:
    return [LoraFile(Path(f"/nowhere/t-{e:06d}.safetensors"), e, e * 10, "s", float(e)) for e in range(1, n + 1)]


SETTINGS = ScoreSettings(seeds=(1, 2, 3, 4), flexibility_prompts=("red dress", "beach"), drift_prompts=("scenery",))


def test_fidelity_rises_then_flexibility_falls_picks_the_known_epoch() -> None:
    # fidelity climbs until epoch 5 then plateaus; flexibility collapses after epoch 5; drift grows late: 5 is best
    fidelity = lambda e: min(0.9, 0.18 * e)  # noqa: E731
    flexibility = lambda e: 0.85 if e <= 5 else 0.85 - 0.25 * (e - 5)  # noqa: E731
    drift = lambda e: 0.05 * max(0, e - 4)  # noqa: E731
    log: list = []
    events = RecordingEvents()
    report = score_epochs(
        _files(8), planted_renderer(log), planted_tagger(fidelity, flexibility, drift, jitter=0.01), SETTINGS, events,
        activation="tchar", core_tags=CORE,
    )  # fmt: skip
    assert report.best.epoch == 5 and report.pick.confident
    assert report.pick.reason.startswith("t-000005 is the best epoch")
    assert report.scores[0].fidelity < report.scores[4].fidelity
    assert report.scores[7].flexibility < report.scores[4].flexibility
    # cost: per seed one base render (drift prompts) + one render per file of 1 + 2 + 1 prompts
    assert report.images == 4 * (8 * 4 + 1) and len(log) == 4 * 9
    assert any(
        "16 images per file (4 seeds x 4 prompts) + 4 of the base model = 132 images" in t for t in events.texts()
    )
    assert events.last_progress[1] == events.last_progress[2] == report.images
    assert json.loads(json.dumps(report.to_json()))["pick"]["epoch"] == 5


def test_noise_only_gives_no_confident_pick_in_words() -> None:
    flat = lambda e: 0.6  # noqa: E731
    report = score_epochs(
        _files(5), planted_renderer([]), planted_tagger(flat, flat, lambda e: 0.1, jitter=0.15), SETTINGS,
        activation="tchar", core_tags=CORE,
    )  # fmt: skip
    assert not report.pick.confident
    assert report.pick.reason.startswith("No confident pick:") and "within the seed noise" in report.pick.reason
    assert len(report.pick.tied) >= 2


def test_one_seed_is_never_confident() -> None:
    rising = lambda e: 0.1 * e  # noqa: E731
    report = score_epochs(
        _files(3), planted_renderer([]), planted_tagger(rising, rising, lambda e: 0.0, jitter=0.0),
        ScoreSettings(seeds=(7,), flexibility_prompts=("beach",), drift_prompts=("scenery",)),
        activation="tchar", core_tags=CORE,
    )  # fmt: skip
    assert report.best.epoch == 3 and not report.pick.confident
    assert "one seed" in report.pick.reason


def test_one_seed_with_equal_scores_says_they_score_the_same_not_that_one_is_highest() -> None:
    same = [EpochScore(f"e{i}", i, [SeedScore(0.6, 0.4, 0.0)]) for i in range(1, 5)]
    same[2] = EpochScore("e3", 3, [SeedScore(0.6, 0.4, 0.0001)])  # lower only past the shown decimals
    reason = pick_best(same).reason
    assert "e1, e2, e3, e4 score the same (0.618" in reason, reason
    assert "highest" not in reason and "ahead of" not in reason
    rising = [EpochScore(f"e{i}", i, [SeedScore(0.1 * i, 0.4, 0.0)]) for i in range(1, 4)]
    assert "e3 scores highest" in pick_best(rising).reason  # a real difference is still named


def test_no_core_tags_shows_fidelity_as_not_measured_not_as_a_perfect_one() -> None:
    """Without core tags fidelity is not measured (a stand-in 1 inside the score): the table and the
    pick's words say "not measured" instead of showing 1.000 as if every trait were there."""
    rising = lambda e: 0.1 * e  # noqa: E731
    report = score_epochs(
        _files(3), planted_renderer([]), planted_tagger(rising, rising, lambda e: 0.0, jitter=0.05), SETTINGS,
        activation="tchar", core_tags=[],
    )  # fmt: skip
    fidelity_column = TABLE_HEADERS.index("fidelity")
    assert [row[fidelity_column] for row in report.table_rows()] == ["not measured"] * 3
    assert "fidelity not measured" in report.pick.reason and "fidelity 1.00" not in report.pick.reason
    assert report.to_json()["fidelity_measured"] is False
    measured = score_epochs(
        _files(3), planted_renderer([]), planted_tagger(rising, rising, lambda e: 0.0, jitter=0.05), SETTINGS,
        activation="tchar", core_tags=CORE,
    )  # fmt: skip
    assert all(row[fidelity_column] != "not measured" for row in measured.table_rows())
    assert measured.to_json()["fidelity_measured"] is True


def test_stop_is_honoured_between_renders() -> None:
    stop = StopToken()
    calls = []

    def render(paths, prompts, weight, seed, events, stop_):
        calls.append(1)
        if len(calls) == 2:
            stop.request()
        return [Fake(1, p, weight, seed) for p in prompts]

    with pytest.raises(StopRequested):
        score_epochs(
            _files(4), render, lambda ims: [{} for _ in ims], SETTINGS, stop=stop, activation="x", core_tags=CORE
        )
    assert len(calls) == 2


def test_math_pieces() -> None:
    assert f_beta(0.5, 0.5) == pytest.approx(0.5)
    assert f_beta(1.0, 0.0) == 0.0
    # beta = 2 favours fidelity: high fidelity / low control beats the reverse
    assert f_beta(0.9, 0.3, 2.0) > f_beta(0.3, 0.9, 2.0)
    assert cosine_drift({"a": 1.0}, {"a": 2.0}) == pytest.approx(0.0)
    assert cosine_drift({"a": 1.0}, {"b": 1.0}) == pytest.approx(1.0)
    tie = [EpochScore(f"e{i}", i, [SeedScore(0.5, 0.5, 0.0)] * 3) for i in range(3)]
    assert not pick_best(tie).confident


def _write_lora(path: Path, epoch: int, session: str = "s1") -> None:
    meta = {
        "ss_epoch": str(epoch), "ss_session_id": session,
        "ss_tag_frequency": json.dumps({"1_tchar": {"tchar": 4, "blue_hair": 4, "red eyes": 3, "smile": 1}}),
        "ss_dataset_dirs": json.dumps({"1_tchar": {"n_repeats": 1, "img_count": 4}}),
    }  # fmt: skip
    safetensors_io.save_lora(path, {"lora_unet_x.lora_down.weight": torch.full((2, 2), float(epoch))}, meta)
    path.with_suffix(".json").write_text(json.dumps({"activation text": "tchar", "notes": f"epoch {epoch}"}))


def test_core_tags_come_from_the_training_captions(tmp_path: Path) -> None:
    _write_lora(tmp_path / "t.safetensors", 3)
    assert core_tags_of(tmp_path / "t.safetensors", 0.5, ["tchar"]) == ["blue hair", "red eyes"]


def test_keep_this_one_copies_it_and_archives_the_rest(tmp_path: Path) -> None:
    for e in (1, 2):
        _write_lora(tmp_path / f"t-{e:06d}.safetensors", e)
    (tmp_path / "t-000002.preview.png").write_bytes(b"png2")
    _write_lora(tmp_path / "t.safetensors", 3)
    _write_lora(tmp_path / "other.safetensors", 9, session="s2")
    result = keep_epoch(tmp_path / "t-000002.safetensors", tmp_path, "t")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "archive", "other.json", "other.safetensors", "t.json", "t.preview.png", "t.safetensors",
    ]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "archive").iterdir()) == [
        "t-000001.json", "t-000001.safetensors", "t-000002.json", "t-000002.preview.png", "t-000002.safetensors",
        "t-000003.json", "t-000003.safetensors",
    ]  # fmt: skip
    kept, _ = safetensors_io.load(tmp_path / "t.safetensors")
    assert float(kept["lora_unet_x.lora_down.weight"][0, 0]) == 2.0
    assert json.loads((tmp_path / "t.json").read_text())["notes"] == "epoch 2"
    assert result.source == tmp_path / "archive" / "t-000002.safetensors"
    # keeping again from a family that is now only name.safetensors works and archives without overwriting
    assert [f.path.name for f in lora_family(tmp_path, "t")] == ["t.safetensors"]
    with pytest.raises(UserError, match="not one of the files"):
        keep_epoch(tmp_path / "archive" / "t-000001.safetensors", tmp_path, "t")


def test_a_hair_of_a_difference_is_a_tie_not_a_confident_pick() -> None:
    """The demo's scores were equal to the table's three decimals, yet one epoch was left out of the
    tie: its seeds all trailed by the same 1e-6 (noise 0, so "more than twice the noise"). Equal in
    the table means tied in the words; a real margin with no noise still picks confidently."""
    hair = [EpochScore(f"e{i}", i, [SeedScore(1.0, 0.0, 0.0 + 1e-6 * i)] * 3) for i in range(1, 5)]
    pick = pick_best(hair)
    assert not pick.confident and sorted(pick.tied) == [0, 1, 2, 3], pick
    clear = [EpochScore(f"e{i}", i, [SeedScore(0.2 * i, 0.8, 0.1)] * 3) for i in range(1, 5)]
    assert pick_best(clear).confident and pick_best(clear).best == 3
