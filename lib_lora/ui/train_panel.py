"""The Train sub-tab: the host's model, preset and settings, steps and VRAM estimate, Start/Stop,
and the live view of a run (status, loss chart, saved epochs, samples)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import gradio as gr

from lib_lora.common.errors import UserError
from lib_lora.common.fsutil import check_writable
from lib_lora.config import (
    NETWORK_TYPE_DEFAULTS,
    PRESETS,
    TrainConfig,
    build_config,
    config_problems,
    label_name,
    native_resolution,
    preset_values,
)
from lib_lora.events import nothing_new_since
from lib_lora.jobs import block_table, dataset_info, editor, vram
from lib_lora.jobs import epochs as epoch_files
from lib_lora.ui import html
from lib_lora.ui.common import guarded, hook, host_events, job_html, long_js, resolve_output_dir, user_path
from lib_lora.ui.compat import hidden_progress, js_kwargs, table_kwargs
from lib_lora.ui.forms import Section, SettingsForm, build_field, build_settings_form, to_component_value
from lib_lora.ui.test_panel import score_report_html

if TYPE_CHECKING:
    from lib_lora.ui.host import ModelInfo
    from lib_lora.ui.tab import TrainerTab

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
    if getattr(info, "zero_terminal_snr", False):
        details.append("zero terminal SNR")
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
    parts += [html.message(note, "warning") for note in getattr(info, "notes", ())]
    if info.problem:
        parts.append(html.error(info.problem))
    return "".join(parts)


class TrainPanel:
    def __init__(self, tab: TrainerTab) -> None:
        self.tab = tab
        self.host = tab.host
        self.form = SettingsForm()
        self.running_inputs: list[Any] | None = None  # what the running training was started with
        # the host's own image settings sent with Start (webui: txt2img's sampler, steps, size... on
        # screen at the click), for the scoring after training; none in the standalone app
        self._live_inputs: list[Any] = []
        self._live_keys: list[str] = []

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
                info=self.preset_info(preset),
                elem_id="lora_trainer_preset",
            )
            self.name = gr.Textbox(
                value="mylora", label="LoRA name", info="Files are saved as NAME-000005.safetensors (one per epoch).",
                elem_id="lora_trainer_name",
            )  # fmt: skip
            choices = list((self.host.output_dir_choices() or {}).keys())
            self.output_choice = gr.Dropdown(
                choices, value=choices[0] if choices else None, label="Output folder",
                info=self.output_folder_info(choices[0] if choices else None), elem_id="lora_trainer_output_choice",
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
        blockwise = Section("network", (*block_table.KEYS, "block_lr_zero_threshold"), self.build_block_table)
        self.form = build_settings_form(hidden, initial, sections=[blockwise])
        self.estimate = gr.HTML(
            html.message("The settings are checked as you change them; choose a dataset folder first (Dataset tab)."),
            elem_id="lora_trainer_estimate",
        )
        with gr.Row():
            self.check_button = gr.Button("Check settings", elem_id="lora_trainer_check")
            self.start = gr.Button(
                "Start training", variant="primary", interactive=info.loaded and not info.problem,
                elem_id="lora_trainer_start",
            )  # fmt: skip
            self.stop = gr.Button("Stop (saves the LoRA so far)", variant="stop", elem_id="lora_trainer_stop")
        self.build_run_choices()
        self.task = gr.Textbox(visible=False, elem_id="lora_trainer_train_task")
        self.result = gr.HTML(elem_id="lora_trainer_train_result")
        self.live = gr.HTML(job_html(self.host.jobs.current("train"), "No training yet."), elem_id="lora_trainer_live")
        self.chart = gr.HTML(html.loss_chart([]), elem_id="lora_trainer_chart")
        gr.Markdown("**Saved files**")
        self.epochs = gr.HTML(html.table(EPOCH_HEADERS, [], empty="No files saved yet."), elem_id="lora_trainer_epochs")
        self.sample_count = gr.State(0)
        self.samples = gr.Gallery(label="Sample images", columns=4, height=360, elem_id="lora_trainer_samples")

    # ------------------------------------------------------------------ events
    def run_inputs(self) -> list[Any]:
        return [self.tab.dataset.folder, self.name, self.output_choice, self.output_custom, *self.form.inputs()]

    def wire(self) -> None:
        folder = self.tab.dataset.folder
        self.model_refresh.click(self.refresh_model, None, [self.model_info, self.start])
        # one validator for the live check and the Check settings button (config.config_problems): it
        # runs on every edit of a field, after a preset, and when the dataset folder or its content changes
        # it also clears a status line a later edit made stale ("does not exist", "No training is running.")
        live_check = {
            "fn": self.live_check, "inputs": self.run_inputs(), "outputs": [self.estimate, self.result],
            **hidden_progress(),
        }  # fmt: skip
        self.preset.change(self.apply_preset, [self.preset], [*self.form.inputs(), self.preset, self.estimate]).then(
            **live_check
        )
        for component in [*self.form.inputs(), self.name, self.output_custom]:
            component.input(**live_check)
        self.output_choice.change(**live_check)
        self.output_choice.change(
            self.show_output_folder, [self.output_choice], [self.output_choice], **hidden_progress()
        )
        folder.change(**live_check)
        self.tab.dataset.overview.change(**live_check)  # a dataset made, refreshed or imported
        if "algo" in self.form.components:  # a network type fills in its starting values
            self.form.components["algo"].change(
                self.apply_network_type, [self.form.components["algo"]], self.form.inputs()
            ).then(**live_check)
        self.check_button.click(self.check, self.run_inputs(), [self.estimate])
        self.wire_block_table(live_check)

        live = [self.live, self.chart, self.epochs, self.samples, self.sample_count]
        self._live_inputs, self._live_keys = hook(self.host, "txt2img_live_inputs", lambda: ([], []))()
        self.start.click(lambda: "", None, [self.result], queue=False, **hidden_progress())  # the last run's line
        poll = self.start.click(self.poll, [self.sample_count], live, every=1, **hidden_progress())
        run = self.start.click(
            self.host.wrap_long_handler(self.start_training, 1), [self.task, *self.run_inputs(), *self._live_inputs],
            [self.result],
            # the live view below is the progress (its own ETA): no second, Gradio-drawn bar whose
            # "elapsed/ETA" takes the ETA from the queue's average of every event ("57.7/0.1s")
            **js_kwargs(long_js(self.host, "train")), **hidden_progress(),
        )  # fmt: skip
        run.then(self.poll, [gr.State(-1)], live, cancels=[poll])
        self.stop.click(self.stop_training, None, [self.result])
        self.wire_run_choices(run, live)

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

    def preset_info(self, name: str) -> str:
        """The preset's description, and what the form shows instead when the host starts it with
        other values (the demo model's small, quick ones)."""
        doc = PRESETS[name].get("_doc", "")
        shrunk = getattr(self.host.settings(), "form_defaults", None) or {}
        if not shrunk:
            return doc
        shown = ", ".join(f"{_in_sentence(label_name(k))} {'empty' if v is None else v}" for k, v in shrunk.items())
        return (
            f"{doc} For the demo model the form starts smaller so a run takes minutes on a CPU ({shown}); "
            "choose the preset again to get its full values."
        )

    def apply_network_type(self, algo: str) -> list[Any]:
        """The community's starting dim/alpha/conv/factor for the chosen type; other settings untouched."""
        defaults = NETWORK_TYPE_DEFAULTS.get(algo, {})
        names = self.form.names
        return [gr.update(value=to_component_value(n, defaults[n])) if n in defaults else gr.update() for n in names]

    def _config(self, folder: str, name: str, choice: str, custom: str, values: Sequence[Any]) -> TrainConfig:
        form_values = self.form.values(values)
        form_values["train_data_dir"] = user_path(folder) if (folder or "").strip() else ""
        form_values["output_name"] = (name or "").strip()
        form_values["output_dir"] = resolve_output_dir(self.host, choice, custom)
        return build_config(form_values, family=self.family, native=self.native, names=label_name)

    def _checked(self, folder: str, name: str, choice: str, custom: str, values: Sequence[Any]):
        """The config and every problem of the form (config.config_problems, in the labels' words)."""
        form_values = self.form.values(values)
        form_values["train_data_dir"] = user_path(folder) if (folder or "").strip() else ""
        form_values["output_name"] = (name or "").strip()
        form_values["output_dir"] = resolve_output_dir(self.host, choice, custom)
        return config_problems(form_values, names=label_name)

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
            if cfg.score_epochs:
                from lib_lora.jobs.scoring import auto_cost, auto_cost_sentence

                enough = auto_cost(cfg, summary.epochs)[0] >= 2
                parts.append(html.message(auto_cost_sentence(cfg, summary.epochs), "info" if enough else "warning"))
        else:
            parts.append(html.message("Total steps: choose a dataset folder with images (Dataset tab)."))
        gpu = vram.gpu_memory()
        estimate = vram.estimate_for(
            cfg, self.family, available_gib=gpu[1] if gpu else None, device_name=gpu[0] if gpu else None
        )
        size = vram.network_size(
            self.family, cfg.algo, cfg.network_dim, cfg.effective_conv_dim, cfg.train_unet, cfg.train_text_encoder,
            dora=cfg.dora_wd, factor=cfg.factor, decompose_both=cfg.decompose_both, full_matrix=cfg.full_matrix,
            use_tucker=cfg.use_tucker,
        )  # fmt: skip
        demo = getattr(self.host.model_info(), "demo", False)
        parts.append(
            html.message(
                f"File size: ~{size.file_bytes(cfg.save_precision) / 2**20:.1f} MiB per saved epoch "
                f"({size.modules} modules, {size.params / 1e6:.1f} M parameters in {cfg.save_precision})"
                + (" for a full-size model of this family; the demo model's files are much smaller." if demo else "."),
                "info",
            )
        )
        text = estimate.text()
        free = vram.gpu_free() if cfg.auto_memory else None
        if free is not None:  # what Start's auto memory would turn on now, and why
            text += " " + " ".join(vram.choose_savers(cfg, self.family, free[1]).lines)
        if demo:
            text += " (Figures for a full-size model of this family; the demo model needs very little.)"
        parts.append(html.message(text, "warning" if estimate.fits is False else "info"))
        return "".join(parts)

    def training_running(self) -> bool:
        current = self.host.jobs.current("train")
        return current is not None and current.state in ("running", "queued")

    @guarded(2, status=0)
    def live_check(self, folder: str, name: str, choice: str, custom: str, *values: Any) -> list[Any]:
        """:meth:`check` as the fields change; the status line under Start is cleared (what it said
        was about the settings before this edit) unless a training is running."""
        return [self.check(folder, name, choice, custom, *values), gr.update() if self.training_running() else ""]

    def restore_outputs(self) -> list[Any]:
        return [self.tab.dataset.folder, self.name, self.output_choice, self.output_custom, *self.form.inputs()]

    def restore_running(self) -> list[Any]:
        """On page load: while a training runs, the dataset folder and the settings it was started
        with (a reloaded page would otherwise show the defaults beside a run that uses others)."""
        n = 4 + len(self.form.components)
        if not self.training_running() or self.running_inputs is None or len(self.running_inputs) != n:
            return [gr.update() for _ in range(n)]
        return [gr.update(value=v) for v in self.running_inputs]

    @guarded(1)
    def check(self, folder: str, name: str, choice: str, custom: str, *values: Any) -> str:
        """The live check and the Check settings button: every problem at once, then (when the
        settings are valid) the steps and the VRAM estimate."""
        cfg, problems = self._checked(folder, name, choice, custom, values)
        parts = [html.error(p) for p in problems]
        info = self.host.model_info()
        if not info.loaded or info.problem:
            parts.append(html.error(info.problem or "No model is loaded."))
        if cfg.train_data_dir:
            overview = dataset_info.overview(folder, cfg.caption_extension)
            if overview.error:
                parts.append(html.error(overview.error))
        try:  # the output folder, as Start checks it (a file, a read-only folder)
            check_writable(cfg.output_dir)
        except UserError as exc:
            parts.append(html.error(str(exc)))
        if not parts:
            where = os.path.abspath(cfg.output_dir)
            parts.append(html.message(f"Settings are valid; files go to {where}.", "ok"))
        if problems:
            return "".join(parts)
        return "".join(parts) + self._estimate_html(folder, cfg.as_dict())

    def _split_host_values(self, values: tuple[Any, ...]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """A click's form values, and the host's own image settings sent after them (see build)."""
        n = len(values) - len(self._live_keys)
        return values[:n], dict(zip(self._live_keys, values[n:]))

    @guarded(1)
    def start_training(self, task_id: str, folder: str, name: str, choice: str, custom: str, *values: Any) -> str:
        values, host_values = self._split_host_values(values)
        info = self.host.model_info()
        if not info.loaded or info.problem:
            raise UserError(info.problem or "No model is loaded: load an SD1.x or SDXL checkpoint first.")
        if info.family in ("sd1", "sdxl"):
            self.family = info.family
            self.native = native_resolution(info.family, demo=info.demo)
        cfg = self._config(folder, name, choice, custom, values)
        if not self.training_running():
            self.running_inputs = [folder, name, choice, custom, *values]
        return self._run_training(cfg, None, False, host_values)

    def _run_training(
        self, cfg: TrainConfig, resume: str | None, overwrite: bool, host_values: dict[str, Any] | None = None
    ) -> str:
        """Start (or resume) ``cfg`` as a job and wait for it; an existing run of the same name is
        refused with the choices (Resume, a new name, Overwrite) unless one was made. ``host_values``:
        the host's image settings on screen (the scoring after training renders with them)."""
        from lib_lora.jobs.train import RunExists, check_output

        current = self.host.jobs.current("train")
        if current is not None and current.state in ("running", "queued"):
            raise UserError(f"A training is already running ({current.title}); stop it or wait for it to finish.")
        try:
            check_output(cfg, resume, overwrite)
        except RunExists as exc:
            return run_exists_html(exc)
        allow = hook(self.host, "allow_folder")  # the standalone app may show the run's files
        if allow:
            allow(cfg.output_dir)
            allow(cfg.train_data_dir)
        extra = {"host_values": host_values} if host_values else {}  # only a host with such values takes them
        status = self.host.jobs.run(
            "train", f"Training {cfg.output_name}",
            lambda events, stop: self.host.train(cfg, events, stop, resume=resume, overwrite=overwrite, **extra),
            inner=host_events(self.host),
        )  # fmt: skip
        if status.files:
            self.host.refresh_loras()
        return self.outcome_html(status, cfg.output_dir)

    def stop_training(self) -> str:
        job = self.host.jobs.current("train")
        if job is None or job.state not in ("running", "queued"):
            return html.message("No training is running.")
        self.host.jobs.stop(job.id)
        if job.stage == "scoring":  # the run is over; only the scoring after it stops (score_epochs)
            return html.message("Stopping the scoring after the current image; every trained file is kept.", "warning")
        return html.message(
            "Stopping after this step; the LoRA so far is saved, with a state to resume from.", "warning"
        )

    def follow(self, shown_samples: int) -> Iterator[list[Any]]:
        """The live view while a training runs (e.g. one started before the page was reloaded, or
        from the HTTP API): updates every second until it ends; then the status line under Start
        says how it ended (it may still say "Stopping after this step...")."""
        was_running = self.training_running()
        out = self.poll(-1)
        yield [*out, gr.update()]
        while True:
            status = self.host.jobs.current("train")
            if status is None or status.state not in ("running", "queued"):
                break
            time.sleep(1.0)
            out = self.poll(out[-2])
            yield [*out, gr.update()]
        status = self.host.jobs.current("train")
        yield [*self.poll(-1), self.outcome_html(status) if was_running and status is not None else gr.update()]

    @staticmethod
    def outcome_html(status: Any, folder: str | None = None) -> str:
        """How a training ended, as the status line under Start says it; with the epochs scored after
        it, the pick in words (the Test tab's sentence), its chart and table."""
        if status.state == "failed":
            return html.error(status.error or "Training failed.")
        names = [f["path"].replace("\\", "/").rsplit("/", 1)[-1] for f in status.files]
        files = ", ".join(names) or "no files"
        scored = getattr(status.result, "scoring", None)
        finished = getattr(status.result, "status", None) == "done"  # a Stop during the scoring keeps it finished
        if status.state == "stopped" and not finished:
            return stopped_html(status) + (html.message(scored.sentence, "warning") if scored else "")
        if folder is None:
            folder = os.path.dirname(status.files[-1]["path"]) if status.files else ""
        done = html.message(f"Training finished: {status.step} steps; saved {files} in {folder}.", "ok")
        return done + scoring_html(scored)

    def output_folder_info(self, choice: str | None) -> str:
        """The Output folder's help line: the chosen folder's whole path (a label that held it was cut
        off in the dropdown)."""
        folder = (self.host.output_dir_choices() or {}).get(choice or "")
        return f"Where the LoRA files go: {folder}" if folder else "Where the LoRA files go"

    def show_output_folder(self, choice: str | None) -> Any:
        return gr.update(info=self.output_folder_info(choice))

    @guarded(5, status=0)
    def poll(self, shown_samples: int) -> list[Any]:
        """The live view: status, loss chart, saved files, samples (the gallery only when it changed)."""
        status = self.host.jobs.current("train")
        if status is None:
            return [html.message("No training yet."), html.loss_chart([]), gr.update(), gr.update(), shown_samples]
        # a resumed run: the whole run, its earlier session's files and losses (from its log) too
        files = [*status.earlier_files, *status.files]
        losses = [*status.earlier_losses, *status.losses]
        checks = [*status.earlier_val_losses, *status.val_losses]
        epochs = [(f["step"], f["epoch"]) for f in files if f.get("kind") == "epoch"]
        chart = html.loss_chart(losses, status.total_steps or None, epochs, validation=checks)
        table = html.table(EPOCH_HEADERS, saved_rows(files), empty="No files saved yet.")
        samples = list(status.samples)
        if len(samples) != shown_samples:
            # thumbnails live in the temp folder, which Gradio 3 and 4 both serve (the output folder may not be)
            shown = [(str(editor.thumbnail(s["path"], 512)), f"epoch {s['epoch']}: {s['prompt']}") for s in samples]
            gallery = gr.update(value=shown)
        else:
            gallery = gr.update()
        # the error is in the status line under Start (start_training / follow), not twice
        return [job_html(status, "No training yet.", show_error=False), chart, table, gallery, len(samples)]

    # ------------------------------------------------------------------ block-wise lr and dims: the per-block table
    def build_block_table(self, form: SettingsForm, initial: dict[str, Any]) -> None:
        """sd-scripts' block-wise strings as one table row per UNet block of the loaded model's
        family (jobs.block_table); the strings themselves stay below it, folded, for pasting."""
        gr.Markdown(
            "**Block-wise learning rates and ranks** — one row per UNet block in sd-scripts' numbering for the "
            "loaded model. An empty cell is the default (learning-rate factor 1, the network's dim and alpha, the "
            "convolution dim and alpha); a factor or dim set here trains the UNet block by block.",
            elem_classes=["lt-group-title"], elem_id="lora_trainer_block_intro",
        )  # fmt: skip
        rows, problems = block_table.table_rows(initial, self.family == "sdxl")
        self.block_table = gr.Dataframe(
            value=rows, headers=list(block_table.HEADERS), datatype="str", type="array",
            row_count=(len(rows), "fixed"), col_count=(len(block_table.HEADERS), "fixed"), interactive=True,
            label="Per-block learning-rate factor, dim and alpha", elem_id="lora_trainer_block_table",
            **table_kwargs(),
        )  # fmt: skip
        self.block_status = gr.HTML(
            self.block_status_html(problems, self.family == "sdxl"), elem_id="lora_trainer_block_status"
        )
        with gr.Row():
            form.components["block_lr_zero_threshold"] = build_field("block_lr_zero_threshold", initial)
        with gr.Accordion(
            "The same as sd-scripts' comma-separated settings", open=False, elem_id="lora_trainer_block_strings"
        ):
            keys = block_table.KEYS
            for start in range(0, len(keys), 3):
                with gr.Row():
                    for key in keys[start : start + 3]:
                        form.components[key] = build_field(key, initial)

    def block_inputs(self) -> list[Any]:
        return [self.form.components[k] for k in block_table.KEYS]

    def wire_block_table(self, live_check: dict[str, Any]) -> None:
        """A string changed (typed, a preset, a restored run) or the model refreshed: the table
        follows; the table edited: the strings follow (then the usual live check)."""
        view = {
            "fn": self.show_block_table,
            "inputs": self.block_inputs(),
            "outputs": [self.block_table, self.block_status],
        }
        for component in self.block_inputs():
            component.change(**view, **hidden_progress())
        self.model_refresh.click(**view, **hidden_progress())
        dims = [self.form.components[k] for k in ("network_dim", "network_alpha", "conv_dim", "conv_alpha")]
        self.block_table.input(
            self.edit_block_table, [self.block_table, *self.block_inputs(), *dims],
            [*self.block_inputs(), self.block_status], **hidden_progress(),
        ).then(**live_check)  # fmt: skip

    def _block_family_sdxl(self) -> bool:
        """The loaded model's numbering (the table may be older than the model: the webui can switch)."""
        info = self.host.model_info()
        return (info.family if info.family in ("sd1", "sdxl") else self.family) == "sdxl"

    @staticmethod
    def block_status_html(problems: Sequence[str], sdxl: bool) -> str:
        numbering = html.message(
            f"Numbering for {'SDXL' if sdxl else 'SD1.x'}: {len(block_table.block_parts(sdxl))} blocks "
            "(the learning-rate factors are down_lr_weight, mid_lr_weight and up_lr_weight in this order)."
        )
        return numbering + "".join(html.message(p, "warning") for p in problems)

    @guarded(2, status=1)
    def show_block_table(self, *values: Any) -> list[Any]:
        sdxl = self._block_family_sdxl()
        strings = self.form.values_subset(list(block_table.KEYS), values)
        rows, problems = block_table.table_rows(strings, sdxl)
        return [gr.update(value=rows), self.block_status_html(problems, sdxl)]

    @guarded(len(block_table.KEYS) + 1)
    def edit_block_table(self, table: Any, *values: Any) -> list[Any]:
        """The edited table as the seven strings (only edited columns rewritten); a bad cell is
        refused in one sentence naming its block and nothing changes."""
        n = len(block_table.KEYS)
        strings = self.form.values_subset(list(block_table.KEYS), values[:n])
        network_dim, network_alpha, conv_dim, conv_alpha = values[n:]
        rows = table.values.tolist() if hasattr(table, "values") else list(table or [])
        sdxl = self._block_family_sdxl()
        new = block_table.settings_from_table(rows, strings, sdxl, network_dim, network_alpha, conv_dim, conv_alpha)
        updates = [
            gr.update(value=to_component_value(k, new[k])) if new[k] != strings[k] else gr.update()
            for k in block_table.KEYS
        ]
        return [*updates, self.block_status_html([], sdxl)]

    # ------------------------------------------------------------------ an existing run: resume, new name, overwrite
    def build_run_choices(self) -> None:
        """What to do when the name already has a run (shown then): a new name, or Overwrite (pressed on
        purpose); and Resume, for a stopped run from the list of resumable states in the output folder."""
        suggestion = self._suggestion(self.name.value, self.output_choice.value, None)
        with gr.Row():
            self.new_name = gr.Button(
                f"Use the name {suggestion}" if suggestion else "Use a new name", visible=bool(suggestion),
                elem_id="lora_trainer_use_new_name",
            )  # fmt: skip
            self.overwrite = gr.Button(
                "Overwrite it and start (its files move to the .trash folder)", variant="stop",
                visible=bool(suggestion), elem_id="lora_trainer_overwrite",
            )  # fmt: skip
        with gr.Row():
            self.resume_list = gr.Dropdown(
                self.resume_choices(None, None), label="Resume a stopped run",
                info="Stopped runs in the output folder that can continue where they stopped (with their own settings)",
                elem_id="lora_trainer_resume_list",
            )  # fmt: skip
            self.resume_refresh = gr.Button("Refresh list", elem_id="lora_trainer_resume_refresh", scale=0)
            self.resume_button = gr.Button("Resume", elem_id="lora_trainer_resume", scale=0)

    def wire_run_choices(self, start_run: Any, live: list[Any]) -> None:
        where = [self.output_choice, self.output_custom]
        offer = [self.name, *where]
        offers = [self.resume_list, self.new_name, self.overwrite]
        start_run.then(self.offer_choices, offer, offers)
        self.name.change(self.offer_new_name, offer, [self.new_name, self.overwrite], **hidden_progress())
        self.new_name.click(self.use_new_name, offer, [self.name, self.new_name, self.overwrite])
        self.resume_refresh.click(self.refresh_resume_list, where, [self.resume_list])
        self.output_choice.change(self.refresh_resume_list, where, [self.resume_list], **hidden_progress())
        long = js_kwargs(long_js(self.host, "train"))
        for button, handler, inputs in (
            (self.overwrite, self.start_overwriting, [self.task, *self.run_inputs(), *self._live_inputs]),
            (self.resume_button, self.resume_training, [self.task, self.resume_list, *where, *self._live_inputs]),
        ):
            button.click(lambda: "", None, [self.result], queue=False, **hidden_progress())  # the last run's line
            poll = button.click(self.poll, [self.sample_count], live, every=1, **hidden_progress())
            run = button.click(self.host.wrap_long_handler(handler, 1), inputs, [self.result], **long)
            run.then(self.poll, [gr.State(-1)], live, cancels=[poll])
            run.then(self.offer_choices, offer, offers)

    def resume_choices(self, choice: str | None, custom: str | None) -> list[str]:
        from lib_lora.jobs.train import resumable_states

        return [resume_label(s) for s in resumable_states(resolve_output_dir(self.host, choice, custom))]

    def _suggestion(self, name: str, choice: str | None, custom: str | None) -> str | None:
        from lib_lora.jobs.train import existing_run

        run = existing_run(resolve_output_dir(self.host, choice, custom), (name or "").strip()) if name else None
        return run.suggestion if run else None

    @guarded(3, status=0)
    def offer_choices(self, name: str, choice: str | None, custom: str | None) -> list[Any]:
        """After Start/Resume: the resume list as it is now, and the new-name and overwrite offers
        when the name has a run."""
        choices = self.resume_choices(choice, custom)
        mine = [c for c in choices if c.startswith(f"{(name or '').strip()} (stopped at")]
        return [
            gr.update(choices=choices, value=(mine or choices or [None])[0]),
            *self.offer_new_name(name, choice, custom),
        ]

    @guarded(2, status=0)
    def offer_new_name(self, name: str, choice: str | None, custom: str | None) -> list[Any]:
        suggestion = self._suggestion(name, choice, custom)
        label = f"Use the name {suggestion}" if suggestion else "Use a new name"
        return [gr.update(visible=bool(suggestion), value=label), gr.update(visible=bool(suggestion))]

    @guarded(3, status=1)
    def use_new_name(self, name: str, choice: str | None, custom: str | None) -> list[Any]:
        suggestion = self._suggestion(name, choice, custom)
        return [suggestion or name, gr.update(visible=False), gr.update(visible=False)]

    @guarded(1)
    def start_overwriting(self, task_id: str, folder: str, name: str, choice: str, custom: str, *values: Any) -> str:
        """Start, replacing the existing run of this name (pressed on purpose, after the refusal)."""
        values, host_values = self._split_host_values(values)
        info = self.host.model_info()
        if not info.loaded or info.problem:
            raise UserError(info.problem or "No model is loaded: load an SD1.x or SDXL checkpoint first.")
        return self._run_training(self._config(folder, name, choice, custom, values), None, True, host_values)

    @guarded(1, status=0)
    def refresh_resume_list(self, choice: str | None, custom: str | None) -> Any:
        choices = self.resume_choices(choice, custom)
        return gr.update(choices=choices, value=choices[0] if choices else None)

    @guarded(1)
    def resume_training(
        self, task_id: str, label: str | None, choice: str | None, custom: str | None, *live: Any
    ) -> str:
        """Continue the chosen stopped run with the settings it was started with."""
        from lib_lora.jobs.train import resumable_states

        if not label:
            raise UserError("Choose a stopped run in the Resume list first (Refresh list shows the newest).")
        folder = resolve_output_dir(self.host, choice, custom)
        found = [s for s in resumable_states(folder) if resume_label(s) == label]
        if not found:
            raise UserError(f"{label} is no longer in {folder}; press Refresh list.")
        state = found[0]
        info = self.host.model_info()
        if not info.loaded or info.problem:
            raise UserError(info.problem or "No model is loaded: load an SD1.x or SDXL checkpoint first.")
        values = {k: v for k, v in state["config"].items() if k in TrainConfig.__dataclass_fields__}
        values["output_dir"] = str(state["state"].parent)
        cfg = build_config(values, family=info.family if info.family in ("sd1", "sdxl") else self.family)
        return self._run_training(cfg, str(state["state"]), False, dict(zip(self._live_keys, live)))


def _in_sentence(label: str) -> str:
    """A form label inside a sentence: "Batch size" -> "batch size"; "CLIP skip" and "Save every N
    epochs" keep their capitals ("clip skip", "save every n epochs" read as other words)."""
    return label[:1].lower() + label[1:] if label[1:2].islower() else label


def saved_rows(files: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The Saved files table: every file of the run in its output folder (a resumed run's earlier
    epochs too, found by the run's session id), with the loss of each file the status knows (a resumed
    run's earlier files come with theirs, from the run's log)."""
    by_path = {os.path.normpath(f["path"]): f for f in files}
    found = []
    if files:
        last = files[-1]["path"]
        found = epoch_files.list_lora_files(os.path.dirname(last), epoch_files.run_name(last))
    rows: dict[str, tuple[int, tuple[Any, ...]]] = {}
    for lora in found:
        rows[os.path.normpath(lora.path)] = (lora.step or 0, (lora.path.name, lora.epoch, lora.step, ""))
    for path, f in by_path.items():
        name = f["path"].replace("\\", "/").rsplit("/", 1)[-1]
        loss = "" if f["loss"] is None else f"{f['loss']:.4f}"
        rows[path] = (f["step"] or 0, (name, f["epoch"], f["step"], loss))
    return [row for _, row in sorted(rows.values(), key=lambda item: item[0])]


def stopped_html(status: Any) -> str:
    """How a stopped training ended: what it saved, or (a resumed run stopped before its first new
    step) that nothing new was learned since the file it resumed from."""
    names = [f["path"].replace("\\", "/").rsplit("/", 1)[-1] for f in status.files]
    resumed_from = status.resumed_from
    if not names and resumed_from:
        name = resumed_from.replace("\\", "/").rsplit("/", 1)[-1]
        return html.message(f"Stopped at step {status.step} before any new step: {nothing_new_since(name)}", "warning")
    return html.message(f"Stopped at step {status.step}; saved: {', '.join(names) or 'no files'}.", "warning")


def scoring_html(scored: Any) -> str:
    """The scoring after training (jobs.scoring.AutoScore): the Test tab's report (chart, the pick in
    words, table) and where it was written; a skipped or stopped scoring in one sentence."""
    if scored is None:
        return ""
    if scored.report is None:
        return html.message(scored.sentence, "warning")
    where = html.message(
        f"Scored after training: the recommendation and the scores are written into {scored.final.name}'s metadata.",
        "info",
    )
    return score_report_html(scored.report) + where


def resume_label(state: dict[str, Any]) -> str:
    """One entry of the Resume list: the run's name and where it stopped."""
    position = state["position"]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(state["written"] / 1e9)) if state.get("written") else ""
    epoch = position["epoch"]
    where = f"after epoch {epoch}" if position.get("batch") == 0 and epoch > 0 else f"in epoch {epoch + 1}"
    return f"{state['name']} (stopped at step {position['step']}, {where}{', ' + when if when else ''})"


def run_exists_html(exc: Any) -> str:
    """The refusal of a Start whose name already has a run, with the three ways on."""
    run = exc.existing
    resume = "Resume it from the list below, press " if run.state else "Press "
    return html.error(
        f"A run named {run.name} already exists in {run.folder} ({run.summary()}); nothing was started. {resume}"
        f'"Use the name {run.suggestion}", or press "Overwrite it and start" (its files move to the .trash folder).'
    )
