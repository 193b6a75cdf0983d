"""The `score` verb end to end on tiny-sd15: train with validation, score 3 epochs, keep the pick."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib_lora.cli import main
from lib_lora.cli import score as score_verb
from lib_lora.formats.safetensors_io import read_header
from lib_lora.jobs import scoring
from support.scoring_standins import planted_renderer, planted_tagger
from support.tagger_tiny import write_tiny_tagger
from support.train_data import small_dataset


def test_train_with_validation_then_score_and_keep(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    small_dataset(tmp_path / "data")
    out = tmp_path / "out"
    with monkeypatch.context() as patch:  # train --score_epochs, on planted stand-ins: epoch 2 of 3 is the best
        asked = _planted_scoring(patch, out)
        assert main([
            "train", "--train_data_dir", str(tmp_path / "data"), "--output_dir", str(out), "--output_name", "t",
            "--resolution", "64", "--train_batch_size", "2", "--network_dim", "4", "--network_alpha", "2", "--seed", "3",
            "--mixed_precision", "no", "--max_train_epochs", "3", "--save_every_n_epochs", "1", "--learning_rate", "1e-3",
            "--validation_split", "0.4", "--pretrained_model_name_or_path", "tiny-sd15", "--activation_text", "tchar",
            "--score_epochs", "--score_tagger", "my-tagger",
        ]) == 0  # fmt: skip
    # after the run: the table and the pick in words, as `score` prints them, and the pick in the final file
    printed = capsys.readouterr().out
    assert "t-000002 is the best epoch" in printed and "core tags:" in printed, printed
    assert f"recommendation written into {out / 't.safetensors'}'s metadata" in printed
    assert asked == ["my-tagger"]
    assert read_header(out / "t.safetensors").metadata["lora_trainer_recommended_epoch"] == "2"
    tagger = write_tiny_tagger(tmp_path / "tagger")
    args = [
        "score", str(out), "--name", "t", "--tagger", str(tagger), "--seeds", "1,2", "--flexibility", "red theme",
        "--drift", "blue sky", "--width", "64", "--height", "64", "--steps", "2", "--device", "cpu",
    ]  # fmt: skip
    assert main([*args, "--json", "--keep"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [e["label"] for e in data["epochs"]] == ["t-000001", "t-000002", "t"]
    assert all(e["validation_loss"] is not None for e in data["epochs"])  # ss_validation_loss of each file
    assert data["images"] == 2 * 3 * 3 + 2 and data["reason"]
    picked = data["pick"]["label"]
    assert data["kept"]["file"].endswith("t.safetensors")
    # the Lora folder afterwards: the kept file with its json, the log, and archive/ with every epoch
    assert sorted(p.name for p in out.iterdir()) == ["archive", "t-log.jsonl", "t.json", "t.safetensors"]
    assert sorted(p.name for p in (out / "archive").iterdir()) == [
        "t-000001.json", "t-000001.safetensors", "t-000002.json", "t-000002.safetensors", "t-000003.json",
        "t-000003.safetensors",
    ]  # fmt: skip
    source = "t-000003" if picked == "t" else picked
    assert (out / "t.safetensors").read_bytes() == (out / "archive" / f"{source}.safetensors").read_bytes()


def _planted_scoring(patch: pytest.MonkeyPatch, out: Path) -> list:
    """The scoring after training on stand-ins (renders and tagger with planted signals); returns
    the list of tagger models asked for."""
    patch.setattr(
        scoring,
        "AUTO_SETTINGS",
        scoring.ScoreSettings(seeds=(1, 2, 3), flexibility_prompts=("beach",), drift_prompts=("sky",)),
    )
    patch.setattr(score_verb, "sampler_renderer", lambda bundle, model, *a: planted_renderer([]))
    asked: list = []

    def load_tagger(model, events):
        asked.append(model)
        core = scoring.core_tags_of(out / "t.safetensors", exclude=["tchar"])
        return planted_tagger(lambda e: min(0.9, 0.45 * e), lambda e: 0.85 if e <= 2 else 0.3, lambda e: 0.0, 0.01, core=core)  # fmt: skip

    patch.setattr(scoring, "load_tag_scorer", load_tagger)
    return asked


def test_score_without_files_is_one_clear_line(tmp_path: Path, capsys) -> None:
    assert main(["score", str(tmp_path), "--name", "nothing"]) == 2
    assert "No LoRA files named 'nothing'" in capsys.readouterr().err


def test_score_on_a_missing_folder_says_the_folder_does_not_exist(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope"
    assert main(["score", str(missing), "--name", "x"]) == 2
    err = capsys.readouterr().err
    assert f"The LoRA folder {missing} does not exist." in err and "No LoRA files" not in err


def test_score_on_a_file_says_it_is_not_a_folder(tmp_path: Path, capsys) -> None:
    file = tmp_path / "x.safetensors"
    file.write_bytes(b"")
    assert main(["score", str(file), "--name", "x"]) == 2
    err = capsys.readouterr().err
    assert f"{file} is a file, not a folder" in err and "No LoRA files" not in err


@pytest.mark.parametrize("seeds", ["1,x", ""])
def test_bad_seeds(tmp_path: Path, capsys, seeds: str) -> None:
    code = main(["score", str(tmp_path), "--name", "t", "--seeds", seeds])
    assert code == 2
