"""The diffusion side of a training step: schedule, noise, timesteps, targets, loss weights.

Matches kohya sd-scripts (library/train_util.py, custom_train_functions.py): DDPM scaled-linear
betas 0.00085 -> 0.012 over 1000 steps; uniform timesteps; eps or v targets; min-SNR-gamma.
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000


def scaled_linear_alphas_cumprod(
    beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = NUM_TRAIN_TIMESTEPS
) -> torch.Tensor:
    """ᾱ_t of the DDPM ``scaled_linear`` schedule SD uses (float64)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR_t = ᾱ_t / (1 - ᾱ_t) for each timestep (float32)."""
    a = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return a / (1.0 - a)


def min_snr_weights(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float, v_prediction: bool
) -> torch.Tensor:
    """Min-SNR-gamma loss weights: eps min(SNR, γ)/SNR; v-prediction min(SNR, γ)/(SNR + 1)."""
    s = snr(alphas_cumprod, timesteps)
    clipped = torch.minimum(s, torch.full_like(s, gamma))
    return clipped / (s + 1.0) if v_prediction else clipped / s


def sample_noise(
    latents: torch.Tensor, generator: torch.Generator, noise_offset: float | None = None, random_strength: bool = False
) -> torch.Tensor:
    """ε ~ N(0, I), plus ``noise_offset`` · N(0, 1) per sample and channel; with ``random_strength`` the
    offset is o ~ U[0, noise_offset), one draw per batch (as sd-scripts)."""
    noise = torch.randn(latents.shape, generator=generator, device=generator.device, dtype=torch.float32).to(
        latents.device
    )
    if noise_offset:
        offset = noise_offset
        if random_strength:
            offset = (
                torch.rand((1, 1, 1, 1), generator=generator, device=generator.device).to(latents.device) * noise_offset
            )
        extra = torch.randn(
            (latents.shape[0], latents.shape[1], 1, 1), generator=generator, device=generator.device
        ).to(latents.device)
        noise = noise + offset * extra
    return noise


def sample_timesteps(
    batch: int, generator: torch.Generator, min_timestep: int | None = None, max_timestep: int | None = None
) -> torch.Tensor:
    """t ~ randint(min_timestep or 0, max_timestep or 1000), one per sample."""
    low = 0 if min_timestep is None else min_timestep
    high = NUM_TRAIN_TIMESTEPS if max_timestep is None else max_timestep
    return torch.randint(low, high, (batch,), generator=generator, device=generator.device)


def add_noise(
    alphas_cumprod: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε (computed in float32)."""
    a = alphas_cumprod.to(latents.device)[timesteps.to(latents.device)].float().view(-1, 1, 1, 1)
    return a.sqrt() * latents.float() + (1.0 - a).sqrt() * noise.float()


def training_target(
    alphas_cumprod: torch.Tensor,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    v_prediction: bool,
) -> torch.Tensor:
    """ε for eps models; v = √ᾱ_t · ε − √(1 − ᾱ_t) · x₀ for v-prediction."""
    if not v_prediction:
        return noise.float()
    a = alphas_cumprod.to(latents.device)[timesteps.to(latents.device)].float().view(-1, 1, 1, 1)
    return a.sqrt() * noise.float() - (1.0 - a).sqrt() * latents.float()
