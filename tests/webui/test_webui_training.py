"""One click trains on the loaded model in the stand-in webui: the Start button's own function
(wrapped by wrap_gradio_gpu_call), files + json + preview in the Lora folder, Stop / Interrupt /
out-of-memory / any error, the model bit-identical afterwards, bad input refused, the epoch grid."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from support import webui_models as wm
from support.train_data import StopAtStep
from support.webui_env import FAST, dataset, load_model, model_state, outputs, same_outputs, state_differences


def click_fn(blocks: Any, button: Any, outputs: list[Any]) -> Any:
    """The function gradio runs for ``button``'s click with these outputs (what the browser calls)."""
    ids = [o._id for o in outputs]
    for index, dependency in enumerate(blocks.dependencies):
        # the handler itself (a click with no inputs beside it only clears the last run's line)
        if button._id in dependency["targets"] and dependency["outputs"] == ids and dependency["inputs"]:
            return blocks.fns[index].fn
    raise AssertionError("no such click handler")


class Tab:
    """The real tab built against the webui host, driven through its own handlers."""

    def __init__(self, webui: Any) -> None:
        from lib_lora.ui.tab import build_tab
        from lib_lora.webui import register

        self.webui = webui
        self.host = register.get_host()
        self.blocks, self.ui = build_tab(self.host)
        self.start_fn = click_fn(self.blocks, self.ui.train.start, [self.ui.train.result])

    def start(self, folder: Path | str, name: str = "hutao", **settings: Any) -> str:
        from lib_lora.ui.forms import to_component_value

        values = {**FAST, **settings}
        form = self.ui.train.form.components
        args = [to_component_value(k, values[k]) if k in values else c.value for k, c in form.items()]
        live = [None] * len(self.ui.train._live_keys)  # txt2img's values on screen: none (the saved ones apply)
        return self.start_fn("task(test)", str(folder), name, "Lora folder", "", *args, *live)

    def start_in_thread(self, folder: Path, **settings: Any) -> tuple[threading.Thread, dict[str, Any]]:
        out: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: out.setdefault("html", self.start(folder, **settings)))
        thread.start()
        return thread, out

    def wait_for_step(self, step: int, thread: threading.Thread) -> None:
        deadline = time.time() + 300
        while time.time() < deadline and thread.is_alive():
            job = self.host.jobs.current("train")
            if job is not None and job.step >= step:
                return
            time.sleep(0.05)
        raise AssertionError("training did not reach the step")


def trained_files(lora_dir: Path) -> list[str]:
    return sorted(p.name for p in lora_dir.glob("*") if p.is_file() and not p.name.endswith(".jsonl"))


@pytest.fixture
def sd1(webui):
    model = load_model(webui, wm.tiny_sd1(checkpoint_dir=str(webui.root)))
    return model, outputs(model), model_state(model)


def assert_restored(webui: Any, model: Any, before: dict, state: dict) -> None:
    import ldm.modules.attention

    assert same_outputs(before, outputs(model)) == []
    assert state_differences(state, model_state(model)) == []
    assert ldm.modules.attention.CrossAttention.forward is not webui.sd_hijack.attention_CrossAttention_forward
    assert webui.shared.parallel_processing_allowed is True
    assert webui.shared.state.interrupted is False
    assert webui.processing.StableDiffusionProcessing.cached_c == [None, None]


def test_start_trains_two_epochs_into_the_lora_folder(webui, sd1) -> None:
    model, before, state = sd1
    tab = Tab(webui)
    folder = dataset(webui.root / "data", images=2, name="1_hutao")
    gc_calls = webui.devices.gc_calls
    (webui.root / "params.txt").write_text("the user's last prompt", encoding="utf-8")
    html = tab.start(folder)
    assert "Training finished" in html and "Time taken" in html
    files = trained_files(webui.lora_dir)
    assert files == [
        "hutao-000001.json", "hutao-000001.preview.png", "hutao-000001.safetensors",
        "hutao.json", "hutao.preview.png", "hutao.safetensors",
    ]  # fmt: skip
    info = json.loads((webui.lora_dir / "hutao.json").read_text(encoding="utf-8"))
    assert info["sd version"] == "SD1" and info["activation text"] == "hutao"
    # the built-in Lora sees the new files, and they apply with every key matched
    assert {"hutao", "hutao-000001"} <= set(webui.networks.available_networks)
    assert webui.shared.state.begun >= 1 and webui.devices.gc_calls > gc_calls
    assert "Epoch 2/2" in webui.shared.state.textinfo and "it/s" in webui.shared.state.textinfo
    assert_restored(webui, model, before, state)
    assert (webui.root / "params.txt").read_text(encoding="utf-8") == "the user's last prompt"
    p = webui.processing.StableDiffusionProcessingTxt2Img(
        prompt="hutao <lora:hutao-000001:1>", seed=1, steps=2, width=64, height=64
    )
    assert webui.processing.process_images(p).images
    assert [n.name for n in webui.networks.loaded_networks] == ["hutao-000001"]
    assert webui.networks.unmatched["hutao-000001"] == []


def test_stop_saves_and_restores_the_model(webui, sd1) -> None:
    model, before, state = sd1
    tab = Tab(webui)
    folder = dataset(webui.root / "data", images=2, name="2_hutao")
    thread, out = tab.start_in_thread(folder, max_train_epochs=20, sample_every_n_epochs=None)
    tab.wait_for_step(1, thread)
    assert "Stopping" in tab.ui.train.stop_training()  # the Stop button
    thread.join(120)
    assert "Stopped at step" in out["html"]
    assert any(
        name.startswith("hutao-step") and name.endswith(".safetensors") for name in trained_files(webui.lora_dir)
    )
    assert_restored(webui, model, before, state)


def test_interrupt_from_txt2img_stops_training(webui, sd1) -> None:
    model, before, state = sd1
    tab = Tab(webui)
    folder = dataset(webui.root / "data", images=2, name="2_hutao")
    thread, out = tab.start_in_thread(folder, max_train_epochs=20, sample_every_n_epochs=None)
    tab.wait_for_step(1, thread)
    webui.shared.state.interrupt()  # txt2img's Interrupt button, POST /sdapi/v1/interrupt
    thread.join(120)
    assert "Stopped at step" in out["html"]
    assert tab.host.jobs.current("train").state == "stopped"
    assert_restored(webui, model, before, state)


def _raise_on_call(module: torch.nn.Module, call: int, error: BaseException) -> Any:
    calls = {"n": 0}

    def hook(mod, args):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == call:
                raise error

    return module.register_forward_pre_hook(hook)


@pytest.mark.parametrize(
    "where, error, words",
    [
        (
            "unet",
            torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            "ran out of GPU memory",
        ),
        ("text", RuntimeError("something broke in a step"), "RuntimeError: something broke in a step"),
    ],
)
def test_failure_inside_a_step_restores_the_model(webui, sd1, where: str, error: BaseException, words: str) -> None:
    model, before, state = sd1
    tab = Tab(webui)
    folder = dataset(webui.root / "data", images=2, name="2_hutao")
    module = model.model.diffusion_model.middle_block if where == "unet" else model.cond_stage_model.wrapped.transformer
    handle = _raise_on_call(module, 2, error)
    try:
        html = tab.start(folder, sample_every_n_epochs=None)
    finally:
        handle.remove()
    assert words in html
    assert tab.host.jobs.current("train").state == "failed"
    assert_restored(webui, model, before, state)


@pytest.mark.parametrize(
    "case, words",
    [
        ("no dataset", "Dataset folder is empty"),
        ("no images", "no images"),
        ("out of range", "Network dim (rank) = 0 is not valid"),
        ("no model", "No Stable Diffusion checkpoint is loaded"),
        ("sd2", "SD2.x models are not supported"),
        ("lowvram", "--lowvram"),
    ],
)
def test_bad_input_gives_a_clear_message_and_changes_nothing(webui, case: str, words: str) -> None:
    model = load_model(webui, wm.tiny_sd2() if case == "sd2" else wm.tiny_sd1())
    if case == "no model":
        webui.sd_models.model_data.set_sd_model(None)
    if case == "lowvram":
        webui.shared.cmd_opts.lowvram = True
    before, state = outputs(model), model_state(model)
    folder = dataset(webui.root / "data", images=1, name="1_hutao")
    empty = webui.root / "empty" / "1_nothing"
    empty.mkdir(parents=True)
    tab = Tab(webui)
    settings = {"network_dim": 0} if case == "out of range" else {}
    target = {"no dataset": "", "no images": empty.parent}.get(case, folder)
    html = tab.start(target, **settings)
    assert "error" in html and words.lower() in html.lower()
    assert not webui.lora_dir.exists() or trained_files(webui.lora_dir) == []
    assert same_outputs(before, outputs(model)) == [] and state_differences(state, model_state(model)) == []


def test_sdxl_trains_both_text_encoders_and_the_unet(webui) -> None:
    from lib_lora.config import build_config
    from lib_lora.formats import safetensors_io
    from lib_lora.webui import register

    model = load_model(webui, wm.tiny_sdxl(checkpoint_dir=str(webui.root)))
    before, state = outputs(model), model_state(model)
    host = register.get_host()
    folder = dataset(webui.root / "data", images=2, name="1_hutao")
    values = {
        **FAST,
        "train_data_dir": str(folder),
        "output_name": "xl",
        "max_train_epochs": 1,
        "sample_every_n_epochs": None,
    }
    cfg = build_config(values, family="sdxl")
    status = host.jobs.run("train", "xl", lambda events, stop: host.train(cfg, events, stop))
    assert status.state == "done", status.error
    tensors, metadata = safetensors_io.load(webui.lora_dir / "xl.safetensors")
    assert metadata["ss_base_model_version"].startswith("sdxl")
    assert {name.split(".")[0].split("_")[1] for name in tensors} == {"te1", "te2", "unet"}
    # the UNet blocks whose sgm checkpoint flag was on still learnt (their ups moved off zero)
    assert any(
        t.abs().sum() > 0 for n, t in tensors.items() if n.startswith("lora_unet_") and n.endswith("lora_up.weight")
    )
    assert same_outputs(before, outputs(model)) == [] and state_differences(state, model_state(model)) == []


def test_a_v_pred_ztsnr_checkpoint_trains_and_is_recorded_as_v_prediction_with_zero_terminal_snr(webui) -> None:
    # NoobAI-XL v-pred style: the file carries v_pred / ztsnr keys, which webui 1.10.1 itself does not read
    from safetensors.torch import save_file

    from lib_lora.config import build_config
    from lib_lora.formats import safetensors_io
    from lib_lora.webui import register

    save_file({"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, str(webui.root / "tiny-sdxl.safetensors"))
    load_model(webui, wm.tiny_sdxl(checkpoint_dir=str(webui.root)))
    host = register.get_host()
    folder = dataset(webui.root / "data", images=1, name="1_hutao")
    values = {**FAST, "train_data_dir": str(folder), "output_name": "vp", "max_train_epochs": 1}
    cfg = build_config({**values, "sample_every_n_epochs": None}, family="sdxl")
    status = host.jobs.run("train", "vp", lambda events, stop: host.train(cfg, events, stop))
    assert status.state == "done", status.error
    _, metadata = safetensors_io.load(webui.lora_dir / "vp.safetensors")
    assert metadata["modelspec.prediction_type"] == "v" and metadata["ss_zero_terminal_snr"] == "True"
    # the user's explicit choice wins over the detection
    cfg = build_config({**values, "output_name": "eps", "v_parameterization": False, "zero_terminal_snr": False,
                        "sample_every_n_epochs": None}, family="sdxl")  # fmt: skip
    status = host.jobs.run("train", "eps", lambda events, stop: host.train(cfg, events, stop))
    assert status.state == "done", status.error
    _, metadata = safetensors_io.load(webui.lora_dir / "eps.safetensors")
    assert metadata["modelspec.prediction_type"] == "epsilon" and metadata["ss_zero_terminal_snr"] == "False"


def test_medvram_training_puts_the_hooks_back(webui) -> None:
    from lib_lora.config import build_config
    from lib_lora.webui import register

    webui.shared.cmd_opts.medvram = True
    model = wm.tiny_sd1(checkpoint_dir=str(webui.root))
    webui.lowvram.setup_for_low_vram(model, True)
    load_model(webui, model)
    hooks = sum(len(m._forward_pre_hooks) for m in model.modules())
    before, state = outputs(model), model_state(model)
    host = register.get_host()
    folder = dataset(webui.root / "data", images=1, name="1_hutao")
    cfg = build_config({**FAST, "train_data_dir": str(folder), "output_name": "mv", "max_train_epochs": 1})
    status = host.jobs.run("train", "mv", lambda events, stop: host.train(cfg, events, stop))
    assert status.state == "done", status.error
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == hooks
    assert {"encode", "decode"} <= set(model.first_stage_model.__dict__)
    assert same_outputs(before, outputs(model)) == [] and state_differences(state, model_state(model)) == []


def test_test_tab_renders_an_epoch_grid_with_the_builtin_lora(webui, sd1) -> None:
    model, before, state = sd1
    tab = Tab(webui)
    folder = dataset(webui.root / "data", images=1, name="1_hutao")
    assert "Training finished" in tab.start(folder, sample_every_n_epochs=None)
    test = tab.ui.test
    listing = test.list_epochs("hutao", "Lora folder", "", str(folder), "")
    labels = list(test.files)
    assert len(labels) == 2, listing
    render = click_fn(tab.blocks, test.render, [test.grid, test.result])
    grid, html = render(
        "task(grid)", "hutao", "Lora folder", "", labels, "hutao\nhutao, smile", "", 1.0, 3, 64, 64, 2, 5.0
    )
    assert "2 files x 2 prompts" in html, html
    assert grid.size[0] > 2 * 64 and grid.size[1] > 2 * 64
    saved = list((webui.root / "outputs" / "txt2img-grids").glob("hutao-epochs-*.png"))
    assert len(saved) == 1
    assert webui.networks.unmatched and all(v == [] for v in webui.networks.unmatched.values())
    assert same_outputs(before, outputs(model)) != []  # the last <lora:> stays merged, as after any txt2img


def test_with_fp8_weight_and_no_fp16_cache_the_test_tab_says_why_epochs_may_look_alike(webui, sd1) -> None:
    """The webui 1.10.1 merges a LoRA into FP8-stored weights, where a small delta rounds away (a
    trained file changed 0 of 4096 pixels in the real webui until "Cache FP16 weight for LoRA" was on)."""
    tab = Tab(webui)
    score_cost = tab.ui.test.scoring_cost

    def said() -> list[bool]:
        cost = score_cost("hutao", "Lora folder", "", "1, 2", "", "")
        notes = " ".join(tab.host.model_info().notes)
        return ["Cache FP16 weight for LoRA" in cost, "Cache FP16 weight for LoRA" in notes]

    assert said() == [False, False]  # FP8 off: nothing to say
    webui.devices.fp8 = True
    assert said() == [True, True]  # on the Test sub-tab's cost line and under the model's line
    webui.shared.opts.cache_fp16_weight = True
    assert said() == [False, False]  # the webui keeps an fp16 copy to merge into


def test_with_fp8_weight_the_note_shows_when_the_test_tab_opens_and_after_scoring(webui, sd1, monkeypatch) -> None:
    """In the real webui (FP8 weight on, no FP16 cache) opening the Test sub-tab listed the epochs with
    no word of FP8: the note came only with a grid or after Refresh/editing the scoring seeds, and a
    finished scoring run replaced it, so flat scores came without their reason."""
    from lib_lora.jobs import scoring
    from lib_lora.jobs.score_math import EpochScore, SeedScore, pick_best
    from support.ui_host import write_fake_lora

    webui.lora_dir.mkdir(parents=True, exist_ok=True)
    files = [webui.lora_dir / "hutao-000001.safetensors", webui.lora_dir / "hutao.safetensors"]
    for epoch, path in enumerate(files, 1):
        write_fake_lora(path, epoch, 3 * epoch)
    scores = [EpochScore(f.stem, e, [SeedScore(0.5, 0.5, 0.1)] * 3) for e, f in enumerate(files, 1)]
    report = scoring.ScoreReport(scores, pick_best(scores), ["red hair"], "hutao", 12, 3.0, files)
    monkeypatch.setattr(scoring, "load_tag_scorer", lambda model, events: None)
    monkeypatch.setattr(scoring, "score_epochs", lambda *args, **kwargs: report)
    test = Tab(webui).ui.test

    def said() -> list[bool]:
        listing = test.list_epochs("hutao", "Lora folder", "", "", "x")[-1]  # what the tab's select shows
        assert "2 files of the newest run" in listing, listing
        cost = test.score_epochs("task(1)", "hutao", "Lora folder", "", "1", "a", "b", "demo-tagger", 1.0)[-1]
        assert "12 images rendered and tagged" in cost, cost
        return ["Cache FP16 weight for LoRA" in listing, "Cache FP16 weight for LoRA" in cost]

    assert said() == [False, False]
    webui.devices.fp8 = True
    assert said() == [True, True]
    webui.shared.opts.cache_fp16_weight = True
    assert said() == [False, False]


def test_the_grid_uses_txt2img_settings_as_they_are_on_screen_now(webui, sd1, monkeypatch) -> None:
    import gradio as gr

    with gr.Blocks():  # txt2img, built before the tab (its ui-config values: 64 x 64, 9 steps)
        width = gr.Slider(64, 2048, 64, elem_id="txt2img_width")
        height = gr.Slider(64, 2048, 64, elem_id="txt2img_height")
        steps = gr.Slider(1, 150, 9, elem_id="txt2img_steps")
    from lib_lora.webui import register, runtime

    monkeypatch.setattr(runtime, "txt2img_components", dict(runtime.txt2img_components))  # undone after the test
    for component in (width, height, steps):
        register.on_after_component(component, elem_id=component.elem_id)
    tab = Tab(webui)
    folder = dataset(webui.root / "data", images=1, name="1_hutao")
    assert "Training finished" in tab.start(folder, sample_every_n_epochs=None)
    test = tab.ui.test
    test.list_epochs("hutao", "Lora folder", "", str(folder), "")
    labels = list(test.files)[:1]
    seen = {}
    real = tab.host.render_grid

    def spy(request, events, stop):
        result = real(request, events, stop)
        seen["sizes"] = {image.size for image in result.images}
        return result

    monkeypatch.setattr(tab.host, "render_grid", spy)
    render = click_fn(tab.blocks, test.render, [test.grid, test.result])
    # the user changed txt2img to 128 x 64, 2 steps after the page loaded; the grid's own fields are empty
    on_screen = {"width": 128, "height": 64, "steps": 2}
    assert sorted(test._live_keys) == sorted(on_screen)  # txt2img's components are inputs of the click
    live = [on_screen[key] for key in test._live_keys]
    _, html = render("task(grid)", "hutao", "Lora folder", "", labels, "hutao", "", 1.0, 3, "", "", "", "", *live)
    assert "1 file x 1 prompt" in html, html
    assert seen["sizes"] == {(128, 64)}


def test_the_grid_renders_under_lowvram_where_training_is_refused(webui, sd1, monkeypatch) -> None:
    tab = Tab(webui)
    folder = dataset(webui.root / "data", images=1, name="1_hutao")
    assert "Training finished" in tab.start(folder, sample_every_n_epochs=None)
    monkeypatch.setattr(webui.shared.cmd_opts, "lowvram", True, raising=False)
    assert "--lowvram" in tab.start(folder, name="again", sample_every_n_epochs=None)
    test = tab.ui.test
    test.list_epochs("hutao", "Lora folder", "", str(folder), "")
    render = click_fn(tab.blocks, test.render, [test.grid, test.result])
    _, html = render(
        "task(grid)", "hutao", "Lora folder", "", list(test.files)[:1], "hutao", "", 1.0, 3, 64, 64, 2, 5.0
    )
    assert "1 file x 1 prompt" in html, html


def test_a_stop_while_a_resumed_run_reads_its_dataset_names_the_file_it_resumed_from(webui, sd1) -> None:
    """The webui host let the StopRequested of reading the dataset end the job with a generic "Stopped
    before it started"; like the standalone app it now says nothing new was learned since the file the
    run resumed from, and reports the run's history (the tab's stopped line names that file)."""
    from lib_lora.config import build_config
    from lib_lora.events import RecordingEvents, StopToken
    from lib_lora.webui.host import WebuiHost

    folder = dataset(webui.root / "data", images=2, name="1_hutao")
    values = {**FAST, "train_data_dir": str(folder), "output_name": "hutao", "sample_every_n_epochs": None}
    cfg = build_config({**values, "max_train_epochs": 5})
    token = StopToken()
    first = WebuiHost().train(cfg, StopAtStep(token, 3), token)
    assert first.status == "stopped" and first.steps == 3
    stop_name = "hutao-step00000003.safetensors"
    before = {p.name: p.stat().st_mtime_ns for p in webui.lora_dir.iterdir() if p.is_file()}

    token = StopToken()
    token.request("test stop")  # Stop pressed while the resumed run reads its dataset
    events = RecordingEvents()
    again = WebuiHost().train(cfg, events, token, resume=str(webui.lora_dir / "hutao-state"))
    assert (again.status, again.files, again.steps) == ("stopped", [], 3)
    assert events.histories[0].resumed_from == webui.lora_dir / stop_name
    assert any(f"nothing new was learned since {stop_name}, which this run resumed from" in t for t in events.texts())
    assert {p.name: p.stat().st_mtime_ns for p in webui.lora_dir.iterdir() if p.is_file()} == before


def test_scoring_after_training_renders_through_txt2img_and_writes_the_pick(webui, sd1, monkeypatch) -> None:
    """score_epochs in the webui: once the model is restored, every epoch file is rendered by txt2img
    with its <lora:...> (no grid saved), read by the tagger, and the pick lands in the Start result and
    the final file's metadata. The tagger is a stand-in (every image alike: no confident pick)."""
    from lib_lora.formats.safetensors_io import read_header
    from lib_lora.jobs import scoring
    from lib_lora.webui import host as webui_host

    tab = Tab(webui)
    folder = dataset(webui.root / "data", images=2, name="1_hutao")
    monkeypatch.setattr(
        scoring,
        "AUTO_SETTINGS",
        scoring.ScoreSettings(seeds=(1,), flexibility_prompts=("beach",), drift_prompts=("sky",)),
    )
    monkeypatch.setitem(webui_host.TXT2IMG_FALLBACK, "width", 64)
    monkeypatch.setitem(webui_host.TXT2IMG_FALLBACK, "height", 64)
    monkeypatch.setitem(webui_host.TXT2IMG_FALLBACK, "steps", 2)
    asked, seen = [], []

    def load_tagger(model, events):
        asked.append(model)
        seen.append([n.name for n in webui.networks.loaded_networks])
        return lambda images: [{"scenery": 0.5, "hutao": 0.5} for _ in images]

    monkeypatch.setattr(scoring, "load_tag_scorer", load_tagger)
    html = tab.start(folder, sample_every_n_epochs=None, score_epochs=True)
    assert "Training finished" in html and "No confident pick" in html and "lt-score-table" in html, html
    assert asked == [tab.host.settings().tagger_model]
    assert seen == [[]]  # the model is restored before scoring begins: no LoRA of ours is applied
    assert {n.name for n in webui.networks.loaded_networks} <= {"hutao", "hutao-000001"}  # rendered with <lora:>
    assert webui.networks.loaded_networks and all(v == [] for v in webui.networks.unmatched.values())
    meta = read_header(webui.lora_dir / "hutao.safetensors").metadata
    assert meta["lora_trainer_recommendation"].startswith("No confident pick")
    assert "lora_trainer_recommended_epoch" not in meta  # only a confident pick names one
    assert not list((webui.root / "outputs").rglob("*.png"))  # no grid image saved


def test_scoring_after_training_renders_with_txt2img_settings_on_screen_at_start(webui, sd1, monkeypatch) -> None:
    """Start sends txt2img's settings as they are on screen (as the Test tab's clicks do): the scoring
    after training renders with them, not with the values txt2img was built with."""
    import gradio as gr

    from lib_lora.jobs import scoring
    from lib_lora.ui.forms import to_component_value
    from lib_lora.webui import register, runtime

    with gr.Blocks():  # txt2img, built before the tab (its ui-config values: 64 x 64, 9 steps)
        width = gr.Slider(64, 2048, 64, elem_id="txt2img_width")
        height = gr.Slider(64, 2048, 64, elem_id="txt2img_height")
        steps = gr.Slider(1, 150, 9, elem_id="txt2img_steps")
    monkeypatch.setattr(runtime, "txt2img_components", {})
    monkeypatch.setattr(runtime, "txt2img_newer", {})
    for component in (width, height, steps):
        register.on_after_component(component, elem_id=component.elem_id)
    monkeypatch.setattr(
        scoring,
        "AUTO_SETTINGS",
        scoring.ScoreSettings(seeds=(1,), flexibility_prompts=("beach",), drift_prompts=("sky",)),
    )
    monkeypatch.setattr(scoring, "load_tag_scorer", lambda model, events: lambda images: [{"a": 0.5} for _ in images])
    tab = Tab(webui)
    folder = dataset(webui.root / "data", images=1, name="1_hutao")
    seen = []
    real = tab.host.render_grid

    def spy(request, events, stop):
        result = real(request, events, stop)
        seen.append((dict(request.host_values), {image.size for image in result.images}))
        return result

    monkeypatch.setattr(tab.host, "render_grid", spy)
    # the user changed txt2img to 128 x 64, 2 steps after the page loaded
    on_screen = {"width": 128, "height": 64, "steps": 2}
    train = tab.ui.train
    start = [d for d in tab.blocks.dependencies if train.start._id in d["targets"] and train.task._id in d["inputs"]]
    assert {c._id for c in (width, height, steps)} <= set(start[0]["inputs"])  # txt2img's components are inputs
    form = train.form.components
    values = {**FAST, "sample_every_n_epochs": None, "score_epochs": True}
    args = [to_component_value(k, values[k]) if k in values else c.value for k, c in form.items()]
    live = [on_screen[key] for key in train._live_keys]
    html = tab.start_fn("task(test)", str(folder), "hutao", "Lora folder", "", *args, *live)
    assert "Training finished" in html and "lt-score-table" in html, html
    assert seen and all(values == on_screen and sizes == {(128, 64)} for values, sizes in seen), seen
