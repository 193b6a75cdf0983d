"""The Clean sub-tab's handlers in-process: load, pick, paint (brush + eraser), preview, accept, undo,
restore, batch; bad input answers with a message and changes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_lora.ui.compat import is_update
from lib_lora.ui.tab import build_tab
from support.lama_tiny import write_model
from support.tagger_files import snapshot
from support.ui_host import FakeHost
from support.ui_tab import Select, value

RED = (250, 20, 20)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_model(tmp_path_factory.mktemp("lama") / "lama_fp32.onnx"))


@pytest.fixture
def panel(tmp_path: Path):
    _, tab = build_tab(FakeHost(tmp_path))
    return tab.clean


def dataset(root: Path) -> dict[str, bytes]:
    for n, size in enumerate([(300, 200), (600, 400)]):
        rgb = np.full((size[1], size[0], 3), (40, 120, 200), dtype=np.uint8)
        h, w = size[1], size[0]
        rgb[int(h * 0.85) : int(h * 0.95), int(w * 0.7) : int(w * 0.95)] = RED
        (root / "5_x").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(root / "5_x" / f"{n}.png")
    return {p.name: p.read_bytes() for p in (root / "5_x").iterdir()}


def strokes(shape: tuple[int, int], box: tuple[float, float, float, float]) -> dict:
    """A Gradio 3 sketch value: the image and white strokes on black where ``box`` (fractions)."""
    h, w = shape
    mask = np.zeros((h, w, 3), dtype=np.uint8)
    mask[int(h * box[1]) : int(h * box[3]), int(w * box[0]) : int(w * box[2])] = 255
    return {"image": np.zeros((h, w, 3), dtype=np.uint8), "mask": mask}


def has_red(path: Path) -> bool:
    return bool((np.asarray(Image.open(path).convert("RGB"))[..., 0] > 200).any())


def test_paint_preview_accept_undo_restore_and_batch(panel, tmp_path: Path, model: str) -> None:
    root = tmp_path / "data"
    originals = dataset(root)
    view, gallery, choices, status = panel.load(str(root))
    assert value(choices) is None and len(gallery) == 2 and "2 images" in status
    rel, info, painter, kept, _, _ = panel.select(view, Select(0))
    assert rel == "5_x/0.png" and painter is None  # emptied first (a stroke begun before is dropped) ...
    assert panel.painter_view(view, rel, kept).size == (300, 200)  # ... then the picked image
    shape = (200, 300)
    # paint too much, then erase a strip: the kept mask follows
    kept, overlay, _ = panel.add_strokes(view, rel, strokes(shape, (0.6, 0.8, 1.0, 1.0)), None, False)
    assert kept.sum() == 120 * 40
    kept, overlay, text = panel.add_strokes(view, rel, strokes(shape, (0.6, 0.8, 0.65, 1.0)), kept, True)
    assert kept.sum() == 105 * 40 and "covers" in text
    assert overlay is None  # the painter is emptied (old strokes dropped), then shows the kept mask in red:
    overlay = np.asarray(panel.painter_view(view, rel, kept))
    assert overlay[190, 250, 0] > overlay[190, 250, 2] and overlay[10, 10, 0] < overlay[10, 10, 2]
    pending, shown, text = panel.preview(view, rel, strokes(shape, (0, 0, 0, 0)), kept, False, "lama-carve", model)
    assert "pixels filled in" in text and (root / "5_x" / "0.png").read_bytes() == originals["0.png"]
    assert "Cleaning runs on the CPU" in text  # a CPU-only onnxruntime says so (and why)
    assert not (np.asarray(shown)[..., 0] > 200).any()
    out = panel.accept(view, rel, pending)
    view, gallery = out[0], out[1]
    assert "original is in .clean-history" in out[-1] and not has_red(root / "5_x" / "0.png")
    assert gallery[0][1].startswith("cleaned (1x)")
    out = panel.undo(view, rel)
    assert (root / "5_x" / "0.png").read_bytes() == originals["0.png"] and not out[1][0][1].startswith("cleaned")
    # batch: the same corner mask over both images (scaled to the 600x400 one)
    out = panel.batch(
        view, rel, ["5_x/0.png", "5_x/1.png"], strokes(shape, (0.65, 0.8, 1.0, 1.0)), None, False, "", model
    )
    assert "Cleaned 2 images" in out[-1] and "cleaned 1x" in out[-2]
    assert not has_red(root / "5_x" / "0.png") and not has_red(root / "5_x" / "1.png")
    view = out[0]
    out = panel.restore(view, "5_x/1.png")
    assert (root / "5_x" / "1.png").read_bytes() == originals["1.png"]
    out = panel.restore_all(out[0])
    assert "Restored 1 original." in out[-1]
    assert {p.name: p.read_bytes() for p in (root / "5_x").iterdir()} == originals


def test_bad_input_is_a_message_and_changes_nothing(panel, tmp_path: Path, model: str) -> None:
    root = tmp_path / "data"
    dataset(root)
    before = snapshot(root)
    view = panel.load(str(root))[0]
    empty = strokes((200, 300), (0, 0, 0, 0))
    assert "mask is empty" in panel.preview(view, "5_x/0.png", empty, None, False, "lama-carve", model)[-1]
    assert "mask is empty" in panel.batch(view, None, ["5_x/0.png"], empty, None, False, "", model)[-1]
    assert "does not exist" in panel.preview(view, "5_x/0.png", strokes((200, 300), (0, 0, 0.5, 0.5)), None, False, "", str(tmp_path / "no.onnx"))[-1]  # fmt: skip
    assert "Make a preview" in panel.accept(view, "5_x/0.png", None)[-1]
    assert "has not been cleaned" in panel.restore(view, "5_x/0.png")[-1]
    assert "does not exist" in panel.load(str(tmp_path / "nowhere"))[-1]
    assert snapshot(root) == before


def test_the_painter_accepts_an_image_with_nothing_painted(panel) -> None:
    """Gradio 3 sends the bare image until a stroke is drawn; that is "no mask", not an error."""
    import base64
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (1, 2, 3)).save(buffer, format="PNG")
    sent = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    value = panel.painter.preprocess(sent)
    assert value["mask"] is None and value["image"].shape == (24, 32, 3)
    assert panel._mask(value, None, False) is None


def test_strokes_of_another_size_than_the_image_are_refused(panel, tmp_path: Path) -> None:
    """A mask painted while the painter still had the previous image's geometry (another size than
    the image it sends) would land in the wrong place: one message, the kept mask unchanged."""
    root = tmp_path / "data"
    dataset(root)
    view = panel.load(str(root))[0]
    kept = panel.add_strokes(view, "5_x/0.png", strokes((200, 300), (0.6, 0.8, 1.0, 1.0)), None, False)[0]
    stale = strokes((200, 300), (0.1, 0.1, 0.3, 0.3))
    stale["mask"] = np.zeros((360, 640, 3), dtype=np.uint8)  # the canvas of a 640x360 image picked before
    stale["mask"][10:50, 10:50] = 255
    out = panel.add_strokes(view, "5_x/0.png", stale, kept, False)
    assert "before the picked image had finished loading" in out[-1] and "Error" in out[-1]
    assert is_update(out[0]) and out[0].keys() == {"__type__"}  # the kept mask is left as it is
    preview = panel.preview(view, "5_x/0.png", stale, kept, False, "lama-carve", "")
    assert "before the picked image had finished loading" in preview[-1]


def test_an_empty_canvas_of_another_size_is_no_strokes_not_stale_ones(panel, tmp_path: Path) -> None:
    """Right after Clear mask the painter can still send the previous image's blank canvas: nothing
    was painted, so Preview says the mask is empty (and Add strokes keeps the kept mask), with no
    word of strokes in the wrong place."""
    root = tmp_path / "data"
    dataset(root)
    view = panel.load(str(root))[0]
    blank = strokes((200, 300), (0, 0, 0, 0))
    blank["mask"] = np.zeros((360, 640, 3), dtype=np.uint8)
    preview = panel.preview(view, "5_x/0.png", blank, None, False, "lama-carve", "")
    assert "The mask is empty" in preview[-1] and "finished loading" not in preview[-1]
    kept = panel.add_strokes(view, "5_x/0.png", strokes((200, 300), (0.6, 0.8, 1.0, 1.0)), None, False)[0]
    out = panel.add_strokes(view, "5_x/0.png", blank, kept, False)
    assert np.array_equal(out[0], kept) and "finished loading" not in out[-1]


def test_an_empty_or_missing_folder_and_nothing_to_restore_are_said_plainly(
    panel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'0 images in empty; 0 cleaned. Pick an image to paint its mask.' and 'Restored 0 originals.'"""
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)  # a folder typed relative to where the app was started
    out = panel.load("empty")
    assert f"No images found in {tmp_path / 'empty'}: put the training images in its N_name folders" in out[-1]
    assert "Pick an image" not in out[-1]
    assert f"The dataset folder {tmp_path / 'nowhere'} does not exist." in panel.load("nowhere")[-1]
    dataset(tmp_path / "data")
    view = panel.load(str(tmp_path / "data"))[0]
    assert f"Nothing to restore: no image in {tmp_path / 'data'} has been cleaned." in panel.restore_all(view)[-1]
