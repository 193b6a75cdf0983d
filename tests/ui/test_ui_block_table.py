"""The Train tab's per-block table: the loaded model's numbering, edits -> sd-scripts' strings, strings -> the
table, a bad cell refused in one sentence; the string fields stay in the form (CLI/TOML names)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import gradio as gr
import pytest

from lib_lora.config import build_config, load_toml
from lib_lora.jobs import block_table as bt
from lib_lora.ui.host import ModelInfo
from lib_lora.ui.tab import build_tab
from support.ui_host import FakeHost
from support.ui_tab import form_args, subset_args, unchanged, value

pytestmark = pytest.mark.ui
KEYS = list(bt.KEYS)


def _tab(tmp_path: Path, family: str = "sd1"):
    _, tab = build_tab(FakeHost(tmp_path, ModelInfo(True, f"fake-{family}.safetensors", family, False, None)))
    return tab


def _rows(table_value) -> list[list[str]]:
    data = table_value["data"] if isinstance(table_value, dict) else table_value
    return [[str(c) for c in row] for row in data]


def _text(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", markup or ""))


def _ids(components) -> set[int]:
    return {c._id for c in components}


def test_the_table_is_in_the_advanced_network_settings_with_the_models_numbering(tmp_path: Path) -> None:
    sd1 = _tab(tmp_path / "a").train
    rows = _rows(sd1.block_table.value)
    assert (
        len(rows) == 25 and rows[12][:2] == ["12", "M00 middle"] and list(sd1.block_table.headers) == list(bt.HEADERS)
    )
    labels, node = [], sd1.block_table
    while node is not None:
        labels.append(getattr(node, "label", None) or "")
        node = getattr(node, "parent", None)
    assert "Advanced settings" in labels
    assert "SD1.x: 25 blocks" in _text(sd1.block_status.value)
    sdxl = _tab(tmp_path / "b", "sdxl").train
    rows = _rows(sdxl.block_table.value)
    assert len(rows) == 23 and rows[0][2] == bt.FIXED and "SDXL: 23 blocks" in _text(sdxl.block_status.value)
    # the strings are still settings of the form (CLI/TOML names), folded under the table
    assert all(isinstance(sd1.form.components[k], gr.Textbox) for k in KEYS)


def test_editing_a_cell_sets_the_kohya_string_that_the_run_uses(tmp_path: Path) -> None:
    tab = _tab(tmp_path)
    panel = tab.train
    rows = _rows(panel.block_table.value)
    rows[16][2] = "0.5"  # OUT03's learning-rate factor
    rows[5][3] = "4"  # IN05's dim
    out = panel.edit_block_table(rows, *subset_args(tab, KEYS), 16, 8.0, None, None)
    new = dict(zip(KEYS, out))
    assert value(new["up_lr_weight"]) == "1,1,1,0.5,1,1,1,1,1,1,1,1"
    assert value(new["block_dims"]) == ",".join(["16"] * 5 + ["4"] + ["16"] * 19)
    assert all(unchanged(new[k]) for k in KEYS if k not in ("up_lr_weight", "block_dims"))
    assert "Numbering for SD1.x" in _text(out[-1])
    values = panel.form.values(
        form_args(tab, up_lr_weight=value(new["up_lr_weight"]), block_dims=value(new["block_dims"]))
    )
    cfg = build_config({**values, "train_data_dir": str(tmp_path), "output_name": "x"}, check=False)
    assert cfg.up_lr_weight == "1,1,1,0.5,1,1,1,1,1,1,1,1" and cfg.block_dims.split(",")[5] == "4"


def test_a_bad_cell_is_refused_in_one_sentence_and_nothing_changes(tmp_path: Path) -> None:
    tab = _tab(tmp_path)
    rows = _rows(tab.train.block_table.value)
    rows[20][5] = "big"
    out = tab.train.edit_block_table(rows, *subset_args(tab, KEYS), 16, 8.0, None, None)
    assert all(unchanged(o) for o in out[:-1])
    assert (
        _text(out[-1]).strip()
        == "Error: Block 20 (OUT07 up): the conv dim must be a whole number of 0 or more, not 'big'."
    )


def test_loaded_settings_fill_the_table_and_the_fields_drive_it(tmp_path: Path) -> None:
    toml = tmp_path / "kohya.toml"
    toml.write_text(
        'network_args = ["down_lr_weight=0,0,0,0,0,0,1,1,1,1,1,1", "mid_lr_weight=2", '
        f'"block_dims={",".join(["4"] * 12 + ["8"] + ["4"] * 12)}"]\n',
        encoding="utf-8",
    )
    loaded = build_config(load_toml(toml), check=False).as_dict()
    tab = _tab(tmp_path / "tab")
    panel = tab.train
    table, status = panel.show_block_table(*subset_args(tab, KEYS, **{k: loaded[k] or "" for k in KEYS}))
    rows = _rows(value(table))
    assert [r[2] for r in rows[:13]] == ["0"] * 6 + ["1"] * 6 + ["2"] and rows[12][3] == "8" and rows[0][3] == "4"
    assert "Numbering for SD1.x" in _text(status)
    # every block string's change (typed, a preset, a restored run) refreshes the table, and so does Refresh model
    refreshers = [d for fn, d in zip(tab.blocks.fns, tab.blocks.dependencies) if fn.fn == panel.show_block_table]
    triggers = {t[0] if isinstance(t, (list, tuple)) else t for d in refreshers for t in d["targets"]}
    assert _ids(panel.block_inputs()) | {panel.model_refresh._id} <= triggers
    assert all(panel.block_table._id in d["outputs"] for d in refreshers)


def test_a_model_of_the_other_family_renumbers_the_table(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, ModelInfo(True, "fake.safetensors", "sd1", False, None))
    _, tab = build_tab(host)
    host.info = ModelInfo(True, "fake-xl.safetensors", "sdxl", False, None)
    table, status = tab.train.show_block_table(*subset_args(tab, KEYS, block_dims=",".join(["4"] * 25)))
    assert len(_rows(value(table))) == 23
    assert "block_dims has 25 numbers but an SDXL model has 23 blocks" in _text(status)
