"""One LoRA on one host layer, injected into the host's own module tree.

The host module is never replaced: its ``forward`` is patched per instance (``apply``) and put back
(``restore``), so names, hooks, devices and the webui's own attention code keep working, and a
restored model is bit-identical to the original.

Host kinds:
- ``linear`` / ``conv``: a Linear or Conv2d; the branch ``up(down(x))`` is added to its output.
- ``mha_q`` / ``mha_k`` / ``mha_v`` / ``mha_out``: the thirds of an ``nn.MultiheadAttention``'s fused
  ``in_proj_weight`` and its ``out_proj`` (OpenCLIP text encoders, as the webui holds SDXL's bigG).
  The attention calls those weights directly, so these LoRAs act as weight deltas added for the
  duration of the call; element and rank dropout do not apply to them (module dropout does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lib_lora.engine.lora_math import delta_weight, effective_alpha, init_lora_, rank_dropout_mask

MHA_KINDS = ("mha_q", "mha_k", "mha_v")
KINDS = ("linear", "conv", *MHA_KINDS, "mha_out")


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


def host_dims(host: nn.Module, kind: str) -> tuple[int, int]:
    """(in features/channels, out features/channels) of the layer a LoRA of ``kind`` wraps."""
    if kind == "linear":
        return host.in_features, host.out_features
    if kind == "conv":
        return host.in_channels, host.out_channels
    if kind in MHA_KINDS or kind == "mha_out":
        return host.embed_dim, host.embed_dim
    raise ValueError(f"unknown LoRA host kind {kind!r}")


def lora_shapes(host: nn.Module, kind: str, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(lora_down shape, lora_up shape) of a rank-``rank`` LoRA on ``host``, without building it."""
    in_dim, out_dim = host_dims(host, kind)
    if kind == "conv":
        kh, kw = host.kernel_size
        return (rank, in_dim, kh, kw), (out_dim, rank, 1, 1)
    return (rank, in_dim), (out_dim, rank)


class LoRAModule(nn.Module):
    """``out = host(x) + up(down(x)) * multiplier * alpha / rank``, kohya-compatible tensors."""

    def __init__(
        self,
        key: str,
        host: nn.Module,
        kind: str,
        rank: int,
        alpha: float | None = None,
        *,
        multiplier: float = 1.0,
        dropout: float | None = None,
        rank_dropout: float | None = None,
        module_dropout: float | None = None,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown LoRA host kind {kind!r}")
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.key = key
        self.kind = kind
        self.rank = rank
        in_dim, out_dim = host_dims(host, kind)
        if kind == "conv":
            if host.groups != 1:
                raise ValueError(f"{key}: grouped convolutions are not supported")
            self.lora_down = nn.Conv2d(in_dim, rank, host.kernel_size, host.stride, host.padding, bias=False)
            self.lora_up = nn.Conv2d(rank, out_dim, (1, 1), (1, 1), bias=False)
        else:
            self.lora_down = nn.Linear(in_dim, rank, bias=False)
            self.lora_up = nn.Linear(rank, out_dim, bias=False)
        init_lora_(self.lora_down.weight, self.lora_up.weight)
        self.register_buffer("alpha", torch.tensor(effective_alpha(alpha, rank), dtype=torch.float32))
        self.scale = float(self.alpha) / rank
        self.multiplier = float(multiplier)
        self.dropout = dropout or None
        self.rank_dropout = rank_dropout or None
        self.module_dropout = module_dropout or None
        self.enabled = True
        self.merged = False
        self._host = [host]  # a list, so the host is not registered as a submodule
        self._applied = False
        self._saved_forward: object | None = None
        self._orig_forward = None
        self._merge_backup: torch.Tensor | None = None

    # -- state ---------------------------------------------------------------------------------
    @property
    def host(self) -> nn.Module:
        return self._host[0]

    @property
    def applied(self) -> bool:
        return self._applied

    def set_alpha(self, alpha: float) -> None:
        """Set alpha (e.g. from a loaded file); keeps the cached scale in step."""
        self.alpha.fill_(float(alpha))
        self.scale = float(alpha) / self.rank

    def set_multiplier(self, multiplier: float) -> None:
        self.multiplier = float(multiplier)

    def enable(self) -> None:
        self.enabled = True

    def disable(self) -> None:
        self.enabled = False

    def delta_weight(self) -> torch.Tensor:
        """The change this LoRA makes to its host weight (fp32, multiplier included)."""
        return delta_weight(self.lora_down.weight, self.lora_up.weight, self.scale) * self.multiplier

    def _skip_this_call(self) -> bool:
        if not self.enabled or self.merged or self.multiplier == 0.0:
            return True
        return bool(self.module_dropout and self.training and torch.rand(1).item() < self.module_dropout)

    # -- activation branch (linear / conv hosts) -------------------------------------------------
    def branch(self, x: torch.Tensor) -> torch.Tensor | None:
        """``up(down(x)) * multiplier * scale``, or None when this call adds nothing."""
        if self._skip_this_call():
            return None
        weight = self.lora_down.weight
        if x.dtype != weight.dtype and not _autocast_on(x.device.type):
            x = x.to(weight.dtype)
        lx = self.lora_down(x)
        if self.dropout and self.training:
            lx = F.dropout(lx, p=self.dropout)
        scale = self.scale
        if self.rank_dropout and self.training:
            rank_dim = 1 if self.kind == "conv" else lx.dim() - 1
            lx = lx * rank_dropout_mask(lx.shape, rank_dim, self.rank_dropout, lx.device).to(lx.dtype)
            scale = scale / (1.0 - self.rank_dropout)
        return self.lora_up(lx) * (self.multiplier * scale)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # installed as host.forward
        base = self._orig_forward(x, *args, **kwargs)
        extra = self.branch(x)
        if extra is None:
            return base
        return base + extra.to(base.dtype)

    # -- verbs -------------------------------------------------------------------------------------
    def apply(self) -> None:
        """Patch the host so its output includes this LoRA. Idempotent."""
        if self._applied:
            return
        host = self.host
        if self.kind in ("linear", "conv"):
            self._saved_forward = host.__dict__.get("forward")
            self._orig_forward = host.forward
            host.forward = self.forward
        else:
            _MHAPatch.of(host).attach(self)
        self._applied = True

    def restore(self) -> None:
        """Undo :meth:`apply` (un-merging first if merged). Idempotent."""
        if self.merged:
            self.unmerge()
        if not self._applied:
            return
        host = self.host
        if self.kind in ("linear", "conv"):
            if self._saved_forward is None:
                host.__dict__.pop("forward", None)
            else:
                host.forward = self._saved_forward
            self._orig_forward = None
            self._saved_forward = None
        else:
            _MHAPatch.of(host).detach(self)
        self._applied = False

    def _host_weight_slice(self) -> torch.Tensor:
        host = self.host
        if self.kind in ("linear", "conv"):
            return host.weight
        if self.kind == "mha_out":
            return host.out_proj.weight
        index = MHA_KINDS.index(self.kind)
        dim = host.embed_dim
        return host.in_proj_weight[index * dim : (index + 1) * dim]

    @torch.no_grad()
    def merge(self, keep_backup: bool = True) -> None:
        """Add the LoRA into the host weight; the branch is then skipped. ``unmerge`` undoes it
        exactly when a backup was kept, else by subtraction."""
        if self.merged:
            return
        weight = self._host_weight_slice()
        self._merge_backup = weight.detach().clone() if keep_backup else None
        weight.add_(self.delta_weight().to(device=weight.device, dtype=weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        weight = self._host_weight_slice()
        if self._merge_backup is not None:
            weight.copy_(self._merge_backup)
        else:
            weight.sub_(self.delta_weight().to(device=weight.device, dtype=weight.dtype))
        self._merge_backup = None
        self.merged = False


class _MHAPatch:
    """Routes an ``nn.MultiheadAttention``'s fused weights through the LoRAs attached to it."""

    _ATTR = "_lib_lora_mha_patch"

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        if not getattr(mha, "_qkv_same_embed_dim", True):
            raise ValueError("LoRA on MultiheadAttention needs a fused in_proj_weight")
        self.mha = mha
        self.loras: dict[str, LoRAModule] = {}
        self._saved_forward = mha.__dict__.get("forward")
        self._orig_forward = mha.forward
        mha.forward = self.forward
        mha.__dict__[self._ATTR] = self

    @classmethod
    def of(cls, mha: nn.MultiheadAttention) -> _MHAPatch:
        return mha.__dict__.get(cls._ATTR) or cls(mha)

    def attach(self, lora: LoRAModule) -> None:
        self.loras[lora.kind] = lora

    def detach(self, lora: LoRAModule) -> None:
        if self.loras.get(lora.kind) is lora:
            del self.loras[lora.kind]
        if not self.loras:
            if self._saved_forward is None:
                self.mha.__dict__.pop("forward", None)
            else:
                self.mha.forward = self._saved_forward
            self.mha.__dict__.pop(self._ATTR, None)

    def forward(self, *args, **kwargs):
        active = {kind: lora for kind, lora in self.loras.items() if not lora._skip_this_call()}
        if not active:
            return self._orig_forward(*args, **kwargs)
        mha = self.mha
        in_weight = mha.in_proj_weight
        out_weight = mha.out_proj.weight
        dim = mha.embed_dim
        new_in = in_weight
        if any(kind in active for kind in MHA_KINDS):
            parts = []
            for kind in MHA_KINDS:
                lora = active.get(kind)
                if lora is None:
                    parts.append(in_weight.new_zeros((dim, in_weight.shape[1])))
                else:
                    parts.append(lora.delta_weight().to(in_weight.dtype))
            new_in = in_weight + torch.cat(parts, dim=0)
        new_out = out_weight
        if "mha_out" in active:
            new_out = out_weight + active["mha_out"].delta_weight().to(out_weight.dtype)
        params = mha._parameters
        out_params = mha.out_proj._parameters
        params["in_proj_weight"] = new_in
        out_params["weight"] = new_out
        try:
            return self._orig_forward(*args, **kwargs)
        finally:
            params["in_proj_weight"] = in_weight
            out_params["weight"] = out_weight
