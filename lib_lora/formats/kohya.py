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
# The one table of network types -> the tensor names each module of that type has in a file (after
# ``<stem>.``), as LyCORIS writes them and the webui 1.10.1 / Forge read them. Every module may also have
# ``alpha`` (0-dim) and ``dora_scale`` (DoRA magnitude, [1, in] / [1, in, 1, 1]: the input axis).
ALGO_KEYS: dict[str, tuple[str, ...]] = {
    "lora": ("lora_down.weight", "lora_up.weight", "lora_mid.weight"),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
    "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
}
# what a module of each type must hold to be complete (alternatives: any one group)
ALGO_REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = {
    "lora": (("lora_down.weight", "lora_up.weight"),),
    "loha": (("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),),
    "lokr": (("lokr_w1",), ("lokr_w1_a", "lokr_w1_b"), ("lokr_w2",), ("lokr_w2_a", "lokr_w2_b")),
}
ALGO_LABELS = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr"}
COMMON_KEYS = ("alpha", "dora_scale")
TENSOR_SUFFIXES = (*(name for names in ALGO_KEYS.values() for name in names), *COMMON_KEYS)
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
    """``<key>.lora_down.weight`` -> (key, "lora_down.weight") (any type's tensor name); ValueError
    for other names."""
    for suffix in TENSOR_SUFFIXES:
        if name.endswith("." + suffix):
            return name[: -len(suffix) - 1], suffix
    raise ValueError(f"not a LoRA tensor name: {name}")


def to_kohya(
    state: dict[str, torch.Tensor], family: str, naming: dict[str, str], dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Canonical network tensors -> kohya file tensors (``<stem>.lora_down.weight``, ``<stem>.lokr_w1``
    ...), every tensor (alpha included, a 0-dim tensor) cast to ``dtype``, contiguous, on the CPU."""
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


def module_algo(names: set[str] | dict) -> str | None:
    """The network type of one module's tensor names (None when none of the types matches)."""
    for algo, keys in ALGO_KEYS.items():
        if any(name in keys for name in names):
            return algo
    return None


@dataclass
class LoraModuleWeights:
    """One module's tensors by their file name (``lora_down.weight``, ``lokr_w1``, ``alpha`` ...)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def algo(self) -> str | None:
        return module_algo(self.tensors)

    @property
    def down(self) -> torch.Tensor | None:
        return self.tensors.get("lora_down.weight")

    @property
    def up(self) -> torch.Tensor | None:
        return self.tensors.get("lora_up.weight")

    @property
    def alpha(self) -> torch.Tensor | None:
        return self.tensors.get("alpha")

    @property
    def dora(self) -> bool:
        return "dora_scale" in self.tensors

    @property
    def complete(self) -> bool:
        algo = self.algo
        if algo is None:
            return False
        groups = ALGO_REQUIRED[algo]
        if algo == "lokr":  # one of the w1 forms and one of the w2 forms
            return any(all(k in self.tensors for k in g) for g in groups[:2]) and any(
                all(k in self.tensors for k in g) for g in groups[2:]
            )
        return all(all(k in self.tensors for k in g) for g in groups)

    @property
    def rank(self) -> int | None:
        """lora: ``lora_down`` rows; loha: ``hada_w1_b`` rows; lokr: the low-rank pair's rank, None
        when both factors are full matrices."""
        t = self.tensors
        if "lora_down.weight" in t:
            return int(t["lora_down.weight"].shape[0])
        if "hada_w1_b" in t:
            return int(t["hada_w1_b"].shape[0])
        if "lokr_w1_b" in t:
            return int(t["lokr_w1_b"].shape[0])
        if "lokr_w2_b" in t:
            return int(t["lokr_w2_b"].shape[0])
        return None

    @property
    def lokr_factor(self) -> int | None:
        """LoKr: the small factor's output size (``lokr_w1`` rows), what ``factor`` chose."""
        t = self.tensors
        if "lokr_w1" in t:
            return int(t["lokr_w1"].shape[0])
        if "lokr_w1_a" in t:
            return int(t["lokr_w1_a"].shape[0])
        return None

    def dora_on_output_axis(self) -> bool:
        """A ``dora_scale`` of shape [out, 1(, 1, 1)] (LyCORIS ``wd_on_output=True``): the webui 1.10.1
        applies it without an error but with wrong weights."""
        scale = self.tensors.get("dora_scale")
        return scale is not None and scale.dim() >= 2 and scale.shape[1] == 1 and scale.shape[0] != 1


@dataclass
class FileSummary:
    family: str | None  # "sd1" | "sdxl" | None (unknown)
    modules: dict[str, LoraModuleWeights]
    by_component: dict[str, int] = field(default_factory=dict)
    unknown_keys: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)  # stems without the tensors their type needs
    ranks: Counter = field(default_factory=Counter)
    alphas: Counter = field(default_factory=Counter)
    algos: Counter = field(default_factory=Counter)  # "lora" | "loha" | "lokr" -> modules
    dora: int = 0  # modules with dora_scale
    dora_output_axis: int = 0  # ... of them with the [out, 1] layout the webui applies wrongly
    factors: Counter = field(default_factory=Counter)  # LoKr small-factor sizes
    full_matrix: int = 0  # LoKr modules with both factors full

    @property
    def algo(self) -> str | None:
        """The file's network type when all modules share one (else None)."""
        return next(iter(self.algos)) if len(self.algos) == 1 else None

    def describe(self) -> str:
        """``LoKr + DoRA``-style name of what the file holds."""
        text = " + ".join(ALGO_LABELS[a] for a in sorted(self.algos)) or "nothing"
        return text + (" + DoRA" if self.dora else "")


def group_modules(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, LoraModuleWeights], list[str]]:
    """``<stem>.<name>`` tensors grouped per stem; returns (modules, names that are not network tensors)."""
    modules: dict[str, LoraModuleWeights] = {}
    other: list[str] = []
    for name, tensor in tensors.items():
        stem, _, suffix = name.partition(".")
        if suffix in TENSOR_SUFFIXES:
            modules.setdefault(stem, LoraModuleWeights()).tensors[suffix] = tensor
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
    """Family, network type(s), module counts per component, rank/alpha histogram, DoRA and unknown
    keys of a kohya / LyCORIS file."""
    modules, other = group_modules(tensors)
    family = detect_family(list(modules), metadata)
    known = known_stems(family) if family in ("sd1", "sdxl") else {}
    summary = FileSummary(family, modules)
    summary.unknown_keys = sorted(other)
    for stem, weights in modules.items():
        info = known.get(stem)
        if info is None:
            summary.unknown_keys += sorted(f"{stem}.{s}" for s in weights.tensors)
            continue
        if not weights.complete:
            summary.incomplete.append(stem)
        summary.by_component[info.component] = summary.by_component.get(info.component, 0) + 1
        algo = weights.algo
        if algo is not None:
            summary.algos[algo] += 1
        if weights.dora:
            summary.dora += 1
            summary.dora_output_axis += weights.dora_on_output_axis()
        if algo == "lokr":
            if weights.lokr_factor is not None:
                summary.factors[weights.lokr_factor] += 1
            if weights.rank is None:
                summary.full_matrix += 1
        if weights.rank is not None:
            summary.ranks[weights.rank] += 1
        if weights.alpha is not None:
            summary.alphas[float(weights.alpha.float().item())] += 1
    summary.unknown_keys.sort()
    return summary
