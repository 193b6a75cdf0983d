"""Module-path maps between the webui's ldm/sgm UNet and diffusers', and between OpenCLIP and
transformers' CLIP text encoders.

The UNet tables are generated from a small layout description of each family (how many levels,
which levels hold attention, transformer depths) and golden-tested against the real module trees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class UNetLayout:
    name: str
    down_attention: tuple[bool, ...]  # per level, outermost first
    depth: tuple[int, ...]  # transformer blocks per attention, per down level
    mid_depth: int
    channels: tuple[int, ...]  # output channels per level
    layers_per_block: int = 2
    label_emb: bool = False  # SDXL's vector conditioning (label_emb.0.0/.0.2 <-> add_embedding)

    @property
    def levels(self) -> int:
        return len(self.down_attention)

    @property
    def up_attention(self) -> tuple[bool, ...]:
        return tuple(reversed(self.down_attention))

    @property
    def up_depth(self) -> tuple[int, ...]:
        return tuple(reversed(self.depth))


SD1_LAYOUT = UNetLayout("sd1", (True, True, True, False), (1, 1, 1, 0), 1, (320, 640, 1280, 1280))
SDXL_LAYOUT = UNetLayout("sdxl", (False, True, True), (0, 2, 10), 10, (320, 640, 1280), label_emb=True)
LAYOUTS = {"sd1": SD1_LAYOUT, "sdxl": SDXL_LAYOUT}

RESNET_LDM_TO_DIFFUSERS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "emb_layers.1": "time_emb_proj",
    "skip_connection": "conv_shortcut",
}
RESNET_DIFFUSERS_TO_LDM = {v: k for k, v in RESNET_LDM_TO_DIFFUSERS.items()}

ATTENTION_BLOCK_LINEARS = tuple(
    f"{attn}.{proj}" for attn in ("attn1", "attn2") for proj in ("to_q", "to_k", "to_v", "to_out.0")
) + ("ff.net.0.proj", "ff.net.2")


@cache
def unet_blocks(layout: UNetLayout) -> tuple[tuple[str, str, str], ...]:
    """(ldm prefix, diffusers prefix, kind) for every block; kind is resnet | attn | plain."""
    lpb = layout.layers_per_block
    rows: list[tuple[str, str, str]] = [
        ("input_blocks.0.0", "conv_in", "plain"),
        ("time_embed.0", "time_embedding.linear_1", "plain"),
        ("time_embed.2", "time_embedding.linear_2", "plain"),
    ]
    if layout.label_emb:
        rows += [
            ("label_emb.0.0", "add_embedding.linear_1", "plain"),
            ("label_emb.0.2", "add_embedding.linear_2", "plain"),
        ]
    for i in range(layout.levels):
        for j in range(lpb):
            n = (lpb + 1) * i + j + 1
            rows.append((f"input_blocks.{n}.0", f"down_blocks.{i}.resnets.{j}", "resnet"))
            if layout.down_attention[i]:
                rows.append((f"input_blocks.{n}.1", f"down_blocks.{i}.attentions.{j}", "attn"))
        if i < layout.levels - 1:
            rows.append((f"input_blocks.{(lpb + 1) * (i + 1)}.0.op", f"down_blocks.{i}.downsamplers.0.conv", "plain"))
    rows += [
        ("middle_block.0", "mid_block.resnets.0", "resnet"),
        ("middle_block.1", "mid_block.attentions.0", "attn"),
        ("middle_block.2", "mid_block.resnets.1", "resnet"),
    ]
    for i in range(layout.levels):
        attention = layout.up_attention[i]
        for j in range(lpb + 1):
            n = (lpb + 1) * i + j
            rows.append((f"output_blocks.{n}.0", f"up_blocks.{i}.resnets.{j}", "resnet"))
            if attention:
                rows.append((f"output_blocks.{n}.1", f"up_blocks.{i}.attentions.{j}", "attn"))
            if j == lpb and i < layout.levels - 1:
                rows.append(
                    (f"output_blocks.{n}.{2 if attention else 1}.conv", f"up_blocks.{i}.upsamplers.0.conv", "plain")
                )
    rows += [("out.0", "conv_norm_out", "plain"), ("out.2", "conv_out", "plain")]
    return tuple(rows)


@cache
def _prefix_table(layout: UNetLayout, to_diffusers: bool) -> dict[str, tuple[str, str]]:
    if to_diffusers:
        return {ldm: (diff, kind) for ldm, diff, kind in unet_blocks(layout)}
    return {diff: (ldm, kind) for ldm, diff, kind in unet_blocks(layout)}


def _convert_unet_path(path: str, layout: UNetLayout, to_diffusers: bool) -> str:
    table = _prefix_table(layout, to_diffusers)
    inner_map = RESNET_LDM_TO_DIFFUSERS if to_diffusers else RESNET_DIFFUSERS_TO_LDM
    parts = path.split(".")
    for cut in range(min(len(parts), 5), 0, -1):
        prefix = ".".join(parts[:cut])
        hit = table.get(prefix)
        if hit is None:
            continue
        new_prefix, kind = hit
        rest = parts[cut:]
        if kind == "resnet" and rest:
            for take in (2, 1):
                key = ".".join(rest[:take])
                if key in inner_map:
                    rest = inner_map[key].split(".") + rest[take:]
                    break
            else:
                raise KeyError(f"no {layout.name} mapping for {path!r}")
        return ".".join([new_prefix, *rest])
    raise KeyError(f"no {layout.name} mapping for {path!r}")


def ldm_to_diffusers(path: str, layout: UNetLayout) -> str:
    """``input_blocks.1.1.proj_in`` -> ``down_blocks.0.attentions.0.proj_in`` (module or tensor path)."""
    return _convert_unet_path(path, layout, to_diffusers=True)


def diffusers_to_ldm(path: str, layout: UNetLayout) -> str:
    """``down_blocks.1.attentions.0.proj_in`` -> ``input_blocks.4.1.proj_in`` (module or tensor path)."""
    return _convert_unet_path(path, layout, to_diffusers=False)


def unet_lora_paths(layout: UNetLayout, style: str, conv: bool) -> list[tuple[str, bool]]:
    """Every module path kohya puts a LoRA on, as (path, uses conv rank), in ``style`` ldm | diffusers.

    Attention blocks: proj_in, proj_out and 10 per transformer block. With ``conv``: per ResNet
    conv1, conv2 (k x k), time_emb_proj and conv_shortcut (where channels change), and the
    down/up-sampler convs.
    """
    paths: list[tuple[str, bool]] = []
    lpb = layout.layers_per_block
    for _ldm, diff, kind in unet_blocks(layout):
        prefix = diff
        if kind == "attn":
            depth = _attention_depth(layout, diff)
            inner = [
                "proj_in",
                *(f"transformer_blocks.{k}.{name}" for k in range(depth) for name in ATTENTION_BLOCK_LINEARS),
                "proj_out",
            ]
            # sd-scripts' (and torch's) module order: proj_in, blocks, proj_out; norm carries no LoRA
            paths += [(f"{prefix}.{name}", False) for name in inner]
        elif kind == "resnet" and conv:
            names = [("conv1", True), ("time_emb_proj", False), ("conv2", True)]
            if _resnet_has_shortcut(layout, diff, lpb):
                names.append(("conv_shortcut", False))
            paths += [(f"{prefix}.{name}", is_conv) for name, is_conv in names]
        elif kind == "plain" and conv and ("downsamplers" in diff or "upsamplers" in diff):
            paths.append((prefix, True))
    if style == "ldm":
        return [(diffusers_to_ldm(p, layout), c) for p, c in paths]
    return paths


def _attention_depth(layout: UNetLayout, diff_prefix: str) -> int:
    if diff_prefix.startswith("mid_block"):
        return layout.mid_depth
    level = int(diff_prefix.split(".")[1])
    return layout.depth[level] if diff_prefix.startswith("down_blocks") else layout.up_depth[level]


def _resnet_has_shortcut(layout: UNetLayout, diff_prefix: str, lpb: int) -> bool:
    if diff_prefix.startswith("mid_block"):
        return False
    if diff_prefix.startswith("up_blocks"):
        return True  # the skip connection is concatenated, so channels always change
    level, index = int(diff_prefix.split(".")[1]), int(diff_prefix.split(".")[3])
    return level > 0 and index == 0 and layout.channels[level] != layout.channels[level - 1]


# -- text encoders ---------------------------------------------------------------------------------

_OPENCLIP_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_OPENCLIP_INNER = {
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
}
_OPENCLIP_THIRDS = {"attn:q": "self_attn.q_proj", "attn:k": "self_attn.k_proj", "attn:v": "self_attn.v_proj"}
CLIP_LAYER_LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "mlp.fc1",
    "mlp.fc2",
)


def hf_text_path(path: str) -> str:
    """A transformers CLIP module path with the ``text_model.`` level kohya names always carry
    (transformers 5's CLIPTextModel dropped it)."""
    return path if path.startswith("text_model.") else "text_model." + path


def openclip_to_hf(path: str) -> str:
    """``transformer.resblocks.3.attn:q`` -> ``text_model.encoder.layers.3.self_attn.q_proj``;
    ``...mlp.c_fc`` -> ``...mlp.fc1`` (module paths, optionally with a tensor suffix)."""
    match = _OPENCLIP_BLOCK.match(path)
    if not match:
        raise KeyError(f"no OpenCLIP -> CLIP mapping for {path!r}")
    layer, rest = match.groups()
    for table in (_OPENCLIP_THIRDS, _OPENCLIP_INNER):
        for src, dst in table.items():
            if rest == src or rest.startswith(src + "."):
                return f"text_model.encoder.layers.{layer}.{dst}{rest[len(src) :]}"
    raise KeyError(f"no OpenCLIP -> CLIP mapping for {path!r}")


def clip_lora_paths(layers: int) -> list[str]:
    """HF-style paths of every text-encoder module kohya puts a LoRA on."""
    return [f"text_model.encoder.layers.{i}.{name}" for i in range(layers) for name in CLIP_LAYER_LINEARS]


TEXT_ENCODER_LAYERS = {"sd1": {"te": 12}, "sdxl": {"te1": 12, "te2": 32}}


def convert_unet_state_dict(state: dict, layout: UNetLayout, to_diffusers: bool) -> dict:
    """Rename every tensor of a UNet state dict between ldm/sgm and diffusers names (values kept)."""
    convert = ldm_to_diffusers if to_diffusers else diffusers_to_ldm
    return {convert(name, layout): tensor for name, tensor in state.items()}


def convert_openclip_text_state_dict(state: dict) -> dict:
    """An OpenCLIP text tower's tensors (``transformer.resblocks...``, ``token_embedding``, ...)
    renamed to transformers' ``CLIPTextModelWithProjection``; the fused ``in_proj`` is split into
    q/k/v (three equal chunks along dim 0) and ``text_projection`` transposed. Vision-tower and
    non-text tensors are left out."""
    import torch

    out = {}
    for name, tensor in state.items():
        if name == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = tensor
        elif name == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = tensor
        elif name.startswith("ln_final."):
            out["text_model.final_layer_norm." + name.split(".", 1)[1]] = tensor
        elif name == "text_projection":
            out["text_projection.weight"] = tensor.t().contiguous() if isinstance(tensor, torch.Tensor) else tensor
        elif name.startswith("transformer.resblocks."):
            prefix, _, leaf = name.rpartition(".")
            if prefix.endswith(".attn") and leaf in ("in_proj_weight", "in_proj_bias"):
                kind = "weight" if leaf == "in_proj_weight" else "bias"
                for letter, chunk in zip("qkv", tensor.chunk(3, dim=0)):
                    out[f"{openclip_to_hf(prefix + ':' + letter)}.{kind}"] = chunk.contiguous()
            else:
                out[openclip_to_hf(name)] = tensor
    return out


# -- VAE (ldm AutoencoderKL -> diffusers AutoencoderKL) ------------------------------------------

VAE_LEVELS = 4  # every SD1.x / SD2.x / SDXL VAE: 4 resolution levels, x8 downsampling
_VAE_RESNET_LDM_TO_DIFFUSERS = {"nin_shortcut": "conv_shortcut"}  # norm1/conv1/norm2/conv2 are the same
_VAE_ATTENTION_LDM_TO_DIFFUSERS = {
    "norm": "group_norm",
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "proj_out": "to_out.0",
}
_VAE_MID = {"block_1": "resnets.0", "block_2": "resnets.1", "attn_1": "attentions.0"}


def _vae_inner(rest: list[str], table: dict[str, str], path: str) -> list[str]:
    if not rest:
        raise KeyError(f"no VAE mapping for {path!r}")
    head = table.get(rest[0], rest[0])
    return head.split(".") + rest[1:]


def vae_ldm_to_diffusers(path: str, levels: int = VAE_LEVELS) -> str:
    """An ldm ``AutoencoderKL`` tensor/module path -> diffusers' ``AutoencoderKL``.

    ``encoder.down.1.block.0.nin_shortcut.weight`` -> ``encoder.down_blocks.1.resnets.0.conv_shortcut.weight``;
    ``decoder.up.3.upsample.conv`` -> ``decoder.up_blocks.0.upsamplers.0.conv`` (the decoder's level
    index is reversed: ldm counts from the highest resolution, diffusers from the lowest);
    ``encoder.mid.attn_1.q`` -> ``encoder.mid_block.attentions.0.to_q``; ``norm_out`` -> ``conv_norm_out``.
    The mid-block attention's q/k/v/proj_out are 1x1 convs in ldm and Linear in diffusers: see
    :func:`convert_vae_state_dict` for the tensor reshape.
    """
    parts = path.split(".")
    top, rest = parts[0], parts[1:]
    if top in ("quant_conv", "post_quant_conv"):
        return path
    if top not in ("encoder", "decoder") or not rest:
        raise KeyError(f"no VAE mapping for {path!r}")
    head = rest[0]
    if head in ("conv_in", "conv_out"):
        new = rest
    elif head == "norm_out":
        new = ["conv_norm_out", *rest[1:]]
    elif head == "mid" and len(rest) > 1 and rest[1] in _VAE_MID:
        table = _VAE_ATTENTION_LDM_TO_DIFFUSERS if rest[1] == "attn_1" else _VAE_RESNET_LDM_TO_DIFFUSERS
        new = ["mid_block", *_VAE_MID[rest[1]].split("."), *_vae_inner(rest[2:], table, path)]
    elif head in ("down", "up") and len(rest) > 3:
        index, kind = int(rest[1]), rest[2]
        if not 0 <= index < levels:
            raise KeyError(f"no VAE mapping for {path!r} (level {index} of {levels})")
        level = index if head == "down" else levels - 1 - index
        blocks = f"{head}_blocks"
        if kind == "block":
            new = [blocks, str(level), "resnets", rest[3], *_vae_inner(rest[4:], _VAE_RESNET_LDM_TO_DIFFUSERS, path)]
        elif kind == ("downsample" if head == "down" else "upsample"):
            new = [blocks, str(level), f"{kind}rs", "0", *rest[3:]]
        else:
            raise KeyError(f"no VAE mapping for {path!r}")
    else:
        raise KeyError(f"no VAE mapping for {path!r}")
    return ".".join([top, *new])


def is_vae_attention_weight(diffusers_name: str) -> bool:
    """A mid-block attention projection weight (a 1x1 conv in ldm, a Linear in diffusers)."""
    return ".mid_block.attentions." in diffusers_name and diffusers_name.endswith(
        tuple(f"{proj}.weight" for proj in ("to_q", "to_k", "to_v", "to_out.0"))
    )


def convert_vae_state_dict(state: dict, levels: int = VAE_LEVELS) -> dict:
    """Rename an ldm VAE state dict (``encoder.*``, ``decoder.*``, ``quant_conv.*``,
    ``post_quant_conv.*``) to diffusers' names; the attention 1x1 conv weights [C, C, 1, 1] become
    Linear weights [C, C]. Other tensors (e.g. a training loss's ``loss.*``) are left out."""
    out = {}
    for name, tensor in state.items():
        if name.split(".", 1)[0] not in ("encoder", "decoder", "quant_conv", "post_quant_conv"):
            continue
        new = vae_ldm_to_diffusers(name, levels)
        if is_vae_attention_weight(new) and tensor.dim() == 4:
            tensor = tensor[:, :, 0, 0]
        out[new] = tensor
    return out
