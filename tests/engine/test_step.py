"""One step's loss as sd-scripts computes it: per-sample MSE over the latent, Min-SNR weights, mean."""

from __future__ import annotations

import pytest
import torch

from lib_lora.engine.bundle import TextCond
from lib_lora.engine.noise import sample_noise, sample_timesteps
from lib_lora.engine.step import Batch, LossSettings, batch_loss


class _ZeroModel:
    """A bundle whose prediction is always 0, so the loss is the target's own energy."""

    device = torch.device("cpu")
    dtype = torch.float32
    alphas_cumprod = torch.cumprod(1.0 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, dim=0)

    def encode_text(self, captions):
        return TextCond(context=torch.zeros(len(captions), 77, 8))

    def denoise(self, noisy, timesteps, text, size_cond):
        return torch.zeros_like(noisy)


@pytest.mark.parametrize("v_prediction", [False, True])
@pytest.mark.parametrize("gamma", [None, 5.0])
def test_batch_loss_applies_min_snr_per_sample_like_sd_scripts(v_prediction: bool, gamma: float | None) -> None:
    model = _ZeroModel()
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    settings = LossSettings(v_prediction=v_prediction, latent_scaling=0.18215, min_snr_gamma=gamma)
    got = batch_loss(model, Batch(latents=latents, captions=["a"] * 4), settings, torch.Generator().manual_seed(9))

    # the same draws, then sd-scripts' formulas written out by hand
    g = torch.Generator().manual_seed(9)
    x0 = latents * 0.18215
    eps = sample_noise(x0, g)
    t = sample_timesteps(4, g)
    a = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    target = a.sqrt() * eps - (1 - a).sqrt() * x0 if v_prediction else eps
    per_sample = (target**2).mean(dim=(1, 2, 3))
    if gamma:
        snr = model.alphas_cumprod[t] / (1 - model.alphas_cumprod[t])
        weight = torch.minimum(snr, torch.full_like(snr, gamma)) / (snr + 1 if v_prediction else snr)
        per_sample = per_sample * weight
    assert torch.allclose(got, per_sample.mean(), rtol=1e-5)
