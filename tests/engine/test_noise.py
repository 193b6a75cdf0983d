"""The diffusion maths of a step against diffusers' DDPM scheduler and sd-scripts' formulas."""

from __future__ import annotations

import torch

from lib_lora.engine import noise


def _ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def test_schedule_equals_diffusers_scaled_linear() -> None:
    ours = noise.scaled_linear_alphas_cumprod()
    assert torch.allclose(ours.float(), _ddpm().alphas_cumprod, atol=1e-7)


def test_add_noise_and_v_target_equal_diffusers() -> None:
    scheduler = _ddpm()
    alphas = noise.scaled_linear_alphas_cumprod()
    g = torch.Generator().manual_seed(0)
    latents, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    assert torch.allclose(noise.add_noise(alphas, latents, eps, t), scheduler.add_noise(latents, eps, t), atol=1e-5)
    assert torch.allclose(
        noise.training_target(alphas, latents, eps, t, True), scheduler.get_velocity(latents, eps, t), atol=1e-5
    )
    assert torch.equal(noise.training_target(alphas, latents, eps, t, False), eps)


def test_min_snr_weights_equal_sd_scripts_formula() -> None:
    """sd-scripts: snr = (sqrt(ᾱ) / sqrt(1-ᾱ))²; eps min(snr, γ)/snr; v min(snr, γ)/(snr+1)."""
    alphas = _ddpm().alphas_cumprod
    all_snr = (alphas.sqrt() / (1.0 - alphas).sqrt()) ** 2
    t = torch.tensor([0, 10, 100, 400, 700, 999])
    for gamma in (1.0, 5.0, 20.0):
        clipped = torch.minimum(all_snr[t], torch.tensor(gamma))
        assert torch.allclose(noise.min_snr_weights(alphas, t, gamma, False), clipped / all_snr[t], rtol=1e-5)
        assert torch.allclose(noise.min_snr_weights(alphas, t, gamma, True), clipped / (all_snr[t] + 1), rtol=1e-5)
    weights = noise.min_snr_weights(alphas, torch.arange(1000), 5.0, False)
    assert weights[-1] == 1.0 and weights[0] < 0.01  # low-noise steps are down-weighted


def test_timesteps_respect_bounds_and_seed() -> None:
    t = noise.sample_timesteps(4096, torch.Generator().manual_seed(1), min_timestep=100, max_timestep=200)
    assert int(t.min()) >= 100 and int(t.max()) <= 199
    again = noise.sample_timesteps(4096, torch.Generator().manual_seed(1), min_timestep=100, max_timestep=200)
    assert torch.equal(t, again)


def test_noise_offset_shifts_channel_means() -> None:
    latents = torch.zeros(256, 4, 16, 16)
    plain = noise.sample_noise(latents, torch.Generator().manual_seed(0))
    offset = noise.sample_noise(latents, torch.Generator().manual_seed(0), noise_offset=0.5)
    per_channel = offset.mean(dim=(2, 3)).std().item()
    assert per_channel > 3 * plain.mean(dim=(2, 3)).std().item()


def test_random_noise_offset_strength_is_one_draw_per_batch() -> None:
    # sd-scripts: noise_offset = torch.rand(1) * noise_offset, then apply_noise_offset for the whole batch
    latents = torch.zeros(3, 4, 8, 8)
    got = noise.sample_noise(latents, torch.Generator().manual_seed(5), noise_offset=0.2, random_strength=True)
    g = torch.Generator().manual_seed(5)
    base = torch.randn(latents.shape, generator=g)
    strength = torch.rand((1, 1, 1, 1), generator=g) * 0.2
    extra = torch.randn((3, 4, 1, 1), generator=g)
    assert torch.allclose(got, base + strength * extra)
