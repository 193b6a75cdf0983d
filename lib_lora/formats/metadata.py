"""kohya sd-scripts training metadata (``ss_*``), ModelSpec keys and the model hashes.

All values in a safetensors header are strings: scalars as Python's ``str()`` (``"True"``,
``"None"``, ``"0.0001"``), nested values as JSON (``ss_tag_frequency``, ``ss_dataset_dirs``, ...).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

# The keys sd-scripts' train_network.py writes, in its order.
SS_KEYS: tuple[str, ...] = (
    "ss_session_id", "ss_training_started_at", "ss_output_name", "ss_learning_rate", "ss_text_encoder_lr",
    "ss_unet_lr", "ss_num_train_images", "ss_num_validation_images", "ss_num_reg_images",
    "ss_num_batches_per_epoch", "ss_num_epochs", "ss_gradient_checkpointing", "ss_gradient_accumulation_steps",
    "ss_max_train_steps", "ss_lr_warmup_steps", "ss_lr_scheduler", "ss_network_module", "ss_network_dim",
    "ss_network_alpha", "ss_network_dropout", "ss_mixed_precision", "ss_full_fp16", "ss_v2",
    "ss_base_model_version", "ss_clip_skip", "ss_max_token_length", "ss_cache_latents", "ss_seed", "ss_lowram",
    "ss_noise_offset", "ss_multires_noise_iterations", "ss_multires_noise_discount", "ss_adaptive_noise_scale",
    "ss_zero_terminal_snr", "ss_training_comment", "ss_sd_scripts_commit_hash", "ss_optimizer",
    "ss_max_grad_norm", "ss_caption_dropout_rate", "ss_caption_dropout_every_n_epochs",
    "ss_caption_tag_dropout_rate", "ss_face_crop_aug_range", "ss_prior_loss_weight", "ss_min_snr_gamma",
    "ss_scale_weight_norms", "ss_ip_noise_gamma", "ss_debiased_estimation", "ss_noise_offset_random_strength",
    "ss_ip_noise_gamma_random_strength", "ss_loss_type", "ss_huber_schedule", "ss_huber_scale", "ss_huber_c",
    "ss_fp8_base", "ss_fp8_base_unet", "ss_validation_seed", "ss_validation_split", "ss_max_validation_steps",
    "ss_validate_every_n_epochs", "ss_validate_every_n_steps", "ss_resize_interpolation",
    # dataset (folder mode)
    "ss_batch_size_per_device", "ss_total_batch_size", "ss_resolution", "ss_color_aug", "ss_flip_aug",
    "ss_random_crop", "ss_shuffle_caption", "ss_enable_bucket", "ss_bucket_no_upscale", "ss_min_bucket_reso",
    "ss_max_bucket_reso", "ss_keep_tokens", "ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_tag_frequency",
    "ss_bucket_info",
    # network, model
    "ss_network_args", "ss_sd_model_hash", "ss_new_sd_model_hash", "ss_sd_model_name",
    "ss_vae_hash", "ss_new_vae_hash", "ss_vae_name",
    # per save
    "ss_training_finished_at", "ss_steps", "ss_epoch",
)  # fmt: skip
JSON_KEYS = frozenset(
    {"ss_network_args", "ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_tag_frequency", "ss_bucket_info", "ss_datasets"}
)
# keys sd-scripts writes only when they apply: network_args when given, the model hashes when the model
# is a file, the VAE keys when a separate VAE is given (train_network.py)
OPTIONAL_KEYS = frozenset(
    {"ss_network_args", "ss_sd_model_hash", "ss_new_sd_model_hash", "ss_vae_name", "ss_vae_hash", "ss_new_vae_hash"}
)
# sd-scripts' --no_metadata set (plus modelspec and the hashes)
MINIMUM_KEYS = (
    "ss_v2",
    "ss_base_model_version",
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_args",
)

# sd-scripts names SDXL "sdxl_base_v1-0" whether it predicts eps or v (sdxl_model_util.MODEL_VERSION_SDXL_BASE_V1_0)
BASE_MODEL_VERSIONS = {
    ("sd1", False): "sd_v1", ("sd1", True): "sd_v1_v", ("sdxl", False): "sdxl_base_v1-0", ("sdxl", True): "sdxl_base_v1-0",
}  # fmt: skip
MODELSPEC_ARCH = {"sd1": "stable-diffusion-v1/lora", "sdxl": "stable-diffusion-xl-v1-base/lora"}
MODELSPEC_IMPL = {"sd1": "diffusers", "sdxl": "https://github.com/Stability-AI/generative-models"}


def base_model_version(family: str, v_prediction: bool) -> str:
    try:
        return BASE_MODEL_VERSIONS[(family, v_prediction)]
    except KeyError:
        raise ValueError(f"no ss_base_model_version for {family} (v-prediction {v_prediction})") from None


def ss_value(key: str, value: Any) -> str:
    """One value as sd-scripts stores it: JSON for the nested keys, ``str()`` otherwise."""
    if key in JSON_KEYS and not isinstance(value, str):
        return json.dumps(value)
    return str(value)


def format_ss_metadata(values: Mapping[str, Any]) -> dict[str, str]:
    """Every ``ss_*`` key sd-scripts writes (missing ones as ``"None"``, except :data:`OPTIONAL_KEYS`,
    written only when given) plus any extra ``ss_*`` keys given, all as strings."""
    out = {key: ss_value(key, values.get(key)) for key in SS_KEYS if key not in OPTIONAL_KEYS or key in values}
    for key, value in values.items():
        if key.startswith("ss_") and key not in out:
            out[key] = ss_value(key, value)
    return out


def minimum_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    return {k: metadata[k] for k in MINIMUM_KEYS if k in metadata}


def modelspec(
    family: str,
    *,
    title: str,
    resolution: tuple[int, int],
    v_prediction: bool = False,
    clip_skip: int | None = None,
    date: datetime.datetime | None = None,
    trigger_phrase: str | None = None,
    description: str | None = None,
    implementation_version: str | None = None,
    timestep_range: tuple[int, int] | None = None,
) -> dict[str, str]:
    """The ModelSpec 1.0.1 keys sd-scripts adds to a LoRA (``implementation_version``: the trainer
    and its version, as sd-scripts writes ``sd-scripts/<commit>``; ``timestep_range``: the
    trained (min, max) timesteps when they were limited)."""
    date = date or datetime.datetime.now()
    spec = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": MODELSPEC_ARCH[family],
        "modelspec.implementation": MODELSPEC_IMPL[family],
        "modelspec.title": title,
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.date": date.replace(microsecond=0, tzinfo=None).isoformat(),
        "modelspec.prediction_type": "v" if v_prediction else "epsilon",
    }
    if implementation_version:
        spec["modelspec.implementation_version"] = implementation_version
    if timestep_range is not None:
        spec["modelspec.timestep_range"] = f"{timestep_range[0]},{timestep_range[1]}"
    if clip_skip is not None:
        spec["modelspec.encoder_layer"] = str(clip_skip)
    if trigger_phrase:
        spec["modelspec.trigger_phrase"] = trigger_phrase
    if description:
        spec["modelspec.description"] = description
    return spec


# -- hashes ----------------------------------------------------------------------------------------

_BLOCK = 1024 * 1024


def sshs_hashes_of_bytes(blob: bytes) -> tuple[str, str]:
    """(``sshs_model_hash``, ``sshs_legacy_hash``) of a serialized safetensors blob.

    model hash: sha256 of everything after the header; legacy hash: first 8 hex of sha256 of bytes
    0x100000-0x110000 (of a blob serialized with only the ``ss_*`` metadata, as sd-scripts does).
    """
    header_size = int.from_bytes(blob[:8], "little")
    model = hashlib.sha256(memoryview(blob)[8 + header_size :]).hexdigest()
    legacy = hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    return model, legacy


def sshs_model_hash_of_file(path: str | os.PathLike) -> str:
    """``sshs_model_hash`` recomputed from a file (independent of its metadata)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + header_size)
        for chunk in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def legacy_model_hash(path: str | os.PathLike) -> str:
    """The webui's old 8-hex checkpoint hash (``ss_sd_model_hash``): sha256 of 64 KiB at 1 MiB."""
    with open(path, "rb") as handle:
        handle.seek(0x100000)
        return hashlib.sha256(handle.read(0x10000)).hexdigest()[:8]


def sha256_of_file(path: str | os.PathLike) -> str:
    """Full-file sha256 (``ss_new_sd_model_hash``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(chunk)
    return digest.hexdigest()
