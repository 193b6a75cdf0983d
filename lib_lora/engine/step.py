"""One training step's loss, stage by stage (diffusers training_utils style).

The order of the stages and of the loss weights is sd-scripts' (train_network.py process_batch and
post_process_loss): elementwise loss → mask → mean per sample → per-sample weight (regularization
images: prior_loss_weight) → min-SNR-gamma → v-pred scaling → debiased estimation → batch mean.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lib_lora.engine.bundle import ModelBundle, TextCond
from lib_lora.engine.noise import (
    add_noise,
    debiased_weights,
    elementwise_loss,
    huber_threshold,
    input_perturbation,
    min_snr_weights,
    sample_noise,
    sample_timesteps,
    training_target,
    v_pred_noise_scale,
)


class NonFiniteTextError(ArithmeticError):
    """The text conditioning of a batch holds NaN or infinite values (the model's own, or a text-encoder
    LoRA blown up by the learning rate: the loop tells which)."""

    def __init__(self, captions: list[str]) -> None:
        super().__init__(captions)
        self.captions = captions


@dataclass
class Batch:
    """What one step trains on."""

    latents: torch.Tensor  # unscaled VAE latents [B, 4, h, w]
    captions: list[str]
    text: TextCond | None = None  # precomputed conditioning (text encoders frozen); else encoded here
    size_cond: torch.Tensor | None = None  # SDXL [B, 6]: original h, w, crop top, left, target h, w
    mask: torch.Tensor | None = None  # masked loss: [B, 1, H, W] in 0..1 (any size; area-resized to h, w)
    loss_weights: torch.Tensor | None = None  # [B] per-sample weight (reg images: prior_loss_weight)


@dataclass(frozen=True)
class LossSettings:
    v_prediction: bool
    latent_scaling: float
    noise_offset: float | None = None
    noise_offset_random_strength: bool = False
    min_snr_gamma: float | None = None
    min_timestep: int | None = None
    max_timestep: int | None = None
    loss_type: str = "l2"
    adaptive_noise_scale: float | None = None
    multires_noise_iterations: int | None = None
    multires_noise_discount: float = 0.3
    ip_noise_gamma: float | None = None
    ip_noise_gamma_random_strength: bool = False
    huber_schedule: str = "snr"
    huber_c: float = 0.1
    huber_scale: float = 1.0
    scale_v_pred_loss_like_noise_pred: bool = False
    debiased_estimation_loss: bool = False
    # the schedule to train with when it is not the bundle's (zero terminal SNR); 1000 values
    alphas_cumprod: torch.Tensor | None = None


def masked(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``loss`` [B, C, h, w] times ``mask`` [B, 1, H, W] area-resized to h × w (sd-scripts' apply_masked_loss)."""
    weight = F.interpolate(mask.to(loss.device, loss.dtype), size=loss.shape[2:], mode="area")
    return loss * weight


def batch_loss(
    bundle: ModelBundle,
    batch: Batch,
    settings: LossSettings,
    generator: torch.Generator,
    autocast: contextlib.AbstractContextManager | None = None,
) -> torch.Tensor:
    """The mean loss of ``batch`` (float32 scalar, with grad into the LoRA)."""
    device = bundle.device
    autocast = autocast or contextlib.nullcontext()
    schedule = settings.alphas_cumprod if settings.alphas_cumprod is not None else bundle.alphas_cumprod
    # 1. latents into the UNet's space
    latents = batch.latents.to(device, torch.float32) * settings.latent_scaling
    # 2. noise (offset, multi-resolution), uniform timesteps, input perturbation
    noise = sample_noise(
        latents, generator, settings.noise_offset, settings.noise_offset_random_strength,
        adaptive_noise_scale=settings.adaptive_noise_scale, multires_iterations=settings.multires_noise_iterations,
        multires_discount=settings.multires_noise_discount,
    )  # fmt: skip
    timesteps = sample_timesteps(latents.shape[0], generator, settings.min_timestep, settings.max_timestep).to(device)
    model_noise = input_perturbation(noise, generator, settings.ip_noise_gamma, settings.ip_noise_gamma_random_strength)
    noisy = add_noise(schedule, latents, model_noise, timesteps)
    with autocast:
        # 3. text conditioning (through the text-encoder LoRA when it trains)
        text = batch.text.to(device) if batch.text is not None else bundle.encode_text(batch.captions)
        if not all(bool(torch.isfinite(t).all()) for t in (text.context, text.pooled) if t is not None):
            raise NonFiniteTextError(batch.captions)
        size_cond = None if batch.size_cond is None else batch.size_cond.to(device)
        # 4. the model's prediction
        prediction = bundle.denoise(noisy.to(bundle.dtype), timesteps, text, size_cond)
    # 5. target and elementwise loss in float32, masked, then the mean per sample
    target = training_target(schedule, latents, noise, timesteps, settings.v_prediction)
    huber_c = None
    if settings.loss_type in ("huber", "smooth_l1"):
        huber_c = huber_threshold(schedule, timesteps, settings.huber_schedule, settings.huber_c, settings.huber_scale)
    loss = elementwise_loss(prediction.float(), target, settings.loss_type, huber_c)
    if batch.mask is not None:
        loss = masked(loss, batch.mask)
    loss = loss.mean(dim=list(range(1, loss.dim())))
    if batch.loss_weights is not None:
        loss = loss * batch.loss_weights.to(loss.device, loss.dtype)
    # 6. loss weights by timestep
    if settings.min_snr_gamma:
        loss = loss * min_snr_weights(schedule, timesteps, settings.min_snr_gamma, settings.v_prediction).to(
            loss.device
        )
    if settings.scale_v_pred_loss_like_noise_pred:
        loss = loss * v_pred_noise_scale(schedule, timesteps).to(loss.device)
    if settings.debiased_estimation_loss:
        loss = loss * debiased_weights(schedule, timesteps, settings.v_prediction).to(loss.device)
    return loss.mean()
