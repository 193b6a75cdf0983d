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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from lib_lora.common.errors import UserError
from lib_lora.common.layout import IMAGE_EXTENSIONS, MAX_STEPS, caption_extension_problem

GROUPS = ("model", "dataset", "network", "optimizer", "training", "saving", "samples")
MIN_SIDE, MAX_SIDE = 64, 4096  # training resolution and bucket sides, in pixels
MAX_EPOCHS = 10_000


class ConfigError(UserError):
    """Settings that are unknown or break a rule. The message names each key (or, for the tab, each
    label) and its rule, one problem per line; ``problems`` holds the same lines as a list."""

    def __init__(self, message: str, hint: str | None = None, problems: list[str] | None = None) -> None:
        super().__init__(message, hint)
        self.problems = list(problems) if problems else [message]


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
        label="Model family",
    )
    v_parameterization: bool | None = setting(
        None,
        "The model predicts v (v-prediction models such as NoobAI-XL v-pred). Empty = detect.",
        group="model",
        advanced=True,
        label="V-prediction model",
    )
    clip_skip: int | None = setting(
        None,
        "Use the output of the N-th last text-encoder layer (2 for NovelAI-based anime models, 1 otherwise). SD1 only.",
        group="model",
        minimum=1,
        maximum=12,
        label="CLIP skip",
    )
    max_token_length: int | None = setting(
        None,
        "Caption length in tokens: 75 (default), 150 or 225.",
        group="model",
        choices=(None, 75, 150, 225),
        advanced=True,
        label="Caption length (tokens)",
    )

    # -- dataset -----------------------------------------------------------------------------------
    train_data_dir: str = setting(
        "",
        "The dataset folder that holds the N_name subfolders (N = repeats per epoch).",
        group="dataset",
        label="Dataset folder",
    )
    caption_extension: str = setting(
        ".txt",
        "Extension of the caption files beside the images.",
        group="dataset",
        advanced=True,
        label="Caption file extension",
    )
    resolution: str = setting(
        "512", "Training resolution: 512, or width,height such as 768,512.", group="dataset", label="Resolution"
    )
    enable_bucket: bool = setting(
        False,
        "Aspect-ratio buckets: train each image near its own shape instead of a square crop.",
        group="dataset",
        label="Buckets",
    )
    min_bucket_reso: int = setting(
        256, "Smallest bucket side.", group="dataset", minimum=64, maximum=4096, label="Smallest bucket side (px)"
    )
    max_bucket_reso: int = setting(
        1024, "Largest bucket side.", group="dataset", minimum=64, maximum=4096, label="Largest bucket side (px)"
    )
    bucket_reso_steps: int = setting(
        64,
        "Bucket sides are multiples of this (64 for SD1, 32 or 64 for SDXL).",
        group="dataset",
        minimum=8,
        advanced=True,
        label="Bucket side step (px)",
    )
    bucket_no_upscale: bool = setting(
        False,
        "Never upscale small images; buckets are made to fit them.",
        group="dataset",
        advanced=True,
        label="Never upscale into buckets",
    )
    shuffle_caption: bool = setting(
        False, "Shuffle the comma-separated tags of each caption every step.", group="dataset", label="Shuffle tags"
    )
    keep_tokens: int = setting(
        0,
        "Keep the first N tags in place when shuffling (1 keeps the activation tag first).",
        group="dataset",
        minimum=0,
        label="Tags kept in front",
    )
    keep_tokens_separator: str = setting(
        "",
        "Text before this separator (e.g. |||) stays fixed when shuffling.",
        group="dataset",
        advanced=True,
        label="Keep-in-front separator",
    )
    caption_tag_dropout_rate: float = setting(
        0.0,
        "Drop each tag with this probability (after the kept ones).",
        group="dataset",
        minimum=0,
        maximum=1,
        advanced=True,
        label="Tag dropout",
    )
    caption_dropout_rate: float = setting(
        0.0,
        "Train on an empty caption with this probability.",
        group="dataset",
        minimum=0,
        maximum=1,
        advanced=True,
        label="Caption dropout",
    )
    caption_dropout_every_n_epochs: int = setting(
        0,
        "Train every N-th epoch on empty captions (0 = never).",
        group="dataset",
        minimum=0,
        advanced=True,
        label="Empty captions every N epochs",
    )
    caption_prefix: str | None = setting(
        None, "Text added before every caption.", group="dataset", advanced=True, label="Caption prefix"
    )
    caption_suffix: str | None = setting(
        None, "Text added after every caption.", group="dataset", advanced=True, label="Caption suffix"
    )
    flip_aug: bool = setting(
        False, "Randomly mirror images (not for asymmetric characters).", group="dataset", label="Mirror images"
    )
    random_crop: bool = setting(
        False,
        "Crop at a random place instead of the centre (needs cache_latents off).",
        group="dataset",
        advanced=True,
        label="Random crop",
    )
    cache_latents: bool = setting(
        True,
        "Encode every image once before training (faster, less VRAM).",
        group="dataset",
        advanced=True,
        label="Cache encoded images",
    )
    cache_latents_to_disk: bool = setting(
        False,
        "Keep the encoded images in .npz files beside them, reused by later runs.",
        group="dataset",
        advanced=True,
        label="Cache encoded images on disk",
    )
    cache_text_encoder_outputs: bool = setting(
        False,
        "Encode every caption once before training, then move the text encoders off the GPU for the run "
        "(less VRAM). Only when the text encoders are not trained and captions do not change from step to "
        "step (no caption shuffle or tag/caption dropout).",
        group="dataset",
        label="Cache text encoder outputs",
    )
    alpha_mask: bool = setting(
        False, "Masked loss from each image's transparency: transparent parts are not learned.",
        group="dataset", advanced=True, label="Mask from transparency",
    )  # fmt: skip
    conditioning_data_dir: str | None = setting(
        None, "Mask folder for masked_loss: a black-and-white image named like each training image (white = learned, black = ignored), in a subfolder named like its dataset folder or directly inside.",
        group="dataset", advanced=True, label="Mask folder",
    )  # fmt: skip
    reg_data_dir: str | None = setting(
        None, "Regularization images: a folder of N_class subfolders (like the dataset) trained beside it, as many per epoch as training images x repeats.",
        group="dataset", label="Regularization folder",
    )  # fmt: skip

    # -- network -----------------------------------------------------------------------------------
    network_module: str = setting(
        "networks.lora",
        "networks.lora (sd-scripts' LoRA) or lycoris.kohya (LyCORIS: network_args algo=locon/loha/lokr, dora_wd=True); "
        "set for you from the Network type.",
        group="network",
        choices=("networks.lora", "lycoris.kohya"),
        advanced=True,
        label="Network module",
    )
    network_dim: int = setting(
        4,
        "LoRA rank: bigger learns more detail, makes bigger files and overfits sooner (LoKr: a huge dim such as "
        "10000 keeps both Kronecker factors full).",
        group="network",
        minimum=1,
        maximum=100000,
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
        None,
        "Dropout on the LoRA's inner activations.",
        group="network",
        minimum=0,
        maximum=1,
        advanced=True,
        label="Network dropout",
    )
    network_args: tuple[str, ...] = setting(
        (),
        "sd-scripts network args such as conv_dim=4 conv_alpha=1 rank_dropout=0.1 module_dropout=0.1.",
        group="network",
        advanced=True,
        in_metadata=False,
        label="Network arguments",
    )
    conv_dim: int | None = setting(
        None,
        "Also train the 3x3 convolutions at this rank (LoCon-style; more style/detail). LoCon/LoKr/LoHa without "
        "it: network_dim, as LyCORIS.",
        group="network",
        minimum=1,
        maximum=100000,
        advanced=True,
        kohya=False,
        in_metadata=False,
        label="Convolution dim (rank)",
    )
    conv_alpha: float | None = setting(
        None,
        "Alpha of the 3x3 convolution LoRAs (default 1, as sd-scripts: with conv_dim 8 the conv LoRAs train at 1/8 scale).",
        group="network",
        minimum=0,
        advanced=True,
        kohya=False,
        in_metadata=False,
        label="Convolution alpha",
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
        label="Rank dropout",
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
        label="Module dropout",
    )
    network_weights: str | None = setting(
        None,
        "Start from an existing LoRA file (ours or sd-scripts').",
        group="network",
        advanced=True,
        label="Start from LoRA file",
    )
    network_train_unet_only: bool = setting(
        False, "Train only the UNet (recommended for SDXL on small GPUs).", group="network", label="Train the UNet only"
    )
    network_train_text_encoder_only: bool = setting(
        False, "Train only the text encoder(s).", group="network", advanced=True, label="Train the text encoder only"
    )
    algo: str = setting(
        "lora",
        "LoRA: the standard, loads everywhere. LoCon: LoRA plus the 3x3 convolutions, more style and texture. "
        "LoKr: Kronecker factors, very small files, often the best likeness (LyCORIS: dim 10000 + factor 8 = full "
        "matrix). LoHa: two low-rank pairs multiplied element-wise, more capacity per dim, slower.",
        group="network",
        label="Network type",
        choices=("lora", "locon", "lokr", "loha"),
        kohya=False,
        in_metadata=False,
    )
    dora_wd: bool = setting(
        False,
        "DoRA: also train each layer's magnitude (weight-decomposed LoRA); often closer likeness, ~2x slower steps. "
        "Written with the per-input-column magnitude the webui and Forge apply correctly.",
        group="network",
        label="DoRA",
        kohya=False,
        in_metadata=False,
    )
    factor: int = setting(
        -1,
        "LoKr: split each layer's size by this factor (-1 = as square as possible); 4, 8 or 16 are common, "
        "bigger = smaller file. Must divide every layer's size.",
        group="network",
        minimum=-1,
        advanced=True,
        kohya=False,
        in_metadata=False,
        label="LoKr factor",
    )
    decompose_both: bool = setting(
        False, "LoKr: also make the small Kronecker factor low-rank.", group="network", advanced=True, kohya=False,
        in_metadata=False, label="LoKr: decompose both factors",
    )  # fmt: skip
    full_matrix: bool = setting(
        False, "LoKr: always keep the large Kronecker factor a full matrix.", group="network", advanced=True,
        kohya=False, in_metadata=False, label="LoKr: full matrix",
    )  # fmt: skip
    use_tucker: bool = setting(
        False, "Tucker (CP) decomposition for 3x3 convolutions (LoCon lora_mid, LoHa, LoKr): smaller conv weights.",
        group="network", advanced=True, kohya=False, in_metadata=False, label="Tucker decomposition for convolutions",
    )  # fmt: skip
    loraplus_lr_ratio: float | None = setting(
        None,
        "LoRA+: the up weights learn this many times faster than the down weights (16 is common).",
        group="network", minimum=0, exclusive_minimum=True, advanced=True, kohya=False, in_metadata=False, label="LoRA+ ratio",
    )  # fmt: skip
    loraplus_unet_lr_ratio: float | None = setting(
        None, "LoRA+ ratio for the UNet only (wins over loraplus_lr_ratio).",
        group="network", minimum=0, exclusive_minimum=True, advanced=True, kohya=False, in_metadata=False, label="LoRA+ ratio (UNet)",
    )  # fmt: skip
    loraplus_text_encoder_lr_ratio: float | None = setting(
        None, "LoRA+ ratio for the text encoder(s) only (wins over loraplus_lr_ratio).",
        group="network", minimum=0, exclusive_minimum=True, advanced=True, kohya=False, in_metadata=False, label="LoRA+ ratio (text encoder)",
    )  # fmt: skip
    down_lr_weight: str | None = setting(
        None,
        "Learning-rate factor per UNet down block, shallow to deep: 12 numbers for SD1, 9 for SDXL (missing ones = 1), or cosine / sine / linear / reverse_linear / zeros [+base].",
        group="network", advanced=True, kohya=False, in_metadata=False, label="Learning-rate factors of the down blocks",
    )  # fmt: skip
    mid_lr_weight: str | None = setting(
        None, "Learning-rate factor of the UNet middle block (1 number for SD1, 3 for SDXL).",
        group="network", advanced=True, kohya=False, in_metadata=False, label="Learning-rate factor of the middle block",
    )  # fmt: skip
    up_lr_weight: str | None = setting(
        None, "Learning-rate factor per UNet up block, deep to shallow (as down_lr_weight).",
        group="network", advanced=True, kohya=False, in_metadata=False, label="Learning-rate factors of the up blocks",
    )  # fmt: skip
    block_lr_zero_threshold: float | None = setting(
        None, "Block factors at or below this become 0: those blocks get no LoRA at all.",
        group="network", minimum=0, advanced=True, kohya=False, in_metadata=False, label="Block factor zero threshold",
    )  # fmt: skip
    block_dims: str | None = setting(
        None, "Rank per UNet block, comma-separated: 25 numbers for SD1, 23 for SDXL (0 = no LoRA there).",
        group="network", advanced=True, kohya=False, in_metadata=False, label="Rank per block",
    )  # fmt: skip
    block_alphas: str | None = setting(
        None, "Alpha per UNet block (as many numbers as block_dims; default network_alpha).",
        group="network", advanced=True, kohya=False, in_metadata=False, label="Alpha per block",
    )  # fmt: skip
    conv_block_dims: str | None = setting(
        None, "Rank of the 3x3 convolution LoRAs per UNet block (as block_dims).",
        group="network", advanced=True, kohya=False, in_metadata=False, label="Convolution rank per block",
    )  # fmt: skip
    conv_block_alphas: str | None = setting(
        None, "Alpha of the 3x3 convolution LoRAs per UNet block (default conv_alpha).",
        group="network", advanced=True, kohya=False, in_metadata=False, label="Convolution alpha per block",
    )  # fmt: skip

    # -- optimizer -------------------------------------------------------------------------------
    optimizer_type: str = setting(
        "AdamW",
        "AdamW, AdamW8bit, Lion, SGDNesterov, Prodigy, DAdaptAdam, Adafactor, AdamWScheduleFree, RAdamScheduleFree or CAME (the last three need pip install schedulefree / came-pytorch).",
        group="optimizer",
        label="Optimizer",
    )
    optimizer_args: tuple[str, ...] = setting(
        (),
        "Extra optimizer arguments such as weight_decay=0.01 betas=0.9,0.999.",
        group="optimizer",
        advanced=True,
        in_metadata=False,
        label="Optimizer arguments",
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
        choices=("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial", "adafactor"), label="Learning rate schedule")  # fmt: skip
    lr_warmup_steps: float = setting(
        0,
        "Warm-up steps (or a fraction of all steps, when below 1).",
        group="optimizer",
        minimum=0,
        advanced=True,
        label="Warm-up steps",
    )
    lr_scheduler_num_cycles: int = setting(
        1,
        "Restarts of cosine_with_restarts (the guide uses about a tenth of the epochs).",
        group="optimizer",
        minimum=1,
        label="Schedule restarts",
    )
    lr_scheduler_power: float = setting(
        1.0, "Power of the polynomial schedule.", group="optimizer", minimum=0, advanced=True, label="Schedule power"
    )
    max_grad_norm: float = setting(
        1.0,
        "Clip gradients to this norm (0 = off).",
        group="optimizer",
        minimum=0,
        advanced=True,
        label="Gradient clipping",
    )

    # -- training ----------------------------------------------------------------------------------
    train_batch_size: int = setting(
        1, "Images per step. Higher needs more VRAM.", group="training", minimum=1, maximum=64, label="Batch size"
    )
    max_train_epochs: int | None = setting(
        None,
        "Number of epochs (wins over max_train_steps).",
        group="training",
        minimum=1,
        maximum=MAX_EPOCHS,
        label="Epochs",
    )
    max_train_steps: int = setting(
        1600,
        "Number of optimizer steps when max_train_epochs is empty.",
        group="training",
        minimum=1,
        maximum=MAX_STEPS,
        label="Steps (when epochs is empty)",
    )
    gradient_accumulation_steps: int = setting(
        1,
        "Add up gradients of N batches per optimizer step.",
        group="training",
        minimum=1,
        maximum=1024,
        advanced=True,
        label="Gradient accumulation",
    )
    gradient_checkpointing: bool = setting(
        False,
        "Recompute activations in the backward pass: much less VRAM, ~20% slower.",
        group="training",
        label="Gradient checkpointing",
    )
    mixed_precision: str = setting(
        "auto",
        "no, fp16 or bf16; auto = fp16 on a GPU (bf16 where supported), no on the CPU.",
        group="training",
        choices=("auto", "no", "fp16", "bf16"),
        label="Precision",
    )
    seed: int | None = setting(
        None,
        "Random seed; the same seed gives the same run. Empty = a random seed (recorded in the file).",
        group="training",
        minimum=0,
        label="Seed",
    )
    noise_offset: float | None = setting(
        None,
        "Noise offset (0.05-0.1 helps very dark/bright images).",
        group="training",
        minimum=0,
        maximum=1,
        advanced=True,
        label="Noise offset",
    )
    noise_offset_random_strength: bool = setting(
        False,
        "Use a random noise offset between 0 and noise_offset.",
        group="training",
        advanced=True,
        label="Random noise offset strength",
    )
    min_snr_gamma: float | None = setting(
        None,
        "Min-SNR loss weighting gamma (5 is common).",
        group="training",
        minimum=0,
        exclusive_minimum=True,
        advanced=True,
        label="Min-SNR gamma",
    )
    min_timestep: int | None = setting(
        None,
        "Lowest timestep trained (0-999).",
        group="training",
        minimum=0,
        maximum=999,
        advanced=True,
        label="Lowest timestep",
    )
    max_timestep: int | None = setting(
        None,
        "Highest timestep trained plus one (1-1000).",
        group="training",
        minimum=1,
        maximum=1000,
        advanced=True,
        label="Highest timestep",
    )
    loss_type: str = setting(
        "l2", "Loss: l2 (mean squared error), l1, huber or smooth_l1 (the last two less hurt by outliers).",
        group="training", choices=("l2", "l1", "huber", "smooth_l1"), advanced=True, label="Loss",
    )  # fmt: skip
    sdpa: bool = setting(
        True,
        "Memory-efficient attention (PyTorch's scaled dot product attention) while training, whatever the "
        "webui's cross-attention setting: the same result with far less VRAM. Off = the plain attention.",
        group="training",
        advanced=True,
        label="SDPA attention",
    )
    fp8_base: bool = setting(
        False,
        "Keep the frozen UNet weights in 8-bit float (float8_e4m3fn) during training: about half the VRAM "
        "of the model, a little slower; the LoRA itself stays in full precision. Needs a GPU with float8 "
        "support (PyTorch 2.1+). In the webui, its own FP8 weight option is used as it is.",
        group="training",
        label="FP8 base weights",
    )
    auto_memory: bool = setting(
        True,
        "Before training on a GPU, read its free memory and turn on the cheapest savers the run needs to fit "
        "(memory-efficient attention, cached text encoder outputs, gradient checkpointing, FP8 base weights); "
        "the log says which and why. Off = exactly the settings above.",
        group="training",
        kohya=False,
        in_metadata=False,
        label="Auto memory",
    )
    zero_terminal_snr: bool | None = setting(
        None, "Rescale the noise schedule so the last step is pure noise (for v-prediction models such as NoobAI-XL v-pred). Empty = as the checkpoint says.",
        group="training", choices=(None, True, False), advanced=True, label="Zero terminal SNR",
    )  # fmt: skip
    scale_v_pred_loss_like_noise_pred: bool = setting(
        False, "v-prediction only: weight the loss by SNR/(SNR+1) so it behaves like noise prediction.",
        group="training", advanced=True, label="Scale v-prediction loss like noise prediction",
    )  # fmt: skip
    multires_noise_iterations: int | None = setting(
        None, "Multi-resolution (pyramid) noise: add coarser noise this many times (6-10 is common).",
        group="training", minimum=1, advanced=True, label="Multi-resolution noise iterations",
    )  # fmt: skip
    multires_noise_discount: float = setting(
        0.3, "Weight of each coarser noise level in multi-resolution noise.",
        group="training", minimum=0, exclusive_minimum=True, maximum=1, advanced=True, label="Multi-resolution noise discount",
    )  # fmt: skip
    adaptive_noise_scale: float | None = setting(
        None, "Add this times each latent channel's mean to the noise offset (needs noise_offset).",
        group="training", advanced=True, label="Adaptive noise scale",
    )  # fmt: skip
    ip_noise_gamma: float | None = setting(
        None, "Input perturbation: extra noise on the model's input only (0.1 is common).",
        group="training", minimum=0, advanced=True, label="Input perturbation noise",
    )  # fmt: skip
    ip_noise_gamma_random_strength: bool = setting(
        False,
        "Use a random input perturbation between 0 and ip_noise_gamma.",
        group="training",
        advanced=True,
        label="Random input perturbation strength",
    )
    debiased_estimation_loss: bool = setting(
        False, "Debiased estimation: weight the loss by 1/sqrt(SNR) (1/(SNR+1) for v-prediction).",
        group="training", advanced=True, label="Debiased estimation loss",
    )  # fmt: skip
    huber_schedule: str = setting(
        "snr", "How huber_c changes over the timesteps for huber / smooth_l1 loss.",
        group="training", choices=("constant", "exponential", "snr"), advanced=True, label="Huber schedule",
    )  # fmt: skip
    huber_c: float = setting(
        0.1, "Huber loss threshold (for huber / smooth_l1 loss).",
        group="training", minimum=0, exclusive_minimum=True, maximum=1, advanced=True, label="Huber threshold",
    )  # fmt: skip
    huber_scale: float = setting(
        1.0, "Scale of huber_c for the constant and exponential schedules.",
        group="training", minimum=0, exclusive_minimum=True, advanced=True, label="Huber scale",
    )  # fmt: skip
    masked_loss: bool = setting(
        False,
        "Learn only the white parts of each image's mask (from the mask folder).",
        group="training",
        advanced=True,
        label="Masked loss",
    )
    prior_loss_weight: float = setting(
        1.0,
        "Loss weight of the regularization images.",
        group="training",
        minimum=0,
        advanced=True,
        label="Regularization loss weight",
    )
    validation_split: float = setting(
        0.0,
        "Share of each dataset folder's images held out of training to measure a validation loss (0.1 = 10%; 0 = none). The figure uses fixed noise and timesteps, so epochs compare.",
        group="training",
        minimum=0,
        maximum=1,
        advanced=True,
        label="Validation share",
    )
    validation_seed: int | None = setting(
        None,
        "Seed of the held-out split and of the validation noise (empty = the training seed).",
        group="training",
        advanced=True,
        label="Validation seed",
    )
    validate_every_n_epochs: int | None = setting(
        None,
        "Measure the validation loss every N epochs (empty = every epoch).",
        group="training",
        minimum=1,
        advanced=True,
        label="Validate every N epochs",
    )
    validate_every_n_steps: int | None = setting(
        None,
        "Also measure the validation loss every N steps.",
        group="training",
        minimum=1,
        advanced=True,
        label="Validate every N steps",
    )
    max_validation_steps: int | None = setting(
        None,
        "Use at most N held-out batches per validation (empty = all).",
        group="training",
        minimum=1,
        advanced=True,
        label="Most validation batches",
    )

    # -- saving ------------------------------------------------------------------------------------
    output_dir: str = setting(
        "output", "Where LoRA files are written (in the webui: its Lora folder).", group="saving", label="Output folder"
    )
    output_name: str = setting(
        "lora", "File name of the LoRA; epochs are saved as NAME-000005.safetensors.", group="saving", label="LoRA name"
    )
    save_precision: str = setting(
        "fp16",
        "Precision of the saved file.",
        group="saving",
        choices=("fp16", "bf16", "float"),
        advanced=True,
        label="Saved file precision",
    )
    save_every_n_epochs: int | None = setting(
        None, "Save an epoch file every N epochs.", group="saving", minimum=1, label="Save every N epochs"
    )
    save_every_n_steps: int | None = setting(
        None, "Save a step file every N steps.", group="saving", minimum=1, advanced=True, label="Save every N steps"
    )
    save_last_n_epochs: int | None = setting(
        None,
        "Keep only the last N epoch files.",
        group="saving",
        minimum=1,
        advanced=True,
        label="Keep the last N epoch files",
    )
    training_comment: str | None = setting(
        None, "A comment stored in the file's metadata.", group="saving", advanced=True, label="Comment"
    )
    activation_text: str | None = setting(
        None,
        "The trigger words shown with the LoRA in the webui (default: the dataset's activation tag).",
        group="saving",
        kohya=False,
        in_metadata=False,
        label="Activation text",
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
        label="Suggested weight",
    )
    score_epochs: bool = setting(
        False,
        "When training ends, score every saved epoch file as the Test tab's 'Score epochs' does (rendered at "
        "fixed seeds, read by the WD tagger) and name the best one; the pick and the scores go into the final "
        "file's metadata. It renders 27 images per epoch file; Stop ends it and keeps every file. A run you stop is "
        "not scored.",
        group="saving",
        kohya=False,
        in_metadata=False,
        label="Score the epochs when training ends",
    )
    score_tagger: str | None = setting(
        None,
        "The WD tagger that reads the scoring images: a model name or a folder holding model.onnx (empty = the "
        "tagger chosen in the settings; it must be downloaded already when offline).",
        group="saving",
        advanced=True,
        kohya=False,
        in_metadata=False,
        label="Scoring tagger",
    )

    # -- samples -----------------------------------------------------------------------------------
    sample_every_n_epochs: int | None = setting(
        None, "Render sample images every N epochs.", group="samples", minimum=1, label="Samples every N epochs"
    )
    sample_prompts: str | None = setting(
        None,
        "Sample prompts: a file with one prompt per line, or the prompts themselves (one per line); options --n --w --h --d --s --l as sd-scripts.",
        group="samples",
        label="Sample prompts",
    )
    sample_sampler: str = setting(
        "ddim",
        "Sampler for sample images.",
        group="samples",
        choices=("ddim", "euler", "euler_a"),
        advanced=True,
        label="Sample sampler",
    )

    # -- derived values ----------------------------------------------------------------------------
    @property
    def resolution_wh(self) -> tuple[int, int]:
        return parse_resolution(self.resolution)

    @property
    def lycoris(self) -> bool:
        """A LyCORIS network (LoCon/LoKr/LoHa, DoRA or Tucker): written as ``lycoris.kohya``."""
        return self.algo != "lora" or self.dora_wd or self.use_tucker or self.network_module == "lycoris.kohya"

    @property
    def engine_algo(self) -> str:
        """The engine's module type: lora (LoRA and LoCon), loha or lokr."""
        return "lora" if self.algo in ("lora", "locon") else self.algo

    @property
    def effective_conv_dim(self) -> int | None:
        """conv_dim as given; LoCon/LoKr/LoHa (and anything under lycoris.kohya) without one train the 3x3
        convs at network_dim, as LyCORIS does."""
        if self.conv_dim is not None:
            return self.conv_dim
        return self.network_dim if self._lycoris_convs else None

    @property
    def _lycoris_convs(self) -> bool:
        return self.algo != "lora" or self.network_module == "lycoris.kohya"

    @property
    def effective_conv_alpha(self) -> float:
        """conv_alpha as given; else 1 (sd-scripts' LoRA) or network_alpha (LyCORIS types)."""
        if self.conv_alpha is not None:
            return self.conv_alpha
        return self.network_alpha if self._lycoris_convs else 1.0

    @property
    def effective_network_module(self) -> str:
        return "lycoris.kohya" if self.lycoris else self.network_module

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
                 "dropout": "network_dropout", "algo": "algo", "dora_wd": "dora_wd", "factor": "factor",
                 "decompose_both": "decompose_both", "full_matrix": "full_matrix", "use_tucker": "use_tucker",
                 "use_cp": "use_tucker", "use_conv_cp": "use_tucker"}  # fmt: skip
# LyCORIS network args we accept only at the value that changes nothing (kohya_ss writes them all);
# any other value is refused with the reason
_NEUTRAL_NETWORK_ARGS: dict[str, tuple[str, str]] = {
    "wd_on_output": ("false", "DoRA must normalise per input column (wd_on_output=False): the webui 1.10.1 applies an output-axis dora_scale without an error but with wrong weights"),
    "preset": ("full", "only LyCORIS' default preset (full) is supported: the modules trained follow sd-scripts' rules (conv layers with conv_dim)"),
    "bypass_mode": ("false", "bypass_mode is not supported"),
    "use_scalar": ("false", "use_scalar is not supported"),
    "train_norm": ("false", "train_norm is not supported (norm layers are never trained)"),
    "rs_lora": ("false", "rs_lora is not supported (the scale is alpha / dim)"),
    "rescaled": ("false", "rescaled is not supported"),
    "rank_dropout_scale": ("false", "rank_dropout_scale is not supported"),
    "unbalanced_factorization": ("false", "unbalanced_factorization is not supported"),
    "constraint": ("0", "constraint is not supported"),
    "disable_conv_cp": ("true", "use use_tucker=True for Tucker convolutions"),
}  # fmt: skip
_LYCORIS_ALGOS = {"lora": "locon", "locon": "locon", "lokr": "lokr", "loha": "loha"}
# network_args of sd-scripts' networks.lora that are fields of the same name (LoRA+, block-wise lr and dims)
NETWORK_ARG_FIELDS = (
    "loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio", "down_lr_weight", "mid_lr_weight",
    "up_lr_weight", "block_lr_zero_threshold", "block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas",
)  # fmt: skip
_NETWORK_ARGS.update({name: name for name in NETWORK_ARG_FIELDS})
#: sd-scripts network_args key -> the field it sets
NETWORK_ARGS: Mapping[str, str] = _NETWORK_ARGS
# keys of kohya configs that only steer sd-scripts itself; accepted and ignored
IGNORED_KOHYA_KEYS = frozenset({
    "save_model_as", "logging_dir", "log_with", "log_prefix", "xformers", "mem_eff_attn", "persistent_data_loader_workers",
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


def key_name(name: str) -> str:
    """How problems name a setting for the CLI, TOML files and the HTTP API: its key."""
    return name


def label_name(name: str) -> str:
    """How problems name a setting in the tab: its label (the words on screen)."""
    return plain_label(name)


def plain_label(name: str) -> str:
    """The label the forms show: the field's ``label``, else its name in plain words."""
    field_ = FIELDS.get(name)
    label = field_.metadata.get("label") if field_ is not None else None
    if label:
        return str(label)
    words = name.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


_KIND_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text", "tuple": "a list"}


def coerce(name: str, value: Any, names: Callable[[str], str] = key_name) -> Any:
    """Turn a TOML / CLI / UI value into the field's type; ConfigError naming the setting otherwise
    (by its key, or as ``names`` says)."""
    kind = _field_type(name)
    nullable = "None" in kind
    if value is None or (nullable and isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        if nullable:
            return None
        if kind.startswith("str"):
            return ""
        raise ConfigError(f"{names(name)} needs a value.")
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
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("resolution", names(name), 1)) from None
    except (TypeError, ValueError):
        expected = kind.replace(" | None", "").split("[")[0]
        raise ConfigError(
            f"{names(name)} = {value!r} is not valid: it must be {_KIND_WORDS.get(expected, expected)}."
        ) from None


def unknown_key_error(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(FIELDS), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ConfigError(f"Unknown setting {key!r}.{hint}")


def _network_args_to_fields(args: tuple[str, ...], lycoris: bool = False) -> dict[str, Any]:
    """sd-scripts / LyCORIS ``network_args`` (``key=value``) -> settings; unknown keys and values we
    cannot honour are refused in one sentence. ``lycoris`` (network_module = lycoris.kohya): algo=lora
    is LyCORIS' LoCon (convs at network_dim unless conv_dim says otherwise)."""
    out: dict[str, Any] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        key, value = key.strip(), value.strip()
        if sep and key in _NEUTRAL_NETWORK_ARGS:
            neutral, reason = _NEUTRAL_NETWORK_ARGS[key]
            if value.lower() not in (neutral, "none", "") and not (neutral == "0" and _is_zero(value)):
                raise ConfigError(f"network_args {arg!r} is refused: {reason}.")
            continue
        if not sep or key not in _NETWORK_ARGS:
            known = ", ".join(sorted({*_NETWORK_ARGS, *_NEUTRAL_NETWORK_ARGS}))
            raise ConfigError(f"network_args entry {arg!r} is not supported; use key=value with one of: {known}.")
        if key == "algo":
            algo = value.lower()
            if algo not in _LYCORIS_ALGOS:
                raise ConfigError(
                    f"network_args algo={value!r} is not supported: choose lora, locon, lokr or loha "
                    "(the types the webui and Forge load)."
                )
            out["algo"] = _LYCORIS_ALGOS[algo] if lycoris else algo
            continue
        out[_NETWORK_ARGS[key]] = coerce(_NETWORK_ARGS[key], value)
    if lycoris and "algo" not in out:
        out["algo"] = "locon"  # LyCORIS' default algo
    return out


def _is_zero(value: str) -> bool:
    try:
        return float(value) == 0
    except ValueError:
        return False


def normalize_key(key: str) -> str:
    return key.strip().replace("-", "_")


def merge_values(base: TrainConfig, values: Mapping[str, Any]) -> TrainConfig:
    """``base`` with ``values`` applied (kohya names; unknown keys refused with the closest names)."""
    cfg, problems = _merge(base, values, key_name)
    if problems:
        raise ConfigError("\n".join(problems), problems=problems)
    return cfg


def _merge(base: TrainConfig, values: Mapping[str, Any], names: Callable[[str], str]) -> tuple[TrainConfig, list[str]]:
    """``base`` with every value that can be read applied, and one problem per value that cannot."""
    changes: dict[str, Any] = {}
    problems: list[str] = []
    for raw_key, value in values.items():
        key = normalize_key(raw_key)
        if key in IGNORED_KOHYA_KEYS:
            continue
        if key not in FIELDS:
            problems.append(str(unknown_key_error(raw_key)))
            continue
        try:
            changes[key] = coerce(key, value, names)
        except ConfigError as exc:
            problems.append(str(exc))
    if "network_args" in changes:
        module = changes.get("network_module", base.network_module)
        try:
            for key, value in _network_args_to_fields(changes["network_args"], module == "lycoris.kohya").items():
                changes.setdefault(key, value)
        except ConfigError as exc:
            problems.append(str(exc))
    return dataclasses.replace(base, **changes), problems


def rule_problems(cfg: TrainConfig, names: Callable[[str], str] = key_name) -> list[str]:
    """Every broken rule of ``cfg`` (bounds, choices, then the rules between fields), one sentence
    each, naming each setting as ``names`` says (keys for the CLI, labels for the tab)."""
    problems: list[str] = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        meta = f.metadata
        if value is None or isinstance(value, (tuple, bool)):
            continue
        if meta.get("choices") and value not in meta["choices"]:
            options = ", ".join(str(c) for c in meta["choices"] if c is not None)
            problems.append(f"{names(f.name)} = {value!r} is not valid: choose one of {options}.")
            continue
        if isinstance(value, (int, float)):
            low, high = meta.get("minimum"), meta.get("maximum")
            if low is not None and (value < low or (meta.get("exclusive_minimum") and value == low)):
                rule = f"greater than {low:g}" if meta.get("exclusive_minimum") else f"at least {low:g}"
                problems.append(f"{names(f.name)} = {value!r} is not valid: it must be {rule}.")
            elif high is not None and value > high:
                problems.append(f"{names(f.name)} = {value!r} is not valid: it must be at most {high:g}.")
    try:
        width, height = cfg.resolution_wh
    except ConfigError as exc:
        problems.append(str(exc).replace("resolution", names("resolution"), 1))
    else:
        if not all(MIN_SIDE <= side <= MAX_SIDE and side % 8 == 0 for side in (width, height)):
            problems.append(
                f"{names('resolution')} = {cfg.resolution!r} is not valid: each side must be a multiple of 8 "
                f"from {MIN_SIDE} to {MAX_SIDE} pixels."
            )
    if cfg.min_bucket_reso > cfg.max_bucket_reso:
        problems.append(
            f"{names('min_bucket_reso')} ({cfg.min_bucket_reso}) must not exceed "
            f"{names('max_bucket_reso')} ({cfg.max_bucket_reso})."
        )
    if cfg.network_train_unet_only and cfg.network_train_text_encoder_only:
        problems.append(
            f"{names('network_train_unet_only')} and {names('network_train_text_encoder_only')} cannot both be on."
        )
    problems += network_problems(cfg, names)
    if cfg.min_timestep is not None and cfg.max_timestep is not None and cfg.min_timestep > cfg.max_timestep:
        # equal values train that one timestep (sd-scripts' get_timesteps)
        problems.append(
            f"{names('min_timestep')} ({cfg.min_timestep}) must not be above {names('max_timestep')} "
            f"({cfg.max_timestep})."
        )
    if cfg.v_parameterization is False and cfg.scale_v_pred_loss_like_noise_pred:
        problems.append(
            f"{names('scale_v_pred_loss_like_noise_pred')} works only with {names('v_parameterization')} "
            "(a v-prediction model)."
        )
    if cfg.masked_loss and not cfg.conditioning_data_dir and not cfg.alpha_mask:
        problems.append(
            f"{names('masked_loss')} needs the masks: choose a mask folder ({names('conditioning_data_dir')}) or "
            f"turn on {names('alpha_mask')}."
        )
    if cfg.conditioning_data_dir and cfg.alpha_mask:
        problems.append(
            f"Choose one mask source: the mask folder ({names('conditioning_data_dir')}) or {names('alpha_mask')}, "
            "not both."
        )
    if cfg.conditioning_data_dir and not cfg.masked_loss:
        problems.append(
            f"{names('conditioning_data_dir')} (the mask folder) is used only with {names('masked_loss')}: turn "
            f"{names('masked_loss')} on or clear it."
        )
    if cfg.adaptive_noise_scale is not None and cfg.noise_offset is None:
        problems.append(
            f"{names('adaptive_noise_scale')} needs {names('noise_offset')}: set a noise offset or clear "
            f"{names('adaptive_noise_scale')}."
        )
    if cfg.validation_split >= 1:
        problems.append(f"{names('validation_split')} must be below 1: some images have to stay in training.")
    if cfg.random_crop and cfg.cache_latents:
        problems.append(
            f"{names('random_crop')} cannot be used with {names('cache_latents')} (cached latents are "
            "centre-cropped); turn one off."
        )
    if cfg.learning_rate == 0 and not (cfg.unet_lr or cfg.text_encoder_lr):
        problems.append(
            f"{names('learning_rate')} is 0 and no {names('unet_lr')} / {names('text_encoder_lr')} is set: "
            "nothing would train."
        )
    name = cfg.output_name
    if not name.strip():
        problems.append(f"{names('output_name')} is empty: type a name for the LoRA files.")
    elif name.strip() in (".", "..") or re.search(r"[\\/:*?\"<>|]", name):
        problems.append(
            f'{names("output_name")} = {name!r} is not valid: use a plain file name without / \\ : * ? " < > |.'
        )
    # the dataset scan puts a missing dot in front ("txt" reads .txt files), so only that form is judged
    extension = cfg.caption_extension if cfg.caption_extension.startswith(".") else "." + cfg.caption_extension
    if caption_extension_problem(extension) is not None:
        why = (
            "it is an image type: each image would be read as its own caption (and tagging would overwrite "
            "the images); use .txt (or .caption)."
            if extension.lower() in IMAGE_EXTENSIONS
            else "it must look like .txt (a dot, then the extension)."
        )
        problems.append(f"{names('caption_extension')} = {cfg.caption_extension!r} is not valid: {why}")
    if not cfg.train_data_dir:
        problems.append(
            f"{names('train_data_dir')} is empty: choose the dataset folder (the one holding the N_name subfolders)."
        )
    problems += saver_problems(cfg, names)
    return problems


def saver_problems(cfg: TrainConfig, names: Callable[[str], str] = key_name) -> list[str]:
    """The memory savers' rules (sd-scripts refuses the same combinations)."""
    if not cfg.cache_text_encoder_outputs:
        return []
    if cfg.train_text_encoder:
        return [
            f"{names('cache_text_encoder_outputs')} needs {names('network_train_unet_only')}: a text encoder "
            "that trains cannot use outputs encoded before training."
        ]
    changing = [
        names(name)
        for name, on in (
            ("shuffle_caption", cfg.shuffle_caption),
            ("caption_tag_dropout_rate", cfg.caption_tag_dropout_rate > 0),
            ("caption_dropout_rate", cfg.caption_dropout_rate > 0),
            ("caption_dropout_every_n_epochs", cfg.caption_dropout_every_n_epochs > 0),
        )
        if on
    ]
    if changing:
        return [
            f"{names('cache_text_encoder_outputs')} cannot be used with {', '.join(changing)}: captions that "
            "change every step cannot be encoded once; turn one of them off."
        ]
    return []


def check_rules(cfg: TrainConfig, names: Callable[[str], str] = key_name) -> None:
    """Every per-field rule (bounds, choices) and the cross-field rules; one ConfigError listing
    every broken one (one line each), naming each setting as ``names`` says."""
    problems = rule_problems(cfg, names)
    if problems:
        raise ConfigError("\n".join(problems), problems=problems)


def config_problems(
    values: Mapping[str, Any],
    *,
    names: Callable[[str], str] = key_name,
) -> tuple[TrainConfig, list[str]]:
    """The one validator of the CLI, the HTTP API, the tab's live check and its Check settings button:
    ``values`` over the defaults, every problem at once (values that cannot be read and broken rules),
    and the config with each unreadable value left at its default."""
    cfg, problems = _merge(TrainConfig(), values, names)
    return cfg, problems + rule_problems(cfg, names)


def network_problems(cfg: TrainConfig, names: Callable[[str], str] = key_name) -> list[str]:
    """The network type's own rules: options that belong to another type, and what LoKr/LoHa/DoRA
    cannot combine with."""
    problems: list[str] = []
    label = {"lora": "LoRA", "locon": "LoCon", "lokr": "LoKr", "loha": "LoHa"}.get(cfg.algo, cfg.algo)
    if cfg.algo != "lokr":
        for key in ("decompose_both", "full_matrix"):
            if getattr(cfg, key):
                problems.append(
                    f"{names(key)} is a LoKr setting, but the network type is {label}; choose LoKr or turn it off."
                )
        if cfg.factor != -1:
            problems.append(
                f"{names('factor')} = {cfg.factor} is a LoKr setting, but the network type is {label}; choose LoKr "
                "or set it to -1."
            )
    if cfg.factor == 0:
        problems.append(
            f"{names('factor')} = 0 is not valid: use -1 (automatic) or a number that divides every layer's size, "
            "such as 4, 8 or 16."
        )
    plus = [
        k for k in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio") if getattr(cfg, k)
    ]
    if plus and cfg.algo in ("lokr", "loha"):
        problems.append(
            f"{names(plus[0])} (LoRA+) speeds up LoRA's up weights; {label} has none: choose LoRA or LoCon, or clear it."
        )
    weight_form = [name for name, on in ((label, cfg.algo in ("lokr", "loha")), ("DoRA", cfg.dora_wd)) if on]
    if weight_form:
        for key in ("network_dropout", "rank_dropout"):
            if getattr(cfg, key):
                problems.append(
                    f"{names(key)} is not supported with {' + '.join(weight_form)}; use {names('module_dropout')} "
                    "instead."
                )
    return problems


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


# Starting points per network type, from the community's practice (LyCORIS' guidelines, kohya_ss's
# LoRA-type presets); the tab applies them when the Network type changes (README "Network types").
NETWORK_TYPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"network_dim": 32, "network_alpha": 16, "conv_dim": None, "conv_alpha": None, "factor": -1},
    "locon": {"network_dim": 32, "network_alpha": 16, "conv_dim": 8, "conv_alpha": 4, "factor": -1},
    "lokr": {"network_dim": 10000, "network_alpha": 1, "conv_dim": 10000, "conv_alpha": 1, "factor": 8},
    "loha": {"network_dim": 16, "network_alpha": 8, "conv_dim": 8, "conv_alpha": 4, "factor": -1},
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
    names: Callable[[str], str] = key_name,
) -> TrainConfig:
    """Defaults < preset < ``values``; validated (unless ``check`` is False): one ConfigError that
    lists every problem, naming each setting as ``names`` says."""
    cfg = TrainConfig()
    if preset:
        cfg = merge_values(cfg, preset_values(preset, family, native))
    cfg, problems = _merge(cfg, values, names)
    if check:
        problems += rule_problems(cfg, names)
    if problems:
        raise ConfigError("\n".join(problems), problems=problems)
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
