"""The Tag & edit sub-tab: run the tagger over the dataset, then edit the captions.

The editor holds one :class:`CaptionSession` per browser session (a ``gr.State``). Filters decide
which images are shown and which a batch operation changes; nothing is written until Save, which
backs up the previous captions and reports captions changed on disk meanwhile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from lib_lora.common.errors import UserError
from lib_lora.common.text import plural, plural_word, sentence
from lib_lora.jobs import dataset_info, editor, tagging
from lib_lora.ui import html
from lib_lora.ui.common import guarded, host_events, job_html, long_js, number, user_path
from lib_lora.ui.compat import hidden_progress, js_kwargs, unchanged

if TYPE_CHECKING:
    from lib_lora.ui.tab import TrainerTab

# state, gallery, page info, tag list, suggestions, preview, history, status, then the selected image's
# info, caption box and the caption the box was filled with (every change of the session refreshes the box)
N_EDITOR_OUTPUTS = 11
STATUS = 7  # the status output's position
N_VIEW = 16  # inputs every editor handler gets first: see View
TAG_LIST_LIMIT = 300
CAPTION_PREVIEW_CHARS = 140


class EditorPanel:
    def __init__(self, tab: TrainerTab) -> None:
        self.tab = tab
        self.host = tab.host

    # ------------------------------------------------------------------ layout
    def build(self) -> None:
        settings = self.host.settings()
        with gr.Accordion("Tagger", open=True, elem_id="lora_trainer_tagger"):
            self.provider = gr.HTML(elem_id="lora_trainer_tagger_provider")
            with gr.Row():
                choices = tagging.model_choices()
                value = settings.tagger_model if settings.tagger_model in choices else tagging.DEFAULT_MODEL
                self.model = gr.Dropdown(
                    choices, value=value, label="Tagger model", info=tagging.model_note(value),
                    elem_id="lora_trainer_tagger_model",
                )  # fmt: skip
                self.local_model = gr.Textbox(
                    label="Local tagger folder (optional)",
                    placeholder="a folder with model.onnx and selected_tags.csv; wins over the list",
                    elem_id="lora_trainer_tagger_local",
                )
            with gr.Row():
                self.general_threshold = gr.Slider(
                    0, 1, value=settings.tagger_threshold, step=0.01, label="General tag threshold",
                    elem_id="lora_trainer_tagger_general",
                )  # fmt: skip
                self.character_threshold = gr.Slider(
                    0, 1, value=settings.tagger_character_threshold, step=0.01, label="Character tag threshold",
                    elem_id="lora_trainer_tagger_character",
                )  # fmt: skip
                self.general_mcut = gr.Checkbox(label="MCut for general tags", elem_id="lora_trainer_tagger_gmcut")
                self.character_mcut = gr.Checkbox(label="MCut for character tags", elem_id="lora_trainer_tagger_cmcut")
            with gr.Row():
                self.existing = gr.Radio(
                    list(tagging.EXISTING_POLICIES), value="skip", label="Existing captions",
                    info="skip keeps captioned images as they are", elem_id="lora_trainer_tagger_existing",
                )  # fmt: skip
                self.activation_tag = gr.Textbox(
                    label="Activation tag (written first)",
                    placeholder="e.g. mychar",
                    elem_id="lora_trainer_tagger_activation",
                )
                self.exclude_tags = gr.Textbox(
                    label="Tags to leave out", placeholder="comma-separated; re:regex allowed",
                    elem_id="lora_trainer_tagger_exclude",
                )  # fmt: skip
                self.tag_batch = gr.Number(
                    value=8, precision=0, label="Tagger batch size", elem_id="lora_trainer_tagger_batch"
                )
            with gr.Row():
                self.tag_start = gr.Button("Start tagging", variant="primary", elem_id="lora_trainer_tag_start")
                self.tag_stop = gr.Button("Stop tagging", elem_id="lora_trainer_tag_stop")
            self.tag_task = gr.Textbox(visible=False, elem_id="lora_trainer_tag_task")
            self.tag_progress = gr.HTML(elem_id="lora_trainer_tag_progress")
            self.tag_result = gr.HTML(elem_id="lora_trainer_tag_result")

        gr.Markdown("**Caption editor**")
        self.state = gr.State(None)
        with gr.Row():
            self.load_button = gr.Button("Load captions", variant="primary", elem_id="lora_trainer_editor_load")
            self.discard_button = gr.Button("Discard unsaved changes", elem_id="lora_trainer_editor_discard")
            self.undo_button = gr.Button("Undo", elem_id="lora_trainer_editor_undo")
            self.redo_button = gr.Button("Redo", elem_id="lora_trainer_editor_redo")
        self.status = gr.HTML(elem_id="lora_trainer_editor_status")
        with gr.Row():
            self.include = gr.Textbox(
                label="Show images with tags", placeholder="comma-separated", elem_id="lora_trainer_f_include"
            )
            self.include_mode = gr.Radio(
                ["and", "or"], value="and", label="Show when they have", elem_id="lora_trainer_f_include_mode"
            )
            self.exclude = gr.Textbox(
                label="Hide images with tags", placeholder="comma-separated", elem_id="lora_trainer_f_exclude"
            )
            self.exclude_mode = gr.Radio(
                ["or", "and"], value="or", label="Hide when they have", elem_id="lora_trainer_f_exclude_mode"
            )
        with gr.Row():
            self.search = gr.Textbox(label="Search tags", elem_id="lora_trainer_f_search")
            self.search_mode = gr.Dropdown(
                list(editor.SEARCH_MODES), value="contains", label="Search mode", elem_id="lora_trainer_f_search_mode"
            )
            self.filter_button = gr.Button("Apply filter", elem_id="lora_trainer_f_apply")
        with gr.Row():
            with gr.Column(scale=3):
                self.gallery = gr.Gallery(
                    label="Images (filtered)",
                    columns=6,
                    height=520,
                    object_fit="contain",
                    elem_id="lora_trainer_gallery",
                )
                with gr.Row():
                    self.prev_page = gr.Button("Previous page", elem_id="lora_trainer_page_prev")
                    self.page = gr.Number(value=1, precision=0, label="Page", elem_id="lora_trainer_page")
                    self.per_page = gr.Slider(
                        12, 200, value=48, step=12, label="Thumbnails per page", elem_id="lora_trainer_per_page"
                    )
                    self.next_page = gr.Button("Next page", elem_id="lora_trainer_page_next")
                self.page_info = gr.HTML(elem_id="lora_trainer_page_info")
            with gr.Column(scale=2):
                self.tag_list = gr.HTML(elem_id="lora_trainer_tag_list")
        with gr.Row():
            with gr.Column():
                self.selected = gr.State(None)
                self.shown_caption = gr.State(None)  # the caption the box was filled with
                self.selected_info = gr.HTML(elem_id="lora_trainer_selected_info")
                self.caption = gr.Textbox(
                    label="Caption of the selected image", lines=3, elem_id="lora_trainer_caption"
                )
                self.caption_apply = gr.Button("Apply caption edit", elem_id="lora_trainer_caption_apply")
            with gr.Column():
                self.suggestions = gr.HTML(elem_id="lora_trainer_suggestions")
                self.use_suggestions = gr.Button(
                    "Put suggestions in the remove box", elem_id="lora_trainer_use_suggestions"
                )
        gr.Markdown("**Batch edit** (applies to the images the filter shows)")
        with gr.Row():
            self.add_text = gr.Textbox(label="Tags to add", placeholder="e.g. mychar", elem_id="lora_trainer_add_text")
            self.add_where = gr.Radio(["front", "end"], value="front", label="Add at", elem_id="lora_trainer_add_where")
            self.add_button = gr.Button("Add tags", elem_id="lora_trainer_add")
        with gr.Row():
            self.remove_text = gr.Textbox(label="Tags to remove", elem_id="lora_trainer_remove_text")
            self.remove_button = gr.Button("Remove tags", elem_id="lora_trainer_remove")
        with gr.Row():
            self.find = gr.Textbox(label="Find", elem_id="lora_trainer_find")
            self.replace_with = gr.Textbox(
                label="Replace with", placeholder="empty = remove", elem_id="lora_trainer_replace_with"
            )
            self.regex = gr.Checkbox(label="Regular expression", elem_id="lora_trainer_regex")
            self.whole = gr.Checkbox(label="In the whole caption", elem_id="lora_trainer_whole")
            self.replace_button = gr.Button("Replace", elem_id="lora_trainer_replace")
        with gr.Row():
            self.front_text = gr.Textbox(label="Tags to move to the front", elem_id="lora_trainer_front_text")
            self.front_button = gr.Button("Move to front", elem_id="lora_trainer_front")
            self.sort_key = gr.Dropdown(
                list(editor.SORT_KEYS), value="frequency", label="Sort by", elem_id="lora_trainer_sort_key"
            )
            self.sort_keep = gr.Number(
                value=1, precision=0, label="Keep first tags in place", elem_id="lora_trainer_sort_keep"
            )
            self.sort_button = gr.Button("Sort tags", elem_id="lora_trainer_sort")
        with gr.Row():
            self.underscores_button = gr.Button("Underscores to spaces", elem_id="lora_trainer_underscores")
            self.dedupe_button = gr.Button("Remove duplicate tags", elem_id="lora_trainer_dedupe_tags")
        gr.Markdown("**Pending changes and save**")
        self.history = gr.HTML(elem_id="lora_trainer_history")
        self.preview = gr.HTML(elem_id="lora_trainer_preview")
        with gr.Row():
            self.conflict = gr.Radio(
                list(editor.CONFLICT_CHOICES), value="ask", label="When a caption changed on disk",
                info="ask: report it and keep your edit; overwrite; skip; reload the file's version",
                elem_id="lora_trainer_conflict",
            )  # fmt: skip
            self.save_button = gr.Button("Save captions", variant="primary", elem_id="lora_trainer_save")

    # ------------------------------------------------------------------ events
    def outputs(self) -> list[Any]:
        return [
            self.state,
            self.gallery,
            self.page_info,
            self.tag_list,
            self.suggestions,
            self.preview,
            self.history,
            self.status,
            self.selected_info,
            self.caption,
            self.shown_caption,
        ]

    def view_inputs(self) -> list[Any]:
        form = self.tab.train.form.components
        keep = [form[name] if name in form else gr.State(None) for name in ("keep_tokens", "keep_tokens_separator")]
        # the Train tab's mask source, so the gallery marks the images that have a loss mask
        masks = [form[name] if name in form else gr.State(None) for name in ("conditioning_data_dir", "alpha_mask")]
        return [
            self.state, self.include, self.include_mode, self.exclude, self.exclude_mode, self.search, self.search_mode,
            self.page, self.per_page, self.selected, self.shown_caption, self.activation_tag, *keep, *masks,
        ]  # fmt: skip

    def wire(self) -> None:
        folder = self.tab.dataset.folder
        out, view = self.outputs(), self.view_inputs()
        self.model.change(self.describe_model, [self.model], [self.model], **hidden_progress())

        self.tag_start_inputs = tag_inputs = [
            self.tag_task, folder, self.model, self.local_model, self.general_threshold, self.character_threshold,
            self.general_mcut, self.character_mcut, self.existing, self.activation_tag, self.exclude_tags, self.tag_batch,
            self.tab.caption_extension_input(),  # the captions go where training and the editor read them
        ]  # fmt: skip
        poll = self.tag_start.click(self.poll_tagging, None, [self.tag_progress], every=1, **hidden_progress())
        run = self.tag_start.click(
            self.host.wrap_long_handler(self.start_tagging, 1),
            tag_inputs,
            [self.tag_result],
            **js_kwargs(long_js(self.host, "tag")),
            **hidden_progress(),  # the progress panel above is the progress: no second bar with a wrong ETA
        )
        load_inputs = [*view, folder, self.tab.caption_extension_input()]
        run.then(self.poll_tagging, None, [self.tag_progress], cancels=[poll]).then(self.load, load_inputs, out)
        self.tag_stop.click(self.stop_tagging, None, [self.tag_progress])

        self.load_button.click(self.load, load_inputs, out)
        self.discard_button.click(self.discard, view, out)
        self.undo_button.click(self.undo, view, out)
        self.redo_button.click(self.redo, view, out)
        for trigger in (self.filter_button.click, self.include.submit, self.exclude.submit, self.search.submit):
            trigger(self.first_page, None, [self.page]).then(self.show, view, out)
        # the Page box never runs past the pages there are (Next on the last page stays there)
        paging = [self.state, self.per_page]
        self.prev_page.click(self.turn_page, [self.page, gr.State(-1), *paging], [self.page]).then(self.show, view, out)
        self.next_page.click(self.turn_page, [self.page, gr.State(1), *paging], [self.page]).then(self.show, view, out)
        self.page.submit(self.turn_page, [self.page, gr.State(0), *paging], [self.page]).then(self.show, view, out)
        form = self.tab.train.form.components
        for name in ("conditioning_data_dir", "alpha_mask"):  # a mask source chosen on the Train tab: new marks
            if name in form:
                form[name].change(self.refresh_marks, view, out, **hidden_progress())
        per_page_event = getattr(self.per_page, "release", None) or self.per_page.change
        per_page_event(self.show, view, out)

        self.gallery.select(
            self.select_image,
            [self.state, self.page, self.per_page],
            [self.selected, self.selected_info, self.caption, self.shown_caption],
        )
        self.caption_apply.click(self.edit_caption, [*view, self.caption], out)
        self.use_suggestions.click(self.suggestions_to_remove, view, [self.remove_text, self.status])
        self.add_button.click(self.add_tags, [*view, self.add_text, self.add_where], out)
        self.remove_button.click(self.remove_tags, [*view, self.remove_text], out)
        self.replace_button.click(self.replace, [*view, self.find, self.replace_with, self.regex, self.whole], out)
        self.front_button.click(self.move_to_front, [*view, self.front_text], out)
        self.sort_button.click(self.sort_tags, [*view, self.sort_key, self.sort_keep], out)
        self.underscores_button.click(self.underscores, view, out)
        self.dedupe_button.click(self.dedupe, view, out)
        self.save_button.click(self.save, [*view, self.conflict], out).then(
            self.tab.dataset.refresh, [folder, *self.tab.dataset.bucket_inputs()],
            [self.tab.dataset.overview, self.tab.dataset.buckets, self.tab.dataset.status],
        )  # fmt: skip

    # ------------------------------------------------------------------ tagging
    def describe_model(self, name: str) -> Any:
        return gr.update(info=tagging.model_note(name))

    def provider_html(self) -> str:
        notice = tagging.provider_notice("auto")
        return html.message(notice, "warning") if notice else html.message("Tagging runs on the GPU.", "ok")

    @guarded(1)
    def start_tagging(
        self, task_id: str, folder: str, model: str, local_model: str, general: float, character: float,
        general_mcut: bool, character_mcut: bool, existing: str, activation: str, exclude: str, batch: Any,
        caption_extension: str = ".txt",
    ) -> str:  # fmt: skip
        request = tagging.TagRequest(
            folder=folder, model=model, local_model=local_model, general_threshold=general,
            character_threshold=character, general_mcut=general_mcut, character_mcut=character_mcut,
            existing=existing, activation_tag=activation, exclude_tags=exclude,
            batch_size=int(number(batch, "The tagger batch size", 1, integer=True) or 8),
            caption_extension=(caption_extension or ".txt").strip() or ".txt",
        )  # fmt: skip
        request.options()  # every setting checked before the job starts
        status = self.host.jobs.run(
            "tag", f"Tagging {folder}", lambda events, stop: tagging.run_tagging(request, events, stop),
            inner=host_events(self.host),
        )  # fmt: skip
        dataset_info.forget_scan(folder)
        if status.state == "failed":
            return html.error(status.error or "Tagging failed.")
        level = "ok" if status.state == "done" else "warning"
        return html.message(tagging.summary(status.result), level)  # warnings: in the progress panel above

    @guarded(1)
    def poll_tagging(self) -> str:
        return job_html(self.host.jobs.current("tag"), "Not tagged yet.", show_error=False)  # the result says it

    def stop_tagging(self) -> str:
        job = self.host.jobs.current("tag")
        if job is None or job.state not in ("running", "queued"):
            return html.message("No tagging is running.")
        self.host.jobs.stop(job.id)
        return html.message("Stopping after the current batch; captions written so far are kept.", "warning")

    # ------------------------------------------------------------------ editor view
    def _apply_filter(
        self, session: editor.CaptionSession, include: str, include_mode: str, exclude: str, exclude_mode: str,
        search: str, search_mode: str,
    ) -> None:  # fmt: skip
        session.set_filter(
            editor.TagFilter.build(
                include=include or "",
                include_mode=include_mode or "and",
                exclude=exclude or "",
                exclude_mode=exclude_mode or "or",
                search=(search or "").strip(),
                search_mode=search_mode or "contains",
            )  # fmt: skip
        )

    def _suggest(self, session: editor.CaptionSession, view: View) -> list[Any]:
        """Pruning candidates for the shown images: never the activation tag (the tagger's box, the
        class tokens, the kept first tags), or the next Remove would strip the trigger word."""
        return session.suggest_common_tags(
            0.9, keep_tokens=view.keep_tokens, keep_tokens_separator=view.keep_separator, activation=view.activation
        )

    def _selected_outputs(self, session: editor.CaptionSession, selected: Any) -> list[Any]:
        """[info, caption box, caption shown]: the selected image's current caption, so the box never
        shows a caption older than the session's (after a batch edit, an undo, a reload)."""
        if not selected:
            return [gr.update(), gr.update(), gr.update()]
        try:
            item = session.item(str(selected))
        except UserError:
            return [html.message("The selected image is not part of the loaded captions: select it again."), "", None]
        info = html.message(f"{item.rel}" + (" (locked: " + item.problem + ")" if item.locked else ""))
        return [info, item.caption, item.caption]

    def _render(
        self,
        session: editor.CaptionSession | None,
        page: Any,
        per_page: Any,
        status: str = "",
        view: View | None = None,
    ) -> list[Any]:
        if session is None:
            empty = html.message("Load the captions of the dataset folder to edit them.")
            return [None, [], "", "", "", "", "", status or empty, gr.update(), gr.update(), gr.update()]
        view = view or View()
        visible = session.visible()
        size = int(number(per_page, "Thumbnails per page", 1, integer=True) or 48)
        pages = max(1, math.ceil(len(visible) / size))
        current = min(max(1, int(number(page, "The page", 1, integer=True) or 1)), pages)
        shown = visible[(current - 1) * size : current * size]
        gallery = []
        marks = editor.mask_marks([(session.items[i].rel, session.items[i].image) for i in shown], *view.masks)
        for index in shown:
            item = session.items[index]
            text = (
                item.caption
                if len(item.caption) <= CAPTION_PREVIEW_CHARS
                else item.caption[: CAPTION_PREVIEW_CHARS - 3] + "..."
            )
            mark = "* " if item.dirty else ""
            mask = f"{marks[item.rel]} · " if item.rel in marks else ""  # as the Clean tab marks cleaned images
            gallery.append((str(editor.thumbnail(item.image)), f"{mark}{mask}{item.rel}: {text or '(no caption)'}"))
        dirty = session.dirty_count
        info = html.message(
            f"Page {current} of {pages}: {len(visible)} of {plural(len(session.items), 'image')} shown"
            f"; {plural(dirty, 'unsaved caption change')}."
            + (" (* = changed)" if dirty else "")
            + self._masks_note(view, len(marks), len(shown))
        )
        counts = session.tag_counts(visible_only=True)
        tag_rows = [(c.tag, c.count, f"{c.fraction:.0%}") for c in counts[:TAG_LIST_LIMIT]]
        more = f" (first {TAG_LIST_LIMIT} of {len(counts)})" if len(counts) > TAG_LIST_LIMIT else ""
        tags = (
            f'<div class="lt-taglist">{html.message(plural(len(counts), "tag") + " in the shown images" + more)}'
            + html.table(("tag", "images", "share"), tag_rows, empty="No tags.")
            + "</div>"
        )
        common = self._suggest(session, view)
        if common:
            suggestion = html.message(
                "Tags in 90% or more of the shown images (candidates to remove, so the activation tag learns them): "
                + ", ".join(f"{c.tag} ({c.count})" for c in common)
            )
        else:
            suggestion = html.message("No tag is in 90% or more of the shown images.")
        problems = [p.message for p in session.problems[:5]]
        status_parts = [status] + [html.message(p, "warning") for p in problems]
        return [
            session,
            gallery,
            info,
            tags,
            suggestion,
            self._preview_html(session),
            self._history_html(session),
            "".join(status_parts),
            *self._selected_outputs(session, view.selected),
        ]

    @staticmethod
    def _masks_note(view: View, marked: int, shown: int) -> str:
        """What the mask marks mean, when the Train tab has a mask source."""
        mask_dir, alpha = view.masks
        if mask_dir:
            return (
                f" Masks (the Train tab's mask folder {mask_dir}): {marked} of the {shown} images on this page have "
                f"one (marked {editor.MASK_FILE}); masked loss needs one for every training image."
            )
        if alpha:
            return (
                f" Masks from transparency: {marked} of the {shown} images on this page have an alpha channel "
                f"(marked {editor.ALPHA_MASK}); the others are learned whole."
            )
        return ""

    @staticmethod
    def _preview_html(session: editor.CaptionSession) -> str:
        preview = session.preview(sample=8)
        if not preview.changed:
            return html.message("No unsaved changes.")
        parts = [
            html.message(
                f"{plural(preview.changed, 'caption')} will be written when you save "
                f"({plural(preview.created, 'new file')}).",
                "warning",
            )
        ]
        if preview.tags_added:
            parts.append(html.message("Added: " + ", ".join(f"{t} ({n})" for t, n in preview.tags_added[:12])))
        if preview.tags_removed:
            parts.append(html.message("Removed: " + ", ".join(f"{t} ({n})" for t, n in preview.tags_removed[:12])))
        rows = [(c.rel, c.before if c.before is not None else "(new)", c.after) for c in preview.samples]
        parts.append(html.table(("image", "before", "after"), rows, css="lt-preview"))
        return "".join(parts)

    @staticmethod
    def _history_html(session: editor.CaptionSession) -> str:
        done, redo = session.history()
        text = "Undo: " + (" / ".join(done[-3:][::-1]) if done else "nothing")
        text += "; redo: " + (" / ".join(redo[:3]) if redo else "nothing")
        return html.message(text)

    def _session(self, state: Any) -> editor.CaptionSession:
        if state is None:
            raise UserError("Load the captions first (Load captions).")
        return state

    def _edit(self, args: Sequence[Any], action) -> list[Any]:
        view = View.of(args)
        session = self._session(view.state)
        self._apply_filter(session, *view.filters)
        result = action(session)
        if result is None:
            return self._render(session, view.page, view.per_page, html.message("Nothing to do."), view)
        text = sentence(f"{result.label}: {plural(result.changed, 'caption')} changed")
        if result.considered:
            text += f" of {result.considered} shown"
        if result.locked:
            text += f" ({plural(result.locked, 'locked caption')} left alone)"
        text += ". Not saved yet." if result.changed and session.dirty_count else "."
        return self._render(session, view.page, view.per_page, html.message(text, "ok"), view)

    # ------------------------------------------------------------------ editor handlers
    @guarded(N_EDITOR_OUTPUTS, status=STATUS)
    def load(self, *args):
        view, (folder, ext) = View.of(args), (list(args[N_VIEW:]) + [None, None])[:2]
        state = view.state
        if state is not None and state.dirty_count:
            changed = state.changed_on_disk()
            asked = user_path(folder) if str(folder or "").strip() else None
            other = f" before loading {asked}" if asked is not None and asked != user_path(state.root) else ""
            text = (
                f"{plural(state.dirty_count, 'unsaved caption change')} in {state.root} "
                f"{plural_word(state.dirty_count, 'is')} kept: save or discard "
                f"{'it' if state.dirty_count == 1 else 'them'}{other or ' to reload'}."
            ) + (
                f" {plural(len(changed), 'caption')} changed on disk meanwhile; saving reports them." if changed else ""
            )
            session = state
            self._apply_filter(session, *view.filters)
            return self._render(session, view.page, view.per_page, html.message(text, "warning"), view)
        session = editor.open_session(folder, (ext or ".txt").strip() or ".txt")
        self._apply_filter(session, *view.filters)
        text = f"Loaded {plural(len(session.items), 'image')} from {session.root}."
        if not session.items:
            text = f"No images found in {session.root}."
        return self._render(session, 1, view.per_page, html.message(text, "ok" if session.items else "warning"), view)

    @guarded(N_EDITOR_OUTPUTS, status=STATUS)
    def show(self, *args):
        view = View.of(args)
        session = self._session(view.state)
        self._apply_filter(session, *view.filters)
        return self._render(session, view.page, view.per_page, "", view)

    @guarded(N_EDITOR_OUTPUTS, status=STATUS)
    def refresh_marks(self, *args):
        """The gallery again after the mask source changed (nothing while no captions are loaded)."""
        if View.of(args).state is None:
            return unchanged(N_EDITOR_OUTPUTS)
        return self.show(*args)

    def first_page(self) -> int:
        return 1

    def turn_page(self, page: Any, delta: int, state: Any = None, per_page: Any = None) -> int:
        """The page ``delta`` pages from ``page``, within the pages the loaded captions fill."""
        try:
            wanted = max(1, int(float(page or 1)) + int(delta))
        except (TypeError, ValueError, OverflowError):
            return 1
        if state is None:
            return wanted
        try:
            size = max(1, int(float(per_page or 48)))
        except (TypeError, ValueError, OverflowError):
            size = 48
        return min(wanted, max(1, math.ceil(len(state.visible()) / size)))

    @guarded(N_EDITOR_OUTPUTS, status=STATUS)
    def discard(self, *args):
        view = View.of(args)
        if not self._session(view.state).dirty_count:
            return self._render(
                view.state, view.page, view.per_page, html.message("No unsaved changes to discard."), view
            )
        return self._edit(args, lambda s: s.discard_changes())

    @guarded(N_EDITOR_OUTPUTS, status=STATUS)
    def undo(self, *args):
        return self._edit(args, lambda s: s.undo())

    @guarded(N_EDITOR_OUTPUTS, status=STATUS)
    def redo(self, *args):
        return self._edit(args, lambda s: s.redo())

    @guarded(N_EDITOR_OUTPUTS, status=STATUS)
    def add_tags(self, *args):
        text, where = args[N_VIEW:]
        if not (text or "").strip():
            raise UserError("Enter the tags to add (comma-separated).")
        return self._edit(args, lambda s: s.add_tags(text, position=where or "front"))

    @guarded(N_EDITOR_OUTPUTS, status=STATUS)
    def remove_tags(self, *args):
        (text,) = args[N_VIEW:]
        if not (text or "").strip():
            raise UserError("Enter the tags to remove (comma-separated).")
        return self._edit(args, lambda s: s.remove_tags(text))

    @guarded(N_EDITOR_OUTPUTS, status=STATUS)
    def replace(self, *args):
        old, new, regex, whole = args[N_VIEW:]
        return self._edit(args, lambda s: s.replace(old or "", new or "", regex=bool(regex), whole_caption=bool(whole)))

    @guarded(N_EDITOR_OUTPUTS, status=STATUS)
    def move_to_front(self, *args):
        (text,) = args[N_VIEW:]
        if not (text or "").strip():
            raise UserError("Enter the tags to move to the front.")
        return self._edit(args, lambda s: s.move_to_front(text))

    @guarded(N_EDITOR_OUTPUTS, status=STATUS)
    def sort_tags(self, *args):
        key, keep = args[N_VIEW:]
        keep_first = int(number(keep, "Keep first tags in place", 0, integer=True) or 0)
        return self._edit(args, lambda s: s.sort(key or "alpha", keep_first))

    @guarded(N_EDITOR_OUTPUTS, status=STATUS)
    def underscores(self, *args):
        return self._edit(args, lambda s: s.underscores_to_spaces())

    @guarded(N_EDITOR_OUTPUTS, status=STATUS)
    def dedupe(self, *args):
        return self._edit(args, lambda s: s.dedupe())

    @guarded(N_EDITOR_OUTPUTS, status=STATUS)
    def edit_caption(self, *args):
        view, (text,) = View.of(args), args[N_VIEW:]
        if not view.selected:
            raise UserError("Select an image in the gallery first.")
        session = self._session(view.state)
        current = session.item(str(view.selected)).caption
        if view.shown_caption is not None and current != view.shown_caption:
            # the box was filled before a batch edit or undo changed this caption: applying it would
            # silently revert that change, so show the current caption instead and apply nothing
            self._apply_filter(session, *view.filters)
            message = html.message(
                f"The caption of {view.selected} changed (a batch edit or undo) after it was put in the box: "
                "nothing was applied, and the box now shows its current caption. Make your edit again.",
                "warning",
            )
            return self._render(session, view.page, view.per_page, message, view)
        return self._edit(args, lambda s: s.edit(str(view.selected), text or ""))

    @guarded(N_EDITOR_OUTPUTS, status=STATUS)
    def save(self, *args):
        view, (choice,) = View.of(args), args[N_VIEW:]
        session = self._session(view.state)
        self._apply_filter(session, *view.filters)
        if not session.dirty_count:
            return self._render(
                session, view.page, view.per_page, html.message("Nothing to save: no unsaved changes."), view
            )
        result = session.save(on_conflict=choice or "ask")
        dataset_info.forget_scan(session.root)
        parts = [html.message(sentence(editor.summary_line(result)) + ".", "ok" if result.ok else "warning")]
        for conflict in result.unresolved[:10]:
            parts.append(
                html.message(
                    f"{conflict.reason} On disk: {conflict.on_disk!r}; yours: {conflict.ours!r}. "
                    "Choose overwrite, skip or reload above and save again.",
                    "warning",
                )
            )
        parts += [html.message(p.message, "error") for p in result.failed[:10]]
        return self._render(session, view.page, view.per_page, "".join(parts), view)

    def select_image(self, state: Any, page: Any, per_page: Any, evt: gr.SelectData) -> list[Any]:
        try:
            session = self._session(state)
            size = int(number(per_page, "Thumbnails per page", 1, integer=True) or 48)
            current = max(1, int(number(page, "The page", 1, integer=True) or 1))
            visible = session.visible()
            position = (current - 1) * size + int(
                evt.index if not isinstance(evt.index, (list, tuple)) else evt.index[0]
            )
            if not 0 <= position < len(visible):
                raise UserError("That image is no longer shown; refresh the gallery.")
            item = session.items[visible[position]]
            return [item.rel, *self._selected_outputs(session, item.rel)]
        except Exception as exc:  # an unusable click: say so, change nothing
            out = unchanged(4)
            out[1] = html.error(str(exc) if isinstance(exc, UserError) else f"Unexpected {type(exc).__name__}: {exc}")
            return out

    @guarded(2)
    def suggestions_to_remove(self, *args: Any) -> list[Any]:
        view = View.of(args)
        session = self._session(view.state)
        self._apply_filter(session, *view.filters)
        common = self._suggest(session, view)
        if not common:
            return [gr.update(), html.message("There are no suggestions for the shown images.")]
        return [
            gr.update(value=", ".join(c.tag for c in common)),
            html.message("Check the tags, then press Remove tags."),
        ]


@dataclass(frozen=True)
class View:
    """The inputs every editor handler gets first (:meth:`EditorPanel.view_inputs`, in order)."""

    state: Any = None
    filters: tuple = ("", "and", "", "or", "", "contains")  # include, mode, exclude, mode, search, mode
    page: Any = 1
    per_page: Any = 48
    selected: Any = None  # the selected image (relative path)
    shown_caption: Any = None  # the caption put in the box when it was filled (None: unknown)
    activation: Any = ""  # the tagger's activation tag box
    keep_tokens: int = 1  # the Train tab's keep_tokens (at least the first tag is kept)
    keep_separator: str = ""  # the Train tab's keep_tokens_separator
    masks: tuple = (None, False)  # the Train tab's mask folder (absolute) and alpha_mask: the gallery's marks

    @classmethod
    def of(cls, args: Sequence[Any]) -> View:
        values = (list(args[:N_VIEW]) + [None] * N_VIEW)[:N_VIEW]
        try:
            keep = int(float(values[12] or 0))
        except (TypeError, ValueError):
            keep = 0
        return cls(
            state=values[0],
            filters=tuple(values[1:7]),
            page=values[7],
            per_page=values[8],
            selected=values[9],
            shown_caption=values[10],
            activation=str(values[11] or ""),
            keep_tokens=max(1, keep),
            keep_separator=str(values[13] or ""),
            masks=(user_path(values[14]) if str(values[14] or "").strip() else None, bool(values[15])),
        )
