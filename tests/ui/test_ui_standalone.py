"""The standalone host and ``serve``: bad checkpoints refused in the terminal and shown in the tab,
Gradio's progress fed from jobs, the page built around the tab."""

from __future__ import annotations

import inspect
import socket
from pathlib import Path

import gradio as gr
import pytest
import torch
from safetensors.torch import save_file

from lib_lora.cli import main
from lib_lora.common.errors import UserError
from lib_lora.data.buckets import BucketManager, BucketSettings
from lib_lora.data.demo import DEMO_SUBSETS, write_demo_dataset
from lib_lora.events import StepInfo
from lib_lora.standalone.app import StandaloneHost, build_app
from support.ui_tab import form_args

pytestmark = pytest.mark.ui


def _header_only_sd1(path: Path) -> Path:
    """A file whose header looks like an SD1 checkpoint but holds no usable weights."""
    tensors = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1, 4, 1, 1),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(1, 1),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(1, 3, 1, 1),
    }
    save_file(tensors, str(path))
    return path


def _lora_file(path: Path) -> Path:
    save_file({"lora_unet_down.lora_down.weight": torch.zeros(1, 1)}, str(path))
    return path


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: d / "missing.safetensors", "does not exist"),
        (lambda d: (d / "model.ckpt").write_bytes(b"pickle") and d / "model.ckpt", "pickle checkpoint"),
        (lambda d: _lora_file(d / "lora.safetensors"), "is a LoRA, not a model checkpoint"),
        (
            lambda d: (d / "junk.safetensors").write_bytes(b"not a model at all") and d / "junk.safetensors",
            "safetensors",
        ),
    ],
)
def test_serve_refuses_a_bad_checkpoint_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make, expected: str
) -> None:
    path = make(tmp_path)
    code = main(["serve", "--checkpoint", str(path), "--lora-dir", str(tmp_path / "lora"), "--port", "7999"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and expected in err, err
    assert not (tmp_path / "lora").exists()


def test_serve_refuses_a_port_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--lora-dir", str(tmp_path / "lora")]) == 2
    err = capsys.readouterr().err
    assert f"Port {port} on 127.0.0.1 is already in use" in err and err.count("\n") == 1


def test_a_model_that_fails_to_load_is_shown_in_the_tab_and_refused(tmp_path: Path) -> None:
    checkpoint = _header_only_sd1(tmp_path / "broken.safetensors")
    host = StandaloneHost(checkpoint, tmp_path / "lora")  # the header passes the quick check
    assert host.model_info().problem is None and host.model_info().family == "sd1"
    app = build_app(host)
    tab = app.lora_trainer_tab
    data = write_demo_dataset(tmp_path / "data").root
    result = tab.train.start_training("task(1)", str(data), "x", "", "", *form_args(tab, max_train_epochs=1))
    assert "could not be loaded" in result and "lt-error" in result
    info, start = tab.train.refresh_model()
    assert "could not be loaded" in info and start["interactive"] is False
    assert not list((tmp_path / "lora").glob("*.safetensors"))


def test_the_model_line_says_what_the_checkpoints_v_pred_and_ztsnr_keys_say(tmp_path: Path) -> None:
    from lib_lora.ui.train_panel import model_html

    checkpoint = _header_only_sd1(tmp_path / "model.safetensors")
    assert "(SD1.x, epsilon)" in model_html(StandaloneHost(checkpoint, tmp_path / "lora").model_info())
    flagged = tmp_path / "vpred.safetensors"
    save_file({**dict(_tensors_of(checkpoint)), "v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, str(flagged))
    info = StandaloneHost(flagged, tmp_path / "lora").model_info()
    assert (info.v_prediction, info.zero_terminal_snr) == (True, True)
    assert "(SD1.x, v-prediction, zero terminal SNR)" in model_html(info)


def _tensors_of(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path)).items()


def test_a_checkpoint_that_disappears_is_reported(tmp_path: Path) -> None:
    checkpoint = _header_only_sd1(tmp_path / "model.safetensors")
    host = StandaloneHost(checkpoint, tmp_path / "lora")
    checkpoint.unlink()
    info = host.model_info()
    assert not info.loaded and "does not exist" in info.problem
    with pytest.raises(UserError, match="does not exist"):
        host.bundle()


def test_long_handlers_feed_gradio_progress(tmp_path: Path) -> None:
    host = StandaloneHost(None, tmp_path / "lora")
    seen = []

    def handler(task_id: str, value: int) -> str:
        host.job_events().step(StepInfo(1, 3, 10, 0.5, 0.4, {}, 0.1, 2.0, 3.5))
        host.job_events().progress("tagging", 2, 4, "")
        return f"{task_id}:{value}"

    wrapped = host.wrap_long_handler(handler, 1)
    first = next(iter(inspect.signature(wrapped).parameters.values()))
    assert isinstance(first.default, gr.Progress)  # gradio fills it in
    assert wrapped(lambda value, desc=None: seen.append((value, desc)), "task(1)", 5) == "task(1):5"
    assert seen[0][0] == (3, 10) and "loss 0.4000" in seen[0][1]
    assert seen[1] == ((2, 4), "tagging")
    host.job_events().progress("tagging", 3, 4)  # outside a handler: nowhere to go, no error
    assert len(seen) == 2


def test_app_page_wraps_the_tab_and_names_the_demo_model(tmp_path: Path) -> None:
    host = StandaloneHost(None, tmp_path / "lora")
    app = build_app(host)
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"tab_lora_trainer", "lora_trainer_tabs", "lora_trainer_start"} <= ids
    header = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "lora_trainer_header")
    assert "demo" in header.value
    info = host.model_info()
    assert info.demo and info.loaded and info.name == "tiny-sd15"
    # a short choice (a label with the path was cut off); the help line under it shows the whole path
    assert list(host.output_dir_choices()) == ["LoRA folder"]
    output = app.lora_trainer_tab.train.output_choice
    assert output.info == f"Where the LoRA files go: {host.lora_dir}"
    # the demo starts the form small (quick on a CPU)
    assert app.lora_trainer_tab.train.form.components["resolution"].value == "320"


def test_the_demo_models_estimate_says_its_file_size_is_a_full_size_figure(tmp_path: Path) -> None:
    host = StandaloneHost(None, tmp_path / "lora")
    app = build_app(host)
    tab = app.lora_trainer_tab
    write_demo_dataset(tmp_path / "data")
    text = tab.train.check(str(tmp_path / "data"), "mylora", "LoRA folder", "", *form_args(tab))
    size = next(line for line in text.split("</div>") if "File size" in line)
    assert "for a full-size model of this family; the demo model&#x27;s files are much smaller." in size, size


def test_the_demo_preset_note_keeps_the_labels_capitals(tmp_path: Path) -> None:
    info = build_app(StandaloneHost(None, tmp_path / "lora")).lora_trainer_tab.train.preset_info("character")
    assert "resolution 320" in info and "batch size 4" in info  # ordinary words lower-cased
    assert "save every N epochs 1" in info and "CLIP skip empty" in info, info  # not "save every n", "clip skip"


def test_send_to_txt2img_in_the_app_points_at_the_prompt_box_where_it_is(tmp_path: Path) -> None:
    host = StandaloneHost(None, tmp_path / "lora")
    app = build_app(host)
    panel = app.lora_trainer_tab.test
    prompt, message, *_ = panel.send_to_txt2img("mylora-000002 (epoch 2, step 6)", "redfox\nsolo", "", 0.8)
    assert prompt == "redfox, <lora:mylora-000002:0.8>"
    assert "copy the text of &#x27;Prompt for txt2img&#x27; below" in message, message
    order = [getattr(b, "elem_id", None) for b in app.blocks.values()]
    assert order.index("lora_trainer_test_result") < order.index("lora_trainer_send_prompt")  # it is below


@pytest.mark.slow
def test_samples_with_an_empty_prompt_box_use_the_activation_tag_and_top_tags(tmp_path: Path) -> None:
    """As in the webui: samples asked for, no prompt given -> a prompt from the dataset, not no samples."""
    from lib_lora.config import build_config
    from lib_lora.events import RecordingEvents, StopToken

    data = write_demo_dataset(tmp_path / "data", captions="simple").root
    host = StandaloneHost(None, tmp_path / "lora")
    cfg = build_config({
        "train_data_dir": str(data), "output_dir": host.lora_dir, "output_name": "sampled", "resolution": "64",
        "train_batch_size": 8, "max_train_epochs": 1, "network_dim": 2, "network_train_unet_only": True,
        "sample_every_n_epochs": 1, "sample_prompts": "", "cache_latents": True,
    })  # fmt: skip
    events = RecordingEvents()
    host.train(cfg, events, StopToken())
    assert len(events.samples) == 1, events.messages
    prompt = events.samples[0].prompt
    # the demo's class tokens (its activation text), then its most frequent tags
    assert prompt.startswith("bluebird, greenleaf, redfox, ") and "simple background" in prompt, prompt
    assert Path(events.samples[0].path).is_file()


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_the_demo_forms_buckets_keep_the_demo_images_shape(tmp_path: Path, family: str) -> None:
    # the demo form's bucket settings, as the app starts them, on the demo dataset's images (real bucket code)
    values = build_app(StandaloneHost(None, tmp_path / "lora")).lora_trainer_tab.train.form.components
    resolution = int(values["resolution"].value)
    settings = BucketSettings(
        resolution=(resolution, resolution), enable_bucket=bool(values["enable_bucket"].value),
        min_bucket_reso=int(values["min_bucket_reso"].value), max_bucket_reso=int(values["max_bucket_reso"].value),
        bucket_reso_steps=int(values["bucket_reso_steps"].value),
    )  # fmt: skip
    assert settings.enable_bucket
    settings.validate(family)  # sd-scripts' step rule for both demo models' families
    manager = BucketManager(settings)
    sizes = [size for subset in DEMO_SUBSETS for size in subset.sizes]
    choices = [manager.select(size) for size in sizes]
    errors = [abs(choice.ar_error) for choice in choices]
    assert sum(errors) / len(errors) < 0.1, errors  # the log's "mean ar error"
    for size, choice in zip(sizes, choices):
        kept = choice.bucket[0] * choice.bucket[1] / (choice.resized[0] * choice.resized[1])
        assert kept >= 0.8, f"{size} -> bucket {choice.bucket}: only {kept:.0%} of the image is trained"
