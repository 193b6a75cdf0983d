"""Validation loss: the training loss on held-out images, with the noise fixed so epochs compare.

Training loss is dominated by which timesteps and noise each step happened to draw; it cannot
rank epochs. Validation (as sd-scripts' ``train_network.py`` defines it) removes both sources:

- the timesteps are fixed: four evenly spaced values strictly inside ``[min_timestep,
  max_timestep]`` (``linspace(low, high, 6)[1:-1]`` as integers: 200, 400, 600, 800 by default);
- the noise is fixed: one generator seeded with ``validation_seed`` at the start of every
  validation, drawn in the same order each time;
- every held-out batch (at most ``max_validation_steps`` of them) is scored at every one of those
  timesteps with the training loss (same target, loss type, noise offset and Min-SNR weights); the
  figure is the mean over (batch, timestep) — sd-scripts' ``loss/validation/*_average``.

The same weights give the same figure on every call; the loop's random state is left untouched.
Pure torch: batches come in, a float goes out; the caller knows where the images live.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence

import torch

from lib_lora.engine.bundle import ModelBundle
from lib_lora.engine.noise import NUM_TRAIN_TIMESTEPS
from lib_lora.engine.step import Batch, LossSettings, batch_loss

NUM_VALIDATION_TIMESTEPS = 4  # sd-scripts' fixed count


def validation_timesteps(
    min_timestep: int | None = None, max_timestep: int | None = None, count: int = NUM_VALIDATION_TIMESTEPS
) -> list[int]:
    """``count`` integer timesteps evenly spaced strictly inside [min_timestep, max_timestep]."""
    low = 0 if min_timestep is None else int(min_timestep)
    high = NUM_TRAIN_TIMESTEPS if max_timestep is None else int(max_timestep)
    points = count + 2
    # numpy's linspace(..., dtype=int) truncates toward zero; the values here are never negative
    return [int(low + (high - low) * i / (points - 1)) for i in range(1, points - 1)]


def validation_loss(
    bundle: ModelBundle,
    batches: Sequence[Batch],
    settings: LossSettings,
    seed: int,
    max_validation_steps: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> float:
    """The mean loss of ``batches`` (the first ``max_validation_steps``) at the fixed timesteps, with
    noise from a generator seeded by ``seed``; no gradients. ``autocast`` makes a fresh mixed-precision
    context per batch. Raises ValueError without batches."""
    used = list(batches)[: max_validation_steps if max_validation_steps is not None else None]
    if not used:
        raise ValueError("no validation batches")
    timesteps = validation_timesteps(settings.min_timestep, settings.max_timestep)
    generator = torch.Generator(device=bundle.device).manual_seed(int(seed))
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in used:
            for t in timesteps:
                fixed = dataclasses.replace(settings, min_timestep=t, max_timestep=t + 1)  # randint(t, t+1) = t
                loss = batch_loss(bundle, batch, fixed, generator, autocast() if autocast else None)
                total += float(loss)
                count += 1
    return total / count
