"""Cleaning a dataset from a front end: the image list with what was cleaned, a working copy to
paint on, preview / accept / undo / restore of one image, and one mask for many images.

A thin layer over ``lib_lora.cleanup`` so the UI (which may only import ``jobs``) works in plain
values: relative paths, numpy masks at the working copy's size, PIL images for display.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lib_lora.cleanup import (
    DEFAULT_MODEL,
    MODELS,
    Preview,
    clean_folder,
    history,
    is_cached,
    load_lama,
    preview_clean,
    restore_folder,
    write_preview,
)
from lib_lora.cleanup.images import read_source
from lib_lora.common.errors import UserError
from lib_lora.common.layout import iter_image_files
from lib_lora.events import Events, StopToken

__all__ = ["DEFAULT_MODEL", "CleanView", "model_choices", "model_note"]

WORKING_SIDE = 1024  # the copy painted in the browser; the mask is scaled up to the full image


def model_choices() -> list[str]:
    return list(MODELS)


def model_note(name: str) -> str:
    spec = MODELS.get(name)
    if spec is None:
        return ""
    where = "downloaded" if is_cached(name) else f"downloads {spec.size_mb} MB from {spec.repo_id} on first use"
    return f"{spec.name}: {spec.about}; {where}."


def chosen_model(name: str, local: str) -> str:
    local = (local or "").strip()
    if local:
        path = os.path.expanduser(local)
        if not os.path.exists(path):
            raise UserError(f"The local inpainting model {local} does not exist (give a LaMa .onnx file).")
        return path
    return (name or DEFAULT_MODEL).strip()


def dataset_root(folder: str) -> Path:
    text = (folder or "").strip()
    if not text:
        raise UserError("No dataset folder chosen: choose it in the Dataset tab first.")
    root = Path(os.path.abspath(os.path.expanduser(text)))  # absolute: messages say which folder is meant
    if not root.is_dir():
        raise UserError(
            f"The dataset folder {root} " + ("is a file, not a folder." if root.exists() else "does not exist.")
        )
    return root


@dataclass(frozen=True)
class CleanView:
    root: Path
    images: list[str]  # relative posix paths, dataset order
    cleaned: dict[str, int]  # rel -> cleaning steps kept

    def path(self, rel: str) -> Path:
        if rel not in self.images:
            raise UserError(f"{rel} is not an image of {self.root}; load the images again.")
        return self.root / rel


def scan(folder: str) -> CleanView:
    root = dataset_root(folder)
    images = [p.relative_to(root).as_posix() for p in iter_image_files(root)]
    return CleanView(root, images, history.cleaned_images(root))


def working_copy(view: CleanView, rel: str, side: int = WORKING_SIDE) -> Image.Image:
    """The upright image (on white) at most ``side`` px: what the user paints on."""
    source = read_source(view.path(rel))
    image = Image.fromarray(source.upright_rgb())
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return image


def with_mask_overlay(image: Image.Image, mask: np.ndarray | None) -> Image.Image:
    """``image`` with ``mask`` tinted red (the current mask, shown while painting)."""
    if mask is None or not mask.any():
        return image
    rgb = np.asarray(image.convert("RGB")).astype(np.float32)
    fitted = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(image.size, Image.Resampling.NEAREST)) > 0
    rgb[fitted] = rgb[fitted] * 0.45 + np.array([255.0, 0.0, 0.0]) * 0.55
    return Image.fromarray(rgb.astype(np.uint8))


class _Warnings(Events):
    """Collects the warnings (e.g. why the model runs on the CPU) for the tab's status line."""

    def __init__(self, inner: Events | None) -> None:
        self.inner = inner
        self.texts: list[str] = []

    def message(self, level: str, text: str) -> None:
        if level == "warning":
            self.texts.append(text)
        if self.inner is not None:
            self.inner.message(level, text)

    def progress(self, stage: str, done: int, total: int, text: str = "") -> None:
        if self.inner is not None:
            self.inner.progress(stage, done, total, text)


def preview(
    view: CleanView, rel: str, mask: np.ndarray, model: str, events: Events | None = None
) -> tuple[Preview, list[str]]:
    """The preview and the warnings to show beside it (a CPU fallback says why)."""
    collected = _Warnings(events)
    lama = load_lama(model, events=collected)
    return preview_clean(view.path(rel), mask, lama), collected.texts


def display(preview_result: Preview, side: int = WORKING_SIDE) -> Image.Image:
    image = Image.fromarray(preview_result.result)
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return image


def accept(view: CleanView, result: Preview) -> Path:
    return write_preview(result, view.root)


def undo(view: CleanView, rel: str) -> Path:
    return history.undo(view.root, view.path(rel))


def restore(view: CleanView, rel: str) -> Path:
    return history.restore(view.root, view.path(rel))


def restore_all(view: CleanView) -> tuple[int, list[str]]:
    restored, refused = restore_folder(view.root)
    return len(restored), [why for _, why in refused]


def batch(
    view: CleanView, rels: list[str], mask: np.ndarray, model: str, events: Events | None = None,
    stop: StopToken | None = None,
) -> str:  # fmt: skip
    """Clean ``rels`` with one mask (scaled to each image); the summary line."""
    if not rels:
        raise UserError("Choose the images the mask is for (or press Select all).")
    if mask is None or not mask.any():
        raise UserError("The mask is empty: paint over what should be removed first; nothing was changed.")
    collected = _Warnings(events)
    lama = load_lama(model, events=collected)
    images = [view.path(rel) for rel in rels]
    result = clean_folder(view.root, lama, mask=mask, images=images, events=events, stop=stop)
    text = result.summary().capitalize() + "; the originals are kept in .clean-history."
    notes = collected.texts[:1] + [why for _, why in result.failed[:5]]
    return " ".join([text, *notes])
