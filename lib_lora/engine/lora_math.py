"""Pure tensor math of a LoRA branch (no modules, no state).

A LoRA adds ``up(down(x)) * multiplier * scale`` to a layer's output, ``scale = alpha / rank``.
For Linear layers ``down`` is ``[rank, in]`` and ``up`` ``[out, rank]``; for Conv2d, ``down`` is a
conv with the host's kernel/stride/padding (``[rank, in, kh, kw]``) and ``up`` a 1x1 conv
(``[out, rank, 1, 1]``), exactly as kohya sd-scripts lays them out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def effective_alpha(alpha: float | None, rank: int) -> float:
    """kohya's rule: an alpha of None or 0 means alpha = rank (scale 1)."""
    if alpha is None or alpha == 0:
        return float(rank)
    return float(alpha)


def lora_scale(alpha: float | None, rank: int) -> float:
    return effective_alpha(alpha, rank) / rank


def init_lora_(down: torch.Tensor, up: torch.Tensor) -> None:
    """Microsoft/kohya init: down kaiming-uniform(a=sqrt 5), up zeros -> the branch starts at zero."""
    with torch.no_grad():
        torch.nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        torch.nn.init.zeros_(up)


def delta_weight(down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    """The weight change ``up @ down * scale`` in the host weight's shape, computed in fp32.

    Linear: ``[out, in]``; 1x1 conv: ``[out, in, 1, 1]``; kxk conv: ``[out, in, k, k]`` (the
    composition of the k x k ``down`` conv and the 1x1 ``up`` conv).
    """
    down = down.float()
    up = up.float()
    if down.dim() == 2:
        return (up @ down) * scale
    if down.shape[2:] == (1, 1):
        return (up.flatten(1) @ down.flatten(1)).unsqueeze(2).unsqueeze(3) * scale
    return F.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3) * scale


def rank_dropout_mask(shape: torch.Size, rank_dim: int, p: float, device: torch.device) -> torch.Tensor:
    """Per-sample Bernoulli keep-mask over the rank channels, shaped to broadcast over ``lx``.

    ``lx`` is ``[B, r]`` / ``[B, L, r]`` (Linear: rank last) or ``[B, r, H, W]`` (conv: rank_dim 1).
    """
    batch, rank = shape[0], shape[rank_dim]
    mask = (torch.rand((batch, rank), device=device) > p).to(torch.float32)
    view = [batch] + [1] * (len(shape) - 1)
    view[rank_dim] = rank
    return mask.view(view)
