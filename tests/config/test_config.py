"""Settings: kohya names, validation before any work, presets, TOML files."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib_lora.config import ConfigError, TrainConfig, build_config, load_toml, parse_resolution, preset_values, to_toml

BASE = {"train_data_dir": "data"}


def test_unknown_key_names_the_closest_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"Unknown setting 'learnig_rate'\. Did you mean: learning_rate\?"):
        build_config({**BASE, "learnig_rate": 1e-4})
    with pytest.raises(ConfigError, match="network_dim"):
        build_config({**BASE, "network_dims": 8})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"learning_rate": -1e-4}, "learning_rate = -0.0001 is not valid: it must be at least 0"),
        ({"network_dim": 0}, "network_dim = 0 is not valid: it must be at least 1"),
        ({"train_batch_size": "two"}, "train_batch_size = 'two' is not valid: it must be a whole number"),
        ({"network_dim": 4.5}, "network_dim = 4.5 is not valid"),
        ({"mixed_precision": "fp8"}, "mixed_precision = 'fp8' is not valid: choose one of auto, no, fp16, bf16"),
        ({"resolution": "500"}, "multiple of 8"),
        ({"resolution": "abc"}, "resolution 'abc' is not valid"),
        ({"random_crop": True}, "random_crop cannot be used with cache_latents"),
        ({"network_train_unet_only": True, "network_train_text_encoder_only": True}, "cannot both be on"),
        ({"output_name": "a/b"}, "output_name = 'a/b' is not valid"),
        ({"min_timestep": 500, "max_timestep": 100}, "min_timestep (500) must not be above max_timestep (100)"),
        ({"caption_dropout_rate": 1.5}, "at most 1"),
        ({"lr_scheduler": "cosine_annealing"}, "lr_scheduler = 'cosine_annealing' is not valid"),
        ({"network_args": ("conv_dims=4",)}, "network_args entry 'conv_dims=4' is not supported"),
        ({"min_snr_gamma": 0}, "greater than 0"),
        ({"caption_extension": ".png"}, "caption_extension = '.png' is not valid: it is an image type"),
        ({"caption_extension": "JPG"}, "caption_extension = 'JPG' is not valid: it is an image type"),
        ({"caption_extension": ""}, "caption_extension = '' is not valid: it must look like .txt"),
        ({"caption_extension": ".a/b"}, "caption_extension = '.a/b' is not valid: it must look like .txt"),
    ],
)
def test_bad_values_name_the_key_and_the_rule(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({**BASE, **values})
    assert message in str(info.value)


def test_usual_caption_extensions_are_accepted() -> None:
    # "txt" without its dot reads .txt files (the dataset scan adds the dot), as before
    for extension in (".txt", ".caption", "txt", ".TXT"):
        assert build_config({**BASE, "caption_extension": extension}).caption_extension == extension


def test_empty_dataset_folder_is_refused() -> None:
    with pytest.raises(ConfigError, match="train_data_dir is empty"):
        build_config({})


def test_values_are_coerced_from_strings() -> None:
    cfg = build_config(
        {
            **BASE,
            "network_dim": "16",
            "network_alpha": "8",
            "flip_aug": "true",
            "clip_skip": "",
            "resolution": "768,512",
        }
    )
    assert cfg.network_dim == 16 and cfg.network_alpha == 8.0 and cfg.flip_aug is True and cfg.clip_skip is None
    assert cfg.resolution_wh == (768, 512)
    assert parse_resolution("640") == (640, 640) and parse_resolution((512, 768)) == (512, 768)


def test_network_args_fill_conv_and_dropout_fields() -> None:
    cfg = build_config(
        {**BASE, "network_args": ["conv_dim=8", "conv_alpha=4", "rank_dropout=0.1", "module_dropout=0.05"]}
    )
    assert (cfg.conv_dim, cfg.conv_alpha, cfg.rank_dropout, cfg.module_dropout) == (8, 4.0, 0.1, 0.05)


def test_character_preset_is_the_guides() -> None:
    cfg = build_config(BASE, preset="character", family="sd1")
    assert (cfg.lr_scheduler, cfg.lr_scheduler_num_cycles) == ("cosine_with_restarts", 5)
    assert cfg.learning_rate == cfg.unet_lr == 1.6e-4 and cfg.text_encoder_lr == 6.5e-5
    assert (cfg.network_dim, cfg.network_alpha) == (32, 16)
    assert (cfg.resolution_wh, cfg.train_batch_size, cfg.clip_skip) == ((512, 512), 2, 2)
    assert (cfg.max_train_epochs, cfg.save_every_n_epochs) == (50, 5)
    assert (cfg.enable_bucket, cfg.min_bucket_reso, cfg.max_bucket_reso, cfg.bucket_reso_steps) == (True, 320, 1280, 64)
    assert cfg.optimizer_type == "AdamW"


def test_presets_adapt_to_sdxl_and_values_win_over_presets() -> None:
    xl = build_config(BASE, preset="character", family="sdxl")
    assert xl.resolution_wh == (1024, 1024) and xl.clip_skip is None and xl.min_bucket_reso == 512
    style = build_config({**BASE, "network_dim": 64}, preset="style")
    assert style.network_dim == 64 and style.network_alpha == 128
    assert preset_values("concept", "sd1")["max_train_epochs"] == 30
    demo_xl = build_config(BASE, preset="character", family="sdxl", native=512)  # the tiny demo SDXL
    assert demo_xl.resolution_wh == (512, 512) and demo_xl.min_bucket_reso == 320 and demo_xl.clip_skip is None
    with pytest.raises(ConfigError, match="Unknown preset 'anime'"):
        build_config(BASE, preset="anime")


def test_toml_sections_are_flattened_as_sd_scripts_does(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'pretrained_model_name_or_path = "tiny-sd15"\n'
        '[dataset_arguments]\ntrain_data_dir = "data"\nresolution = "512,768"\n'
        '[network_arguments]\nnetwork_dim = 16\nnetwork_args = ["conv_dim=4"]\n'
        '[optimizer_arguments]\noptimizer_args = ["weight_decay=0.1", "betas=0.9,0.99"]\n'
        "[training_arguments]\nxformers = true\n",
        encoding="utf-8",
    )
    values = load_toml(path)
    cfg = build_config(values)
    assert cfg.network_dim == 16 and cfg.conv_dim == 4 and cfg.resolution_wh == (512, 768)
    assert cfg.optimizer_args == ("weight_decay=0.1", "betas=0.9,0.99")


def test_bad_toml_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("network_dim = = 4\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")


def test_to_toml_round_trips(tmp_path: Path) -> None:
    cfg = build_config(
        {**BASE, "caption_prefix": 'say "hi"', "optimizer_args": ["weight_decay=0.1"]}, preset="character"
    )
    path = tmp_path / "out.toml"
    path.write_text(to_toml(cfg), encoding="utf-8")
    assert build_config(load_toml(path)) == cfg


def test_every_setting_has_help_and_a_group() -> None:
    from dataclasses import fields

    for f in fields(TrainConfig):
        assert f.metadata["help"] and f.metadata["group"], f.name


def test_sdxl_presets_train_the_text_encoders_only_when_asked() -> None:
    sdxl = build_config({**BASE}, preset="character", family="sdxl")
    assert sdxl.train_unet and not sdxl.train_text_encoder
    asked = build_config({**BASE, "network_train_unet_only": False}, preset="character", family="sdxl")
    assert asked.train_text_encoder
    assert build_config({**BASE}, preset="character", family="sd1").train_text_encoder


def test_every_problem_is_reported_at_once_in_the_labels_words() -> None:
    from lib_lora.config import config_problems, label_name

    values = {
        **BASE, "max_train_epochs": -2, "resolution": "100000", "train_batch_size": 2.5, "output_name": "",
        "network_dim": 0,
    }  # fmt: skip
    _, problems = config_problems(values, names=label_name)
    assert problems == [
        "Batch size = 2.5 is not valid: it must be a whole number.",
        "Network dim (rank) = 0 is not valid: it must be at least 1.",
        "Epochs = -2 is not valid: it must be at least 1.",
        "Resolution = '100000' is not valid: each side must be a multiple of 8 from 64 to 4096 pixels.",
        "LoRA name is empty: type a name for the LoRA files.",
    ]
    with pytest.raises(ConfigError) as info:  # the CLI and TOML name the keys, and list every problem too
        build_config(values)
    assert info.value.problems[0].startswith("train_batch_size = 2.5")
    assert len(info.value.problems) == 5 and str(info.value).count("\n") == 4


@pytest.mark.parametrize(
    "values, message",
    [
        ({"max_train_epochs": 0}, "max_train_epochs = 0 is not valid: it must be at least 1."),
        ({"max_train_epochs": 1e9}, "max_train_epochs = 1000000000 is not valid: it must be at most 10000."),
        ({"max_train_steps": 0}, "max_train_steps = 0 is not valid: it must be at least 1."),
        ({"resolution": "32"}, "each side must be a multiple of 8 from 64 to 4096 pixels"),
        ({"resolution": "512,8192"}, "each side must be a multiple of 8 from 64 to 4096 pixels"),
        ({"max_bucket_reso": 100000}, "max_bucket_reso = 100000 is not valid: it must be at most 4096."),
        ({"output_name": "  "}, "output_name is empty"),
        ({"output_name": ".."}, "output_name = '..' is not valid"),
    ],
)
def test_absurd_values_are_refused(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({**BASE, **values})
    assert message in str(info.value)
    assert "/ \\" not in str(info.value) or values.get("output_name") == ".."


def test_every_setting_has_a_plain_label() -> None:
    from lib_lora.config import FIELDS, plain_label

    for name in FIELDS:
        label = plain_label(name)
        assert label != name and "_" not in label, (name, label)


def test_options_from_network_args_and_their_refusals() -> None:
    cfg = build_config(
        {
            **BASE, "network_args": ["loraplus_lr_ratio=16", "down_lr_weight=0,1,1", "block_dims=" + ",".join(["4"] * 25)],
            "min_timestep": 300, "max_timestep": 300, "loss_type": "huber", "huber_schedule": "exponential",
        }
    )  # fmt: skip
    assert cfg.loraplus_lr_ratio == 16.0 and cfg.down_lr_weight == "0,1,1" and cfg.block_dims.count(",") == 24
    assert (cfg.min_timestep, cfg.max_timestep) == (300, 300)  # sd-scripts trains that one timestep
    with pytest.raises(ConfigError, match="adaptive_noise_scale needs noise_offset"):
        build_config({**BASE, "adaptive_noise_scale": 0.01})
    assert build_config({**BASE, "adaptive_noise_scale": 0.01, "noise_offset": 0.0}).adaptive_noise_scale == 0.01
    with pytest.raises(ConfigError, match="scale_v_pred_loss_like_noise_pred works only with v_parameterization"):
        build_config({**BASE, "v_parameterization": False, "scale_v_pred_loss_like_noise_pred": True})
    with pytest.raises(ConfigError, match="loss_type"):
        build_config({**BASE, "loss_type": "l3"})
    with pytest.raises(ConfigError, match="huber_c"):
        build_config({**BASE, "huber_c": 0})
