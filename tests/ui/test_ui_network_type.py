"""The Network type choice in the Train form: its help names what each type is good for, picking
one fills in that type's starting values, and the estimate shows the file size for the type."""

from __future__ import annotations

import re
from pathlib import Path

import gradio as gr
import pytest

from lib_lora.ui.tab import build_tab
from support.ui_host import FakeHost
from support.ui_tab import form_args, unchanged, value


@pytest.fixture
def tab(tmp_path: Path):
    _, tab = build_tab(FakeHost(tmp_path))
    return tab


def test_network_type_is_a_visible_choice_with_one_line_per_type(tab) -> None:
    algo = tab.train.form.components["algo"]
    assert isinstance(algo, gr.Dropdown) and algo.label == "Network type"
    assert [c[0] if isinstance(c, tuple) else c for c in algo.choices] == ["lora", "locon", "lokr", "loha"]
    for word in ("LoRA:", "LoCon:", "LoKr:", "LoHa:"):
        assert word in algo.info
    assert tab.train.form.components["dora_wd"].label == "DoRA"


def test_picking_a_type_fills_in_its_starting_values_and_nothing_else(tab) -> None:
    names = tab.train.form.names
    updates = dict(zip(names, tab.train.apply_network_type("lokr")))
    assert value(updates["network_dim"]) == 10000 and value(updates["network_alpha"]) == 1
    assert value(updates["factor"]) == 8
    assert unchanged(updates["learning_rate"]) and unchanged(updates["algo"])
    updates = dict(zip(names, tab.train.apply_network_type("lora")))
    assert value(updates["network_dim"]) == 32 and value(updates["conv_dim"]) == ""


def _size_mib(html: str) -> float:
    return float(re.search(r"File size: ~([\d.]+) MiB", html).group(1))


def test_estimate_shows_the_file_size_of_the_type(tab, tmp_path: Path) -> None:
    from lib_lora.data.demo import write_demo_dataset

    dataset = tmp_path / "data"
    write_demo_dataset(dataset)

    def estimate(**changes):  # what the live check shows as the fields change
        return tab.train.check(str(dataset), "mylora", "Lora folder", "", *form_args(tab, **changes))

    lora = _size_mib(estimate(algo="lora", network_dim=32))
    lokr = _size_mib(estimate(algo="lokr", network_dim=10000, factor=8))
    assert 30 < lora < 40 and lokr < lora  # SD1 dim-32 LoRA ~36 MiB; LoKr factor 8 is smaller
    assert "weight changes" in estimate(algo="lokr", network_dim=10000, factor=8)
