"""The VRAM estimate and file size know each network type: the layer table is the real full-size
architectures' (meta device), and the parameter counts are those of the networks the engine builds."""

from __future__ import annotations

from collections import Counter

import pytest

from lib_lora.engine.lora_module import host_dims
from lib_lora.engine.network import LoRANetwork
from lib_lora.engine.targets import select_targets
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
    assert lokr.parts["weight changes"] > 1 and dora.parts["weight changes"] > 1
    checkpointed = vram.estimate(**{**common, "gradient_checkpointing": True}, algo="lokr", factor=8)
    assert checkpointed.parts["weight changes"] < lokr.parts["weight changes"]
    assert lokr.parts["LoRA+optimizer"] < lora.parts["LoRA+optimizer"]
