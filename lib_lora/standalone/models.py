"""Loading a model for the standalone host: a built-in demo model or a single-file checkpoint.

``load_model("tiny-sd15")`` / ``load_model("tiny-sdxl")`` create the demo models in-process;
``load_model("path/to/model.safetensors")`` loads an SD1.x or SDXL checkpoint offline (family and
v-prediction detected from the file, both overridable).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lib_lora.common.errors import UserError
from lib_lora.standalone.architectures import _require_diffusers
from lib_lora.standalone.bundle import DiffusersBundle
from lib_lora.standalone.tiny import TINY_MODELS, build_tiny

FAMILIES = ("auto", "sd1", "sdxl")
DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32, "no": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}  # fmt: skip


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"Unknown device {device!r}; use cpu, cuda or cuda:N.") from None


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None -> float16 on a GPU, float32 on the CPU; names as in sd-scripts' precision options."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise UserError(f"Unknown precision {dtype!r}; use fp32, fp16 or bf16.") from None


def training_dtype(mixed_precision: str, device: torch.device) -> str:
    """The precision to load the model in for a run: the one its mixed precision computes in."""
    from lib_lora.jobs.train import resolve_mixed_precision

    return {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}[resolve_mixed_precision(mixed_precision, device)]


def is_builtin(name_or_path: str | os.PathLike) -> bool:
    return str(name_or_path) in TINY_MODELS


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    v_prediction: bool | None = None,
    family: str = "auto",
    clip_skip: int | None = None,
    max_token_length: int = 75,
    tokenizer_dir: str | os.PathLike | None = None,
    vae: str | os.PathLike | None = None,
    configs: dict[str, dict] | None = None,
) -> DiffusersBundle:
    """A :class:`DiffusersBundle` for ``tiny-sd15``, ``tiny-sdxl`` or a ``.safetensors`` checkpoint.

    Args:
        v_prediction: None = as the file says (a ``v_pred`` key), else forced.
        family: ``auto`` | ``sd1`` | ``sdxl``; a named family must match the file.
        clip_skip: SD1's clip skip (1 or None = last layer); ignored for SDXL.
        tokenizer_dir: a folder with CLIP's vocab.json + merges.txt (else the HF cache or open_clip).
        vae: a separate VAE ``.safetensors`` (ldm or diffusers names) to use instead of the built-in one.
        configs: component configs replacing the shipped ones (``unet``, ``vae``, ``te``/``te1``/``te2``).
    """
    if family not in FAMILIES:
        raise UserError(f"Unknown model family {family!r}; use auto, sd1 or sdxl.")
    _require_diffusers()
    target = resolve_device(device)
    precision = resolve_dtype(dtype, target)
    name = str(name_or_path)
    if is_builtin(name):
        builtin_family = "sd1" if name == "tiny-sd15" else "sdxl"
        if family not in ("auto", builtin_family):
            raise UserError(f"{name} is an {'SD1.x' if builtin_family == 'sd1' else 'SDXL'} model, not {family}.")
        bundle = build_tiny(name, device=target, dtype=precision, v_prediction=bool(v_prediction), clip_skip=clip_skip)
        bundle.set_text_options(clip_skip=clip_skip, max_token_length=max_token_length)
        return bundle
    return load_checkpoint(
        name, device=target, dtype=precision, v_prediction=v_prediction, family=family, clip_skip=clip_skip,
        max_token_length=max_token_length, tokenizer_dir=tokenizer_dir, vae=vae, configs=configs,
    )  # fmt: skip


def load_checkpoint(
    path: str | os.PathLike,
    *,
    device: torch.device,
    dtype: torch.dtype,
    v_prediction: bool | None = None,
    family: str = "auto",
    clip_skip: int | None = None,
    max_token_length: int = 75,
    tokenizer_dir: str | os.PathLike | None = None,
    vae: str | os.PathLike | None = None,
    configs: dict[str, dict] | None = None,
) -> DiffusersBundle:
    """Load a single-file checkpoint (see :mod:`lib_lora.standalone.checkpoint`)."""
    from contextlib import ExitStack

    from lib_lora.standalone import checkpoint
    from lib_lora.standalone.tokenizer import load_clip_tokenizers

    path = Path(path)
    DiffusersBundle.check_text_options(clip_skip, max_token_length)
    with ExitStack() as stack:
        source = stack.enter_context(checkpoint.open_source(path))
        info = checkpoint.inspect_source(source, path.name, family)
        vae_source = None
        if vae is not None:
            vae_source = stack.enter_context(checkpoint.open_source(vae))
            if not any(k.startswith(("encoder.", "first_stage_model.encoder.")) for k in vae_source.names()):
                raise UserError(f"{Path(vae).name} is not a VAE file (it has no encoder.* weights).")
        elif not info.has_vae:
            raise UserError(f"{path.name} has no VAE weights (first_stage_model.*); give a VAE file as well.")
        # the tokenizer first: a missing vocabulary is reported before minutes of loading
        tokenizers = load_clip_tokenizers(info.family, tokenizer_dir)
        vae_prefix = ""
        if vae_source is not None and any(k.startswith(checkpoint.VAE_PREFIX) for k in vae_source.names()):
            vae_prefix = checkpoint.VAE_PREFIX
        unet, vae_module, encoders = checkpoint.build_components(
            source,
            info.family,
            device=device,
            dtype=dtype,
            configs=checkpoint.component_configs(info.family, configs),
            vae_source=vae_source,
            vae_prefix=checkpoint.VAE_PREFIX if vae_source is None else vae_prefix,
        )
    bundle = DiffusersBundle(
        info.family, unet, vae_module, encoders, tokenizers,
        model_name=path.name, model_path=str(path),
        v_prediction=info.v_prediction if v_prediction is None else bool(v_prediction),
        clip_skip=clip_skip, max_token_length=max_token_length,
    )  # fmt: skip
    bundle.zero_terminal_snr = info.zero_terminal_snr
    bundle.vae_path = str(vae) if vae is not None else None  # ss_vae_* (sd-scripts' --vae)
    return bundle
