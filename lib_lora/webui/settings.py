"""The "Train LoRA" settings section and where LoRA files go.

Options are registered in ``on_ui_settings`` (the settings page exists only with the UI); with
``--nowebui`` the defaults below apply. Saved values win over defaults, as the webui does.
"""

from __future__ import annotations

import os
from typing import Any

from lib_lora.ui.host import HostSettings

SECTION = ("lora_trainer", "Train LoRA")
CATEGORY = "training"  # the settings page lists the section under "Training" (webui 1.7+), not "Uncategorized"
LORA_FOLDER = "Lora folder"
ADDITIONAL_NETWORKS = "additional-networks"
CUSTOM = "Custom folder"
OUTPUT_CHOICES = (LORA_FOLDER, ADDITIONAL_NETWORKS, CUSTOM)

# key -> default
DEFAULTS: dict[str, Any] = {
    "lora_trainer_output_folder": LORA_FOLDER,
    "lora_trainer_custom_output_dir": "",
    "lora_trainer_default_preset": "character",
    "lora_trainer_tagger_model": "wd-v1-4-swinv2-tagger-v2",
    "lora_trainer_tagger_threshold": 0.35,
    "lora_trainer_tagger_character_threshold": 0.85,
    "lora_trainer_sample_every_n_epochs": 1,
}


def option(key: str) -> Any:
    from modules import shared

    opts = shared.opts
    data = getattr(opts, "data", None)
    if isinstance(data, dict) and key in data:
        return data[key]
    return getattr(opts, key, DEFAULTS[key]) if opts is not None else DEFAULTS[key]


def register_options() -> None:
    """``on_ui_settings``: the section with every option, labels as the settings page shows them."""
    import gradio as gr
    from modules import shared

    from lib_lora.config import PRESETS
    from lib_lora.tagger.models import MODELS

    def add(key: str, label: str, component: Any = None, component_args: Any = None, info: str | None = None) -> None:
        item = shared.OptionInfo(DEFAULTS[key], label, component, component_args, section=SECTION)
        item.category_id = CATEGORY  # an attribute: webui versions before categories do not take the argument
        if info and hasattr(item, "info"):
            item = item.info(info)
        shared.opts.add_option(key, item)

    add(
        "lora_trainer_output_folder", "Where LoRA files are written", gr.Radio, {"choices": list(OUTPUT_CHOICES)},
        info="Lora folder = the built-in Lora's folder (--lora-dir); additional-networks = that extension's models/lora (SD1 only)",
    )  # fmt: skip
    add("lora_trainer_custom_output_dir", "Custom folder (when 'Custom folder' is chosen)")
    add("lora_trainer_default_preset", "Default preset", gr.Dropdown, {"choices": list(PRESETS)})
    add("lora_trainer_tagger_model", "Tagger model", gr.Dropdown, {"choices": list(MODELS)})
    add(
        "lora_trainer_tagger_threshold", "Tagger threshold (general tags)", gr.Slider,
        {"minimum": 0.0, "maximum": 1.0, "step": 0.01},
    )  # fmt: skip
    add(
        "lora_trainer_tagger_character_threshold", "Tagger threshold (character tags)", gr.Slider,
        {"minimum": 0.0, "maximum": 1.0, "step": 0.01},
    )  # fmt: skip
    add(
        "lora_trainer_sample_every_n_epochs", "Sample images every N epochs (0 = none)", gr.Slider,
        {"minimum": 0, "maximum": 50, "step": 1},
        info="generated with txt2img's processing and the LoRA being trained; the first sample of a saved epoch becomes its preview",
    )  # fmt: skip


def host_settings() -> HostSettings:
    return HostSettings(
        default_preset=str(option("lora_trainer_default_preset")),
        tagger_model=str(option("lora_trainer_tagger_model")),
        tagger_threshold=float(option("lora_trainer_tagger_threshold")),
        tagger_character_threshold=float(option("lora_trainer_tagger_character_threshold")),
        sample_every_n_epochs=int(option("lora_trainer_sample_every_n_epochs")),
    )


def lora_dir() -> str:
    """The built-in Lora's folder: ``--lora-dir`` (its preload sets the default ``models/Lora``)."""
    from modules import paths, shared

    folder = getattr(shared.cmd_opts, "lora_dir", None)
    return os.path.abspath(folder or os.path.join(paths.models_path, "Lora"))


def additional_networks_dir() -> str | None:
    """sd-webui-additional-networks' ``models/lora`` when that extension is installed and enabled."""
    try:
        from modules import extensions
    except ImportError:
        return None
    for ext in getattr(extensions, "extensions", []):
        if "additional-networks" in str(getattr(ext, "name", "")).lower() and getattr(ext, "enabled", True):
            return os.path.abspath(os.path.join(ext.path, "models", "lora"))
    return None


def output_dir_choices(family: str | None = None) -> dict[str, str]:
    """Label -> folder. additional-networks cannot load SDXL LoRAs, so it is offered for SD1 only."""
    choices = {LORA_FOLDER: lora_dir()}
    addnet = additional_networks_dir()
    if addnet and family != "sdxl":
        choices[ADDITIONAL_NETWORKS] = addnet
    custom = str(option("lora_trainer_custom_output_dir") or "").strip()
    if custom:
        choices[CUSTOM] = os.path.abspath(os.path.expanduser(custom))
    return choices


def default_output_dir(family: str | None = None) -> str:
    choices = output_dir_choices(family)
    return choices.get(str(option("lora_trainer_output_folder")), choices[LORA_FOLDER])
