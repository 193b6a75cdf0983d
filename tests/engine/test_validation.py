"""Validation loss as sd-scripts defines it: fixed linspaced timesteps, fixed noise, mean over
(batch, timestep); the same weights give the same figure, a training step changes it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib_lora.engine.bundle import TextCond
from lib_lora.engine.noise import sample_noise
from lib_lora.engine.step import Batch, LossSettings, batch_loss
from lib_lora.engine.validation import validation_loss, validation_timesteps


class _ScaledModel:
    """A bundle whose prediction is ``w * noisy``: w = 0 makes the loss the target's own energy."""

    device = torch.device("cpu")
    dtype = torch.float32
    alphas_cumprod = torch.cumprod(1.0 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, dim=0)

    def __init__(self, w: float = 0.0) -> None:
        self.w = torch.nn.Parameter(torch.tensor(w))

    def encode_text(self, captions):
        return TextCond(context=torch.zeros(len(captions), 77, 8))

    def denoise(self, noisy, timesteps, text, size_cond):
        return self.w * noisy


def _batches(n: int = 3) -> list[Batch]:
    g = torch.Generator().manual_seed(5)
    return [Batch(latents=torch.randn(2, 4, 8, 8, generator=g), captions=["a", "b"]) for _ in range(n)]


@pytest.mark.parametrize("low, high", [(None, None), (100, 900), (3, 997), (0, 999), (500, 501)])
def test_timesteps_are_numpys_integer_linspace_without_the_ends(low, high) -> None:
    expected = np.linspace(0 if low is None else low, 1000 if high is None else high, 6, dtype=int)[1:-1]
    assert validation_timesteps(low, high) == [int(v) for v in expected]
    assert validation_timesteps() == [200, 400, 600, 800]


@pytest.mark.parametrize("gamma", [None, 5.0])
def test_equals_sd_scripts_definition_on_a_hand_computed_case(gamma) -> None:
    model, batches = _ScaledModel(0.0), _batches()
    settings = LossSettings(v_prediction=False, latent_scaling=0.18215, min_snr_gamma=gamma)
    got = validation_loss(model, batches, settings, seed=11, max_validation_steps=2)

    # by hand: only the first 2 batches; each at t = 200, 400, 600, 800 in that order, noise drawn from
    # one generator seeded once; loss per (batch, t) = mean over samples of the (weighted) MSE; then the mean
    g = torch.Generator().manual_seed(11)
    losses = []
    for batch in batches[:2]:
        x0 = batch.latents * 0.18215
        for t in (200, 400, 600, 800):
            eps = sample_noise(x0, g)
            torch.randint(t, t + 1, (2,), generator=g)  # the timestep draw still takes its turn
            per_sample = (eps**2).mean(dim=(1, 2, 3))  # prediction 0: the target is the noise
            if gamma:
                snr = model.alphas_cumprod[t] / (1 - model.alphas_cumprod[t])
                per_sample = per_sample * torch.clamp(snr, max=gamma) / snr
            losses.append(float(per_sample.mean()))
    assert got == pytest.approx(sum(losses) / len(losses), rel=1e-6)


def test_same_weights_same_figure_and_a_training_step_changes_it() -> None:
    model, batches = _ScaledModel(0.3), _batches()
    settings = LossSettings(v_prediction=False, latent_scaling=0.18215)
    rng_before = torch.get_rng_state()
    first = validation_loss(model, batches, settings, seed=1)
    torch.randn(10)  # the global RNG moving on (training draws) changes nothing
    second = validation_loss(model, batches, settings, seed=1)
    assert first == second
    assert model.w.grad is None  # no gradients from validation
    assert validation_loss(model, batches, settings, seed=2) != first  # the seed is what fixes the noise

    optimizer = torch.optim.SGD([model.w], lr=0.1)
    loss = batch_loss(model, batches[0], settings, torch.Generator().manual_seed(3))
    loss.backward()
    optimizer.step()
    assert validation_loss(model, batches, settings, seed=1) != first
    torch.set_rng_state(rng_before)


def test_no_batches_is_an_error() -> None:
    with pytest.raises(ValueError):
        validation_loss(_ScaledModel(), [], LossSettings(v_prediction=False, latent_scaling=1.0), seed=0)
