"""The stand-in webui for one test: ``modules`` (tests/support/webui_stub/modules) and the built-in
Lora's ``networks`` on ``sys.path``, folders under a temp dir, the attention optimisation applied
and the Lora patches installed as at webui start-up; everything removed again afterwards (the stub
modules and ``lib_lora.webui`` are dropped from ``sys.modules`` so the next test starts fresh)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from support.data_images import make_dataset

# quick training settings for the tiny models (64 px, rank 2, two epochs saved every epoch)
FAST = {
    "resolution": "64", "enable_bucket": False, "max_train_epochs": 2, "save_every_n_epochs": 1,
    "train_batch_size": 1, "network_dim": 2, "network_alpha": 1, "sample_every_n_epochs": 1,
    "sample_prompts": "hutao, smile --w 64 --h 64 --s 2", "cache_latents": True, "shuffle_caption": False,
    "mixed_precision": "no", "gradient_checkpointing": False, "seed": 1, "optimizer_type": "AdamW",
    "learning_rate": 1e-3, "unet_lr": 1e-3, "text_encoder_lr": 1e-3, "lr_scheduler": "constant", "lr_warmup_steps": 0,
}  # fmt: skip

STUB = Path(__file__).resolve().parent / "webui_stub"
PATHS = [str(STUB), str(STUB / "builtin_lora")]


def _is_ours(name: str) -> bool:
    return name in ("modules", "networks") or name.startswith(("modules.", "lib_lora.webui"))


@contextlib.contextmanager
def stub_webui(root: Path) -> Iterator[SimpleNamespace]:
    for name in [n for n in sys.modules if _is_ours(n)]:
        del sys.modules[name]
    sys.path[:0] = PATHS
    try:
        from modules import paths_internal

        paths_internal.data_path = paths_internal.script_path = str(root)
        paths_internal.models_path = str(root / "models")
        paths_internal.extensions_dir = str(root / "extensions")
        import networks
        from modules import (
            call_queue,
            devices,
            images,
            lowvram,
            paths,
            processing,
            progress,
            script_callbacks,
            sd_hijack,
            sd_models,
            shared,
        )  # fmt: skip

        paths.data_path, paths.models_path = paths_internal.data_path, paths_internal.models_path
        shared.cmd_opts.lora_dir = str(root / "models" / "Lora")
        shared.opts.outdir_txt2img_grids = str(root / "outputs" / "txt2img-grids")
        sd_hijack.apply_optimizations()
        networks.install()
        env = SimpleNamespace(
            root=root, shared=shared, sd_models=sd_models, devices=devices, call_queue=call_queue,
            script_callbacks=script_callbacks, processing=processing, progress=progress, sd_hijack=sd_hijack,
            networks=networks, lowvram=lowvram, images=images, lora_dir=Path(shared.cmd_opts.lora_dir),
        )  # fmt: skip
        yield env
    finally:
        networks_module = sys.modules.get("networks")
        if networks_module is not None:
            networks_module.uninstall()
        hijack = sys.modules.get("modules.sd_hijack")
        if hijack is not None:
            hijack.undo_optimizations()
        for path in PATHS:
            while path in sys.path:
                sys.path.remove(path)
        for name in [n for n in sys.modules if _is_ours(n)]:
            del sys.modules[name]


def load_model(env: SimpleNamespace, model: Any) -> Any:
    """What the webui does after loading a checkpoint: shared.sd_model, Lora layer names."""
    env.sd_models.model_data.set_sd_model(model)
    env.networks.assign_network_names_to_compvis_modules(model)
    return model


def dataset(root: Path, images: int = 3, size: tuple[int, int] = (64, 64), name: str = "2_hutao") -> Path:
    """An N_name dataset with captions that use booru brackets (``hu_tao_(genshin_impact)``)."""
    files = [(f"img{i}.png", size, f"hutao, hu_tao_(genshin_impact), {'red eyes' if i % 2 else 'smile'}") for i in range(images)]  # fmt: skip
    return make_dataset(root, {name: files})


def outputs(model: Any, seed: int = 7) -> dict[str, torch.Tensor]:
    """The model's outputs on fixed inputs through the webui's own paths (UNet, text, VAE)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    image = torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1
    t = torch.tensor([500])
    with torch.no_grad():
        if getattr(model, "is_sdxl", False):
            from modules.prompt_parser import SdConditioning

            cond = model.get_learned_conditioning(SdConditioning(["hutao, smile"], width=64, height=64))
            text = cond["crossattn"]
            unet = model.apply_model(x, t, cond)
            latent = model.first_stage_model.encoder(image)
        else:
            text = model.get_learned_conditioning(["hutao, smile"])
            unet = model.apply_model(x, t, text)
            latent = model.encode_first_stage(image).mean
        decoded = model.decode_first_stage(x)
    return {"text": text.clone(), "unet": unet.clone(), "latent": latent.clone(), "decoded": decoded.clone()}


def same_outputs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names of the outputs that are not bit-identical."""
    return [k for k in a if not torch.equal(a[k], b[k])]


def model_state(model: Any) -> dict[str, Any]:
    """Everything the restore must put back, besides outputs: weights, requires_grad, modes, devices,
    dtypes, instance forwards, checkpoint flags."""
    return {
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "modes": {k: m.training for k, m in model.named_modules()},
        "where": {k: (p.device, p.dtype) for k, p in model.named_parameters()},
        "forwards": sorted(k for k, m in model.named_modules() if "forward" in m.__dict__),
        "flags": {
            k: (m.__dict__.get("checkpoint"), m.__dict__.get("use_checkpoint")) for k, m in model.named_modules()
        },
    }


def state_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("grad", "modes", "where", "forwards", "flags"):
        if a[key] != b[key]:
            problems.append(key)
    if a["weights"].keys() != b["weights"].keys() or any(
        not torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"]
    ):
        problems.append("weights")
    return problems


def network_for(bundle: Any, *, unet: bool = True, text: bool = True, rank: int = 2, seed: int | None = None) -> Any:
    """A LoRA network on the bundle's hosts (random up weights when ``seed`` is given)."""
    from lib_lora.engine.network import LoRANetwork
    from lib_lora.engine.targets import select_targets

    host_unet, encoders, naming = bundle.lora_hosts()
    targets = select_targets(bundle.family, host_unet if unet else None, encoders if text else {})
    network = LoRANetwork(targets, rank, rank, naming=naming, family=bundle.family)
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in network:
                module.lora_up.weight.copy_(torch.randn(module.lora_up.weight.shape, generator=generator) * 0.5)
    return network


def write_lora(bundle: Any, path: Path, seed: int = 3) -> Path:
    """A kohya LoRA file for the bundle's model, with non-zero weights."""
    from lib_lora.formats import metadata as md
    from lib_lora.jobs.lora_files import save_network

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"ss_output_name": path.stem, "ss_network_module": "networks.lora"}
    meta["ss_base_model_version"] = md.base_model_version(bundle.family, False)
    save_network(network_for(bundle, seed=seed), path, meta)
    return path
