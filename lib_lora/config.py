"""Training settings: one frozen dataclass whose field metadata drives the CLI, the UI, TOML files
and the ``ss_*`` metadata.

Field names are kohya sd-scripts' argument names wherever sd-scripts has the setting, so a flat
kohya TOML loads as it is. Fields marked ``kohya=False`` are ours.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from lib_lora.common.errors import UserError

GROUPS = ("model", "dataset", "network", "optimizer", "training", "saving", "samples")


class ConfigError(UserError):
    """A setting that is unknown or breaks a rule; the message names the key and the rule."""


def setting(
    default: Any,
    help: str,
    *,
    group: str,
    label: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    choices: tuple | None = None,
    advanced: bool = False,
    kohya: bool = True,
    in_metadata: bool = True,
) -> Any:
    assert group in GROUPS, group
    meta = {
        "help": help, "group": group, "label": label, "minimum": minimum, "maximum": maximum,
        "exclusive_minimum": exclusive_minimum, "choices": choices, "advanced": advanced, "kohya": kohya,
        "in_metadata": in_metadata,
    }  # fmt: skip
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    # -- model -------------------------------------------------------------------------------------
    pretrained_model_name_or_path: str = setting(
        "tiny-sd15", "The base model: a .safetensors SD1.x/SDXL checkpoint, or the built-in demo models tiny-sd15 / tiny-sdxl. In the webui tab the loaded checkpoint is used.",
        group="model", label="Base model")  # fmt: skip
    model_family: str = setting(
        "auto",
        "sd1 or sdxl; auto detects it from the checkpoint.",
        group="model",
        choices=("auto", "sd1", "sdxl"),
        advanced=True,
        kohya=False,
    )
    v_parameterization: bool | None = setting(
        None,
        "The model predicts v (v-prediction models such as NoobAI-XL v-pred). Empty = detect.",
        group="model",
        advanced=True,
    )
    clip_skip: int | None = setting(
        None,
        "Use the output of the N-th last text-encoder layer (2 for NovelAI-based anime models, 1 otherwise). SD1 only.",
        group="model",
        minimum=1,
        maximum=12,
    )
    max_token_length: int | None = setting(
        None,
        "Caption length in tokens: 75 (default), 150 or 225.",
        group="model",
        choices=(None, 75, 150, 225),
        advanced=True,
    )

    # -- dataset -----------------------------------------------------------------------------------
    train_data_dir: str = setting(
        "",
        "The dataset folder that holds the N_name subfolders (N = repeats per epoch).",
        group="dataset",
        label="Dataset folder",
    )
    caption_extension: str = setting(
        ".txt", "Extension of the caption files beside the images.", group="dataset", advanced=True
    )
    resolution: str = setting("512", "Training resolution: 512, or width,height such as 768,512.", group="dataset")
    enable_bucket: bool = setting(
        False,
        "Aspect-ratio buckets: train each image near its own shape instead of a square crop.",
        group="dataset",
        label="Buckets",
    )
    min_bucket_reso: int = setting(256, "Smallest bucket side.", group="dataset", minimum=64)
    max_bucket_reso: int = setting(1024, "Largest bucket side.", group="dataset", minimum=64)
    bucket_reso_steps: int = setting(
        64,
        "Bucket sides are multiples of this (64 for SD1, 32 or 64 for SDXL).",
        group="dataset",
        minimum=8,
        advanced=True,
    )
    bucket_no_upscale: bool = setting(
        False, "Never upscale small images; buckets are made to fit them.", group="dataset", advanced=True
    )
    shuffle_caption: bool = setting(
        False, "Shuffle the comma-separated tags of each caption every step.", group="dataset"
    )
    keep_tokens: int = setting(
        0,
        "Keep the first N tags in place when shuffling (1 keeps the activation tag first).",
        group="dataset",
        minimum=0,
    )
    keep_tokens_separator: str = setting(
        "", "Text before this separator (e.g. |||) stays fixed when shuffling.", group="dataset", advanced=True
    )
    caption_tag_dropout_rate: float = setting(
        0.0,
        "Drop each tag with this probability (after the kept ones).",
        group="dataset",
        minimum=0,
        maximum=1,
        advanced=True,
    )
    caption_dropout_rate: float = setting(
        0.0, "Train on an empty caption with this probability.", group="dataset", minimum=0, maximum=1, advanced=True
    )
    caption_dropout_every_n_epochs: int = setting(
        0, "Train every N-th epoch on empty captions (0 = never).", group="dataset", minimum=0, advanced=True
    )
    caption_prefix: str | None = setting(None, "Text added before every caption.", group="dataset", advanced=True)
    caption_suffix: str | None = setting(None, "Text added after every caption.", group="dataset", advanced=True)
    flip_aug: bool = setting(False, "Randomly mirror images (not for asymmetric characters).", group="dataset")
    random_crop: bool = setting(
        False, "Crop at a random place instead of the centre (needs cache_latents off).", group="dataset", advanced=True
    )
    cache_latents: bool = setting(
        True, "Encode every image once before training (faster, less VRAM).", group="dataset", advanced=True
    )
    cache_latents_to_disk: bool = setting(
        False,
        "Keep the encoded images in .npz files beside them, reused by later runs.",
        group="dataset",
        advanced=True,
    )

    # -- network -----------------------------------------------------------------------------------
    network_module: str = setting(
        "networks.lora",
        "The network type; only networks.lora (kohya LoRA) is supported.",
        group="network",
        choices=("networks.lora",),
        advanced=True,
    )
    network_dim: int = setting(
        4,
        "LoRA rank: bigger learns more detail, makes bigger files and overfits sooner.",
        group="network",
        minimum=1,
        maximum=1024,
        label="Network dim (rank)",
    )
    network_alpha: float = setting(
        1.0,
        "LoRA alpha; the LoRA is scaled by alpha / dim (commonly dim / 2).",
        group="network",
        minimum=0,
        label="Network alpha",
    )
    network_dropout: float | None = setting(
        None, "Dropout on the LoRA's inner activations.", group="network", minimum=0, maximum=1, advanced=True
    )
    network_args: tuple[str, ...] = setting(
        (),
        "sd-scripts network args such as conv_dim=4 conv_alpha=1 rank_dropout=0.1 module_dropout=0.1.",
        group="network",
        advanced=True,
        in_metadata=False,
    )
    conv_dim: int | None = setting(
        None,
        "Also train the 3x3 convolutions at this rank (LoCon-style; more style/detail).",
        group="network",
        minimum=1,
        maximum=1024,
        advanced=True,
        kohya=False,
        in_metadata=False,
    )
    conv_alpha: float | None = setting(
        None,
        "Alpha of the 3x3 convolution LoRAs (default 1, as sd-scripts: with conv_dim 8 the conv LoRAs train at 1/8 scale).",
        group="network",
        minimum=0,
        advanced=True,
        kohya=False,
        in_metadata=False,
    )
    rank_dropout: float | None = setting(
        None,
        "Drop rank channels per sample with this probability.",
        group="network",
        minimum=0,
        maximum=1,
        advanced=True,
        kohya=False,
        in_metadata=False,
    )
    module_dropout: float | None = setting(
        None,
        "Skip a whole LoRA module for a step with this probability.",
        group="network",
        minimum=0,
        maximum=1,
        advanced=True,
        kohya=False,
        in_metadata=False,
    )
    network_weights: str | None = setting(
        None, "Start from an existing LoRA file (ours or sd-scripts').", group="network", advanced=True
    )
    network_train_unet_only: bool = setting(
        False, "Train only the UNet (recommended for SDXL on small GPUs).", group="network"
    )
    network_train_text_encoder_only: bool = setting(
        False, "Train only the text encoder(s).", group="network", advanced=True
    )

    # -- optimizer -------------------------------------------------------------------------------
    optimizer_type: str = setting(
        "AdamW", "AdamW, AdamW8bit, Lion, SGDNesterov, Prodigy, DAdaptAdam or Adafactor.", group="optimizer"
    )
    optimizer_args: tuple[str, ...] = setting(
        (),
        "Extra optimizer arguments such as weight_decay=0.01 betas=0.9,0.999.",
        group="optimizer",
        advanced=True,
        in_metadata=False,
    )
    learning_rate: float = setting(
        1e-4,
        "Base learning rate (used where unet_lr / text_encoder_lr are empty).",
        group="optimizer",
        minimum=0,
        label="Learning rate",
    )
    unet_lr: float | None = setting(
        None, "Learning rate of the UNet LoRA.", group="optimizer", minimum=0, label="UNet learning rate"
    )
    text_encoder_lr: float | None = setting(
        None,
        "Learning rate of the text-encoder LoRA.",
        group="optimizer",
        minimum=0,
        label="Text encoder learning rate",
    )
    lr_scheduler: str = setting(
        "constant", "How the learning rate changes over the run.", group="optimizer",
        choices=("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial", "adafactor"),
    )  # fmt: skip
    lr_warmup_steps: float = setting(
        0, "Warm-up steps (or a fraction of all steps, when below 1).", group="optimizer", minimum=0, advanced=True
    )
    lr_scheduler_num_cycles: int = setting(
        1,
        "Restarts of cosine_with_restarts (the guide uses about a tenth of the epochs).",
        group="optimizer",
        minimum=1,
    )
    lr_scheduler_power: float = setting(
        1.0, "Power of the polynomial schedule.", group="optimizer", minimum=0, advanced=True
    )
    max_grad_norm: float = setting(
        1.0, "Clip gradients to this norm (0 = off).", group="optimizer", minimum=0, advanced=True
    )

    # -- training ----------------------------------------------------------------------------------
    train_batch_size: int = setting(
        1, "Images per step. Higher needs more VRAM.", group="training", minimum=1, maximum=64, label="Batch size"
    )
    max_train_epochs: int | None = setting(
        None, "Number of epochs (wins over max_train_steps).", group="training", minimum=1, label="Epochs"
    )
    max_train_steps: int = setting(
        1600, "Number of optimizer steps when max_train_epochs is empty.", group="training", minimum=1
    )
    gradient_accumulation_steps: int = setting(
        1, "Add up gradients of N batches per optimizer step.", group="training", minimum=1, advanced=True
    )
    gradient_checkpointing: bool = setting(
        False, "Recompute activations in the backward pass: much less VRAM, ~20% slower.", group="training"
    )
    mixed_precision: str = setting(
        "auto",
        "no, fp16 or bf16; auto = fp16 on a GPU (bf16 where supported), no on the CPU.",
        group="training",
        choices=("auto", "no", "fp16", "bf16"),
    )
    seed: int | None = setting(
        None,
        "Random seed; the same seed gives the same run. Empty = a random seed (recorded in the file).",
        group="training",
        minimum=0,
    )
    noise_offset: float | None = setting(
        None,
        "Noise offset (0.05-0.1 helps very dark/bright images).",
        group="training",
        minimum=0,
        maximum=1,
        advanced=True,
    )
    noise_offset_random_strength: bool = setting(
        False, "Use a random noise offset between 0 and noise_offset.", group="training", advanced=True
    )
    min_snr_gamma: float | None = setting(
        None,
        "Min-SNR loss weighting gamma (5 is common).",
        group="training",
        minimum=0,
        exclusive_minimum=True,
        advanced=True,
    )
    min_timestep: int | None = setting(
        None, "Lowest timestep trained (0-999).", group="training", minimum=0, maximum=999, advanced=True
    )
    max_timestep: int | None = setting(
        None, "Highest timestep trained plus one (1-1000).", group="training", minimum=1, maximum=1000, advanced=True
    )
    loss_type: str = setting(
        "l2", "Loss: l2 (mean squared error) or l1.", group="training", choices=("l2", "l1"), advanced=True
    )
    validation_split: float = setting(
        0.0,
        "Share of each dataset folder's images held out of training to measure a validation loss (0.1 = 10%; 0 = none). The figure uses fixed noise and timesteps, so epochs compare.",
        group="training",
        minimum=0,
        maximum=1,
        advanced=True,
    )
    validation_seed: int | None = setting(
        None,
        "Seed of the held-out split and of the validation noise (empty = the training seed).",
        group="training",
        advanced=True,
    )
    validate_every_n_epochs: int | None = setting(
        None,
        "Measure the validation loss every N epochs (empty = every epoch).",
        group="training",
        minimum=1,
        advanced=True,
    )
    validate_every_n_steps: int | None = setting(
        None, "Also measure the validation loss every N steps.", group="training", minimum=1, advanced=True
    )
    max_validation_steps: int | None = setting(
        None,
        "Use at most N held-out batches per validation (empty = all).",
        group="training",
        minimum=1,
        advanced=True,
    )

    # -- saving ------------------------------------------------------------------------------------
    output_dir: str = setting(
        "output", "Where LoRA files are written (in the webui: its Lora folder).", group="saving", label="Output folder"
    )
    output_name: str = setting(
        "lora", "File name of the LoRA; epochs are saved as NAME-000005.safetensors.", group="saving", label="LoRA name"
    )
    save_precision: str = setting(
        "fp16", "Precision of the saved file.", group="saving", choices=("fp16", "bf16", "float"), advanced=True
    )
    save_every_n_epochs: int | None = setting(None, "Save an epoch file every N epochs.", group="saving", minimum=1)
    save_every_n_steps: int | None = setting(
        None, "Save a step file every N steps.", group="saving", minimum=1, advanced=True
    )
    save_last_n_epochs: int | None = setting(
        None, "Keep only the last N epoch files.", group="saving", minimum=1, advanced=True
    )
    training_comment: str | None = setting(
        None, "A comment stored in the file's metadata.", group="saving", advanced=True
    )
    activation_text: str | None = setting(
        None,
        "The trigger words shown with the LoRA in the webui (default: the dataset's activation tag).",
        group="saving",
        kohya=False,
        in_metadata=False,
    )
    preferred_weight: float = setting(
        1.0,
        "The weight the webui suggests for this LoRA.",
        group="saving",
        minimum=0,
        maximum=2,
        advanced=True,
        kohya=False,
        in_metadata=False,
    )

    # -- samples -----------------------------------------------------------------------------------
    sample_every_n_epochs: int | None = setting(
        None, "Render sample images every N epochs.", group="samples", minimum=1
    )
    sample_prompts: str | None = setting(
        None,
        "Sample prompts: a file with one prompt per line, or the prompts themselves (one per line); options --n --w --h --d --s --l as sd-scripts.",
        group="samples",
    )
    sample_sampler: str = setting(
        "ddim", "Sampler for sample images.", group="samples", choices=("ddim", "euler", "euler_a"), advanced=True
    )

    # -- derived values ----------------------------------------------------------------------------
    @property
    def resolution_wh(self) -> tuple[int, int]:
        return parse_resolution(self.resolution)

    @property
    def train_unet(self) -> bool:
        return not self.network_train_text_encoder_only

    @property
    def train_text_encoder(self) -> bool:
        return not self.network_train_unet_only

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


FIELDS = {f.name: f for f in fields(TrainConfig)}
_NETWORK_ARGS = {"conv_dim": "conv_dim", "conv_alpha": "conv_alpha", "rank_dropout": "rank_dropout", "module_dropout": "module_dropout",
                 "dropout": "network_dropout"}  # fmt: skip
# keys of kohya configs that only steer sd-scripts itself; accepted and ignored
IGNORED_KOHYA_KEYS = frozenset({
    "save_model_as", "logging_dir", "log_with", "log_prefix", "xformers", "sdpa", "mem_eff_attn", "persistent_data_loader_workers",
    "max_data_loader_n_workers", "lowram", "no_half_vae", "highvram", "vae_batch_size", "log_tracker_name", "console_log_simple",
    "save_state", "save_state_on_train_end", "wandb_api_key", "wandb_run_name",
})  # fmt: skip


def parse_resolution(text: str | int | tuple | list) -> tuple[int, int]:
    """``"512"`` -> (512, 512); ``"768,512"`` -> (768, 512) (width, height, as sd-scripts)."""
    if isinstance(text, int):
        return text, text
    if isinstance(text, (tuple, list)):
        parts = [str(p) for p in text]
    else:
        parts = [p.strip() for p in str(text).replace("x", ",").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"resolution {text!r} is not valid: use 512 or width,height such as 768,512.") from None
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise ConfigError(f"resolution {text!r} is not valid: use 512 or width,height such as 768,512.")


def _field_type(name: str) -> str:
    return str(FIELDS[name].type)


def coerce(name: str, value: Any) -> Any:
    """Turn a TOML / CLI / UI value into the field's type; ConfigError naming the key otherwise."""
    kind = _field_type(name)
    nullable = "None" in kind
    if value is None or (nullable and isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        if nullable:
            return None
        if kind.startswith("str"):
            return ""
        raise ConfigError(f"{name} needs a value.")
    try:
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if kind.startswith("int"):
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if math.isnan(number) or math.isinf(number):
                raise ValueError
            return number
        if kind.startswith("tuple"):
            if isinstance(value, str):
                return tuple(part for part in value.split() if part)
            return tuple(str(v) for v in value)
        if name == "resolution":
            w, h = parse_resolution(value)
            return str(w) if w == h else f"{w},{h}"
        return str(value)
    except (TypeError, ValueError):
        expected = kind.replace(" | None", "").split("[")[0]
        words = {"int": "an integer (a whole number)", "float": "a number", "bool": "true or false"}
        raise ConfigError(
            f"{name} = {value!r} is not valid: it must be {words.get(expected, 'a ' + expected)}."
        ) from None


def unknown_key_error(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(FIELDS), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ConfigError(f"Unknown setting {key!r}.{hint}")


def _network_args_to_fields(args: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.strip()
        if not sep or key not in _NETWORK_ARGS:
            known = ", ".join(sorted(_NETWORK_ARGS))
            raise ConfigError(f"network_args entry {arg!r} is not supported; use key=value with one of: {known}.")
        out[_NETWORK_ARGS[key]] = coerce(_NETWORK_ARGS[key], value.strip())
    return out


def normalize_key(key: str) -> str:
    return key.strip().replace("-", "_")


def merge_values(base: TrainConfig, values: Mapping[str, Any]) -> TrainConfig:
    """``base`` with ``values`` applied (kohya names; unknown keys refused with the closest names)."""
    changes: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = normalize_key(raw_key)
        if key in IGNORED_KOHYA_KEYS:
            continue
        if key not in FIELDS:
            raise unknown_key_error(raw_key)
        changes[key] = coerce(key, value)
    if "network_args" in changes:
        for key, value in _network_args_to_fields(changes["network_args"]).items():
            changes.setdefault(key, value)
    return dataclasses.replace(base, **changes)


def check_rules(cfg: TrainConfig) -> None:
    """Every per-field rule (bounds, choices) and the cross-field rules; ConfigError on the first
    broken one, naming the key and the rule."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        meta = f.metadata
        if value is None or isinstance(value, (tuple, bool)):
            if (
                meta.get("choices")
                and value is not None
                and not isinstance(value, tuple)
                and value not in meta["choices"]
            ):
                raise ConfigError(f"{f.name} = {value!r} is not one of {', '.join(map(str, meta['choices']))}.")
            continue
        if meta.get("choices") and value not in meta["choices"]:
            options = ", ".join(str(c) for c in meta["choices"] if c is not None)
            raise ConfigError(f"{f.name} = {value!r} is not valid: choose one of {options}.")
        if isinstance(value, (int, float)):
            low, high = meta.get("minimum"), meta.get("maximum")
            if low is not None and (value < low or (meta.get("exclusive_minimum") and value == low)):
                rule = f"greater than {low:g}" if meta.get("exclusive_minimum") else f"at least {low:g}"
                raise ConfigError(f"{f.name} = {value!r} is not valid: it must be {rule}.")
            if high is not None and value > high:
                raise ConfigError(f"{f.name} = {value!r} is not valid: it must be at most {high:g}.")
    width, height = cfg.resolution_wh
    if width < 64 or height < 64 or width % 8 or height % 8:
        raise ConfigError(
            f"resolution = {cfg.resolution!r} is not valid: each side must be at least 64 and a multiple of 8."
        )
    if cfg.min_bucket_reso > cfg.max_bucket_reso:
        raise ConfigError(
            f"min_bucket_reso ({cfg.min_bucket_reso}) must not exceed max_bucket_reso ({cfg.max_bucket_reso})."
        )
    if cfg.network_train_unet_only and cfg.network_train_text_encoder_only:
        raise ConfigError("network_train_unet_only and network_train_text_encoder_only cannot both be on.")
    if cfg.min_timestep is not None and cfg.max_timestep is not None and cfg.min_timestep >= cfg.max_timestep:
        raise ConfigError(f"min_timestep ({cfg.min_timestep}) must be below max_timestep ({cfg.max_timestep}).")
    if cfg.validation_split >= 1:
        raise ConfigError("validation_split must be below 1: some images have to stay in training.")
    if cfg.random_crop and cfg.cache_latents:
        raise ConfigError(
            "random_crop cannot be used with cache_latents (cached latents are centre-cropped); turn one off."
        )
    if cfg.learning_rate == 0 and not (cfg.unet_lr or cfg.text_encoder_lr):
        raise ConfigError("learning_rate is 0 and no unet_lr / text_encoder_lr is set: nothing would train.")
    if not cfg.output_name or re.search(r"[\\/:*?\"<>|]", cfg.output_name) or cfg.output_name in (".", ".."):
        raise ConfigError(
            f'output_name = {cfg.output_name!r} is not valid: use a plain file name without / \\ : * ? " < > |.'
        )
    if not cfg.train_data_dir:
        raise ConfigError("train_data_dir is empty: choose the dataset folder (the one holding the N_name subfolders).")


# -- presets ---------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    "character": {
        "_doc": "A character from 15-100 images (the popular guide): dim 32 / alpha 16, cosine with 5 restarts, 50 epochs saved every 5; 512 px for SD1, 1024 px for SDXL (SDXL trains the UNet only unless you untick that).",
        "resolution": {512: "512", 1024: "1024"},
        "enable_bucket": True,
        "min_bucket_reso": {512: 320, 1024: 512},
        "max_bucket_reso": {512: 1280, 1024: 2048},
        "bucket_reso_steps": 64,
        "network_dim": 32,
        "network_alpha": 16,
        "optimizer_type": "AdamW",
        "learning_rate": 1.6e-4,
        "unet_lr": 1.6e-4,
        "text_encoder_lr": 6.5e-5,
        "lr_scheduler": "cosine_with_restarts",
        "lr_scheduler_num_cycles": 5,
        "train_batch_size": 2,
        "clip_skip": {"sd1": 2, "sdxl": None},
        # SDXL: the text encoders train only when asked (sd-scripts' advice for SDXL LoRAs)
        "network_train_unet_only": {"sd1": False, "sdxl": True},
        "max_train_epochs": 50,
        "save_every_n_epochs": 5,
        "shuffle_caption": True,
        "keep_tokens": 1,
        "cache_latents": True,
    },
    "style": {
        "_doc": "An art style: as the character preset with dim 128 / alpha 128 (32 / 16 is often enough and smaller).",
        "_base": "character",
        "network_dim": 128,
        "network_alpha": 128,
    },
    "concept": {
        "_doc": "A pose, outfit or object: dim 32 / alpha 16, a gentler learning rate, 30 epochs saved every 5.",
        "_base": "character",
        "learning_rate": 1e-4,
        "unet_lr": 1e-4,
        "text_encoder_lr": 5e-5,
        "lr_scheduler_num_cycles": 3,
        "max_train_epochs": 30,
    },
    "sdxl-8gb": {
        "_doc": "SDXL on 8-10 GB (kohya's docs): UNet only, gradient checkpointing, cached latents, Adafactor, dim 8.",
        "resolution": "1024",
        "enable_bucket": True,
        "min_bucket_reso": 640,
        "max_bucket_reso": 1536,
        "bucket_reso_steps": 64,
        "network_dim": 8,
        "network_alpha": 4,
        "network_train_unet_only": True,
        "gradient_checkpointing": True,
        "cache_latents": True,
        "optimizer_type": "Adafactor",
        "optimizer_args": ("scale_parameter=False", "relative_step=False", "warmup_init=False"),
        "learning_rate": 1e-4,
        "unet_lr": 1e-4,
        "lr_scheduler": "constant_with_warmup",
        "lr_warmup_steps": 100,
        "max_grad_norm": 0.0,
        "train_batch_size": 1,
        "max_train_epochs": 10,
        "save_every_n_epochs": 1,
        "shuffle_caption": True,
        "keep_tokens": 1,
    },
}


def native_resolution(family: str, demo: bool = False) -> int:
    """The resolution a model family is trained at: 512 for SD1, 1024 for SDXL. The built-in demo
    models (random weights, made to try the workflow on a CPU) use 512 whichever family they mimic."""
    return 512 if demo or family != "sdxl" else 1024


def preset_values(name: str, family: str, native: int | None = None) -> dict[str, Any]:
    """The values of preset ``name`` for a model family: entries keyed by family (``sd1``/``sdxl``)
    or by native resolution (512/1024, see :func:`native_resolution`) are resolved."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    native = native or native_resolution(family)
    preset = PRESETS[name]
    values: dict[str, Any] = preset_values(preset["_base"], family, native) if "_base" in preset else {}
    for key, value in preset.items():
        if key.startswith("_"):
            continue
        if isinstance(value, dict):
            value = value[native] if native in value else value.get(family, value.get("sd1"))
        values[key] = value
    return values


def build_config(
    values: Mapping[str, Any],
    *,
    preset: str | None = None,
    family: str = "sd1",
    native: int | None = None,
    check: bool = True,
) -> TrainConfig:
    """Defaults < preset < ``values``; validated (unless ``check`` is False)."""
    cfg = TrainConfig()
    if preset:
        cfg = merge_values(cfg, preset_values(preset, family, native))
    cfg = merge_values(cfg, values)
    if check:
        check_rules(cfg)
    return cfg


# -- TOML ------------------------------------------------------------------------------------------


def _toml_module():
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli
    except ImportError:
        raise UserError("Reading TOML needs the tomli package on Python 3.10: pip install tomli") from None
    return tomli


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """A kohya-style TOML config as one flat dict: sections are flattened as sd-scripts'
    ``--config_file`` does (top-level values kept, each section's keys lifted)."""
    toml = _toml_module()
    try:
        with open(path, "rb") as handle:
            data = toml.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist.") from None
    except IsADirectoryError:
        raise ConfigError(f"Config file {path} is a folder.") from None
    except toml.TOMLDecodeError as exc:
        raise ConfigError(f"Config file {path} is not valid TOML: {exc}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Config file {path} is not UTF-8 text.") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def to_toml(cfg: TrainConfig, only_changed: bool = True) -> str:
    """A flat TOML document of ``cfg`` (kohya names) — what the UI's "save config" writes."""
    default = TrainConfig()
    lines = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value is None or (only_changed and value == getattr(default, f.name)):
            continue
        lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
