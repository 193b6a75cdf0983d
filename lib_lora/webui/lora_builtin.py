"""The built-in Lora extension (``extensions-builtin/Lora``), seen from outside.

Its module ``networks`` is found in ``sys.modules`` (it owns that name), never imported by us: when
the extension is disabled everything here does nothing.

- Before training, the networks the last generation applied are cleared and the weights it merged
  into the model are restored, exactly as its own ``network_apply_weights`` does when a generation
  uses no LoRA (its layers keep ``network_weights_backup``; ``network_current_names`` says what is
  merged).
- After a save, its list of available networks is rescanned so ``<lora:name-000003:1>`` and the
  extra-networks page see the new file.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import torch


def networks_module() -> ModuleType | None:
    module = sys.modules.get("networks")
    if module is None or not hasattr(module, "loaded_networks") or not hasattr(module, "network_apply_weights"):
        return None
    return module


def clear_applied(sd_model: Any) -> int:
    """Unload the built-in Lora's applied networks and restore the weights it merged; returns the
    number of layers restored."""
    networks = networks_module()
    if networks is None:
        return 0
    networks.loaded_networks.clear()
    restored = 0
    with torch.no_grad():
        for module in sd_model.modules():
            if getattr(module, "network_layer_name", None) is None:
                continue
            if getattr(module, "network_current_names", ()) != ():
                networks.network_apply_weights(module)  # with nothing loaded: restore from the backup
                restored += 1
    return restored


def refresh_available() -> bool:
    """Rescan the Lora folder (what the extra-networks Refresh button and
    ``POST /sdapi/v1/refresh-loras`` do); True when the built-in Lora is there."""
    networks = networks_module()
    if networks is None or not hasattr(networks, "list_available_networks"):
        return False
    networks.list_available_networks()
    return True


def is_inside_lora_dirs(path: str) -> bool:
    """Whether the built-in Lora finds ``path`` (its folders are searched recursively)."""
    import os

    from modules import shared

    target = os.path.abspath(path)
    for folder in (getattr(shared.cmd_opts, "lora_dir", None), getattr(shared.cmd_opts, "lyco_dir_backcompat", None)):
        if folder:
            root = os.path.abspath(folder)
            if os.path.commonpath([root, target]) == root:
                return True
    return False


FP8_ROUNDING_NOTE = (
    "The webui's FP8 weight is on: when it applies a LoRA it adds the change to the 8-bit weights, which "
    "rounds small changes away, so the epochs may render alike (and score alike); turn on Settings > "
    "Optimizations > Cache FP16 weight for LoRA to compare them."
)


def fp8_rounding_note() -> str | None:
    """Why epoch images may not differ: with FP8 weight storage (``devices.fp8``) the built-in Lora
    merges the LoRA's delta into the float8 weights unless "Cache FP16 weight for LoRA"
    (``opts.cache_fp16_weight``) keeps an fp16 copy to merge into. Measured in 1.10.1: a LoRA whose
    largest delta is below float8_e4m3fn's step at the weights' size changes no pixel at all."""
    from modules import devices, shared

    if not getattr(devices, "fp8", False) or getattr(shared.opts, "cache_fp16_weight", False):
        return None
    return FP8_ROUNDING_NOTE
