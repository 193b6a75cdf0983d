"""A rough estimate of the GPU memory a training run needs (shown as an estimate, never enforced).

need = frozen base weights + activations + LoRA weights, gradients and optimizer state + overhead

- base weights: parameter counts of SD1.5 / SDXL (UNet, text encoders, VAE unless latents are
  cached) x bytes per weight (2 in fp16/bf16, 4 in fp32);
- activations: per latent pixel and image, measured figures at 512 px (SD1) and 1024 px (SDXL) with
  PyTorch's memory-efficient attention, scaled by pixels x batch, x0.35 with gradient checkpointing,
  plus the text encoders' when they are trained;
- LoRA: parameters per rank (kohya's default targets) x (weight + gradient + optimizer states);
- overhead: the CUDA context and the allocator's slack.

Real use varies with the attention backend, fragmentation and the host (the webui keeps its own
buffers), so the UI labels this an estimate and only warns.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
# parameters (millions)
BASE_PARAMS = {
    "sd1": {"unet": 860, "te": 123, "vae": 84},
    "sdxl": {"unet": 2567, "te": 123 + 695, "vae": 84},
}
# activation memory for one image at the reference size, without checkpointing (GiB)
ACTIVATIONS = {"sd1": (512 * 512, 3.2), "sdxl": (1024 * 1024, 11.0)}
TE_ACTIVATIONS = {"sd1": 0.25, "sdxl": 0.6}  # per image, when the text encoders train (GiB)
# LoRA parameters per rank unit (millions) with kohya's default targets (UNet, text encoders)
LORA_PER_RANK = {"sd1": (0.40, 0.15), "sdxl": (2.9, 0.65)}
# optimizer state bytes per trained parameter (besides the fp32 weight and its gradient)
OPTIMIZER_STATE = {
    "adamw": 8,
    "adamw8bit": 2,
    "lion": 4,
    "sgdnesterov": 4,
    "adafactor": 4,
    "prodigy": 16,
    "dadaptadam": 16,
}
OVERHEAD_GIB = 0.8


@dataclass(frozen=True)
class VramEstimate:
    total_gib: float
    parts: dict[str, float]  # GiB per part
    available_gib: float | None = None
    device_name: str | None = None

    @property
    def fits(self) -> bool | None:
        if self.available_gib is None:
            return None
        return self.total_gib <= self.available_gib

    def text(self) -> str:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in self.parts.items())
        line = f"Estimated VRAM need: ~{self.total_gib:.1f} GiB ({parts} GiB); an estimate, real use varies."
        if self.available_gib is not None:
            line += f" {self.device_name or 'GPU'} has {self.available_gib:.1f} GiB."
            if not self.fits:
                line += (
                    " This will probably not fit: lower the batch size or resolution, turn on gradient "
                    "checkpointing and cached latents, train the UNet only, or use AdamW8bit/Adafactor."
                )
        return line


def estimate(
    family: str,
    width: int,
    height: int,
    batch_size: int = 1,
    network_dim: int = 32,
    conv_dim: int | None = None,
    train_unet: bool = True,
    train_text_encoder: bool = True,
    gradient_checkpointing: bool = False,
    mixed_precision: str = "fp16",
    optimizer: str = "AdamW",
    cache_latents: bool = True,
    available_gib: float | None = None,
    device_name: str | None = None,
) -> VramEstimate:
    fam = family if family in BASE_PARAMS else "sd1"
    weight_bytes = 4 if mixed_precision == "no" else 2
    base = BASE_PARAMS[fam]
    params = base["unet"] + base["te"] + (0 if cache_latents else base["vae"])
    weights = params * 1e6 * weight_bytes / GIB
    ref_pixels, ref_gib = ACTIVATIONS[fam]
    acts = ref_gib * (width * height / ref_pixels) * max(1, batch_size)
    if gradient_checkpointing:
        acts *= 0.35
    if mixed_precision == "no":
        acts *= 1.8
    if train_text_encoder:
        acts += TE_ACTIVATIONS[fam] * max(1, batch_size)
    if not train_unet:
        acts *= 0.5  # the UNet still runs forward and backward to reach the text encoders
    unet_rank, te_rank = LORA_PER_RANK[fam]
    rank = network_dim + (conv_dim or 0) * 0.6
    lora_params = (unet_rank * rank if train_unet else 0) + (te_rank * network_dim if train_text_encoder else 0)
    state = OPTIMIZER_STATE.get(optimizer.lower(), 8)
    lora = lora_params * 1e6 * (4 + 4 + state) / GIB
    parts = {"model": weights, "activations": acts, "LoRA+optimizer": lora, "overhead": OVERHEAD_GIB}
    return VramEstimate(sum(parts.values()), parts, available_gib, device_name)


def gpu_memory() -> tuple[str, float] | None:
    """(name, total GiB) of the current CUDA device; None without one."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return props.name, props.total_memory / GIB
    except Exception:
        return None
