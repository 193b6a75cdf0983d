"""Tiny models shaped exactly as the webui 1.10.1 holds them in ``shared.sd_model``.

- :func:`tiny_sd1` — an ldm ``LatentDiffusion`` stand-in: ``model`` (DiffusionWrapper) ->
  ``diffusion_model`` (the real ldm UNet), ``first_stage_model`` (AutoencoderKL from ldm's real
  Encoder/Decoder; ``encode`` returns the posterior), ``cond_stage_model`` = the webui's
  ``FrozenCLIPEmbedderWithCustomWords`` around ldm's ``FrozenCLIPEmbedder`` (``.wrapped``) holding
  a transformers ``CLIPTextModel`` (``.wrapped.transformer``): 75-token chunks (here
  ``chunk_length`` = 14 for the tiny 16-position CLIP), emphasis "Original", CLIP skip from
  ``opts.CLIP_stop_at_last_layers``; the webui's ``apply_model`` casting; ``alphas_cumprod``,
  ``alphas_cumprod_original``, ``parameterization``, ``scale_factor`` 0.18215, the ``is_sd*`` flags.
- :func:`tiny_sdxl` — an sgm ``DiffusionEngine`` stand-in: ``model`` (OpenAIWrapper: ``context`` =
  crossattn, ``y`` = vector), ``conditioner`` (GeneralConditioner: text embedders with
  ``is_trainable=False`` run under ``no_grad``; the webui's CLIP-L wrapper (hidden layer, no final
  norm) and bigG wrapper (penultimate + pooled, fused attention); three size embedders),
  ``first_stage_model`` (sgm's encode samples inside), scale_factor 0.13025, the webui's
  ``get_learned_conditioning`` (width/height from SdConditioning, crop from opts).

Everything the webui code does with these objects that the extension relies on is reproduced; the
file names the webui function each method stands in for.
"""

from __future__ import annotations

import contextlib
import math
import re
import zlib

import torch
from torch import nn

from support import tiny_models as tm

SD1_SCALE = 0.18215
SDXL_SCALE = 0.13025
SIZE_DIM = 8  # ConcatTimestepEmbedderND outdim (SDXL: 256)


def ddpm_alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


# -- text ------------------------------------------------------------------------------------------


class TinyTokenizer:
    """A word-level tokenizer with CLIPTokenizer's interface (``__call__``, ``get_vocab``, BOS/EOS)."""

    COMMA = 1

    def __init__(self) -> None:
        self.bos_token_id = tm.VOCAB - 2
        self.eos_token_id = tm.VOCAB - 1

    def token_id(self, word: str) -> int:
        if word == ",":
            return self.COMMA
        return 2 + zlib.crc32(word.encode()) % (tm.VOCAB - 4)

    def encode(self, text: str) -> list[int]:
        return [self.token_id(w) for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())]

    def __call__(self, texts, truncation=False, add_special_tokens=False, **kwargs):
        return {"input_ids": [self.encode(t) for t in texts]}

    def get_vocab(self) -> dict[str, int]:
        return {",</w>": self.COMMA}


class FrozenCLIPEmbedder(nn.Module):
    """ldm/sgm FrozenCLIPEmbedder: ``.transformer`` (HF CLIPTextModel) and ``.tokenizer``."""

    def __init__(self, seed: int, layer: str = "last", layer_idx: int | None = None) -> None:
        super().__init__()
        self.transformer = tm.hf_clip_text_model(seed)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # trained CLIP's final norm has a bias: the emphasis mean is not ~0
            norm = self.transformer.text_model.final_layer_norm
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=generator) * 0.5 + 0.5)
        self.tokenizer = TinyTokenizer()
        self.layer = layer
        self.layer_idx = layer_idx
        self.return_pooled = False


class FrozenOpenCLIPEmbedder2(nn.Module):
    """sgm FrozenOpenCLIPEmbedder2 (legacy=False, always_return_pooled): ``.model`` is open_clip's
    text tower; ``encode_with_transformer`` returns {penultimate, last, pooled}."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.model = tm.openclip_text_model(seed)
        self.layer = "penultimate"
        self.return_pooled = True

    def encode_with_transformer(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        states = self.model.hidden_states(tokens)
        last = self.model.ln_final(states[-1])
        pooled = last[torch.arange(tokens.shape[0]), tokens.argmax(dim=-1)] @ self.model.text_projection
        return {"penultimate": states[-2], "last": states[-1], "pooled": pooled}


class PromptChunk:
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.multipliers: list[float] = []


class TextConditionalModel(nn.Module):
    """modules/sd_hijack_clip.TextConditionalModel: prompts -> chunks of ``chunk_length`` tokens
    (BOS + tokens + EOS padding), emphasis multipliers from the prompt's brackets, each chunk
    through the text model, emphasis "Original" (scale, then restore the mean), chunks joined."""

    def __init__(self, wrapped: nn.Module) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.chunk_length = tm.MAX_TOKENS - 2
        self.is_trainable = False
        self.input_key = "txt"
        self.return_pooled = getattr(wrapped, "return_pooled", False)
        self.legacy_ucg_val = None
        self.ucg_rate = 0.0
        tokenizer = TinyTokenizer()
        self.tokenizer = tokenizer
        self.comma_token = tokenizer.COMMA
        self.id_start, self.id_end, self.id_pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.eos_token_id

    def tokenize_line(self, line: str) -> list[PromptChunk]:
        from modules import prompt_parser
        from modules.shared import opts

        parsed = prompt_parser.parse_prompt_attention(line) if opts.emphasis != "None" else [[line, 1.0]]
        chunks, chunk = [], PromptChunk()

        def next_chunk() -> None:
            nonlocal chunk
            pad = self.chunk_length - len(chunk.tokens)
            chunk.tokens = [self.id_start] + chunk.tokens + [self.id_end] * (pad + 1)
            chunk.multipliers = [1.0] + chunk.multipliers + [1.0] * (pad + 1)
            chunks.append(chunk)
            chunk = PromptChunk()

        for text, weight in parsed:
            for token in self.tokenizer.encode(text):
                if len(chunk.tokens) == self.chunk_length:
                    next_chunk()
                chunk.tokens.append(token)
                chunk.multipliers.append(weight)
        if chunk.tokens or not chunks:
            next_chunk()
        return chunks

    def forward(self, texts):
        from modules import devices

        batch_chunks = [self.tokenize_line(t) for t in texts]
        count = max(len(c) for c in batch_chunks)
        zs = []
        for i in range(count):
            batch = [chunks[i] if i < len(chunks) else self.tokenize_line("")[0] for chunks in batch_chunks]
            tokens = torch.asarray([c.tokens for c in batch]).to(devices.device)
            if self.id_end != self.id_pad:
                for row, chunk in enumerate(batch):
                    end = chunk.tokens.index(self.id_end)
                    tokens[row, end + 1 :] = self.id_pad
            z = self.encode_with_transformers(tokens)
            pooled = getattr(z, "pooled", None)
            multipliers = torch.asarray([c.multipliers for c in batch]).to(devices.device)
            original_mean = z.mean()
            z = z * multipliers.reshape(multipliers.shape + (1,)).expand(z.shape)
            z = z * (original_mean / z.mean())
            if pooled is not None:
                z.pooled = pooled
            zs.append(z)
        if self.return_pooled:
            return torch.hstack(zs), zs[0].pooled
        return torch.hstack(zs)


class FrozenCLIPEmbedderWithCustomWords(TextConditionalModel):
    """SD1: ``hidden_states[-CLIP_stop_at_last_layers]`` + ``final_layer_norm`` (skip > 1)."""

    def encode_with_transformers(self, tokens):
        from modules.shared import opts

        skip = opts.CLIP_stop_at_last_layers
        outputs = self.wrapped.transformer(input_ids=tokens, output_hidden_states=-skip)
        if skip > 1:
            return self.wrapped.transformer.text_model.final_layer_norm(outputs.hidden_states[-skip])
        return outputs.last_hidden_state


class FrozenCLIPEmbedderForSDXLWithCustomWords(TextConditionalModel):
    """SDXL CLIP-L: ``hidden_states[layer_idx]`` without the final norm."""

    def encode_with_transformers(self, tokens):
        outputs = self.wrapped.transformer(input_ids=tokens, output_hidden_states=True)
        return outputs.hidden_states[self.wrapped.layer_idx]


class FrozenOpenCLIPEmbedder2WithCustomWords(TextConditionalModel):
    """SDXL bigG: the penultimate layer, pooled output kept on the tensor."""

    def __init__(self, wrapped: nn.Module) -> None:
        super().__init__(wrapped)
        self.id_pad = 0

    def encode_with_transformers(self, tokens):
        d = self.wrapped.encode_with_transformer(tokens)
        z = d[self.wrapped.layer]
        z.pooled = d["pooled"]
        return z


class ConcatTimestepEmbedderND(nn.Module):
    """sgm: each number of the input embedded sinusoidally (cos, sin) and concatenated."""

    def __init__(self, outdim: int, input_key: str) -> None:
        super().__init__()
        self.outdim = outdim
        self.input_key = input_key
        self.is_trainable = False
        self.ucg_rate = 0.0
        self.legacy_ucg_val = None

    def forward(self, x):
        if x.ndim == 1:
            x = x[:, None]
        b, dims = x.shape
        flat = x.reshape(b * dims).float()
        half = self.outdim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=x.device) / half)
        args = flat[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return emb.reshape(b, dims * self.outdim)


class GeneralConditioner(nn.Module):
    """sgm GeneralConditioner.forward: embedders with ``is_trainable`` False run under no_grad;
    2-D outputs concatenated into "vector", 3-D into "crossattn"."""

    OUTPUT_DIM2KEYS = {2: "vector", 3: "crossattn"}
    KEY2CATDIM = {"vector": 1, "crossattn": 2}

    def __init__(self, embedders: list[nn.Module]) -> None:
        super().__init__()
        self.embedders = nn.ModuleList(embedders)

    def forward(self, batch, force_zero_embeddings=None):
        output: dict[str, torch.Tensor] = {}
        force_zero_embeddings = force_zero_embeddings or []
        for embedder in self.embedders:
            context = contextlib.nullcontext if embedder.is_trainable else torch.no_grad
            with context():
                out = embedder(batch[embedder.input_key])
            for emb in out if isinstance(out, (list, tuple)) else [out]:
                key = self.OUTPUT_DIM2KEYS[emb.dim()]
                if embedder.input_key in force_zero_embeddings:
                    emb = torch.zeros_like(emb)
                output[key] = torch.cat((output[key], emb), self.KEY2CATDIM[key]) if key in output else emb
        return output


# -- VAE -------------------------------------------------------------------------------------------


def _vae_parts(seed: int) -> tuple[nn.Module, nn.Module]:
    from ldm.modules.diffusionmodules.model import Decoder, Encoder

    torch.manual_seed(seed)
    config = dict(
        ch=32, out_ch=3, ch_mult=(1, 1, 1, 1), num_res_blocks=1, attn_resolutions=[], in_channels=3,
        resolution=64, z_channels=4, double_z=True,
    )  # fmt: skip
    return Encoder(**config), Decoder(**config)


class AutoencoderKL(nn.Module):
    """ldm AutoencoderKL: ``encode`` -> DiagonalGaussianDistribution, ``decode``."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.encoder, self.decoder = _vae_parts(seed)
        self.quant_conv = nn.Conv2d(8, 8, 1)
        self.post_quant_conv = nn.Conv2d(4, 4, 1)

    def encode(self, x):
        from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))


class AutoencodingEngineLegacy(AutoencoderKL):
    """sgm: ``encode`` returns latents sampled inside (DiagonalGaussianRegularizer, global RNG)."""

    def encode(self, x):
        return super().encode(x).sample()


# -- the models ------------------------------------------------------------------------------------


class DiffusionWrapper(nn.Module):
    """ldm DiffusionWrapper, conditioning_key "crossattn"."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.diffusion_model = unet
        self.conditioning_key = "crossattn"

    def forward(self, x, t, c_concat=None, c_crossattn=None, c_adm=None):
        return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1))


class OpenAIWrapper(nn.Module):
    """sgm OpenAIWrapper (wrapped by the webui's apply_model casting)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.diffusion_model = unet
        self.conditioning_key = "crossattn"

    def forward(self, x, t, c, **kwargs):
        return self.diffusion_model(x, timesteps=t, context=c.get("crossattn"), y=c.get("vector"), **kwargs)


def _webui_cast(cond):
    """modules/sd_hijack_unet.apply_model: inputs cast to ``devices.dtype_unet``."""
    from modules import devices

    if isinstance(cond, dict):
        return {k: [x.to(devices.dtype_unet) for x in v] if isinstance(v, list) else v.to(devices.dtype_unet) for k, v in cond.items()}  # fmt: skip
    return cond.to(devices.dtype_unet)


class _WebuiModel(nn.Module):
    is_sd1 = is_sd2 = is_sdxl = is_sd3 = is_ssd = is_sdxl_inpaint = False
    lowvram = False
    latent_channels = 4

    def _common(self, name: str, checkpoint_dir: str | None, parameterization: str) -> None:
        from modules import sd_models

        path = f"{checkpoint_dir or '/nonexistent'}/{name}.safetensors"
        self.sd_checkpoint_info = sd_models.CheckpointInfo(path, sha256="ab" * 32)
        self.sd_model_checkpoint = path
        self.sd_model_hash = self.sd_checkpoint_info.shorthash
        self.parameterization = parameterization
        alphas = ddpm_alphas_cumprod()
        self.alphas_cumprod_original = alphas
        self.alphas_cumprod = alphas

    @contextlib.contextmanager
    def ema_scope(self, context=None):
        yield


class TinySD1(_WebuiModel):
    """ldm LatentDiffusion as the webui holds it (after sd_hijack)."""

    is_sd1 = True
    cond_stage_key = "txt"

    def __init__(self, seed: int = 0, checkpoint_dir: str | None = None, parameterization: str = "eps") -> None:
        super().__init__()
        self.model = DiffusionWrapper(tm.ldm_sd1_unet(seed, context_dim=tm.TE_HIDDEN))
        self.first_stage_model = AutoencoderKL(seed + 1).eval()
        self.cond_stage_model = FrozenCLIPEmbedderWithCustomWords(FrozenCLIPEmbedder(seed + 2)).eval()
        self.scale_factor = SD1_SCALE
        self._common("tiny-sd15", checkpoint_dir, parameterization)

    def get_learned_conditioning(self, c):  # ldm: no encode() on the wrapper -> cond_stage_model(c)
        return self.cond_stage_model(c)

    def apply_model(self, x_noisy, t, cond, return_ids=False):  # ldm + sd_hijack_unet.apply_model
        from modules import devices

        if not isinstance(cond, dict):
            cond = {"c_crossattn": cond if isinstance(cond, list) else [cond]}
        with devices.autocast():
            return self.model(x_noisy.to(devices.dtype_unet), t, **_webui_cast(cond))

    @torch.no_grad()
    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior):
        return self.scale_factor * encoder_posterior.sample()

    @torch.no_grad()
    def decode_first_stage(self, z):
        return self.first_stage_model.decode(1.0 / self.scale_factor * z)


class TinySDXL(_WebuiModel):
    """sgm DiffusionEngine as the webui holds it (after sd_models_xl.extend_sdxl and sd_hijack)."""

    is_sdxl = True

    def __init__(self, seed: int = 0, checkpoint_dir: str | None = None, parameterization: str = "eps") -> None:
        super().__init__()
        adm = tm.TE_HIDDEN + 3 * 2 * SIZE_DIM
        unet = tm.ldm_sdxl_unet(seed, context_dim=2 * tm.TE_HIDDEN, adm_in_channels=adm)
        # sd_xl_base.yaml has use_checkpoint: True (ResBlock.use_checkpoint, BasicTransformerBlock.checkpoint)
        for module in unet.modules():
            if "use_checkpoint" in module.__dict__:
                module.use_checkpoint = True
            if "checkpoint" in module.__dict__ and isinstance(module.__dict__["checkpoint"], bool):
                module.checkpoint = True
        self.model = OpenAIWrapper(unet)
        te1 = FrozenCLIPEmbedderForSDXLWithCustomWords(FrozenCLIPEmbedder(seed + 2, "hidden", tm.TE_LAYERS - 1))
        te2 = FrozenOpenCLIPEmbedder2WithCustomWords(FrozenOpenCLIPEmbedder2(seed + 3))
        sizes = [ConcatTimestepEmbedderND(SIZE_DIM, key) for key in ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")]  # fmt: skip
        self.conditioner = GeneralConditioner([te1, te2, *sizes]).eval()
        self.cond_stage_model = self.conditioner
        self.first_stage_model = AutoencodingEngineLegacy(seed + 1).eval()
        self.scale_factor = SDXL_SCALE
        self._common("tiny-sdxl", checkpoint_dir, parameterization)

    def get_learned_conditioning(self, batch):  # modules/sd_models_xl.get_learned_conditioning
        from modules import devices
        from modules.shared import opts

        for embedder in self.conditioner.embedders:
            embedder.ucg_rate = 0.0
        width = getattr(batch, "width", 1024) or 1024
        height = getattr(batch, "height", 1024) or 1024
        args = dict(device=devices.device, dtype=devices.dtype)
        conds = {
            "txt": batch,
            "original_size_as_tuple": torch.tensor([height, width], **args).repeat(len(batch), 1),
            "crop_coords_top_left": torch.tensor([opts.sdxl_crop_top, opts.sdxl_crop_left], **args).repeat(len(batch), 1),
            "target_size_as_tuple": torch.tensor([height, width], **args).repeat(len(batch), 1),
        }  # fmt: skip
        negative = getattr(batch, "is_negative_prompt", False) and all(x == "" for x in batch)
        return self.conditioner(conds, force_zero_embeddings=["txt"] if negative else [])

    def apply_model(self, x, t, cond):  # modules/sd_models_xl.apply_model + sd_hijack_unet casting
        from modules import devices

        with devices.autocast():
            return self.model(x.to(devices.dtype_unet), t, _webui_cast(cond))

    @torch.no_grad()
    def encode_first_stage(self, x):
        return self.scale_factor * self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, x):
        return x

    @torch.no_grad()
    def decode_first_stage(self, z):
        return self.first_stage_model.decode(z / self.scale_factor)


def tiny_sd1(seed: int = 0, checkpoint_dir: str | None = None, **kwargs) -> TinySD1:
    return TinySD1(seed, checkpoint_dir, **kwargs).eval()


def tiny_sdxl(seed: int = 0, checkpoint_dir: str | None = None, **kwargs) -> TinySDXL:
    return TinySDXL(seed, checkpoint_dir, **kwargs).eval()


def tiny_sd2(seed: int = 0, checkpoint_dir: str | None = None) -> TinySD1:
    """Flags as the webui sets them for an SD2 checkpoint (the structure does not matter: refused)."""
    model = TinySD1(seed, checkpoint_dir)
    model.is_sd1, model.is_sd2 = False, True
    return model.eval()
