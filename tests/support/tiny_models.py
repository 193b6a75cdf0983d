"""Tiny models built in-process from the real code the hosts run.

- webui family: the ``ldm`` UNet from stable-diffusion-sdkit (the code the webui runs for SD1; with
  ``use_linear_in_transformer`` and three levels it has sgm's SDXL module names), transformers'
  CLIPTextModel (CLIP-L as the webui wraps it) and an OpenCLIP-shaped text tower with fused
  ``nn.MultiheadAttention`` (bigG as the webui holds it).
- diffusers family: UNet2DConditionModel / CLIPTextModelWithProjection configured to match, so
  weights converted with our key maps compute the same function.

ldm zero-initialises its output layers; tiny models refill every all-zero weight with small random
values so outputs and LoRA gradients are not trivially zero.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

TE_HIDDEN = 32
TE_LAYERS = 2
TE_HEADS = 4
TE_FF = 64
VOCAB = 128
MAX_TOKENS = 16


def refill_zero_weights(module: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(module.named_parameters()):
            if param.dim() >= 2 and bool((param == 0).all()):
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
            elif param.dim() == 1 and bool((param == 0).all()):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return module


# -- webui family ---------------------------------------------------------------------------------


def ldm_sd1_unet(seed: int = 0, context_dim: int = TE_HIDDEN) -> nn.Module:
    """SD1-shaped ldm UNet: 4 levels (32/64/128/128 ch), attention on levels 0-2, conv 1x1 proj."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    unet = UNetModel(
        image_size=8, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=2,
        attention_resolutions=[4, 2, 1], channel_mult=[1, 2, 4, 4], num_heads=2,
        use_spatial_transformer=True, transformer_depth=1, context_dim=context_dim, legacy=False,
        use_checkpoint=False,
    )  # fmt: skip
    return refill_zero_weights(unet, seed).eval()


SDXL_ADM = 48


def ldm_sdxl_unet(seed: int = 0, context_dim: int = 2 * TE_HIDDEN, adm_in_channels: int = SDXL_ADM) -> nn.Module:
    """SDXL-shaped UNet with sgm's module names: 3 levels, attention on levels 1-2, linear proj,
    ``label_emb.0.{0,2}`` vector conditioning (set up as sgm does; the sdkit ldm lacks the option)."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    unet = UNetModel(
        image_size=8, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=2,
        attention_resolutions=[2, 4], channel_mult=[1, 2, 4], num_heads=2, use_spatial_transformer=True,
        transformer_depth=1, context_dim=context_dim, legacy=False, use_checkpoint=False,
        use_linear_in_transformer=True,
    )  # fmt: skip
    embed = 32 * 4
    unet.num_classes = "sequential"
    unet.label_emb = nn.Sequential(nn.Sequential(nn.Linear(adm_in_channels, embed), nn.SiLU(), nn.Linear(embed, embed)))
    return refill_zero_weights(unet, seed).eval()


def hf_clip_config(projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    kwargs = {"projection_dim": projection_dim} if projection_dim else {}
    return CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=TE_HIDDEN, intermediate_size=TE_FF, num_hidden_layers=TE_LAYERS,
        num_attention_heads=TE_HEADS, max_position_embeddings=MAX_TOKENS, hidden_act="quick_gelu",
        bos_token_id=VOCAB - 2, eos_token_id=VOCAB - 1, pad_token_id=VOCAB - 1, **kwargs,
    )  # fmt: skip


def hf_clip_text_model(seed: int = 0) -> nn.Module:
    """transformers' CLIPTextModel (CLIP-L layout) in miniature."""
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(hf_clip_config()).eval()


class OpenCLIPBlock(nn.Module):
    """open_clip's ResidualAttentionBlock: ln_1, fused MultiheadAttention, ln_2, mlp.c_fc/c_proj."""

    def __init__(self, width: int, heads: int, mlp_width: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [("c_fc", nn.Linear(width, mlp_width)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(mlp_width, width))]
            )
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class OpenCLIPTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([OpenCLIPBlock(width, heads, mlp_width) for _ in range(layers)])


class OpenCLIPText(nn.Module):
    """The parts of an open_clip CLIP model the webui's SDXL bigG embedder uses (sequence-first)."""

    def __init__(
        self,
        width: int = TE_HIDDEN,
        layers: int = TE_LAYERS,
        heads: int = TE_HEADS,
        mlp_width: int = TE_FF,
        proj: int = TE_HIDDEN,
    ) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(VOCAB, width)
        self.positional_embedding = nn.Parameter(torch.randn(MAX_TOKENS, width) * 0.01)
        self.transformer = OpenCLIPTransformer(width, layers, heads, mlp_width)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, proj) * width**-0.5)
        mask = torch.full((MAX_TOKENS, MAX_TOKENS), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def hidden_states(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Embeddings then the output of every block, batch-first."""
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        states = [x]
        x = x.permute(1, 0, 2)
        mask = self.attn_mask[: tokens.shape[1], : tokens.shape[1]]
        for block in self.transformer.resblocks:
            x = block(x, attn_mask=mask)
            states.append(x.permute(1, 0, 2))
        return states

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        last = self.ln_final(self.hidden_states(tokens)[-1])
        return last[torch.arange(tokens.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection


def openclip_text_model(seed: int = 0) -> OpenCLIPText:
    torch.manual_seed(seed)
    model = OpenCLIPText()
    with torch.no_grad():  # non-zero biases so a wrong q/k/v split would show
        for block in model.transformer.resblocks:
            block.attn.in_proj_bias.normal_(0, 0.02)
            block.attn.out_proj.bias.normal_(0, 0.02)
    return model.eval()


def tokens(batch: int = 2, length: int = MAX_TOKENS, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB - 2, (batch, length), generator=generator)
    ids[:, 0] = VOCAB - 2
    ids[:, -1] = VOCAB - 1  # EOS is the largest id (argmax pooling, as CLIP)
    return ids


# -- diffusers family ----------------------------------------------------------------------------------


def diffusers_sd1_unet_config(context_dim: int = TE_HIDDEN) -> dict:
    """The diffusers UNet2DConditionModel config equivalent to :func:`ldm_sd1_unet`."""
    return {
        "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
        "block_out_channels": (32, 64, 128, 128),
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": context_dim, "attention_head_dim": 2, "norm_num_groups": 32,
        "use_linear_projection": False, "flip_sin_to_cos": True, "freq_shift": 0,
    }  # fmt: skip


def diffusers_sdxl_unet_config(
    context_dim: int = 2 * TE_HIDDEN, adm_in_channels: int = SDXL_ADM, time_dim: int = 8
) -> dict:
    """The diffusers config equivalent to :func:`ldm_sdxl_unet` (``text_time`` vector conditioning:
    ``adm_in_channels`` = pooled width + 6 * ``time_dim``)."""
    return {
        "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
        "block_out_channels": (32, 64, 128),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": context_dim, "attention_head_dim": 2, "norm_num_groups": 32,
        "use_linear_projection": True, "flip_sin_to_cos": True, "freq_shift": 0,
        "addition_embed_type": "text_time", "addition_time_embed_dim": time_dim,
        "projection_class_embeddings_input_dim": adm_in_channels,
    }  # fmt: skip
