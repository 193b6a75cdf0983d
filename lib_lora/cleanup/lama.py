"""LaMa through onnxruntime: the model's contract read from the file, and inpainting around a mask.

Two export forms exist and both are read from the model's own signature:

(a) **image + mask** (Carve/LaMa-ONNX ``lama_fp32.onnx``): ``image [B, 3, H, W]`` float RGB in 0..1 and
    ``mask [B, 1, H, W]`` float 0/1; output ``[B, 3, H, W]``. Facts from its export notebook
    (``Carve-Photos/lama`` ``export_LaMa_to_onnx.ipynb``): the graph computes
    ``masked = image * (1 - mask)``, concatenates the mask, runs the generator, composites
    ``mask * predicted + (1 - mask) * image`` and returns ``clamp(inpainted * 255, 0, 255)`` — the
    output is **0..255**, not 0..1 (Carve-Photos/lama issue #9 documents the same trap). The notebook
    feeds ``np.array(pil_rgb) / 255`` in CHW, the mask as ``(mask > 0)`` after resizing the L-mode mask
    with PIL's default filter (bicubic), and pads to a multiple of 8 (``pad_out_to_modulo=8``,
    symmetric) for sizes the graph accepts; the exported shape is fixed at 512x512. It turns the
    output into bytes with ``astype(uint8)`` (truncation); here it is rounded (at most one level apart).
(b) **one 4-channel input** (g-ronimo/lama): ``input [1, 4, H, W]`` = RGB in 0..1 with the hole zeroed,
    then the binary mask; H, W multiples of 32 (or fixed); output ``[1, 3, H, W]`` RGB in **0..1**.

Other signatures are refused with one sentence. Because exports disagree about the output range, the
range is also checked on every run: LaMa reproduces the known pixels around the hole, so the scale
(1 or 255) that brings the output nearest the input outside the mask is the one used.

Large images are never shrunk as a whole: :func:`inpaint` finds the clusters of masked pixels, cuts
a box with context margin around each, fits it to the model (symmetric padding to the model's aspect
or size multiple, then a bicubic resize when the model's size is fixed), runs the model, resizes back
and writes only the masked pixels. Every pixel outside the mask keeps its exact value.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from lib_lora.common.errors import UserError
from lib_lora.events import Events

IMAGE_MASK = "image+mask"
FOUR_CHANNEL = "4-channel"
CONTRACT = (
    "LaMa takes either two float inputs, image [1, 3, H, W] and mask [1, 1, H, W], or one float input "
    "[1, 4, H, W] (masked RGB + mask), and returns [1, 3, H, W]"
)
DEFAULT_MARGIN = 128  # context pixels around each masked cluster (IOPaint's crop strategy uses 128 too)
DEFAULT_MAX_SIDE = 1536  # a dynamic-size model runs at full resolution up to this side, scaled down beyond


@dataclass(frozen=True)
class LamaContract:
    form: str  # IMAGE_MASK | FOUR_CHANNEL
    inputs: tuple[str, ...]  # (image, mask) or (input,)
    output: str
    size: tuple[int, int] | None  # fixed (height, width), or None when the model takes any size
    multiple: int  # the sides of a dynamic-size input must be multiples of this

    def describe(self) -> str:
        size = f"{self.size[1]}x{self.size[0]}" if self.size else f"any size (multiples of {self.multiple})"
        return f"{self.form} LaMa, {size}"


def _dims(shape: Any) -> list:
    return list(shape) if shape is not None else []


def _fixed(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and value > 0 else None


def read_contract(session: Any, what: str) -> LamaContract:
    """Validate the session's inputs/outputs against LaMa's two export forms."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    found = ", ".join(f"{i.name} {i.type} {_dims(i.shape)}" for i in inputs) or "no inputs"
    refuse = UserError(f"{what} is not a LaMa inpainting model: it has {found}, but {CONTRACT}.")
    if not outputs or any(i.type != "tensor(float)" for i in inputs):
        raise refuse
    out = _dims(outputs[0].shape)
    if len(out) != 4 or out[1] != 3:
        raise UserError(f"{what} is not a LaMa inpainting model: its output is {out}, but {CONTRACT}.")
    shapes = [_dims(i.shape) for i in inputs]
    if any(len(s) != 4 for s in shapes):
        raise refuse
    if len(inputs) == 2:
        channels = [s[1] for s in shapes]
        if sorted(c for c in channels if isinstance(c, int)) != [1, 3]:
            raise refuse
        image_at = channels.index(3)
        image, mask = inputs[image_at], inputs[1 - image_at]
        form, names, spatial, multiple = IMAGE_MASK, (image.name, mask.name), shapes[image_at][2:], 8
        if shapes[1 - image_at][2:] != spatial:
            raise refuse
    elif len(inputs) == 1 and shapes[0][1] == 4:
        form, names, spatial, multiple = FOUR_CHANNEL, (inputs[0].name,), shapes[0][2:], 32
    else:
        raise refuse
    height, width = (_fixed(v) for v in spatial)
    size = (height, width) if height and width else None
    return LamaContract(form, names, outputs[0].name, size, multiple)


def to_model_input(contract: LamaContract, rgb: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """The feed for one prepared crop: ``rgb`` uint8 [h, w, 3], ``mask`` bool [h, w] (model-sized)."""
    image = rgb.astype(np.float32).transpose(2, 0, 1)[None] / 255.0
    hole = mask.astype(np.float32)[None, None]
    if contract.form == IMAGE_MASK:
        return {contract.inputs[0]: image, contract.inputs[1]: hole}
    return {contract.inputs[0]: np.concatenate([image * (1.0 - hole), hole], axis=1)}


def output_to_rgb(output: np.ndarray, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Model output ``[1, 3, h, w]`` -> uint8 [h, w, 3]; its range (0..1 or 0..255) judged against the
    known pixels (outside the mask), which LaMa reproduces."""
    out = np.asarray(output, dtype=np.float32)[0].transpose(1, 2, 0)
    known = ~mask
    reference = rgb.astype(np.float32)
    if known.any():
        as_unit = float(np.abs(out[known] * 255.0 - reference[known]).mean())
        as_bytes = float(np.abs(out[known] - reference[known]).mean())
        scale = 1.0 if as_bytes <= as_unit else 255.0
    else:
        scale = 1.0 if float(out.max(initial=0.0)) > 1.5 else 255.0
    return np.clip(np.rint(out * scale), 0, 255).astype(np.uint8)


class Lama:
    """One loaded LaMa model: its ORT session (on the GPU when one works) and contract."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: str = "auto",
        threads: int = 0,
        events: Events | None = None,
        session_config: Mapping[str, str] | None = None,
    ) -> None:
        from lib_lora.tagger.session import open_session

        opened = open_session(
            path, device=device, threads=threads, events=events, session_config=session_config,
            task="Cleaning", what="the inpainting model",
        )  # fmt: skip
        self.path = path
        self.session = opened.session
        self.providers = opened.providers
        self.warnings = opened.warnings
        self.device = opened.device
        self.contract = read_contract(self.session, f"The model {path}")
        self._lock = threading.Lock()

    def run(self, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Inpaint one model-sized crop: uint8 [h, w, 3] + bool [h, w] -> uint8 [h, w, 3]."""
        feed = to_model_input(self.contract, rgb, mask)
        with self._lock:
            try:
                output = self.session.run([self.contract.output], feed)[0]
            except Exception as exc:
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(
                    f"The inpainting model {self.path} failed on a {rgb.shape[1]}x{rgb.shape[0]} crop: {text}"
                ) from None
        if output.shape[-2:] != rgb.shape[:2]:
            raise UserError(
                f"The inpainting model {self.path} returned {list(output.shape)} for a "
                f"{rgb.shape[1]}x{rgb.shape[0]} input; a LaMa model returns the input's size."
            )
        return output_to_rgb(output, rgb, mask)

    def close(self) -> None:
        self.__dict__.pop("session", None)


# ---------------------------------------------------------------------------------------- regions


def _dilate(grid: np.ndarray, radius: int) -> np.ndarray:
    """Square dilation of a small boolean grid (box filter through cumulative sums)."""
    if radius <= 0:
        return grid
    padded = np.pad(grid.astype(np.int32), radius)
    sums = padded.cumsum(0).cumsum(1)
    sums = np.pad(sums, ((1, 0), (1, 0)))
    k = 2 * radius + 1
    h, w = grid.shape
    window = sums[k : k + h, k : k + w] - sums[:h, k : k + w] - sums[k : k + h, :w] + sums[:h, :w]
    return window > 0


def _label(grid: np.ndarray) -> np.ndarray:
    """4-connected component labels of a small boolean grid (0 = background)."""
    labels = np.zeros(grid.shape, dtype=np.int32)
    current = 0
    for start in zip(*np.nonzero(grid)):
        if labels[start]:
            continue
        current += 1
        labels[start] = current
        stack = [start]
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < grid.shape[0] and 0 <= nx < grid.shape[1] and grid[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    stack.append((ny, nx))
    return labels


Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive)


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def mask_boxes(mask: np.ndarray, margin: int = DEFAULT_MARGIN, min_side: tuple[int, int] = (0, 0)) -> list[Box]:
    """Boxes that each hold one cluster of masked pixels plus ``margin`` px of context (clusters
    closer than about ``2 * margin`` share a box), grown towards ``min_side`` (width, height) where
    the image allows, so a small hole is not upscaled for a fixed-size model. Boxes never overlap."""
    height, width = mask.shape
    margin = max(0, min(int(margin), max(height, width)))  # more context than the whole image adds nothing
    cell = 16
    gh, gw = -(-height // cell), -(-width // cell)
    padded = np.zeros((gh * cell, gw * cell), dtype=bool)
    padded[:height, :width] = mask
    grid = padded.reshape(gh, cell, gw, cell).any(axis=(1, 3))
    labels = _label(_dilate(grid, max(1, margin // cell)))
    boxes: list[Box] = []
    for index in range(1, int(labels.max()) + 1):
        cells = np.nonzero((labels == index) & grid)
        if not cells[0].size:
            continue
        y0, y1 = cells[0].min() * cell, min(height, (cells[0].max() + 1) * cell)
        x0, x1 = cells[1].min() * cell, min(width, (cells[1].max() + 1) * cell)
        ys, xs = np.nonzero(mask[y0:y1, x0:x1])
        top, bottom, left, right = y0 + ys.min(), y0 + ys.max() + 1, x0 + xs.min(), x0 + xs.max() + 1
        boxes.append(_grow((left - margin, top - margin, right + margin, bottom + margin), (width, height), min_side))
    merged = True
    while merged:  # boxes grown into each other become one box
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                if _overlap(boxes[i], boxes[j]):
                    a, b = boxes[i], boxes.pop(j)
                    boxes[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    merged = True
                    break
            if merged:
                break
    return boxes


def _grow(box: Box, size: tuple[int, int], min_side: tuple[int, int]) -> Box:
    """``box`` clamped to the image, widened (centred) to at least ``min_side`` where the image allows."""
    spans = []
    for lo, hi, limit, want in ((box[0], box[2], size[0], min_side[0]), (box[1], box[3], size[1], min_side[1])):
        lo, hi = max(0, lo), min(limit, hi)
        target = min(want, limit)
        if hi - lo < target:
            lo = max(0, lo - (target - (hi - lo)) // 2)
            hi = min(limit, lo + target)
            lo = max(0, hi - target)
        spans.append((lo, hi))
    return (spans[0][0], spans[1][0], spans[0][1], spans[1][1])


# ---------------------------------------------------------------------------------------- fitting


def _pad_to(rgb: np.ndarray, mask: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric padding at the bottom/right of image and mask alike (as LaMa's ``pad_img_to_modulo``):
    a mark cut by the crop's edge is mirrored masked, never as known pixels."""
    pad_h, pad_w = height - rgb.shape[0], width - rgb.shape[1]
    if pad_h <= 0 and pad_w <= 0:
        return rgb, mask
    rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
    mask = np.pad(mask, ((0, pad_h), (0, pad_w)), mode="symmetric")
    return rgb, mask


def _resize_rgb(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    if rgb.shape[1] == width and rgb.shape[0] == height:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BICUBIC))


def _resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resized as LaMa's own preparation does: the L mask through PIL's bicubic, then ``> 0``."""
    if mask.shape[1] == width and mask.shape[0] == height:
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255, "L").resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(image) > 0


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def inpaint_crop(model: Lama, rgb: np.ndarray, mask: np.ndarray, max_side: int = DEFAULT_MAX_SIDE) -> np.ndarray:
    """Inpaint one crop of any size: fitted to the model, run, and brought back to the crop's size."""
    height, width = mask.shape
    contract = model.contract
    if contract.size is not None:
        model_h, model_w = contract.size
        # pad to the model's aspect ratio (no stretching), then resize to its size
        scale = max(height / model_h, width / model_w)
        padded_h, padded_w = max(height, round(model_h * scale)), max(width, round(model_w * scale))
    else:
        scale = max(1.0, max(height, width) / max_side)
        model_h = _round_up(max(1, round(height / scale)), contract.multiple)
        model_w = _round_up(max(1, round(width / scale)), contract.multiple)
        padded_h, padded_w = max(height, round(model_h * scale)), max(width, round(model_w * scale))
    rgb_p, mask_p = _pad_to(rgb, mask, padded_h, padded_w)
    small_rgb = _resize_rgb(rgb_p, model_w, model_h)
    small_mask = _resize_mask(mask_p, model_w, model_h)
    result = model.run(small_rgb, small_mask)
    back = _resize_rgb(result, padded_w, padded_h)
    return back[:height, :width]


def inpaint(
    model: Lama, rgb: np.ndarray, mask: np.ndarray, margin: int = DEFAULT_MARGIN, max_side: int = DEFAULT_MAX_SIDE
) -> np.ndarray:
    """``rgb`` uint8 [H, W, 3] with the pixels under ``mask`` (bool [H, W]) filled by LaMa; every other
    pixel keeps its exact value. Each masked cluster is processed in its own box at full resolution."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[:2] != mask.shape:
        raise ValueError("inpaint takes an [H, W, 3] image and an [H, W] mask of the same size")
    result = rgb.copy()
    if not mask.any():
        return result
    size = model.contract.size
    min_side = (size[1], size[0]) if size else (0, 0)
    for left, top, right, bottom in mask_boxes(mask, margin, min_side):
        crop_mask = mask[top:bottom, left:right]
        filled = inpaint_crop(model, rgb[top:bottom, left:right], crop_mask, max_side)
        region = result[top:bottom, left:right]
        region[crop_mask] = filled[crop_mask]
    return result
