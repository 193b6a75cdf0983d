"""modules/shared_cmd_options.py: the parsed command line (the flags the extension reads)."""

import argparse
import os

from modules import paths_internal

cmd_opts = argparse.Namespace(
    api=False, nowebui=False, api_auth=None, lowvram=False, medvram=False, medvram_sdxl=False, no_half=True,
    no_half_vae=False, no_hashing=False, upcast_sampling=False, precision="full", disable_nan_check=False,
    lora_dir=os.path.join(paths_internal.models_path, "Lora"), lyco_dir_backcompat=None, use_cpu=["all"],
    ui_settings_file="config.json", embeddings_dir="embeddings",
)  # fmt: skip
