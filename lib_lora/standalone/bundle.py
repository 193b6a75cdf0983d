"""The standalone host's model: diffusers' UNet and VAE, transformers' CLIP text encoders.

:class:`DiffusersBundle` implements the engine's :class:`~lib_lora.engine.bundle.ModelBundle` with
sd-scripts' text path (long prompts in 75-token chunks, clip skip, SDXL's two encoders and pooled
embedding) and diffusers' own SDXL vector conditioning.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from lib_lora.common.errors import UserError
from lib_lora.engine.bundle import TextCond, frozen_base
from lib_lora.engine.targets import check_family

LATENT_SCALING = {"sd1": 0.18215, "sdxl": 0.13025}
MAX_TOKEN_LENGTHS = (75, 150, 225)
CHUNK = 77  # tokens per text-encoder pass: BOS + 75 + EOS


def ddpm_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """SD's training schedule (``scaled_linear``), computed in float32 as diffusers' DDPMScheduler does."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def text_root(te: nn.Module) -> nn.Module:
    """The module holding ``embeddings``/``encoder``/``final_layer_norm``: ``te.text_model`` on
    transformers 4.x (and CLIPTextModelWithProjection everywhere), ``te`` itself where
    transformers 5 flattened CLIPTextModel."""
    return getattr(te, "text_model", te)


def token_chunks(tokenizer, captions: Sequence[str], max_token_length: int = 75) -> torch.Tensor:
    """Token ids [B, n, 77] as sd-scripts makes them: ``max_token_length`` 75 -> one chunk; 150/225
    -> the caption tokenized to ``max_token_length + 2`` and cut into n 75-token chunks, each
    wrapped in BOS ... EOS/pad. Where pad is not EOS (SDXL's second tokenizer pads with ``!``), a
    chunk ending in a real token gets EOS last and a chunk starting with padding gets EOS first."""
    if max_token_length not in MAX_TOKEN_LENGTHS:
        raise UserError(f"max_token_length must be 75, 150 or 225, not {max_token_length}.")
    length = CHUNK if max_token_length == 75 else max_token_length + 2
    ids = tokenizer(
        list(captions), padding="max_length", truncation=True, max_length=length, return_tensors="pt"
    ).input_ids
    if length == CHUNK:
        return ids.unsqueeze(1)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    chunks = []
    for start in range(1, length - CHUNK + 2, CHUNK - 2):
        chunk = torch.cat([ids[:, :1], ids[:, start : start + CHUNK - 2], ids[:, -1:]], dim=1)
        if pad != eos:
            chunk[(chunk[:, -2] != eos) & (chunk[:, -2] != pad), -1] = eos
            chunk[chunk[:, 1] == pad, 1] = eos
        chunks.append(chunk)
    return torch.stack(chunks, dim=1)


def join_chunks(hidden: torch.Tensor, chunks: int) -> torch.Tensor:
    """[B, n*77, D] -> [B, 1 + n*75 + 1, D]: the first BOS, every chunk's 75 inner tokens, the last
    EOS (sd-scripts' concatenation)."""
    if chunks == 1:
        return hidden
    parts = [hidden[:, :1]]
    parts += [hidden[:, start : start + CHUNK - 2] for start in range(1, chunks * CHUNK, CHUNK)]
    parts.append(hidden[:, -1:])
    return torch.cat(parts, dim=1)


def _module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a module computes in: its first parameter's, skipping float8 storage (fp8_base)."""
    for param in module.parameters():
        if "float8" not in str(param.dtype):
            return param.dtype
    return torch.float32


def _module_device(module: nn.Module) -> torch.device:
    for param in module.parameters():
        return param.device
    return torch.device("cpu")


class DiffusersBundle:
    """A loaded SD1.x / SDXL model on the standalone host (see ``ModelBundle`` for the contract).

    ``text_encoders``/``tokenizers``: ``{"te": CLIPTextModel}`` for SD1; ``{"te1": CLIPTextModel,
    "te2": CLIPTextModelWithProjection}`` for SDXL (te2's tokenizer pads with ``!``).
    ``clip_skip`` (SD1; 1 or None = last layer) and ``max_token_length`` (75/150/225) may be changed
    between calls.
    """

    def __init__(
        self,
        family: str,
        unet: nn.Module,
        vae: nn.Module,
        text_encoders: dict[str, nn.Module],
        tokenizers: dict[str, object],
        *,
        model_name: str,
        model_path: str | None = None,
        v_prediction: bool = False,
        clip_skip: int | None = None,
        max_token_length: int = 75,
    ) -> None:
        check_family(family)
        expected = ("te",) if family == "sd1" else ("te1", "te2")
        if tuple(sorted(text_encoders)) != expected or tuple(sorted(tokenizers)) != expected:
            raise ValueError(f"{family} needs text encoders and tokenizers {expected}")
        self.family = family
        self.unet = unet
        self.vae = vae
        self.text_encoders = dict(text_encoders)
        self.tokenizers = dict(tokenizers)
        self.model_name = model_name
        self.model_path = model_path
        self.v_prediction = bool(v_prediction)
        self.zero_terminal_snr = False  # the checkpoint carries a ``ztsnr`` key (informational)
        self.clip_skip: int | None = None
        self.max_token_length = 75
        self.set_text_options(clip_skip=clip_skip, max_token_length=max_token_length)
        self.latent_scaling = LATENT_SCALING[family]
        self.alphas_cumprod = ddpm_alphas_cumprod()
        self._vae_id: str | None = None
        self.sdpa = True  # training attention through torch's SDPA (diffusers' AttnProcessor2_0)

    @staticmethod
    def check_text_options(clip_skip: int | None, max_token_length: int) -> None:
        if max_token_length not in MAX_TOKEN_LENGTHS:
            raise UserError(f"max_token_length must be 75, 150 or 225, not {max_token_length}.")
        if clip_skip is not None and clip_skip < 1:
            raise UserError(f"clip_skip must be 1 or more, not {clip_skip}.")

    def set_text_options(self, *, clip_skip: int | None, max_token_length: int = 75) -> None:
        """Clip skip (SD1 only; SDXL always uses the penultimate layers) and the prompt length."""
        self.check_text_options(clip_skip, max_token_length)
        self.clip_skip = clip_skip if self.family == "sd1" else None
        self.max_token_length = max_token_length

    # -- ModelBundle attributes -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return _module_device(self.unet)

    @property
    def dtype(self) -> torch.dtype:
        return _module_dtype(self.unet)

    def lora_hosts(self) -> tuple[nn.Module, dict[str, nn.Module], dict[str, str]]:
        naming = {"unet": "diffusers", **{name: "hf" for name in self.text_encoders}}
        return self.unet, dict(self.text_encoders), naming

    def modules(self) -> list[nn.Module]:
        """Every module of the model (UNet, text encoders, VAE)."""
        return [self.unet, *self.text_encoders.values(), self.vae]

    def offload_modules(self, part: str) -> list[nn.Module]:
        """What may leave the GPU during a run: ``vae`` once latents are cached, ``text`` once every
        caption is encoded (``cache_text_encoder_outputs``)."""
        return [self.vae] if part == "vae" else list(self.text_encoders.values()) if part == "text" else []

    def vae_identity(self) -> str:
        """``<12 hex of a few VAE weights>-<dtype>``: the same VAE in the same precision, the same id."""
        if self._vae_id is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.vae.state_dict().items()):
                if name.startswith(("quant_conv.", "post_quant_conv.", "encoder.conv_in.", "encoder.conv_out.")):
                    digest.update(name.encode())
                    digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._vae_id = digest.hexdigest()[:12]
        return f"{self._vae_id}-{str(_module_dtype(self.vae)).replace('torch.', '')}"

    # -- latents ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _vae_in_float32(self) -> Iterator[nn.Module]:
        """The VAE upcast in place for one call (half -> float32 -> half is lossless)."""
        dtype = _module_dtype(self.vae)
        if dtype == torch.float32:
            yield self.vae
            return
        self.vae.to(torch.float32)
        try:
            yield self.vae
        finally:
            self.vae.to(dtype)

    @staticmethod
    def _posterior_sample(vae: nn.Module, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        dist = vae.encode(images.to(_module_dtype(vae))).latent_dist
        mean, std = dist.mean.float(), dist.std.float()
        noise_device = generator.device if generator is not None else mean.device
        noise = torch.randn(mean.shape, generator=generator, device=noise_device, dtype=torch.float32)
        return mean + std * noise.to(mean.device)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        images = images.to(self.device)
        state = generator.get_state() if generator is not None else None
        latents = self._posterior_sample(self.vae, images, generator)
        if not bool(torch.isfinite(latents).all()) and _module_dtype(self.vae) != torch.float32:
            if generator is not None:
                generator.set_state(state)
            with self._vae_in_float32() as vae:
                latents = self._posterior_sample(vae, images.float(), generator)
        return latents.float()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents -> images [B, 3, H, W] float32 in [-1, 1] (float32 retry on NaN/inf)."""
        latents = latents.to(self.device)
        images = self.vae.decode(latents.to(_module_dtype(self.vae))).sample.float()
        if not bool(torch.isfinite(images).all()) and _module_dtype(self.vae) != torch.float32:
            with self._vae_in_float32() as vae:
                images = vae.decode(latents.float()).sample.float()
        return images.clamp(-1.0, 1.0)

    # -- text --------------------------------------------------------------------------------------
    def tokenize(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids [B, n, 77] per text-encoder component."""
        return {name: token_chunks(tok, captions, self.max_token_length) for name, tok in self.tokenizers.items()}

    def encode_text(self, captions: list[str]) -> TextCond:
        return self.encode_tokens(self.tokenize(captions))

    def encode_tokens(self, tokens: dict[str, torch.Tensor]) -> TextCond:
        """Conditioning from :meth:`tokenize`'s ids (gradients reach text-encoder LoRAs when enabled)."""
        if self.family == "sd1":
            return TextCond(self._sd1_hidden(tokens["te"]))
        return self._sdxl_cond(tokens["te1"], tokens["te2"])

    def _sd1_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        te = self.text_encoders["te"]
        batch, chunks, _ = ids.shape
        flat = ids.reshape(batch * chunks, CHUNK).to(_module_device(te))
        skip = self.clip_skip or 1
        layers = len(text_root(te).encoder.layers)
        if not 1 <= skip <= layers:
            raise UserError(f"clip_skip {skip} is out of range: this text encoder has {layers} layers.")
        if skip == 1:
            hidden = te(flat, return_dict=True).last_hidden_state
        else:
            states = te(flat, output_hidden_states=True, return_dict=True).hidden_states
            hidden = text_root(te).final_layer_norm(states[-skip])
        return join_chunks(hidden.reshape(batch, chunks * CHUNK, -1), chunks)

    def _sdxl_cond(self, ids1: torch.Tensor, ids2: torch.Tensor) -> TextCond:
        te1, te2 = self.text_encoders["te1"], self.text_encoders["te2"]
        batch, chunks, _ = ids1.shape
        flat1 = ids1.reshape(batch * chunks, CHUNK).to(_module_device(te1))
        flat2 = ids2.reshape(batch * chunks, CHUNK).to(_module_device(te2))
        # te1: hidden_states[11] of CLIP-L's 12 layers = the penultimate; te2: the penultimate; no final LN
        hidden1 = te1(flat1, output_hidden_states=True, return_dict=True).hidden_states[-2]
        out2 = te2(flat2, output_hidden_states=True, return_dict=True)
        hidden2 = out2.hidden_states[-2]
        # pooled: the final-LN state at the (first) EOS token through text_projection, of the first chunk
        eos = int(self.tokenizers["te2"].eos_token_id)
        eos_index = (flat2 == eos).int().argmax(dim=1).to(out2.last_hidden_state.device)
        last = out2.last_hidden_state[torch.arange(flat2.shape[0], device=eos_index.device), eos_index]
        projection = te2.text_projection
        pooled = projection(last.to(projection.weight.dtype)).to(last.dtype)
        pooled = pooled.reshape(batch, chunks, -1)[:, 0]
        hidden1 = join_chunks(hidden1.reshape(batch, chunks * CHUNK, -1), chunks)
        hidden2 = join_chunks(hidden2.reshape(batch, chunks * CHUNK, -1), chunks)
        context = torch.cat([hidden1, hidden2.to(hidden1.device, hidden1.dtype)], dim=-1)
        return TextCond(context, pooled)

    # -- denoising ------------------------------------------------------------------------------------
    def denoise(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, text: TextCond, size_cond: torch.Tensor | None
    ) -> torch.Tensor:
        device, dtype = self.device, self.dtype
        kwargs = {}
        if self.family == "sdxl":
            if text.pooled is None:
                raise ValueError("SDXL conditioning needs the pooled text embedding")
            if size_cond is None:  # the latents' own size, uncropped
                h, w = noisy_latents.shape[-2] * 8, noisy_latents.shape[-1] * 8
                size_cond = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32).expand(noisy_latents.shape[0], 6)
            # diffusers' SDXL pipeline: the UNet embeds time_ids with add_time_proj and concatenates
            # text_embeds before add_embedding (sgm's 2816-d vector)
            kwargs["added_cond_kwargs"] = {
                "text_embeds": text.pooled.to(device, dtype),
                "time_ids": size_cond.to(device, dtype),
            }
        timesteps = timesteps.to(device)
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(noisy_latents.shape[0])
        return self.unet(
            noisy_latents.to(device, dtype),
            timesteps,
            encoder_hidden_states=text.context.to(device, dtype),
            return_dict=False,
            **kwargs,
        )[0]

    # -- training ---------------------------------------------------------------------------------------
    def _checkpointing_flags(self) -> dict[nn.Module, bool]:
        return {m: bool(m.gradient_checkpointing) for m in self.unet.modules() if hasattr(m, "gradient_checkpointing")}

    @contextlib.contextmanager
    def training(self, *, train_unet: bool, train_text_encoder: bool, gradient_checkpointing: bool) -> Iterator[None]:
        """Base weights frozen; the UNet / text encoders in train mode only when trained; diffusers'
        gradient checkpointing on the UNet as asked (the text encoders' activations at 77 tokens are
        small). Checkpointing only acts in train mode, so with checkpointing the UNet is also in train
        mode when only the text encoders are trained (their gradients pass through it; sd-scripts does
        the same; the SD UNet has no dropout). Everything is put back on exit, also after an exception."""
        encoders = list(self.text_encoders.values())
        unet_mode = train_unet or (gradient_checkpointing and train_text_encoder)
        modes: dict[nn.Module, bool] = {self.unet: unet_mode, self.vae: False}
        modes.update({te: train_text_encoder for te in encoders})
        flags = self._checkpointing_flags()
        processors = dict(self.unet.attn_processors) if hasattr(self.unet, "attn_processors") else None
        with frozen_base(self.modules(), modes):
            try:
                if processors is not None and not self.sdpa:  # the plain attention, when asked
                    from diffusers.models.attention_processor import AttnProcessor

                    self.unet.set_attn_processor(AttnProcessor())
                if gradient_checkpointing:
                    self.unet.enable_gradient_checkpointing()
                else:
                    self.unet.disable_gradient_checkpointing()
                yield
            finally:
                if any(flags.values()):
                    self.unet.enable_gradient_checkpointing()
                else:
                    self.unet.disable_gradient_checkpointing()
                for module, flag in flags.items():
                    module.gradient_checkpointing = flag
                if processors is not None and not self.sdpa:
                    self.unet.set_attn_processor(processors)
