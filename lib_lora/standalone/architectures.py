"""Full-size SD1.5 / SDXL module trees from the configs shipped with the project.

Built on the meta device they cost no memory and need no download; the same configs are used to
load real single-file checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lib_lora.common.errors import UserError

CONFIGS = Path(__file__).with_name("configs")
ARCHS = ("sd15", "sdxl")


def load_config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text(encoding="utf-8"))


def _require_diffusers():
    try:
        import diffusers
        import transformers
    except ImportError as exc:
        raise UserError(
            f"This needs the standalone extra ({exc.name} is not installed).",
            'Install it with: pip install -e ".[standalone]"',
        ) from None
    return diffusers, transformers


def build_unet(arch: str, device: str | torch.device = "meta") -> nn.Module:
    diffusers, _ = _require_diffusers()
    with torch.device(device):
        return diffusers.UNet2DConditionModel(**load_config(f"{arch}_unet"))


def build_text_encoders(arch: str, device: str | torch.device = "meta") -> dict[str, nn.Module]:
    """Component name -> text encoder (``te`` for SD1; ``te1`` CLIP-L and ``te2`` bigG for SDXL)."""
    _, transformers = _require_diffusers()
    with torch.device(device):
        clip_l = transformers.CLIPTextModel(transformers.CLIPTextConfig(**load_config("clip_l")))
        if arch == "sd15":
            return {"te": clip_l}
        bigg = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**load_config("clip_bigg")))
        return {"te1": clip_l, "te2": bigg}
