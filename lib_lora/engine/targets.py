"""Which host modules get a LoRA: kohya sd-scripts' default selection, on either module family.

UNet: every Linear and 1x1 Conv2d inside a spatial transformer block (diffusers
``Transformer2DModel`` = ldm/sgm ``SpatialTransformer``); with a conv rank also the k x k convs (and
the Linear/1x1 layers) inside ResNet blocks and down/up samplers (diffusers ``ResnetBlock2D``,
``Downsample2D``, ``Upsample2D`` = ldm/sgm ``ResBlock``, ``Downsample``, ``Upsample``).

Text encoders: the attention q/k/v/out projections and MLP fc1/fc2 of every encoder layer, found by
path so it works for transformers' CLIP (any version, with or without the ``text_model`` level) and
for OpenCLIP as the webui holds it (fused ``nn.MultiheadAttention`` -> q/k/v thirds + out_proj,
``mlp.c_fc``/``c_proj``).

A target's key is ``<component>/<module path>`` (``:q``/``:k``/``:v`` for the thirds of a fused
in-projection): the engine's one canonical naming. ``lib_lora.formats`` turns it into kohya names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from lib_lora.common.errors import UserError

UNET_TRANSFORMER_CLASSES = frozenset({"Transformer2DModel", "SpatialTransformer"})
UNET_CONV_CLASSES = frozenset({"ResnetBlock2D", "ResBlock", "Downsample2D", "Downsample", "Upsample2D", "Upsample"})

_HF_TE = re.compile(r"^(?:text_model\.)?encoder\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|mlp\.fc[12])$")
_OPENCLIP_ATTN = re.compile(r"^transformer\.resblocks\.\d+\.attn$")
_OPENCLIP_MLP = re.compile(r"^transformer\.resblocks\.\d+\.mlp\.c_(?:fc|proj)$")

SUPPORTED_FAMILIES = ("sd1", "sdxl")
COMPONENTS = {"sd1": ("te", "unet"), "sdxl": ("te1", "te2", "unet")}


@dataclass(frozen=True)
class Target:
    key: str  # canonical: "<component>/<path>[:q|:k|:v]"
    component: str  # "unet", "te" (SD1), "te1" / "te2" (SDXL)
    path: str  # module path under the component's root (":q" etc. for fused thirds)
    kind: str  # linear | conv | mha_q | mha_k | mha_v | mha_out
    module: nn.Module = field(compare=False, repr=False)
    conv_rank: bool = False  # True for k x k convs, which use conv_dim / conv_alpha


def check_family(family: str) -> None:
    """Refuse families the engine does not train yet, with a clear message."""
    if family in SUPPORTED_FAMILIES:
        return
    if family.startswith("sd2"):
        raise UserError(
            "SD2.x models are not supported yet.",
            "Load an SD1.x model (e.g. a NovelAI-class anime model) or an SDXL model (Illustrious, NoobAI, Pony).",
        )
    raise UserError(f"This model family ({family}) is not supported; Train LoRA trains SD1.x and SDXL models.")


def unet_naming(unet: nn.Module) -> str:
    """``"ldm"`` for the webui's ldm/sgm UNet (``input_blocks``), ``"diffusers"`` for diffusers'."""
    if hasattr(unet, "input_blocks") and hasattr(unet, "output_blocks"):
        return "ldm"
    if hasattr(unet, "down_blocks") and hasattr(unet, "up_blocks"):
        return "diffusers"
    raise UserError(f"Unrecognised UNet ({type(unet).__name__}): neither ldm/sgm nor diffusers layout.")


def text_encoder_naming(te: nn.Module) -> str:
    """``"openclip"`` for an OpenCLIP text tower with fused attention, ``"hf"`` for transformers' CLIP."""
    for name, _ in te.named_modules():
        if _OPENCLIP_ATTN.match(name):
            return "openclip"
        if _HF_TE.match(name):
            return "hf"
    raise UserError(f"Unrecognised text encoder ({type(te).__name__}): no CLIP encoder layers found.")


def unet_targets(unet: nn.Module, conv: bool = False, component: str = "unet") -> list[Target]:
    """kohya's UNet selection, in module order."""
    parents = UNET_TRANSFORMER_CLASSES | (UNET_CONV_CLASSES if conv else frozenset())
    targets: list[Target] = []
    seen: set[int] = set()
    for name, module in unet.named_modules():
        if type(module).__name__ not in parents:
            continue
        for child_name, child in module.named_modules():
            if not child_name or id(child) in seen:
                continue
            if isinstance(child, nn.Linear):
                kind, conv_rank = "linear", False
            elif isinstance(child, nn.Conv2d):
                is_1x1 = tuple(child.kernel_size) == (1, 1)
                if not is_1x1 and not conv:
                    continue
                kind, conv_rank = "conv", not is_1x1
            else:
                continue
            seen.add(id(child))
            path = f"{name}.{child_name}"
            targets.append(Target(f"{component}/{path}", component, path, kind, child, conv_rank))
    return targets


def text_encoder_targets(te: nn.Module, component: str) -> list[Target]:
    """The q/k/v/out and fc1/fc2 projections of every encoder layer of a CLIP text encoder."""
    targets: list[Target] = []
    for name, module in te.named_modules():
        if isinstance(module, nn.Linear) and (_HF_TE.match(name) or _OPENCLIP_MLP.match(name)):
            targets.append(Target(f"{component}/{name}", component, name, "linear", module))
        elif isinstance(module, nn.MultiheadAttention) and _OPENCLIP_ATTN.match(name):
            for letter, kind in (("q", "mha_q"), ("k", "mha_k"), ("v", "mha_v")):
                path = f"{name}:{letter}"
                targets.append(Target(f"{component}/{path}", component, path, kind, module))
            path = f"{name}.out_proj"
            targets.append(Target(f"{component}/{path}", component, path, "mha_out", module))
    return targets


def select_targets(
    family: str,
    unet: nn.Module | None,
    text_encoders: dict[str, nn.Module],
    conv: bool = False,
) -> list[Target]:
    """All targets for a model: text encoders first (as kohya orders them), then the UNet.

    ``text_encoders`` maps component names (``te`` for SD1, ``te1``/``te2`` for SDXL) to modules;
    pass only the ones to train. ``unet`` None trains the text encoders only.
    """
    check_family(family)
    allowed = COMPONENTS[family]
    targets: list[Target] = []
    for component, te in text_encoders.items():
        if component not in allowed:
            raise ValueError(f"text encoder component {component!r} is not part of {family}")
        targets += text_encoder_targets(te, component)
    if unet is not None:
        targets += unet_targets(unet, conv=conv)
    return targets
