"""Full-size SD1.5 / SDXL module trees on the meta device (no weights, no memory, no download)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

CONFIGS = Path(__file__).resolve().parents[2] / "lib_lora" / "standalone" / "configs"


def _config(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


def ldm_sd15_unet() -> nn.Module:
    """The webui's SD1.5 UNet (configs/v1-inference.yaml's unet_config) from the real ldm code."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        return UNetModel(
            image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
            num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
            transformer_depth=1, context_dim=768, use_checkpoint=False, legacy=False,
        )  # fmt: skip


def diffusers_unet(name: str) -> nn.Module:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**_config(f"{name}_unet.json"))


def hf_text_encoder(name: str, projection: bool = False) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    with torch.device("meta"):
        return cls(CLIPTextConfig(**_config(f"{name}.json")))


def openclip_bigg_text() -> nn.Module:
    from support.tiny_models import OpenCLIPText

    with torch.device("meta"):
        return OpenCLIPText(width=1280, layers=32, heads=20, mlp_width=5120, proj=1280)
