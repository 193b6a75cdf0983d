"""The `train` verb: a run from the command line, Ctrl-C, and one clear line for each bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib_lora.cli import main
from support.train_data import make_dataset, preset_dataset, small_dataset

ROOT = Path(__file__).resolve().parents[2]
FAST = [
    "--resolution",
    "64",
    "--train_batch_size",
    "2",
    "--network_dim",
    "4",
    "--network_alpha",
    "2",
    "--seed",
    "3",
    "--mixed_precision",
    "no",
]


def _train(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--train_data_dir",
        str(tmp_path / "data"),
        "--output_dir",
        str(tmp_path / "out"),
        "--output_name",
        "cli",
        *FAST,
        *extra,
    ]


def test_a_cli_run_writes_files_that_inspect_accepts(tmp_path: Path, capsys) -> None:
    small_dataset(tmp_path / "data")
    config = tmp_path / "run.toml"
    config.write_text(
        '[training_arguments]\nmax_train_epochs = 2\nsave_every_n_epochs = 1\n[model]\npretrained_model_name_or_path = "tiny-sd15"\n'
    )
    assert main([*_train(tmp_path)[:1], str(config), *_train(tmp_path)[1:]]) == 0
    out = capsys.readouterr().out
    assert "bucket 0: resolution (64, 64)" in out and "steps per epoch" in out
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["cli-000001.json", "cli-000001.safetensors", "cli-log.jsonl", "cli.json", "cli.safetensors"]
    for name in ("cli-000001.safetensors", "cli.safetensors"):
        assert main(["inspect", str(tmp_path / "out" / name), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["family"] == "sd1" and report["sshs_model_hash"]["match"] is True


def test_ctrl_c_stops_after_the_step_and_saves(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", {"4_many": [(64, 64)] * 8})
    args = [
        sys.executable,
        "-m",
        "lib_lora",
        *_train(tmp_path, "--max_train_epochs", "200", "--pretrained_model_name_or_path", "tiny-sd15"),
    ]
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log = tmp_path / "out" / "cli-log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    saved = list((tmp_path / "out").glob("cli-step*.safetensors"))
    assert len(saved) == 1 and (tmp_path / "out" / "cli-state" / "state.json").is_file()
    assert "resume with the same command and --resume" in output
    assert main(["inspect", str(saved[0])]) == 0


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    cases: dict[str, tuple[list[str], str]] = {}
    no_prefix = tmp_path / "noprefix"
    make_dataset(no_prefix, {"irene": [(64, 64)]})
    cases["no N_ prefix"] = (["--train_data_dir", str(no_prefix)], "irene")
    empty = tmp_path / "empty"
    (empty / "5_x").mkdir(parents=True)
    cases["empty folder"] = (["--train_data_dir", str(empty)], "No images in the training folders")
    corrupt = tmp_path / "corrupt"
    (corrupt / "2_x").mkdir(parents=True)
    for i in range(3):
        (corrupt / "2_x" / f"bad{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cases["all images corrupt"] = (["--train_data_dir", str(corrupt)], "usable")
    latin = tmp_path / "latin"
    make_dataset(latin, {"2_x": [(64, 64)]}, captions=False)
    (latin / "2_x" / "img00.txt").write_bytes("café, ü".encode("latin-1"))
    cases["caption not UTF-8"] = (["--train_data_dir", str(latin)], "img00.txt")
    cases["caption extension .png"] = (
        ["--caption_extension", ".png"],
        "caption_extension = '.png' is not valid: it is an image type",
    )
    png_toml = tmp_path / "png.toml"
    png_toml.write_text('caption_extension = ".png"\n')
    cases["caption extension .png in a TOML"] = ([str(png_toml)], "caption_extension = '.png' is not valid")
    toml = tmp_path / "bad.toml"
    toml.write_text("learnig_rate = 0.001\n")
    cases["unknown TOML key"] = ([str(toml)], "Unknown setting 'learnig_rate'. Did you mean: learning_rate?")
    cases["negative lr"] = (["--learning_rate", "-1e-4"], "learning_rate = -0.0001 is not valid")
    not_model = tmp_path / "notes.safetensors"
    not_model.write_text("not a model")
    cases["non-checkpoint file"] = (["--pretrained_model_name_or_path", str(not_model)], "notes.safetensors")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"PK\x03\x04 pickle")
    cases[".ckpt"] = (["--pretrained_model_name_or_path", str(ckpt)], "safetensors")
    return cases


def test_bad_input_gives_one_clear_line_and_writes_nothing(tmp_path: Path, capsys) -> None:
    good = tmp_path / "data"
    small_dataset(good)
    for name, (extra, message) in _bad_inputs(tmp_path).items():
        out = tmp_path / f"out-{name.replace(' ', '_')}"
        argv = ["train", "--train_data_dir", str(good), "--output_dir", str(out), *FAST, "--max_train_epochs", "1"]
        if extra and not extra[0].startswith("--"):
            argv.insert(1, extra[0])
            extra = extra[1:]
        code = main([*argv, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, name
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (name, err)
        assert not out.exists(), name


@pytest.mark.parametrize("arch", ["tiny-sdxl"])
def test_sdxl_demo_model_trains_from_the_cli(tmp_path: Path, arch: str, capsys) -> None:
    small_dataset(tmp_path / "data")
    assert main(_train(tmp_path, "--pretrained_model_name_or_path", arch, "--max_train_epochs", "1")) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "out" / "cli.safetensors"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["family"] == "sdxl" and report["metadata"]["ss_base_model_version"] == "sdxl_base_v1-0"
    assert set(report["by_component"]) == {"te1", "te2", "unet"}


@pytest.mark.slow
def test_character_preset_on_the_demo_model_trains_and_every_file_checks_out(tmp_path: Path, capsys) -> None:
    """The training issue's check, as a user types it (its timing lives in bench/preset_run.py)."""
    from lib_lora.formats import safetensors_io
    from lib_lora.formats.metadata import sshs_model_hash_of_file

    preset_dataset(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["train", "--preset", "character", "--train_data_dir", str(tmp_path / "data"), "--output_name", "irene",
            "--pretrained_model_name_or_path", "tiny-sd15", "--output_dir", str(out), "--seed", "1"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    epochs = [f"irene-{n:06d}.safetensors" for n in range(5, 50, 5)]
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted([*epochs, "irene.safetensors"])
    assert (out / "irene.json").is_file()
    for path in out.glob("*.safetensors"):
        assert safetensors_io.load(path)[1]["sshs_model_hash"] == sshs_model_hash_of_file(path), path.name
    losses = [json.loads(line)["loss"] for line in (out / "irene-log.jsonl").read_text().splitlines()]
    assert len(losses) == 550  # 18 images with repeats, batch 2 -> 11 steps x 50 epochs
    first, last = sum(losses[:110]) / 110, sum(losses[-110:]) / 110
    assert last < first, (first, last)


def test_an_existing_run_is_refused_before_the_model_loads_unless_overwrite(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    from lib_lora.standalone import models

    small_dataset(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "cli.safetensors").write_bytes(b"the earlier run")
    (out / "cli-step00000004.safetensors").write_bytes(b"its stop file")
    with monkeypatch.context() as patch:
        patch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model loaded before the refusal"))
        assert main(_train(tmp_path, "--max_train_epochs", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: A run named cli already exists in {out} (2 LoRA files); resume it, use a new name such as cli-2, "
        "or overwrite it. Add --overwrite to replace it, or --output_name NEW."
    ]
    assert (out / "cli.safetensors").read_bytes() == b"the earlier run"
    assert main(_train(tmp_path, "--max_train_epochs", "1", "--overwrite")) == 0
    capsys.readouterr()
    (trash,) = (out / ".trash").iterdir()
    assert sorted(p.name for p in trash.iterdir()) == ["cli-step00000004.safetensors.old", "cli.safetensors.old"]
    assert (trash / "cli.safetensors.old").read_bytes() == b"the earlier run"
    assert sorted(p.name for p in out.iterdir()) == [".trash", "cli-log.jsonl", "cli.json", "cli.safetensors"]


def test_key_equals_value_keeps_the_value_as_typed() -> None:
    from lib_lora.cli.train import _overrides

    values = _overrides(["--pretrained-model-name-or-path=tiny-sd15", "--output_name=my-lora", "--seed", "3"])
    assert values == {"pretrained_model_name_or_path": "tiny-sd15", "output_name": "my-lora", "seed": "3"}


def test_config_file_flag_as_sd_scripts_takes_it(tmp_path: Path, capsys) -> None:
    """sd-scripts users give the TOML with ``--config_file``: the file is read (its bad key is
    named), not refused as an unknown setting; a missing or doubled file is one clear line too."""
    bad = tmp_path / "bad.toml"
    bad.write_text("learnig_rate = 0.001\n")
    broken = tmp_path / "broken.toml"
    broken.write_text("learning_rate = \n[x\n")
    out = tmp_path / "out"
    base = ["--train_data_dir", str(tmp_path / "data"), "--output_dir", str(out), *FAST]
    cases = {
        ("--config_file", str(bad)): "Unknown setting 'learnig_rate'. Did you mean: learning_rate?",
        (f"--config_file={bad}",): "Unknown setting 'learnig_rate'",
        ("--config", str(broken)): "is not valid TOML",
        ("--config_file",): "--config_file needs the TOML file",
    }
    for extra, message in cases.items():
        code = main(["train", *base, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (extra, err)
    code = main(["train", str(bad), "--config_file", str(broken), *base])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: Two config files given ({bad} and {broken}); give one."], err
    assert not out.exists()
    from lib_lora.cli.train import _config_file

    assert _config_file(["my.toml", "--seed", "3"]) == ("my.toml", ["--seed", "3"])
    assert _config_file(["--seed", "3", "--config_file", "a.toml"]) == ("a.toml", ["--seed", "3"])


def test_the_resume_hint_quotes_a_folder_with_spaces(tmp_path: Path, capsys, monkeypatch) -> None:
    from lib_lora.standalone import models

    small_dataset(tmp_path / "data")
    out = tmp_path / "my loras"
    (out / "cli-state").mkdir(parents=True)
    (out / "cli-step00000004.safetensors").write_bytes(b"its stop file")
    argv = _train(tmp_path, "--max_train_epochs", "1")
    argv[argv.index("--output_dir") + 1] = str(out)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model loaded before the refusal"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f'Add --resume "{out / "cli-state"}" to continue it, --overwrite to replace it' in err, err


def test_resume_names_a_wrong_folder_or_missing_settings_before_anything_loads(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    from lib_lora.standalone import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model loaded before the refusal"))
    small_dataset(tmp_path / "data")
    assert main(_train(tmp_path, "--resume", str(tmp_path / "nope"))) == 2
    assert f"{tmp_path / 'nope'}: no such training state folder." in capsys.readouterr().err
    state = tmp_path / "out" / "cli-state"
    state.mkdir(parents=True)
    (state / "state.json").write_text("{}")
    assert main(_train(tmp_path, "--resume", str(state))) == 2
    assert "holds no complete training state" in capsys.readouterr().err
    # the command the stop printed, alone: the run's settings are needed too
    monkeypatch.setattr("lib_lora.jobs.train.find_state", lambda path: Path(path))
    assert main(["train", "--resume", str(state)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume continues a stopped run with the settings it was started with"), err
