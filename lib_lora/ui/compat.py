"""The few places where Gradio 3.41 (AUTOMATIC1111 1.10) and Gradio 4 (Forge) differ.

- event listeners take ``_js=`` in 3.x and ``js=`` in 4.x: use :func:`js_kwargs`;
- ``Blocks.queue`` takes ``concurrency_count`` in 3.x and ``default_concurrency_limit`` in 4.x;
- ``gr.update`` exists in both (deprecated in 4 but working), and is the only way handlers
  change components here.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from lib_lora.common.errors import UserError

try:
    GRADIO_MAJOR = int(str(gr.__version__).split(".")[0])
except (AttributeError, ValueError):  # pragma: no cover - a very unusual gradio build
    GRADIO_MAJOR = 3


def js_kwargs(js: str | None) -> dict[str, Any]:
    """``{"_js": js}`` on Gradio 3, ``{"js": js}`` on Gradio 4; empty when there is no JS."""
    if not js:
        return {}
    return {"_js": js} if GRADIO_MAJOR < 4 else {"js": js}


def queue_kwargs(concurrency: int) -> dict[str, Any]:
    if GRADIO_MAJOR < 4:
        return {"concurrency_count": concurrency}
    return {"default_concurrency_limit": concurrency}


def update(**kwargs: Any) -> Any:
    """``gr.update(**kwargs)``: a change to a component (no arguments = leave it as it is)."""
    return gr.update(**kwargs)


def unchanged(count: int) -> list[Any]:
    """``count`` updates that change nothing (for error paths: same number of outputs)."""
    return [gr.update() for _ in range(count)]


def hidden_progress() -> dict[str, Any]:
    """Event options for background refreshes: no spinner over the refreshed components."""
    return {"show_progress": "hidden"}


def table_kwargs() -> dict[str, Any]:
    """Options of an editable ``gr.Dataframe``: Gradio 3 pages after 20 rows unless ``max_rows`` is
    None (Gradio 4 has no such option and shows every row)."""
    return {"max_rows": None} if GRADIO_MAJOR < 4 else {}


def is_update(value: Any) -> bool:
    """True for what :func:`update` returns (a dict whose ``__type__`` names an update)."""
    return isinstance(value, dict) and value.get("__type__") in ("update", "generic_update")


class _SketchImage(gr.Image):
    """Gradio 3's sketch image, which sends the bare image (not ``{"image", "mask"}``) until something
    is painted — its own preprocess then fails; here that is an image with no mask."""

    def get_block_name(self) -> str:
        return "image"  # the browser's component is the plain Image

    def preprocess(self, x: Any) -> Any:
        if self.tool == "sketch" and isinstance(x, str):
            self.tool = "editor"
            try:
                image = super().preprocess(x)
            finally:
                self.tool = "sketch"
            return {"image": image, "mask": None}
        return super().preprocess(x)


def mask_painter(label: str, elem_id: str, height: int = 520, brush_radius: int = 20) -> Any:
    """An image the user paints a mask on: Gradio 3's ``Image(tool="sketch")`` (white strokes over
    the image), Gradio 4's ``ImageEditor`` (brush + eraser layers). Read it with :func:`painted_mask`."""
    if GRADIO_MAJOR < 4:
        return _SketchImage(
            label=label, source="upload", tool="sketch", type="numpy", interactive=True, height=height,
            brush_radius=brush_radius, brush_color="#ff0000", mask_opacity=0.6, elem_id=elem_id,
        )  # fmt: skip
    return gr.ImageEditor(  # pragma: no cover - Gradio 4 only
        label=label, type="numpy", sources=(), layers=False, height=height, elem_id=elem_id,
        brush=gr.Brush(default_size=brush_radius * 2, colors=["#ff0000"], color_mode="fixed"),
        eraser=gr.Eraser(default_size=brush_radius * 2),
    )  # fmt: skip


def brush_update(radius: float) -> Any:
    """Change the painter's brush size."""
    if not isinstance(radius, (int, float)) or radius <= 0:
        return gr.update()
    if GRADIO_MAJOR < 4:
        return gr.update(brush_radius=float(radius))
    return gr.update(
        brush=gr.Brush(default_size=int(radius) * 2, colors=["#ff0000"], color_mode="fixed")
    )  # pragma: no cover


STALE_STROKES = (
    "The strokes were painted before the picked image had finished loading, so they could be in the wrong "
    "place; they were not used. Paint them again."
)


def painted_mask(value: Any) -> Any:
    """The painted strokes of a :func:`mask_painter` value as a bool numpy array [H, W] (None when
    there is no image): Gradio 3 sends ``{"image", "mask"}``, Gradio 4 ``{"background", "layers"}``.
    A Gradio 3 mask of another size than its image (strokes painted while the sketch still had the
    previous image's geometry) is refused with a :class:`UserError`, never stretched over the image;
    such a mask with nothing painted on it is no strokes (an empty mask of the image's size)."""
    import numpy as np

    if not isinstance(value, dict):
        return None
    if "mask" in value:
        mask = value.get("mask")
        if mask is None:
            return None
        mask = np.asarray(mask)
        painted = (mask.max(axis=-1) if mask.ndim == 3 else mask) > 127
        image = value.get("image")
        if image is not None and np.asarray(image).shape[:2] != mask.shape[:2]:
            # the sketch sizes its canvas from the image it shows: a mask of another size comes from
            # the previous image's geometry. With nothing painted on it, it is simply no strokes.
            if painted.any():
                raise UserError(STALE_STROKES)
            return np.zeros(np.asarray(image).shape[:2], dtype=bool)
        return painted
    layers = value.get("layers") or []  # pragma: no cover - Gradio 4 only
    background = value.get("background")  # pragma: no cover
    if background is None:  # pragma: no cover
        return None
    shape = np.asarray(background).shape[:2]  # pragma: no cover
    painted = np.zeros(shape, dtype=bool)  # pragma: no cover
    for layer in layers:  # pragma: no cover
        layer = np.asarray(layer)
        if layer.ndim == 3 and layer.shape[-1] == 4:
            painted |= layer[..., 3] > 127
    return painted  # pragma: no cover
