"""Images from a :class:`DiffusersBundle`, optionally with LoRA files applied (samples during
training, the standalone app's epoch x prompt Test grid).

A small Euler sampler of our own over ``bundle.denoise`` (the same text path and SDXL size
conditioning as training, eps or v-prediction, classifier-free guidance), so it behaves the same on
every diffusers version. Zero-terminal-SNR models (a ``ztsnr`` key, or ``zero_terminal_snr``) sample
on the rescaled schedule, its last ᾱ set to a tiny value instead of 0 so the first sigma is finite
(as the webui does). The model is left exactly as it was: LoRAs are applied by patching and
restored afterwards, train/eval modes are put back.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from lib_lora.common.errors import UserError
from lib_lora.engine.network import LoRANetwork
from lib_lora.engine.noise import zero_terminal_snr_alphas_cumprod
from lib_lora.engine.targets import select_targets
from lib_lora.events import Events, StopToken
from lib_lora.jobs.lora_files import file_layouts, load_network_weights
from lib_lora.standalone.bundle import DiffusersBundle

STAGE = "sampling"
LoraSpec = tuple[str | os.PathLike, float]


def euler_schedule(alphas_cumprod: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps, sigmas + a final 0) for ``steps`` Euler steps evenly spaced over t = 999 .. 0,
    sigma interpolated in log space at fractional t (k-diffusion's discretisation of the DDPM schedule)."""
    ac = alphas_cumprod.double()
    log_sigmas = ((1 - ac) / ac).sqrt().log()
    t = torch.linspace(len(ac) - 1, 0, steps, dtype=torch.float64)
    low, high = t.floor().long(), t.ceil().long()
    frac = t - low
    sigmas = ((1 - frac) * log_sigmas[low] + frac * log_sigmas[high]).exp()
    return t.float(), torch.cat([sigmas, sigmas.new_zeros(1)]).float()


ZTSNR_LAST_ALPHA_CUMPROD = 4.8973451890853435e-08  # the webui's stand-in for ᾱ = 0 at the last step


def sampling_alphas_cumprod(alphas_cumprod: torch.Tensor, zero_terminal_snr: bool) -> torch.Tensor:
    """The schedule to sample with: as trained, or rescaled to zero terminal SNR with a finite last step."""
    if not zero_terminal_snr:
        return alphas_cumprod
    rescaled = zero_terminal_snr_alphas_cumprod(alphas_cumprod)
    rescaled[-1] = ZTSNR_LAST_ALPHA_CUMPROD
    return rescaled.to(alphas_cumprod.dtype)


@contextlib.contextmanager
def eval_modes(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Every module (and submodule) in eval mode for the block; modes restored exactly afterwards."""
    saved = [(sub, sub.training) for module in modules for sub in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for sub, mode in saved:
            sub.training = mode


@contextlib.contextmanager
def applied_loras(bundle: DiffusersBundle, loras: Sequence[LoraSpec]) -> Iterator[list[LoRANetwork]]:
    """Each LoRA file built as a network on the bundle's modules, applied at its weight, restored on exit."""
    networks: list[LoRANetwork] = []
    if not loras:
        yield networks
        return
    unet, encoders, naming = bundle.lora_hosts()
    targets = select_targets(bundle.family, unet, encoders, conv=True)
    keys = [target.key for target in targets]
    try:
        for path, weight in loras:
            layouts = file_layouts(path, keys, bundle.family, naming)
            network = LoRANetwork(
                targets, rank=1, module_layouts=layouts, naming=naming, family=bundle.family, multiplier=float(weight)
            )
            load_network_weights(network, path, strict=True)
            network.eval()
            network.apply_to()
            networks.append(network)
        yield networks
    finally:
        for network in reversed(networks):
            network.restore()


def latents_to_images(images: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [-1, 1] -> RGB PIL images."""
    array = ((images.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(np.ascontiguousarray(a.permute(1, 2, 0).numpy()), "RGB") for a in array]


def _check(prompts: Sequence[str], steps: int, cfg: float, width: int, height: int) -> None:
    if isinstance(prompts, str) or not prompts:
        raise UserError("Give a list of one or more prompts to sample.")
    if steps < 1:
        raise UserError(f"Sampling steps must be 1 or more, not {steps}.")
    if cfg < 0:
        raise UserError(f"CFG scale must not be negative, not {cfg}.")
    for label, value in (("width", width), ("height", height)):
        if value < 64 or value % 8:
            raise UserError(f"Sample {label} {value} is invalid: it must be a multiple of 8, at least 64.")


@torch.no_grad()
def sample_latents(
    bundle: DiffusersBundle,
    prompt: str,
    negative: str,
    *,
    seed: int,
    steps: int,
    cfg: float,
    width: int,
    height: int,
    on_step=None,
    stop: StopToken | None = None,
    v_prediction: bool | None = None,
    zero_terminal_snr: bool | None = None,
) -> torch.Tensor | None:
    """Unscaled latents [1, 4, h/8, w/8] for one prompt (None when stopped). ``v_prediction`` /
    ``zero_terminal_snr``: None = as the bundle says."""
    device = bundle.device
    v_pred = bundle.v_prediction if v_prediction is None else v_prediction
    ztsnr = getattr(bundle, "zero_terminal_snr", False) if zero_terminal_snr is None else zero_terminal_snr
    guided = cfg != 1.0
    texts = [negative, prompt] if guided else [prompt]
    cond = bundle.encode_text(texts)
    size = None
    if bundle.family == "sdxl":
        size = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).expand(len(texts), 6)
    timesteps, sigmas = euler_schedule(sampling_alphas_cumprod(bundle.alphas_cumprod, bool(ztsnr)), steps)
    generator = torch.Generator().manual_seed(int(seed))
    x = torch.randn((1, 4, height // 8, width // 8), generator=generator, dtype=torch.float32) * sigmas[0]
    x = x.to(device)
    for i in range(steps):
        if stop is not None and stop.requested:
            return None
        sigma = float(sigmas[i])
        scale_in = 1.0 / (sigma**2 + 1.0) ** 0.5
        model_in = (x * scale_in).expand(len(texts), -1, -1, -1)
        t = timesteps[i].expand(len(texts))
        out = bundle.denoise(model_in, t, cond, size).float()
        if guided:
            uncond, conditioned = out.chunk(2)
            out = uncond + cfg * (conditioned - uncond)
        if v_pred:
            denoised = x / (sigma**2 + 1.0) - out * (sigma * scale_in)
        else:
            denoised = x - sigma * out
        derivative = (x - denoised) / sigma
        x = x + derivative * (float(sigmas[i + 1]) - sigma)
        if on_step is not None:
            on_step()
    return x / bundle.latent_scaling


def generate(
    bundle: DiffusersBundle,
    prompts: Sequence[str],
    *,
    negative: str = "",
    seed: int = 0,
    steps: int = 20,
    cfg: float = 7.0,
    width: int = 512,
    height: int = 512,
    lora: Sequence[LoraSpec] = (),
    events: Events | None = None,
    stop: StopToken | None = None,
    v_prediction: bool | None = None,
    zero_terminal_snr: bool | None = None,
) -> list[Image.Image]:
    """One image per prompt (image i uses ``seed + i``), with the LoRA files in ``lora`` applied at
    their weights. The same arguments give the same images; afterwards the model computes exactly
    what it did before. A stop returns the images finished so far."""
    _check(prompts, steps, cfg, width, height)
    events = events or Events()
    total = len(prompts) * steps
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        events.progress(STAGE, done, total)

    images: list[Image.Image] = []
    with eval_modes(bundle.modules()), applied_loras(bundle, lora):
        for index, prompt in enumerate(prompts):
            latents = sample_latents(
                bundle, prompt, negative, seed=seed + index, steps=steps, cfg=cfg, width=width, height=height,
                on_step=tick, stop=stop, v_prediction=v_prediction, zero_terminal_snr=zero_terminal_snr,
            )  # fmt: skip
            if latents is None:
                break
            images += latents_to_images(bundle.decode_latents(latents))
    return images


def training_renderer(bundle: DiffusersBundle, cfg: Any) -> Callable[[Any, int], Image.Image] | None:
    """Sample images during training (``cfg``'s sample settings): this sampler on the model with the
    live LoRA; None when the run samples nothing."""
    if not (cfg.sample_every_n_epochs and cfg.sample_prompts):
        return None

    def render(prompt: Any, seed: int) -> Image.Image:
        return generate(
            bundle, [prompt.prompt], negative=prompt.negative, seed=seed, steps=prompt.steps,
            cfg=prompt.cfg_scale, width=prompt.width, height=prompt.height,
            v_prediction=getattr(cfg, "v_parameterization", None), zero_terminal_snr=getattr(cfg, "zero_terminal_snr", None),
        )[0]  # fmt: skip

    return render
