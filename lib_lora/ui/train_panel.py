"""The Train sub-tab: the host's model, preset and settings, steps and VRAM estimate, Start/Stop,
and the live view of a run (status, loss chart, saved epochs, samples)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import gradio as gr

from lib_lora.common.errors import UserError
from lib_lora.config import PRESETS, TrainConfig, build_config, native_resolution, preset_values
from lib_lora.jobs import dataset_info, editor, vram
from lib_lora.ui import html
from lib_lora.ui.common import guarded, host_events, job_html, long_js, resolve_output_dir
from lib_lora.ui.compat import hidden_progress, js_kwargs
from lib_lora.ui.forms import SettingsForm, build_settings_form

if TYPE_CHECKING:
    from lib_lora.ui.host import ModelInfo
    from lib_lora.ui.tab import TrainerTab

# settings the steps note and the VRAM estimate follow
ESTIMATE_FIELDS = (
    "resolution", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale",
    "train_batch_size", "max_train_epochs", "max_train_steps", "gradient_accumulation_steps", "network_dim", "conv_dim",
    "network_train_unet_only", "network_train_text_encoder_only", "gradient_checkpointing", "mixed_precision",
    "optimizer_type", "cache_latents", "caption_extension",
)  # fmt: skip
# user text a preset never overwrites
KEEP_ON_PRESET = frozenset(
    {"activation_text", "sample_prompts", "training_comment", "network_weights", "caption_prefix", "caption_suffix"}
)
FAMILY_NAMES = {"sd1": "SD1.x", "sdxl": "SDXL", "sd2": "SD2.x"}
EPOCH_HEADERS = ("file", "epoch", "step", "loss")


def model_html(info: ModelInfo) -> str:
    if not info.loaded:
        return html.error(info.problem or "No model is loaded: load an SD1.x or SDXL checkpoint first.")
    family = FAMILY_NAMES.get(info.family or "", info.family or "unknown family")
    details = [family, "v-prediction" if info.v_prediction else "epsilon"]
    if info.clip_skip is not None:
        details.append(f"CLIP skip {info.clip_skip}")
    parts = [html.message(f"Model: {info.name} ({', '.join(details)})", "ok" if not info.problem else "info")]
    if info.demo:
        parts.append(
            html.message(
                "This is a built-in tiny demo model with random weights: training works, but its images are noise. "
                "Start the app with --checkpoint FILE to train on a real SD1.x/SDXL checkpoint.",
                "warning",
            )
        )
    if info.problem:
        parts.append(html.error(info.problem))
    return "".join(parts)


class TrainPanel:
    def __init__(self, tab: TrainerTab) -> None:
        self.tab = tab
        self.host = tab.host
        self.form = SettingsForm()

    # ------------------------------------------------------------------ layout
    def build(self) -> None:
        settings = self.host.settings()
        info = self.host.model_info()
        self.family = info.family if info.family in ("sd1", "sdxl") else "sd1"
        self.native = native_resolution(self.family, demo=info.demo)
        with gr.Row():
            self.model_info = gr.HTML(model_html(info), elem_id="lora_trainer_model_info")
            self.model_refresh = gr.Button("Refresh model", elem_id="lora_trainer_model_refresh", scale=0)
        preset = settings.default_preset if settings.default_preset in PRESETS else "character"
        with gr.Row():
            self.preset = gr.Dropdown(
                list(PRESETS),
                value=preset,
                label="Preset",
                info=PRESETS[preset].get("_doc"),
                elem_id="lora_trainer_preset",
            )
            self.name = gr.Textbox(
                value="mylora", label="LoRA name", info="Files are saved as NAME-000005.safetensors (one per epoch).",
                elem_id="lora_trainer_name",
            )  # fmt: skip
            choices = list((self.host.output_dir_choices() or {}).keys())
            self.output_choice = gr.Dropdown(
                choices, value=choices[0] if choices else None, label="Output folder",
                info="Where the LoRA files go", elem_id="lora_trainer_output_choice",
            )  # fmt: skip
            self.output_custom = gr.Textbox(
                label="Custom output folder (optional)", placeholder="wins over the list when given",
                elem_id="lora_trainer_output_custom",
            )  # fmt: skip
        hidden = {"clip_skip"} if getattr(self.host, "kind", "") == "webui" else set()
        initial = preset_values(preset, self.family, self.native)
        if settings.sample_every_n_epochs:
            initial["sample_every_n_epochs"] = settings.sample_every_n_epochs
        initial.update(getattr(settings, "form_defaults", None) or {})
        self.form = build_settings_form(hidden, initial)
        try:
            first_estimate = self._estimate_html("", {**TrainConfig().as_dict(), **initial})
        except UserError as exc:
            first_estimate = html.error(str(exc))
        self.estimate = gr.HTML(first_estimate, elem_id="lora_trainer_estimate")
        with gr.Row():
            self.check_button = gr.Button("Check settings", elem_id="lora_trainer_check")
            self.start = gr.Button(
                "Start training", variant="primary", interactive=info.loaded and not info.problem,
                elem_id="lora_trainer_start",
            )  # fmt: skip
            self.stop = gr.Button("Stop (saves the LoRA so far)", variant="stop", elem_id="lora_trainer_stop")
        self.task = gr.Textbox(visible=False, elem_id="lora_trainer_train_task")
        self.result = gr.HTML(elem_id="lora_trainer_train_result")
        self.live = gr.HTML(job_html(self.host.jobs.current("train"), "No training yet."), elem_id="lora_trainer_live")
        self.chart = gr.HTML(html.loss_chart([]), elem_id="lora_trainer_chart")
        gr.Markdown("**Saved files**")
        self.epochs = gr.HTML(html.table(EPOCH_HEADERS, [], empty="No files saved yet."), elem_id="lora_trainer_epochs")
        self.sample_count = gr.State(0)
        self.samples = gr.Gallery(label="Sample images", columns=4, height=360, elem_id="lora_trainer_samples")

    # ------------------------------------------------------------------ events
    def estimate_inputs(self) -> list[Any]:
        return [self.form.components[n] for n in ESTIMATE_FIELDS if n in self.form.components]

    def estimate_names(self) -> list[str]:
        return [n for n in ESTIMATE_FIELDS if n in self.form.components]

    def run_inputs(self) -> list[Any]:
        return [self.tab.dataset.folder, self.name, self.output_choice, self.output_custom, *self.form.inputs()]

    def wire(self) -> None:
        folder = self.tab.dataset.folder
        self.model_refresh.click(self.refresh_model, None, [self.model_info, self.start])
        self.preset.change(self.apply_preset, [self.preset], [*self.form.inputs(), self.preset, self.estimate])
        estimate_inputs = [folder, *self.estimate_inputs()]
        for component in self.estimate_inputs():
            component.change(self.update_estimate, estimate_inputs, [self.estimate], **hidden_progress())
        folder.change(self.update_estimate, estimate_inputs, [self.estimate], **hidden_progress())
        self.check_button.click(self.check, self.run_inputs(), [self.estimate])

        live = [self.live, self.chart, self.epochs, self.samples, self.sample_count]
        poll = self.start.click(self.poll, [self.sample_count], live, every=1, **hidden_progress())
        run = self.start.click(
            self.host.wrap_long_handler(self.start_training, 1), [self.task, *self.run_inputs()], [self.result],
            **js_kwargs(long_js(self.host, "train")),
        )  # fmt: skip
        run.then(self.poll, [gr.State(-1)], live, cancels=[poll])
        self.stop.click(self.stop_training, None, [self.result])

    # ------------------------------------------------------------------ handlers
    @guarded(2, status=0)
    def refresh_model(self) -> list[Any]:
        info = self.host.model_info()
        if info.family in ("sd1", "sdxl"):
            self.family = info.family
            self.native = native_resolution(info.family, demo=info.demo)
        return [model_html(info), gr.update(interactive=bool(info.loaded and not info.problem))]

    def apply_preset(self, name: str) -> list[Any]:
        n = len(self.form.components)
        try:
            values = TrainConfig().as_dict()
            values.update(preset_values(name, self.family, self.native))
        except UserError as exc:
            return [gr.update() for _ in range(n + 1)] + [html.error(str(exc))]
        values = {k: v for k, v in values.items() if k not in KEEP_ON_PRESET or k in PRESETS.get(name, {})}
        doc = PRESETS[name].get("_doc", "")
        return [*self.form.updates(values), gr.update(info=doc), html.message(f"Preset {name} applied: {doc}", "ok")]

    def _config(self, folder: str, name: str, choice: str, custom: str, values: Sequence[Any]) -> TrainConfig:
        form_values = self.form.values(values)
        form_values["train_data_dir"] = (folder or "").strip()
        form_values["output_name"] = (name or "").strip()
        form_values["output_dir"] = resolve_output_dir(self.host, choice, custom)
        return build_config(form_values, family=self.family, native=self.native)

    def _estimate_html(self, folder: str, values: dict[str, Any]) -> str:
        from lib_lora.jobs.train import math_steps_note

        cfg = build_config(values, check=False)
        parts = []
        scan = dataset_info.scan_or_none(folder, cfg.caption_extension)
        if scan is not None:
            summary = dataset_info.bucket_summary(scan, cfg, self.family)
            parts.append(
                html.message(
                    f"{summary.steps_per_epoch} steps per epoch x {summary.epochs} epochs = "
                    + math_steps_note(summary.total_steps, cfg.train_batch_size),
                    "info",
                )
            )
        else:
            parts.append(html.message("Total steps: choose a dataset folder with images (Dataset tab)."))
        gpu = vram.gpu_memory()
        width, height = cfg.resolution_wh
        estimate = vram.estimate(
            self.family, width, height, cfg.train_batch_size, cfg.network_dim, cfg.conv_dim, cfg.train_unet,
            cfg.train_text_encoder, cfg.gradient_checkpointing,
            "no" if cfg.mixed_precision == "no" else "fp16", cfg.optimizer_type, cfg.cache_latents,
            available_gib=gpu[1] if gpu else None, device_name=gpu[0] if gpu else None,
        )  # fmt: skip
        text = estimate.text()
        if getattr(self.host.model_info(), "demo", False):
            text += " (Figures for a full-size model of this family; the demo model needs very little.)"
        parts.append(html.message(text, "warning" if estimate.fits is False else "info"))
        return "".join(parts)

    @guarded(1)
    def update_estimate(self, folder: str, *values: Any) -> str:
        return self._estimate_html(folder, self.form.values_subset(self.estimate_names(), values))

    @guarded(1)
    def check(self, folder: str, name: str, choice: str, custom: str, *values: Any) -> str:
        cfg = self._config(folder, name, choice, custom, values)
        info = self.host.model_info()
        problems = [] if info.loaded and not info.problem else [html.error(info.problem or "No model is loaded.")]
        overview = dataset_info.overview(folder, cfg.caption_extension)
        if overview.error:
            problems.append(html.error(overview.error))
        ok = html.message(f"Settings are valid; files go to {cfg.output_dir}.", "ok") if not problems else ""
        return ok + "".join(problems) + self._estimate_html(folder, cfg.as_dict())

    @guarded(1)
    def start_training(self, task_id: str, folder: str, name: str, choice: str, custom: str, *values: Any) -> str:
        info = self.host.model_info()
        if not info.loaded or info.problem:
            raise UserError(info.problem or "No model is loaded: load an SD1.x or SDXL checkpoint first.")
        if info.family in ("sd1", "sdxl"):
            self.family = info.family
            self.native = native_resolution(info.family, demo=info.demo)
        cfg = self._config(folder, name, choice, custom, values)
        current = self.host.jobs.current("train")
        if current is not None and current.state in ("running", "queued"):
            raise UserError(f"A training is already running ({current.title}); stop it or wait for it to finish.")
        status = self.host.jobs.run(
            "train", f"Training {cfg.output_name}", lambda events, stop: self.host.train(cfg, events, stop),
            inner=host_events(self.host),
        )  # fmt: skip
        if status.files:
            self.host.refresh_loras()
        if status.state == "failed":
            return html.error(status.error or "Training failed.")
        files = ", ".join(f["path"].rsplit("/", 1)[-1] for f in status.files) or "no files"
        if status.state == "stopped":
            return html.message(f"Stopped at step {status.step}; saved: {files}.", "warning")
        return html.message(f"Training finished: {status.step} steps; saved {files} in {cfg.output_dir}.", "ok")

    def stop_training(self) -> str:
        job = self.host.jobs.current("train")
        if job is None or job.state not in ("running", "queued"):
            return html.message("No training is running.")
        self.host.jobs.stop(job.id)
        return html.message(
            "Stopping after this step; the LoRA so far is saved, with a state to resume from.", "warning"
        )

    def follow(self, shown_samples: int) -> Iterator[list[Any]]:
        """The live view while a training runs (e.g. one started before the page was reloaded, or
        from the HTTP API): updates every second until it ends."""
        out = self.poll(-1)
        yield out
        while True:
            status = self.host.jobs.current("train")
            if status is None or status.state not in ("running", "queued"):
                break
            time.sleep(1.0)
            out = self.poll(out[-1])
            yield out
        yield self.poll(-1)

    @guarded(5, status=0)
    def poll(self, shown_samples: int) -> list[Any]:
        """The live view: status, loss chart, saved files, samples (the gallery only when it changed)."""
        status = self.host.jobs.current("train")
        if status is None:
            return [html.message("No training yet."), html.loss_chart([]), gr.update(), gr.update(), shown_samples]
        epochs = [(f["step"], f["epoch"]) for f in status.files if f.get("kind") == "epoch"]
        chart = html.loss_chart(status.losses, status.total_steps or None, epochs, validation=status.val_losses)
        rows = [
            (
                f["path"].replace("\\", "/").rsplit("/", 1)[-1],
                f["epoch"],
                f["step"],
                "" if f["loss"] is None else f"{f['loss']:.4f}",
            )
            for f in status.files
        ]
        table = html.table(EPOCH_HEADERS, rows, empty="No files saved yet.")
        samples = list(status.samples)
        if len(samples) != shown_samples:
            # thumbnails live in the temp folder, which Gradio 3 and 4 both serve (the output folder may not be)
            shown = [(str(editor.thumbnail(s["path"], 512)), f"epoch {s['epoch']}: {s['prompt']}") for s in samples]
            gallery = gr.update(value=shown)
        else:
            gallery = gr.update()
        return [job_html(status, "No training yet."), chart, table, gallery, len(samples)]
