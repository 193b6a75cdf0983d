"""The diffusion side of a training step: schedule, noise, timesteps, targets, loss weights.

Matches kohya sd-scripts (library/train_util.py, custom_train_functions.py): DDPM scaled-linear
betas 0.00085 -> 0.012 over 1000 steps (optionally rescaled to zero terminal SNR); uniform
timesteps; noise offset (adaptive), multi-resolution noise and input perturbation; eps or v
targets; l2 / l1 / huber / smooth_l1 losses; the loss weights min-SNR-gamma, v-pred scaling and
debiased estimation. Random draws come from the step's ``torch.Generator`` (sd-scripts uses the
global RNG; the formulas are the same).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NUM_TRAIN_TIMESTEPS = 1000


def scaled_linear_alphas_cumprod(
    beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = NUM_TRAIN_TIMESTEPS
) -> torch.Tensor:
    """ᾱ_t of the DDPM ``scaled_linear`` schedule SD uses (float64)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def zero_terminal_snr_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """ᾱ_t rescaled to zero terminal SNR (Lin et al. 2023, sd-scripts' ``zero_terminal_snr``):
    √ᾱ is shifted so its last value is 0 and scaled so its first value is unchanged (float64)."""
    root = alphas_cumprod.double().sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    return root**2


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


def clamped_snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR_t limited to 1000 (at t = 0 it is huge), as sd-scripts' get_snr_scale / debiased estimation."""
    return torch.clamp(snr(alphas_cumprod, timesteps), max=1000.0)


def v_pred_noise_scale(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """``scale_v_pred_loss_like_noise_pred``: weight SNR/(SNR + 1), SNR ≤ 1000."""
    s = clamped_snr(alphas_cumprod, timesteps)
    return s / (s + 1.0)


def debiased_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, v_prediction: bool) -> torch.Tensor:
    """``debiased_estimation_loss``: 1/√SNR (eps) or 1/(SNR + 1) (v-prediction), SNR ≤ 1000."""
    s = clamped_snr(alphas_cumprod, timesteps)
    return 1.0 / (s + 1.0) if v_prediction else 1.0 / s.sqrt()


def huber_threshold(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, schedule: str, huber_c: float, huber_scale: float = 1.0
) -> torch.Tensor:
    """The per-sample huber_c of sd-scripts' ``huber_schedule``: constant c·scale; exponential
    exp(ln(c)·t/1000)·scale; snr (1 − c)/(1 + σ_t)² + c with σ_t = √((1 − ᾱ_t)/ᾱ_t)."""
    t = timesteps.float()
    if schedule == "constant":
        return torch.full_like(t, huber_c * huber_scale)
    if schedule == "exponential":
        alpha = -math.log(huber_c) / NUM_TRAIN_TIMESTEPS
        return torch.exp(-alpha * t) * huber_scale
    if schedule == "snr":
        a = alphas_cumprod.to(timesteps.device)[timesteps].double()
        sigmas = ((1.0 - a) / a).sqrt()
        return ((1.0 - huber_c) / (1.0 + sigmas) ** 2 + huber_c).float()
    raise ValueError(f"unknown huber_schedule {schedule!r}")


def elementwise_loss(
    prediction: torch.Tensor, target: torch.Tensor, loss_type: str, huber_c: torch.Tensor | None = None
) -> torch.Tensor:
    """The unreduced loss: l2 (x − y)², l1 |x − y|, huber 2c(√((x − y)² + c²) − c),
    smooth_l1 2(√((x − y)² + c²) − c), c per sample (sd-scripts' conditional_loss)."""
    if loss_type == "l2":
        return F.mse_loss(prediction, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(prediction, target, reduction="none")
    if loss_type in ("huber", "smooth_l1"):
        if huber_c is None:
            raise ValueError(f"{loss_type} loss needs huber_c")
        c = huber_c.to(prediction.device).view(-1, *([1] * (prediction.dim() - 1)))
        root = torch.sqrt((prediction - target) ** 2 + c**2) - c
        return 2 * c * root if loss_type == "huber" else 2 * root
    raise ValueError(f"unknown loss_type {loss_type!r}")


def pyramid_noise(noise: torch.Tensor, generator: torch.Generator, iterations: int, discount: float) -> torch.Tensor:
    """Multi-resolution noise (sd-scripts' pyramid_noise_like): for i = 0, 1, … add N(0, I) drawn at
    size ⌊side / rⁱ⌋ (r ~ U[2, 4) per level), upsampled bilinearly, times discountⁱ, until a side is 1;
    the sum is divided by its standard deviation."""
    b, c, h, w = noise.shape
    out = noise.float().clone()
    for i in range(iterations):
        r = float(torch.rand((), generator=generator, device=generator.device)) * 2 + 2
        hn, wn = max(1, int(h / (r**i))), max(1, int(w / (r**i)))
        small = torch.randn((b, c, hn, wn), generator=generator, device=generator.device).to(noise.device)
        out = out + F.interpolate(small, size=(h, w), mode="bilinear") * discount**i
        if hn == 1 or wn == 1:
            break
    return out / out.std()


def sample_noise(
    latents: torch.Tensor,
    generator: torch.Generator,
    noise_offset: float | None = None,
    random_strength: bool = False,
    *,
    adaptive_noise_scale: float | None = None,
    multires_iterations: int | None = None,
    multires_discount: float = 0.3,
) -> torch.Tensor:
    """ε ~ N(0, I), plus ``noise_offset`` · N(0, 1) per sample and channel; with ``random_strength`` the
    offset is o ~ U[0, noise_offset), one draw per batch (as sd-scripts). ``adaptive_noise_scale`` a
    makes the offset o + a·|mean of each latent channel| (at least 0); then multi-resolution noise
    (:func:`pyramid_noise`) when ``multires_iterations`` is set."""
    noise = torch.randn(latents.shape, generator=generator, device=generator.device, dtype=torch.float32).to(
        latents.device
    )
    if noise_offset:
        offset = noise_offset
        if random_strength:
            offset = (
                torch.rand((1, 1, 1, 1), generator=generator, device=generator.device).to(latents.device) * noise_offset
            )
        if adaptive_noise_scale is not None:
            mean = latents.float().mean(dim=(2, 3), keepdim=True).abs()
            offset = torch.clamp(offset + adaptive_noise_scale * mean, min=0.0)
        extra = torch.randn(
            (latents.shape[0], latents.shape[1], 1, 1), generator=generator, device=generator.device
        ).to(latents.device)
        noise = noise + offset * extra
    if multires_iterations:
        noise = pyramid_noise(noise, generator, multires_iterations, multires_discount)
    return noise


def input_perturbation(
    noise: torch.Tensor, generator: torch.Generator, gamma: float | None, random_strength: bool = False
) -> torch.Tensor:
    """The noise the model's input is made with under ``ip_noise_gamma`` γ: ε + γ·ε′ (γ ~ U[0, γ)
    with ``random_strength``); the target keeps ε. Without γ, ε itself."""
    if not gamma:
        return noise
    strength: float | torch.Tensor = gamma
    if random_strength:
        strength = torch.rand((1,), generator=generator, device=generator.device).to(noise.device) * gamma
    extra = torch.randn(noise.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return noise + strength * extra.to(noise.device)


def sample_timesteps(
    batch: int, generator: torch.Generator, min_timestep: int | None = None, max_timestep: int | None = None
) -> torch.Tensor:
    """t ~ randint(min_timestep or 0, max_timestep or 1000), one per sample; all equal to
    max_timestep when min_timestep ≥ max_timestep (sd-scripts' get_timesteps)."""
    low = 0 if min_timestep is None else min_timestep
    high = NUM_TRAIN_TIMESTEPS if max_timestep is None else max_timestep
    if low >= high:
        return torch.full((batch,), high, dtype=torch.long, device=generator.device)
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
