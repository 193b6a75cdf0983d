"""Block-wise lr and dims, and LoRA+ groups, against sd-scripts' networks/lora.py (get_block_index,
get_block_lr_weight, get_block_dims_and_alphas, remove_block_dims_and_alphas, prepare_optimizer_params)."""

from __future__ import annotations

import math

import pytest
from torch import nn

from lib_lora.engine import blocks
from lib_lora.engine.network import LoRANetwork
from lib_lora.engine.targets import Target

SD1_NAMES = {
    "lora_unet_down_blocks_0_attentions_0_proj_in": 1,
    "lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn1_to_q": 2,
    "lora_unet_down_blocks_0_resnets_0_conv1": 1,
    "lora_unet_down_blocks_0_downsamplers_0_conv": 3,
    "lora_unet_down_blocks_1_attentions_0_proj_out": 4,
    "lora_unet_down_blocks_2_resnets_1_conv1": 8,
    "lora_unet_down_blocks_3_resnets_0_time_emb_proj": 10,
    "lora_unet_down_blocks_3_resnets_1_conv2": 11,
    "lora_unet_mid_block_attentions_0_proj_out": 12,
    "lora_unet_mid_block_resnets_1_conv1": 12,
    "lora_unet_up_blocks_0_resnets_2_conv2": 15,
    "lora_unet_up_blocks_0_upsamplers_0_conv": 15,
    "lora_unet_up_blocks_1_attentions_0_proj_in": 16,
    "lora_unet_up_blocks_2_upsamplers_0_conv": 21,
    "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2": 24,
    "lora_te_text_model_encoder_layers_0_mlp_fc1": -1,
}
SDXL_NAMES = {
    "lora_unet_input_blocks_1_0_in_layers_2": 2,
    "lora_unet_input_blocks_3_0_op": 4,
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": 5,
    "lora_unet_input_blocks_8_1_proj_out": 9,
    "lora_unet_middle_block_0_in_layers_2": 10,
    "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2": 11,
    "lora_unet_middle_block_2_emb_layers_1": 12,
    "lora_unet_output_blocks_0_1_proj_in": 13,
    "lora_unet_output_blocks_2_2_conv": 15,
    "lora_unet_output_blocks_8_0_skip_connection": 21,
    "lora_unet_time_embed_0": 0,
    "lora_unet_out_2": 22,
    "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": -1,
}


@pytest.mark.parametrize(("name", "index"), SD1_NAMES.items())
def test_sd1_block_index_per_module_name(name: str, index: int) -> None:
    assert blocks.block_index(name, sdxl=False) == index


@pytest.mark.parametrize(("name", "index"), SDXL_NAMES.items())
def test_sdxl_block_index_per_module_name(name: str, index: int) -> None:
    assert blocks.block_index(name, sdxl=True) == index


def test_lr_weights_lists_fill_cut_threshold_and_sdxl_ends() -> None:
    # SD1: 12 down + 1 mid + 12 up; short lists filled with 1, long ones cut, <= threshold -> 0
    w = blocks.block_lr_weights(False, "0,0.5,1,1,1,1,1,1,1,1,1,1,9,9", None, "0.05,2", 0.1)
    assert (
        len(w) == 25 and w[:3] == [0.0, 0.5, 1.0] and w[12] == 1.0 and w[13:15] == [0.0, 2.0] and w[15:] == [1.0] * 10
    )
    x = blocks.block_lr_weights(True, None, "0.5,0.2,", None)
    assert len(x) == 23 and x[0] == 1.0 and x[-1] == 1.0 and x[10:13] == [0.5, 0.2, 0.0] and x[1:10] == [1.0] * 9
    assert blocks.block_lr_weights(False, None, None, None) is None


def test_lr_weight_curves_are_sd_scripts_formulas() -> None:
    n = 12
    cos = blocks.block_lr_weights(False, "cosine", None, "linear+0.5")
    assert cos[:12] == pytest.approx([math.sin(math.pi * (i / (n - 1)) / 2) for i in reversed(range(n))])
    assert cos[13:] == pytest.approx([i / (n - 1) + 0.5 for i in range(n)])
    xl = blocks.block_lr_weights(True, "sine", None, "reverse_linear")
    assert xl[1:10] == pytest.approx([math.sin(math.pi * (i / 8) / 2) for i in range(9)])
    assert xl[13:22] == pytest.approx([i / 8 for i in reversed(range(9))])
    assert blocks.block_lr_weights(False, "zeros+0.25", None, None)[:12] == [0.25] * 12
    with pytest.raises(ValueError, match="down_lr_weight"):
        blocks.block_lr_weights(False, "wavy", None, None)


def test_block_dims_defaults_counts_and_zero_lr_blocks_dropped() -> None:
    dims, alphas, conv_dims, conv_alphas = blocks.block_dims_and_alphas(
        False, None, None, 8, 4.0, None, None, None, None, lr_weights=[0.0] + [1.0] * 24
    )
    assert dims == [0] + [8] * 24 and alphas == [4.0] * 25 and conv_dims is None and conv_alphas is None
    dims, alphas, conv_dims, conv_alphas = blocks.block_dims_and_alphas(
        True, ",".join(["2"] * 23), None, 8, 4.0, None, None, 3, None
    )
    assert dims == [2] * 23 and alphas == [4.0] * 23 and conv_dims == [3] * 23 and conv_alphas == [1.0] * 23
    _, _, conv_dims, conv_alphas = blocks.block_dims_and_alphas(
        False, None, None, 8, 1.0, ",".join(["5"] * 25), None, None, 2.0
    )
    assert conv_dims == [5] * 25 and conv_alphas == [2.0] * 25
    with pytest.raises(ValueError, match="block_dims needs 25 numbers"):
        blocks.block_dims_and_alphas(False, "1,2", None, 8, 1.0, None, None, None, None)


def test_module_dim_per_block_and_conv() -> None:
    dims = list(range(25))
    alphas = [float(i) / 2 for i in range(25)]
    assert blocks.module_dim("lora_unet_up_blocks_1_attentions_0_proj_in", False, False, dims, alphas, None, None) == (
        16,
        8.0,
    )
    assert blocks.module_dim("lora_unet_down_blocks_0_resnets_0_conv1", True, False, dims, alphas, None, None) is None
    assert (
        blocks.module_dim("lora_unet_down_blocks_0_attentions_0_proj_in", False, False, [0] * 25, alphas, None, None)
        is None
    )


def _network() -> LoRANetwork:
    targets = [
        Target("te/a", "te", "a", "linear", nn.Linear(4, 4)),
        Target("unet/b", "unet", "b", "linear", nn.Linear(4, 4)),
        Target("unet/c", "unet", "c", "linear", nn.Linear(4, 4)),
    ]
    return LoRANetwork(targets, 2, 1.0)


def _lrs(groups: list[dict]) -> dict[str, tuple[float, int]]:
    return {g["name"]: (g["lr"], len(g["params"])) for g in groups}


def test_loraplus_up_weights_get_lr_times_ratio() -> None:
    net = _network()
    groups = net.param_groups(1e-4, 5e-5, 1e-3, loraplus_unet_ratio=16.0, loraplus_text_encoder_ratio=4.0)
    assert _lrs(groups) == {
        "textencoder": (5e-5, 1), "textencoder plus": (5e-5 * 4.0, 1), "unet": (1e-4, 2), "unet plus": (1e-4 * 16.0, 2),
    }  # fmt: skip
    ups = {id(m.lora_up.weight) for m in net}
    assert all(id(p) in ups for g in groups if g["name"].endswith("plus") for p in g["params"])
    assert not any(id(p) in ups for g in groups if not g["name"].endswith("plus") for p in g["params"])
    # no ratio for a part: one group as before
    assert _lrs(net.param_groups(None, None, 1e-3, loraplus_unet_ratio=2.0)) == {
        "textencoder": (1e-3, 2), "unet": (1e-3, 2), "unet plus": (2e-3, 2),
    }  # fmt: skip


def test_block_lr_groups_split_the_unet() -> None:
    net = _network()
    blocks_of = {"unet/b": ("unet_block1", 0.5), "unet/c": ("unet_block13", 2.0)}
    groups = net.param_groups(1e-4, None, 1e-3, unet_block=blocks_of.__getitem__, loraplus_unet_ratio=4.0)
    assert _lrs(groups) == {
        "textencoder": (1e-3, 2), "unet_block1": (5e-5, 1), "unet_block1 plus": (2e-4, 1), "unet_block13": (2e-4, 1),
        "unet_block13 plus": (8e-4, 1),
    }  # fmt: skip
