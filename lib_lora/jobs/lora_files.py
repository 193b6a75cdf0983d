"""Saving and loading a network as a kohya sd-scripts / LyCORIS file (LoRA, LoCon, LoHa, LoKr, DoRA)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lib_lora.common.errors import UserError
from lib_lora.engine.network import LoadReport, LoRANetwork, ModuleLayout
from lib_lora.formats import kohya, safetensors_io

FAMILY_NAMES = {"sd1": "SD1.x", "sdxl": "SDXL", "sd2": "SD2.x"}


@dataclass(frozen=True)
class SavedLora:
    path: Path
    model_hash: str
    legacy_hash: str


def save_network(
    network: LoRANetwork, path: str | os.PathLike, metadata: dict[str, str], save_precision: str = "fp16"
) -> SavedLora:
    """Write ``network`` as a kohya LoRA (every tensor, alpha included, in ``save_precision``),
    atomically, with ``sshs_*`` hashes; NaN/inf weights are refused before anything is written."""
    try:
        dtype = kohya.SAVE_DTYPES[save_precision]
    except KeyError:
        raise UserError(f"save_precision must be fp16, bf16 or float, not {save_precision!r}.") from None
    tensors = kohya.to_kohya(network.lora_state_dict(), network.family, network.naming, dtype)
    model_hash, legacy_hash = safetensors_io.save_lora(path, tensors, metadata)
    return SavedLora(Path(path), model_hash, legacy_hash)


def read_lora_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str], kohya.FileSummary]:
    """Tensors, metadata and summary of a kohya / LyCORIS file (ours, sd-scripts' or LyCORIS's), with
    clear errors."""
    tensors, metadata = safetensors_io.load(path)
    summary = kohya.summarize(tensors, metadata)
    if not summary.modules:
        raise UserError(f"{path} holds no LoRA weights (no lora_*, hada_* or lokr_* tensors).")
    return tensors, metadata, summary


def check_file_type(path: str | os.PathLike, summary: kohya.FileSummary, algo: str, dora: bool) -> None:
    """Refuse, in one sentence, a file whose network type or DoRA differs from the run's."""
    want = kohya.ALGO_LABELS[algo] + (" + DoRA" if dora else "")
    have = summary.describe()
    if set(summary.algos) != {algo} or bool(summary.dora) != dora:
        raise UserError(
            f"{path} is a {have} file, but this run trains {want}: continue it with the same network type "
            "(algo / dora_wd), or start without network_weights."
        )


def file_layouts(
    path: str | os.PathLike, network_keys: list[str], family: str, naming: dict[str, str]
) -> dict[str, ModuleLayout]:
    """canonical key -> how the file holds that module (type, shapes, alpha, DoRA), to build a
    network that loads it exactly; any type the webui loads (LoRA/LoCon/LoHa/LoKr, DoRA)."""
    tensors, _, summary = read_lora_file(path)
    check_file_family(path, summary.family, family)
    if summary.dora_output_axis:
        raise UserError(
            f"{path} has DoRA magnitudes on the output axis (LyCORIS wd_on_output=True), which the webui "
            "applies wrongly; it cannot be used here."
        )
    canonical, _ = kohya.from_kohya(tensors, family, network_keys, naming)
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in canonical.items():
        key, suffix = kohya.split_tensor_name(name)
        grouped.setdefault(key, {})[suffix] = tensor
    layouts: dict[str, ModuleLayout] = {}
    for key, group in grouped.items():
        algo = kohya.module_algo(group)
        if algo is None:
            continue
        shapes = {k: tuple(t.shape) for k, t in group.items() if k not in kohya.COMMON_KEYS}
        alpha = group.get("alpha")
        layouts[key] = ModuleLayout(
            algo, shapes, float(alpha.float().item()) if alpha is not None else None, "dora_scale" in group
        )
    return layouts


def check_file_family(path: str | os.PathLike, file_family: str | None, model_family: str) -> None:
    if file_family == model_family:
        return
    if file_family is None:
        raise UserError(f"{path} is not a LoRA for SD1.x or SDXL: none of its module names match a known architecture.")
    raise UserError(
        f"{path} is a LoRA for {FAMILY_NAMES.get(file_family, file_family)}, but the model is {FAMILY_NAMES.get(model_family, model_family)}."
    )


def module_dims_from_file(
    path: str | os.PathLike, network_keys: list[str], family: str, naming: dict[str, str]
) -> dict[str, tuple[int, float]]:
    """canonical key -> (rank, alpha) for every LoRA module the file holds, to build a matching network."""
    tensors, _, summary = read_lora_file(path)
    check_file_family(path, summary.family, family)
    canonical, _ = kohya.from_kohya(tensors, family, network_keys, naming)
    dims: dict[str, tuple[int, float]] = {}
    for name, tensor in canonical.items():
        key, suffix = kohya.split_tensor_name(name)
        if suffix == "lora_down.weight":
            alpha = canonical.get(f"{key}.alpha")
            rank = int(tensor.shape[0])
            dims[key] = (rank, float(alpha.float().item()) if alpha is not None else float(rank))
    return dims


def load_network_weights(network: LoRANetwork, path: str | os.PathLike, strict: bool = True) -> LoadReport:
    """Load a kohya LoRA file into ``network`` (e.g. to continue training from it).

    With ``strict``, a file for another family, modules the network lacks or shape differences are
    refused with a message; nothing is changed then.
    """
    tensors, _, summary = read_lora_file(path)
    check_file_family(path, summary.family, network.family)
    canonical, unknown = kohya.from_kohya(tensors, network.family, network.lora_keys(), network.naming)
    try:
        report = network.load_lora_state_dict(canonical, strict=strict)
    except ValueError as exc:
        raise UserError(
            f"{path} does not fit this network: {exc}",
            "Use the same network type, network_dim/conv_dim (and factor for LoKr), or start without network_weights.",
        ) from None
    report.unexpected += unknown
    if strict and unknown:
        raise UserError(f"{path} has {len(unknown)} tensors this model has no place for, e.g. {unknown[0]}.")
    return report
