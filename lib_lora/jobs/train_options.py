"""sd-scripts' training options around the training job (kept apart from its state and saving):
the prediction type and schedule (v-prediction, zero terminal SNR), the loss settings, block-wise
dims and learning rates, LoRA+, loss masks, regularization images and how ``ss_network_args``
records them. Each check refuses what cannot combine with one sentence before any work.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib_lora.common.errors import UserError
from lib_lora.config import NETWORK_ARG_FIELDS, TrainConfig
from lib_lora.data.buckets import crop_offsets
from lib_lora.data.dataset import DatasetScan, scan_dataset, with_regularization
from lib_lora.data.masks import MaskSource
from lib_lora.engine import blocks, optim
from lib_lora.engine.bundle import ModelBundle
from lib_lora.engine.network import LoRANetwork
from lib_lora.engine.noise import NUM_TRAIN_TIMESTEPS, zero_terminal_snr_alphas_cumprod
from lib_lora.engine.step import LossSettings
from lib_lora.events import Events, StopToken
from lib_lora.formats import metadata as md
from lib_lora.formats.kohya import stem_map


def check_options(cfg: TrainConfig, bundle: ModelBundle) -> list[str]:
    """Refuse option combinations that cannot work on ``bundle``; return the warnings."""
    warnings: list[str] = []
    v_pred = resolve_v_prediction(cfg, bundle)
    if cfg.scale_v_pred_loss_like_noise_pred and not v_pred:
        raise UserError(
            "scale_v_pred_loss_like_noise_pred works only with a v-prediction model (set v_parameterization or load one)."
        )
    if uses_blocks(cfg):
        if not cfg.train_unet:
            raise UserError(
                "Block-wise dims and learning rates apply to the UNet, which is not trained (network_train_text_encoder_only)."
            )
        block_module_dims(cfg, bundle.family, [], {})  # bad block lists are reported before any work
    elif any(getattr(cfg, key) is not None for key in ("block_alphas", "conv_block_dims", "conv_block_alphas")):
        warnings.append(
            "block_alphas / conv_block_dims / conv_block_alphas do nothing without block_dims or a *_lr_weight (as in sd-scripts)."
        )
    if resolve_zero_terminal_snr(cfg, bundle) and not v_pred:
        warnings.append(
            "zero_terminal_snr is on for a model that predicts noise (eps): sd-scripts warns that the result will be unexpected."
        )
    return warnings


def check_per_group_lrs(cfg: TrainConfig, built: optim.OptimizerInfo) -> None:
    """LoRA+ and block lrs need per-group learning rates, which D-Adaptation / Prodigy and
    Adafactor with relative_step do not use."""
    per_group = [
        key for key in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio",
                        "down_lr_weight", "mid_lr_weight", "up_lr_weight") if getattr(cfg, key) is not None
    ]  # fmt: skip
    if per_group and (built.adaptive or built.group_lrs_dropped):
        raise UserError(
            f"{per_group[0]} needs a learning rate per parameter group, which {built.name} does not use "
            "(it sets one step size for everything); choose AdamW or another optimizer, or clear it."
        )


def add_regularization(cfg: TrainConfig, scan: DatasetScan, events: Events, stop: StopToken | None) -> DatasetScan:
    """``scan`` plus ``reg_data_dir``'s images (balanced as sd-scripts), or ``scan`` itself."""
    if not cfg.reg_data_dir:
        return scan
    if Path(cfg.reg_data_dir).resolve() == Path(cfg.train_data_dir).resolve():
        raise UserError("reg_data_dir is the dataset folder itself: choose a separate folder of regularization images.")
    reg = scan_dataset(cfg.reg_data_dir, cfg.caption_extension, events=events, stop=stop)
    scan = with_regularization(scan, reg)
    per_epoch = sum(i.repeats for i in scan.items if scan.subsets[i.subset].is_reg)
    events.info(f"regularization: {reg.num_images} images, {per_epoch} per epoch")
    return scan


def check_masks(cfg: TrainConfig, scan: DatasetScan) -> None:
    """With a mask folder, every training image needs its mask."""
    if cfg.masked_loss and cfg.conditioning_data_dir:
        if not Path(cfg.conditioning_data_dir).is_dir():
            raise UserError(f"The mask folder {cfg.conditioning_data_dir} does not exist.")
        missing = mask_source(cfg, scan).missing()
        if missing:
            names = ", ".join(p.name for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise UserError(f"{len(missing)} training images have no mask in {cfg.conditioning_data_dir}: {names}.")


def uses_blocks(cfg: TrainConfig) -> bool:
    """Block-wise dims or lrs are set (sd-scripts then builds the UNet per block)."""
    return any(
        getattr(cfg, key) is not None for key in ("block_dims", "down_lr_weight", "mid_lr_weight", "up_lr_weight")
    )


def _block_lr_weights(cfg: TrainConfig, family: str) -> list[float] | None:
    try:
        return blocks.block_lr_weights(
            family == "sdxl", cfg.down_lr_weight, cfg.mid_lr_weight, cfg.up_lr_weight, cfg.block_lr_zero_threshold
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


def block_module_dims(
    cfg: TrainConfig, family: str, targets: list, naming: dict[str, str]
) -> dict[str, tuple[int, float]]:
    """canonical key -> (rank, alpha) of every LoRA a block-wise network gets (sd-scripts' rules:
    text encoders at network_dim/alpha, UNet blocks from block_dims/alphas, 0 = none)."""
    sdxl = family == "sdxl"
    conv_alpha = cfg.conv_alpha if cfg.conv_alpha is not None else (1.0 if cfg.conv_dim is not None else None)
    try:
        dims, alphas, conv_dims, conv_alphas = blocks.block_dims_and_alphas(
            sdxl, cfg.block_dims, cfg.block_alphas, cfg.network_dim, cfg.network_alpha, cfg.conv_block_dims,
            cfg.conv_block_alphas, cfg.conv_dim, conv_alpha, _block_lr_weights(cfg, family),
        )  # fmt: skip
    except ValueError as exc:
        raise UserError(str(exc)) from None
    names = stem_map(family, [t.key for t in targets], naming)
    out: dict[str, tuple[int, float]] = {}
    for target in targets:
        if target.component != "unet":
            if not target.conv_rank:
                out[target.key] = (cfg.network_dim, cfg.network_alpha)
            continue
        found = blocks.module_dim(names[target.key], target.conv_rank, sdxl, dims, alphas, conv_dims, conv_alphas)
        if found is not None:
            out[target.key] = found
    return out


def unet_block_groups(cfg: TrainConfig, network: LoRANetwork) -> Callable[[str], tuple[str, float]] | None:
    """The block-wise lr split for ``network.param_groups`` (label ``unet_block<N>``, factor), or None."""
    weights = _block_lr_weights(cfg, network.family)
    if weights is None:
        return None
    names = stem_map(network.family, network.lora_keys(), network.naming)
    sdxl = network.family == "sdxl"

    def of(key: str) -> tuple[str, float]:
        index = blocks.block_index(names[key], sdxl)
        return f"unet_block{index}", weights[index]

    return of


def mask_source(cfg: TrainConfig, scan: DatasetScan) -> MaskSource | None:
    """The loss masks ``cfg`` asks for (masked_loss with a mask folder, or alpha_mask), else None."""
    if cfg.alpha_mask:
        return MaskSource(scan, alpha=True)
    if cfg.masked_loss and cfg.conditioning_data_dir:
        return MaskSource(scan, mask_dir=cfg.conditioning_data_dir)
    return None


def centre_offset(choice: Any) -> tuple[int, int]:
    """The crop window of a cached (centre-cropped) image."""
    return crop_offsets(choice.resized, choice.bucket, False)


def timestep_range(cfg: TrainConfig) -> tuple[int, int] | None:
    """(min, max) trained timesteps for ``modelspec.timestep_range`` when either is set (sd-scripts)."""
    if cfg.min_timestep is None and cfg.max_timestep is None:
        return None
    low = 0 if cfg.min_timestep is None else cfg.min_timestep
    return low, NUM_TRAIN_TIMESTEPS if cfg.max_timestep is None else cfg.max_timestep


def _typed(value: Any) -> str:
    """A setting as a user would type it in network_args: 2 not 2.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def network_args_metadata(cfg: TrainConfig) -> dict[str, Any]:
    """``ss_network_args`` as sd-scripts (and LyCORIS) record it: each ``network_args`` entry's value
    as typed (strings); the settings made elsewhere added as a user would type them — LoRA's
    conv/dropout args, for ``lycoris.kohya`` also algo, factor, dora_wd with wd_on_output=False (the
    input axis), LoRA+ and block-wise args —; and ``dropout`` (network_dropout, a number or null);
    empty when there are none."""
    out: dict[str, Any] = {}
    for arg in cfg.network_args:
        key, _, value = arg.partition("=")
        out[key.strip()] = value.strip()
    made: dict[str, str] = {}
    if cfg.lycoris:
        made["algo"] = cfg.algo if cfg.algo != "lora" else "locon"
    conv_dim = cfg.effective_conv_dim
    if conv_dim is not None:
        made["conv_dim"] = _typed(conv_dim)
        if cfg.lycoris or cfg.conv_alpha is not None:
            made["conv_alpha"] = _typed(cfg.effective_conv_alpha)
    for key in ("rank_dropout", "module_dropout"):
        if getattr(cfg, key) is not None:
            made[key] = _typed(getattr(cfg, key))
    if cfg.engine_algo == "lokr":
        made["factor"] = _typed(cfg.factor)
        for key in ("decompose_both", "full_matrix"):
            if getattr(cfg, key):
                made[key] = "True"
    if cfg.use_tucker:
        made["use_tucker"] = "True"
    if cfg.dora_wd:
        made["dora_wd"] = "True"
        made["wd_on_output"] = "False"
    for name in NETWORK_ARG_FIELDS:  # LoRA+ and block-wise settings
        if getattr(cfg, name) is not None:
            made[name] = _typed(getattr(cfg, name))
    for key, value in made.items():
        out.setdefault(key, value)
    if out and "dropout" not in out:
        out["dropout"] = cfg.network_dropout
    return out


def resolve_v_prediction(cfg: TrainConfig, bundle: ModelBundle) -> bool:
    """``v_parameterization`` when set, else what the model says (its ``v_pred`` key / the webui's config)."""
    return bundle.v_prediction if cfg.v_parameterization is None else bool(cfg.v_parameterization)


def resolve_zero_terminal_snr(cfg: TrainConfig, bundle: ModelBundle) -> bool:
    """``zero_terminal_snr`` when set, else what the checkpoint says (its ``ztsnr`` key)."""
    if cfg.zero_terminal_snr is not None:
        return bool(cfg.zero_terminal_snr)
    return bool(getattr(bundle, "zero_terminal_snr", False))


def loss_settings(cfg: TrainConfig, bundle: ModelBundle) -> LossSettings:
    """The step's loss settings from ``cfg`` (the model's prediction type and schedule resolved)."""
    schedule = None
    if resolve_zero_terminal_snr(cfg, bundle):
        schedule = zero_terminal_snr_alphas_cumprod(bundle.alphas_cumprod).float().to(bundle.alphas_cumprod.device)
    return LossSettings(
        v_prediction=resolve_v_prediction(cfg, bundle), latent_scaling=bundle.latent_scaling,
        noise_offset=cfg.noise_offset, noise_offset_random_strength=cfg.noise_offset_random_strength,
        min_snr_gamma=cfg.min_snr_gamma, min_timestep=cfg.min_timestep, max_timestep=cfg.max_timestep,
        loss_type=cfg.loss_type, adaptive_noise_scale=cfg.adaptive_noise_scale,
        multires_noise_iterations=cfg.multires_noise_iterations, multires_noise_discount=cfg.multires_noise_discount,
        ip_noise_gamma=cfg.ip_noise_gamma, ip_noise_gamma_random_strength=cfg.ip_noise_gamma_random_strength,
        huber_schedule=cfg.huber_schedule, huber_c=cfg.huber_c, huber_scale=cfg.huber_scale,
        scale_v_pred_loss_like_noise_pred=cfg.scale_v_pred_loss_like_noise_pred,
        debiased_estimation_loss=cfg.debiased_estimation_loss, alphas_cumprod=schedule,
    )  # fmt: skip


def vae_metadata(bundle: ModelBundle) -> dict[str, Any]:
    """``ss_vae_name`` / ``ss_vae_hash`` / ``ss_new_vae_hash`` when the host uses a separate VAE file
    (``bundle.vae_path``), as sd-scripts writes them only with ``--vae``; empty otherwise."""
    vae_path = getattr(bundle, "vae_path", None)
    if not vae_path:
        return {}
    out: dict[str, Any] = {"ss_vae_name": os.path.basename(vae_path)}
    if os.path.isfile(vae_path):
        out["ss_vae_hash"] = md.legacy_model_hash(vae_path)
        out["ss_new_vae_hash"] = md.sha256_of_file(vae_path)
    return out
