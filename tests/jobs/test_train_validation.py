"""Training with a held-out split: the validation loss is logged, charted and written into each
epoch file; the split is sd-scripts' (per folder, seeded) and never trains on held-out images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib_lora.config import ConfigError, check_rules
from lib_lora.data.dataset import scan_dataset, split_validation
from lib_lora.events import RecordingEvents
from lib_lora.formats import safetensors_io
from lib_lora.jobs.train import train
from support.train_data import make_dataset, small_dataset, small_run_config


def _cfg(tmp_path: Path, out: str = "out", **values):
    return small_run_config(
        tmp_path, out, **{"learning_rate": 1e-2, "validation_split": 0.4, "validation_seed": 3, **values}
    )


def test_split_is_per_folder_seeded_and_disjoint(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", {"1_a": [(64, 64)] * 5, "1_b": [(64, 64)] * 3, "1_c": [(64, 64)]})
    scan = scan_dataset(tmp_path / "data")
    train_scan, held = split_validation(scan, 0.4, seed=3)
    assert held is not None
    # ceil(5 x 0.6) = 3 and ceil(3 x 0.6) = 2 stay in training; a lone image stays in training
    assert [s.image_count for s in train_scan.subsets] == [3, 2, 1]
    assert [s.image_count for s in held.subsets] == [2, 1, 0]
    assert not {i.path for i in train_scan.items} & {i.path for i in held.items}
    assert {i.path for i in train_scan.items} | {i.path for i in held.items} == {i.path for i in scan.items}
    again = split_validation(scan, 0.4, seed=3)[1]
    assert [i.path for i in again.items] == [i.path for i in held.items]
    assert split_validation(scan, 0.0, seed=3) == (scan, None)
    with pytest.raises(ConfigError, match="validation_split"):
        check_rules(_cfg(tmp_path, validation_split=1.0))


def test_validation_loss_is_logged_charted_and_in_each_epoch_file(tmp_path: Path, bundle) -> None:
    small_dataset(tmp_path / "data")
    events = RecordingEvents()
    result = train(_cfg(tmp_path), bundle, events)
    out = tmp_path / "out"
    assert result.status == "done"
    log = [json.loads(line) for line in (out / "t-log.jsonl").read_text().splitlines()]
    checks = [row for row in log if "val_loss" in row]
    assert [(row["epoch"], row["validation"]) for row in checks] == [(1, "epoch"), (2, "epoch")]
    assert [(e, s, v) for e, s, v in events.validations] == [(r["epoch"], r["step"], r["val_loss"]) for r in checks]
    assert checks[0]["val_loss"] != checks[1]["val_loss"]  # training moved the weights
    _, meta1 = safetensors_io.load(out / "t-000001.safetensors")
    _, meta2 = safetensors_io.load(out / "t.safetensors")
    assert float(meta1["ss_validation_loss"]) == pytest.approx(checks[0]["val_loss"])
    assert float(meta2["ss_validation_loss"]) == pytest.approx(checks[1]["val_loss"])
    # alpha: 3 images -> 2 train + 1 held out; beta: 2 -> 2 train (ceil(1.2) = 2)
    assert meta2["ss_num_validation_images"] == "1" and meta2["ss_validation_split"] == "0.4"
    assert json.loads(meta2["ss_dataset_dirs"])["2_alpha"]["img_count"] == 2
    assert meta2["ss_validation_seed"] == "3"
    assert "1 image held out for the validation loss (validation_split)" in events.texts()  # not "1 images"

    # the same run again gives the same figures: fixed noise and timesteps, nothing left to chance
    again = RecordingEvents()
    train(_cfg(tmp_path, out="out2"), bundle, again)
    assert again.validations == events.validations


def test_every_n_steps_and_every_n_epochs(tmp_path: Path, bundle) -> None:
    small_dataset(tmp_path / "data")
    events = RecordingEvents()
    result = train(
        _cfg(tmp_path, max_train_epochs=2, validate_every_n_epochs=2, validate_every_n_steps=2), bundle, events
    )
    steps = [s for _, s, _ in events.validations]
    per_epoch = result.steps // 2
    expected = sorted([s for s in range(1, result.steps + 1) if s % 2 == 0] + [2 * per_epoch])
    assert steps == expected
    _, meta1 = safetensors_io.load(tmp_path / "out" / "t-000001.safetensors")
    assert "ss_validation_loss" not in meta1 or per_epoch % 2 == 0


def test_no_split_no_validation(tmp_path: Path, bundle) -> None:
    small_dataset(tmp_path / "data")
    events = RecordingEvents()
    train(_cfg(tmp_path, validation_split=0.0, max_train_epochs=1), bundle, events)
    assert events.validations == []
    _, meta = safetensors_io.load(tmp_path / "out" / "t.safetensors")
    assert "ss_validation_loss" not in meta and meta["ss_num_validation_images"] == "0"
