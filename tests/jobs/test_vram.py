"""The memory estimate knows every saver and each network type (the layer table is the real full-size
architectures', the parameter counts those of the networks the engine builds), auto memory picks the cheapest savers that fit and says
why, the spill guard notices a run that became 5x slower (a fake clock, no GPU needed)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from lib_lora.config import build_config
from lib_lora.engine.lora_module import host_dims
from lib_lora.engine.network import LoRANetwork
from lib_lora.engine.targets import select_targets
from lib_lora.events import RecordingEvents, StepInfo
from lib_lora.jobs import vram

ARCH = {"sd1": "sd15", "sdxl": "sdxl"}


def _full_size_targets(family: str, conv: bool):
    from lib_lora.standalone.architectures import build_text_encoders, build_unet

    unet, encoders = build_unet(ARCH[family]), build_text_encoders(ARCH[family])
    return select_targets(family, unet, encoders, conv=conv)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_target_layer_table_is_the_real_architecture(family: str) -> None:
    plain = {t.key for t in _full_size_targets(family, conv=False)}
    table = Counter()
    for t in _full_size_targets(family, conv=True):
        i, o = host_dims(t.module, t.kind)
        k = t.module.kernel_size[0] if t.kind == "conv" else 1
        table[("unet" if t.component == "unet" else "te", o, i, k, int(t.key not in plain))] += 1
    assert {row[:5]: row[5] for row in vram.TARGET_LAYERS[family]} == dict(table)


@pytest.mark.parametrize(
    ("algo", "options", "dim", "conv_dim"),
    [("lora", {}, 32, None), ("locon", {}, 16, 8), ("loha", {"use_tucker": True}, 8, 4),
     ("lokr", {"factor": 8}, 10000, None), ("lokr", {"factor": 4, "decompose_both": True}, 4, 2),
     ("lora", {"dora": True}, 8, None)],
)  # fmt: skip
def test_network_size_counts_what_the_engine_builds(algo: str, options: dict, dim: int, conv_dim) -> None:
    size = vram.network_size("sd1", algo, dim, conv_dim, **options)
    effective_conv = conv_dim if conv_dim is not None else (dim if algo != "lora" else None)
    network = LoRANetwork(
        _full_size_targets("sd1", conv=effective_conv is not None), dim, dim, conv_rank=effective_conv,
        algo="lora" if algo == "locon" else algo, dora_wd=options.get("dora", False),
        factor=options.get("factor", -1), decompose_both=options.get("decompose_both", False),
        use_tucker=options.get("use_tucker", False),
    )  # fmt: skip
    assert size.modules == len(network)
    assert size.params == sum(p.numel() for p in network.parameters())


def test_sd1_dim32_lora_file_is_the_size_kohya_writes() -> None:
    # sd-scripts' SD1.5 dim-32 LoRA (264 modules, fp16) is about 36 MiB
    size = vram.network_size("sd1", "lora", 32)
    assert size.modules == 264
    assert 35.5 < size.file_bytes("fp16") / 2**20 < 37


def test_each_type_changes_the_estimate() -> None:
    common = dict(family="sdxl", width=1024, height=1024, network_dim=8, gradient_checkpointing=False)
    lora = vram.estimate(**common)
    lokr = vram.estimate(**common, algo="lokr", factor=8)
    dora = vram.estimate(**common, dora=True)
    assert "weight changes" not in lora.parts
    # the full-size change is rebuilt layer by layer (never kept for the whole model): three fp32 copies
    # of the largest targeted layer, with or without checkpointing — SDXL's 10240 x 1280 Linear for DoRA
    # on LoRA, the 3x3 conv 2560 -> 1280 for LoKr (which also trains the convs)
    assert dora.parts["weight changes"] == pytest.approx(3 * 10240 * 1280 * 4 / 2**30)
    assert lokr.parts["weight changes"] == pytest.approx(3 * 1280 * 2560 * 9 * 4 / 2**30)
    checkpointed = vram.estimate(**{**common, "gradient_checkpointing": True}, algo="lokr", factor=8)
    assert checkpointed.parts["weight changes"] == lokr.parts["weight changes"]
    assert lokr.parts["LoRA+optimizer"] < lora.parts["LoRA+optimizer"]


def _cfg(**values):
    base = {"train_data_dir": "x", "resolution": "1024", "network_dim": 32, "network_train_unet_only": True}
    return build_config({**base, **values})


def test_each_saver_lowers_the_estimate() -> None:
    args = ("sdxl", 1024, 1024, 1, 32, None, True, False)
    default = vram.estimate(*args, sdpa=False)
    sdpa = vram.estimate(*args)
    checkpointing = vram.estimate(*args, gradient_checkpointing=True)
    te_cache = vram.estimate(*args, gradient_checkpointing=True, cache_text_encoder_outputs=True)
    fp8 = vram.estimate(*args, gradient_checkpointing=True, cache_text_encoder_outputs=True, fp8_base=True)
    totals = [e.total_gib for e in (default, sdpa, checkpointing, te_cache, fp8)]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 5
    # quadratic attention grows with the square of the token count: 4x the pixels, far more than 4x
    small = vram.estimate("sdxl", 512, 512, 1, 32, None, True, False, sdpa=False).parts["activations"]
    assert default.parts["activations"] > 5 * small


def test_attention_matrices_are_counted_from_the_architecture() -> None:
    # SD1.5 at 512 px: 4096 tokens at the first level, 8 heads, 5 self-attention layers there
    first_level = 5 * 8 * 4096**2 * 4 / 2**30
    assert vram.attention_matrices_gib("sd1", 512, 512, 1, 4) == pytest.approx(first_level, rel=0.1)


def test_auto_memory_turns_on_the_cheapest_savers_and_says_why() -> None:
    cfg = _cfg()
    roomy = vram.choose_savers(cfg, "sdxl", free_gib=60.0)
    assert roomy.changes == {} and "no extra saver needed" in roomy.lines[0]
    # a 12 GB card with the webui's SDXL model (fp16) loaded: ~6.3 GiB resident, ~5 GiB free
    tight = vram.choose_savers(cfg, "sdxl", free_gib=5.0)
    assert list(tight.changes) == ["cache_text_encoder_outputs", "gradient_checkpointing"]  # sdpa is on already
    assert tight.fits and tight.need_gib < 11.0
    assert tight.lines[-1].startswith("Gradient checkpointing on: without it this run needs ~")
    assert "GiB are free for it" in tight.lines[-1]
    smaller = vram.choose_savers(cfg, "sdxl", free_gib=3.0)  # a 10 GB card
    assert list(smaller.changes) == ["cache_text_encoder_outputs", "gradient_checkpointing", "fp8_base"]
    hopeless = vram.choose_savers(cfg.replace(train_batch_size=8), "sdxl", free_gib=0.0)
    assert not hopeless.fits and "fp8_base" in hopeless.changes and "Even with every saver" in hopeless.lines[-1]
    no_float8 = vram.choose_savers(cfg, "sdxl", free_gib=3.0, float8_ok=False)
    assert "fp8_base" not in no_float8.changes and not no_float8.fits


def test_auto_memory_never_turns_on_a_saver_the_settings_forbid() -> None:
    shuffled = _cfg(shuffle_caption=True)
    choice = vram.choose_savers(shuffled, "sdxl", free_gib=3.0)
    assert "cache_text_encoder_outputs" not in choice.changes
    te_trained = _cfg(network_train_unet_only=False)
    assert "cache_text_encoder_outputs" not in vram.choose_savers(te_trained, "sdxl", free_gib=3.0).changes


def test_auto_memory_applies_only_on_cuda_and_can_be_turned_off() -> None:
    events = RecordingEvents()
    cuda = SimpleNamespace(device=torch.device("cuda", 0), family="sdxl")
    cfg = _cfg()
    chosen = vram.apply_auto_memory(cfg, cuda, events, free=lambda: ("RTX 3070", 1.4, 8.0))
    assert chosen.gradient_checkpointing and chosen.cache_text_encoder_outputs
    assert any("Gradient checkpointing on" in t for t in events.texts())
    off = cfg.replace(auto_memory=False)
    assert vram.apply_auto_memory(off, cuda, RecordingEvents(), free=lambda: ("RTX 3070", 3.0, 8.0)) is off
    cpu = SimpleNamespace(device=torch.device("cpu"), family="sdxl")
    assert vram.apply_auto_memory(cfg, cpu, RecordingEvents(), free=lambda: ("x", 3.0, 8.0)) is cfg


def test_a_run_bigger_than_the_card_is_named_with_the_fix() -> None:
    events = RecordingEvents()
    cuda = SimpleNamespace(device=torch.device("cuda", 0), family="sdxl")
    vram.apply_auto_memory(
        _cfg(auto_memory=True, train_batch_size=8), cuda, events, free=lambda: ("GTX 1660", 5.5, 6.0)
    )
    warnings = events.texts("warning")
    assert any(w.startswith("This run needs ~") and "GTX 1660 has 6.0 GiB" in w and "spills" in w for w in warnings)
    assert vram.over_physical_memory(5.0, 8.0) is None


def _step(seconds: float, step: int = 1) -> StepInfo:
    return StepInfo(epoch=1, step=step, total_steps=100, loss=0.1, avg_loss=0.1, lrs={}, seconds=seconds,
                    steps_per_second=1 / seconds, eta_seconds=0.0)  # fmt: skip


def test_the_spill_guard_speaks_once_when_steps_get_5x_slower() -> None:
    said: list[str] = []
    guard = vram.SpillEvents(said.append)
    times = [3.0, 1.0, 1.1, 0.9, 1.2, 1.0, 4.0, 6.0, 5.5, 5.2, 30.0, 40.0]  # warm-up, steady, a hiccup, the spill
    for i, seconds in enumerate(times):
        guard.step(_step(seconds, i + 1))
        if i < 9:
            assert said == [], i
    assert len(said) == 1
    assert said[0].startswith("Training slowed from 1.00 s to 5.2 s per step") and "press Stop" in said[0]


def test_the_spill_guard_ignores_a_slow_first_step_and_steady_runs() -> None:
    watch = vram.StepTimeWatch()
    assert [watch.observe(s) for s in [50.0] + [1.0] * 30] == [None] * 31
    watch = vram.StepTimeWatch()
    assert all(watch.observe(s) is None for s in [1.0, 1.0, 1.0, 1.0, 4.9, 4.9, 4.9])


# bench/memory.py on this project's CPU machine: full-size SD1.5 ldm UNet + CLIP-L, float32, 512 px,
# batch 1, dim 8, AdamW; total = the resident model + the step's peak over it (GiB). Measured
# figures, kept here to hold the estimate to them.
CPU_BENCH_512 = {
    "default": ({"sdpa": False}, 10.26),
    "+sdpa": ({}, 6.47),
    "+checkpointing": ({"gradient_checkpointing": True}, 4.97),
    "+te_cache": (
        {"gradient_checkpointing": True, "cache_text_encoder_outputs": True, "train_text_encoder": False},
        4.57,
    ),
    "+fp8_base": (
        {
            "gradient_checkpointing": True,
            "cache_text_encoder_outputs": True,
            "train_text_encoder": False,
            "fp8_base": True,
        },
        2.06,
    ),
}


@pytest.mark.parametrize("row", list(CPU_BENCH_512))
def test_the_estimate_lands_within_15_percent_of_the_measured_peaks(row) -> None:
    settings, measured = CPU_BENCH_512[row]
    settings = dict(settings)
    train_te = settings.pop("train_text_encoder", True)
    checkpointing = settings.pop("gradient_checkpointing", False)
    e = vram.estimate("sd1", 512, 512, 1, 8, None, True, train_te, checkpointing, "no", "AdamW", True, **settings)
    without_cuda_overhead = e.total_gib - e.parts["overhead"]  # the CPU run has no CUDA context
    assert abs(without_cuda_overhead / measured - 1) <= 0.15, (row, without_cuda_overhead, measured)
