"""The small helpers behind the tab: VRAM estimate, epoch listing, grid layout, requests, chart, forms."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_lora.common.errors import UserError
from lib_lora.config import build_config, preset_values
from lib_lora.jobs import dataset_info, epochs, grid, importing, tagging, vram
from lib_lora.ui import compat, html
from support.ui_host import write_fake_lora


def test_vram_estimate_follows_the_settings() -> None:
    base = vram.estimate("sd1", 512, 512, batch_size=1, network_dim=32)
    assert vram.estimate("sd1", 512, 512, batch_size=4, network_dim=32).total_gib > base.total_gib
    assert vram.estimate("sd1", 512, 512, gradient_checkpointing=True).total_gib < base.total_gib
    assert vram.estimate("sd1", 768, 768).total_gib > base.total_gib
    sdxl = vram.estimate("sdxl", 1024, 1024, network_dim=8, train_text_encoder=False, gradient_checkpointing=True)
    assert sdxl.total_gib > base.total_gib
    assert 4 < base.total_gib < 9  # SD1.5 at 512, batch 1: the 6-8 GB cards people train on
    tight = vram.estimate("sdxl", 1024, 1024, available_gib=8.0, device_name="RTX 3070")
    assert tight.fits is False and "will probably not fit" in tight.text() and "estimate" in tight.text()
    assert vram.estimate("sd1", 512, 512, available_gib=24.0).fits is True


def test_lora_files_of_the_newest_run(tmp_path: Path) -> None:
    for epoch in (1, 2):
        write_fake_lora(tmp_path / f"char-{epoch:06d}.safetensors", epoch, epoch * 10, session="new")
    write_fake_lora(tmp_path / "char-000005.safetensors", 5, 50, session="old")
    write_fake_lora(tmp_path / "other-000001.safetensors", 1, 10, session="new")
    (tmp_path / "char-000003.safetensors").write_bytes(b"\x00\x01half-written")
    now = time.time()
    os.utime(tmp_path / "char-000005.safetensors", (now - 100, now - 100))
    found = epochs.list_lora_files(tmp_path, "char")
    assert [f.path.name for f in found] == ["char-000001.safetensors", "char-000002.safetensors"]
    assert found[1].label == "char-000002 (epoch 2, step 20)"
    every = epochs.list_lora_files(tmp_path, "char", newest_run_only=False)
    assert len(every) == 3  # the damaged file is never offered
    assert epochs.list_lora_files(tmp_path / "missing", "char") == []


def test_default_prompts(tmp_path: Path) -> None:
    from lib_lora.data.demo import write_demo_dataset

    data = write_demo_dataset(tmp_path / "d", captions="simple").root
    prompts = epochs.default_prompts("redfox", data, count=3)
    assert prompts[0].startswith("redfox, ") and prompts[1] == "redfox"
    assert len(prompts[0].split(", ")) == 4
    assert epochs.default_prompts("", "") == []


def test_grid_layout_and_save(tmp_path: Path) -> None:
    images = [Image.new("RGB", (256, 256), (i * 40, 0, 0)) for i in range(6)]
    picture = grid.assemble_grid(images, ["a-000001", "a-000002"], ["p1", "p2", "p3"])
    assert picture.size == (grid.LABEL_WIDTH + 3 * 256, grid.HEADER_HEIGHT + 2 * 256)
    assert picture.getpixel((grid.LABEL_WIDTH + 256 + 10, grid.HEADER_HEIGHT + 10)) == (40, 0, 0)
    small = grid.assemble_grid([Image.new("RGB", (64, 64))], ["x"], ["y"])
    assert small.width >= grid.MIN_CELL
    with pytest.raises(UserError, match="needs 4 images"):
        grid.assemble_grid(images[:3], ["a", "b"], ["p", "q"])
    path = grid.save_grid(picture, tmp_path, "a")
    assert path.parent.name == "a-grids" and Image.open(path).size == picture.size
    assert grid.save_grid(picture, tmp_path, "a") != path


def test_grid_labels_grow_with_the_cells() -> None:
    """A grid of 1024 px images is shown shrunk to the page: its labels are drawn bigger, so they stay
    readable there (the same size as on a 256 px grid, they were a few pixels high)."""

    def label_height(cell: int) -> int:
        picture = grid.assemble_grid(
            [Image.new("RGB", (cell, cell), "white")] * 2, ["a-000001", "a-000002"], ["a prompt"]
        )
        header = picture.height - 2 * cell
        ink = np.asarray(picture.convert("L"))[:header, picture.width - cell :] < 128  # the column label
        rows = np.nonzero(ink.any(axis=1))[0]
        return int(rows.max() - rows.min() + 1)

    assert label_height(1024) >= 3 * label_height(256)
    assert label_height(192) == label_height(256)  # small grids keep the plain size


def test_create_dataset_rules(tmp_path: Path) -> None:
    folder = dataset_info.create_dataset(tmp_path / "ds", "my char", "4")
    assert folder.name == "4_my char" and folder.is_dir()
    for name, repeats, message in (
        ("", 1, "not valid"),
        ("a/b", 1, "not valid"),
        ("x", 1.5, "whole number"),
        ("x", "many", "whole number"),
        ("x", "1e9", "Repeats 1,000,000,000 is too many"),  # training would refuse 1000000000_x
        ("my char", 2, "already exists"),
    ):
        with pytest.raises(UserError, match=message):
            dataset_info.create_dataset(tmp_path / "ds", name, repeats)
    with pytest.raises(UserError, match="No dataset folder"):
        dataset_info.create_dataset("", "x", 1)
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["4_my char"]


def test_import_and_tag_requests_are_checked_before_any_work(tmp_path: Path) -> None:
    good = importing.ImportRequest("danbooru", "irene_(kanniiepan)", str(tmp_path), "irene", 10, 20, ("g",))
    options = good.options()
    assert options.folder == tmp_path / "10_irene" and options.limit == 20
    for change, message in (
        ({"tags": " "}, "No tags"),
        ({"site": "myspace"}, "not known"),
        ({"limit": 0}, "at least 1"),
        ({"name": "a/b"}, "folder name"),
        ({"dataset": ""}, "No dataset folder"),
    ):
        with pytest.raises(UserError, match=message):
            importing.ImportRequest(**{**good.__dict__, **change}).options()
    request = tagging.TagRequest(str(tmp_path), local_model=str(tmp_path / "nope"))
    with pytest.raises(UserError, match="does not exist"):
        request.options()
    with pytest.raises(UserError, match="between 0 and 1"):
        tagging.TagRequest(str(tmp_path), general_threshold=1.5).options()
    assert tagging.TagRequest(str(tmp_path), activation_tag="a, b").options().tags.additional_tags == ("a", "b")
    assert tagging.model_choices()[0] == tagging.DEFAULT_MODEL


def test_loss_chart_caption_is_above_the_plot_not_on_the_lines() -> None:
    """The caption (last loss, average) sat inside the plot, where the highest losses are drawn."""
    import re

    losses = [(step, 1.0 + (0.25 if step % 3 == 0 else 0.0)) for step in range(1, 61)]
    svg = html.loss_chart(losses, total_steps=600, epochs=[(15, 1), (30, 2)])
    plot_top = float(re.search(r'<rect x="[\d.]+" y="([\d.]+)"', svg).group(1))
    caption = re.search(r'<text [^>]*y="([\d.]+)"[^>]*>loss \(last', svg)
    assert caption, svg
    assert float(caption.group(1)) <= plot_top - 4, (caption.group(1), plot_top)
    raw = re.search(r'<polyline points="([^"]+)" class="lt-loss-raw"', svg).group(1)
    line_ys = [float(point.split(",")[1]) for point in raw.split()]
    assert min(line_ys) >= plot_top  # the lines stay inside the plot, below the caption


def test_loss_chart() -> None:
    assert "appears when training starts" in html.loss_chart([])
    losses = [(step, 1.0 / step) for step in range(1, 2001)]
    svg = html.loss_chart(losses, total_steps=3000, epochs=[(1000, 1), (2000, 2)])
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and svg.count("lt-epoch") == 2
    raw = svg.split('class="lt-loss-raw"')[0].rsplit("<polyline points=", 1)[1]
    assert len(raw.split()) <= 600  # long runs are thinned
    assert "&lt;b&gt;" in html.message("<b>")


def test_loss_chart_average_is_a_moving_average_not_the_last_loss() -> None:
    losses = [(step, 1.0 if step % 2 else 0.0) for step in range(1, 13)]  # a short, noisy run
    svg = html.loss_chart(losses)
    assert "loss (last 0.0000, average of the last 10 steps 0.5000)" in svg

    def heights(css: str) -> set[float]:
        points = re.search(rf'points="([^"]*)" class="{css}"', svg).group(1)
        return {float(p.split(",")[1]) for p in points.split()}

    assert len(heights("lt-loss-avg")) > 2 and heights("lt-loss-raw") == {
        min(heights("lt-loss-raw")),
        max(heights("lt-loss-raw")),
    }
    long = html.loss_chart([(step, float(step % 7)) for step in range(1, 4001)])
    assert "average of the last 200 steps" in long


def test_compat_and_form_values() -> None:
    js = compat.js_kwargs("() => 1")
    assert js == ({"_js": "() => 1"} if compat.GRADIO_MAJOR < 4 else {"js": "() => 1"})
    assert compat.js_kwargs(None) == {}
    assert compat.is_update(compat.update(value=1)) and not compat.is_update({"value": 1})

    from lib_lora.ui.forms import from_component_value, to_component_value

    values = preset_values("character", "sd1")
    shown = {k: to_component_value(k, v) for k, v in values.items()}
    back = {k: from_component_value(k, v) for k, v in shown.items()}
    cfg = build_config({**back, "train_data_dir": "d"}, preset=None)
    assert cfg.network_dim == 32 and cfg.lr_scheduler == "cosine_with_restarts" and cfg.clip_skip == 2
    assert from_component_value("max_token_length", "default") is None
    assert from_component_value("seed", "") is None and from_component_value("train_batch_size", 2.0) == 2


def test_tagging_summary_counts_only_the_images_it_tagged(tmp_path: Path) -> None:
    """A dataset with 2 unreadable files of 15: "Tagged 13 of 15 images", not "Tagged 15 images ...
    2 images skipped" (the progress panel above said 13)."""
    from lib_lora.tagger.batch import FailedImage, TagFolderResult

    failed = [FailedImage(tmp_path / "zero.png", "not an image Pillow can read"), FailedImage(tmp_path / "b.png", "x")]
    text = tagging.summary(TagFolderResult(tmp_path, "demo-tagger", "CPU", images=15, failed=failed))
    assert text.startswith("Tagged 13 of 15 images with demo-tagger on CPU: "), text
    assert "2 images skipped (zero.png" in text
    assert tagging.summary(TagFolderResult(tmp_path, "demo-tagger", "CPU", images=4)).startswith("Tagged 4 images ")


def test_tagging_summary_when_nothing_was_tagged(tmp_path: Path) -> None:
    """An empty folder said "Tagged 0 images: 0 captions written." and a fully captioned one "Tagged 12 images:
    0 captions written, 12 existing captions kept" (nothing was tagged); one caption said "1 captions written"."""
    from lib_lora.tagger.batch import FailedImage, TagFolderResult, TaggedImage

    assert tagging.summary(TagFolderResult(tmp_path)) == f"No images found in {tmp_path}: nothing to tag."
    text = tagging.summary(TagFolderResult(tmp_path, images=12, kept=12))
    assert text.startswith(f"Nothing to tag in {tmp_path}: all 12 images already have a caption, kept as "), text
    assert "'Existing captions: skip'" in text and "choose overwrite, append or prepend" in text
    broken = [FailedImage(tmp_path / "b.png", "not an image Pillow can read")]
    text = tagging.summary(TagFolderResult(tmp_path, images=3, kept=2, failed=broken))
    assert "2 images already have a caption" in text and text.endswith(
        "; 1 image skipped (b.png: not an image Pillow can read)."
    )
    one = [TaggedImage(tmp_path / "a.png", tmp_path / "a.txt", ["x"], "written")]
    text = tagging.summary(TagFolderResult(tmp_path, "demo-tagger", "CPU", images=1, tagged=one))
    assert text == "Tagged 1 image with demo-tagger on CPU: 1 caption written.", text


def test_the_live_line_says_which_average_its_loss_is() -> None:
    """The status said "(avg 1.1326)" beside a chart captioned "average of the last 10 steps 1.1484":
    two different averages under one word. The status names its window."""
    from lib_lora.jobs.manager import JobStatus
    from lib_lora.ui.common import job_line

    status = JobStatus("1", "train", "Training t", "running", epoch=4, step=59, total_steps=600, loss=1.1894)
    status.avg_loss = 1.1411
    line = job_line(status)
    assert "loss 1.1894 (average over the last epoch 1.1411)" in line, line
    assert "avg " not in line


def test_a_several_line_warning_is_shown_whole_below_the_scrolling_log() -> None:
    """The tagger's "2 images were skipped:" warning lists one image a line; at the bottom of the log
    box (10em, scrolling) only its first line showed. Warnings come below the box, every line."""
    from lib_lora.jobs.manager import JobStatus
    from lib_lora.ui.common import job_html

    status = JobStatus("1", "tag", "Tagging", "done")
    status.messages = [("info", f"note {i}") for i in range(5)]
    warning = "2 images were skipped:\n  /d/10_x/a.png: cannot be read\n  /d/10_x/b.png: cannot be read"
    status.messages.append(("warning", warning))
    page = job_html(status)
    log = re.search(r'<div class="lt-log">(.*?)</div></div>', page, re.S)
    assert log and "note 4" in log.group(1) and "skipped" not in log.group(1)  # not in the clipped box
    assert html.message(warning, "warning") in page[log.end() :]  # whole, after it
