"""The `score` verb end to end on tiny-sd15: train with validation, score 3 epochs, keep the pick."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib_lora.cli import main
from support.tagger_tiny import write_tiny_tagger
from support.train_data import small_dataset


def test_train_with_validation_then_score_and_keep(tmp_path: Path, capsys) -> None:
    small_dataset(tmp_path / "data")
    out = tmp_path / "out"
    assert main([
        "train", "--train_data_dir", str(tmp_path / "data"), "--output_dir", str(out), "--output_name", "t",
        "--resolution", "64", "--train_batch_size", "2", "--network_dim", "4", "--network_alpha", "2", "--seed", "3",
        "--mixed_precision", "no", "--max_train_epochs", "3", "--save_every_n_epochs", "1", "--learning_rate", "1e-3",
        "--validation_split", "0.4", "--pretrained_model_name_or_path", "tiny-sd15",
    ]) == 0  # fmt: skip
    capsys.readouterr()
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
