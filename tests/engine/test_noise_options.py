"""sd-scripts' noise and loss options (library/custom_train_functions.py, train_util.py, train_network.py
post_process_loss), each against its formula written out here or against diffusers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lib_lora.engine import noise
from lib_lora.engine.bundle import TextCond
from lib_lora.engine.step import Batch, LossSettings, batch_loss

ALPHAS = noise.scaled_linear_alphas_cumprod().float()


def test_zero_terminal_snr_equals_diffusers_rescaled_betas() -> None:
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", rescale_betas_zero_snr=True
    ).alphas_cumprod
    ours = noise.zero_terminal_snr_alphas_cumprod(noise.scaled_linear_alphas_cumprod())
    assert torch.allclose(ours.float(), ref, atol=1e-6)
    assert float(ours[-1]) == 0.0 and math.isclose(float(ours[0]), float(noise.scaled_linear_alphas_cumprod()[0]))
    assert float(noise.snr(ours, torch.tensor([999]))) == 0.0  # the last step is pure noise


def test_huber_thresholds_follow_sd_scripts_schedules() -> None:
    t = torch.tensor([0, 250, 999])
    c, scale = 0.1, 2.0
    assert torch.allclose(noise.huber_threshold(ALPHAS, t, "constant", c, scale), torch.full((3,), c * scale))
    alpha = -math.log(c) / 1000
    assert torch.allclose(noise.huber_threshold(ALPHAS, t, "exponential", c, scale), torch.exp(-alpha * t) * scale)
    sigmas = ((1 - ALPHAS[t]) / ALPHAS[t]) ** 0.5
    assert torch.allclose(noise.huber_threshold(ALPHAS, t, "snr", c, scale), (1 - c) / (1 + sigmas) ** 2 + c)
    # the exponential schedule runs from scale at t=0 to c·scale at t=1000
    assert math.isclose(float(noise.huber_threshold(ALPHAS, torch.tensor([0]), "exponential", c, 1.0)), 1.0)


@pytest.mark.parametrize("loss_type", ["huber", "smooth_l1"])
def test_pseudo_huber_losses(loss_type: str) -> None:
    pred, target = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    c = torch.tensor([0.1, 0.5])
    got = noise.elementwise_loss(pred, target, loss_type, c)
    cc = c.view(2, 1, 1, 1)
    root = torch.sqrt((pred - target) ** 2 + cc**2) - cc
    assert torch.allclose(got, 2 * cc * root if loss_type == "huber" else 2 * root)
    # small errors behave like l2 (scaled), large like l1
    one = torch.tensor([1.0], dtype=torch.float64)
    small = noise.elementwise_loss(torch.tensor([[1e-2]], dtype=torch.float64), torch.zeros(1, 1), "smooth_l1", one)
    assert math.isclose(float(small), 1e-4, rel_tol=1e-3)  # ≈ d² / c
    large = noise.elementwise_loss(torch.tensor([[100.0]], dtype=torch.float64), torch.zeros(1, 1), "smooth_l1", one)
    assert math.isclose(float(large), 198.0, rel_tol=1e-3)  # ≈ 2(|d| − c)


def test_debiased_estimation_and_v_pred_scaling_weights() -> None:
    t = torch.tensor([0, 1, 300, 999])
    s = torch.clamp(ALPHAS[t] / (1 - ALPHAS[t]), max=1000)
    assert torch.allclose(noise.debiased_weights(ALPHAS, t, False), 1 / s.sqrt())
    assert torch.allclose(noise.debiased_weights(ALPHAS, t, True), 1 / (s + 1))
    assert torch.allclose(noise.v_pred_noise_scale(ALPHAS, t), s / (s + 1))
    assert float(noise.clamped_snr(ALPHAS, torch.tensor([0]))) == 1000.0  # SNR at t=0 is ~1175, clamped


def test_multires_noise_is_the_pyramid_sum_renormalised() -> None:
    base = torch.randn(2, 4, 32, 24, generator=torch.Generator().manual_seed(0))
    got = noise.pyramid_noise(base, torch.Generator().manual_seed(5), 3, 0.3)
    g = torch.Generator().manual_seed(5)  # replay the draws: r ~ U[2, 4), then the level's noise
    expected = base.clone()
    for i in range(3):
        r = float(torch.rand((), generator=g)) * 2 + 2
        h, w = max(1, int(32 / r**i)), max(1, int(24 / r**i))
        up = torch.nn.Upsample(size=(32, 24), mode="bilinear")(torch.randn(2, 4, h, w, generator=g))
        expected = expected + up * 0.3**i
        if h == 1 or w == 1:
            break
    expected = expected / expected.std()
    assert torch.allclose(got, expected, atol=1e-6)
    assert math.isclose(float(got.std()), 1.0, rel_tol=1e-5)
    # the coarse levels make neighbouring latent pixels correlated (plain noise: about 0)
    strong = noise.pyramid_noise(base, torch.Generator().manual_seed(5), 6, 0.9)
    corr = torch.corrcoef(torch.stack([strong[..., :, :-1].flatten(), strong[..., :, 1:].flatten()]))[0, 1]
    plain = torch.corrcoef(torch.stack([base[..., :, :-1].flatten(), base[..., :, 1:].flatten()]))[0, 1]
    assert corr > 0.3 and abs(plain) < 0.1


def test_adaptive_noise_offset_adds_the_channel_mean() -> None:
    latents = torch.zeros(1, 4, 8, 8)
    latents[:, 1] = 2.0
    plain = noise.sample_noise(latents, torch.Generator().manual_seed(1), 0.1)
    adaptive = noise.sample_noise(latents, torch.Generator().manual_seed(1), 0.1, adaptive_noise_scale=0.5)
    g = torch.Generator().manual_seed(1)
    eps = torch.randn(1, 4, 8, 8, generator=g)
    extra = torch.randn(1, 4, 1, 1, generator=g)
    offset = torch.tensor([0.1, 0.1 + 0.5 * 2.0, 0.1, 0.1]).view(1, 4, 1, 1)
    assert torch.allclose(adaptive, eps + offset * extra)
    assert torch.allclose(plain, eps + 0.1 * extra)


def test_min_timestep_equal_to_max_trains_that_timestep() -> None:
    t = noise.sample_timesteps(5, torch.Generator().manual_seed(0), min_timestep=500, max_timestep=500)
    assert t.tolist() == [500] * 5


class _EchoModel:
    """Predicts its noisy input, so the loss sees what the model was given."""

    device = torch.device("cpu")
    dtype = torch.float32
    alphas_cumprod = ALPHAS

    def encode_text(self, captions):
        return TextCond(context=torch.zeros(len(captions), 77, 8))

    def denoise(self, noisy, timesteps, text, size_cond):
        return noisy


def test_ip_noise_perturbs_the_input_not_the_target() -> None:
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    settings = LossSettings(v_prediction=False, latent_scaling=1.0, ip_noise_gamma=0.1)
    got = batch_loss(_EchoModel(), Batch(latents, ["a"] * 3), settings, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    eps = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.randint(0, 1000, (3,), generator=g)
    perturbed = eps + 0.1 * torch.randn(3, 4, 8, 8, generator=g)
    a = ALPHAS[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * perturbed
    assert torch.allclose(got, ((noisy - eps) ** 2).mean(), rtol=1e-5)


def test_all_weights_in_sd_scripts_order_with_mask_and_per_sample_weights() -> None:
    """huber(snr) → mask → mean per sample → prior weight → min-SNR → v-pred scale → debiased, on a
    zero-terminal-SNR v-prediction schedule."""
    ztsnr = noise.zero_terminal_snr_alphas_cumprod(noise.scaled_linear_alphas_cumprod()).float()
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, :, :32] = 1.0
    weights = torch.tensor([1.0, 0.5])
    settings = LossSettings(
        v_prediction=True, latent_scaling=1.0, min_snr_gamma=5.0, loss_type="huber", huber_schedule="snr",
        huber_c=0.2, scale_v_pred_loss_like_noise_pred=True, debiased_estimation_loss=True, alphas_cumprod=ztsnr,
        min_timestep=100, max_timestep=900,
    )  # fmt: skip
    batch = Batch(latents, ["a", "b"], mask=mask, loss_weights=weights)
    got = batch_loss(_EchoModel(), batch, settings, torch.Generator().manual_seed(8))

    g = torch.Generator().manual_seed(8)
    eps = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.randint(100, 900, (2,), generator=g)
    a = ztsnr[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * eps
    target = a.sqrt() * eps - (1 - a).sqrt() * latents
    sigma = ((1 - ztsnr[t]) / ztsnr[t]).sqrt()
    c = ((1 - 0.2) / (1 + sigma) ** 2 + 0.2).view(-1, 1, 1, 1)
    loss = 2 * c * (torch.sqrt((noisy - target) ** 2 + c**2) - c)
    loss = loss * F.interpolate(mask, size=(8, 8), mode="area")
    loss = loss.mean(dim=(1, 2, 3)) * weights
    snr = ztsnr[t] / (1 - ztsnr[t])
    loss = loss * torch.minimum(snr, torch.full_like(snr, 5.0)) / (snr + 1)
    clamped = torch.clamp(snr, max=1000)
    loss = loss * clamped / (clamped + 1)
    loss = loss / (clamped + 1)
    assert torch.allclose(got, loss.mean(), rtol=1e-4)
