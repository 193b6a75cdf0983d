"""The GPU memory a training run needs, the savers that make it fit, and the spill guard.

need = resident model + activations + LoRA (weights, gradients, optimizer state) + overhead

- resident model: parameter counts of SD1.5 / SDXL per part (UNet, text encoders, VAE) x bytes per
  weight (2 in fp16/bf16, 4 in fp32, 1 for the UNet with ``fp8_base``); the VAE leaves the GPU once
  latents are cached, the text encoders once their outputs are (``cache_text_encoder_outputs``);
- activations, per image at the family's reference size, scaled by pixels x batch:
  * the UNet with SDPA attention: measured on the full-size SD1.5 ldm UNet in float32 with
    ``bench/memory.py`` (CPU, peak RSS over the loaded model, 512 px, batch 1, dim 8: default
    6.59 GiB, +sdpa 2.81, +checkpointing 1.31, +te_cache 1.37, +fp8_base 1.26 over the model;
    totals with the model 10.26 / 6.47 / 4.97 / 4.57 / 2.06 GiB); SDXL scaled from it
    by its UNet's activation volume (not measured); x ``HALF_ACTIVATIONS`` under fp16/bf16
    autocast (an assumption until a GPU run of bench/memory.py calibrates it);
  * quadratic attention (``sdpa`` off): the attention matrices heads x tokens^2 of every
    self-attention layer, counted exactly from the architecture, x a factor fitted to the bench;
  * gradient checkpointing keeps ``CHECKPOINT_KEEP`` of the UNet's activations (bench);
  * a trained text encoder adds its own activations (bench, SD1; SDXL scaled);
- network: its exact parameter count for the type (LoRA/LoCon, LoHa, LoKr, DoRA magnitudes), from
  the trained layers' shapes of the full-size model (``TARGET_LAYERS``) x (weight + gradient +
  optimizer states); LoHa, LoKr and DoRA also build each layer's full weight change in the forward
  pass and keep it for the backward pass (fp32 change + its half-precision copy), which gradient
  checkpointing frees block by block;
- overhead: the CUDA context and the allocator's slack.

:func:`choose_savers` picks the cheapest savers that make a run fit the card's free memory with a
margin, and says why in plain words; :class:`StepTimeWatch` notices a run that has spilled into
shared system memory (the Windows driver's fallback: 1 s/it becomes 100 s/it without a word).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lib_lora.engine.lora_module import shape_layout
from lib_lora.events import Events

GIB = 1024**3
# parameters (millions) per part
BASE_PARAMS = {
    "sd1": {"unet": 860, "te": 123, "vae": 84},
    "sdxl": {"unet": 2567, "te": 123 + 695, "vae": 84},
}
# float32 activations of one image at the reference size with SDPA attention, no checkpointing,
# the UNet only (GiB); SD1 from bench/memory.py (+sdpa row minus its LoRA/optimizer and text
# encoder parts), SDXL scaled by its UNet's activation volume at 1024 px (not measured)
REFERENCE = {"sd1": 512 * 512, "sdxl": 1024 * 1024}
UNET_ACTIVATIONS = {"sd1": 2.64, "sdxl": 10.0}
# float32, per image, when the text encoders train (CLIP-L at 77 tokens is small: bench rows
# +checkpointing and +te_cache differ by its weights only; SDXL scaled by its encoders' size)
TE_ACTIVATIONS = {"sd1": 0.1, "sdxl": 0.4}
CHECKPOINT_KEEP = 0.5  # share of the UNet's activations the peak keeps with block checkpointing (bench)
HALF_ACTIVATIONS = 0.55  # fp16/bf16 autocast vs float32 activations (assumption: GroupNorm stays fp32)
# self-attention layers per level: (downsampling factor, transformer layers, heads)
ATTENTION_LAYERS = {
    "sd1": [(1, 5, 8), (2, 5, 8), (4, 5, 8), (8, 1, 8)],
    "sdxl": [(2, 10, 10), (4, 60, 20)],
}
QUADRATIC_SAVED = 1.42  # attention matrices kept per layer by ldm's attention (bench: default - +sdpa)
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
MARGIN = 1.1  # a run must fit in free memory / MARGIN ...
MARGIN_GIB = 0.5  # ... and leave this much
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
# The full-size weight change of a LoKr / LoHa / DoRA layer is built in the forward pass, used and
# dropped, then rebuilt in the backward pass (engine/lora_module.NetworkModule.branch): at most the
# change, its gradient and DoRA's re-normalised weight of one layer are alive at once.
WEIGHT_FORM_COPIES = 3


@dataclass(frozen=True)
class NetworkSize:
    params: int  # trained parameters (alpha aside)
    modules: int
    # the largest layer whose full-size change is built each step (LoHa/LoKr/DoRA; 0 for LoRA/LoCon),
    # in elements: the change is rebuilt layer by layer, never kept for the whole model
    largest_weight_form: int = 0

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
    params = modules = largest = 0
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
            largest = max(largest, out_dim * in_dim * k * k)
    return NetworkSize(params, modules, largest)


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


def attention_matrices_gib(family: str, width: int, height: int, batch: int, bytes_per: int) -> float:
    """The self-attention matrices (heads x tokens x tokens) of one forward pass, every layer."""
    tokens = (width // 8) * (height // 8)
    total = 0.0
    for factor, layers, heads in ATTENTION_LAYERS[family]:
        n = tokens / (factor * factor)
        total += layers * heads * n * n * bytes_per
    return total * batch / GIB


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
    sdpa: bool = True,
    cache_text_encoder_outputs: bool = False,
    fp8_base: bool = False,
    algo: str = "lora",
    dora: bool = False,
    factor: int = -1,
    decompose_both: bool = False,
    full_matrix: bool = False,
    use_tucker: bool = False,
) -> VramEstimate:
    fam = family if family in BASE_PARAMS else "sd1"
    half = mixed_precision != "no"
    weight_bytes = 2 if half else 4
    base = BASE_PARAMS[fam]
    model = base["unet"] * (1 if fp8_base else weight_bytes)
    if not cache_text_encoder_outputs:
        model += base["te"] * weight_bytes
    if not cache_latents:
        model += base["vae"] * weight_bytes
    weights = model * 1e6 / GIB
    batch = max(1, batch_size)
    scale = (width * height / REFERENCE[fam]) * batch
    acts = UNET_ACTIVATIONS[fam] * scale
    if gradient_checkpointing:
        acts *= CHECKPOINT_KEEP
    if not sdpa:
        attention = QUADRATIC_SAVED * attention_matrices_gib(fam, width, height, batch, 4)
        acts += attention * (CHECKPOINT_KEEP if gradient_checkpointing else 1.0)
    if train_text_encoder:
        acts += TE_ACTIVATIONS[fam] * batch
    if not train_unet:
        acts *= 0.5  # the UNet still runs forward and backward to reach the text encoders
    if half:
        acts *= HALF_ACTIVATIONS
    size = network_size(
        fam, algo, network_dim, conv_dim, train_unet, train_text_encoder, dora=dora, factor=factor,
        decompose_both=decompose_both, full_matrix=full_matrix, use_tucker=use_tucker,
    )  # fmt: skip
    state = OPTIMIZER_STATE.get(optimizer.lower(), 8)
    lora = size.params * (4 + 4 + state) / GIB
    parts = {"model": weights, "activations": acts, "LoRA+optimizer": lora}
    if size.largest_weight_form:
        parts["weight changes"] = size.largest_weight_form * WEIGHT_FORM_COPIES * 4 / GIB
    parts["overhead"] = OVERHEAD_GIB
    return VramEstimate(sum(parts.values()), parts, available_gib, device_name)


def estimate_for(
    cfg: Any, family: str, available_gib: float | None = None, device_name: str | None = None, **overrides: Any
) -> VramEstimate:
    """:func:`estimate` for a TrainConfig (``overrides`` replace its savers)."""
    width, height = cfg.resolution_wh
    values = {
        "sdpa": cfg.sdpa, "gradient_checkpointing": cfg.gradient_checkpointing,
        "cache_text_encoder_outputs": cfg.cache_text_encoder_outputs, "fp8_base": cfg.fp8_base,
    }  # fmt: skip
    values.update(overrides)
    return estimate(
        family, width, height, cfg.train_batch_size, cfg.network_dim, cfg.effective_conv_dim, cfg.train_unet,
        cfg.train_text_encoder, values["gradient_checkpointing"], "no" if cfg.mixed_precision == "no" else "fp16",
        cfg.optimizer_type, cfg.cache_latents, sdpa=values["sdpa"],
        cache_text_encoder_outputs=values["cache_text_encoder_outputs"], fp8_base=values["fp8_base"],
        algo=cfg.algo, dora=cfg.dora_wd, factor=cfg.factor, decompose_both=cfg.decompose_both,
        full_matrix=cfg.full_matrix, use_tucker=cfg.use_tucker, available_gib=available_gib, device_name=device_name,
    )  # fmt: skip


# -- auto memory ---------------------------------------------------------------------------------------

# cheapest first: free, free, ~20 % slower, slower and a little less precise
SAVER_ORDER = ("sdpa", "cache_text_encoder_outputs", "gradient_checkpointing", "fp8_base")
SAVER_WORDS = {
    "sdpa": "memory-efficient attention",
    "cache_text_encoder_outputs": "cached text encoder outputs",
    "gradient_checkpointing": "gradient checkpointing",
    "fp8_base": "FP8 base weights",
}


@dataclass
class SaverChoice:
    changes: dict[str, bool] = field(default_factory=dict)  # settings to turn on
    need_gib: float = 0.0  # estimated need of the run with the chosen savers
    free_gib: float | None = None
    fits: bool = True
    lines: list[str] = field(default_factory=list)  # what was chosen and why, in plain words


def _usable(cfg: Any, name: str, float8_ok: bool) -> bool:
    if getattr(cfg, name):
        return False  # already on
    if name == "cache_text_encoder_outputs":
        from lib_lora.config import saver_problems

        if saver_problems(cfg.replace(cache_text_encoder_outputs=True)):
            return False
    if name == "fp8_base":
        return float8_ok
    return True


def choose_savers(
    cfg: Any, family: str, free_gib: float, resident_gib: float | None = None, float8_ok: bool = True
) -> SaverChoice:
    """The cheapest savers (in :data:`SAVER_ORDER`) that make the run fit with a margin.

    ``free_gib`` is the card's free memory now; ``resident_gib`` what the loaded model already holds
    on it (default: the estimate's model part), which the run's need includes, so the run has
    ``free + resident`` to fit in. Savers the user turned on stay on; only savers that are off are
    added."""
    resident = estimate_for(cfg, family, fp8_base=False, cache_text_encoder_outputs=False).parts["model"]
    resident = resident if resident_gib is None else resident_gib
    room = free_gib + resident
    budget = room / MARGIN - MARGIN_GIB

    def need(changes: dict[str, bool]) -> float:
        return estimate_for(cfg, family, **changes).total_gib

    choice = SaverChoice(free_gib=room)
    choice.need_gib = need({})
    if choice.need_gib <= budget:
        choice.lines.append(
            f"Memory: this run needs ~{choice.need_gib:.1f} GiB and {room:.1f} GiB are free for it; "
            "no extra saver needed."
        )
        return choice
    changes: dict[str, bool] = {}
    for name in SAVER_ORDER:
        if not _usable(cfg, name, float8_ok):
            continue
        before = need(changes)
        changes[name] = True
        choice.lines.append(
            f"{SAVER_WORDS[name].capitalize()} on: without it this run needs ~{before:.1f} GiB, "
            f"{room:.1f} GiB are free for it (with it ~{need(changes):.1f} GiB)."
        )
        if need(changes) <= budget:
            break
    choice.changes = changes
    choice.need_gib = need(changes)
    choice.fits = choice.need_gib <= budget
    if not choice.fits:
        choice.lines.append(
            f"Even with every saver this run needs ~{choice.need_gib:.1f} GiB of {room:.1f} GiB free: lower the "
            "batch size, the resolution or network_dim, or use AdamW8bit/Adafactor."
        )
    return choice


def apply_auto_memory(
    cfg: Any,
    bundle: Any,
    events: Events,
    free: Callable[[], tuple[str, float, float] | None] | None = None,
) -> Any:
    """Before a run on CUDA with ``auto_memory`` on: the cheapest savers that make it fit the card's
    free memory are turned on, and why is said in plain words. ``cfg`` as it was otherwise."""
    if not getattr(cfg, "auto_memory", False) or bundle.device.type != "cuda":
        return cfg
    found = (free or gpu_free)()
    if found is None:
        return cfg
    name, free_gib, total_gib = found
    from lib_lora.engine.fp8 import float8_problem

    float8_ok = float8_problem(bundle.device) is None
    choice = choose_savers(cfg, bundle.family, free_gib, float8_ok=float8_ok)
    for line in choice.lines:
        (events.info if choice.fits else events.warning)(line)
    if choice.changes:
        cfg = cfg.replace(**choice.changes)
    spill = over_physical_memory(estimate_for(cfg, bundle.family).total_gib, total_gib, name)
    if spill:
        events.warning(spill)
    return cfg


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


def gpu_free() -> tuple[str, float, float] | None:
    """(name, free GiB, total GiB) of the current CUDA device now; None without one."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
        return torch.cuda.get_device_name(), free / GIB, total / GIB
    except Exception:
        return None


# -- spill guard -----------------------------------------------------------------------------------------

SPILL_FIX = (
    "lower train_batch_size or the resolution, turn on gradient_checkpointing, cache_text_encoder_outputs "
    "or fp8_base, or close other programs using the GPU"
)


def over_physical_memory(need_gib: float, total_gib: float, name: str = "the GPU") -> str | None:
    """One sentence when a run needs more than the card physically has (the driver would spill)."""
    if need_gib <= total_gib:
        return None
    return (
        f"This run needs ~{need_gib:.1f} GiB but {name} has {total_gib:.1f} GiB: on Windows the driver then "
        f"spills into system memory and training becomes 10-100x slower; {SPILL_FIX}."
    )


class StepTimeWatch:
    """Notices when steps become ``factor`` times slower than the first steps (VRAM spilled into
    shared system memory). :meth:`observe` returns one sentence, once, when that happens."""

    def __init__(self, baseline_steps: int = 3, factor: float = 5.0, window: int = 3) -> None:
        self.baseline_steps = baseline_steps
        self.factor = factor
        self.window = window
        self.times: list[float] = []
        self.warned = False

    def observe(self, seconds: float) -> str | None:
        self.times.append(seconds)
        # the first step pays for warm-up (kernels, allocator): the baseline is the steps after it
        first = self.times[1 : 1 + self.baseline_steps]
        if self.warned or len(first) < self.baseline_steps or len(self.times) < 1 + self.baseline_steps + self.window:
            return None
        baseline = sorted(first)[len(first) // 2]
        recent = self.times[-self.window :]
        if baseline > 0 and min(recent) >= self.factor * baseline:
            self.warned = True
            return (
                f"Training slowed from {baseline:.2f} s to {min(recent):.1f} s per step: the GPU memory is "
                f"probably full and spilling into system memory; press Stop (what was learnt is saved) and "
                f"{SPILL_FIX}."
            )
        return None


class SpillEvents(Events):
    """An Events listener that feeds step times to a :class:`StepTimeWatch` and reports its
    sentence as a warning through ``report``."""

    def __init__(self, report: Callable[[str], None], watch: StepTimeWatch | None = None) -> None:
        self.report = report
        self.watch = watch or StepTimeWatch()

    def step(self, info: Any) -> None:
        sentence = self.watch.observe(float(info.seconds))
        if sentence:
            self.report(sentence)
