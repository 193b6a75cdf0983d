"""Every network type trained from the tab on the standalone app's real host (no stand-in): the user
picks the type in "Network type" (which fills in its starting values), presses Start, and the epoch
file is that type — ``inspect`` names it and its stored ``sshs_model_hash`` is the sha256 of the
file's tensor bytes — on both demo models. Bad network input pressed from the tab: one error line,
nothing written in the Lora folder."""

from __future__ import annotations

import contextlib
import html
import io
import json
import re
from pathlib import Path

import pytest

from lib_lora.cli import main
from lib_lora.formats import safetensors_io
from lib_lora.standalone.app import StandaloneHost
from lib_lora.ui.tab import build_tab
from support.lora_files import file_model_hash
from support.train_data import make_dataset
from support.ui_tab import form_args, value

# what a quick test run changes besides the type: the smallest size, one epoch of one step
QUICK = {"resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 64, "train_batch_size": 1,
         "max_train_epochs": "1", "save_every_n_epochs": "", "mixed_precision": "no", "seed": 5}  # fmt: skip
# name -> (the type picked in the dropdown, other fields the user sets, what inspect names it)
TYPES = {
    "lora": ("lora", {"network_dim": 4, "network_alpha": 2}, "LoRA"),
    "locon-tucker": ("locon", {"use_tucker": True}, "LoRA"),
    "lokr": ("lokr", {}, "LoKr"),
    "loha": ("loha", {}, "LoHa"),
    "loha-dora": ("loha", {"dora_wd": True}, "LoHa + DoRA"),
}


@pytest.fixture(scope="module", params=["tiny-sd15", "tiny-sdxl"])
def app(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    data = make_dataset(root / "data", {"1_alpha": [(64, 64)]})
    host = StandaloneHost(request.param, root / "lora", device="cpu")
    _, tab = build_tab(host)
    return host, tab, data


def start(app, name: str, algo: str, **changes) -> str:
    """Pick ``algo`` in the dropdown (its starting values fill in), apply ``changes``, press Start."""
    host, tab, data = app
    picked = dict(zip(tab.train.form.names, tab.train.apply_network_type(algo)))
    filled = {n: value(u) for n, u in picked.items() if value(u) is not None}
    values = form_args(tab, **{**filled, "algo": algo, **QUICK, **changes})
    choice = next(iter(host.output_dir_choices()))
    return tab.train.start_training("task", str(data), name, choice, "", *values)


def inspect(*argv: str) -> str:
    """``python -m lib_lora inspect ...``'s output. (Not capsys: the model loads inside these tests, and
    a library logger made then would keep capsys' stream, closed after the test, for later tests.)"""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["inspect", *argv]) == 0
    return out.getvalue()


@pytest.mark.parametrize("name", list(TYPES))
def test_each_type_trains_from_the_tab_and_inspect_reads_it_back(app, name: str) -> None:
    host, tab, _ = app
    algo, changes, described = TYPES[name]
    result = start(app, name, algo, **changes)
    assert "Training finished" in result, result
    path = Path(host.lora_dir) / f"{name}.safetensors"
    report = json.loads(inspect(str(path), "--json"))
    assert report["family"] == host.model_info().family
    assert report["network"] == described
    assert report["unknown_keys"] == [] and report["incomplete_modules"] == []
    assert report["sshs_model_hash"]["stored"] == file_model_hash(path)
    assert report["sshs_model_hash"]["match"] is True
    meta = report["metadata"]
    if algo == "lora" and not changes.get("dora_wd"):
        assert meta["ss_network_module"] == "networks.lora"
    else:  # written as LyCORIS writes it, so kohya_ss and the webui read the type back
        assert meta["ss_network_module"] == "lycoris.kohya"
        assert json.loads(meta["ss_network_args"])["algo"] == algo
    keys = safetensors_io.load(path)[0].keys()
    if name == "locon-tucker":  # LoCon on the 3x3 convs, through a Tucker core
        assert any(k.endswith(".lora_mid.weight") for k in keys)
    if name == "lokr":  # the tab's LoKr starting values: factor 8, full-matrix w2
        assert "8" in report["lokr_factors"] and report["lokr_full_matrix_modules"] > 0
    if "DoRA" in described:
        assert report["dora_modules"] == report["modules"] and report["dora_output_axis_modules"] == 0
    assert f"network: {described}" in inspect(str(path))


def _error_lines(result: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'<div class="lt-msg lt-error">(.*?)</div>', result)]


BAD = {
    "unknown algo": ("lora", {"network_module": "lycoris.kohya", "network_args": "algo=ia3"}, "algo='ia3' is not supported"),
    "factor does not divide": ("lokr", {"factor": 3}, "factor = 3 does not divide"),
    "DoRA on the output axis": ("lokr", {"dora_wd": True, "network_args": "wd_on_output=True"}, "DoRA must normalise per input column"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_network_input_from_the_tab_is_one_error_line_and_writes_nothing(app, case: str) -> None:
    host, tab, _ = app
    before = sorted(p.name for p in Path(host.lora_dir).iterdir()) if Path(host.lora_dir).exists() else []
    algo, changes, message = BAD[case]
    result = start(app, "bad", algo, **changes)
    errors = _error_lines(result)
    assert len(errors) == 1 and message in errors[0], result
    assert "\n" not in errors[0]
    after = sorted(p.name for p in Path(host.lora_dir).iterdir()) if Path(host.lora_dir).exists() else []
    assert after == before


def test_a_lokr_file_to_continue_a_loha_run_is_refused_in_one_line(app) -> None:
    host, tab, _ = app
    # its own LoKr run: the "lokr" of test_each_type... is that test's (either may run first)
    assert "Training finished" in start(app, "lokr-to-continue", "lokr")
    lokr = Path(host.lora_dir) / "lokr-to-continue.safetensors"
    before = sorted(p.name for p in Path(host.lora_dir).iterdir())
    result = start(app, "loha-from-lokr", "loha", network_weights=str(lokr))
    errors = _error_lines(result)
    assert len(errors) == 1 and "is a LoKr file, but this run trains LoHa" in errors[0], result
    assert sorted(p.name for p in Path(host.lora_dir).iterdir()) == before
