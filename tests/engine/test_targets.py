"""kohya's default target selection on both module families, at full size (meta device) and tiny.

Counts and names must equal sd-scripts': SD1.5 72 + 192 (278 UNet modules with a conv rank), SDXL
72 + 192 + 722 (reference/lora-format.md), whichever module family (webui ldm/sgm + HF/OpenCLIP, or
diffusers + transformers) holds the model.
"""

from __future__ import annotations

import pytest

from lib_lora.common.errors import UserError
from lib_lora.engine.lora_module import lora_shapes
from lib_lora.engine.targets import (
    check_family,
    select_targets,
    text_encoder_naming,
    text_encoder_targets,
    unet_naming,
    unet_targets,
)
from lib_lora.formats.kohya import KnownStem, known_stems, kohya_stem
from support import full_size, tiny_models


def _stems(family: str, targets, naming: dict[str, str]) -> dict[str, tuple]:
    out = {}
    for t in targets:
        stem = kohya_stem(family, t.component, t.path, naming[t.component])
        out[stem] = (t, lora_shapes(t.module, t.kind, 4))
    return out


def _expected(family: str, component: str, conv: bool) -> set[str]:
    """kohya's names for a component from the layout tables; without a conv rank only the
    attention-block modules (no resnet/sampler layers)."""
    stems = known_stems(family)
    out = set()
    for stem, info in stems.items():
        if info.component != component or (info.conv and not conv):
            continue
        if (
            component == "unet"
            and family == "sd1"
            and not (stem.startswith(("lora_unet_down_blocks", "lora_unet_up_blocks", "lora_unet_mid_block")))
        ):
            continue  # the compvis-style aliases kohya_stem never produces
        if component == "unet" and not conv and _is_resnet_linear(stem, info):
            continue
        out.add(stem)
    return out


def _is_resnet_linear(stem: str, info: KnownStem) -> bool:
    """ResNet Linear/1x1 layers (time_emb_proj, conv_shortcut), targeted only with a conv rank."""
    return any(
        part in stem
        for part in (
            "_resnets_",
            "time_emb_proj",
            "conv_shortcut",
            "_in_layers_",
            "_out_layers_",
            "_emb_layers_",
            "skip_connection",
        )
    )


@pytest.fixture(scope="module")
def sd15_ldm():
    return full_size.ldm_sd15_unet()


@pytest.fixture(scope="module")
def sd15_clip():
    return full_size.hf_text_encoder("clip_l")


def test_sd15_webui_family_counts_and_names(sd15_ldm, sd15_clip) -> None:
    assert unet_naming(sd15_ldm) == "ldm" and text_encoder_naming(sd15_clip) == "hf"
    naming = {"unet": "ldm", "te": "hf"}
    targets = select_targets("sd1", sd15_ldm, {"te": sd15_clip})
    te = [t for t in targets if t.component == "te"]
    unet = [t for t in targets if t.component == "unet"]
    assert (len(te), len(unet)) == (72, 192)
    stems = _stems("sd1", targets, naming)
    assert {s for s in stems if s.startswith("lora_unet")} == _expected("sd1", "unet", conv=False)
    assert {s for s in stems if s.startswith("lora_te")} == _expected("sd1", "te", conv=False)
    # shapes from reference/lora-format.md section 6 (rank 4)
    assert stems["lora_te_text_model_encoder_layers_0_self_attn_q_proj"][1] == ((4, 768), (768, 4))
    assert stems["lora_te_text_model_encoder_layers_0_mlp_fc1"][1] == ((4, 768), (3072, 4))
    assert stems["lora_te_text_model_encoder_layers_0_mlp_fc2"][1] == ((4, 3072), (768, 4))
    assert stems["lora_unet_down_blocks_0_attentions_0_proj_in"][1] == ((4, 320, 1, 1), (320, 4, 1, 1))
    assert stems["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"][1] == ((4, 768), (320, 4))
    assert stems["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj"][1] == ((4, 320), (2560, 4))
    assert stems["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2"][1] == ((4, 1280), (320, 4))


def test_sd15_conv_rank_adds_86_modules(sd15_ldm) -> None:
    targets = unet_targets(sd15_ldm, conv=True)
    assert len(targets) == 278
    stems = _stems("sd1", targets, {"unet": "ldm"})
    assert set(stems) == _expected("sd1", "unet", conv=True)
    assert stems["lora_unet_down_blocks_0_resnets_0_conv1"][1] == ((4, 320, 3, 3), (320, 4, 1, 1))
    conv_rank = {s for s, (t, _) in stems.items() if t.conv_rank}
    assert len(conv_rank) == 22 * 2 + 3 + 3  # conv1/conv2 of 22 resnets, 3 down + 3 up samplers
    assert (
        "lora_unet_down_blocks_1_resnets_0_conv_shortcut" in stems
        and "lora_unet_down_blocks_0_downsamplers_0_conv" in stems
    )
    assert "lora_unet_up_blocks_0_upsamplers_0_conv" in stems and "lora_unet_mid_block_resnets_1_time_emb_proj" in stems


def test_sd15_diffusers_family_gives_identical_names_and_shapes(sd15_ldm, sd15_clip) -> None:
    dunet = full_size.diffusers_unet("sd15")
    assert unet_naming(dunet) == "diffusers"
    ours = _stems("sd1", unet_targets(sd15_ldm, conv=True), {"unet": "ldm"})
    theirs = _stems("sd1", unet_targets(dunet, conv=True), {"unet": "diffusers"})
    assert set(ours) == set(theirs)
    assert all(ours[s][1] == theirs[s][1] for s in ours)


@pytest.fixture(scope="module")
def sdxl_diffusers():
    return full_size.diffusers_unet("sdxl")


def test_sdxl_counts_names_and_shapes(sdxl_diffusers) -> None:
    te1 = full_size.hf_text_encoder("clip_l")
    te2 = full_size.hf_text_encoder("clip_bigg", projection=True)
    naming = {"unet": "diffusers", "te1": "hf", "te2": "hf"}
    targets = select_targets("sdxl", sdxl_diffusers, {"te1": te1, "te2": te2})
    counts = {c: sum(1 for t in targets if t.component == c) for c in ("te1", "te2", "unet")}
    assert counts == {"te1": 72, "te2": 192, "unet": 722}
    stems = _stems("sdxl", targets, naming)
    assert {s for s in stems if s.startswith("lora_unet")} == _expected("sdxl", "unet", conv=False)
    assert {s for s in stems if s.startswith("lora_te1")} == _expected("sdxl", "te1", conv=False)
    assert {s for s in stems if s.startswith("lora_te2")} == _expected("sdxl", "te2", conv=False)
    # reference/lora-format.md section 6
    assert stems["lora_te2_text_model_encoder_layers_0_self_attn_k_proj"][1] == ((4, 1280), (1280, 4))
    assert stems["lora_te2_text_model_encoder_layers_0_mlp_fc1"][1] == ((4, 1280), (5120, 4))
    assert stems["lora_unet_input_blocks_4_1_proj_in"][1] == ((4, 640), (640, 4))
    assert stems["lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k"][1] == ((4, 2048), (640, 4))
    assert stems["lora_unet_input_blocks_7_1_transformer_blocks_9_ff_net_0_proj"][1] == ((4, 1280), (10240, 4))
    assert "lora_unet_middle_block_1_transformer_blocks_9_attn1_to_out_0" in stems
    assert "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_q" in stems


def test_sdxl_conv_rank(sdxl_diffusers) -> None:
    stems = _stems("sdxl", unet_targets(sdxl_diffusers, conv=True), {"unet": "diffusers"})
    assert set(stems) == _expected("sdxl", "unet", conv=True)
    assert stems["lora_unet_input_blocks_3_0_op"][1] == ((4, 320, 3, 3), (320, 4, 1, 1))
    assert "lora_unet_output_blocks_2_2_conv" in stems and "lora_unet_input_blocks_4_0_skip_connection" in stems


def test_openclip_bigg_as_the_webui_holds_it_gives_the_same_192_names() -> None:
    te2 = full_size.openclip_bigg_text()
    assert text_encoder_naming(te2) == "openclip"
    targets = text_encoder_targets(te2, "te2")
    assert len(targets) == 192
    stems = _stems("sdxl", targets, {"te2": "openclip"})
    assert set(stems) == _expected("sdxl", "te2", conv=False)
    q = stems["lora_te2_text_model_encoder_layers_31_self_attn_q_proj"]
    assert q[0].kind == "mha_q" and q[1] == ((4, 1280), (1280, 4))
    assert stems["lora_te2_text_model_encoder_layers_0_mlp_fc2"][1] == ((4, 5120), (1280, 4))


def test_text_model_level_is_added_when_transformers_drops_it() -> None:
    """transformers 5's CLIPTextModel has no `text_model` level; kohya names always carry it."""
    te = tiny_models.hf_clip_text_model()
    inner = te.text_model  # the same module tree one level down, as transformers 5 lays it out
    stems_outer = set(_stems("sd1", text_encoder_targets(te, "te"), {"te": "hf"}))
    stems_inner = set(_stems("sd1", text_encoder_targets(inner, "te"), {"te": "hf"}))
    assert stems_outer == stems_inner
    assert "lora_te_text_model_encoder_layers_1_self_attn_out_proj" in stems_inner


def test_tiny_sdxl_shaped_ldm_unet_has_sgm_names() -> None:
    unet = tiny_models.ldm_sdxl_unet()
    stems = set(_stems("sdxl", unet_targets(unet), {"unet": "ldm"}))
    assert "lora_unet_input_blocks_4_1_proj_in" in stems and "lora_unet_middle_block_1_proj_out" in stems
    assert not any("input_blocks_1_1" in s for s in stems)  # level 0 has no attention in SDXL
    assert stems <= set(known_stems("sdxl"))


def test_sd2_and_unknown_families_are_refused() -> None:
    with pytest.raises(UserError, match="SD2.x models are not supported yet"):
        check_family("sd2")
    with pytest.raises(UserError, match="not supported"):
        check_family("flux")
