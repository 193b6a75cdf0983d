"""Single-file SD1.x / SDXL checkpoints (``.safetensors`` as found in the webui's models/Stable-diffusion).

The file's ldm/sgm tensors are renamed to diffusers/transformers names with the tables in
:mod:`lib_lora.formats.keymap` and loaded straight into modules built on the meta device from the
configs shipped in ``configs/``: one component at a time, one tensor at a time, so memory stays near
one copy of the model. Nothing is downloaded.

Layout of a checkpoint:

========== ======================================= ==============================================
component  SD1.x                                   SDXL
========== ======================================= ==============================================
UNet       ``model.diffusion_model.*`` (ldm)       ``model.diffusion_model.*`` (sgm)
VAE        ``first_stage_model.*`` (ldm)           ``first_stage_model.*``
text       ``cond_stage_model.transformer.*`` (HF) ``conditioner.embedders.0.transformer.*`` (HF
                                                   CLIP-L), ``conditioner.embedders.1.model.*``
                                                   (OpenCLIP bigG)
========== ======================================= ==============================================

SD2.x (``cond_stage_model.model.*``, OpenCLIP-H) is recognised and refused; so are the SDXL refiner,
inpainting models, pickle files, LoRA/embedding/VAE files given as a model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from lib_lora.common.errors import UserError
from lib_lora.engine.targets import check_family
from lib_lora.formats import keymap
from lib_lora.standalone.architectures import load_config

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = {
    "sd1": {"te": "cond_stage_model.transformer."},
    "sdxl": {"te1": "conditioner.embedders.0.transformer.", "te2": "conditioner.embedders.1.model."},
}
SD2_TEXT_PREFIX = "cond_stage_model.model."
REFINER_TEXT_PREFIX = "conditioner.embedders.0.model."
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SHIPPED_CONFIGS = {
    "sd1": {"unet": "sd15_unet", "vae": "sd_vae", "te": "clip_l"},
    "sdxl": {"unet": "sdxl_unet", "vae": "sdxl_vae", "te1": "clip_l", "te2": "clip_bigg"},
}
FAMILY_NAMES = {"sd1": "SD1.x", "sdxl": "SDXL"}


class TensorSource(Protocol):
    """Named tensors read on demand (a safetensors file, or a dict in tests)."""

    def names(self) -> list[str]: ...

    def get(self, name: str) -> torch.Tensor: ...

    def shape(self, name: str) -> tuple[int, ...]: ...


class DictSource:
    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def names(self) -> list[str]:
        return list(self.tensors)

    def get(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)


class SafetensorsSource:
    def __init__(self, handle, path: Path) -> None:
        self.handle = handle
        self.path = path
        self._names = list(handle.keys())

    def names(self) -> list[str]:
        return self._names

    def get(self, name: str) -> torch.Tensor:
        try:
            return self.handle.get_tensor(name)
        except Exception as exc:  # safetensors raises its own error types for damaged data
            raise UserError(f"{self.path} could not be read ({exc}); the file may be damaged or incomplete.") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.handle.get_slice(name).get_shape())


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    family: str  # sd1 | sdxl
    v_prediction: bool  # the file carries a ``v_pred`` key (NoobAI-style v-prediction models)
    zero_terminal_snr: bool  # the file carries a ``ztsnr`` key
    has_vae: bool
    keys: list[str] = field(repr=False, default_factory=list)


# -- opening and recognising -------------------------------------------------------------------------


def check_model_path(path: str | os.PathLike) -> Path:
    """Refuse what cannot be a single-file safetensors checkpoint, with one clear message each."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"Model file {path} does not exist.", "Give a .safetensors SD1.x/SDXL checkpoint, or tiny-sd15."
        )
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a single-file .safetensors checkpoint (SD1.x or SDXL).")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise UserError(
            f"{path.name} is a pickle checkpoint ({suffix}), which Train LoRA does not load because it can run code.",
            "Convert it to safetensors first (e.g. the webui's Checkpoint Merger can save it as .safetensors).",
        )
    if suffix != ".safetensors":
        raise UserError(f"{path.name} is not a .safetensors file; give a single-file SD1.x or SDXL checkpoint.")
    return path


@contextmanager
def open_source(path: str | os.PathLike) -> Iterator[SafetensorsSource]:
    path = check_model_path(path)
    from safetensors import safe_open

    try:
        handle_cm = safe_open(str(path), framework="pt", device="cpu")
        handle = handle_cm.__enter__()
    except Exception as exc:
        raise UserError(f"{path} is not a readable safetensors file ({exc}); is it damaged or incomplete?") from None
    try:
        yield SafetensorsSource(handle, path)
    finally:
        handle_cm.__exit__(None, None, None)


def _what_else(keys: list[str]) -> str | None:
    """Name a non-checkpoint file the user may have picked by mistake."""
    if any(k.startswith(("lora_unet_", "lora_te", "lora_")) or ".lora_down." in k or ".lora_A." in k for k in keys):
        return "a LoRA, not a model checkpoint (put it in the Lora folder; train on the model it was made for)"
    if any(".hada_w1" in k or ".lokr_w1" in k for k in keys):
        return "a LyCORIS network, not a model checkpoint"
    if keys and (set(keys) <= {"emb_params", "clip_l", "clip_g"} or all(k.startswith("string_to_") for k in keys)):
        return "a textual-inversion embedding, not a model checkpoint"
    if keys and all(k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")) for k in keys):
        return "a VAE file, not a model checkpoint"
    return None


def detect_family(keys: list[str]) -> str | None:
    """``sd1`` / ``sdxl`` / ``sd2`` / ``sdxl-refiner`` from the tensor names; None if none fits."""
    prefixes = {key.split(".", 3)[0] for key in keys}
    if "conditioner" in prefixes:
        if any(k.startswith(TEXT_PREFIXES["sdxl"]["te2"]) for k in keys):
            return "sdxl"
        if any(k.startswith(REFINER_TEXT_PREFIX) for k in keys):
            return "sdxl-refiner"
    if "cond_stage_model" in prefixes:
        if any(k.startswith(TEXT_PREFIXES["sd1"]["te"]) for k in keys):
            return "sd1"
        if any(k.startswith(SD2_TEXT_PREFIX) for k in keys):
            return "sd2"
    return None


def inspect_source(source: TensorSource, name: str, family: str = "auto") -> CheckpointInfo:
    """Recognise the checkpoint; refuse anything that is not a trainable SD1.x / SDXL model."""
    keys = source.names()
    other = _what_else(keys)
    if other:
        raise UserError(f"{name} is {other}.")
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        raise UserError(f"{name} is not an SD1.x or SDXL checkpoint (it has no model.diffusion_model.* UNet weights).")
    detected = detect_family(keys)
    if detected == "sd2":
        check_family("sd2")
    if detected == "sdxl-refiner":
        raise UserError(f"{name} is an SDXL refiner; LoRAs are trained on a base model (SDXL, Pony, Illustrious ...).")
    if detected is None:
        raise UserError(f"{name} has no text encoder weights Train LoRA recognises (neither SD1.x nor SDXL layout).")
    if family not in ("auto", detected):
        raise UserError(
            f"{name} is an {FAMILY_NAMES[detected]} checkpoint, but family {family} was asked for.",
            "Leave the family on auto or pick the matching one.",
        )
    conv_in = UNET_PREFIX + "input_blocks.0.0.weight"
    if conv_in in keys:
        channels = source.shape(conv_in)[1]
        if channels != 4:
            raise UserError(
                f"{name} is an inpainting or instruct model (its UNet takes {channels} input channels); "
                "LoRAs are trained on a regular text-to-image model."
            )
    return CheckpointInfo(
        path=Path(name),
        family=detected,
        v_prediction="v_pred" in keys,
        zero_terminal_snr="ztsnr" in keys,
        has_vae=any(k.startswith(VAE_PREFIX + "encoder.") for k in keys),
        keys=keys,
    )


def inspect_checkpoint(path: str | os.PathLike, family: str = "auto") -> CheckpointInfo:
    """Read only the file's header: its family, v-prediction flag and whether it has a VAE."""
    with open_source(path) as source:
        info = inspect_source(source, str(path), family)
    return CheckpointInfo(Path(path), info.family, info.v_prediction, info.zero_terminal_snr, info.has_vae)


# -- configs ------------------------------------------------------------------------------------------


def component_configs(family: str, overrides: dict[str, dict] | None = None) -> dict[str, dict]:
    """Config per component (``unet``, ``vae``, ``te`` | ``te1``, ``te2``): the shipped JSON files,
    each replaced by ``overrides[component]`` where given (e.g. tiny test shapes)."""
    configs = {component: load_config(name) for component, name in SHIPPED_CONFIGS[family].items()}
    for component, config in (overrides or {}).items():
        if component not in configs:
            raise ValueError(f"no component {component!r} in {family}")
        configs[component] = dict(config)
    return configs


def unet_layout(family: str, config: dict) -> keymap.UNetLayout:
    """The key-map layout of a diffusers UNet config (levels, attention levels, blocks per level)."""
    down = tuple(t.startswith("CrossAttn") for t in config["down_block_types"])
    depth = config.get("transformer_layers_per_block", 1)
    depth = tuple(depth) if isinstance(depth, (list, tuple)) else (depth,) * len(down)
    return keymap.UNetLayout(
        name=family,
        down_attention=down,
        depth=tuple(d if a else 0 for d, a in zip(depth, down)),
        mid_depth=depth[-1],
        channels=tuple(config["block_out_channels"]),
        layers_per_block=int(config.get("layers_per_block", 2)),
        label_emb=config.get("addition_embed_type") == "text_time",
    )


# -- reading components ---------------------------------------------------------------------------------

Cast = Callable[[torch.Tensor], torch.Tensor]


def _reader(device: torch.device, dtype: torch.dtype) -> Cast:
    def cast(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        return tensor.to(device)

    return cast


def _read(source: TensorSource, prefix: str, cast: Cast, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    out = {}
    for key in source.names():
        if key.startswith(prefix):
            name = key[len(prefix) :]
            if not name.endswith(skip):
                out[name] = cast(source.get(key))
    return out


def unet_state(source: TensorSource, family: str, config: dict, cast: Cast) -> dict[str, torch.Tensor]:
    layout = unet_layout(family, config)
    state = _read(source, UNET_PREFIX, cast)
    try:
        return keymap.convert_unet_state_dict(state, layout, to_diffusers=True)
    except KeyError as exc:
        raise UserError(f"The UNet does not have the {FAMILY_NAMES[family]} layout ({exc.args[0]}).") from None


# attention names of diffusers VAE files saved before diffusers 0.14
_OLD_ATTENTION = {"query": ".to_q.", "key": ".to_k.", "value": ".to_v.", "proj_attn": ".to_out.0."}
_DIFFUSERS_OLD_ATTENTION = re.compile(r"\.(query|key|value|proj_attn)\.")


def vae_state(source: TensorSource, config: dict, cast: Cast, prefix: str = VAE_PREFIX) -> dict[str, torch.Tensor]:
    state = _read(source, prefix, cast)
    if any(k.startswith("encoder.down_blocks.") for k in state):  # already diffusers-named (a separate VAE file)
        return {_DIFFUSERS_OLD_ATTENTION.sub(lambda m: _OLD_ATTENTION[m.group(1)], k): v for k, v in state.items()}
    try:
        return keymap.convert_vae_state_dict(state, levels=len(config["block_out_channels"]))
    except (KeyError, ValueError) as exc:
        raise UserError(f"The VAE does not have the SD VAE layout ({exc}).") from None


def hf_text_state(source: TensorSource, prefix: str, cast: Cast) -> dict[str, torch.Tensor]:
    """transformers CLIP tensors as ``text_model.*`` names (older files lack that level)."""
    state = _read(source, prefix, cast, skip=("position_ids",))
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v for k, v in state.items()}


def openclip_text_state(source: TensorSource, prefix: str, cast: Cast) -> dict[str, torch.Tensor]:
    state = _read(source, prefix, cast, skip=("attn_mask",))
    return keymap.convert_openclip_text_state_dict(state)


# -- building modules ---------------------------------------------------------------------------------------


def _fit_text_names(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``text_model.`` level where the installed transformers has none (5.x CLIPTextModel)."""
    own = module.state_dict().keys()
    if any(k.startswith("text_model.") for k in own):
        return state
    return {k.removeprefix("text_model."): v for k, v in state.items()}


def _materialize_buffers(module: nn.Module, device: torch.device) -> None:
    """Buffers the file does not carry (CLIP's position_ids) are rebuilt for real after a meta build."""
    for name, buffer in list(module.named_buffers()):
        if not buffer.is_meta:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if leaf != "position_ids":
            raise RuntimeError(f"buffer {name} was not loaded")
        persistent = leaf not in owner._non_persistent_buffers_set
        value = torch.arange(buffer.shape[-1], device=device).expand(tuple(buffer.shape))
        owner.register_buffer(leaf, value, persistent=persistent)


def load_into(
    factory: Callable[[], nn.Module], state: dict[str, torch.Tensor], what: str, device: torch.device
) -> nn.Module:
    """Build a module on the meta device and adopt ``state``'s tensors (no second copy)."""
    with torch.device("meta"):
        module = factory()
    if any(k.startswith("text_model.") for k in state):
        state = _fit_text_names(module, state)
    expected = {k for k in module.state_dict() if not k.endswith("position_ids")}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(module.state_dict()))
    if missing or unexpected:
        detail = "; ".join(
            ([f"{len(missing)} missing, e.g. {missing[0]}"] if missing else [])
            + ([f"{len(unexpected)} unexpected, e.g. {unexpected[0]}"] if unexpected else [])
        )
        raise UserError(f"The {what} weights do not match the expected architecture ({detail}).")
    try:
        module.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise UserError(f"The {what} weights do not match the expected architecture ({first}).") from None
    _materialize_buffers(module, device)
    module.requires_grad_(False)
    return module.eval()


def build_components(
    source: TensorSource,
    family: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    configs: dict[str, dict],
    vae_source: TensorSource | None = None,
    vae_prefix: str = VAE_PREFIX,
) -> tuple[nn.Module, nn.Module, dict[str, nn.Module]]:
    """(UNet, VAE, text encoders by component) from a checkpoint's tensors, one component at a time."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cast = _reader(device, dtype)
    label = FAMILY_NAMES[family]
    unet = load_into(
        lambda: UNet2DConditionModel(**configs["unet"]),
        unet_state(source, family, configs["unet"], cast),
        f"{label} UNet",
        device,
    )
    vae = load_into(
        lambda: AutoencoderKL(**configs["vae"]),
        vae_state(vae_source or source, configs["vae"], cast, vae_prefix),
        "VAE",
        device,
    )
    encoders: dict[str, nn.Module] = {}
    for component, prefix in TEXT_PREFIXES[family].items():
        config = CLIPTextConfig(**configs[component])
        if component == "te2":
            state = openclip_text_state(source, prefix, cast)
            factory: Callable[[], nn.Module] = lambda c=config: CLIPTextModelWithProjection(c)  # noqa: E731
        else:
            state = hf_text_state(source, prefix, cast)
            factory = lambda c=config: CLIPTextModel(c)  # noqa: E731
        encoders[component] = load_into(factory, state, f"{label} text encoder ({component})", device)
    return unet, vae, encoders
