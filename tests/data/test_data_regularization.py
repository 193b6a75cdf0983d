"""Regularization images as sd-scripts' DreamBoothDataset pairs them: reg samples per epoch =
training images x repeats (first pass with each folder's repeats, then +1 per image in turn;
surplus unused), sharing buckets (so batches mix both) and recorded apart in the metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib_lora.data.buckets import BucketManager, BucketSettings
from lib_lora.data.dataset import assign_buckets, balanced_reg_repeats, scan_dataset, with_regularization
from support.train_data import make_dataset


@pytest.mark.parametrize(
    ("train", "reg", "expected"),
    [
        (10, [1, 1, 1], [4, 3, 3]),  # 3 passes of +1, then one more image
        (5, [10, 1], [10, 0]),  # the first folder's repeats already cover it; the second image unused
        (4, [1] * 6, [1, 1, 1, 1, 0, 0]),  # more reg images than needed
        (7, [2, 2], [4, 3]),  # first pass 2+2, then +1 each in turn
        (3, [], []),
    ],
)
def test_balanced_reg_repeats_follow_sd_scripts(train: int, reg: list[int], expected: list[int]) -> None:
    assert balanced_reg_repeats(train, reg) == expected
    if reg:
        assert sum(expected) >= train


def test_reg_images_join_the_buckets_and_are_counted_apart(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", {"3_char": [(64, 64), (64, 64)], "1_outfit": [(64, 64)]})
    make_dataset(tmp_path / "reg", {"1_person": [(64, 64)] * 3}, seed=1)
    scan = scan_dataset(tmp_path / "data")
    combined = with_regularization(scan, scan_dataset(tmp_path / "reg"))
    assert combined.num_train_images == 7 and combined.num_reg_images == 3
    assert combined.dataset_dirs_info() == {
        "3_char": {"n_repeats": 3, "img_count": 2},
        "1_outfit": {"n_repeats": 1, "img_count": 1},
    }
    assert combined.reg_dataset_dirs_info() == {"1_person": {"n_repeats": 1, "img_count": 3}}
    reg_repeats = [i.repeats for n, i in enumerate(combined.items) if combined.is_reg(n)]
    assert reg_repeats == [3, 2, 2]  # 7 training samples -> 7 reg samples
    settings = BucketSettings(
        resolution=(64, 64), enable_bucket=False, min_bucket_reso=64, max_bucket_reso=64, bucket_reso_steps=64
    )
    plan = assign_buckets(combined, BucketManager(settings), 2)
    assert plan.num_samples == 14 and plan.steps_per_epoch == 7  # one bucket, batch 2: both kinds mixed
    batches = plan.epoch_batches(1, 0)
    mixed = [b for b in batches if len({combined.is_reg(s.item) for s in b}) == 2]
    assert mixed  # batches draw from both


def test_the_dataset_tabs_bucket_summary_counts_the_reg_images(tmp_path: Path) -> None:
    from lib_lora.config import build_config
    from lib_lora.jobs.dataset_info import bucket_summary

    make_dataset(tmp_path / "data", {"2_char": [(64, 64)] * 3})
    make_dataset(tmp_path / "reg", {"1_person": [(64, 64)] * 2}, seed=1)
    base = {"train_data_dir": str(tmp_path / "data"), "resolution": "64", "train_batch_size": 2, "max_train_epochs": 1}
    scan = scan_dataset(tmp_path / "data")
    plain = bucket_summary(scan, build_config(base))
    with_reg = bucket_summary(scan, build_config({**base, "reg_data_dir": str(tmp_path / "reg")}))
    assert (plain.steps_per_epoch, plain.reg_samples) == (3, 0)
    assert (with_reg.steps_per_epoch, with_reg.reg_samples) == (6, 6) and with_reg.rows[0][2] == 12
    broken = bucket_summary(scan, build_config({**base, "reg_data_dir": str(tmp_path / "missing")}))
    assert broken.reg_samples == 0 and any("Regularization folder" in w for w in broken.warnings)
