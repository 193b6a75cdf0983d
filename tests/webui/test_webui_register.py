"""scripts/lora_trainer.py in the stand-in webui: light import, the tab, the settings section, the
API only with --api, txt2img capture, the gradio wrapper and the queue lock."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from fastapi import FastAPI

from support import webui_models as wm
from support.webui_env import PATHS, load_model

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, runpy, sys
sys.path[:0] = {paths!r} + [{root!r}]
import modules.shared, modules.script_callbacks, modules.sd_models  # what the webui has loaded by then
before = set(sys.modules)
runpy.run_path({script!r})
from modules import script_callbacks
print(json.dumps({{
    "new": sorted(set(sys.modules) - before),
    "reads": modules.shared.sd_model_reads,
    "callbacks": {{k: [c.name for c in v] for k, v in script_callbacks.callback_map.items()}},
}}))
"""


def test_scripts_file_loads_light_and_registers_the_callbacks() -> None:
    code = PROBE.format(paths=PATHS, root=str(ROOT), script=str(ROOT / "scripts" / "lora_trainer.py"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["reads"] == 0  # shared.sd_model untouched (reading it loads a checkpoint)
    heavy = [
        m for m in report["new"] if m.split(".")[0] not in sys.stdlib_module_names
        and not m.startswith("lib_lora") or m.startswith(("lib_lora.engine", "lib_lora.jobs.train", "lib_lora.formats",
                                                          "lib_lora.data", "lib_lora.tagger", "lib_lora.ui.tab",
                                                          "lib_lora.webui.model_bundle", "lib_lora.webui.host"))
    ]  # fmt: skip
    assert heavy == []
    callbacks = report["callbacks"]
    assert callbacks["callbacks_ui_tabs"] == ["lora_trainer_tab"]
    assert callbacks["callbacks_ui_settings"] == ["lora_trainer_settings"]
    assert callbacks["callbacks_app_started"] == ["lora_trainer_api"]
    assert callbacks["callbacks_after_component"] == ["lora_trainer_txt2img"]


def test_the_tab_registers_as_train_lora(webui) -> None:
    from lib_lora.webui import register

    load_model(webui, wm.tiny_sd1())
    register.register()
    tabs = webui.script_callbacks.ui_tabs_callback()
    assert len(tabs) == 1
    blocks, title, elem_id = tabs[0]
    assert isinstance(blocks, gr.Blocks) and (title, elem_id) == ("Train LoRA", "lora_trainer")


def test_settings_section_and_output_folders(webui, tmp_path: Path) -> None:
    from lib_lora.webui import register

    register.register()
    webui.script_callbacks.ui_settings_callback()
    opts = webui.shared.opts
    ours = {k: v for k, v in opts.data_labels.items() if k.startswith("lora_trainer_")}
    assert {v.section for v in ours.values()} == {("lora_trainer", "Train LoRA")}
    # under "Training" on the settings page beside the webui's own training section (was "Uncategorized")
    assert {v.category_id for v in ours.values()} == {"training"}
    assert set(ours) >= {
        "lora_trainer_output_folder", "lora_trainer_custom_output_dir", "lora_trainer_default_preset",
        "lora_trainer_tagger_model", "lora_trainer_tagger_threshold", "lora_trainer_tagger_character_threshold",
        "lora_trainer_sample_every_n_epochs",
    }  # fmt: skip
    host = register.get_host()
    opts.set("lora_trainer_tagger_threshold", 0.5)
    opts.set("lora_trainer_default_preset", "style")
    settings = host.settings()
    assert (settings.tagger_threshold, settings.default_preset) == (0.5, "style")

    lora = str(Path(webui.shared.cmd_opts.lora_dir).resolve())
    assert host.output_dir_choices() == {"Lora folder": lora} and host.default_output_dir() == lora
    import modules.extensions

    addnet = tmp_path / "extensions" / "sd-webui-additional-networks"
    modules.extensions.extensions.append(
        SimpleNamespace(name="sd-webui-additional-networks", path=str(addnet), enabled=True)
    )
    opts.set("lora_trainer_custom_output_dir", str(tmp_path / "mine"))
    load_model(webui, wm.tiny_sd1())
    choices = host.output_dir_choices()
    assert choices["additional-networks"] == str(addnet / "models" / "lora")
    assert choices["Custom folder"] == str(tmp_path / "mine")
    opts.set("lora_trainer_output_folder", "additional-networks")
    assert host.default_output_dir() == str(addnet / "models" / "lora")
    load_model(webui, wm.tiny_sdxl())  # additional-networks cannot load SDXL LoRAs
    assert "additional-networks" not in host.output_dir_choices()
    assert host.default_output_dir() == lora


@pytest.mark.parametrize("flags, registered", [({}, False), ({"api": True}, True), ({"nowebui": True}, True)])
def test_http_api_only_when_the_webui_api_is_on(webui, flags: dict, registered: bool) -> None:
    from lib_lora.webui import register

    register.register()
    for key, value in flags.items():
        setattr(webui.shared.cmd_opts, key, value)
    app = FastAPI()
    webui.script_callbacks.app_started_callback(None, app)
    paths = {route.path for route in app.routes}
    assert ("/lora-trainer/v1/train" in paths) is registered
    assert ("/lora-trainer/v1/jobs/{job_id}" in paths) is registered


def test_txt2img_components_are_captured_for_defaults_and_send_to_txt2img(webui) -> None:
    from lib_lora.webui import register

    register.register()
    load_model(webui, wm.tiny_sd1())
    with gr.Blocks():
        prompt = gr.Textbox("a cat", elem_id="txt2img_prompt")
        negative = gr.Textbox("", elem_id="txt2img_neg_prompt")
        steps = gr.Slider(1, 150, 7, elem_id="txt2img_steps")
        sampler = gr.Dropdown(["Euler", "DDIM"], value="DDIM", elem_id="txt2img_sampling")
        other = gr.Textbox("x", elem_id="img2img_prompt")
    for component in (prompt, negative, steps, sampler, other):
        webui.script_callbacks.after_component_callback(component, elem_id=component.elem_id)
    host = register.get_host()
    defaults = host.txt2img_defaults()
    assert (defaults["steps"], defaults["sampler"], defaults["width"]) == (7, "DDIM", 512)
    assert host.txt2img_outputs() == [prompt, negative]
    updates, text = host.send_to_txt2img("hutao <lora:hutao-000002:0.8>", "lowres")
    assert [u["value"] for u in updates] == ["hutao <lora:hutao-000002:0.8>", "lowres"] and "txt2img" in text
    assert host.send_to_txt2img_js() == "switch_to_txt2img"


def _sampler_controls(tabname: str = "txt2img") -> list:
    """What the webui's always-visible Sampler script's ``ui()`` makes (its default values)."""
    return [
        gr.Slider(1, 150, 20, elem_id=f"{tabname}_steps", label="Sampling steps"),
        gr.Dropdown(["DPM++ 2M", "Euler"], value="DPM++ 2M", elem_id=f"{tabname}_sampling", label="Sampling method"),
        gr.Dropdown(["Automatic", "Karras"], value="Automatic", elem_id=f"{tabname}_scheduler", label="Schedule type"),
    ]


def _build_page(webui, steps: int, sampler: str, scheduler: str) -> list:
    """txt2img as the webui builds it: the Sampler script's controls (marked by the script runner),
    then ui-config's saved values applied to them (ui_loadsave)."""
    with gr.Blocks():
        controls = _sampler_controls()
        for control in controls:
            webui.script_callbacks.after_component_callback(control, elem_id=control.elem_id)
            control.custom_script_source = "sampler.py"  # create_script_ui_inner, after ui() returned
        width = gr.Slider(64, 2048, 512, elem_id="txt2img_width", label="Width")
        webui.script_callbacks.after_component_callback(width, elem_id=width.elem_id)
    for control, saved in zip([*controls, width], (steps, sampler, scheduler, 64)):
        control.value = saved  # ui-config.json: "customscript/sampler.py/txt2img/Sampling steps/value": 2 ...
    return [*controls, width]


def test_txt2img_defaults_are_the_saved_ones_not_the_api_copies_of_the_sampler_script(webui, monkeypatch) -> None:
    """The webui's HTTP API calls every script's ui() again after the page is built (default script
    args): copies with the same elem_ids and the scripts' own defaults (20 steps, DPM++ 2M), in no
    page. The scoring after training (no values on screen sent) must use what the user saved."""
    from lib_lora.webui import register, runtime

    monkeypatch.setattr(runtime, "txt2img_components", {})
    monkeypatch.setattr(runtime, "txt2img_newer", {}, raising=False)
    register.register()
    load_model(webui, wm.tiny_sd1())
    page = _build_page(webui, 2, "Euler", "Karras")
    with gr.Blocks():  # modules/api/api.py init_default_script_args: script.ui() in a throwaway Blocks
        for copy in _sampler_controls():
            webui.script_callbacks.after_component_callback(copy, elem_id=copy.elem_id)
    host = register.get_host()
    defaults = host.txt2img_defaults()
    assert (defaults["steps"], defaults["sampler"], defaults["scheduler"], defaults["width"]) == (
        2,
        "Euler",
        "Karras",
        64,
    )
    components, keys = host.txt2img_live_inputs()  # the Test tab's click reads the page's components
    assert dict(zip(keys, components)) == {"steps": page[0], "sampler": page[1], "scheduler": page[2], "width": page[3]}
    assert host.txt2img_defaults({"steps": 3})["steps"] == 3  # values on screen still come first

    # Reload UI builds the page again (new saved values); the new page's components are used
    page = _build_page(webui, 4, "Euler", "Automatic")
    defaults = host.txt2img_defaults()
    assert (defaults["steps"], defaults["scheduler"]) == (4, "Automatic")
    components, keys = host.txt2img_live_inputs()
    assert dict(zip(keys, components)) == {"steps": page[0], "sampler": page[1], "scheduler": page[2], "width": page[3]}


def test_long_handler_holds_the_queue_and_keeps_output_counts(webui) -> None:
    from lib_lora.common.errors import UserError
    from lib_lora.webui import register

    host = register.get_host()
    seen = {}

    def handler(task_id: str, value: str) -> tuple:
        seen["task"], seen["current"] = task_id, webui.progress.current_task
        seen["locked"] = webui.call_queue.queue_lock.locked()
        status = host.jobs.run("train", "probe", lambda events, stop: "ran inline")  # no deadlock
        seen["job"] = status.result
        return gr.update(), f"<p>{value}</p>"

    wrapped = host.wrap_long_handler(handler, 2)
    first, html = wrapped("task(abc)", "hello")
    assert seen == {"task": "task(abc)", "current": "task(abc)", "locked": True, "job": "ran inline"}
    assert html.startswith("<p>hello</p>") and "Time taken" in html

    def failing(task_id: str) -> tuple:
        raise UserError("The dataset folder is empty.")

    outputs = host.wrap_long_handler(failing, 3)("task(x)")
    assert len(outputs) == 3 and "The dataset folder is empty." in outputs[-1]
    single = host.wrap_long_handler(lambda task_id: "<p>one</p>", 1)("task(y)")
    assert isinstance(single, str) and single.startswith("<p>one</p>")


def test_jobs_from_other_threads_wait_for_the_queue_lock(webui) -> None:
    from lib_lora.webui import register

    host = register.get_host()
    begun = webui.shared.state.begun
    with webui.call_queue.queue_lock:  # txt2img is generating
        status = host.jobs.submit("tag", "probe", lambda events, stop: "done")
        time.sleep(0.3)
        assert status.state == "queued"
        other = host.jobs.submit("import", "download", lambda events, stop: "downloaded")
        deadline = time.time() + 30
        while other.state != "done":  # a download does not wait for the GPU
            assert time.time() < deadline
            time.sleep(0.02)
    deadline = time.time() + 30
    while status.state != "done":
        assert time.time() < deadline
        time.sleep(0.02)
    assert webui.shared.state.begun == begun + 1 and webui.shared.state.ended >= 1
    assert threading.active_count() >= 1


def test_progress_js_and_javascript_globals(webui) -> None:
    from lib_lora.webui import register

    js = register.get_host().long_handler_js("train")
    assert js == "(...args) => loraTrainerStartTask('lora_trainer_train_result', null, null, args)"
    source = (ROOT / "javascript" / "lora_trainer.js").read_text(encoding="utf-8")
    names = re.findall(r"^(?:function|var|let|const)\s+(\w+)", source, flags=re.M)
    assert names and all(name.startswith("loraTrainer") for name in names)
    assert "requestProgress(id" in source and "res[0] = id" in source
