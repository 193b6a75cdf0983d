"""One training step's loss, stage by stage (diffusers training_utils style)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lib_lora.engine.bundle import ModelBundle, TextCond
from lib_lora.engine.noise import add_noise, min_snr_weights, sample_noise, sample_timesteps, training_target


class NonFiniteTextError(ArithmeticError):
    """The text conditioning of a batch holds NaN or infinite values (a model property, not the lr)."""

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
    # 1. latents into the UNet's space
    latents = batch.latents.to(device, torch.float32) * settings.latent_scaling
    # 2. noise (with optional offset) and uniform timesteps
    noise = sample_noise(latents, generator, settings.noise_offset, settings.noise_offset_random_strength)
    timesteps = sample_timesteps(latents.shape[0], generator, settings.min_timestep, settings.max_timestep).to(device)
    noisy = add_noise(bundle.alphas_cumprod, latents, noise, timesteps)
    with autocast:
        # 3. text conditioning (through the text-encoder LoRA when it trains)
        text = batch.text.to(device) if batch.text is not None else bundle.encode_text(batch.captions)
        if not all(bool(torch.isfinite(t).all()) for t in (text.context, text.pooled) if t is not None):
            raise NonFiniteTextError(batch.captions)
        size_cond = None if batch.size_cond is None else batch.size_cond.to(device)
        # 4. the model's prediction
        prediction = bundle.denoise(noisy.to(bundle.dtype), timesteps, text, size_cond)
    # 5. target and per-sample loss in float32
    target = training_target(bundle.alphas_cumprod, latents, noise, timesteps, settings.v_prediction)
    if settings.loss_type == "l1":
        loss = F.l1_loss(prediction.float(), target, reduction="none")
    else:
        loss = F.mse_loss(prediction.float(), target, reduction="none")
    loss = loss.mean(dim=list(range(1, loss.dim())))
    # 6. loss weights
    if settings.min_snr_gamma:
        loss = loss * min_snr_weights(
            bundle.alphas_cumprod, timesteps, settings.min_snr_gamma, settings.v_prediction
        ).to(loss.device)
    return loss.mean()
