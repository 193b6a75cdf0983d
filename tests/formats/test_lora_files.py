"""Saving and loading kohya LoRA files: round trips, sd-scripts' own layout, metadata, hashes,
atomic writes and clear errors for bad files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from lib_lora.common.errors import UserError
from lib_lora.engine.network import LoRANetwork
from lib_lora.engine.targets import select_targets
from lib_lora.formats import kohya, metadata, safetensors_io
from lib_lora.jobs.lora_files import load_network_weights, module_dims_from_file, read_lora_file, save_network
from support import tiny_models as tm
from support.lora_files import SD_SCRIPTS_METADATA, sd1_network, sd_scripts_hashes, write_sd_scripts_style


def _outputs(unet, te):
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ctx = torch.randn(1, 5, tm.TE_HIDDEN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return unet(x, torch.tensor([300]), context=ctx), te(tm.tokens(1)).last_hidden_state


def test_round_trip_reproduces_outputs(tmp_path: Path) -> None:
    network, unet, te = sd1_network()
    network.apply_to()
    trained = _outputs(unet, te)
    save_network(network, tmp_path / "a.safetensors", {"ss_network_module": "networks.lora"}, save_precision="float")
    network.restore()

    dims = module_dims_from_file(tmp_path / "a.safetensors", network.lora_keys(), "sd1", network.naming)
    assert set(dims.values()) == {(4, 2.0)}
    fresh = LoRANetwork(
        select_targets("sd1", unet, {"te": te}), 8, 8, module_dims=dims, naming=network.naming, family="sd1"
    )
    report = load_network_weights(fresh, tmp_path / "a.safetensors")
    assert report.loaded == len(fresh) == 2 * 6 + 192  # tiny CLIP: 2 layers x 6 modules
    fresh.apply_to()
    again = _outputs(unet, te)
    assert torch.equal(again[0], trained[0]) and torch.equal(again[1], trained[1])


def test_fp16_file_is_all_fp16_with_0_dim_alpha(tmp_path: Path) -> None:
    network, _, _ = sd1_network()
    save_network(network, tmp_path / "h.safetensors", {"ss_network_module": "networks.lora"})
    tensors, meta = safetensors_io.load(tmp_path / "h.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert tensors["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"].shape == ()
    assert len(tensors) == 3 * len(network)
    assert meta["sshs_model_hash"] == metadata.sshs_model_hash_of_file(tmp_path / "h.safetensors")


def test_reads_a_file_laid_out_by_sd_scripts(tmp_path: Path) -> None:
    network, unet, te = sd1_network()
    named = kohya.to_kohya(network.lora_state_dict(), "sd1", network.naming)
    meta = write_sd_scripts_style(tmp_path / "sds.safetensors", named)
    _, stored, summary = read_lora_file(tmp_path / "sds.safetensors")
    assert stored == meta and summary.family == "sd1" and not summary.unknown_keys
    assert summary.by_component == {"te": 12, "unet": 192}
    assert metadata.sshs_model_hash_of_file(tmp_path / "sds.safetensors") == meta["sshs_model_hash"]

    target = LoRANetwork(select_targets("sd1", unet, {"te": te}), 4, 1, naming=network.naming, family="sd1")
    load_network_weights(target, tmp_path / "sds.safetensors")
    for key in network.lora_keys():
        assert torch.allclose(target[key].lora_up.weight, network[key].lora_up.weight.half().float())
        assert float(target[key].alpha) == 2.0


def test_reads_compvis_style_sd1_unet_names(tmp_path: Path) -> None:
    network, unet, te = sd1_network()
    named = kohya.to_kohya(network.lora_state_dict(), "sd1", network.naming)
    from lib_lora.formats.keymap import SD1_LAYOUT, diffusers_to_ldm

    compvis = {}
    for name, tensor in named.items():
        stem, _, suffix = name.partition(".")
        if stem.startswith("lora_unet_"):
            path = next(p for p, _ in kohya_paths() if "lora_unet_" + p.replace(".", "_") == stem)
            stem = "lora_unet_" + diffusers_to_ldm(path, SD1_LAYOUT).replace(".", "_")
        compvis[f"{stem}.{suffix}"] = tensor
    assert "lora_unet_input_blocks_1_1_proj_in.lora_up.weight" in compvis
    write_sd_scripts_style(tmp_path / "cv.safetensors", compvis)
    target = LoRANetwork(select_targets("sd1", unet, {"te": te}), 4, 1, naming=network.naming, family="sd1")
    report = load_network_weights(target, tmp_path / "cv.safetensors")
    assert report.loaded == len(target) and not report.missing


def kohya_paths():
    from lib_lora.formats.keymap import SD1_LAYOUT, unet_lora_paths

    return unet_lora_paths(SD1_LAYOUT, "diffusers", conv=True)


def test_a_lora_for_another_family_is_refused(tmp_path: Path) -> None:
    unet, te1, te2 = tm.ldm_sdxl_unet(), tm.hf_clip_text_model(), tm.openclip_text_model()
    xl = LoRANetwork(
        select_targets("sdxl", unet, {"te1": te1, "te2": te2}),
        2,
        naming={"unet": "ldm", "te1": "hf", "te2": "openclip"},
        family="sdxl",
    )
    save_network(xl, tmp_path / "xl.safetensors", {"ss_base_model_version": "sdxl_base_v1-0"})
    network, _, _ = sd1_network()
    with pytest.raises(UserError, match="is a LoRA for SDXL, but the model is SD1.x"):
        load_network_weights(network, tmp_path / "xl.safetensors")


def test_nan_weights_are_never_saved_and_the_old_file_survives(tmp_path: Path) -> None:
    network, _, _ = sd1_network()
    path = tmp_path / "n.safetensors"
    save_network(network, path, {"ss_epoch": "1"})
    before = path.read_bytes()
    with torch.no_grad():
        next(iter(network)).lora_up.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        save_network(network, path, {"ss_epoch": "2"})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["n.safetensors"]  # no temp file left behind


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_text("this is a text file, not weights"), "not a safetensors file"),
        (lambda p: p.write_bytes(b"\x01"), "not a safetensors file"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: None, "no such file"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    make(path)
    with pytest.raises(UserError, match=message):
        read_lora_file(path)


def test_truncated_file_is_named_truncated(tmp_path: Path) -> None:
    network, _, _ = sd1_network()
    path = tmp_path / "t.safetensors"
    save_network(network, path, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(UserError, match="truncated"):
        read_lora_file(path)
    path.write_bytes(data[:20])
    with pytest.raises(UserError, match="truncated|not a safetensors"):
        read_lora_file(path)


def test_metadata_values_are_formatted_as_sd_scripts_does() -> None:
    values = {
        "ss_network_alpha": 16, "ss_learning_rate": 0.0001, "ss_cache_latents": True, "ss_noise_offset": None,
        "ss_resolution": (512, 512), "ss_tag_frequency": {"5_x": {"a b": 2}}, "ss_bucket_info": None,
        "ss_network_args": {"conv_dim": "8", "conv_alpha": "4"},
    }  # fmt: skip
    out = metadata.format_ss_metadata(values)
    assert out["ss_network_alpha"] == "16" and out["ss_learning_rate"] == "0.0001"
    assert out["ss_cache_latents"] == "True" and out["ss_noise_offset"] == "None"
    assert out["ss_resolution"] == "(512, 512)"
    assert json.loads(out["ss_tag_frequency"]) == {"5_x": {"a b": 2}} and out["ss_bucket_info"] == "null"
    assert json.loads(out["ss_network_args"]) == {"conv_dim": "8", "conv_alpha": "4"}
    assert set(metadata.SS_KEYS) - metadata.OPTIONAL_KEYS <= set(out) and all(isinstance(v, str) for v in out.values())
    # sd-scripts writes the VAE keys only with a VAE and the model hashes only for a model file
    assert not {"ss_vae_name", "ss_vae_hash", "ss_new_vae_hash", "ss_sd_model_hash"} & set(out)
    assert metadata.format_ss_metadata({"ss_vae_name": "v.safetensors"})["ss_vae_name"] == "v.safetensors"
    assert (
        metadata.base_model_version("sd1", True) == "sd_v1_v"
        and metadata.base_model_version("sdxl", False) == "sdxl_base_v1-0"
        and metadata.base_model_version("sdxl", True) == "sdxl_base_v1-0"  # NoobAI-XL v-pred: same name
    )


def test_modelspec_keys() -> None:
    import datetime

    spec = metadata.modelspec(
        "sdxl", title="irene", resolution=(1024, 1024), clip_skip=2, date=datetime.datetime(2024, 4, 7, 12, 34, 56, 789)
    )
    assert spec["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert spec["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert spec["modelspec.date"] == "2024-04-07T12:34:56" and spec["modelspec.resolution"] == "1024x1024"
    assert spec["modelspec.prediction_type"] == "epsilon" and spec["modelspec.encoder_layer"] == "2"
    assert spec["modelspec.sai_model_spec"] == "1.0.1"  # sd-scripts' sai_model_spec.py
    assert "modelspec.implementation_version" not in spec and "modelspec.timestep_range" not in spec
    more = metadata.modelspec(
        "sd1", title="x", resolution=(512, 512), implementation_version="train-lora/0.1.0", timestep_range=(200, 200)
    )
    assert (
        more["modelspec.implementation_version"] == "train-lora/0.1.0" and more["modelspec.timestep_range"] == "200,200"
    )
    assert (
        metadata.modelspec("sd1", title="x", resolution=(512, 512), v_prediction=True)["modelspec.prediction_type"]
        == "v"
    )


def test_hashes_match_sd_scripts_computation(tmp_path: Path) -> None:
    network, _, _ = sd1_network(rank=16)
    meta = dict(SD_SCRIPTS_METADATA)
    tensors = kohya.to_kohya(network.lora_state_dict(), "sd1", network.naming, torch.float16)
    expected = sd_scripts_hashes(tensors, meta)
    assert safetensors_io.save_lora(tmp_path / "x.safetensors", tensors, meta) == expected
    assert metadata.sshs_model_hash_of_file(tmp_path / "x.safetensors") == expected[0]
    small = {"a": torch.zeros(2)}
    assert metadata.sshs_hashes_of_bytes(__import__("safetensors.torch").torch.save(small))[1] == "e3b0c442"
