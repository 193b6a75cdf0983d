"""The "Train LoRA" tab: its sub-tabs in workflow order, built against a :class:`UIHost`.

``build_tab(host)`` returns ``(blocks, tab)``: the webui registers ``blocks`` with
``on_ui_tabs`` (elem_id ``lora_trainer``, so the page wraps it in ``#tab_lora_trainer``); the
standalone app renders it inside its own page. ``tab`` gives tests the components and handlers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from lib_lora.ui.clean_panel import CleanPanel
from lib_lora.ui.compat import unchanged
from lib_lora.ui.dataset_panel import DatasetPanel
from lib_lora.ui.editor_panel import EditorPanel
from lib_lora.ui.host import UIHost
from lib_lora.ui.test_panel import TestPanel
from lib_lora.ui.train_panel import TrainPanel

ELEM_ID = "lora_trainer"
TITLE = "Train LoRA"
STYLE_CSS = Path(__file__).resolve().parents[2] / "style.css"


def stylesheet() -> str:
    """The tab's CSS (every rule under ``#tab_lora_trainer``); the webui loads style.css itself."""
    try:
        return STYLE_CSS.read_text(encoding="utf-8")
    except OSError:
        return ""


class TrainerTab:
    def __init__(self, host: UIHost) -> None:
        self.host = host
        self.dataset = DatasetPanel(self)
        self.editor = EditorPanel(self)
        self.clean = CleanPanel(self)
        self.train = TrainPanel(self)
        self.test = TestPanel(self)

    def build(self) -> gr.Blocks:
        with gr.Blocks(analytics_enabled=False) as blocks:
            with gr.Tabs(elem_id="lora_trainer_tabs"):
                with gr.Tab("Dataset", elem_id="lora_trainer_tab_dataset") as self.dataset_tab:
                    self.dataset.build()
                with gr.Tab("Clean", elem_id="lora_trainer_tab_clean") as self.clean_tab:
                    self.clean.build()
                with gr.Tab("Tag & edit", elem_id="lora_trainer_tab_tag") as self.tag_tab:
                    self.editor.build()
                with gr.Tab("Train", elem_id="lora_trainer_tab_train") as self.train_tab:
                    self.train.build()
                with gr.Tab("Test", elem_id="lora_trainer_tab_test") as self.test_tab:
                    self.test.build()
            self.dataset.wire()
            self.editor.wire()
            self.clean.wire()
            self.train.wire()
            self.test.wire()
            self.tag_tab.select(self.editor.provider_html, None, [self.editor.provider])
            self.train_tab.select(self.train.refresh_model, None, [self.train.model_info, self.train.start])
            live = [self.train.live, self.train.chart, self.train.epochs, self.train.samples, self.train.sample_count]
            self.train_tab.select(
                self.train.follow, [self.train.sample_count], [*live, self.train.result], show_progress="hidden"
            )
            # a reloaded page shows the running training's dataset and settings, not the defaults
            blocks.load(self.train.restore_running, None, self.train.restore_outputs(), show_progress="hidden").then(
                self.refresh_restored_dataset, [self.dataset.folder, *self.dataset.bucket_inputs()],
                [self.dataset.overview, self.dataset.buckets, self.dataset.status], show_progress="hidden",
            )  # fmt: skip
        self.blocks = blocks
        return blocks

    def refresh_restored_dataset(self, folder: str, *values: Any) -> list[Any]:
        """After a page load: the Dataset sub-tab's view of the running training's folder (nothing
        when no training runs: a fresh page shows no "no folder chosen" error)."""
        if not self.train.training_running():
            return unchanged(3)
        return self.dataset.refresh(folder, *values)

    def caption_extension_input(self) -> Any:
        form = self.train.form.components
        return form["caption_extension"] if "caption_extension" in form else gr.State(".txt")


def build_tab(host: UIHost) -> tuple[gr.Blocks, TrainerTab]:
    tab = TrainerTab(host)
    return tab.build(), tab


def on_ui_tabs(host: UIHost) -> list[tuple[gr.Blocks, str, str]]:
    """What the webui's ``on_ui_tabs`` callback returns."""
    blocks, _ = build_tab(host)
    return [(blocks, TITLE, ELEM_ID)]
