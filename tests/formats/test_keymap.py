"""ldm/sgm <-> diffusers UNet names and OpenCLIP -> CLIP names, golden-tested against real trees."""

from __future__ import annotations

import pytest
import torch

from lib_lora.formats import keymap
from support import full_size, tiny_models

SD1 = keymap.SD1_LAYOUT
SDXL = keymap.SDXL_LAYOUT


def _shapes(module: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_every_webui_sd15_tensor_maps_onto_diffusers_with_the_same_shape() -> None:
    ldm = _shapes(full_size.ldm_sd15_unet())
    diff = _shapes(full_size.diffusers_unet("sd15"))
    converted = {keymap.ldm_to_diffusers(name, SD1): shape for name, shape in ldm.items()}
    assert converted == diff
    back = {keymap.diffusers_to_ldm(name, SD1): shape for name, shape in diff.items()}
    assert back == ldm


def test_every_diffusers_sdxl_tensor_has_an_sgm_name_and_round_trips() -> None:
    diff = _shapes(full_size.diffusers_unet("sdxl"))
    sgm = {keymap.diffusers_to_ldm(name, SDXL): shape for name, shape in diff.items()}
    assert len(sgm) == len(diff)
    assert {keymap.ldm_to_diffusers(name, SDXL) for name in sgm} == set(diff)
    # facts from the sgm checkpoint layout (reference/lora-format.md section 3)
    assert sgm["label_emb.0.0.weight"] == (1280, 2816)
    assert sgm["input_blocks.3.0.op.weight"] == (320, 320, 3, 3)
    assert sgm["output_blocks.2.2.conv.weight"] == (1280, 1280, 3, 3)
    assert sgm["output_blocks.5.2.conv.weight"] == (640, 640, 3, 3)
    assert sgm["input_blocks.7.1.transformer_blocks.9.ff.net.0.proj.weight"] == (10240, 1280)
    assert sgm["middle_block.1.transformer_blocks.9.attn2.to_k.weight"] == (1280, 2048)
    assert "output_blocks.8.0.skip_connection.weight" in sgm and "out.2.weight" in sgm


@pytest.mark.parametrize(
    "ldm, diffusers",
    [
        ("input_blocks.0.0", "conv_in"),
        ("time_embed.2", "time_embedding.linear_2"),
        ("input_blocks.1.1.proj_in", "down_blocks.0.attentions.0.proj_in"),
        (
            "input_blocks.8.1.transformer_blocks.0.attn2.to_out.0",
            "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_out.0",
        ),
        ("input_blocks.3.0.op", "down_blocks.0.downsamplers.0.conv"),
        ("input_blocks.10.0.in_layers.2", "down_blocks.3.resnets.0.conv1"),
        ("middle_block.1.proj_out", "mid_block.attentions.0.proj_out"),
        ("middle_block.2.emb_layers.1", "mid_block.resnets.1.time_emb_proj"),
        ("output_blocks.2.1.conv", "up_blocks.0.upsamplers.0.conv"),
        ("output_blocks.5.2.conv", "up_blocks.1.upsamplers.0.conv"),
        ("output_blocks.11.1.transformer_blocks.0.ff.net.2", "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2"),
        ("output_blocks.3.0.skip_connection", "up_blocks.1.resnets.0.conv_shortcut"),
        ("out.2", "conv_out"),
    ],
)
def test_sd1_golden_pairs(ldm: str, diffusers: str) -> None:
    assert keymap.ldm_to_diffusers(ldm, SD1) == diffusers
    assert keymap.diffusers_to_ldm(diffusers, SD1) == ldm


def test_unknown_paths_are_refused() -> None:
    with pytest.raises(KeyError):
        keymap.ldm_to_diffusers("input_blocks.99.1.proj_in", SD1)
    with pytest.raises(KeyError):
        keymap.openclip_to_hf("visual.transformer.resblocks.0.attn:q")


def test_openclip_text_tower_converts_to_transformers_clip_exactly() -> None:
    from transformers import CLIPTextModelWithProjection

    te = tiny_models.openclip_text_model()
    config = tiny_models.hf_clip_config(projection_dim=tiny_models.TE_HIDDEN)
    config.hidden_act = "gelu"
    hf = CLIPTextModelWithProjection(config).eval()
    result = hf.load_state_dict(keymap.convert_openclip_text_state_dict(te.state_dict()), strict=False)
    assert set(result.missing_keys) <= {"text_model.embeddings.position_ids"} and not result.unexpected_keys
    tokens = tiny_models.tokens()
    with torch.no_grad():
        out = hf(tokens, output_hidden_states=True)
        ours = te.hidden_states(tokens)
        assert torch.allclose(out.hidden_states[-1], ours[-1], atol=1e-5)
        assert torch.allclose(out.text_embeds, te.pooled(tokens), atol=1e-5)


def test_openclip_module_paths() -> None:
    assert keymap.openclip_to_hf("transformer.resblocks.3.attn:v") == "text_model.encoder.layers.3.self_attn.v_proj"
    assert (
        keymap.openclip_to_hf("transformer.resblocks.3.attn.out_proj")
        == "text_model.encoder.layers.3.self_attn.out_proj"
    )
    assert (
        keymap.openclip_to_hf("transformer.resblocks.31.mlp.c_proj.bias") == "text_model.encoder.layers.31.mlp.fc2.bias"
    )
    assert keymap.hf_text_path("encoder.layers.0.mlp.fc1") == "text_model.encoder.layers.0.mlp.fc1"
