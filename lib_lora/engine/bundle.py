"""What the engine trains through: a host's model, seen as a few operations.

A host (the webui's loaded checkpoint, or the standalone diffusers models) implements
:class:`ModelBundle`. The engine never looks inside beyond these methods and the module trees it
puts LoRAs on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@dataclass
class TextCond:
    """Text conditioning of a batch: the cross-attention context and, for SDXL, the pooled
    embedding that goes into the vector conditioning."""

    context: torch.Tensor  # [B, tokens, D]
    pooled: torch.Tensor | None = None  # [B, P] (SDXL)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TextCond:
        pooled = None if self.pooled is None else self.pooled.to(device, dtype)
        return TextCond(self.context.to(device, dtype), pooled)

    def detach(self) -> TextCond:
        return TextCond(self.context.detach(), None if self.pooled is None else self.pooled.detach())

    def __getitem__(self, index: int | slice) -> TextCond:
        pooled = None if self.pooled is None else self.pooled[index]
        return TextCond(self.context[index], pooled)

    @staticmethod
    def cat(parts: Sequence[TextCond]) -> TextCond:
        """Batch-concatenate (contexts must have the same token length)."""
        context = torch.cat([p.context for p in parts])
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])  # type: ignore[misc]
        return TextCond(context, pooled)


@runtime_checkable
class ModelBundle(Protocol):
    """A loaded SD1.x / SDXL model as the engine needs it.

    Attributes:
        family: ``"sd1"`` or ``"sdxl"``.
        v_prediction: the model predicts v (else epsilon).
        model_name: the checkpoint's file name (``ss_sd_model_name``).
        model_path: the checkpoint file, when there is one (hashes are computed from it).
        device: where training runs.
        dtype: the dtype of the frozen weights.
        latent_scaling: 0.18215 (SD1) / 0.13025 (SDXL); latents from :meth:`encode_images` are
            unscaled and multiplied by this before the UNet.
        alphas_cumprod: the DDPM schedule's cumulative alphas, 1000 values (the original ones,
            not a sampling-time replacement).
        clip_skip: the clip skip the text path applies (SD1), None where it does not apply.
    """

    family: str
    v_prediction: bool
    model_name: str
    model_path: str | None
    device: torch.device
    dtype: torch.dtype
    latent_scaling: float
    alphas_cumprod: torch.Tensor
    clip_skip: int | None

    def lora_hosts(self) -> tuple[nn.Module, dict[str, nn.Module], dict[str, str]]:
        """(UNet, text encoders by component ``te`` | ``te1`` | ``te2``, naming per component
        ``unet``: ldm | diffusers, text encoders: hf | openclip) — the trees LoRAs go into."""
        ...

    def vae_identity(self) -> str:
        """A short stable id of the VAE (latent caches are keyed by it)."""
        ...

    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> unscaled latents [B, 4, H/8, W/8], float32, sampled from
        the VAE posterior with ``generator``. Must not return NaN for finite input (upcast the VAE
        when its half precision overflows)."""
        ...

    def encode_text(self, captions: list[str]) -> TextCond:
        """Captions -> conditioning, through the host's own text path (clip skip, long prompts).
        Gradients flow into text-encoder LoRAs when grad is enabled."""
        ...

    def denoise(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, text: TextCond, size_cond: torch.Tensor | None
    ) -> torch.Tensor:
        """The UNet's prediction for scaled noisy latents. ``size_cond`` is SDXL's [B, 6]
        (original h, w, crop top, left, target h, w); None for SD1."""
        ...

    def training(
        self, *, train_unet: bool, train_text_encoder: bool, gradient_checkpointing: bool
    ) -> contextlib.AbstractContextManager[None]:
        """Prepare the model for LoRA training (base weights frozen, modes set, checkpointing) and
        put every change back on exit, whatever happens inside."""
        ...


@contextlib.contextmanager
def frozen_base(modules: Sequence[nn.Module], train_modes: dict[nn.Module, bool]) -> Iterator[None]:
    """Freeze every parameter of ``modules`` and set each module's train/eval mode from
    ``train_modes``; restores ``requires_grad`` and modes exactly afterwards."""
    saved_grad = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    saved_mode = [(sub, sub.training) for m in modules for sub in m.modules()]
    try:
        for module in modules:
            module.requires_grad_(False)
        for module, train in train_modes.items():
            module.train(train)
        yield
    finally:
        for param, flag in saved_grad:
            param.requires_grad_(flag)
        for sub, mode in saved_mode:
            sub.training = mode
