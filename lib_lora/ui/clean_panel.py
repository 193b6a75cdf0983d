"""The Clean sub-tab: paint over text, signatures, watermarks and censor bars; LaMa fills them in.

Flow: load the dataset's images -> pick one -> paint the mask (brush size; the eraser removes
painted strokes from the red mask) -> Preview (nothing written) -> Accept (the original goes to
``.clean-history`` first) or paint again; Undo / Restore original put the file back byte for byte.
Batch: the same mask, scaled to each image, over the chosen images. Every image is shown through
gradio components (thumbnails and the working copy), never by its raw path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np

from lib_lora.common.errors import UserError
from lib_lora.common.text import plural
from lib_lora.jobs import cleaning, dataset_info, editor
from lib_lora.ui import html
from lib_lora.ui.common import guarded, host_events
from lib_lora.ui.compat import brush_update, hidden_progress, mask_painter, painted_mask

if TYPE_CHECKING:
    from lib_lora.ui.tab import TrainerTab

GALLERY_LIMIT = 400


class CleanPanel:
    def __init__(self, tab: TrainerTab) -> None:
        self.tab = tab
        self.host = tab.host
        self._last_copy: tuple[tuple[str, int, int], Any] | None = None  # see _working_copy

    # ------------------------------------------------------------------ layout
    def build(self) -> None:
        gr.Markdown(
            "Paint over watermarks, signatures, text and censor bars; LaMa fills them in from the surroundings. "
            "The original of every cleaned image is kept in the dataset's `.clean-history` folder."
        )
        with gr.Row():
            choices = cleaning.model_choices()
            self.model = gr.Dropdown(
                choices, value=cleaning.DEFAULT_MODEL, label="Inpainting model",
                info=cleaning.model_note(cleaning.DEFAULT_MODEL), elem_id="lora_trainer_clean_model",
            )  # fmt: skip
            self.local_model = gr.Textbox(
                label="Local LaMa model (optional)", placeholder="a LaMa .onnx file; wins over the list",
                elem_id="lora_trainer_clean_local",
            )  # fmt: skip
            self.load_button = gr.Button("Load images", variant="primary", elem_id="lora_trainer_clean_load")
        self.status = gr.HTML(elem_id="lora_trainer_clean_status")
        self.view = gr.State(None)
        self.selected = gr.State(None)
        self.kept = gr.State(None)  # the mask so far (bool, working-copy size)
        self.pending = gr.State(None)  # a preview not written yet
        with gr.Row():
            with gr.Column(scale=2):
                self.gallery = gr.Gallery(
                    label="Images (cleaned ones are marked)", columns=4, height=520, object_fit="contain",
                    elem_id="lora_trainer_clean_gallery",
                )  # fmt: skip
                self.selected_info = gr.HTML(elem_id="lora_trainer_clean_selected")
            with gr.Column(scale=3):
                self.painter = mask_painter("Paint over what should go", "lora_trainer_clean_painter")
                with gr.Row():
                    self.brush = gr.Slider(
                        2, 120, value=20, step=1, label="Brush size", elem_id="lora_trainer_clean_brush"
                    )
                    self.eraser = gr.Checkbox(
                        label="Eraser (strokes remove from the red mask)", elem_id="lora_trainer_clean_eraser"
                    )
                with gr.Row():
                    self.strokes_button = gr.Button("Add strokes to the mask", elem_id="lora_trainer_clean_strokes")
                    self.clear_button = gr.Button("Clear mask", elem_id="lora_trainer_clean_clear")
                    self.preview_button = gr.Button("Preview", variant="primary", elem_id="lora_trainer_clean_preview")
        with gr.Row():
            with gr.Column(scale=3):
                self.result = gr.Image(
                    label="Preview (not saved)", interactive=False, type="pil", height=520,
                    elem_id="lora_trainer_clean_result",
                )  # fmt: skip
            with gr.Column(scale=2):
                self.accept_button = gr.Button(
                    "Accept and save", variant="primary", elem_id="lora_trainer_clean_accept"
                )
                self.undo_button = gr.Button("Undo last cleaning of this image", elem_id="lora_trainer_clean_undo")
                self.restore_button = gr.Button("Restore original of this image", elem_id="lora_trainer_clean_restore")
                gr.Markdown("**Batch**: the current mask, scaled to each image's size (e.g. the same watermark corner)")
                self.batch_images = gr.Dropdown(
                    [], multiselect=True, label="Images for the batch", elem_id="lora_trainer_clean_batch_images"
                )
                with gr.Row():
                    self.select_all = gr.Button("Select all", elem_id="lora_trainer_clean_select_all")
                    self.batch_button = gr.Button("Clean the chosen images", elem_id="lora_trainer_clean_batch")
                self.restore_all_button = gr.Button("Restore all originals", elem_id="lora_trainer_clean_restore_all")

    # ------------------------------------------------------------------ events
    def wire(self) -> None:
        folder = self.tab.dataset.folder
        listing = [self.view, self.gallery, self.batch_images]
        model = [self.model, self.local_model]
        mask_inputs = [self.painter, self.kept, self.eraser]
        self.model.change(
            lambda name: gr.update(info=cleaning.model_note(name)), [self.model], [self.model], **hidden_progress()
        )
        self.brush.change(brush_update, [self.brush], [self.painter], **hidden_progress())
        self.load_button.click(self.load, [folder], [*listing, self.status])
        # Gradio 3's sketch keeps its strokes when only the image changes: the painter is emptied
        # first, then shows the image (with the kept mask in red), so old strokes are never re-sent.
        # Picking another image does the same: a stroke begun on the previous image (the pick takes a
        # moment on big files) would otherwise go on in the new image's geometry, from the wrong place.
        show = (self.painter_view, [self.view, self.selected, self.kept], [self.painter])
        self.gallery.select(
            self.select,
            [self.view],
            [self.selected, self.selected_info, self.painter, self.kept, self.result, self.pending],
        ).then(*show)
        self.strokes_button.click(
            self.add_strokes, [self.view, self.selected, *mask_inputs], [self.kept, self.painter, self.status]
        ).then(*show)
        self.clear_button.click(self.clear, [self.view, self.selected], [self.kept, self.painter, self.status]).then(
            *show
        )
        self.preview_button.click(
            self.preview, [self.view, self.selected, *mask_inputs, *model], [self.pending, self.result, self.status]
        )
        after_write = [*listing, self.painter, self.kept, self.result, self.pending, self.selected_info, self.status]
        self.accept_button.click(self.accept, [self.view, self.selected, self.pending], after_write).then(*show)
        self.undo_button.click(self.undo, [self.view, self.selected], after_write).then(*show)
        self.restore_button.click(self.restore, [self.view, self.selected], after_write).then(*show)
        self.select_all.click(
            lambda view: gr.update(value=list(view.images) if view else []), [self.view], [self.batch_images]
        )
        self.batch_button.click(
            self.batch, [self.view, self.selected, self.batch_images, *mask_inputs, *model],
            [*listing, self.painter, self.kept, self.selected_info, self.status],
        ).then(*show)  # fmt: skip
        self.restore_all_button.click(self.restore_all, [self.view], [*listing, self.status])

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _view(view: Any) -> cleaning.CleanView:
        if view is None:
            raise UserError("Load the images first (Load images).")
        return view

    @staticmethod
    def _selected(selected: Any) -> str:
        if not selected:
            raise UserError("Pick an image in the gallery first.")
        return selected

    def _listing(self, view: cleaning.CleanView) -> list[Any]:
        shown = view.images[:GALLERY_LIMIT]
        gallery = []
        for rel in shown:
            steps = view.cleaned.get(rel)
            mark = f"cleaned ({steps}x) · " if steps else ""
            gallery.append((str(editor.thumbnail(view.root / rel)), f"{mark}{rel}"))
        return [view, gallery, gr.update(choices=list(view.images))]

    def _summary(self, view: cleaning.CleanView) -> str:
        more = f" (the first {GALLERY_LIMIT} shown)" if len(view.images) > GALLERY_LIMIT else ""
        return f"{plural(len(view.images), 'image')} in {view.root}{more}; {len(view.cleaned)} cleaned."

    def _working_copy(self, view: cleaning.CleanView, rel: str) -> Any:
        """The working copy of ``rel``; the last one is kept (while the file is unchanged), so a pick
        followed by showing it in the painter reads a big file once."""
        try:
            stat = view.path(rel).stat()
        except OSError:  # gone or unreadable: the working copy says so in its own words
            return cleaning.working_copy(view, rel)
        key = (str(view.path(rel)), stat.st_mtime_ns, stat.st_size)
        last = self._last_copy
        if last is not None and last[0] == key:
            return last[1].copy()
        image = cleaning.working_copy(view, rel)
        self._last_copy = (key, image)
        return image.copy()

    @staticmethod
    def _mask(painted: Any, kept: Any, eraser: bool) -> np.ndarray | None:
        strokes = painted_mask(painted)
        if kept is not None and strokes is not None and kept.shape != strokes.shape:
            kept = None  # a different image was loaded into the painter
        if strokes is None:
            return kept
        if kept is None:
            return None if eraser else strokes
        return kept & ~strokes if eraser else kept | strokes

    # ------------------------------------------------------------------ handlers
    @guarded(4)
    def load(self, folder: str) -> list[Any]:
        view = cleaning.scan(folder)
        if not view.images:
            text = f"No images found in {view.root}: put the training images in its N_name folders first."
            return [*self._listing(view), html.message(text, "warning")]
        return [*self._listing(view), html.message(self._summary(view) + " Pick an image to paint its mask.", "ok")]

    def select(self, view: Any, evt: gr.SelectData) -> list[Any]:
        try:
            view = self._view(view)
            index = int(evt.index if not isinstance(evt.index, (list, tuple)) else evt.index[0])
            if not 0 <= index < min(len(view.images), GALLERY_LIMIT):
                raise UserError("That image is no longer listed; load the images again.")
            rel = view.images[index]
            self._working_copy(view, rel)  # an unreadable file is refused here, before anything changes
            return [rel, self._selected_html(view, rel), None, None, None, None]
        except Exception as exc:  # an unusable click: say so, change nothing
            text = str(exc) if isinstance(exc, UserError) else f"Unexpected {type(exc).__name__}: {exc}"
            return [gr.update(), html.error(text), gr.update(), gr.update(), gr.update(), gr.update()]

    @guarded(3)
    def add_strokes(self, view: Any, selected: Any, painted: Any, kept: Any, eraser: bool) -> list[Any]:
        self._view(view)
        self._selected(selected)
        mask = self._mask(painted, kept, bool(eraser))
        share = 0.0 if mask is None else float(mask.mean())
        text = f"The mask covers {share:.1%} of the image (red). Paint more, erase, or press Preview."
        return [mask, None, html.message(text)]

    @guarded(3)
    def clear(self, view: Any, selected: Any) -> list[Any]:
        self._view(view)
        self._selected(selected)
        return [None, None, html.message("Mask cleared.")]

    def painter_view(self, view: Any, selected: Any, kept: Any) -> Any:
        """The selected image as it is on disk, with the kept mask in red."""
        try:
            view, rel = self._view(view), self._selected(selected)
            if rel not in view.images:
                return gr.update()
            return cleaning.with_mask_overlay(self._working_copy(view, rel), kept)
        except Exception:  # nothing selected or the file vanished: the status line of the click says why
            return gr.update()

    @guarded(3)
    def preview(self, view, selected, painted, kept, eraser, model, local) -> list[Any]:
        view, rel = self._view(view), self._selected(selected)
        mask = self._mask(painted, kept, bool(eraser))
        if mask is None or not mask.any():
            raise UserError("The mask is empty: paint over what should be removed first.")
        chosen = cleaning.chosen_model(model, local)
        result, warnings = cleaning.preview(view, rel, mask, chosen, host_events(self.host))
        text = f"Preview of {rel}: {result.changed_pixels} pixels filled in. Accept and save writes it."
        notes = "".join(html.message(w, "warning") for w in warnings)
        return [result, cleaning.display(result), html.message(text, "ok") + notes]

    def _selected_html(self, view: cleaning.CleanView, rel: str) -> str:
        steps = view.cleaned.get(rel)
        return html.message(f"{rel} — cleaned {steps}x, original kept" if steps else rel)

    def _after_write(self, view: cleaning.CleanView, rel: str, text: str) -> list[Any]:
        view = cleaning.scan(str(view.root))
        dataset_info.forget_scan(view.root)
        info = self._selected_html(view, rel)
        return [*self._listing(view), None, None, None, None, info, html.message(text, "ok")]

    @guarded(9)
    def accept(self, view: Any, selected: Any, pending: Any) -> list[Any]:
        view, rel = self._view(view), self._selected(selected)
        if pending is None or pending.source.path != view.path(rel):
            raise UserError("Make a preview of this image first (Preview), then accept it.")
        cleaning.accept(view, pending)
        return self._after_write(view, rel, f"Saved the cleaned {rel}; its original is in .clean-history.")

    @guarded(9)
    def undo(self, view: Any, selected: Any) -> list[Any]:
        view, rel = self._view(view), self._selected(selected)
        cleaning.undo(view, rel)
        return self._after_write(view, rel, f"Undid the last cleaning of {rel}.")

    @guarded(9)
    def restore(self, view: Any, selected: Any) -> list[Any]:
        view, rel = self._view(view), self._selected(selected)
        cleaning.restore(view, rel)
        return self._after_write(view, rel, f"Restored the original of {rel} (byte for byte).")

    @guarded(7)
    def batch(self, view, selected, rels, painted, kept, eraser, model, local) -> list[Any]:
        view = self._view(view)
        mask = self._mask(painted, kept, bool(eraser))
        text = cleaning.batch(view, list(rels or []), mask, cleaning.chosen_model(model, local), host_events(self.host))
        view = cleaning.scan(str(view.root))
        dataset_info.forget_scan(view.root)
        info = self._selected_html(view, selected) if selected in view.images else gr.update()
        return [*self._listing(view), None, None, info, html.message(text, "ok")]

    @guarded(4)
    def restore_all(self, view: Any) -> list[Any]:
        view = self._view(view)
        count, refused = cleaning.restore_all(view)
        view = cleaning.scan(str(view.root))
        text = f"Restored {plural(count, 'original')}."
        if not count and not refused:
            text = f"Nothing to restore: no image in {view.root} has been cleaned."
        parts = [html.message(text, "ok" if not refused else "warning")] + [
            html.message(r, "warning") for r in refused[:5]
        ]
        return [*self._listing(view), "".join(parts)]
