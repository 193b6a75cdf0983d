"""Buckets equal sd-scripts' for the guide's and SDXL settings (golden numbers produced by sd-scripts)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lib_lora.common.errors import UserError
from lib_lora.data.buckets import (
    BucketError,
    BucketManager,
    BucketSettings,
    crop_ltrb,
    crop_offsets,
    crop_top_left,
    make_bucket_resolutions,
)
from lib_lora.data.dataset import plan_buckets

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "sdscripts_buckets.json").read_text())
SIZES = [tuple(s) for s in GOLDEN["sizes"]]
CONFIGS = {c["name"]: c for c in GOLDEN["configs"]}


def _settings(config: dict, no_upscale: bool) -> BucketSettings:
    return BucketSettings(
        resolution=tuple(config["resolution"]),
        enable_bucket=True,
        min_bucket_reso=config["min"],
        max_bucket_reso=config["max"],
        bucket_reso_steps=config["steps"],
        bucket_no_upscale=no_upscale,
    )


def test_guide_settings_give_the_nine_buckets() -> None:
    assert make_bucket_resolutions((512, 512), 320, 1280, 64) == [
        (320, 704), (320, 768), (384, 640), (448, 576), (512, 512), (576, 448), (640, 384), (704, 320), (768, 320)
    ]  # fmt: skip


def test_reference_table_counts() -> None:
    assert len(make_bucket_resolutions((512, 512), 256, 1024, 64)) == 17
    sdxl = make_bucket_resolutions((1024, 1024), 640, 1536, 64)
    assert len(sdxl) == 17 and sdxl[0] == (640, 1536) and sdxl[-1] == (1536, 640) and (1024, 1024) in sdxl


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bucket_list_matches_sd_scripts(name: str) -> None:
    config = CONFIGS[name]
    got = make_bucket_resolutions(tuple(config["resolution"]), config["min"], config["max"], config["steps"])
    assert [list(b) for b in got] == config["buckets"]
    assert BucketManager(_settings(config, False)).predefined == got


@pytest.mark.parametrize("no_upscale", [False, True], ids=["upscale", "no_upscale"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_selection_matches_sd_scripts(name: str, no_upscale: bool) -> None:
    config = CONFIGS[name]
    manager = BucketManager(_settings(config, no_upscale))
    expected = config["no_upscale" if no_upscale else "upscale"]
    mismatches = []
    for size, want in zip(SIZES, expected):
        if want is None:  # sd-scripts makes a zero-sided bucket or divides by zero: we refuse the image
            with pytest.raises(BucketError):
                manager.select(size)
            continue
        choice = manager.select(size)
        got = [*choice.bucket, *choice.resized]
        if got != want:
            mismatches.append((size, got, want))
        assert choice.ar_error == choice.bucket[0] / choice.bucket[1] - size[0] / size[1]
    assert mismatches == []


def test_golden_covers_exact_extreme_and_tiny_sizes() -> None:
    """The fixture exercises what the issue asks for (so the parametrized test above means something)."""
    guide = CONFIGS["guide-512"]
    assert (448, 576) in SIZES and (6000, 400) in SIZES and (64, 64) in SIZES
    exact = guide["upscale"][SIZES.index((448, 576))]
    assert exact == [448, 576, 448, 576]
    tiny = guide["upscale"][SIZES.index((64, 64))]
    assert tiny == [512, 512, 512, 512]  # upscaled
    assert guide["no_upscale"][SIZES.index((64, 64))] == [64, 64, 64, 64]  # kept small
    assert sum(r is None for r in guide["no_upscale"]) > 0


@pytest.mark.parametrize("entry", GOLDEN["no_bucket"], ids=lambda e: "x".join(map(str, e["resolution"])))
def test_without_buckets_one_bucket_cover_resize(entry: dict) -> None:
    manager = BucketManager(BucketSettings(resolution=tuple(entry["resolution"]), enable_bucket=False))
    assert manager.predefined == [tuple(entry["resolution"])]
    for size, want in zip(SIZES, entry["results"]):
        choice = manager.select(size)
        assert [*choice.bucket, *choice.resized] == want
        assert choice.resized[0] >= choice.bucket[0] and choice.resized[1] >= choice.bucket[1]


@pytest.mark.parametrize(
    "case", GOLDEN["datasets"], ids=lambda c: f"{c['config']}-{c['no_upscale']}-b{c['batch_size']}"
)
def test_bucket_info_and_batches_match_sd_scripts(case: dict) -> None:
    manager = BucketManager(_settings(CONFIGS[case["config"]], case["no_upscale"]))
    sizes = [(w, h) for w, h, _ in case["images"]]
    repeats = [r for _, _, r in case["images"]]
    plan = plan_buckets(sizes, repeats, manager, case["batch_size"])
    info = plan.bucket_info()
    assert info["buckets"] == case["bucket_info"]["buckets"]
    assert info["mean_img_ar_error"] == pytest.approx(case["bucket_info"]["mean_img_ar_error"], rel=1e-12)
    assert plan.steps_per_epoch == case["batches_per_epoch"]
    json.dumps(info)  # ss_bucket_info is stored as JSON


def test_bucket_info_is_null_without_buckets() -> None:
    plan = plan_buckets([(640, 480)], [1], BucketManager(BucketSettings((512, 512), enable_bucket=False)), 1)
    assert plan.bucket_info() is None


def test_log_lines_as_sd_scripts() -> None:
    manager = BucketManager(BucketSettings((512, 512), True, 320, 1280, 64))
    plan = plan_buckets([(512, 512), (1920, 1080), (512, 512)], [2, 3, 2], manager, 2)
    assert plan.log_lines() == [
        "bucket 0: resolution (512, 512), count: 4",
        "bucket 1: resolution (640, 384), count: 3",
        f"mean ar error (without repeats): {plan.mean_ar_error}",
    ]


# -- settings rules ---------------------------------------------------------------------------


def test_step_rule_per_family() -> None:
    sdxl = BucketSettings((1024, 1024), True, 512, 2048, 32)
    assert sdxl.validate("sdxl") == []
    with pytest.raises(UserError, match="bucket_reso_steps 32 is invalid for SD1: it must be divisible by 64"):
        BucketSettings((512, 512), True, 256, 1024, 32).validate("sd1")
    with pytest.raises(UserError, match="divisible by 32"):
        BucketSettings((1024, 1024), True, 512, 2048, 48).validate("sdxl")


def test_min_and_max_must_contain_the_resolution() -> None:
    with pytest.raises(UserError, match="min_bucket_reso 576 is larger than the resolution's shorter side"):
        BucketSettings((512, 512), True, 576, 1024, 64).validate()
    with pytest.raises(UserError, match="max_bucket_reso 768 is smaller than the resolution's longer side"):
        BucketSettings((1024, 1024), True, 256, 768, 64).validate()
    with pytest.raises(UserError):
        BucketManager(BucketSettings((1024, 1024), True, 256, 768, 64))


def test_min_and_max_are_rounded_to_the_step_with_a_warning() -> None:
    settings = BucketSettings((512, 512), True, 300, 1000, 64)
    warnings = settings.validate("sd1")
    assert settings.effective_min_bucket_reso == 256 and settings.effective_max_bucket_reso == 1024
    assert any("300 -> 256" in w for w in warnings) and any("1000 -> 1024" in w for w in warnings)
    assert BucketManager(settings).predefined == make_bucket_resolutions((512, 512), 256, 1024, 64)


def test_no_bucket_resolution_must_fit_the_vae() -> None:
    with pytest.raises(UserError, match="multiples of 8"):
        BucketSettings((500, 500), enable_bucket=False).validate()


def test_no_upscale_refuses_an_image_under_one_step_naming_it() -> None:
    manager = BucketManager(BucketSettings((512, 512), True, 320, 1280, 64, bucket_no_upscale=True))
    with pytest.raises(UserError, match=r"tiny\.png: image size 50x100 .* bucket_no_upscale"):
        plan_buckets([(50, 100)], [1], manager, 1, labels=["tiny.png"])


# -- crops ------------------------------------------------------------------------------------


def test_crop_offsets_centre_and_random() -> None:
    assert crop_offsets((683, 384), (640, 384), False) == (21, 0)
    assert crop_offsets((320, 3200), (320, 768), False) == (0, 1216)
    rng = random.Random(5)
    draws = {crop_offsets((700, 600), (640, 576), True, rng) for _ in range(400)}
    assert all(0 <= left <= 60 and 0 <= top <= 24 for left, top in draws)
    assert {left for left, _ in draws} >= {0, 60} and {top for _, top in draws} >= {0, 24}
    again = [crop_offsets((700, 600), (640, 576), True, random.Random(9)) for _ in range(2)]
    assert again[0] == again[1]


def test_sdxl_crop_ltrb_and_flipped_crop_top_left() -> None:
    # sd-scripts' box is the image fitted inside the bucket, centred
    assert crop_ltrb((1216, 832), (1000, 1000)) == (192, 0, 1024, 832)
    ltrb = crop_ltrb((1216, 832), (900, 1000))
    assert ltrb == pytest.approx((233.0, 0, 981.8, 832))
    assert crop_top_left(ltrb, (1216, 832), flipped=False) == (0, 233)
    assert crop_top_left(ltrb, (1216, 832), flipped=True) == (0, 234)  # 1216 - 981.8
