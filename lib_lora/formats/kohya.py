"""kohya sd-scripts LoRA keys: canonical engine keys <-> file keys, and what a file holds.

Canonical keys are ``<component>/<module path>`` in the host's own naming (see engine/targets.py);
``naming`` says which naming each component uses (UNet ``ldm`` | ``diffusers``, text encoders ``hf``
| ``openclip``). Files use kohya's names: SD1 UNet keys diffusers-style, SDXL UNet keys sgm-style,
text encoders HF CLIP names under ``lora_te`` (SD1) or ``lora_te1`` / ``lora_te2`` (SDXL).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cache

import torch

from lib_lora.formats.keymap import (
    LAYOUTS,
    TEXT_ENCODER_LAYERS,
    clip_lora_paths,
    diffusers_to_ldm,
    hf_text_path,
    ldm_to_diffusers,
    openclip_to_hf,
    unet_lora_paths,
)

PREFIXES = {"unet": "lora_unet", "te": "lora_te", "te1": "lora_te1", "te2": "lora_te2"}
FAMILY_COMPONENTS = {"sd1": ("te", "unet"), "sdxl": ("te1", "te2", "unet")}
TENSOR_SUFFIXES = ("lora_down.weight", "lora_up.weight", "alpha")
SAVE_DTYPES = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
               "fp32": torch.float32, "float": torch.float32, "float32": torch.float32}  # fmt: skip


def file_module_path(family: str, component: str, path: str, naming: str) -> str:
    """The module path kohya's name is built from (before ``.`` -> ``_``)."""
    if component == "unet":
        layout = LAYOUTS[family]
        if family == "sd1" and naming == "ldm":
            return ldm_to_diffusers(path, layout)
        if family == "sdxl" and naming == "diffusers":
            return diffusers_to_ldm(path, layout)
        return path
    if naming == "openclip":
        return openclip_to_hf(path)
    return hf_text_path(path)


def kohya_stem(family: str, component: str, path: str, naming: str) -> str:
    """``lora_unet_down_blocks_0_attentions_0_proj_in``-style module name for a canonical target."""
    return PREFIXES[component] + "_" + file_module_path(family, component, path, naming).replace(".", "_")


def stem_map(family: str, keys: list[str], naming: dict[str, str]) -> dict[str, str]:
    """canonical key -> kohya stem for the given network keys; stems must be unique."""
    out: dict[str, str] = {}
    for key in keys:
        component, path = key.split("/", 1)
        out[key] = kohya_stem(family, component, path, naming[component])
    dupes = [s for s, n in Counter(out.values()).items() if n > 1]
    if dupes:
        raise ValueError(f"duplicate kohya names: {dupes[:3]}")
    return out


def split_tensor_name(name: str) -> tuple[str, str]:
    """``<key>.lora_down.weight`` -> (key, "lora_down.weight"); ValueError for other names."""
    for suffix in TENSOR_SUFFIXES:
        if name.endswith("." + suffix):
            return name[: -len(suffix) - 1], suffix
    raise ValueError(f"not a LoRA tensor name: {name}")


def to_kohya(
    state: dict[str, torch.Tensor], family: str, naming: dict[str, str], dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Canonical network tensors -> kohya file tensors (``<stem>.lora_down.weight`` ...), every tensor
    (alpha included, a 0-dim tensor) cast to ``dtype``, contiguous, on the CPU."""
    split = {name: split_tensor_name(name) for name in state}
    stems = stem_map(family, sorted({key for key, _ in split.values()}), naming)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        key, suffix = split[name]
        value = tensor.detach().to("cpu")
        if suffix == "alpha":
            value = value.reshape(())
        if dtype is not None:
            value = value.to(dtype)
        out[f"{stems[key]}.{suffix}"] = value.contiguous()
    return out


def from_kohya(
    tensors: dict[str, torch.Tensor], family: str, keys: list[str], naming: dict[str, str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """kohya file tensors -> canonical tensors for a network with ``keys``.

    Returns (canonical tensors, file tensor names that match no network key). SD1 files with
    compvis-style UNet names are read too.
    """
    stems = {stem: key for key, stem in stem_map(family, keys, naming).items()}
    if family == "sd1":
        for stem, key in list(stems.items()):
            alt = _sd1_compvis_stem(stem)
            if alt:
                stems.setdefault(alt, key)
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for name, tensor in tensors.items():
        stem, _, suffix = name.partition(".")
        key = stems.get(stem)
        if key is None or suffix not in TENSOR_SUFFIXES:
            unknown.append(name)
            continue
        out[f"{key}.{suffix}"] = tensor
    return out, unknown


@cache
def _sd1_compvis_map() -> dict[str, str]:
    layout = LAYOUTS["sd1"]
    out = {}
    for path, _ in unet_lora_paths(layout, "diffusers", conv=True):
        out["lora_unet_" + path.replace(".", "_")] = "lora_unet_" + diffusers_to_ldm(path, layout).replace(".", "_")
    return out


def _sd1_compvis_stem(stem: str) -> str | None:
    return _sd1_compvis_map().get(stem)


# -- what a file holds -----------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownStem:
    family: str
    component: str
    conv: bool  # a k x k conv (conv rank); False for Linear/1x1


@cache
def known_stems(family: str) -> dict[str, KnownStem]:
    """Every kohya module name the family's full-size architecture can have (conv ranks included)."""
    out: dict[str, KnownStem] = {}
    layout = LAYOUTS[family]
    style = "diffusers" if family == "sd1" else "ldm"
    for path, is_conv in unet_lora_paths(layout, style, conv=True):
        out["lora_unet_" + path.replace(".", "_")] = KnownStem(family, "unet", is_conv)
    if family == "sd1":
        for path, is_conv in unet_lora_paths(layout, "ldm", conv=True):
            out.setdefault("lora_unet_" + path.replace(".", "_"), KnownStem(family, "unet", is_conv))
    for component, layers in TEXT_ENCODER_LAYERS[family].items():
        for path in clip_lora_paths(layers):
            out[PREFIXES[component] + "_" + path.replace(".", "_")] = KnownStem(family, component, False)
    return out


@dataclass
class LoraModuleWeights:
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: torch.Tensor | None = None

    @property
    def rank(self) -> int | None:
        return None if self.down is None else int(self.down.shape[0])


@dataclass
class FileSummary:
    family: str | None  # "sd1" | "sdxl" | None (unknown)
    modules: dict[str, LoraModuleWeights]
    by_component: dict[str, int] = field(default_factory=dict)
    unknown_keys: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)  # stems without down or up
    ranks: Counter = field(default_factory=Counter)
    alphas: Counter = field(default_factory=Counter)


def group_modules(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, LoraModuleWeights], list[str]]:
    """``<stem>.<suffix>`` tensors grouped per stem; returns (modules, names that are not LoRA tensors)."""
    modules: dict[str, LoraModuleWeights] = {}
    other: list[str] = []
    for name, tensor in tensors.items():
        stem, _, suffix = name.partition(".")
        if suffix == "lora_down.weight":
            modules.setdefault(stem, LoraModuleWeights()).down = tensor
        elif suffix == "lora_up.weight":
            modules.setdefault(stem, LoraModuleWeights()).up = tensor
        elif suffix == "alpha":
            modules.setdefault(stem, LoraModuleWeights()).alpha = tensor
        else:
            other.append(name)
    return modules, other


def detect_family(stems: list[str], metadata: dict[str, str] | None = None) -> str | None:
    """sd1 / sdxl from the names (``lora_te1_``/``lora_te2_`` or sgm-only UNet names -> SDXL),
    falling back to ``ss_base_model_version``; None when neither family matches."""
    metadata = metadata or {}
    scores = {family: sum(1 for s in stems if s in known_stems(family)) for family in ("sd1", "sdxl")}
    best = max(scores, key=scores.get)
    if scores[best] > 0 and scores["sd1"] != scores["sdxl"]:
        return best
    version = metadata.get("ss_base_model_version", "")
    if version.startswith("sdxl"):
        return "sdxl"
    if version.startswith("sd_v1"):
        return "sd1"
    if version.startswith("sd_v2") or metadata.get("ss_v2") == "True":
        return "sd2"
    return None


def summarize(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> FileSummary:
    """Family, module counts per component, rank/alpha histogram and unknown keys of a kohya LoRA."""
    modules, other = group_modules(tensors)
    family = detect_family(list(modules), metadata)
    known = known_stems(family) if family in ("sd1", "sdxl") else {}
    summary = FileSummary(family, modules)
    summary.unknown_keys = sorted(other)
    for stem, weights in modules.items():
        info = known.get(stem)
        if info is None:
            summary.unknown_keys += sorted(
                f"{stem}.{s}"
                for s, t in zip(TENSOR_SUFFIXES, (weights.down, weights.up, weights.alpha))
                if t is not None
            )
            continue
        if weights.down is None or weights.up is None:
            summary.incomplete.append(stem)
        summary.by_component[info.component] = summary.by_component.get(info.component, 0) + 1
        if weights.rank is not None:
            summary.ranks[weights.rank] += 1
        if weights.alpha is not None:
            summary.alphas[float(weights.alpha.float().item())] += 1
    summary.unknown_keys.sort()
    return summary
