"""A rough estimate of the GPU memory a training run needs (shown as an estimate, never enforced).

need = frozen base weights + activations + LoRA weights, gradients and optimizer state + overhead

- base weights: parameter counts of SD1.5 / SDXL (UNet, text encoders, VAE unless latents are
  cached) x bytes per weight (2 in fp16/bf16, 4 in fp32);
- activations: per latent pixel and image, measured figures at 512 px (SD1) and 1024 px (SDXL) with
  PyTorch's memory-efficient attention, scaled by pixels x batch, x0.35 with gradient checkpointing,
  plus the text encoders' when they are trained;
- network: its exact parameter count for the type (LoRA/LoCon, LoHa, LoKr, DoRA magnitudes), from
  the trained layers' shapes of the full-size model (``TARGET_LAYERS``) x (weight + gradient +
  optimizer states); LoHa, LoKr and DoRA also build each layer's full weight change in the forward
  pass and keep it for the backward pass (fp32 change + its half-precision copy), which gradient
  checkpointing frees block by block;
- overhead: the CUDA context and the allocator's slack.

Real use varies with the attention backend, fragmentation and the host (the webui keeps its own
buffers), so the UI labels this an estimate and only warns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lib_lora.engine.lora_module import shape_layout

GIB = 1024**3
# parameters (millions)
BASE_PARAMS = {
    "sd1": {"unet": 860, "te": 123, "vae": 84},
    "sdxl": {"unet": 2567, "te": 123 + 695, "vae": 84},
}
# activation memory for one image at the reference size, without checkpointing (GiB)
ACTIVATIONS = {"sd1": (512 * 512, 3.2), "sdxl": (1024 * 1024, 11.0)}
TE_ACTIVATIONS = {"sd1": 0.25, "sdxl": 0.6}  # per image, when the text encoders train (GiB)
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
# The layers kohya's default selection trains on the full-size models (with conv layers on):
# (component, out, in, kernel, conv_only, count); conv_only layers exist only with conv_dim (ResNet
# blocks and samplers: k x k convs at conv_dim, their Linear / 1x1 layers at network_dim).
# tests/jobs/test_vram.py checks these against the real architectures.
TARGET_LAYERS = {
    "sd1": (("te", 768, 768, 1, 0, 48), ("te", 768, 3072, 1, 0, 12), ("te", 3072, 768, 1, 0, 12), ("unet", 320, 320, 1, 0, 40),
            ("unet", 320, 320, 3, 1, 8), ("unet", 320, 640, 1, 1, 2), ("unet", 320, 640, 3, 1, 2), ("unet", 320, 768, 1, 0, 10),
            ("unet", 320, 960, 1, 1, 1), ("unet", 320, 960, 3, 1, 1), ("unet", 320, 1280, 1, 0, 5), ("unet", 320, 1280, 1, 1, 5),
            ("unet", 640, 320, 1, 1, 1), ("unet", 640, 320, 3, 1, 1), ("unet", 640, 640, 1, 0, 40), ("unet", 640, 640, 3, 1, 8),
            ("unet", 640, 768, 1, 0, 10), ("unet", 640, 960, 1, 1, 1), ("unet", 640, 960, 3, 1, 1), ("unet", 640, 1280, 1, 1, 6),
            ("unet", 640, 1280, 3, 1, 1), ("unet", 640, 1920, 1, 1, 1), ("unet", 640, 1920, 3, 1, 1), ("unet", 640, 2560, 1, 0, 5),
            ("unet", 1280, 640, 1, 1, 1), ("unet", 1280, 640, 3, 1, 1), ("unet", 1280, 768, 1, 0, 12), ("unet", 1280, 1280, 1, 0, 48),
            ("unet", 1280, 1280, 1, 1, 12), ("unet", 1280, 1280, 3, 1, 20), ("unet", 1280, 1920, 1, 1, 1), ("unet", 1280, 1920, 3, 1, 1),
            ("unet", 1280, 2560, 1, 1, 5), ("unet", 1280, 2560, 3, 1, 5), ("unet", 1280, 5120, 1, 0, 6), ("unet", 2560, 320, 1, 0, 5),
            ("unet", 5120, 640, 1, 0, 5), ("unet", 10240, 1280, 1, 0, 6)),
    "sdxl": (("te", 768, 768, 1, 0, 48), ("te", 768, 3072, 1, 0, 12), ("te", 1280, 1280, 1, 0, 128), ("te", 1280, 5120, 1, 0, 32),
             ("te", 3072, 768, 1, 0, 12), ("te", 5120, 1280, 1, 0, 32), ("unet", 320, 320, 3, 1, 8), ("unet", 320, 640, 1, 1, 2),
             ("unet", 320, 640, 3, 1, 2), ("unet", 320, 960, 1, 1, 1), ("unet", 320, 960, 3, 1, 1), ("unet", 320, 1280, 1, 1, 5),
             ("unet", 640, 320, 1, 1, 1), ("unet", 640, 320, 3, 1, 1), ("unet", 640, 640, 1, 0, 70), ("unet", 640, 640, 3, 1, 8),
             ("unet", 640, 960, 1, 1, 1), ("unet", 640, 960, 3, 1, 1), ("unet", 640, 1280, 1, 1, 6), ("unet", 640, 1280, 3, 1, 1),
             ("unet", 640, 1920, 1, 1, 1), ("unet", 640, 1920, 3, 1, 1), ("unet", 640, 2048, 1, 0, 20), ("unet", 640, 2560, 1, 0, 10),
             ("unet", 1280, 640, 1, 1, 1), ("unet", 1280, 640, 3, 1, 1), ("unet", 1280, 1280, 1, 0, 372), ("unet", 1280, 1280, 1, 1, 7),
             ("unet", 1280, 1280, 3, 1, 11), ("unet", 1280, 1920, 1, 1, 1), ("unet", 1280, 1920, 3, 1, 1), ("unet", 1280, 2048, 1, 0, 120),
             ("unet", 1280, 2560, 1, 1, 2), ("unet", 1280, 2560, 3, 1, 2), ("unet", 1280, 5120, 1, 0, 60), ("unet", 5120, 640, 1, 0, 10),
             ("unet", 10240, 1280, 1, 0, 60)),
}  # fmt: skip
SAVE_BYTES = {"fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2, "fp32": 4, "float": 4, "float32": 4}
CHECKPOINTED_WEIGHT_FORM = 0.15  # share of the weight-form buffers alive at once with gradient checkpointing


@dataclass(frozen=True)
class NetworkSize:
    params: int  # trained parameters (alpha aside)
    modules: int
    weight_form_elements: int  # host weight elements whose full change is built each step (LoHa/LoKr/DoRA)

    def file_bytes(self, save_precision: str = "fp16") -> int:
        """The .safetensors size: every tensor in ``save_precision`` (alpha included) + a header estimate."""
        per = SAVE_BYTES.get(save_precision, 2)
        return self.params * per + self.modules * (per + 250)


def network_size(
    family: str,
    algo: str = "lora",
    network_dim: int = 32,
    conv_dim: int | None = None,
    train_unet: bool = True,
    train_text_encoder: bool = True,
    *,
    dora: bool = False,
    factor: int = -1,
    decompose_both: bool = False,
    full_matrix: bool = False,
    use_tucker: bool = False,
) -> NetworkSize:
    """Parameter count of a network on the full-size model of ``family`` (``algo``: lora | locon |
    loha | lokr; locon and the LyCORIS types train the 3x3 convs at network_dim unless conv_dim is set)."""
    fam = family if family in TARGET_LAYERS else "sd1"
    engine_algo = "lora" if algo in ("lora", "locon") else algo
    if conv_dim is None and algo != "lora":
        conv_dim = network_dim
    params = modules = weight_form = 0
    for component, out_dim, in_dim, k, conv_only, count in TARGET_LAYERS[fam]:
        if (component == "unet" and not train_unet) or (component == "te" and not train_text_encoder):
            continue
        if conv_only and conv_dim is None:
            continue
        rank = conv_dim if k > 1 else network_dim
        divides = factor > 0 and out_dim % factor == 0 and in_dim % factor == 0
        layout = shape_layout(
            engine_algo, out_dim, in_dim, (k, k) if k > 1 else (), rank, factor=factor if divides else -1,
            decompose_both=decompose_both, full_matrix=full_matrix, use_tucker=use_tucker,
        )  # fmt: skip
        each = sum(math.prod(shape) for shape in layout.values()) + (in_dim if dora else 0)
        params += each * count
        modules += count
        if engine_algo != "lora" or dora:
            weight_form += out_dim * in_dim * k * k * count
    return NetworkSize(params, modules, weight_form)


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
    *,
    algo: str = "lora",
    dora: bool = False,
    factor: int = -1,
    decompose_both: bool = False,
    full_matrix: bool = False,
    use_tucker: bool = False,
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
    size = network_size(
        fam, algo, network_dim, conv_dim, train_unet, train_text_encoder, dora=dora, factor=factor,
        decompose_both=decompose_both, full_matrix=full_matrix, use_tucker=use_tucker,
    )  # fmt: skip
    state = OPTIMIZER_STATE.get(optimizer.lower(), 8)
    lora = size.params * (4 + 4 + state) / GIB
    parts = {"model": weights, "activations": acts, "LoRA+optimizer": lora}
    if size.weight_form_elements:
        share = CHECKPOINTED_WEIGHT_FORM if gradient_checkpointing else 1.0
        parts["weight changes"] = size.weight_form_elements * (4 + weight_bytes) * share / GIB
    parts["overhead"] = OVERHEAD_GIB
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
