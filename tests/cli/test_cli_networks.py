"""Every network type from the command line on both demo models, in sd-scripts' own spelling
(``--network_module lycoris.kohya --network_args "algo=lokr" "factor=8"``), read back by ``inspect``;
resume-free continue-from-file; and one clear line (nothing written) for each bad network input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib_lora.cli import main
from lib_lora.formats import safetensors_io
from support.lora_files import file_model_hash
from support.train_data import small_dataset

FAST = ["--resolution", "64", "--train_batch_size", "2", "--network_dim", "4", "--network_alpha", "4", "--seed", "3",
        "--mixed_precision", "no", "--max_train_epochs", "1"]  # fmt: skip
# (name, network args as a kohya_ss user writes them, what inspect must name)
TYPES = [
    ("lora", [], "LoRA", "networks.lora"),
    ("locon", ["--network_module", "lycoris.kohya", "--network_args", "algo=locon", "conv_dim=4", "conv_alpha=2", "use_tucker=True"], "LoRA", "lycoris.kohya"),
    ("lokr", ["--network_module", "lycoris.kohya", "--network_args", "algo=lokr", "factor=8", "preset=full"], "LoKr", "lycoris.kohya"),
    ("loha", ["--network_module", "lycoris.kohya", "--network_args", "algo=loha", "conv_dim=2", "use_tucker=True"], "LoHa", "lycoris.kohya"),
    ("dora", ["--network_module", "lycoris.kohya", "--network_args", "algo=lokr", "factor=4", "dora_wd=True", "wd_on_output=False"], "LoKr + DoRA", "lycoris.kohya"),
    ("lora-dora", ["--dora_wd", "true"], "LoRA + DoRA", "lycoris.kohya"),
]  # fmt: skip


def _run(tmp_path: Path, arch: str, name: str, extra: list[str]) -> Path:
    out = tmp_path / f"out-{arch}-{name}"
    argv = ["train", "--train_data_dir", str(tmp_path / "data"), "--output_dir", str(out), "--output_name", name,
            "--pretrained_model_name_or_path", arch, *FAST, *extra]  # fmt: skip
    assert main(argv) == 0, name
    return out / f"{name}.safetensors"


@pytest.mark.parametrize("arch", ["tiny-sd15", "tiny-sdxl"])
@pytest.mark.parametrize(("name", "extra", "described", "module"), TYPES, ids=[t[0] for t in TYPES])
def test_each_network_type_trains_from_the_cli_and_inspect_reads_it(
    tmp_path: Path, arch: str, name: str, extra: list[str], described: str, module: str, capsys
) -> None:
    small_dataset(tmp_path / "data")
    path = _run(tmp_path, arch, name, extra)
    capsys.readouterr()
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["network"] == described
    assert report["sshs_model_hash"]["match"] is True
    assert report["sshs_model_hash"]["stored"] == file_model_hash(path)
    assert report["unknown_keys"] == [] and report["incomplete_modules"] == []
    if name == "locon":  # the 3x3 convs through a Tucker core
        assert any(k.endswith(".lora_mid.weight") for k in safetensors_io.load(path)[0])
    meta = report["metadata"]
    assert meta["ss_network_module"] == module
    args = json.loads(meta["ss_network_args"]) if meta.get("ss_network_args") not in (None, "None") else {}
    if "DoRA" in described:
        assert args["dora_wd"] == "True" and args["wd_on_output"] == "False"
        assert report["dora_modules"] == report["modules"] and report["dora_output_axis_modules"] == 0
    if name == "lokr":
        assert args["algo"] == "lokr" and args["factor"] == "8" and "8" in report["lokr_factors"]
    if module == "lycoris.kohya":
        assert args["algo"] in ("locon", "lokr", "loha")
    assert main(["inspect", str(path)]) == 0
    assert f"network: {described}" in capsys.readouterr().out


def test_network_weights_continues_each_type_and_refuses_another(tmp_path: Path, capsys) -> None:
    small_dataset(tmp_path / "data")
    lokr_args = ["--network_module", "lycoris.kohya", "--network_args", "algo=lokr", "factor=4", "dora_wd=True"]
    first = _run(tmp_path, "tiny-sd15", "first", lokr_args)
    again = _run(tmp_path, "tiny-sd15", "again", [*lokr_args, "--network_weights", str(first)])
    assert "starting from" in capsys.readouterr().out
    assert again.is_file()
    out = tmp_path / "out-refused"
    argv = ["train", "--train_data_dir", str(tmp_path / "data"), "--output_dir", str(out), *FAST,
            "--network_module", "lycoris.kohya", "--network_args", "algo=loha", "--network_weights", str(first)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a LoKr + DoRA file, but this run trains LoHa" in err[0], err
    assert not out.exists()


BAD = {
    "unknown algo": (["--network_args", "algo=ia3"], "algo='ia3' is not supported"),
    "factor does not divide": (["--network_args", "algo=lokr", "factor=3"], "factor = 3 does not divide"),
    "DoRA on the output axis": (["--network_args", "algo=lokr", "dora_wd=True", "wd_on_output=True"], "wd_on_output=True' is refused: DoRA must normalise per input column"),
    "unknown network arg": (["--network_args", "algo=lokr", "fator=8"], "network_args entry 'fator=8' is not supported"),
    "factor on LoHa": (["--network_args", "algo=loha", "factor=8"], "factor = 8 is a LoKr setting"),
    "rank dropout on LoKr": (["--network_args", "algo=lokr", "rank_dropout=0.1"], "rank_dropout is not supported with LoKr"),
}  # fmt: skip


def test_bad_network_input_gives_one_clear_line_and_writes_nothing(tmp_path: Path, capsys) -> None:
    small_dataset(tmp_path / "data")
    for name, (extra, message) in BAD.items():
        out = tmp_path / f"out-{name.replace(' ', '_')}"
        argv = ["train", "--train_data_dir", str(tmp_path / "data"), "--output_dir", str(out), *FAST,
                "--network_module", "lycoris.kohya", *extra]  # fmt: skip
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (name, err)
        assert not out.exists(), name


def test_several_values_after_one_flag_as_sd_scripts(tmp_path: Path) -> None:
    from lib_lora.cli.train import _overrides

    values = _overrides(["--network_args", "algo=lokr", "factor=8", "--optimizer_args", "weight_decay=0.1",
                         "betas=0.9,0.99", "--network_dim", "8"])  # fmt: skip
    assert values == {"network_args": ["algo=lokr", "factor=8"], "optimizer_args": ["weight_decay=0.1", "betas=0.9,0.99"],
                      "network_dim": "8"}  # fmt: skip


def test_modules_lists_each_types_tensors(capsys) -> None:
    argv = ["modules", "--arch", "sd15", "--algo", "lokr", "--factor", "8", "--dim", "10000", "--dora", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["modules"]["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"] == {
        "lokr_w1": [8, 8], "lokr_w2": [40, 96], "dora_scale": [1, 768]
    }  # fmt: skip
    assert report["counts"] == {"te": 72, "unet": 278}  # LyCORIS types train the convs too
    assert main(["modules", "--arch", "sd15", "--algo", "loha", "--dim", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["modules"]["lora_unet_down_blocks_0_resnets_0_conv1"] == {
        "hada_w1_a": [320, 4], "hada_w1_b": [4, 2880], "hada_w2_a": [320, 4], "hada_w2_b": [4, 2880]
    }  # fmt: skip
