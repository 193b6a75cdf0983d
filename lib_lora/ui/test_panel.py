"""The Test sub-tab: an epoch x prompt grid of the LoRA's saved files, and "send to txt2img"."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from lib_lora.common.errors import UserError
from lib_lora.jobs import epochs as epoch_files
from lib_lora.ui import html
from lib_lora.ui.common import guarded, hook, host_events, long_js, number, resolve_output_dir
from lib_lora.ui.compat import js_kwargs
from lib_lora.ui.host import GridRequest

if TYPE_CHECKING:
    from lib_lora.ui.tab import TrainerTab

MAX_GRID_IMAGES = 64


class TestPanel:
    def __init__(self, tab: TrainerTab) -> None:
        self.tab = tab
        self.host = tab.host
        self.files: dict[str, Path] = {}  # label -> file, as last listed
        self._live_keys: list[str] = []  # the host's own image settings sent with the grid click (see wire)

    def build(self) -> None:
        with gr.Row():
            self.refresh = gr.Button("Refresh epoch list", elem_id="lora_trainer_test_refresh")
            self.default_prompts = gr.Button("Default prompts", elem_id="lora_trainer_test_default_prompts")
        self.epochs = gr.CheckboxGroup([], label="Epoch files to compare", elem_id="lora_trainer_test_epochs")
        self.prompts = gr.Textbox(
            label="Test prompts (one per line)", lines=3,
            placeholder="default: the activation text with the dataset's most frequent tags",
            elem_id="lora_trainer_test_prompts",
        )  # fmt: skip
        self.negative = gr.Textbox(label="Test negative prompt", elem_id="lora_trainer_test_negative")
        with gr.Row():
            self.weight = gr.Slider(0, 2, value=1.0, step=0.05, label="LoRA weight", elem_id="lora_trainer_test_weight")
            self.seed = gr.Number(value=1234, precision=0, label="Test seed", elem_id="lora_trainer_test_seed")
        with gr.Accordion("Image settings (empty = the host's current txt2img values)", open=False), gr.Row():
            self.width = gr.Textbox(label="Test width", elem_id="lora_trainer_test_width")
            self.height = gr.Textbox(label="Test height", elem_id="lora_trainer_test_height")
            self.steps = gr.Textbox(label="Test sampling steps", elem_id="lora_trainer_test_steps")
            self.cfg = gr.Textbox(label="Test CFG scale", elem_id="lora_trainer_test_cfg")
        self.render = gr.Button("Render grid", variant="primary", elem_id="lora_trainer_test_render")
        self.task = gr.Textbox(visible=False, elem_id="lora_trainer_grid_task")
        self.grid = gr.Image(label="Epoch x prompt grid", type="pil", interactive=False, elem_id="lora_trainer_grid")
        self.result = gr.HTML(elem_id="lora_trainer_test_result")
        with gr.Row():
            self.send_epoch = gr.Dropdown([], label="Epoch for txt2img", elem_id="lora_trainer_send_epoch")
            self.send = gr.Button("Send to txt2img", elem_id="lora_trainer_send")
        self.send_prompt = gr.Textbox(label="Prompt for txt2img", elem_id="lora_trainer_send_prompt")

    def wire(self) -> None:
        train = self.tab.train
        where = [train.name, train.output_choice, train.output_custom]
        listing = [self.epochs, self.send_epoch, self.prompts, self.result]
        self.refresh.click(self.list_epochs, [*where, self.tab.dataset.folder, self.prompts], listing)
        self.tab.test_tab.select(self.list_epochs, [*where, self.tab.dataset.folder, self.prompts], listing)
        self.default_prompts.click(
            self.fill_default_prompts, [*where, self.tab.dataset.folder], [self.prompts, self.result]
        )
        # the host's own image settings as they are on screen at the click (webui: txt2img's sampler, size...)
        live, self._live_keys = hook(self.host, "txt2img_live_inputs", lambda: ([], []))()
        inputs = [
            self.task, *where, self.epochs, self.prompts, self.negative, self.weight, self.seed,
            self.width, self.height, self.steps, self.cfg, *live,
        ]  # fmt: skip
        self.render.click(
            self.host.wrap_long_handler(self.render_grid, 2), inputs, [self.grid, self.result],
            **js_kwargs(long_js(self.host, "grid")),
        )  # fmt: skip
        extra = list(hook(self.host, "txt2img_outputs", list)())
        send_js = hook(self.host, "send_to_txt2img_js", lambda: None)()
        self.send.click(
            self.send_to_txt2img, [self.send_epoch, self.prompts, self.negative, self.weight],
            [self.send_prompt, self.result, *extra], **js_kwargs(send_js),
        )  # fmt: skip
        self._extra_outputs = len(extra)

    # ------------------------------------------------------------------ handlers
    def _list(self, name: str, choice: str, custom: str) -> list[epoch_files.LoraFile]:
        if not (name or "").strip():
            raise UserError("Enter the LoRA name (Train tab) to list its files.")
        folder = resolve_output_dir(self.host, choice, custom)
        found = epoch_files.list_lora_files(folder, name)
        self.files = {f.label: f.path for f in found}
        return found

    @guarded(4)
    def list_epochs(self, name: str, choice: str, custom: str, folder: str, prompts: str) -> list[Any]:
        found = self._list(name, choice, custom)
        labels = [f.label for f in found]
        if not found:
            text = f"No saved files of {name.strip()!r} in {resolve_output_dir(self.host, choice, custom)} yet."
            return [gr.update(choices=[], value=[]), gr.update(choices=[], value=None), gr.update(), html.message(text)]
        chosen = labels if len(labels) <= 6 else labels[:: max(1, len(labels) // 6)][-6:]
        new_prompts = gr.update()
        if not (prompts or "").strip():
            activation = epoch_files.activation_text(found[-1].path)
            new_prompts = gr.update(value="\n".join(epoch_files.default_prompts(activation, folder)))
        text = f"{len(found)} files of the newest run of {name.strip()!r}."
        return [
            gr.update(choices=labels, value=chosen),
            gr.update(choices=labels, value=labels[-1]),
            new_prompts,
            html.message(text, "ok"),
        ]

    @guarded(2)
    def fill_default_prompts(self, name: str, choice: str, custom: str, folder: str) -> list[Any]:
        found = self._list(name, choice, custom) if (name or "").strip() else []
        activation = epoch_files.activation_text(found[-1].path) if found else ""
        prompts = epoch_files.default_prompts(activation, folder)
        if not prompts:
            raise UserError("No default prompts: the LoRA has no activation text and the dataset has no captions yet.")
        return [gr.update(value="\n".join(prompts)), html.message("Default prompts filled in.", "ok")]

    def _request(
        self, name, choice, custom, chosen, prompts, negative, weight, seed, width, height, steps, cfg
    ) -> GridRequest:
        if not chosen:
            raise UserError("Pick at least one epoch file (Refresh epoch list first).")
        if not self.files:
            self._list(name, choice, custom)
        missing = [label for label in chosen if label not in self.files]
        if missing:
            self._list(name, choice, custom)
            missing = [label for label in chosen if label not in self.files]
        if missing:
            raise UserError(f"{missing[0]} is no longer in the output folder; refresh the epoch list.")
        lines = [line.strip() for line in (prompts or "").splitlines() if line.strip()]
        if not lines:
            raise UserError("Enter at least one test prompt (one per line), or press Default prompts.")
        if len(lines) * len(chosen) > MAX_GRID_IMAGES:
            raise UserError(
                f"The grid would have {len(lines) * len(chosen)} images; keep it to {MAX_GRID_IMAGES} or fewer."
            )
        weight_value = number(weight, "The LoRA weight")
        return GridRequest(
            lora_files=[self.files[label] for label in chosen],
            prompts=lines,
            negative_prompt=negative or "",
            weight=1.0 if weight_value is None else float(weight_value),
            seed=int(number(seed, "The seed", 0, integer=True) or 0),
            width=number(width, "The width", 64, integer=True),
            height=number(height, "The height", 64, integer=True),
            steps=number(steps, "The sampling steps", 1, integer=True),
            cfg_scale=number(cfg, "The CFG scale", 0),
        )

    @guarded(2)
    def render_grid(self, task_id: str, *args: Any) -> list[Any]:
        own = args[: len(args) - len(self._live_keys)]
        live = dict(zip(self._live_keys, args[len(own) :]))
        request = dataclasses.replace(self._request(*own), host_values=live)
        status = self.host.jobs.run(
            "grid", f"Grid of {len(request.lora_files)} files", lambda events, stop: self.host.render_grid(request, events, stop),
            inner=host_events(self.host),
        )  # fmt: skip
        if status.state == "failed":
            raise UserError(status.error or "Rendering the grid failed.")
        result = status.result
        if status.state == "stopped" or result is None:
            return [gr.update(), html.message("Stopped before the grid was finished.", "warning")]
        saved = f" Saved to {result.saved_to}." if result.saved_to else ""
        text = f"{len(result.row_labels)} files x {len(result.column_labels)} prompts.{saved}"
        return [result.grid, html.message(text, "ok")]

    def send_to_txt2img(self, label: str, prompts: str, negative: str, weight: Any) -> list[Any]:
        extra = getattr(self, "_extra_outputs", 0)
        try:
            if not label:
                raise UserError("Pick the epoch to send (Refresh epoch list first).")
            stem = Path(self.files[label]).stem if label in self.files else label.split(" ", 1)[0]
            first = next((line.strip() for line in (prompts or "").splitlines() if line.strip()), "")
            value = number(weight, "The LoRA weight")
            lora = f"<lora:{stem}:{1.0 if value is None else float(value):g}>"
            prompt = f"{first}, {lora}" if first else lora
            send = hook(self.host, "send_to_txt2img")
            if send is None:
                return [prompt, html.message("Copy the prompt above into your txt2img prompt."), *[gr.update()] * extra]
            updates, text = send(prompt, negative or "")
            return [prompt, html.message(text, "ok"), *list(updates)[:extra], *[gr.update()] * (extra - len(updates))]
        except UserError as exc:
            return [gr.update(), html.error(str(exc)), *[gr.update()] * extra]
