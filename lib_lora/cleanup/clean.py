"""Cleaning files: masks, one image (preview, then write with history), a folder, restoring.

A mask is any image the size of the picture (or of another size: it is scaled, so one mask drawn
for a watermark corner fits every image of a batch): masked = bright (luminance >= 128), or — for a
mask with transparency — painted (alpha >= 128). The mask is in the upright picture's coordinates
(as a viewer shows a rotated phone photo).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from lib_lora.cleanup import history
from lib_lora.cleanup.images import SourceImage, apply_result, encode_like, read_source
from lib_lora.cleanup.lama import DEFAULT_MARGIN, Lama, inpaint
from lib_lora.cleanup.models import DEFAULT_MODEL, resolve_lama
from lib_lora.common.errors import UserError
from lib_lora.common.layout import IMAGE_EXTENSIONS, iter_image_files
from lib_lora.events import Events, StopToken
from lib_lora.tagger.session import SessionCache

# ------------------------------------------------------------------------------------------ masks


def mask_from_image(image: Image.Image) -> np.ndarray:
    """bool [H, W]: bright pixels, or painted ones when the mask image has transparency."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = np.asarray(image.convert("RGBA").getchannel("A"))
        if alpha.min() < 255:
            return alpha >= 128
    return np.asarray(image.convert("L")) >= 128


def read_mask(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    if path.is_dir():  # checked first: Windows answers "permission denied" for a folder
        raise UserError(f"The mask {path} is a folder, not an image: give one mask image.")
    try:
        with Image.open(path) as image:
            image.load()
            return mask_from_image(image)
    except FileNotFoundError:
        raise UserError(f"The mask {path} does not exist.") from None
    except Exception as exc:
        raise UserError(f"The mask {path} cannot be read ({str(exc).strip() or type(exc).__name__}).") from None


def fit_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``mask`` scaled to ``size`` (width, height); any covered pixel stays covered."""
    if mask.shape[::-1] == tuple(size):
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255, "L").resize(tuple(size), Image.Resampling.BILINEAR)
    return np.asarray(image) > 0


# ------------------------------------------------------------------------------------------ model

_CACHE = SessionCache()


def load_lama(
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str = "auto",
    threads: int = 0,
    cache_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
    endpoint: str | None = None,
    events: Events | None = None,
) -> Lama:
    """The LaMa model (registry name or ``.onnx`` path), loaded once and kept until :func:`unload_lama`."""
    found = resolve_lama(model, cache_dir=cache_dir, allow_download=allow_download, endpoint=endpoint, events=events)
    return _CACHE.get(
        device, threads, (found.path,), lambda: Lama(found.path, device=device, threads=threads, events=events), events
    )


def unload_lama() -> int:
    """Release every cached LaMa session; returns how many were released."""
    return _CACHE.clear()


# ------------------------------------------------------------------------------------------ one image


@dataclass
class Preview:
    """A cleaned image not written yet: what :func:`write_preview` puts on disk."""

    source: SourceImage
    mask: np.ndarray  # bool, upright size
    result: np.ndarray  # uint8 [H, W, 3] upright RGB (on white), only masked pixels changed
    encoded: bytes  # the file's new bytes

    @property
    def changed_pixels(self) -> int:
        return int(self.mask.sum())


def preview_clean(path: str | os.PathLike, mask: np.ndarray, model: Lama, margin: int = DEFAULT_MARGIN) -> Preview:
    """Inpaint ``path`` under ``mask`` (scaled to the image) without writing anything."""
    source = read_source(path)
    fitted = fit_mask(np.asarray(mask, dtype=bool), source.upright_size)
    if not fitted.any():
        raise UserError(f"The mask for {source.path.name} is empty: paint over what should be removed first.")
    result = inpaint(model, source.upright_rgb(), fitted, margin=margin)
    encoded = encode_like(source, apply_result(source, result, fitted))
    return Preview(source, fitted, result, encoded)


def write_preview(preview: Preview, root: str | os.PathLike | None = None) -> Path:
    """Write a preview over its image, the current file saved first in ``root``'s history (default:
    the image's folder). Refuses when the file changed since the preview was made."""
    path = preview.source.path
    try:
        current = path.read_bytes()
    except OSError as exc:
        raise UserError(
            f"The image {path} cannot be read any more ({exc.strerror or exc}); nothing was written."
        ) from None
    if current != preview.source.data:
        raise UserError(f"The image {path} changed on disk since the preview; make the preview again.")
    history.write_with_history(Path(root) if root else path.parent, path, current, preview.encoded)
    return path


def clean_image(
    path: str | os.PathLike,
    mask: np.ndarray,
    model: Lama,
    root: str | os.PathLike | None = None,
    margin: int = DEFAULT_MARGIN,
) -> Preview:
    """Preview and write in one go (CLI, API, batch)."""
    preview = preview_clean(path, mask, model, margin)
    write_preview(preview, root)
    return preview


def history_root(image: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Where ``image``'s history is: ``root`` when given, else the nearest folder that has one, else
    the image's own folder."""
    if root is not None:
        return Path(root)
    return history.find_root(image) or Path(image).parent


# ------------------------------------------------------------------------------------------ folders


@dataclass
class CleanFolderResult:
    cleaned: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (image, why): no mask, empty mask
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (image, message)
    stopped: bool = False

    def summary(self) -> str:
        parts = [f"cleaned {len(self.cleaned)} images"]
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)}")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.stopped:
            parts.append("stopped early")
        return ", ".join(parts)


def mask_for(image: Path, folder: Path, masks_dir: Path) -> Path | None:
    """``masks_dir/<same relative path, any image extension>``."""
    rel = image.relative_to(folder)
    for ext in (image.suffix, *IMAGE_EXTENSIONS):
        candidate = masks_dir / rel.with_suffix(ext)
        if candidate.is_file():
            return candidate
    return None


def clean_folder(
    folder: str | os.PathLike,
    model: Lama,
    *,
    masks_dir: str | os.PathLike | None = None,
    mask: np.ndarray | None = None,
    images: list[Path] | None = None,
    recursive: bool = True,
    margin: int = DEFAULT_MARGIN,
    events: Events | None = None,
    stop: StopToken | None = None,
    on_image: Callable[[Path], None] | None = None,
) -> CleanFolderResult:
    """Clean every image of ``folder`` (or ``images``): with its own mask from ``masks_dir``, or one
    ``mask`` scaled to each image. Each image is written as soon as it is done (history first); an
    unreadable image or a failed write is listed and the batch goes on."""
    folder = Path(folder)
    events = events or Events()
    if not folder.is_dir():
        raise UserError(f"The folder {folder} does not exist.")
    if (masks_dir is None) == (mask is None):
        raise UserError("Give either a folder of masks or one mask for every image.")
    if masks_dir is not None and not Path(masks_dir).is_dir():
        raise UserError(f"The masks folder {masks_dir} does not exist.")
    if mask is not None and not np.asarray(mask).any():
        raise UserError("The mask is empty: paint over what should be removed first; nothing was changed.")
    todo = list(images) if images is not None else list(iter_image_files(folder, recursive))
    if masks_dir is not None:
        masks_root = Path(masks_dir).resolve()
        todo = [p for p in todo if masks_root not in p.resolve().parents]
    result = CleanFolderResult()
    for index, image in enumerate(todo):
        if stop is not None and stop.requested:
            result.stopped = True
            break
        events.progress("cleaning", index, len(todo), image.name)
        if masks_dir is not None:
            found = mask_for(image, folder, Path(masks_dir))
            if found is None:
                result.skipped.append((image, "no mask"))
                continue
            try:
                this_mask = read_mask(found)
            except UserError as exc:
                result.failed.append((image, str(exc)))
                continue
            if not this_mask.any():
                result.skipped.append((image, "empty mask"))
                continue
        else:
            this_mask = mask
        try:
            clean_image(image, this_mask, model, root=folder, margin=margin)
        except UserError as exc:
            result.failed.append((image, str(exc)))
            events.warning(str(exc))
            continue
        result.cleaned.append(image)
        if on_image is not None:
            on_image(image)
    events.progress("cleaning", len(todo), len(todo), "")
    return result


def restore_folder(folder: str | os.PathLike) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Put every cleaned image of ``folder`` back as it was: (restored, [(image, why not)])."""
    folder = Path(folder)
    restored, refused = [], []
    for rel in sorted(history.cleaned_images(folder)):
        image = folder / rel
        try:
            restored.append(history.restore(folder, image))
        except UserError as exc:
            refused.append((image, str(exc)))
    return restored, refused
