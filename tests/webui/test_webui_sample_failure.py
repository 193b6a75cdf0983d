"""A sample image txt2img cannot render costs that picture, not the run.

Seen in the real webui 1.10.1: at the end of the last epoch txt2img raised NansException while
rendering the epoch's sample (its emphasis normalisation divided 0 by 0), and the whole run failed
before its last epoch was saved. Here the stand-in's txt2img fails the same way on that sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from support import webui_models as wm
from support.webui_env import FAST, dataset, load_model, model_state, outputs, same_outputs, state_differences


class NansException(Exception):
    """As the webui's ``modules.devices.NansException``."""


def _start_fn(blocks: Any, tab: Any) -> Any:
    ids = [tab.train.result._id]
    for index, dependency in enumerate(blocks.dependencies):
        # the Start handler itself (beside it, a click with no inputs clears the last run's line)
        if tab.train.start._id in dependency["targets"] and dependency["outputs"] == ids and dependency["inputs"]:
            return blocks.fns[index].fn
    raise AssertionError("no Start handler")


def _start(folder: Path, **settings: Any) -> tuple[str, Any]:
    """Press Start on the real tab built against the webui host; (result HTML, host)."""
    from lib_lora.ui.forms import to_component_value
    from lib_lora.ui.tab import build_tab
    from lib_lora.webui import register

    host = register.get_host()
    blocks, tab = build_tab(host)
    values = {**FAST, **settings}
    form = tab.train.form.components
    args = [to_component_value(k, values[k]) if k in values else c.value for k, c in form.items()]
    return _start_fn(blocks, tab)("task(test)", str(folder), "hutao", "Lora folder", "", *args), host


@pytest.mark.parametrize("failing_call", [2, 1], ids=["last epoch", "first epoch"])
def test_a_failed_sample_keeps_the_run_and_its_last_epoch(webui, monkeypatch, failing_call: int) -> None:
    model = load_model(webui, wm.tiny_sd1(checkpoint_dir=str(webui.root)))
    before, state = outputs(model), model_state(model)
    folder = dataset(webui.root / "data", images=2, name="1_hutao")
    real = webui.processing.process_images
    calls = {"n": 0}

    def process_images(p: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == failing_call:
            raise NansException("A tensor with NaNs was produced in Unet.")
        return real(p)

    monkeypatch.setattr(webui.processing, "process_images", process_images)
    html, host = _start(folder)

    assert "Training finished" in html, html
    job = host.jobs.current("train")
    assert job.state == "done"
    files = sorted(p.name for p in webui.lora_dir.glob("hutao*") if p.is_file())
    saved = {"hutao-000001.safetensors", "hutao.safetensors", "hutao-000001.json", "hutao.json"}
    assert saved <= set(files), files
    # the epoch whose sample failed gets no (blank) preview; the other keeps its sample as preview
    failed_stem, good_stem = ("hutao", "hutao-000001") if failing_call == 2 else ("hutao-000001", "hutao")
    assert f"{failed_stem}.preview.png" not in files
    assert f"{good_stem}.preview.png" in files
    warnings = [text for level, text in job.messages if level == "warning"]
    assert any("Sample image skipped" in text and "NansException" in text for text in warnings), warnings
    assert same_outputs(before, outputs(model)) == []
    assert state_differences(state, model_state(model)) == []
