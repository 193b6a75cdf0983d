"""The `modules` and `inspect` verbs, including one-line errors for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib_lora.cli import main
from lib_lora.formats import kohya
from lib_lora.formats.kohya import known_stems
from lib_lora.jobs.lora_files import save_network
from support.lora_files import sd1_network, write_sd_scripts_style

ROOT = Path(__file__).resolve().parents[2]


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "argv, counts",
    [
        (["--arch", "sd15"], {"te": 72, "unet": 192}),
        (["--arch", "sd15", "--conv-dim", "4"], {"te": 72, "unet": 278}),
        (["--arch", "sdxl"], {"te1": 72, "te2": 192, "unet": 722}),
    ],
)
def test_modules_counts_and_names(capsys, argv: list[str], counts: dict[str, int]) -> None:
    report = _json(capsys, ["modules", *argv, "--json"])
    assert report["counts"] == counts
    family = "sd1" if "sd15" in argv else "sdxl"
    assert set(report["modules"]) <= set(known_stems(family))
    assert len(report["modules"]) == sum(counts.values())


def test_modules_shapes_use_dim_and_conv_dim(capsys) -> None:
    report = _json(capsys, ["modules", "--arch", "sd15", "--dim", "32", "--conv-dim", "8", "--json"])
    modules = report["modules"]
    assert modules["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"] == {
        "down": [32, 768],
        "up": [320, 32],
    }
    assert modules["lora_unet_down_blocks_0_resnets_0_conv1"] == {"down": [8, 320, 3, 3], "up": [320, 8, 1, 1]}
    assert modules["lora_unet_down_blocks_0_resnets_0_time_emb_proj"] == {"down": [32, 1280], "up": [320, 32]}


def test_modules_summary_lines_like_sd_scripts(capsys) -> None:
    assert main(["modules", "--arch", "sdxl"]) == 0
    out = capsys.readouterr().out
    assert "create LoRA for Text Encoder 1: 72 modules." in out
    assert "create LoRA for Text Encoder 2: 192 modules." in out
    assert "create LoRA for Text Encoder: 264 modules." in out
    assert "create LoRA for U-Net: 722 modules." in out
    assert re.search(
        r"^lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k +down \[4, 2048\]  up \[640, 4\]$", out, re.M
    )


def test_inspect_our_file(tmp_path: Path, capsys) -> None:
    network, _, _ = sd1_network()
    meta = {"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1", "ss_output_name": "irene"}
    save_network(network, tmp_path / "ours.safetensors", meta)
    report = _json(capsys, ["inspect", str(tmp_path / "ours.safetensors"), "--json"])
    assert report["family"] == "sd1" and report["modules"] == 204
    assert report["by_component"] == {"te": 12, "unet": 192}
    assert report["ranks"] == {"4": 204} and report["alphas"] == {"2.0": 204}
    assert report["metadata"]["ss_output_name"] == "irene"
    assert report["sshs_model_hash"]["match"] is True and report["unknown_keys"] == []


def test_inspect_sd_scripts_file(tmp_path: Path, capsys) -> None:
    network, _, _ = sd1_network()
    named = kohya.to_kohya(network.lora_state_dict(), "sd1", network.naming)
    named["lora_unet_some_module_we_do_not_know.lora_down.weight"] = torch.zeros(4, 4)
    meta = write_sd_scripts_style(tmp_path / "sds.safetensors", named)
    report = _json(capsys, ["inspect", str(tmp_path / "sds.safetensors"), "--json"])
    assert report["family"] == "sd1" and report["modules"] == 204
    assert report["metadata"] == meta
    assert report["sshs_model_hash"] == {
        "stored": meta["sshs_model_hash"],
        "computed": meta["sshs_model_hash"],
        "match": True,
    }
    assert report["unknown_keys"] == ["lora_unet_some_module_we_do_not_know.lora_down.weight"]
    assert main(["inspect", str(tmp_path / "sds.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "family: SD1.x (sd1)" in text and "(matches)" in text


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    text = tmp_path / "text.safetensors"
    text.write_text("hello")
    network, _, _ = sd1_network()
    good = tmp_path / "good.safetensors"
    save_network(network, good, {"ss_base_model_version": "sd_v1"})
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(good.read_bytes()[:-500])
    nan = tmp_path / "nan.safetensors"
    named = kohya.to_kohya(network.lora_state_dict(), "sd1", network.naming)
    first = next(iter(named))
    named[first] = named[first].clone().fill_(float("nan"))
    from safetensors.torch import save_file

    save_file(named, str(nan))
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    flux = tmp_path / "flux.safetensors"
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 4)}, str(flux))
    return {
        "not safetensors": (["inspect", str(text)], "not a safetensors file"),
        "truncated": (["inspect", str(truncated)], "truncated"),
        "nan": (["inspect", str(nan)], "NaN"),
        "directory": (["inspect", str(folder)], "is a folder"),
        "other family": (["inspect", str(good), "--expect", "sdxl"], "is a LoRA for SD1.x, but the model is SDXL"),
        "unknown architecture": (["inspect", str(flux)], "not a LoRA for SD1.x or SDXL"),
        "bad dim": (["modules", "--arch", "sd15", "--dim", "0"], "at least 1"),
    }


def test_bad_input_gives_one_clear_line(tmp_path: Path, capsys) -> None:
    for name, (argv, message) in _bad_inputs(tmp_path).items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, (name, err)


def test_no_traceback_in_a_real_process(tmp_path: Path) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x00" * 100)
    proc = subprocess.run(
        [sys.executable, "-m", "lib_lora", "inspect", str(bad)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
