"""The training job end to end on the built-in tiny-sd15: files, metadata, log, stop, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lib_lora.common.errors import UserError
from lib_lora.config import build_config
from lib_lora.events import RecordingEvents, StopToken
from lib_lora.formats import safetensors_io
from lib_lora.formats.metadata import SS_KEYS, sshs_model_hash_of_file
from lib_lora.jobs.train import train
from support.train_data import StopAtStep, small_dataset, small_run_config


def _cfg(tmp_path: Path, **values):
    return small_run_config(tmp_path, **values)


def _model_outputs(bundle):
    unet, encoders, _ = bundle.lora_hosts()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        text = bundle.encode_text(["alpha, tag1"])
        return bundle.denoise(x, torch.tensor([500]), text, None).clone(), text.context.clone()


def test_two_epochs_write_kohya_files_json_and_log(tmp_path: Path, bundle) -> None:
    small_dataset(tmp_path / "data")
    before = _model_outputs(bundle)
    events = RecordingEvents()
    result = train(_cfg(tmp_path), bundle, events)
    out = tmp_path / "out"
    assert result.status == "done"
    assert sorted(p.name for p in out.iterdir()) == [
        "t-000001.json",
        "t-000001.safetensors",
        "t-log.jsonl",
        "t.json",
        "t.safetensors",
    ]
    # 5 images, repeats 2+2+2+1+1 = 8 samples in 4 buckets of batch 2 -> steps per epoch as the plan says
    steps = result.steps
    log = [json.loads(line) for line in (out / "t-log.jsonl").read_text().splitlines()]
    assert len(log) == steps and [row["step"] for row in log] == list(range(1, steps + 1))
    assert all(set(row) >= {"epoch", "step", "loss", "lr", "seconds"} for row in log)
    tensors, meta = safetensors_io.load(out / "t.safetensors")
    assert set(SS_KEYS) - {
        "ss_network_args",
        "ss_sd_model_hash",
        "ss_new_sd_model_hash",
        "ss_vae_name",
        "ss_vae_hash",
        "ss_new_vae_hash",
    } <= set(meta)
    assert meta["ss_epoch"] == "2" and meta["ss_steps"] == str(steps) and meta["ss_base_model_version"] == "sd_v1"
    assert json.loads(meta["ss_dataset_dirs"]) == {
        "2_alpha": {"n_repeats": 2, "img_count": 3},
        "1_beta": {"n_repeats": 1, "img_count": 2},
    }
    assert json.loads(meta["ss_tag_frequency"])["2_alpha"]["alpha"] == 3
    assert meta["ss_num_train_images"] == "8" and meta["ss_seed"] == "7" and meta["ss_network_dim"] == "4"
    assert meta["ss_optimizer"].startswith("torch.optim.adamw.AdamW")
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora" and meta["modelspec.title"] == "t"
    assert meta["sshs_model_hash"] == sshs_model_hash_of_file(out / "t.safetensors")
    assert json.loads(safetensors_io.load(out / "t-000001.safetensors")[1]["ss_epoch"]) == 1
    user = json.loads((out / "t.json").read_text())
    assert user["sd version"] == "SD1" and user["activation text"] == "beta, alpha" and user["preferred weight"] == 1.0
    assert [f.kind for f in result.files] == ["epoch", "final"]
    assert any("bucket 0:" in text for text in events.texts("info"))
    after = _model_outputs(bundle)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])  # the model is restored
    assert any(t.abs().sum() > 0 for name, t in tensors.items() if "lora_up" in name)


def _final_tensors(path: Path) -> dict[str, torch.Tensor]:
    return safetensors_io.load(path)[0]


def test_stop_saves_a_usable_lora_and_resume_equals_an_uninterrupted_run(tmp_path: Path, bundle) -> None:
    small_dataset(tmp_path / "data")
    straight = train(
        _cfg(
            tmp_path,
            output_dir=str(tmp_path / "a"),
            save_precision="float",
            max_train_epochs=3,
            save_every_n_epochs=None,
        ),
        bundle,
    )
    assert straight.status == "done"

    token = StopToken()
    cfg = _cfg(
        tmp_path, output_dir=str(tmp_path / "b"), save_precision="float", max_train_epochs=3, save_every_n_epochs=None
    )
    stopped = train(cfg, bundle, StopAtStep(token, 5), token)
    assert stopped.status == "stopped" and stopped.steps == 5
    stop_file = tmp_path / "b" / "t-step00000005.safetensors"
    assert stop_file.is_file() and (tmp_path / "b" / "t-state" / "state.json").is_file()
    assert safetensors_io.load(stop_file)[1]["ss_steps"] == "5"

    resumed = train(cfg, bundle, RecordingEvents(), resume=tmp_path / "b" / "t-state")
    assert resumed.status == "done" and resumed.steps == straight.steps
    a, b = _final_tensors(tmp_path / "a" / "t.safetensors"), _final_tensors(tmp_path / "b" / "t.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) <= 1e-6
    assert not (tmp_path / "b" / "t-state").exists()  # a finished run leaves no state behind


def test_a_stop_at_an_epoch_end_writes_no_duplicate_and_labels_the_file_with_the_epoch_it_holds(
    tmp_path: Path, bundle
) -> None:
    """Stop pressed during an epoch's last step, that epoch's file just saved: it is the stop file (a
    t-stepN file would repeat it byte for byte); the state resumes at the start of epoch 2. When that
    epoch had no file of its own, the stop file holds epoch 1 (ss_epoch 1), not the epoch 2 that
    never started."""
    small_dataset(tmp_path / "data")

    class StopAt(RecordingEvents):
        def __init__(self, token: StopToken, kind: str = "epoch", step: int = 0) -> None:
            super().__init__()
            self.token, self.kind, self.at = token, kind, step

        def saved(self, info) -> None:
            super().saved(info)
            if info.kind == self.kind:
                self.token.request("test stop")

        def step(self, info) -> None:
            super().step(info)
            if info.step == self.at:
                self.token.request("test stop")

    token = StopToken()
    stopped = train(_cfg(tmp_path, max_train_epochs=3), bundle, StopAt(token), token)
    assert stopped.status == "stopped"
    epoch_file = tmp_path / "out" / "t-000001.safetensors"
    assert safetensors_io.load(epoch_file)[1]["ss_steps"] == str(stopped.steps)  # stopped right at its end
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == ["t-000001.safetensors"]
    assert [(f.kind, f.epoch) for f in stopped.files] == [("epoch", 1)]
    state = json.loads((tmp_path / "out" / "t-state" / "state.json").read_text())
    assert state["position"]["epoch"] == 1 and state["position"]["batch"] == 0

    # every 2nd epoch saved: the stop at epoch 1's end is the only file of it
    token = StopToken()
    cfg = _cfg(tmp_path, max_train_epochs=3, save_every_n_epochs=2, output_dir=str(tmp_path / "out2"))
    again = train(cfg, bundle, StopAt(token, kind="", step=stopped.steps), token)
    stop_file = tmp_path / "out2" / f"t-step{again.steps:08d}.safetensors"
    assert again.steps == stopped.steps and safetensors_io.load(stop_file)[1]["ss_epoch"] == "1"
    assert [(f.kind, f.epoch) for f in again.files] == [("stopped", 1)]


def test_absurd_repeats_are_refused_before_any_work_naming_the_folder(tmp_path: Path, bundle) -> None:
    """A folder named 1000000000_x (the Dataset tab's Create folder took "1e9") made an epoch of a
    billion steps: the run hung building it. It is one sentence now, and nothing is written."""
    from support.train_data import make_dataset

    make_dataset(tmp_path / "data", {"1000000000_x": [(64, 64)], "2_y": [(64, 64)]})
    with pytest.raises(UserError, match=r"folder 1000000000_x repeats each image 1,000,000,000 times"):
        train(_cfg(tmp_path, max_train_epochs=None, max_train_steps=10), bundle)
    assert not (tmp_path / "out").exists()


def test_resume_refuses_changed_settings(tmp_path: Path, bundle) -> None:
    small_dataset(tmp_path / "data")
    token = StopToken()

    class StopFirst(RecordingEvents):
        def step(self, info) -> None:
            token.request("stop after the first step")

    cfg = _cfg(tmp_path)
    train(cfg, bundle, StopFirst(), token)
    state = tmp_path / "out" / "t-state"
    assert (state / "state.json").is_file()
    with pytest.raises(UserError, match=r"network_dim \(4 -> 8\)"):
        train(_cfg(tmp_path, network_dim=8), bundle, RecordingEvents(), resume=state)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_epoch(tmp_path: Path, bundle, monkeypatch) -> None:
    from lib_lora.engine.loop import TrainingDiverged

    small_dataset(tmp_path / "data")
    cfg = _cfg(tmp_path, max_train_epochs=3)
    calls = {"n": 0}
    original = bundle.denoise

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        out = original(*args, **kwargs)
        return out * float("nan") if calls["n"] > 6 else out

    monkeypatch.setattr(bundle, "denoise", sometimes_nan)
    with pytest.raises(TrainingDiverged, match=r"Training stopped at step \d+: the loss became NaN"):
        train(cfg, bundle, RecordingEvents())
    monkeypatch.undo()
    assert (tmp_path / "out" / "t-000001.safetensors").is_file()
    assert not (tmp_path / "out" / "t.safetensors").exists()


def test_save_last_n_epochs_keeps_only_the_newest(tmp_path: Path, bundle) -> None:
    small_dataset(tmp_path / "data")
    train(_cfg(tmp_path, max_train_epochs=4, save_last_n_epochs=2), bundle)
    names = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert names == ["t-000002.safetensors", "t-000003.safetensors", "t.safetensors"]


def test_start_from_existing_weights_and_wrong_family(tmp_path: Path, bundle) -> None:
    small_dataset(tmp_path / "data")
    train(_cfg(tmp_path, max_train_epochs=1, output_dir=str(tmp_path / "first")), bundle)
    events = RecordingEvents()
    train(_cfg(tmp_path, max_train_epochs=1, network_weights=str(tmp_path / "first" / "t.safetensors")), bundle, events)
    assert any("starting from" in t for t in events.texts("info"))
    from lib_lora.standalone.models import load_model

    xl = load_model("tiny-sdxl", device="cpu")
    with pytest.raises(UserError, match="is a LoRA for SD1.x, but the model is SDXL"):
        train(
            build_config(
                {
                    **_cfg(tmp_path).as_dict(),
                    "network_weights": str(tmp_path / "first" / "t.safetensors"),
                    "clip_skip": None,
                },
                family="sdxl",
            ),
            xl,
        )


def test_conv_alpha_defaults_to_one_and_network_args_are_recorded_as_given(tmp_path: Path, bundle) -> None:
    small_dataset(tmp_path / "data")
    result = train(_cfg(tmp_path, max_train_epochs=1, network_args=["conv_dim=4"]), bundle, RecordingEvents())
    assert result.status == "done"
    tensors, meta = safetensors_io.load(tmp_path / "out" / "t.safetensors")
    conv = {k: float(v) for k, v in tensors.items() if k.endswith(".alpha") and tensors[k[:-6] + ".lora_down.weight"].dim() == 4 and tensors[k[:-6] + ".lora_down.weight"].shape[-1] == 3}  # fmt: skip
    assert conv and set(conv.values()) == {1.0}  # sd-scripts: conv_alpha 1 when only conv_dim is given
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "dropout": None}  # sd-scripts adds dropout


def test_a_text_encoder_lora_blown_up_by_the_learning_rate_is_blamed_on_it_not_on_the_checkpoint(
    tmp_path: Path, bundle
) -> None:
    # a text-encoder learning rate of 1e9: after one step the LoRA's weights are still finite, but the
    # text encoder's output through them is not; the model's own text encoder is fine
    from lib_lora.engine.loop import TrainingDiverged

    small_dataset(tmp_path / "data")
    cfg = _cfg(tmp_path, max_train_epochs=1, unet_lr=1e-6, text_encoder_lr=1e9)
    with pytest.raises(TrainingDiverged) as caught:
        train(cfg, bundle, RecordingEvents())
    message = str(caught.value)
    assert "a learning rate that is too high" in message, message
    assert "checkpoint" not in message
    assert message.endswith("Nothing had been saved yet.")  # not "the last saved epoch is intact"
    assert not list((tmp_path / "out").glob("*.safetensors"))


def test_nan_text_conditioning_is_named_as_the_cause_not_the_learning_rate(tmp_path: Path, bundle, monkeypatch) -> None:
    # e.g. a checkpoint whose CLIP final LayerNorm bias is 0: the webui's "Original" emphasis divides by
    # z.mean() == 0.0 for some captions and returns NaN conditioning while the LoRA is perfectly finite
    from lib_lora.engine.bundle import TextCond
    from lib_lora.engine.loop import TrainingDiverged

    small_dataset(tmp_path / "data")
    cfg = _cfg(tmp_path, max_train_epochs=3)
    calls = {"n": 0}
    original = bundle.encode_text

    def sometimes_nan(captions):
        calls["n"] += 1
        text = original(captions)
        if calls["n"] > 6:
            return TextCond(text.context * float("nan"), text.pooled)
        return text

    monkeypatch.setattr(bundle, "encode_text", sometimes_nan)
    with pytest.raises(TrainingDiverged) as caught:
        train(cfg, bundle, RecordingEvents())
    monkeypatch.undo()
    message = str(caught.value)
    assert "text encoder's output for the caption" in message and "not from the learning rate" in message
    assert "tag" in message  # the caption is named
    assert message.endswith("The last saved epoch is intact.")
    assert (tmp_path / "out" / "t-000001.safetensors").is_file()


def test_a_resumed_run_reports_its_earlier_files_with_their_loss_and_a_stop_before_a_new_step_writes_nothing(
    tmp_path: Path, bundle
) -> None:
    """Resume used to tell the front end nothing of the run's earlier session (its files showed no loss,
    the chart began at the resume), and Stop pressed before the first new step wrote t-stepN again,
    the same weights as the file it resumed from. Now the resumed run reports its earlier files with
    the loss each was saved with, its logged losses, and the file it continues from; a stop before any
    new step (in the loop, or while caching) writes no file, keeps the state and names that file."""
    small_dataset(tmp_path / "data")
    out = tmp_path / "out"

    class StopWhen(RecordingEvents):
        def __init__(
            self, token: StopToken, after_epoch_file: bool = False, at_text: str = "", on_resume: bool = False
        ):
            super().__init__()
            self.token, self.after_epoch_file, self.at_text, self.on_resume = (
                token,
                after_epoch_file,
                at_text,
                on_resume,
            )
            self.at_step = -1

        def saved(self, info) -> None:
            super().saved(info)
            if self.after_epoch_file and info.kind == "epoch":
                self.at_step = info.step + 1  # one step into epoch 2

        def step(self, info) -> None:
            super().step(info)
            if info.step == self.at_step:
                self.token.request("test stop")

        def message(self, level: str, text: str) -> None:
            super().message(level, text)
            if self.at_text and text.startswith(self.at_text):
                self.token.request("test stop")

        def resumed(self, history) -> None:
            super().resumed(history)
            if self.on_resume:
                self.token.request("test stop")

    cfg = _cfg(tmp_path, max_train_epochs=3)
    token = StopToken()
    first_events = StopWhen(token, after_epoch_file=True)
    first = train(cfg, bundle, first_events, token)
    assert first.status == "stopped" and first.steps == first_events.at_step
    assert [(f.path.name, f.kind) for f in first.files] == [
        ("t-000001.safetensors", "epoch"),
        (f"t-step{first.steps:08d}.safetensors", "stopped"),
    ]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    state_json = (out / "t-state" / "state.json").read_bytes()
    stop_name = f"t-step{first.steps:08d}.safetensors"

    token = StopToken()
    events = StopWhen(token, at_text="latents:")  # after caching: the loop's first check sees the stop
    again = train(cfg, bundle, events, token, resume=out / "t-state")
    assert again.status == "stopped" and again.files == [] and events.saved_files == []
    (history,) = events.histories
    assert [(f.path.name, f.epoch, f.step, f.kind, f.loss) for f in history.files] == [
        (f.path.name, f.epoch, f.step, f.kind, f.loss) for f in first.files
    ]
    assert history.losses == [(s.step, s.loss) for s in first_events.steps]
    assert (history.step, history.epoch, history.resumed_from) == (first.steps, 1, out / stop_name)
    assert any(f"before any new step: nothing new was learned since {stop_name}" in t for t in events.texts())
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == before
    assert (out / "t-state" / "state.json").read_bytes() == state_json  # the state it resumed from, kept

    token = StopToken()
    events = StopWhen(token, on_resume=True)  # stopped while caching
    assert train(cfg, bundle, events, token, resume=out / "t-state").files == []
    assert any(f"training started: nothing new was learned since {stop_name}" in t for t in events.texts())

    token = StopToken()
    token.request("test stop")  # stopped while the dataset is read (it was "failed: StopRequested")
    events = RecordingEvents()
    early = train(cfg, bundle, events, token, resume=out / "t-state")
    assert (early.status, early.files, early.steps) == ("stopped", [], first.steps)
    assert events.histories[0].resumed_from == out / stop_name
    assert any(f"training started: nothing new was learned since {stop_name}" in t for t in events.texts())
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == before
