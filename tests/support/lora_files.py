"""LoRA files for tests: ours (saved through the real path) and one laid out exactly as
sd-scripts writes it (its key names, fp16 tensors, 0-dim alpha, string metadata, sshs hashes
computed independently here as train_util.precalculate_safetensors_hashes does)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch

from lib_lora.engine.network import LoRANetwork
from lib_lora.engine.targets import select_targets
from support import tiny_models as tm

SD_SCRIPTS_METADATA = {
    "ss_session_id": "1234567890",
    "ss_training_started_at": "1712345678.123456",
    "ss_output_name": "mychar",
    "ss_learning_rate": "0.00016",
    "ss_text_encoder_lr": "6.5e-05",
    "ss_unet_lr": "0.00016",
    "ss_num_train_images": "40",
    "ss_network_module": "networks.lora",
    "ss_network_dim": "4",
    "ss_network_alpha": "2.0",
    "ss_network_dropout": "None",
    "ss_mixed_precision": "fp16",
    "ss_v2": "False",
    "ss_base_model_version": "sd_v1",
    "ss_clip_skip": "2",
    "ss_resolution": "(512, 512)",
    "ss_dataset_dirs": json.dumps({"10_mychar": {"n_repeats": 10, "img_count": 4}}),
    "ss_tag_frequency": json.dumps({"10_mychar": {"mychar": 4, "1girl": 3}}),
    "ss_bucket_info": json.dumps({"buckets": {"0": {"resolution": [512, 512], "count": 40}}, "mean_img_ar_error": 0.0}),
    "ss_epoch": "5",
    "ss_steps": "100",
    "modelspec.sai_model_spec": "1.0.0",
    "modelspec.architecture": "stable-diffusion-v1/lora",
    "modelspec.implementation": "diffusers",
    "modelspec.title": "mychar",
}


def sd1_network(
    rank: int = 4, alpha: float = 2.0, seed: int = 0, randomize: bool = True
) -> tuple[LoRANetwork, torch.nn.Module, torch.nn.Module]:
    unet, te = tm.ldm_sd1_unet(seed), tm.hf_clip_text_model(seed)
    network = LoRANetwork(
        select_targets("sd1", unet, {"te": te}), rank, alpha, naming={"unet": "ldm", "te": "hf"}, family="sd1"
    )
    if randomize:
        generator = torch.Generator().manual_seed(seed + 7)
        with torch.no_grad():
            for module in network:
                module.lora_up.weight.copy_(torch.randn(module.lora_up.weight.shape, generator=generator) * 0.1)
    return network, unet, te


def sd_scripts_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    from safetensors.torch import save

    blob = io.BytesIO(save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")}))
    n = int.from_bytes(blob.read(8), "little")
    blob.seek(8 + n)
    model_hash = hashlib.sha256(blob.read()).hexdigest()
    blob.seek(0x100000)
    legacy = hashlib.sha256(blob.read(0x10000)).hexdigest()[:8]
    return model_hash, legacy


def file_model_hash(path: Path) -> str:
    """sshs_model_hash of a file on disk, from its definition: sha256 of the bytes after the header."""
    data = Path(path).read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()


def write_sd_scripts_style(
    path: Path, named_tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> dict[str, str]:
    """Write kohya-named fp32 tensors the way sd-scripts' save_weights does (fp16 cast, hashes)."""
    from safetensors.torch import save_file

    metadata = dict(SD_SCRIPTS_METADATA if metadata is None else metadata)
    tensors = {k: v.detach().clone().to("cpu").to(torch.float16) for k, v in named_tensors.items()}
    model_hash, legacy = sd_scripts_hashes(tensors, metadata)
    metadata["sshs_model_hash"] = model_hash
    metadata["sshs_legacy_hash"] = legacy
    save_file(tensors, str(path), metadata)
    return metadata
