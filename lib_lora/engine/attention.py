"""Memory-efficient attention for training on ldm/sgm ``CrossAttention`` modules.

The webui's SD1/SDXL UNets (ldm's and sgm's ``CrossAttention``) compute attention as
``softmax(q k^T * scale) v`` with the full [batch*heads, tokens, tokens] matrix kept for the
backward pass: at 512 px that matrix alone is most of a training step's memory, at 1024 px it
grows with the square of the token count. During a run each such module gets an instance
``forward`` (:func:`sdpa_forward`) that calls PyTorch's ``scaled_dot_product_attention`` (flash /
memory-efficient kernels on CUDA, a fused kernel on the CPU) with the same maths:

- projections through the module's own ``to_q`` / ``to_k`` / ``to_v`` / ``to_out`` (so LoRAs patched
  on them train), context = x for self-attention;
- heads split from the projection's width (``heads`` x ``inner / heads``), the module's own
  ``scale`` (ldm: ``dim_head ** -0.5``);
- ldm's boolean key mask [B, ...] (True = attend) as SDPA's boolean mask;
- the output in the projections' dtype.

The patch is per instance (the class, and so the webui's own cross-attention optimisation
switch, is never touched) and :class:`SdpaAttention` takes every patch out again, putting back
any instance ``forward`` that was there before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lib_lora.engine.patching import ModulePatch, replace_forward, restore_forward

ATTENTION_CLASSES = ("CrossAttention", "MemoryEfficientCrossAttention")


def is_ldm_attention(module: nn.Module) -> bool:
    """An ldm/sgm attention layer (``to_q``/``to_k``/``to_v``/``to_out`` and ``heads``)."""
    return type(module).__name__ in ATTENTION_CLASSES and all(
        hasattr(module, name) for name in ("to_q", "to_k", "to_v", "to_out", "heads")
    )


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, H*D] -> [B, H, N, D]."""
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """[B, H, N, D] -> [B, N, H*D]."""
    return t.transpose(1, 2).flatten(2)


def key_mask(mask: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """ldm's mask (True = attend, any shape [B, ...] flattened to the keys) -> SDPA's [B, 1, 1, K]."""
    if mask is None:
        return None
    return mask.reshape(batch, -1).to(torch.bool)[:, None, None, :]


def sdpa_forward(self: nn.Module, x: torch.Tensor, context: torch.Tensor | None = None, mask: Any = None, **_: Any):
    """ldm/sgm ``CrossAttention.forward`` through ``scaled_dot_product_attention``."""
    if _.get("additional_tokens") is not None or _.get("n_times_crossframe_attn_in_self"):
        return type(self).forward(self, x, context, mask, **_)  # sgm's video options: not ours
    context = x if context is None else context
    q = self.to_q(x)
    k = self.to_k(context)
    v = self.to_v(context)
    heads = int(self.heads)
    scale = getattr(self, "scale", None)
    q, k, v = (split_heads(t, heads) for t in (q, k, v))
    if k.dtype != q.dtype:  # e.g. a float32 context into half projections under autocast
        k, v = k.to(q.dtype), v.to(q.dtype)
    kwargs = {"scale": float(scale)} if scale is not None else {}
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask(mask, x.shape[0]), **kwargs)
    return self.to_out(merge_heads(out))


class SdpaAttention(ModulePatch):
    """Install :func:`sdpa_forward` on every ldm/sgm attention module under ``roots`` (per
    instance) for the lifetime of a ``with`` block; everything is put back on exit."""

    def __init__(self, roots: Iterable[nn.Module]) -> None:
        self.roots = list(roots)
        self.patched: list[tuple[nn.Module, Any]] = []

    def install(self) -> int:
        seen: set[int] = set()
        for root in self.roots:
            for module in root.modules():
                if id(module) in seen or not is_ldm_attention(module):
                    continue
                seen.add(id(module))
                self.patched.append((module, replace_forward(module, sdpa_forward)))
        return len(self.patched)

    def remove(self) -> None:
        while self.patched:
            restore_forward(*self.patched.pop())
