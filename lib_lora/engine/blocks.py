"""Block-wise learning rates and ranks of sd-scripts' ``networks.lora`` (network_args
``down_lr_weight`` ``mid_lr_weight`` ``up_lr_weight`` ``block_lr_zero_threshold`` ``block_dims``
``block_alphas`` ``conv_block_dims`` ``conv_block_alphas``), as pure functions of kohya module names.

Block numbering (sd-scripts' get_block_index), from the kohya name of a UNet LoRA:
- SD1 (diffusers-style names), 25 blocks: ``down_blocks_i_{resnets|attentions}_j`` → 1 + 3i + j,
  ``down_blocks_i_downsamplers`` → 1 + 3i + 2; ``mid_block`` → 12; ``up_blocks_i_…_j`` → 13 + 3i + j,
  ``up_blocks_i_upsamplers`` → 13 + 3i + 2.
- SDXL (sgm-style names), 23 blocks: time/label embedding 0, ``input_blocks_N`` → 1 + N,
  ``middle_block_N`` → 10 + N, ``output_blocks_N`` → 13 + N, ``out`` 22.
Names that match nothing give -1 (text encoders have no blocks).

The lr weights list is down + mid + up (SDXL: with 1.0 added at both ends for the embeddings and
``out``); a block whose weight is 0 gets no LoRA (its dim becomes 0). Bad input raises ValueError
with one sentence; the caller turns it into a UserError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

SD1_BLOCKS = 12  # up or down blocks in sd-scripts' numbering
SD1_MID = 1
SDXL_BLOCKS = 9
SDXL_MID = 3
_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")
CURVES = ("cosine", "sine", "linear", "reverse_linear", "zeros")


def num_blocks(sdxl: bool) -> int:
    """How many numbers block_dims / block_alphas take: 25 for SD1, 23 for SDXL."""
    return 1 + SDXL_BLOCKS * 2 + SDXL_MID + 1 if sdxl else SD1_BLOCKS * 2 + SD1_MID


def block_index(kohya_name: str, sdxl: bool) -> int:
    """The block of a kohya LoRA name (``lora_unet_…``); -1 when it is in no block."""
    if not sdxl:
        m = _UPDOWN.search(kohya_name)
        if m:
            side, i, kind, j = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
            idx = 3 * i + (2 if kind in ("upsamplers", "downsamplers") else j)
            return 1 + idx if side == "down" else SD1_BLOCKS + 1 + idx
        return SD1_BLOCKS if "mid_block_" in kohya_name else -1
    if not kohya_name.startswith("lora_unet_"):
        return -1
    name = kohya_name[len("lora_unet_") :]
    if name.startswith(("time_embed_", "label_emb_")):
        return 0
    for prefix, base in (("input_blocks_", 1), ("middle_block_", 10), ("output_blocks_", 13)):
        if name.startswith(prefix):
            return base + int(name.split("_")[2])
    return 22 if name.startswith("out_") else -1


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(s) if s.strip() else 0.0 for s in text.split(",")]
    except ValueError:
        raise ValueError(f"{what} = {text!r} is not valid: use comma-separated numbers.") from None


def _curve(text: str, length: int, what: str) -> list[float]:
    """sd-scripts' named weight curves: ``cosine``, ``sine``, ``linear``, ``reverse_linear``,
    ``zeros``, each optionally ``+base``."""
    name, _, base_text = text.partition("+")
    try:
        base = float(base_text) if base_text else 0.0
    except ValueError:
        raise ValueError(f"{what} = {text!r} is not valid: the part after + must be a number.") from None
    span = length - 1
    if name == "cosine":
        return [math.sin(math.pi * (i / span) / 2) + base for i in reversed(range(length))]
    if name == "sine":
        return [math.sin(math.pi * (i / span) / 2) + base for i in range(length)]
    if name == "linear":
        return [i / span + base for i in range(length)]
    if name == "reverse_linear":
        return [i / span + base for i in reversed(range(length))]
    if name == "zeros":
        return [0.0 + base] * length
    raise ValueError(f"{what} = {text!r} is not valid: use numbers or one of {', '.join(CURVES)} (optionally +base).")


def _side(text: str | None, length: int, what: str) -> list[float] | None:
    if text is None:
        return None
    values = _floats(text, what) if "," in text or _is_number(text) else _curve(text.strip(), length, what)
    values = values[:length]  # sd-scripts: longer lists are cut, shorter ones filled with 1
    return values + [1.0] * (length - len(values))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def block_lr_weights(
    sdxl: bool,
    down: str | None,
    mid: str | None,
    up: str | None,
    zero_threshold: float | None = None,
) -> list[float] | None:
    """The lr factor of every block (down + mid + up; SDXL with 1.0 for the embeddings and ``out``),
    weights at or below ``zero_threshold`` set to 0; None when none of the three is given."""
    if down is None and mid is None and up is None:
        return None
    side, middle = (SDXL_BLOCKS, SDXL_MID) if sdxl else (SD1_BLOCKS, SD1_MID)
    threshold = zero_threshold or 0.0
    parts = []
    for text, length, what in (
        (down, side, "down_lr_weight"),
        (mid, middle, "mid_lr_weight"),
        (up, side, "up_lr_weight"),
    ):
        if what == "mid_lr_weight" and text is not None:
            values: list[float] | None = _floats(text, what)[:length]
            values = values + [1.0] * (length - len(values))
        else:
            values = _side(text, length, what)
        if values is None:
            parts += [1.0] * length
        else:
            parts += [w if w > threshold else 0.0 for w in values]
    return [1.0, *parts, 1.0] if sdxl else parts


def _list(text: str | None, count: int, what: str, cast) -> list | None:
    if text is None:
        return None
    try:
        values = [cast(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"{what} = {text!r} is not valid: use {count} comma-separated numbers.") from None
    if len(values) != count:
        raise ValueError(f"{what} needs {count} numbers (one per UNet block), not {len(values)}.")
    return values


def block_dims_and_alphas(
    sdxl: bool,
    block_dims: str | None,
    block_alphas: str | None,
    network_dim: int,
    network_alpha: float,
    conv_block_dims: str | None,
    conv_block_alphas: str | None,
    conv_dim: int | None,
    conv_alpha: float | None,
    lr_weights: Sequence[float] | None = None,
) -> tuple[list[int], list[float], list[int] | None, list[float] | None]:
    """(dims, alphas, conv dims, conv alphas) per block as sd-scripts' get_block_dims_and_alphas and
    remove_block_dims_and_alphas: missing lists are the network's dim/alpha (conv: conv_dim and
    conv_alpha, else none); blocks whose lr weight is 0 get dim 0."""
    count = num_blocks(sdxl)
    dims = _list(block_dims, count, "block_dims", int) or [network_dim] * count
    alphas = _list(block_alphas, count, "block_alphas", float) or [network_alpha] * count
    conv_dims = _list(conv_block_dims, count, "conv_block_dims", int)
    conv_alphas: list[float] | None
    if conv_dims is not None:
        default = 1.0 if conv_alpha is None else conv_alpha
        conv_alphas = _list(conv_block_alphas, count, "conv_block_alphas", float) or [default] * count
    elif conv_dim is not None:
        conv_dims = [conv_dim] * count
        conv_alphas = [1.0 if conv_alpha is None else conv_alpha] * count
    else:
        conv_alphas = None
    if lr_weights is not None:
        for i, weight in enumerate(lr_weights):
            if weight == 0:
                dims[i] = 0
                if conv_dims is not None:
                    conv_dims[i] = 0
    return dims, alphas, conv_dims, conv_alphas


def module_dim(
    kohya_name: str,
    is_conv3x3: bool,
    sdxl: bool,
    dims: Sequence[int],
    alphas: Sequence[float],
    conv_dims: Sequence[int] | None,
    conv_alphas: Sequence[float] | None,
) -> tuple[int, float] | None:
    """(rank, alpha) of one UNet LoRA from the per-block lists; None = no LoRA there (dim 0, or a
    3x3 conv without conv dims)."""
    index = block_index(kohya_name, sdxl)
    if is_conv3x3:
        if conv_dims is None or conv_alphas is None:
            return None
        dim, alpha = conv_dims[index], conv_alphas[index]
    else:
        dim, alpha = dims[index], alphas[index]
    return (int(dim), float(alpha)) if dim else None
