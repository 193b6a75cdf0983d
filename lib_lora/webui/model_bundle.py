"""The engine's :class:`~lib_lora.engine.bundle.ModelBundle` over the webui's loaded checkpoint.

Training runs on ``shared.sd_model``'s own modules (no second copy in VRAM) and through the
webui's own code paths, so what is learnt is what txt2img sees:

- text: SD1 ``sd_model.get_learned_conditioning`` (the ``FrozenCLIPEmbedderWithCustomWords``
  hijack: CLIP skip = ``opts.CLIP_stop_at_last_layers``, emphasis, 75-token chunks); SDXL each
  text embedder of ``conditioner`` (the webui's CLIP-L and bigG wrappers), called directly because
  ``GeneralConditioner`` runs embedders with ``is_trainable=False`` under ``no_grad``. Captions are
  escaped (``( ) [ ]``) so ``hu_tao_(genshin_impact)`` is read literally, not as a weight.
- SDXL vector: the pooled bigG output, then the conditioner's size embedders fed with our per-image
  original size, crop and target size (``size_cond``), in the conditioner's order.
- UNet: ``sd_model.apply_model`` (the webui's dtype casts and autocast, SDXL's ``OpenAIWrapper``).
- VAE: SD1 ``encode_first_stage`` (the posterior) sampled with our generator (ldm's
  ``get_first_stage_encoding`` would use the global RNG); SDXL the encoder + ``quant_conv``
  moments, likewise. Unscaled latents; float32 retry when the half-precision VAE gives NaN.
- schedule ``alphas_cumprod_original`` (``alphas_cumprod`` may be a sampling-time replacement).

Memory while training: the UNet's ldm/sgm ``CrossAttention`` layers run through torch's
``scaled_dot_product_attention`` (:mod:`lib_lora.engine.attention`, an instance ``forward`` for the
run only) whatever the webui's cross-attention setting; the class-level optimisation switch is
left to the webui. Under the webui's own FP8 weight option the float8 weights are trained on as
they are (its autocast upcasts them; ``dtype`` is then its UNet compute dtype) and left as they
were; ``offload_modules`` names the VAE and text modules a run may move off the GPU once cached.

:class:`TrainingSession` wraps a whole run: it refuses unsupported models before anything changes,
clears the built-in Lora's applied networks, undoes the attention optimisations as the built-in
trainers do, takes ``--medvram``'s module swapping out of the way, and puts every parameter's
device, dtype and ``requires_grad``, every module's mode and instance ``forward``, the checkpoint
flags, the hooks and ``parallel_processing_allowed`` back afterwards — after a normal end, a Stop,
an interrupt, an out-of-memory error or any exception — then frees VRAM.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lib_lora.common.errors import UserError
from lib_lora.common.tags import escape_for_prompt
from lib_lora.engine.attention import SdpaAttention
from lib_lora.engine.bundle import TextCond, frozen_base

NO_MODEL = "No Stable Diffusion checkpoint is loaded: choose one in the checkpoint list at the top of the page."
LOWVRAM = (
    "Training is not possible with --lowvram (the webui keeps only one UNet block on the GPU at a time); "
    "restart the webui without --lowvram (--medvram works)."
)
SIZE_KEYS = ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")
CHUNK_TOKENS = {None: 1, 75: 1, 150: 2, 225: 3}
_MISSING = object()


# -- what the loaded model is ------------------------------------------------------------------------


def detect_family(sd_model: Any) -> str | None:
    """``sd1`` | ``sdxl`` | ``sd2`` | ``sd3`` | ``flux`` | None, from the webui's flags and structure."""
    if sd_model is None:
        return None
    if getattr(sd_model, "is_sd3", False):
        return "sd3"
    if getattr(sd_model, "is_flux", False) or "flux" in type(sd_model).__name__.lower():
        return "flux"
    if getattr(sd_model, "is_sdxl", False):
        return "sdxl"
    if getattr(sd_model, "is_sd2", False):
        return "sd2"
    if getattr(sd_model, "is_sd1", False):
        return "sd1"
    if getattr(sd_model, "conditioner", None) is not None:
        return "sdxl"
    cond = getattr(sd_model, "cond_stage_model", None)
    wrapped = getattr(cond, "wrapped", cond)
    if hasattr(wrapped, "model"):
        return "sd2"
    if hasattr(wrapped, "transformer"):
        return "sd1"
    return None


# -- prediction type and noise schedule ----------------------------------------------------------------
# What AUTOMATIC1111 1.10.1 itself honours, and nothing it does not claim:
# - v-prediction is ``sd_model.parameterization == "v"``: ldm's LatentDiffusion takes it from the model's
#   config (a ``.yaml`` named like the checkpoint beside it: sd_models_config.find_checkpoint_config_near_filename;
#   SD2-v found by probing the UNet: is_using_v_parameterization_for_sd2), sgm's SDXL from its denoiser's
#   ``VScaling`` (sd_models_xl.extend_sdxl); the samplers choose their V denoiser from that attribute
#   (sd_samplers_kdiffusion / sd_samplers_timesteps).
# - zero terminal SNR is the setting ``opts.sd_noise_schedule == "Zero Terminal SNR"`` (Settings > Sampler
#   parameters > Noise schedule for sampling), which sd_models.apply_alpha_schedule_override applies by
#   rescaling ``alphas_cumprod`` for sampling.
# 1.10.1 does not read the ``v_pred`` / ``ztsnr`` keys that NoobAI-XL-style checkpoints carry (the webui's
# later dev branch, Forge and ComfyUI do): we read them from the checkpoint's safetensors header, train as
# they say (the loss target must be what the model predicts), and say in the model line that this webui
# samples the model otherwise until its config or setting says so.
ZTSNR_SCHEDULE = "Zero Terminal SNR"
CHECKPOINT_FLAGS = ("v_pred", "ztsnr")


@dataclass(frozen=True)
class Prediction:
    """How the loaded model predicts and which schedule it was trained with, and why."""

    v_prediction: bool
    zero_terminal_snr: bool
    notes: tuple[str, ...] = ()  # where the checkpoint and the webui disagree (plain sentences)

    def describe(self) -> str:
        """The model line's words: "v-prediction, zero terminal SNR" / "epsilon"."""
        words = ["v-prediction" if self.v_prediction else "epsilon"]
        if self.zero_terminal_snr:
            words.append("zero terminal SNR")
        return ", ".join(words)


@functools.lru_cache(maxsize=8)
def _flag_keys(path: str, mtime_ns: int, size: int) -> frozenset[str]:
    from lib_lora.formats.safetensors_io import read_header

    try:
        return frozenset(k for k in read_header(path).tensors if k in CHECKPOINT_FLAGS)
    except (UserError, OSError, ValueError):
        return frozenset()  # unreadable: the file claims nothing


def checkpoint_flags(sd_model: Any) -> frozenset[str]:
    """Which of ``v_pred`` / ``ztsnr`` the loaded checkpoint's file carries (a .safetensors header
    read, cached per file version; other formats and missing files claim nothing)."""
    info = getattr(sd_model, "sd_checkpoint_info", None)
    filename = getattr(info, "filename", None)
    if not filename or not str(filename).lower().endswith(".safetensors"):
        return frozenset()
    try:
        stat = os.stat(filename)
    except OSError:
        return frozenset()
    return _flag_keys(str(filename), stat.st_mtime_ns, stat.st_size)


def detect_prediction(sd_model: Any) -> Prediction:
    """v-prediction and zero terminal SNR of the loaded model: the webui's own view (its model config,
    its noise-schedule setting), or the checkpoint's ``v_pred`` / ``ztsnr`` key (see above)."""
    from modules import shared

    webui_v = getattr(sd_model, "parameterization", "eps") == "v"
    webui_ztsnr = getattr(shared.opts, "sd_noise_schedule", "Default") == ZTSNR_SCHEDULE
    flags = checkpoint_flags(sd_model)
    notes = []
    if "v_pred" in flags and not webui_v:
        notes.append(
            "The checkpoint has a v_pred key, so training uses v-prediction; this webui does not read that key and "
            "samples the model as epsilon (noisy txt2img images and samples) unless a v-prediction .yaml config "
            "named like the checkpoint sits beside it."
        )
    if "ztsnr" in flags and not webui_ztsnr:
        notes.append(
            "The checkpoint has a ztsnr key, so training uses the zero-terminal-SNR schedule; for txt2img set "
            f"Settings > Sampler parameters > Noise schedule for sampling to {ZTSNR_SCHEDULE}."
        )
    return Prediction(webui_v or "v_pred" in flags, webui_ztsnr or "ztsnr" in flags, tuple(notes))


def _text_embedders(sd_model: Any) -> list[Any]:
    return [e for e in sd_model.conditioner.embedders if getattr(e, "input_key", None) == "txt"]


def model_problem(sd_model: Any, training: bool = True) -> str | None:
    """Why the loaded model cannot be trained (one sentence), or None when it can. ``training``
    False: only why it cannot test our LoRAs in txt2img (--lowvram, FP8 weights or an SD Unet
    stop training, not txt2img)."""
    from modules import devices, shared

    if sd_model is None:
        return NO_MODEL
    if training and getattr(shared.cmd_opts, "lowvram", False):
        return LOWVRAM
    forge = getattr(sd_model, "forge_objects", None) is not None
    if forge and (
        getattr(sd_model, "first_stage_model", None) is None
        or getattr(sd_model, "cond_stage_model", None) is None
        or not hasattr(sd_model, "model")
    ):
        return "This is a Forge model object; Train LoRA trains on AUTOMATIC1111 1.10's ldm/sgm models only."
    family = detect_family(sd_model)
    if family == "sd3":
        return "SD3 models are not supported; load an SD1.x or SDXL checkpoint to train a LoRA."
    if family == "flux":
        return "Flux models are not supported; load an SD1.x or SDXL checkpoint to train a LoRA."
    if family == "sd2":
        return "SD2.x models are not supported yet; load an SD1.x or SDXL checkpoint to train a LoRA."
    if family is None:
        return f"This model type ({type(sd_model).__name__}) is not supported; Train LoRA trains SD1.x and SDXL checkpoints."
    conditioning_key = getattr(getattr(sd_model, "model", None), "conditioning_key", None)
    if getattr(sd_model, "is_sdxl_inpaint", False) or conditioning_key in ("hybrid", "concat"):
        return "Inpainting and instruct-pix2pix models are not supported; load a regular SD1.x or SDXL checkpoint."
    if family == "sdxl":
        embedders = _text_embedders(sd_model)
        kinds = [_embedder_kind(e) for e in embedders]
        if kinds != ["hf", "openclip"]:
            return "This SDXL model has no CLIP-L + OpenCLIP bigG text encoder pair (an SDXL refiner?); only SDXL base models are supported."
        for embedder in sd_model.conditioner.embedders:
            key = getattr(embedder, "input_key", None)
            if key != "txt" and key not in SIZE_KEYS:
                return f"This SDXL model's conditioner needs {key!r}, which Train LoRA does not provide (an SDXL refiner?)."
    if not training:
        return None
    if getattr(devices, "fp8", False):
        from lib_lora.engine.fp8 import float8_problem

        device = torch.device(devices.device) if devices.device is not None else torch.device("cpu")
        problem = float8_problem(device)
        if problem:
            return problem
    try:
        from modules import sd_unet

        current = getattr(sd_unet, "current_unet", None)
    except ImportError:
        current = None
    if current is not None:
        label = getattr(getattr(current, "option", None), "label", type(current).__name__)
        return f"The SD Unet option {label!r} is active; set Settings > Stable Diffusion > SD Unet to None to train a LoRA."
    unet = sd_model.model.diffusion_model
    first = next(unet.parameters(), None)
    device = torch.device(devices.device) if devices.device is not None else torch.device("cpu")
    if (
        first is not None
        and first.device.type == "cpu"
        and device.type != "cpu"
        and not getattr(sd_model, "lowvram", False)
    ):
        return (
            "The checkpoint is unloaded to RAM; load it again (Settings > Actions > Reload checkpoint) before training."
        )
    return None


def check_model(sd_model: Any, training: bool = True) -> None:
    problem = model_problem(sd_model, training)
    if problem:
        raise UserError(problem)


def _embedder_kind(embedder: Any) -> str | None:
    wrapped = getattr(embedder, "wrapped", embedder)
    if hasattr(wrapped, "transformer") and hasattr(wrapped.transformer, "text_model"):
        return "hf"
    model = getattr(wrapped, "model", None)
    if model is not None and hasattr(getattr(model, "transformer", None), "resblocks"):
        return "openclip"
    return None


# -- the bundle ----------------------------------------------------------------------------------------


class WebuiBundle:
    """``ModelBundle`` over ``shared.sd_model`` (see the module docstring)."""

    def __init__(self, sd_model: Any, *, max_token_length: int | None = None) -> None:
        from modules import devices, shared

        check_model(sd_model)
        self.sd_model = sd_model
        self.family = detect_family(sd_model) or "sd1"
        prediction = detect_prediction(sd_model)
        self.v_prediction = prediction.v_prediction  # v_parameterization / zero_terminal_snr when the config
        self.zero_terminal_snr = prediction.zero_terminal_snr  # leaves them empty (jobs.train_options.resolve_*)
        info = getattr(sd_model, "sd_checkpoint_info", None)
        filename = getattr(info, "filename", None) or getattr(sd_model, "sd_model_checkpoint", None)
        self.model_name = os.path.basename(filename) if filename else str(getattr(info, "model_name", "model"))
        self.model_hash = getattr(info, "hash", None)
        self.model_sha256 = getattr(info, "sha256", None)
        # without the webui's hashes (--no-hashing) do not hash a multi-GB checkpoint ourselves
        self.model_path = (
            filename
            if (filename and (self.model_sha256 or not getattr(shared.cmd_opts, "no_hashing", False)))
            else None
        )
        self.device = torch.device(devices.device) if devices.device is not None else torch.device("cpu")
        unet = sd_model.model.diffusion_model
        self.dtype = next(unet.parameters()).dtype
        # the webui's FP8 weight option stores Linear/Conv2d weights in float8 and computes in its
        # UNet dtype under its autocast: train on top of that, in that dtype
        self.float8_weights = bool(getattr(devices, "fp8", False)) or "float8" in str(self.dtype)
        if "float8" in str(self.dtype):
            self.dtype = getattr(devices, "dtype_unet", None) or torch.float16
        self.latent_scaling = float(sd_model.scale_factor)
        alphas = getattr(sd_model, "alphas_cumprod_original", None)
        if alphas is None:
            alphas = sd_model.alphas_cumprod
        self.alphas_cumprod = torch.as_tensor(alphas).detach().to(self.device, torch.float32)
        self.clip_skip = int(shared.opts.CLIP_stop_at_last_layers) if self.family == "sd1" else None
        if max_token_length not in CHUNK_TOKENS:
            raise UserError(f"max_token_length must be 75, 150 or 225, not {max_token_length!r}.")
        self.chunks = CHUNK_TOKENS[max_token_length]
        self.medvram = bool(getattr(sd_model, "lowvram", False))
        self.sdpa = True  # training attention through torch's SDPA (engine.attention), whatever the webui's setting
        self._te_training = False
        self._empty: dict[str, torch.Tensor] = {}

    # -- structure ---------------------------------------------------------------------------------
    def text_encoders(self) -> dict[str, nn.Module]:
        if self.family == "sd1":
            return {"te": self.sd_model.cond_stage_model.wrapped.transformer}
        te1, te2 = _text_embedders(self.sd_model)
        return {"te1": te1.wrapped.transformer, "te2": te2.wrapped.model}

    def lora_hosts(self) -> tuple[nn.Module, dict[str, nn.Module], dict[str, str]]:
        naming = {"unet": "ldm"}
        if self.family == "sd1":
            naming["te"] = "hf"
        else:
            naming.update(te1="hf", te2="openclip")
        return self.sd_model.model.diffusion_model, self.text_encoders(), naming

    def text_modules(self) -> list[nn.Module]:
        """The modules the text path runs (moved to the device under --medvram)."""
        if self.family == "sd1":
            return [self.sd_model.cond_stage_model]
        return [self.sd_model.conditioner]

    def offload_modules(self, part: str) -> list[nn.Module]:
        """What may leave the GPU during a run: ``vae`` once latents are cached, ``text`` once every
        caption is encoded (``cache_text_encoder_outputs``). Under --medvram they are the webui's
        to move."""
        if self.medvram:
            return []
        if part == "vae":
            return [self.sd_model.first_stage_model]
        return self.text_modules() if part == "text" else []

    def vae_identity(self) -> str:
        from modules import sd_vae

        vae = None
        with contextlib.suppress(Exception):
            vae = sd_vae.get_loaded_vae_hash() or sd_vae.get_loaded_vae_name()
        if not vae:
            info = getattr(self.sd_model, "sd_checkpoint_info", None)
            vae = "ckpt-" + str(getattr(info, "shorthash", None) or getattr(info, "hash", None) or self.model_name)
        return f"webui-{vae}"

    # -- VAE -----------------------------------------------------------------------------------------
    def _moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and std of the VAE for images ``x`` (already on the VAE's device/dtype)."""
        fsm = self.sd_model.first_stage_model
        if self.family == "sd1":
            posterior = self.sd_model.encode_first_stage(x)  # ldm: a DiagonalGaussianDistribution
            return posterior.mean, posterior.std
        # sgm's encode samples inside its regularizer with the global RNG: take the moments instead
        moments = fsm.encoder(x)
        if getattr(fsm, "quant_conv", None) is not None:
            moments = fsm.quant_conv(moments)
        mean, logvar = torch.chunk(moments, 2, dim=1)
        logvar = torch.clamp(logvar, -30.0, 20.0)
        return mean, torch.exp(0.5 * logvar)

    def _sample(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        fsm = self.sd_model.first_stage_model
        dtype = next(fsm.parameters()).dtype
        with torch.no_grad():
            mean, std = self._moments(images.to(self.device, dtype))
        noise = torch.randn(mean.shape, generator=generator, device=generator.device if generator else mean.device)
        return mean.float() + std.float() * noise.to(mean.device, torch.float32)

    @contextlib.contextmanager
    def _vae_on_device(self) -> Iterator[None]:
        fsm = self.sd_model.first_stage_model
        if not self.medvram:
            yield
            return
        fsm.to(self.device)
        try:
            yield
        finally:
            fsm.to("cpu")

    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        fsm = self.sd_model.first_stage_model
        state = generator.get_state() if generator is not None else None
        with self._vae_on_device():
            latents = self._sample(images, generator)
            dtype = next(fsm.parameters()).dtype
            if not torch.isfinite(latents).all() and dtype != torch.float32:
                # the half VAE overflowed (SDXL's does): once more in float32, same noise
                if generator is not None:
                    generator.set_state(state)
                fsm.to(torch.float32)
                try:
                    latents = self._sample(images, generator)
                finally:
                    fsm.to(dtype)
        return latents

    # -- text ----------------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        from modules import devices

        return devices.autocast()

    @property
    def _chunk_tokens(self) -> int:
        if self.family == "sd1":
            wrapper = self.sd_model.cond_stage_model
        else:
            wrapper = _text_embedders(self.sd_model)[0]
        return int(getattr(wrapper, "chunk_length", 75)) + 2

    def _pad_chunks(self, z: torch.Tensor, empty_fn: Any) -> torch.Tensor:
        per_chunk = self._chunk_tokens
        have = max(1, z.shape[1] // per_chunk)
        if have >= self.chunks:
            return z[:, : self.chunks * per_chunk]
        pad = empty_fn()[:, :per_chunk].to(z.dtype).expand(z.shape[0], -1, -1)
        return torch.cat([z] + [pad] * (self.chunks - have), dim=1)

    def encode_text(self, captions: list[str]) -> TextCond:
        texts = [escape_for_prompt(c) for c in captions]
        with self._autocast():
            if self.family == "sd1":
                z = self.sd_model.get_learned_conditioning(texts)
                z = self._pad_chunks(z, lambda: self.sd_model.get_learned_conditioning([""]))
                self._check_grad(z)
                return TextCond(z)
            from modules.prompt_parser import SdConditioning

            batch = SdConditioning(texts, width=1024, height=1024)
            contexts, pooled = [], []
            for embedder in _text_embedders(self.sd_model):
                out = embedder(batch)
                parts = list(out) if isinstance(out, (tuple, list)) else [out]
                for part in parts:
                    if part.dim() == 3:
                        contexts.append(self._pad_chunks(part, lambda e=embedder: self._empty_of(e)))
                    elif part.dim() == 2:
                        pooled.append(part)
            context = torch.cat(contexts, dim=2)
            vector = torch.cat(pooled, dim=1) if pooled else None
            self._check_grad(context)
            return TextCond(context, vector)

    def _empty_of(self, embedder: Any) -> torch.Tensor:
        from modules.prompt_parser import SdConditioning

        out = embedder(SdConditioning([""], width=1024, height=1024))
        return out[0] if isinstance(out, (tuple, list)) else out

    def _check_grad(self, z: torch.Tensor) -> None:
        if self._te_training and torch.is_grad_enabled() and not z.requires_grad:
            raise UserError(
                "The webui's text-encoder path produced no gradients (it runs under no_grad or inference mode), "
                "so the text encoder cannot be trained here; train the UNet only (network_train_unet_only)."
            )

    # -- UNet ----------------------------------------------------------------------------------------
    def size_vector(self, size_cond: torch.Tensor | None, batch: int) -> list[torch.Tensor]:
        """The conditioner's size embeddings of ``size_cond`` [B, 6] (original h, w, crop top,
        left, target h, w), in the conditioner's order."""
        if size_cond is None:
            raise ValueError("SDXL needs size conditioning for every image")
        size_cond = size_cond.to(self.device, torch.float32)
        inputs = {
            "original_size_as_tuple": size_cond[:, 0:2],
            "crop_coords_top_left": size_cond[:, 2:4],
            "target_size_as_tuple": size_cond[:, 4:6],
        }
        parts = []
        for embedder in self.sd_model.conditioner.embedders:
            key = getattr(embedder, "input_key", None)
            if key in inputs:
                parts.append(embedder(inputs[key]))
        return parts

    def denoise(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, text: TextCond, size_cond: torch.Tensor | None
    ) -> torch.Tensor:
        context = text.context.to(self.device)
        if self.family == "sd1":
            return self.sd_model.apply_model(noisy_latents, timesteps, context)
        pooled = text.pooled.to(self.device)
        vector = torch.cat([pooled] + [p.to(pooled.dtype) for p in self.size_vector(size_cond, pooled.shape[0])], dim=1)
        return self.sd_model.apply_model(noisy_latents, timesteps, {"crossattn": context, "vector": vector})

    # -- training mode ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def training(self, *, train_unet: bool, train_text_encoder: bool, gradient_checkpointing: bool) -> Iterator[None]:
        """Base weights frozen (the webui leaves ``requires_grad`` on), ldm/sgm's own checkpoint
        flags off (their CheckpointFunction only backprops into a block's own parameters, which
        drops LoRA gradients), our non-reentrant checkpointing on request, the UNet's attention
        through SDPA (:mod:`lib_lora.engine.attention`, per instance) unless ``sdpa`` is off; all
        undone on exit."""
        unet, encoders, _ = self.lora_hosts()
        flags = _disable_checkpoint_flags([unet, *encoders.values()])
        patched: list[tuple[nn.Module, Any]] = []
        self._te_training = train_text_encoder
        attention = SdpaAttention([unet]) if self.sdpa else contextlib.nullcontext()
        try:
            with frozen_base([self.sd_model], {}), attention:
                if gradient_checkpointing:
                    patched = _checkpoint_blocks(unet, encoders if train_text_encoder else {})
                yield
        finally:
            self._te_training = False
            for module, saved in reversed(patched):
                if saved is _MISSING:
                    module.__dict__.pop("forward", None)
                else:
                    module.forward = saved
            for module, name, value in flags:
                setattr(module, name, value)


def _disable_checkpoint_flags(roots: list[nn.Module]) -> list[tuple[nn.Module, str, bool]]:
    changed = []
    for root in roots:
        for module in root.modules():
            for name in ("checkpoint", "use_checkpoint"):
                value = module.__dict__.get(name)
                if value is True:
                    changed.append((module, name, True))
                    setattr(module, name, False)
    return changed


def _checkpointed(forward: Any) -> Any:
    from torch.utils.checkpoint import checkpoint

    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


def _checkpoint_blocks(unet: nn.Module, encoders: dict[str, nn.Module]) -> list[tuple[nn.Module, Any]]:
    """Wrap each UNet block (and each text-encoder layer being trained) in torch's non-reentrant
    checkpoint, per instance."""
    blocks: list[nn.Module] = []
    for name in ("input_blocks", "output_blocks"):
        blocks += list(getattr(unet, name, []))
    if getattr(unet, "middle_block", None) is not None:
        blocks.append(unet.middle_block)
    for te in encoders.values():
        for name, module in te.named_modules():
            if name.endswith(("encoder.layers", "transformer.resblocks")):
                blocks += list(module)
    patched = []
    for block in blocks:
        saved = block.__dict__.get("forward", _MISSING)
        patched.append((block, saved))
        block.forward = _checkpointed(block.forward)
    return patched


# -- the session -------------------------------------------------------------------------------------


class ModelSnapshot:
    """Every parameter's and buffer's tensor, device, dtype and ``requires_grad``; every module's
    train/eval mode, instance ``forward`` and checkpoint flags. :meth:`restore` puts them back."""

    def __init__(self, root: nn.Module) -> None:
        self.tensors: list[tuple[nn.Module, str, str, torch.Tensor, torch.device, torch.dtype, bool]] = []
        self.modules: list[tuple[nn.Module, bool, Any, dict[str, Any]]] = []
        for module in root.modules():
            for kind in ("_parameters", "_buffers"):
                for name, tensor in getattr(module, kind).items():
                    if tensor is not None:
                        self.tensors.append(
                            (module, kind, name, tensor, tensor.device, tensor.dtype, tensor.requires_grad)
                        )
            flags = {n: module.__dict__[n] for n in ("checkpoint", "use_checkpoint") if n in module.__dict__}
            self.modules.append((module, module.training, module.__dict__.get("forward", _MISSING), flags))

    def restore(self) -> None:
        with torch.no_grad():
            for module, kind, name, tensor, device, dtype, requires_grad in self.tensors:
                table = getattr(module, kind)
                if table.get(name) is not tensor:
                    table[name] = tensor
                if tensor.device != device or tensor.dtype != dtype:
                    tensor.data = tensor.data.to(device=device, dtype=dtype)
                if tensor.requires_grad != requires_grad and (tensor.is_leaf or not requires_grad):
                    tensor.requires_grad_(requires_grad)
        for module, training, forward, flags in self.modules:
            module.training = training
            if forward is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = forward
            module.__dict__.pop("_lib_lora_mha_patch", None)
            module.__dict__.update(flags)


class MedvramGuard:
    """``--medvram`` moves the UNet, the text encoders and the VAE to the GPU one at a time through
    forward pre-hooks (``lowvram.send_me_to_gpu``) and wrapped VAE ``encode``/``decode``. Moving a
    module away between a forward and its backward would leave autograd with weights on the wrong
    device, so for a run the hooks are taken out and the UNet and text encoders stay on the GPU
    (the VAE goes there only while it encodes or decodes); afterwards everything is back on the CPU
    with the hooks in place, as the webui expects."""

    HOOK = "send_me_to_gpu"

    def __init__(self, sd_model: Any) -> None:
        self.sd_model = sd_model
        self.hooks: list[tuple[nn.Module, int, Any]] = []
        self.methods: list[tuple[Any, str, Any]] = []

    def send_everything_to_cpu(self) -> None:
        from modules import lowvram

        lowvram.send_everything_to_cpu()

    def suspend(self) -> None:
        for module in self.sd_model.modules():
            for key, hook in list(module._forward_pre_hooks.items()):
                if getattr(hook, "__name__", "") == self.HOOK:
                    self.hooks.append((module, key, hook))
                    del module._forward_pre_hooks[key]
        fsm = self.sd_model.first_stage_model
        for name in ("encode", "decode"):
            if name in fsm.__dict__:
                self.methods.append((fsm, name, fsm.__dict__.pop(name)))

    def resume(self) -> None:
        for module, key, hook in self.hooks:
            module._forward_pre_hooks[key] = hook
        for obj, name, method in self.methods:
            obj.__dict__[name] = method
        self.hooks.clear()
        self.methods.clear()


def clear_cond_caches() -> None:
    """The webui caches prompt conditioning by prompt text, checkpoint and settings — not by our
    LoRA's state — so conditioning computed while a LoRA trains must never be reused."""
    from modules import processing

    for cls_name, attrs in (
        ("StableDiffusionProcessing", ("cached_c", "cached_uc")),
        ("StableDiffusionProcessingTxt2Img", ("cached_hr_c", "cached_hr_uc")),
    ):
        cls = getattr(processing, cls_name, None)
        for attr in attrs:
            if cls is not None and hasattr(cls, attr):
                setattr(cls, attr, [None, None])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Sampling seeds the global RNGs (the webui's ``rng`` does ``torch.manual_seed``): keep ours."""
    import numpy as np

    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    py = random.getstate()
    npy = np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(py)
        np.random.set_state(npy)


@contextlib.contextmanager
def preserved_params_txt() -> Iterator[None]:
    """txt2img processing writes the last prompt to ``params.txt`` (the "paste last prompt"
    button reads it); a sample rendered during training must not replace the user's."""
    from modules import paths

    from lib_lora.common.fsutil import atomic_write_bytes

    path = os.path.join(paths.data_path, "params.txt")
    try:
        with open(path, "rb") as handle:
            saved: bytes | None = handle.read()
    except OSError:
        saved = None
    try:
        yield
    finally:
        if saved is not None:
            atomic_write_bytes(path, saved)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)


class TrainingSession:
    """Everything around a training run on the webui's model (see the module docstring)."""

    def __init__(self, bundle: WebuiBundle) -> None:
        self.bundle = bundle
        self.sd_model = bundle.sd_model
        self.medvram: MedvramGuard | None = None
        self.snapshot: ModelSnapshot | None = None
        self._undid_optimizations = False
        self._parallel: Any = None
        self.restored_lora_layers = 0

    def __enter__(self) -> TrainingSession:
        from modules import sd_hijack, shared

        from lib_lora.webui import lora_builtin

        check_model(self.sd_model)
        self.restored_lora_layers = lora_builtin.clear_applied(self.sd_model)
        if self.bundle.medvram:
            self.medvram = MedvramGuard(self.sd_model)
            self.medvram.send_everything_to_cpu()
        self.snapshot = ModelSnapshot(self.sd_model)
        self._parallel = shared.parallel_processing_allowed
        try:
            if self.medvram is not None:
                self.medvram.suspend()
                self.sd_model.model.to(self.bundle.device)
                for module in self.bundle.text_modules():
                    module.to(self.bundle.device)
            if not getattr(shared.opts, "training_xattention_optimizations", False):
                sd_hijack.undo_optimizations()  # as the built-in trainers do
                self._undid_optimizations = True
            shared.parallel_processing_allowed = False
            clear_cond_caches()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        from modules import devices, sd_hijack, shared

        try:
            if self.snapshot is not None:
                self.snapshot.restore()
        finally:
            try:
                if self.medvram is not None:
                    self.medvram.resume()
            finally:
                try:
                    if self._undid_optimizations:
                        sd_hijack.apply_optimizations()
                        self._undid_optimizations = False
                finally:
                    shared.parallel_processing_allowed = self._parallel
                    clear_cond_caches()
                    self.snapshot = None
                    gc.collect()
                    devices.torch_gc()

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        """Around the webui's txt2img processing inside a run: our RNG, progress fields,
        conditioning caches and the user's ``params.txt`` kept apart; under --medvram the VAE goes
        to the GPU for the decode."""
        from lib_lora.webui.runtime import preserved_progress

        clear_cond_caches()
        with preserved_rng(), preserved_progress(), preserved_params_txt(), self.bundle._vae_on_device():
            try:
                yield
            finally:
                clear_cond_caches()
