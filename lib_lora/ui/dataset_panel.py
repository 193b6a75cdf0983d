"""The Dataset sub-tab: choose or create the folder, see its training folders, warnings and buckets;
import from a booru; review duplicates."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from lib_lora.common.errors import UserError
from lib_lora.common.text import plural, plural_word, sentence
from lib_lora.config import build_config
from lib_lora.jobs import dataset_info, editor, importing
from lib_lora.ui import html
from lib_lora.ui.common import guarded, hook, host_events, job_html
from lib_lora.ui.compat import hidden_progress

if TYPE_CHECKING:
    from lib_lora.ui.tab import TrainerTab

# the settings the bucket table follows (taken from the Train sub-tab's form)
BUCKET_FIELDS = (
    "resolution", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale",
    "train_batch_size", "max_train_epochs", "max_train_steps", "gradient_accumulation_steps", "caption_extension",
    "reg_data_dir",
)  # fmt: skip
FOLDER_HEADERS = ("folder", "repeats", "class tokens", "images", "captioned", "note")
RATING_LABELS = {"g": "general", "s": "sensitive", "q": "questionable", "e": "explicit"}


class DatasetPanel:
    def __init__(self, tab: TrainerTab) -> None:
        self.tab = tab
        self.host = tab.host

    # ------------------------------------------------------------------ layout
    def build(self) -> None:
        with gr.Row():
            self.folder = gr.Textbox(
                label="Dataset folder",
                placeholder="the folder that holds the N_name training folders, e.g. /data/mychar",
                info="Training images go in subfolders named N_name: N = how often each image is repeated per epoch.",
                elem_id="lora_trainer_dataset_folder",
                scale=4,
            )
            self.refresh_button = gr.Button("Refresh dataset", elem_id="lora_trainer_dataset_refresh", scale=1)
        with gr.Row():
            self.new_name = gr.Textbox(
                label="New training folder name", placeholder="e.g. mychar", elem_id="lora_trainer_new_name"
            )
            self.new_repeats = gr.Number(
                label="Repeats of the new folder", value=10, precision=0, elem_id="lora_trainer_new_repeats"
            )
            self.create_button = gr.Button("Create training folder", elem_id="lora_trainer_create_folder")
            self.demo_button = gr.Button("Create demo dataset in this folder", elem_id="lora_trainer_make_demo")
        self.status = gr.HTML(elem_id="lora_trainer_dataset_status")
        self.overview = gr.HTML(elem_id="lora_trainer_dataset_overview")
        gr.Markdown("**Buckets and steps per epoch** (follow the Train tab's resolution, bucket and batch settings)")
        self.buckets = gr.HTML(elem_id="lora_trainer_buckets")
        with gr.Accordion("Import from a booru", open=False, elem_id="lora_trainer_import"):
            self._build_import()
        with gr.Accordion("Find duplicates", open=False, elem_id="lora_trainer_dupes"):
            self._build_dupes()

    def _build_import(self) -> None:
        with gr.Row():
            self.site = gr.Dropdown(
                list(importing.SITES), value="danbooru", label="Booru site", elem_id="lora_trainer_site"
            )
            self.query = gr.Textbox(
                label="Booru tags", placeholder="e.g. irene_(kanniiepan) solo", elem_id="lora_trainer_query"
            )
            self.limit = gr.Number(label="Number of images", value=50, precision=0, elem_id="lora_trainer_limit")
        with gr.Row():
            self.ratings = gr.CheckboxGroup(
                list(importing.RATINGS), value=["g", "s"], label="Ratings (none = all)", elem_id="lora_trainer_ratings"
            )
            self.import_name = gr.Textbox(
                label="Import into folder name", placeholder="e.g. mychar", elem_id="lora_trainer_import_name"
            )
            self.import_repeats = gr.Number(
                label="Import repeats", value=10, precision=0, elem_id="lora_trainer_import_repeats"
            )
            self.import_captions = gr.Radio(
                ["booru", "none"], value="booru", label="Captions from", info="booru tags, or none (tag them later)",
                elem_id="lora_trainer_import_captions",
            )  # fmt: skip
        with gr.Row():
            self.user = gr.Textbox(label="Login / user ID (optional)", elem_id="lora_trainer_user")
            self.api_key = gr.Textbox(label="API key (optional)", type="password", elem_id="lora_trainer_api_key")
            self.base_url = gr.Textbox(label="Base URL (mirror, optional)", elem_id="lora_trainer_base_url")
        with gr.Row():
            self.import_start = gr.Button("Start import", variant="primary", elem_id="lora_trainer_import_start")
            self.import_stop = gr.Button("Stop import", elem_id="lora_trainer_import_stop")
        self.import_status = gr.HTML(elem_id="lora_trainer_import_status")
        # the Start button's own answer (a refused request, the summary): the polled status above
        # would overwrite it at its next tick
        self.import_result = gr.HTML(elem_id="lora_trainer_import_result")

    def _build_dupes(self) -> None:
        self.dupe_state = gr.State(None)
        with gr.Row():
            self.distance = gr.Slider(
                0, 16, value=4, step=1, label="Duplicate distance",
                info="0 exact, 2 very similar, 4 similar, 8 speculative (perceptual hash bits)",
                elem_id="lora_trainer_distance",
            )  # fmt: skip
            self.dupe_scan = gr.Button("Scan for duplicates", elem_id="lora_trainer_dupe_scan")
            self.dupe_move_all = gr.Button("Move certain duplicates to _duplicates", elem_id="lora_trainer_dupe_move")
        self.dupe_summary = gr.HTML(elem_id="lora_trainer_dupe_summary")
        with gr.Row():
            self.pair_left = gr.Image(
                label="Left image", type="filepath", interactive=False, elem_id="lora_trainer_pair_left"
            )
            self.pair_right = gr.Image(
                label="Right image", type="filepath", interactive=False, elem_id="lora_trainer_pair_right"
            )
        self.pair_info = gr.HTML(elem_id="lora_trainer_pair_info")
        with gr.Row():
            self.pair_prev = gr.Button("Previous pair", elem_id="lora_trainer_pair_prev")
            self.keep_both = gr.Button("Keep both", elem_id="lora_trainer_pair_keep")
            self.move_left = gr.Button("Move left to _duplicates", elem_id="lora_trainer_pair_move_left")
            self.move_right = gr.Button("Move right to _duplicates", elem_id="lora_trainer_pair_move_right")
            self.pair_next = gr.Button("Next pair", elem_id="lora_trainer_pair_next")

    # ------------------------------------------------------------------ events
    def bucket_inputs(self) -> list[Any]:
        form = self.tab.train.form.components
        return [form[name] for name in BUCKET_FIELDS if name in form]

    def bucket_names(self) -> list[str]:
        form = self.tab.train.form.components
        return [name for name in BUCKET_FIELDS if name in form]

    def wire(self) -> None:
        view = [self.overview, self.buckets, self.status]
        inputs = [self.folder, *self.bucket_inputs()]
        self.refresh_button.click(self.refresh, inputs, view)
        self.folder.submit(self.refresh, inputs, view)
        self.folder.blur(self.refresh, inputs, view, **hidden_progress())
        self.create_button.click(
            self.create, [self.folder, self.new_name, self.new_repeats, *self.bucket_inputs()], view
        )
        self.demo_button.click(self.make_demo, inputs, view)
        for component in self.bucket_inputs():
            component.change(self.refresh_buckets, inputs, [self.buckets], **hidden_progress())

        import_inputs = [
            self.site, self.query, self.folder, self.import_name, self.import_repeats, self.limit, self.ratings,
            self.import_captions, self.user, self.api_key, self.base_url,
        ]  # fmt: skip
        poll = self.import_start.click(self.poll_import, None, [self.import_status], every=1, **hidden_progress())
        run = self.import_start.click(self.start_import, import_inputs, [self.import_result])
        run.then(self.poll_import, None, [self.import_status], cancels=[poll]).then(self.refresh, inputs, view)
        self.import_stop.click(self.stop_import, None, [self.import_status])

        pair = [self.dupe_state, self.dupe_summary, self.pair_left, self.pair_right, self.pair_info]
        self.dupe_scan.click(self.scan_duplicates, [self.folder, self.distance], pair)
        self.dupe_move_all.click(self.move_certain, [self.dupe_state], pair).then(self.refresh, inputs, view)
        self.pair_prev.click(self.show_previous, [self.dupe_state], pair)
        self.pair_next.click(self.show_next, [self.dupe_state], pair)
        self.keep_both.click(self.keep_pair, [self.dupe_state], pair)
        self.move_left.click(self.move_pair_left, [self.dupe_state], pair).then(self.refresh, inputs, view)
        self.move_right.click(self.move_pair_right, [self.dupe_state], pair).then(self.refresh, inputs, view)

    # ------------------------------------------------------------------ handlers: folder
    def _config(self, values: Sequence[Any]):
        form_values = self.tab.train.form.values_subset(self.bucket_names(), values)
        return build_config(form_values, check=False)

    def _buckets_html(self, scan: Any, values: Sequence[Any]) -> str:
        if scan is None:
            return html.message("The bucket table appears when the dataset folder holds usable images.")
        try:
            cfg = self._config(values)
            summary = dataset_info.bucket_summary(scan, cfg, self.host.model_info().family)
        except UserError as exc:
            return html.error(str(exc))
        rows = [(res, images, count, batches) for res, images, count, batches in summary.rows]
        text = (
            f"{summary.steps_per_epoch} steps per epoch at batch {cfg.train_batch_size}; "
            f"{summary.epochs} epochs = {summary.total_steps} steps."
        )
        if summary.reg_samples:
            text += f" Includes {summary.reg_samples} regularization images per epoch."
        parts = [html.table(("bucket (w x h)", "images", "with repeats", "batches"), rows), html.message(text)]
        parts += [html.message(w, "warning") for w in summary.warnings]
        return "".join(parts)

    def _overview_html(self, overview: dataset_info.DatasetOverview) -> str:
        rows = [
            (f.name, f.repeats if f.repeats is not None else "—", f.class_tokens, f.images, f.captioned, f.note)
            for f in overview.folders
        ]
        parts = [html.table(FOLDER_HEADERS, rows, empty="No subfolders yet.")]
        if overview.scan is not None:
            parts.append(html.message(overview.scan.summary(), "ok"))
        if overview.error:
            parts.append(html.error(overview.error))
        parts += [html.message(w, "warning") for w in overview.warnings]
        return "".join(parts)

    def _view(self, folder: str, values: Sequence[Any], status: str = "") -> list[Any]:
        overview = dataset_info.overview(folder, self._caption_extension(values))
        if overview.error is None or overview.scan is not None:  # a dataset, even one training refuses as it is
            allow = hook(self.host, "allow_folder")  # the standalone app may show its files
            if allow:
                allow(str(overview.root))
            status = status + html.message(f"Dataset folder: {overview.root}")
        return [self._overview_html(overview), self._buckets_html(overview.scan, values), status]

    def _caption_extension(self, values: Sequence[Any]) -> str:
        names = self.bucket_names()
        if "caption_extension" in names:
            return str(values[names.index("caption_extension")] or ".txt").strip() or ".txt"
        return ".txt"

    @guarded(3)
    def refresh(self, folder: str, *values: Any) -> list[Any]:
        return self._view(folder, values)

    @guarded(1)
    def refresh_buckets(self, folder: str, *values: Any) -> str:
        scan = dataset_info.scan_or_none(folder, self._caption_extension(values))
        return self._buckets_html(scan, values)

    @guarded(3)
    def create(self, folder: str, name: str, repeats: Any, *values: Any) -> list[Any]:
        created = dataset_info.create_dataset(folder, name, repeats)
        return self._view(folder, values, html.message(f"Created {created}; put the images of {name!r} in it.", "ok"))

    @guarded(3)
    def make_demo(self, folder: str, *values: Any) -> list[Any]:
        result = dataset_info.make_demo_dataset(folder)
        dataset_info.forget_scan(folder)
        return self._view(folder, values, html.message(sentence(result.summary()) + ".", "ok"))

    # ------------------------------------------------------------------ handlers: import
    @guarded(1)
    def start_import(
        self, site: str, query: str, folder: str, name: str, repeats: Any, limit: Any, ratings: list[str],
        captions: str, user: str, api_key: str, base_url: str,
    ) -> str:  # fmt: skip
        request = importing.ImportRequest(
            site=site, tags=query, dataset=folder, name=name, repeats=repeats, limit=limit, ratings=tuple(ratings or ()),
            captions=captions, user=user, api_key=api_key, base_url=base_url,
        )  # fmt: skip
        request.options()  # check everything before the job starts
        title = f"Import {query.strip()} from {site}"
        status = self.host.jobs.run(
            "import",
            title,
            lambda events, stop: importing.run_import(request, events, stop),
            inner=host_events(self.host),
        )
        dataset_info.forget_scan(folder)
        if status.state == "failed":
            return html.error(status.error or "The import failed.")
        return html.message(importing.import_summary(status.result), "ok" if status.state == "done" else "warning")

    @guarded(1)
    def poll_import(self) -> str:
        return job_html(self.host.jobs.current("import"), "No import yet.", show_error=False)  # the result says it

    def stop_import(self) -> str:
        job = self.host.jobs.current("import")
        if job is None or job.state not in ("running", "queued"):
            return html.message("No import is running.")
        self.host.jobs.stop(job.id)
        return html.message("Stopping the import after the current file...", "warning")

    # ------------------------------------------------------------------ handlers: duplicates
    def _pair_outputs(self, state: dict | None, status: str = "") -> list[Any]:
        if not state:
            return [state, status or html.message("Scan the dataset folder to find duplicates."), None, None, ""]
        scan = state["scan"]
        groups = len(scan.groups)
        certain = len(scan.duplicates)
        pending = [i for i, _ in enumerate(scan.review) if i not in state["done"]]
        summary = (
            f"{plural(len(scan.images), 'image')} scanned: {plural(certain, 'certain duplicate')} in "
            f"{plural(groups, 'group')}"
            + (" (moved)" if state.get("moved") else "")
            + f"; {plural(len(scan.review), 'similar pair')} to review ({len(pending)} left)."
        )
        parts = [status, html.message(summary, "ok")]
        if scan.skipped:
            skipped = len(scan.skipped)
            parts.append(
                html.message(f"{plural(skipped, 'unreadable image')} {plural_word(skipped, 'was')} skipped.", "warning")
            )
        if not scan.review:
            return [state, "".join(parts), None, None, html.message("No pairs to review.")]
        index = state["index"] % len(scan.review)
        pair = scan.review[index]
        info = (
            f"Pair {index + 1} of {len(scan.review)}: distance {pair.distance} ({pair.reason}). "
            f"Left: {pair.a.rel} ({pair.a.width}x{pair.a.height}, {pair.a.size // 1024} KiB); "
            f"right: {pair.b.rel} ({pair.b.width}x{pair.b.height}, {pair.b.size // 1024} KiB)."
        )
        decided = state["done"].get(index)
        level = "info" if decided is None else "ok"
        info_html = html.message(info + (f" Decided: {decided}." if decided else ""), level)
        left = str(editor.thumbnail(pair.a.path, 384)) if pair.a.path.exists() else None
        right = str(editor.thumbnail(pair.b.path, 384)) if pair.b.path.exists() else None
        return [state, "".join(parts), left, right, info_html]

    @guarded(5, status=1)
    def scan_duplicates(self, folder: str, distance: Any) -> list[Any]:
        status = self.host.jobs.run(
            "dedupe", "Duplicate scan", lambda events, stop: importing.scan_duplicates(folder, distance, events, stop),
            inner=host_events(self.host),
        )  # fmt: skip
        if status.state == "failed":
            raise UserError(status.error or "The duplicate scan failed.")
        return self._pair_outputs({"scan": status.result, "index": 0, "done": {}, "moved": False})

    @guarded(5, status=1)
    def move_certain(self, state: dict | None) -> list[Any]:
        if not state:
            raise UserError("Scan for duplicates first.")
        if state.get("moved"):
            return self._pair_outputs(state, html.message("The certain duplicates were already moved."))
        result = importing.move_exact_duplicates(state["scan"])
        state = {**state, "moved": True}
        where = f" Report: {result.report}." if result.report else ""
        dataset_info.forget_scan(state["scan"].root)
        return self._pair_outputs(
            state, html.message(f"Moved {len(result.moved)} duplicates to _duplicates.{where}", "ok")
        )

    def _step(self, state: dict | None, delta: int) -> list[Any]:
        if not state:
            raise UserError("Scan for duplicates first.")
        state = {**state, "index": state["index"] + delta}
        return self._pair_outputs(state)

    @guarded(5, status=1)
    def show_next(self, state: dict | None) -> list[Any]:
        return self._step(state, 1)

    @guarded(5, status=1)
    def show_previous(self, state: dict | None) -> list[Any]:
        return self._step(state, -1)

    def _decide(self, state: dict | None, action: str) -> list[Any]:
        if not state or not state["scan"].review:
            raise UserError("There is no pair to decide on: scan for duplicates first.")
        scan = state["scan"]
        index = state["index"] % len(scan.review)
        if index in state["done"]:
            raise UserError(f"Pair {index + 1} was already decided ({state['done'][index]}).")
        pair = scan.review[index]
        if action == "keep both":
            importing.keep_both(scan.root, pair.a.path, pair.b.path)
            text = f"Kept both {pair.a.rel} and {pair.b.rel}; they will not be paired again."
        else:
            image = pair.a if action == "moved left" else pair.b
            target = importing.move_to_duplicates(scan.root, image.path)
            text = f"Moved {image.rel} to {Path(target).relative_to(scan.root).as_posix()}."
            dataset_info.forget_scan(scan.root)
        done = {**state["done"], index: action}
        state = {**state, "done": done, "index": index + 1}
        return self._pair_outputs(state, html.message(text, "ok"))

    @guarded(5, status=1)
    def keep_pair(self, state: dict | None) -> list[Any]:
        return self._decide(state, "keep both")

    @guarded(5, status=1)
    def move_pair_left(self, state: dict | None) -> list[Any]:
        return self._decide(state, "moved left")

    @guarded(5, status=1)
    def move_pair_right(self, state: dict | None) -> list[Any]:
        return self._decide(state, "moved right")
