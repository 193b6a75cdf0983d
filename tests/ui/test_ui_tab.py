"""The tab built in-process against a fake host; handlers called directly as Gradio would."""

from __future__ import annotations

import html
import re
import threading
import time
from collections import Counter
from dataclasses import fields
from pathlib import Path

import gradio as gr
import pytest

from lib_lora.config import TrainConfig
from lib_lora.data.demo import write_demo_dataset
from lib_lora.ui.forms import NOT_IN_FORM
from lib_lora.ui.host import ModelInfo
from lib_lora.ui.tab import build_tab
from support.ui_host import FakeHost, write_fake_lora
from support.ui_tab import Select, form_args, subset_args, unchanged, value

pytestmark = pytest.mark.ui


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_demo_dataset(tmp_path / "data", captions="simple").root


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path)


@pytest.fixture
def tab(host: FakeHost):
    _, tab = build_tab(host)
    return tab


def _text(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", html or "")


def _ancestor_labels(component) -> list[str]:
    labels, node = [], component
    while node is not None:
        labels.append(getattr(node, "label", None) or "")
        node = getattr(node, "parent", None)
    return labels


# -- structure ------------------------------------------------------------------------------------


def test_form_has_every_setting_with_its_label_and_help_and_labels_are_unique(tab) -> None:
    form = tab.train.form.components
    for f in fields(TrainConfig):
        if f.name in NOT_IN_FORM:
            assert f.name not in form
            continue
        component = form[f.name]
        # every label in plain words; the help and the sd-scripts key in the line under it
        assert component.label == f.metadata["label"] and "_" not in component.label, f.name
        assert component.info.startswith(f.metadata["help"]) and component.info.endswith(f": {f.name}]"), f.name
        folded = "Advanced settings" in _ancestor_labels(component)
        assert folded == bool(f.metadata["advanced"]), f.name
    labels = [b.label for b in tab.blocks.blocks.values() if getattr(b, "label", None)]
    assert [label for label, n in Counter(labels).items() if n > 1] == []


def test_long_handlers_go_through_the_host_wrapper_with_html_last(host: FakeHost, tab) -> None:
    # tagging (1 output), training: Start, Overwrite it and start, Resume (1 each), the grid (2: image + status
    # HTML last), scoring (4: report, Keep list, Keep line, cost HTML last)
    assert host.wrapped == [1, 1, 1, 1, 2, 4]
    assert isinstance(tab.test.result, gr.HTML) and isinstance(tab.train.result, gr.HTML)


def test_webui_host_hides_clip_skip(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.kind = "webui"
    _, tab = build_tab(host)
    assert "clip_skip" not in tab.train.form.components


# -- Dataset ----------------------------------------------------------------------------------------


def test_dataset_refresh_lists_folders_and_buckets(tab, dataset: Path) -> None:
    names = tab.dataset.bucket_names()
    overview, buckets, status = tab.dataset.refresh(str(dataset), *subset_args(tab, names))
    assert all(name in overview for name in ("3_redfox", "2_bluebird", "2_greenleaf"))
    assert "12 images in 3 folders, 29 with repeats" in _text(overview)
    assert "steps per epoch" in buckets and "<table" in buckets


def test_bucket_table_follows_resolution_and_batch(tab, dataset: Path) -> None:
    names = tab.dataset.bucket_names()
    big = tab.dataset.refresh_buckets(str(dataset), *subset_args(tab, names, resolution="512", train_batch_size=1))
    small = tab.dataset.refresh_buckets(str(dataset), *subset_args(tab, names, resolution="256", train_batch_size=1))
    batch4 = tab.dataset.refresh_buckets(str(dataset), *subset_args(tab, names, resolution="512", train_batch_size=4))
    assert big != small
    steps = [int(re.search(r"(\d+) steps per epoch", _text(h)).group(1)) for h in (big, batch4)]
    assert steps[0] > steps[1]
    bad = tab.dataset.refresh_buckets(str(dataset), *subset_args(tab, names, resolution="abc"))
    assert "lt-error" in bad and "resolution" in bad


def test_demo_dataset_message_keeps_the_folder_name_as_typed(tab, tmp_path: Path) -> None:
    names = tab.dataset.bucket_names()
    folder = tmp_path / "My Data" / "Ärger Ñame"
    _, _, status = tab.dataset.make_demo(str(folder), *subset_args(tab, names))
    assert f"Wrote 12 images in 3 folders to {folder} (no captions)." in _text(status), status


def test_dataset_errors_are_shown_and_change_nothing(tab, tmp_path: Path) -> None:
    names = tab.dataset.bucket_names()
    overview, _, _ = tab.dataset.refresh("", *subset_args(tab, names))
    assert "No dataset folder chosen" in overview
    plain = tmp_path / "plain"
    (plain / "mychar").mkdir(parents=True)
    write_demo_dataset(tmp_path / "tmpdemo")
    (tmp_path / "tmpdemo" / "3_redfox" / "redfox_01.png").rename(plain / "mychar" / "a.png")
    overview, _, _ = tab.dataset.refresh(str(plain), *subset_args(tab, names))
    assert "10_mychar" in overview and "lt-error" in overview
    # a demo into a folder that is not empty: refused, nothing written
    before = sorted(p.name for p in plain.rglob("*"))
    out = tab.dataset.make_demo(str(plain), *subset_args(tab, names))
    assert len(out) == 3 and "not empty" in out[2] and unchanged(out[0]) and unchanged(out[1])
    assert sorted(p.name for p in plain.rglob("*")) == before


def test_create_training_folder(tab, tmp_path: Path) -> None:
    names = tab.dataset.bucket_names()
    root = tmp_path / "new"
    overview, _, status = tab.dataset.create(str(root), "mychar", 10, *subset_args(tab, names))
    assert (root / "10_mychar").is_dir() and "Created" in status and "10_mychar" in overview
    out = tab.dataset.create(str(root), "mychar", 5, *subset_args(tab, names))
    assert "already exists" in out[2] and not (root / "5_mychar").exists()
    out = tab.dataset.create(str(root), "other", 0, *subset_args(tab, names))
    assert "at least 1" in out[2] and not (root / "0_other").exists()


# -- Tag & edit ---------------------------------------------------------------------------------------


def _view(tab, state, **kw):
    values = {"include": "", "include_mode": "and", "exclude": "", "exclude_mode": "or", "search": "", "search_mode": "contains", "page": 1, "per_page": 48, "selected": None, "shown_caption": None, "activation": "", "keep_tokens": 1, "keep_tokens_separator": "", "conditioning_data_dir": None, "alpha_mask": False}  # fmt: skip
    values.update(kw)
    return [state, *values.values()]


def test_editor_batch_edit_undo_redo_save(tab, dataset: Path) -> None:
    ed = tab.editor
    out = ed.load(*_view(tab, None), str(dataset), ".txt")
    assert len(out) == 11
    session, gallery = out[0], out[1]
    assert len(gallery) == 12 and all(Path(p).is_file() for p, _ in gallery)
    assert "redfox" in out[3]  # the tag list
    # add a tag to the red images only (the filter decides what a batch edit touches)
    out = ed.add_tags(*_view(tab, session, include="redfox"), "mychar", "front")
    assert "5 captions changed of 5 shown" in _text(out[7])
    assert "5 captions will be written" in _text(out[5])
    out = ed.undo(*_view(tab, session))
    assert "No unsaved changes" in out[5]
    out = ed.redo(*_view(tab, session))
    assert session.dirty_count == 5
    out = ed.save(*_view(tab, session), "ask")
    assert "Saved 5 captions" in _text(out[7])
    text = (dataset / "3_redfox" / "redfox_01.txt").read_text(encoding="utf-8")
    assert text.startswith("mychar, redfox")
    assert (dataset / "2_bluebird" / "bluebird_01.txt").read_text(encoding="utf-8").startswith("bluebird")
    assert list((dataset / ".caption-history").glob("*.zip"))


def test_editor_reports_a_caption_changed_on_disk_and_keeps_it(tab, dataset: Path) -> None:
    ed = tab.editor
    session = ed.load(*_view(tab, None), str(dataset), ".txt")[0]
    ed.remove_tags(*_view(tab, session), "red theme")
    caption = dataset / "3_redfox" / "redfox_02.txt"
    caption.write_text("edited elsewhere", encoding="utf-8")
    out = ed.save(*_view(tab, session), "ask")
    assert "changed on disk" in _text(out[7])
    assert caption.read_text(encoding="utf-8") == "edited elsewhere"
    out = ed.save(*_view(tab, session), "overwrite")
    assert "red theme" not in caption.read_text(encoding="utf-8")


def test_editor_per_image_edit_and_errors_keep_output_count(tab, dataset: Path) -> None:
    ed = tab.editor
    out = ed.add_tags(*_view(tab, None), "x", "front")  # nothing loaded
    assert len(out) == 11 and all(unchanged(o) for o in out[:7]) and "Load the captions first" in out[7]
    session = ed.load(*_view(tab, None), str(dataset), ".txt")[0]
    out = ed.edit_caption(*_view(tab, session), "a, b")
    assert "Select an image" in out[7]
    rel, info, caption, shown = ed.select_image(session, 1, 48, Select(1))
    assert rel == session.items[session.visible()[1]].rel and caption and shown == caption
    ed.edit_caption(*_view(tab, session, selected=rel, shown_caption=shown), "solo, red theme")
    assert session.item(rel).caption == "solo, red theme"
    out = ed.replace(*_view(tab, session), "(", "x", True, False)  # a bad regex
    assert "lt-error" in out[7] and "Regular expression" in out[7]
    out = ed.sort_tags(*_view(tab, session), "alpha", "x")
    assert "lt-error" in out[7]


def test_editor_suggestions_and_paging(tab, dataset: Path) -> None:
    ed = tab.editor
    session = ed.load(*_view(tab, None), str(dataset), ".txt")[0]
    out = ed.show(*_view(tab, session, include="redfox", per_page=12))
    # in every shown image: suggested; the folder's class token (redfox) is not
    assert "red theme (5)" in _text(out[4]) and "redfox (" not in _text(out[4])
    remove, status = ed.suggestions_to_remove(*_view(tab, session, include="redfox"))
    assert value(remove) == "red theme, simple background"
    out = ed.show(*_view(tab, session, page=2, per_page=12))
    assert "Page 1 of 1" in _text(out[2])  # clamped
    assert ed.turn_page(3, -1) == 2 and ed.turn_page(1, -1) == 1


def test_tagging_with_a_local_tiny_tagger(tab, tmp_path: Path) -> None:
    from support.tagger_tiny import write_tiny_tagger

    data = write_demo_dataset(tmp_path / "untagged").root
    model = write_tiny_tagger(tmp_path / "tiny-tagger", size=64)
    args = [
        "task(1)",
        str(data),
        "wd-v1-4-swinv2-tagger-v2",
        str(model),
        0.35,
        0.85,
        False,
        False,
        "skip",
        "mychar",
        "",
        4,
    ]
    result = tab.editor.start_tagging(*args)
    assert "12 captions written" in _text(result)
    caption = (data / "3_redfox" / "redfox_01.txt").read_text(encoding="utf-8")
    assert caption.startswith("mychar, ")
    assert "done" in tab.editor.poll_tagging()
    # a local folder that does not exist: refused before anything runs
    bad = list(args)
    bad[3] = str(tmp_path / "missing")
    assert "does not exist" in tab.editor.start_tagging(*bad)
    assert "Tagging runs on the" in _text(tab.editor.provider_html())


def _offline_untagged(tmp_path: Path, monkeypatch) -> tuple[Path, list]:
    """An untagged demo dataset, an empty offline Hugging Face cache, and Tag's inputs for a WD model."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    data = write_demo_dataset(tmp_path / "untagged").root
    return data, ["task(1)", str(data), "wd-v1-4-vit-tagger-v2", "", 0.35, 0.85, False, False, "skip", "", "", 4]


def test_offline_tagger_error_is_one_sentence_shown_once(tab, tmp_path: Path, monkeypatch) -> None:
    data, args = _offline_untagged(tmp_path, monkeypatch)
    shown = tab.editor.start_tagging(*args) + tab.editor.poll_tagging()  # the result line + the progress panel
    errors = [e for e in re.findall(r'lt-error">(.*?)</div>', shown) if "tagger model" in e]
    assert len(errors) == 1 and shown.count("not in the Hugging Face cache") == 1, errors
    text = html.unescape(errors[0])
    assert text.startswith(
        "Error: The tagger model wd-v1-4-vit-tagger-v2 (SmilingWolf/wd-v1-4-vit-tagger-v2) is not in"
    )
    assert text.count(". ") == 0 and text.endswith("(demo-tagger needs no download).")
    # the demo tagger needs nothing from the network
    args[2] = "demo-tagger"
    assert "12 captions written" in _text(tab.editor.start_tagging(*args))
    assert "red theme" in (data / "3_redfox" / "redfox_01.txt").read_text(encoding="utf-8")


def test_a_failed_tagging_run_shows_one_red_line_the_real_reason(tab, tmp_path: Path, monkeypatch) -> None:
    """The progress panel said 'Error: Tagging <folder>: failed' in red above the line giving the reason."""
    data, args = _offline_untagged(tmp_path, monkeypatch)
    result = tab.editor.start_tagging(*args)
    status = tab.editor.poll_tagging()  # what the progress panel shows after the Tag click's chain
    errors = re.findall(r'<div class="lt-msg lt-error">.*?</div>', result + status, re.S)
    assert len(errors) == 1, (result, status)
    assert "is not in the Hugging Face cache" in html.unescape(errors[0])
    assert "failed" not in _text(status)


def test_tagging_writes_the_caption_extension_the_train_tab_names(tab, tmp_path: Path) -> None:
    """With 'Caption file extension' .caption on the Train tab, tagging wrote .txt files that neither the
    editor (Load captions) nor training read."""
    data = write_demo_dataset(tmp_path / "untagged").root
    assert tab.caption_extension_input() in tab.editor.tag_start_inputs
    args = ["task(1)", str(data), "demo-tagger", "", 0.35, 0.85, False, False, "skip", "", "", 4, ".caption"]
    assert "12 captions written" in _text(tab.editor.start_tagging(*args))
    assert len(list(data.rglob("*.caption"))) == 12 and not list(data.rglob("*.txt"))
    args[-1] = ".png"
    assert "The caption file extension .png is an image type" in html.unescape(tab.editor.start_tagging(*args))


# -- Train ------------------------------------------------------------------------------------------


def _run(tab, dataset: Path | str, **changes):
    train = tab.train
    return train.start_training("task(2)", str(dataset), "mylora", "Lora folder", "", *form_args(tab, **changes))


def test_a_failed_training_shows_one_red_line_the_real_reason(host: FakeHost, tab, dataset: Path, monkeypatch) -> None:
    """The live view under Start said 'Error: Training mylora: failed' above the status line's reason."""
    from lib_lora.common.errors import UserError

    def fail(cfg, events, stop, **kwargs):
        events.info("latents: 12 encoded, 0 reused from disk")
        raise UserError("The model file is damaged.")

    monkeypatch.setattr(host, "train", fail)
    result = _run(tab, dataset)
    live = tab.train.poll(0)[0]  # what the live view shows once the run has ended
    errors = re.findall(r'<div class="lt-msg lt-error">.*?</div>', result + live, re.S)
    assert len(errors) == 1 and "The model file is damaged." in errors[0], (result, live)
    assert "failed" not in _text(live) and "latents: 12 encoded" in live  # what it did before is still there


def test_start_refuses_bad_input_and_changes_nothing(host: FakeHost, tab, dataset: Path) -> None:
    assert "Dataset folder is empty" in _run(tab, "")  # the tab names settings by their labels
    assert "Network dim (rank) = 0" in _run(tab, dataset, network_dim=0)
    assert "Learning rate = &#x27;fast&#x27; is not valid" in _run(tab, dataset, learning_rate="fast")
    assert "does not exist" in _run(tab, dataset / "missing")
    empty = dataset.parent / "empty"
    (empty / "10_nothing").mkdir(parents=True)
    assert "No images in the training folders" in _run(tab, empty)
    assert host.trained == [] and not host.out.exists()


def test_refused_model_disables_start_and_refuses(tmp_path: Path, dataset: Path) -> None:
    problem = "SD2 models are not supported; load an SD1.x or SDXL checkpoint."
    host = FakeHost(tmp_path, ModelInfo(True, "v2-1.safetensors", "sd2", True, None, problem=problem))
    _, tab = build_tab(host)
    assert tab.train.start.interactive is False
    info, start = tab.train.refresh_model()
    assert problem in info and start["interactive"] is False
    assert problem in _run(tab, dataset)
    assert host.trained == []


def test_training_run_live_view_and_files(host: FakeHost, tab, dataset: Path) -> None:
    result = _run(tab, dataset, max_train_epochs=2, network_dim=8)
    assert "Training finished" in result
    cfg = host.trained[0]
    assert cfg.network_dim == 8 and cfg.train_data_dir == str(dataset) and cfg.output_dir == str(host.out)
    assert host.refreshed == 1
    live, chart, epochs, gallery, count = tab.train.poll(0)
    assert "done" in live and chart.count("<polyline") == 2
    assert "mylora-000001.safetensors" in epochs and "mylora-000002.safetensors" in epochs
    assert len(value(gallery)) == 2 and count == 2
    assert unchanged(tab.train.poll(2)[3])  # the gallery is only resent when samples change


def _held_after_its_first_step(host: FakeHost) -> None:
    """Wait until the fake training (started with ``host.hold`` set) is held after its first step."""
    deadline = time.time() + 60
    while not (host.jobs.current("train") and host.jobs.current("train").step >= 1):
        assert time.time() < deadline, "the training did not start"
        time.sleep(0.02)


def test_stop_saves(host: FakeHost, tab, dataset: Path) -> None:
    host.hold = threading.Event()
    results = []
    worker = threading.Thread(target=lambda: results.append(_run(tab, dataset, max_train_epochs=50)))
    worker.start()
    _held_after_its_first_step(host)
    assert "Stopping" in tab.train.stop_training()
    host.hold.set()
    worker.join(10)
    assert "Stopped at step" in results[0]
    assert list(host.out.glob("mylora-step*.safetensors"))
    assert "No training is running" in tab.train.stop_training()


def test_a_second_start_with_the_same_name_offers_resume_a_new_name_or_overwrite(
    host: FakeHost, tab, dataset: Path
) -> None:
    assert "Training finished" in _run(tab, dataset, max_train_epochs=1)
    refused = html.unescape(_run(tab, dataset, max_train_epochs=1))
    assert f"A run named mylora already exists in {host.out} (1 LoRA file); nothing was started." in refused
    assert '"Use the name mylora-2"' in refused and 'press "Overwrite it and start"' in refused
    assert len(host.trained) == 1  # nothing ran
    resume_list, new_name, overwrite = tab.train.offer_choices("mylora", "Lora folder", "")
    assert new_name["visible"] is True and new_name["value"] == "Use the name mylora-2" and overwrite["visible"] is True
    assert tab.train.use_new_name("mylora", "Lora folder", "")[0] == "mylora-2"
    args = form_args(tab, max_train_epochs=1)
    result = tab.train.start_overwriting("task(3)", str(dataset), "mylora", "Lora folder", "", *args)
    assert "Training finished" in result
    assert host.train_choices == [(None, False), (None, True)]  # overwrite only when pressed


def test_resume_lists_stopped_runs_and_continues_one_with_its_own_settings(host: FakeHost, tab, dataset: Path) -> None:
    import json

    cfg = tab.train._config(str(dataset), "stopped", "Lora folder", "", form_args(tab, network_dim=12))
    state = host.out / "stopped-state"
    state.mkdir(parents=True)
    (state / "network.weights").write_bytes(b"12345")
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.as_dict().items()}
    (state / "state.json").write_text(
        json.dumps({"version": 2, "written": time.time_ns(), "position": {"epoch": 1, "batch": 0, "step": 7},
                    "seed": 1, "session": {}, "config": config, "files": {"network.weights": 5}})
    )  # fmt: skip
    (host.out / "partial-state").mkdir()  # no state.json: not resumable, not listed
    choices = tab.train.resume_choices("Lora folder", "")
    # stopped at the end of epoch 1 (batch 0 of epoch index 1): the file it left holds epoch 1
    assert len(choices) == 1 and choices[0].startswith("stopped (stopped at step 7, after epoch 1"), choices
    assert "Choose a stopped run" in tab.train.resume_training("task(4)", None, "Lora folder", "")
    result = tab.train.resume_training("task(4)", choices[0], "Lora folder", "")
    assert "Training finished" in result
    assert host.train_choices[-1] == (str(state), False)
    resumed = host.trained[-1]
    assert resumed.network_dim == 12 and resumed.output_name == "stopped" and resumed.output_dir == str(host.out)


def test_presets_and_estimate(tab, dataset: Path) -> None:
    out = tab.train.apply_preset("style")
    n = len(tab.train.form.components)
    assert len(out) == n + 2
    updates = dict(zip(tab.train.form.names, out[:n]))
    assert value(updates["network_dim"]) == 128
    assert "Preset style applied" in out[-1]
    text = _text(tab.train.check(str(dataset), "mylora", "Lora folder", "", *form_args(tab)))
    assert "steps per epoch" in text and "1,000-2,000 steps" in text and "Estimated VRAM need" in text
    assert "Settings are valid" in text


def test_check_settings_refuses_an_output_folder_start_would_refuse(tab, dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "a file").write_text("mine")
    where = ("mylora", "Lora folder", str(tmp_path / "a file"))
    text = html.unescape(_text(tab.train.check(str(dataset), *where, *form_args(tab))))
    assert f"Cannot write into {tmp_path / 'a file'}: {tmp_path / 'a file'} is a file, not a folder." in text, text
    assert "Settings are valid" not in text
    refused = html.unescape(_text(tab.train.start_training("", str(dataset), *where, *form_args(tab))))
    assert "is a file, not a folder" in refused  # the same words as Start
    assert (tmp_path / "a file").read_text() == "mine"


def test_live_check_lists_every_problem_in_the_labels_words(tab, dataset: Path) -> None:
    args = form_args(tab, max_train_epochs=-2, resolution="100000", train_batch_size=2.5)
    out = tab.train.check(str(dataset), "", "Lora folder", "", *args)
    errors = [html.unescape(_text(e)).strip() for e in re.findall(r'<div class="lt-msg lt-error">.*?</div>', out)]
    assert errors == [
        "Error: Batch size = 2.5 is not valid: it must be a whole number.",
        "Error: Epochs = -2 is not valid: it must be at least 1.",
        "Error: Resolution = '100000' is not valid: each side must be a multiple of 8 from 64 to 4096 pixels.",
        "Error: LoRA name is empty: type a name for the LoRA files.",
    ]
    # no step count or VRAM figure from settings that cannot train
    assert "steps per epoch" not in out and "VRAM" not in out and "Settings are valid" not in out
    # Start refuses with the same words
    refused = _text(tab.train.start_training("", str(dataset), "", "Lora folder", "", *args))
    assert "Epochs = -2 is not valid" in refused and "LoRA name is empty" in refused


def test_check_settings_and_start_refuse_an_image_type_as_caption_extension(tab, dataset: Path) -> None:
    images = {p: p.read_bytes() for p in dataset.rglob("*.png")}
    args = form_args(tab, caption_extension=".png")
    text = html.unescape(_text(tab.train.check(str(dataset), "mylora", "Lora folder", "", *args)))
    assert "Caption file extension = '.png' is not valid: it is an image type" in text, text
    assert "Settings are valid" not in text
    refused = html.unescape(_text(tab.train.start_training("", str(dataset), "mylora", "Lora folder", "", *args)))
    assert "Caption file extension = '.png' is not valid" in refused
    assert images and {p: p.read_bytes() for p in dataset.rglob("*.png")} == images


# -- Test -------------------------------------------------------------------------------------------


def test_epoch_grid_and_send_to_txt2img(host: FakeHost, tab, dataset: Path) -> None:
    _run(tab, dataset, max_train_epochs=2)
    write_fake_lora(host.out / "mylora-000009.safetensors", 9, 27, session="old-run")
    (host.out / "mylora-000009.safetensors").touch()
    time.sleep(0.01)
    for path in sorted(host.out.glob("mylora-0000*.safetensors"))[:2]:
        path.touch()  # the newest run is the one with the newest file
    epochs, send_epoch, prompts, status = tab.test.list_epochs("mylora", "Lora folder", "", str(dataset), "")
    labels = value(epochs)
    assert labels == ["mylora-000001 (epoch 1, step 3)", "mylora-000002 (epoch 2, step 6)"]
    assert value(prompts).splitlines()[0].startswith("redfox, ")
    image, result = tab.test.render_grid(
        "task(3)", "mylora", "Lora folder", "", labels, "redfox\nsolo", "", 0.8, 7, "", "", "", ""
    )
    assert image.size[0] > 0 and "2 files x 2 prompts" in _text(result)
    request = host.grids[0]
    assert [p.name for p in request.lora_files] == ["mylora-000001.safetensors", "mylora-000002.safetensors"]
    assert request.weight == 0.8 and request.seed == 7 and request.width is None
    prompt, message, *_ = tab.test.send_to_txt2img(labels[1], "redfox\nsolo", "", 0.8)
    assert prompt == "redfox, <lora:mylora-000002:0.8>"
    image, result = tab.test.render_grid("task(4)", "mylora", "Lora folder", "", [], "x", "", 1, 1, "", "", "", "")
    assert unchanged(image) and "Pick at least one epoch" in result


def test_one_seed_one_file_words_are_singular(host: FakeHost, tab) -> None:
    host.out.mkdir(parents=True, exist_ok=True)
    write_fake_lora(host.out / "mylora-000001.safetensors", 1, 3)
    cost = html.unescape(_text(tab.test.scoring_cost("mylora", "Lora folder", "", "7", "", "")))
    assert "Scoring renders 1 image per epoch file (1 seed x 1 prompt): 1 image for 1 file" in cost, cost
    prompt, message, *_ = tab.test.send_to_txt2img("mylora-000001 (epoch 1, step 3)", "redfox", "", 1)
    assert "Copy the text of 'Prompt for txt2img' below" in html.unescape(_text(message)), message


def test_follow_shows_a_running_training_until_it_ends(host: FakeHost, tab, dataset: Path) -> None:
    host.hold = threading.Event()
    worker = threading.Thread(target=lambda: _run(tab, dataset, max_train_epochs=1))
    worker.start()
    _held_after_its_first_step(host)
    follow = tab.train.follow(0)
    views = [next(follow)]  # the page reloaded while the run is under way
    host.hold.set()
    views += list(follow)
    worker.join(10)
    assert "running" in views[0][0] and "done" in views[-1][0]
    assert "mylora-000001.safetensors" in views[-1][2]
    # the status line under Start says how it ended (a reloaded page's Stop line does not stay)
    assert "Training finished: 3 steps" in views[-1][5] and all(unchanged(v[5]) for v in views[:-1])


def test_a_reloaded_page_gets_the_running_trainings_settings_back(host: FakeHost, tab, dataset: Path) -> None:
    assert all(unchanged(u) for u in tab.train.restore_running())  # nothing running: the page's own values
    bucket_args = subset_args(tab, tab.dataset.bucket_names())
    assert all(unchanged(u) for u in tab.refresh_restored_dataset("", *bucket_args))  # no "no folder" error
    host.hold = threading.Event()
    args = form_args(tab, max_train_epochs=1, network_dim=3, resolution="64")
    worker = threading.Thread(
        target=lambda: tab.train.start_training("task(5)", str(dataset), "reloaded", "Lora folder", "", *args)
    )
    worker.start()
    _held_after_its_first_step(host)
    restored = [value(u) for u in tab.train.restore_running()]
    host.hold.set()
    worker.join(20)
    assert restored[:4] == [str(dataset), "reloaded", "Lora folder", ""]
    form = dict(zip(tab.train.form.names, restored[4:]))
    assert (form["max_train_epochs"], form["network_dim"], form["resolution"]) == (1, 3, "64")
    assert all(unchanged(u) for u in tab.train.restore_running())  # it ended


def test_every_handler_answers_empty_input_with_all_its_outputs(
    tab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Called with nothing filled in, every event handler returns exactly one value per output
    (Gradio's "didn't receive enough output values" never happens) and raises nothing."""
    import inspect

    monkeypatch.chdir(tmp_path)
    checked = 0
    for fn, dependency in zip(tab.blocks.fns, tab.blocks.dependencies):
        if fn.fn is None or inspect.isgeneratorfunction(fn.fn) or fn.fn.__module__.startswith("gradio"):
            continue  # JS-only, gradio's own (cancels=), and generators (every=, follow) over the polls checked here
        params = inspect.signature(fn.fn).parameters
        args = [None] * len(dependency["inputs"]) + ([None] if "evt" in params else [])
        result = fn.fn(*args)
        n_outputs = len(dependency["outputs"])
        if n_outputs != 1:
            assert isinstance(result, (list, tuple)) and len(result) == n_outputs, (fn.name, result)
        checked += 1
    assert checked > 40
    assert not list(tmp_path.iterdir())  # nothing was written anywhere


def test_resume_label_says_where_the_run_stopped() -> None:
    from lib_lora.ui.train_panel import resume_label

    def label(epoch: int, batch: int, step: int) -> str:
        return resume_label({"name": "r", "position": {"epoch": epoch, "batch": batch, "step": step}})

    assert label(1, 0, 7) == "r (stopped at step 7, after epoch 1)"
    assert label(1, 3, 10) == "r (stopped at step 10, in epoch 2)"
    assert label(0, 2, 2) == "r (stopped at step 2, in epoch 1)"


def test_score_epochs_refusal_shows_in_the_result_area(tab) -> None:
    """Seeds "abc": the reason was shown only in the cost line above the button; the result area (where
    the report comes) stayed empty. It is there now, one sentence, and nothing else changes."""
    report, keep_choice, keep_result, cost = tab.test.score_epochs(
        "task(1)", "mylora", "Lora folder", "", "abc", "", "", "", 1.0
    )
    assert "Scoring seeds &#x27;abc&#x27;: give whole numbers separated by commas." in _text(report)
    assert isinstance(cost, str) and unchanged(keep_choice) and unchanged(keep_result)


def test_saved_files_after_a_resume_list_the_runs_earlier_files_too(host: FakeHost, tab) -> None:
    """After Resume the Saved files list showed only the files this session wrote; the run's earlier
    epoch files (same session id) vanished until a page reload. Another run's files stay out."""
    from lib_lora.events import SavedFile

    host.out.mkdir(parents=True, exist_ok=True)
    write_fake_lora(host.out / "mylora-000001.safetensors", 1, 3, session="run")  # before the stop
    write_fake_lora(host.out / "mylora-000002.safetensors", 2, 6, session="run")
    write_fake_lora(host.out / "other-000001.safetensors", 1, 3, session="run")

    def resumed(events, stop) -> None:
        path = host.out / "mylora-000003.safetensors"
        write_fake_lora(path, 3, 9, session="run")
        events.saved(SavedFile(path, 3, 9, 0.125, "epoch"))

    host.jobs.run("train", "Training mylora", resumed)
    table = tab.train.poll(0)[2]
    names = re.findall(r"[\w-]+\.safetensors", table)
    assert names == ["mylora-000001.safetensors", "mylora-000002.safetensors", "mylora-000003.safetensors"]
    assert "0.1250" in table


def test_after_a_resume_the_saved_files_show_every_loss_and_the_chart_covers_the_whole_run(host: FakeHost, tab) -> None:
    """After Resume the earlier session's files had a blank loss, and the chart (its curve and its
    epoch markers) began at the resume. The resumed run reports its earlier files, losses and the file
    it continues from: the table shows each file's loss, the chart draws the whole run with every
    epoch's marker. A stop before any new step says nothing new was learned since that file."""
    from lib_lora.events import RunHistory, SavedFile, StepInfo

    host.out.mkdir(parents=True, exist_ok=True)
    earlier = [host.out / "mylora-000001.safetensors", host.out / "mylora-step00000004.safetensors"]
    write_fake_lora(earlier[0], 1, 3, session="run")
    write_fake_lora(earlier[1], 2, 4, session="run")
    history = RunHistory(
        epoch=1, step=4, total_steps=9, resumed_from=earlier[1],
        files=[SavedFile(earlier[0], 1, 3, 0.25, "epoch"), SavedFile(earlier[1], 2, 4, 0.375, "stopped")],
        losses=[(1, 0.5), (2, 0.3), (3, 0.2), (4, 0.375)],
    )  # fmt: skip

    def resumed(events, stop) -> None:
        events.resumed(history)
        path = host.out / "mylora-000002.safetensors"
        write_fake_lora(path, 2, 6, session="run")
        for step in (5, 6):
            events.step(StepInfo(2, step, 9, 0.1, 0.15, {}, 1.0, 1.0, 3.0))
        events.saved(SavedFile(path, 2, 6, 0.125, "epoch"))

    host.jobs.run("train", "Training mylora", resumed)
    _, chart, table, *_ = tab.train.poll(0)
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in rows]
    assert [(c[0], c[3]) for c in cells] == [
        ("mylora-000001.safetensors", "0.2500"),
        ("mylora-step00000004.safetensors", "0.3750"),
        ("mylora-000002.safetensors", "0.1250"),
    ]
    assert re.findall(r"<title>epoch (\d+) saved at step (\d+)</title>", chart) == [("1", "3"), ("2", "6")]
    raw = re.search(r'<polyline points="([^"]+)" class="lt-loss-raw"', chart).group(1)
    assert len(raw.split()) == 6  # steps 1-4 from the log, 5-6 from this session

    def stopped_at_once(events, stop) -> None:
        events.resumed(history)
        stop.request()

    status = host.jobs.run("train", "Training mylora", stopped_at_once)
    assert status.state == "stopped"
    outcome = _text(tab.train.outcome_html(status))
    assert "Stopped at step 4 before any new step: nothing new was learned since mylora-step00000004" in outcome


def test_a_stop_before_a_job_has_anything_to_keep_is_a_stop_not_a_failure(host: FakeHost) -> None:
    """Resume then Stop at once, while the host read the dataset: the job ended "failed" with
    "Error: StopRequested: stopped by the user". A stop is a stop, whenever it comes."""
    from lib_lora.events import StopRequested

    def stopped_while_reading(events, stop) -> None:
        stop.request()
        raise StopRequested(stop.reason)

    status = host.jobs.run("train", "Training mylora", stopped_while_reading)
    assert (status.state, status.error) == ("stopped", None)


def test_the_output_folder_shows_the_chosen_folders_whole_path(host: FakeHost, tab) -> None:
    """The dropdown cut a label holding the path ("LoRA folder (/tmp/nc-work/lora"): the labels are
    short and the help line under it names the chosen folder in full, following the choice."""
    assert tab.train.output_choice.info == f"Where the LoRA files go: {host.out}"
    update = tab.train.show_output_folder("Other folder")
    assert update["info"] == f"Where the LoRA files go: {host.root / 'other'}"
