"""The Test sub-tab: an epoch x prompt grid of the LoRA's saved files, "send to txt2img", and the
automatic pick (score every epoch, chart the scores and validation loss, "Keep this one")."""

from __future__ import annotations

import dataclasses
import html as html_text
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from lib_lora.common.errors import UserError
from lib_lora.common.text import plural
from lib_lora.jobs import epochs as epoch_files
from lib_lora.jobs import scoring
from lib_lora.ui import html
from lib_lora.ui.common import guarded, hook, host_events, long_js, number, resolve_output_dir
from lib_lora.ui.compat import js_kwargs
from lib_lora.ui.host import GridRequest, grid_renderer

if TYPE_CHECKING:
    from lib_lora.ui.tab import TrainerTab

MAX_GRID_IMAGES = 64
# a click on the grid: its own pixel size (scrolling) <-> shrunk to the page's width (style.css, .lt-full)
GRID_ZOOM_JS = (
    "() => { const root = window.gradioApp ? gradioApp() : document;"
    " const grid = root.querySelector('#lora_trainer_grid'); if (grid) grid.classList.toggle('lt-full'); return []; }"
)


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
        self.grid = gr.Image(
            label="Epoch x prompt grid (click it: full size / fit the page)", type="pil", interactive=False,
            elem_id="lora_trainer_grid",
        )  # fmt: skip
        self.result = gr.HTML(elem_id="lora_trainer_test_result")
        with gr.Row():
            self.send_epoch = gr.Dropdown([], label="Epoch for txt2img", elem_id="lora_trainer_send_epoch")
            self.send = gr.Button("Send to txt2img", elem_id="lora_trainer_send")
        self.send_prompt = gr.Textbox(label="Prompt for txt2img", elem_id="lora_trainer_send_prompt")
        self.build_scoring()

    def build_scoring(self) -> None:
        """The automatic pick: settings, cost, Score / Stop, the chart with the pick, Keep this one."""
        self.report: scoring.ScoreReport | None = None
        with gr.Accordion("Pick the best epoch automatically", open=True):
            gr.Markdown(
                "Renders every epoch file at fixed seeds and lets the WD tagger read the images: "
                "**fidelity** (the character's core tags appear), **flexibility** (new outfits, places and poses "
                "are followed), **drift** (without the activation tag the LoRA changes little). "
                "See the README for what the scores mean and their limits."
            )
            with gr.Row():
                self.score_seeds = gr.Textbox(
                    value=", ".join(str(s) for s in scoring.DEFAULT_SEEDS), label="Scoring seeds",
                    elem_id="lora_trainer_score_seeds",
                )  # fmt: skip
                self.score_tagger = gr.Textbox(
                    value=self.host.settings().tagger_model, label="Tagger (a model name or a folder with model.onnx)",
                    elem_id="lora_trainer_score_tagger",
                )  # fmt: skip
            with gr.Row():
                self.score_flex = gr.Textbox(
                    value="\n".join(scoring.DEFAULT_FLEXIBILITY_PROMPTS), lines=3,
                    label="Flexibility prompts (one per line; added after the activation text)",
                    elem_id="lora_trainer_score_flex",
                )  # fmt: skip
                self.score_drift = gr.Textbox(
                    value="\n".join(scoring.DEFAULT_DRIFT_PROMPTS), lines=3,
                    label="Drift prompts (one per line; without the activation text)", elem_id="lora_trainer_score_drift",
                )  # fmt: skip
            with gr.Row():
                self.score_button = gr.Button("Score epochs", variant="primary", elem_id="lora_trainer_score")
                self.score_stop = gr.Button("Stop scoring", elem_id="lora_trainer_score_stop")
            self.score_task = gr.Textbox(visible=False, elem_id="lora_trainer_score_task")
            self.score_cost = gr.HTML(elem_id="lora_trainer_score_cost")
            self.score_result = gr.HTML(elem_id="lora_trainer_score_result")
            with gr.Row():
                self.keep_choice = gr.Dropdown([], label="Epoch to keep", elem_id="lora_trainer_keep_choice")
                self.keep_button = gr.Button("Keep this one", elem_id="lora_trainer_keep")
            self.keep_result = gr.HTML(elem_id="lora_trainer_keep_result")

    def wire(self) -> None:
        train = self.tab.train
        where = [train.name, train.output_choice, train.output_custom]
        listing = [self.epochs, self.send_epoch, self.prompts, self.result]
        self.refresh.click(self.list_epochs, [*where, self.tab.dataset.folder, self.prompts], listing)
        self.tab.test_tab.select(self.list_epochs, [*where, self.tab.dataset.folder, self.prompts], listing)
        # the pick the scoring after training stored, ready for "Keep this one" without scoring again
        self.refresh.click(self.stored_pick, where, [self.keep_choice])
        self.tab.test_tab.select(self.stored_pick, where, [self.keep_choice])
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
        self.grid.select(None, None, None, **js_kwargs(GRID_ZOOM_JS))  # in the browser only
        extra = list(hook(self.host, "txt2img_outputs", list)())
        send_js = hook(self.host, "send_to_txt2img_js", lambda: None)()
        self.send.click(
            self.send_to_txt2img, [self.send_epoch, self.prompts, self.negative, self.weight],
            [self.send_prompt, self.result, *extra], **js_kwargs(send_js),
        )  # fmt: skip
        self._extra_outputs = len(extra)
        score_inputs = [
            self.score_task, *where, self.score_seeds, self.score_flex, self.score_drift, self.score_tagger, self.weight,
            self.width, self.height, self.steps, self.cfg,
        ]  # fmt: skip
        for box in (self.score_seeds, self.score_flex, self.score_drift):
            box.change(
                self.scoring_cost, [*where, self.score_seeds, self.score_flex, self.score_drift], [self.score_cost]
            )
        self.refresh.click(
            self.scoring_cost, [*where, self.score_seeds, self.score_flex, self.score_drift], [self.score_cost]
        )
        self.score_button.click(
            self.host.wrap_long_handler(self.score_epochs, 4), score_inputs,
            [self.score_result, self.keep_choice, self.keep_result, self.score_cost],
            **js_kwargs(long_js(self.host, "score")),
        )  # fmt: skip
        self.score_stop.click(self.stop_scoring, [], [self.score_cost])
        self.keep_button.click(
            self.keep_epoch,
            [*where, self.keep_choice],
            [self.keep_result, self.keep_choice, self.epochs, self.send_epoch],
        )

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
            # on opening the sub-tab, before any grid or score
            html.message(text, "ok") + _scored_after_training(found, name.strip()) + self._host_note(),
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
        text = f"{plural(len(result.row_labels), 'file')} x {plural(len(result.column_labels), 'prompt')}.{saved}"
        return [result.grid, html.message(text, "ok") + self._host_note()]

    def _host_note(self) -> str:
        """The host's warning about why epochs may render alike (webui FP8 weight), or nothing."""
        note = hook(self.host, "epoch_test_note")
        text = note() if note else None
        return html.message(text, "warning") if text else ""

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
                text = "Copy the text of 'Prompt for txt2img' below into your txt2img prompt."
                return [prompt, html.message(text), *[gr.update()] * extra]
            updates, text = send(prompt, negative or "")
            return [prompt, html.message(text, "ok"), *list(updates)[:extra], *[gr.update()] * (extra - len(updates))]
        except UserError as exc:
            return [gr.update(), html.error(str(exc)), *[gr.update()] * extra]

    # ------------------------------------------------------------------ automatic pick
    def _score_settings(self, seeds: str, flex: str, drift: str, weight: Any = 1.0) -> scoring.ScoreSettings:
        try:
            values = tuple(int(v) for v in (seeds or "").replace(",", " ").split())
        except ValueError:
            raise UserError(f"Scoring seeds {seeds!r}: give whole numbers separated by commas.") from None
        if not values:
            raise UserError("Give at least one scoring seed (three or more to measure the noise).")
        value = number(weight, "The LoRA weight")
        return scoring.ScoreSettings(
            seeds=values,
            flexibility_prompts=tuple(line.strip() for line in (flex or "").splitlines() if line.strip()),
            drift_prompts=tuple(line.strip() for line in (drift or "").splitlines() if line.strip()),
            weight=1.0 if value is None else float(value),
        )

    def scoring_cost(self, name: str, choice: str, custom: str, seeds: str, flex: str, drift: str) -> str:
        """How many images a scoring run renders, before it starts."""
        try:
            settings = self._score_settings(seeds, flex, drift)
            found = (
                scoring.lora_family(resolve_output_dir(self.host, choice, custom), name) if (name or "").strip() else []
            )
        except UserError as exc:
            return html.message(str(exc)) + self._host_note()
        per = settings.images_per_epoch()
        total = per * len(found) + settings.base_images()
        return (
            html.message(
                f"Scoring renders {plural(per, 'image')} per epoch file ({plural(len(settings.seeds), 'seed')} x "
                f"{plural(1 + len(settings.flexibility_prompts) + len(settings.drift_prompts), 'prompt')})"
                + (f": {plural(total, 'image')} for {plural(len(found), 'file')}" if found else "")
                + " — about as long as a Test grid of that many images. It can be stopped at any time."
            )
            + self._host_note()
        )

    def _renderer(self, width: Any, height: Any, steps: Any, cfg: Any) -> scoring.Renderer:
        """The host's Test-grid renderer, one LoRA file at a time, with the Test image settings."""
        return grid_renderer(
            self.host.render_grid, width=number(width, "The width", 64, integer=True),
            height=number(height, "The height", 64, integer=True),
            steps=number(steps, "The sampling steps", 1, integer=True), cfg_scale=number(cfg, "The CFG scale", 0),
        )  # fmt: skip

    # a refusal goes where the report would be (the user looks there) and in the cost line (the
    # webui appends its "Time taken" to the last output, which must stay HTML)
    @guarded(4, status=(0, -1))
    def score_epochs(
        self,
        task_id: str, name: str, choice: str, custom: str, seeds: str, flex: str, drift: str, tagger_name: str, weight: Any,
        width: Any = None, height: Any = None, steps: Any = None, cfg: Any = None,
    ) -> list[Any]:  # fmt: skip
        settings = self._score_settings(seeds, flex, drift, weight)
        render = self._renderer(width, height, steps, cfg)
        folder = resolve_output_dir(self.host, choice, custom)
        files = scoring.lora_family(folder, name)

        def job(events, stop):
            model = (tagger_name or "").strip() or self.host.settings().tagger_model
            tagger = scoring.load_tag_scorer(model, events)
            return scoring.score_epochs(files, render, tagger, settings, events, stop)

        status = self.host.jobs.run(
            "score", f"Scoring {len(files)} files of {name.strip()}", job, inner=host_events(self.host)
        )
        if status.state == "failed":
            raise UserError(status.error or "Scoring failed.")
        if status.state == "stopped" or status.result is None:
            return [
                html.message("Scoring stopped; nothing was changed.", "warning"),
                gr.update(),
                gr.update(),
                gr.update(),
            ]
        report: scoring.ScoreReport = status.result
        self.report = report
        labels = [s.label for s in report.scores]
        self.files.update({s.label: p for s, p in zip(report.scores, report.files)})
        best = report.best.label if report.best else None
        cost = html.message(f"{report.images} images rendered and tagged in {report.seconds:.0f} s.", "ok")
        cost += self._host_note()  # flat scores under the webui's FP8 weight: the reason stays in view
        # a new report: an earlier Keep message (or its "score first" error) no longer applies
        return [score_report_html(report), gr.update(choices=labels, value=best), "", cost]

    def stop_scoring(self) -> str:
        job = self.host.jobs.current("score")
        if job is None or job.state not in ("running", "queued"):
            return html.message("No scoring is running.")
        self.host.jobs.stop(job.id)
        return html.message("Stopping after the current image; nothing is changed.", "warning")

    def stored_pick(self, name: str, choice: str, custom: str) -> Any:
        """ "Epoch to keep" set to the file the scoring after training recommended (the final file's
        metadata), so Keep this one works without scoring again; unchanged when there is no confident
        stored pick, or a Score in this tab has already reported on these files."""
        try:
            folder = resolve_output_dir(self.host, choice, custom)
            family = scoring.lora_family(folder, name.strip()) if (name or "").strip() else []
        except UserError:
            return gr.update()
        final = next((f.path for f in family if f.path.stem == name.strip()), None)
        picked = scoring.written_pick(final)[1] if final is not None and len(family) > 1 else None
        stems = [f.path.stem for f in family]
        if picked not in stems:
            return gr.update()
        if self.report is not None and {p.resolve() for p in self.report.files} == {f.path.resolve() for f in family}:
            return gr.update()  # the Test tab's own score of these files stands
        self.files.update({f.path.stem: f.path for f in family})
        return gr.update(choices=stems, value=picked)

    @guarded(4, status=0)
    def keep_epoch(self, name: str, choice: str, custom: str, label: str) -> list[Any]:
        """Keep ``label`` as the LoRA; the epoch lists then show what is left in the folder (the moved
        files are gone from it, so a grid or txt2img of them would fail)."""
        if not label:
            raise UserError("Score the epochs first (or pick the epoch to keep).")
        folder = resolve_output_dir(self.host, choice, custom)
        path = self.files.get(label)
        if path is None and (name or "").strip():  # a stored pick's file, listed by its stem (see stored_pick)
            path = next((f.path for f in scoring.lora_family(folder, name.strip()) if f.path.stem == label), None)
        if path is None:
            raise UserError(f"{label} is no longer listed; score or refresh again.")
        result = scoring.keep_epoch(path, folder, name.strip())
        refresh = hook(self.host, "refresh_loras")
        if refresh:
            refresh()
        text = (
            f"Kept {result.source.stem} as {result.kept.name}. The {len(result.archived)} files of the run are in "
            f"{Path(folder) / scoring.ARCHIVE_DIR} (moved, not deleted)."
        )
        labels = [f.label for f in self._list(name, choice, custom)]
        return [
            html.message(text, "ok"),
            gr.update(choices=[], value=None),
            gr.update(choices=labels, value=labels),
            gr.update(choices=labels, value=labels[-1] if labels else None),
        ]


def _scored_after_training(found: list[epoch_files.LoraFile], name: str) -> str:
    """The pick the scoring after training wrote into the final file (score_epochs), in its words."""
    final = next((f.path for f in found if f.path.stem == name), None)
    words, picked = scoring.written_pick(final) if final else (None, None)
    if words and len(found) > 1 and picked in {f.path.stem for f in found}:
        words += " Keep this one (below) keeps it without scoring again."
    return html.message(f"Scored after training: {words}", "info") if words else ""


def score_chart(report: scoring.ScoreReport, width: int = 640, height: int = 240) -> str:
    """Per-epoch lines of the scores (0..1) and the validation loss (its own scale, dashed), the
    recommended epoch marked by a band and its label."""
    scores = report.scores
    n = len(scores)
    left, right, top, bottom = 40, 50, 26, 30  # the legend sits in the band above the plot, never on a line
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n)

    def y(v: float) -> float:
        return top + (1 - max(0.0, min(1.0, v))) * plot_h

    series = [
        ("score", "#2563eb", [s.score for s in scores], 2.5),
        ("fidelity", "#16a34a", [s.fidelity for s in scores], 1.5),
        ("flexibility", "#9333ea", [s.flexibility for s in scores], 1.5),
        ("drift", "#dc2626", [s.drift for s in scores], 1.5),
    ]
    parts = [
        f'<svg class="lt-score-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        'role="img" aria-label="Scores by epoch">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#8884"/>',
    ]
    for tick in (0.0, 0.5, 1.0):
        parts.append(
            f'<text x="{left - 4}" y="{y(tick) + 4:.1f}" text-anchor="end" font-size="11" fill="#888">{tick:g}</text>'
        )
    pick = report.pick
    for i in pick.tied if not pick.confident else []:
        parts.append(
            f'<rect x="{x(i) - plot_w / n / 2:.1f}" y="{top}" width="{plot_w / n:.1f}" height="{plot_h}" fill="#eab30822"/>'
        )
    if pick.best is not None:
        colour = "#16a34a33" if pick.confident else "#eab30855"
        parts.append(
            f'<rect class="lt-score-pick" x="{x(pick.best) - plot_w / n / 2:.1f}" y="{top}" width="{plot_w / n:.1f}" '
            f'height="{plot_h}" fill="{colour}"><title>recommended: {html_text.escape(scores[pick.best].label)}</title></rect>'
        )
    for i, s in enumerate(scores):
        label = s.label.rsplit("-", 1)[-1].lstrip("0") if "-" in s.label else "final"
        parts.append(
            f'<text x="{x(i):.1f}" y="{height - 10}" text-anchor="middle" font-size="11" fill="#888">{html_text.escape(label or s.label)}</text>'
        )
    for name, colour, values, stroke in series:
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="{stroke}"><title>{name}</title></polyline>'
        )
        for i, v in enumerate(values):
            parts.append(
                f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"><title>{name} {v:.3f}</title></circle>'
            )
    losses = [(i, s.validation_loss) for i, s in enumerate(scores) if s.validation_loss is not None]
    if losses:
        low, high = min(v for _, v in losses), max(v for _, v in losses)
        span = (high - low) or 1.0

        def yl(v: float) -> float:
            return top + (1 - (v - low) / span * 0.8 - 0.1) * plot_h

        points = " ".join(f"{x(i):.1f},{yl(v):.1f}" for i, v in losses)
        parts.append(
            f'<polyline class="lt-score-val" points="{points}" fill="none" stroke="#ea580c" stroke-dasharray="5,3" stroke-width="1.5"/>'
        )
        for i, v in losses:
            parts.append(
                f'<circle cx="{x(i):.1f}" cy="{yl(v):.1f}" r="2.5" fill="#ea580c"><title>validation loss {v:.4f}</title></circle>'
            )
        parts.append(
            f'<text x="{width - right + 4}" y="{yl(high) + 4:.1f}" font-size="10" fill="#ea580c">{high:.4g}</text>'
        )
        parts.append(
            f'<text x="{width - right + 4}" y="{yl(low) + 4:.1f}" font-size="10" fill="#ea580c">{low:.4g}</text>'
        )
    legend = [(n, c) for n, c, _, _ in series] + ([("validation loss", "#ea580c")] if losses else [])
    for k, (name, colour) in enumerate(legend):
        parts.append(f'<text x="{left + 6 + k * 95}" y="{top - 8}" font-size="11" fill="{colour}">{name}</text>')
    parts.append("</svg>")
    return "".join(parts)


def score_report_html(report: scoring.ScoreReport) -> str:
    """The chart, the pick in words and the table."""
    kind = "ok" if report.pick.confident else "warning"
    head = "".join(f"<th>{h}</th>" for h in scoring.TABLE_HEADERS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html_text.escape(cell)}</td>" for cell in row) + "</tr>" for row in report.table_rows()
    )
    core = ", ".join(report.core_tags) or "(none: fidelity not measured)"
    return (
        f'<div class="lt-score">{score_chart(report)}{html.message(report.pick.reason, kind)}'
        f'<table class="lt-score-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        f"<p>Core tags: {html_text.escape(core)}. * = recommended, ~ = within the seed noise of it.</p></div>"
    )
