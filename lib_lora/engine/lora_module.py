"""One network module (LoRA/LoCon, LoHa or LoKr, each optionally DoRA) on one host layer, injected
into the host's own module tree.

The host module is never replaced: its ``forward`` is patched per instance (``apply``) and put back
(``restore``), so names, hooks, devices and the webui's own attention code keep working, and a
restored model is bit-identical to the original.

Host kinds:
- ``linear`` / ``conv``: a Linear or Conv2d; the branch ``up(down(x))`` is added to its output.
- ``mha_q`` / ``mha_k`` / ``mha_v`` / ``mha_out``: the thirds of an ``nn.MultiheadAttention``'s fused
  ``in_proj_weight`` and its ``out_proj`` (OpenCLIP text encoders, as the webui holds SDXL's bigG).
  The attention calls those weights directly, so these LoRAs act as weight deltas added for the
  duration of the call; element and rank dropout do not apply to them (module dropout does).

Algorithms (``ALGOS``), each a subclass of ``NetworkModule`` that owns its tensors and one pure
delta-W function in ``lora_math``; the base class does the host patching, merging and DoRA:

- ``lora`` (LoRA / LoCon): ``lora_down`` / ``lora_up`` (+ ``lora_mid``, a Tucker core on k x k convs);
  the branch runs on activations, as kohya's.
- ``loha``: ``hada_w1_a @ hada_w1_b`` times (element-wise) ``hada_w2_a @ hada_w2_b`` (+ ``hada_t1/t2``).
- ``lokr``: ``kron(lokr_w1, lokr_w2)``, each factor full or a low-rank pair (+ ``lokr_t2``).
- DoRA (``dora_wd``) on any of them: a trained magnitude ``dora_scale`` [1, in] (conv [1, in, 1, 1]),
  the host weight re-normalised per input column (see ``lora_math.dora_delta``).

LoHa, LoKr and DoRA modules add ``op(x, delta_weight)`` (the host's own linear/conv with the weight
change), which is exactly what a loader that merges the file computes.

Parameter roles (``NetworkModule.param_roles``), for per-group learning rates such as LoRA+:
``down`` (input-side factor), ``up`` (output-side factor: ``lora_up``, ``hada_w1_a``, ``hada_w2_a``,
``lokr_w2`` / ``lokr_w2_a``), ``mid`` (Tucker cores), ``kron`` (LoKr's small factor ``lokr_w1*``),
``magnitude`` (``dora_scale``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lib_lora.engine import lora_math
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


ALGOS = ("lora", "loha", "lokr")
ALGO_LABELS = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr"}


class NetworkModule(nn.Module):
    """What every algorithm shares: the host patch, the verbs, the multiplier, dropouts, DoRA.

    Subclasses set ``ALGO``, ``TENSORS`` (their file tensor names, in file order) and ``ROLES``, build
    their parameters from a ``layout`` (tensor name -> shape) and implement ``raw_delta`` (the scaled
    weight change without DoRA or multiplier)."""

    ALGO = ""
    TENSORS: tuple[str, ...] = ()
    ROLES: dict[str, str] = {}

    def __init__(
        self,
        key: str,
        host: nn.Module,
        kind: str,
        rank: int,
        alpha: float | None,
        *,
        multiplier: float = 1.0,
        dropout: float | None = None,
        rank_dropout: float | None = None,
        module_dropout: float | None = None,
        dora_wd: bool = False,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown LoRA host kind {kind!r}")
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if kind == "conv" and host.groups != 1:
            raise ValueError(f"{key}: grouped convolutions are not supported")
        self.key = key
        self.kind = kind
        self.rank = rank
        self.in_dim, self.out_dim = host_dims(host, kind)
        self.kernel: tuple[int, ...] = tuple(host.kernel_size) if kind == "conv" else ()
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
        self._merge_delta: torch.Tensor | None = None
        self.dora_scale: nn.Parameter | None = None
        if dora_wd:
            self.dora_scale = nn.Parameter(lora_math.column_norm(self._host_weight_slice().detach()))

    # -- what subclasses provide ---------------------------------------------------------------------
    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_dim, self.in_dim, *self.kernel)

    def raw_delta(self) -> torch.Tensor:
        """The algorithm's weight change in the host weight's shape, ``alpha / rank`` applied (fp32)."""
        raise NotImplementedError

    def algo_tensors(self) -> dict[str, torch.Tensor]:
        """The algorithm's own file tensors (name -> tensor), without alpha / dora_scale."""
        return {name: getattr(self, name) for name in self.TENSORS if getattr(self, name, None) is not None}

    # -- state ---------------------------------------------------------------------------------
    @property
    def host(self) -> nn.Module:
        return self._host[0]

    @property
    def applied(self) -> bool:
        return self._applied

    @property
    def dora(self) -> bool:
        return self.dora_scale is not None

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor this module writes, by its file name: the algorithm's, ``alpha``, ``dora_scale``."""
        out = dict(self.algo_tensors())
        out["alpha"] = self.alpha
        if self.dora_scale is not None:
            out["dora_scale"] = self.dora_scale
        return out

    def param_roles(self) -> dict[str, tuple[nn.Parameter, str]]:
        """file name -> (parameter, role); roles in the module docstring (``up`` = output side)."""
        out = {name: (param, self.ROLES[name]) for name, param in self.algo_tensors().items()}
        if self.dora_scale is not None:
            out["dora_scale"] = (self.dora_scale, "magnitude")
        return out

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
        """The change this module makes to its host weight (fp32, DoRA and multiplier included)."""
        delta = self.raw_delta()
        if self.dora_scale is not None:
            delta = lora_math.dora_delta(self._host_weight_slice().detach(), delta, self.dora_scale)
        return delta * self.multiplier

    def _skip_this_call(self) -> bool:
        if not self.enabled or self.merged or self.multiplier == 0.0:
            return True
        return bool(self.module_dropout and self.training and torch.rand(1).item() < self.module_dropout)

    # -- activation branch (linear / conv hosts) -------------------------------------------------
    def branch(self, x: torch.Tensor) -> torch.Tensor | None:
        """The host op applied to ``x`` with the weight change, or None when this call adds nothing.

        While training, the full-size delta-W (and DoRA's re-normalised weight) is recomputed in the
        backward pass instead of being kept: autograd would otherwise hold a whole-layer fp32 tensor per
        layer until backward — a full fp32 copy of the model per kept tensor for LoKr / LoHa / DoRA."""
        if self._skip_this_call():
            return None
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return checkpoint(self._weight_branch, x, use_reentrant=False)
        return self._weight_branch(x)

    def _weight_branch(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.delta_weight()
        if not _autocast_on(x.device.type):
            x = x.to(delta.dtype)
        if self.kind == "conv":
            host = self.host
            return F.conv2d(x, delta, None, host.stride, host.padding, host.dilation)
        return F.linear(x, delta)

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
        """Add the change into the host weight; the branch is then skipped. ``unmerge`` undoes it
        exactly when a backup was kept, else by subtracting the same change."""
        if self.merged:
            return
        weight = self._host_weight_slice()
        self._merge_backup = weight.detach().clone() if keep_backup else None
        delta = self.delta_weight().to(device=weight.device, dtype=weight.dtype)
        self._merge_delta = None if keep_backup else delta
        weight.add_(delta)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        weight = self._host_weight_slice()
        if self._merge_backup is not None:
            weight.copy_(self._merge_backup)
        else:
            weight.sub_(self._merge_delta)
        self._merge_backup = None
        self._merge_delta = None
        self.merged = False


def lora_shapes(host: nn.Module, kind: str, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(lora_down shape, lora_up shape) of a rank-``rank`` LoRA on ``host``, without building it."""
    in_dim, out_dim = host_dims(host, kind)
    if kind == "conv":
        kh, kw = host.kernel_size
        return (rank, in_dim, kh, kw), (out_dim, rank, 1, 1)
    return (rank, in_dim), (out_dim, rank)


def shape_layout(
    algo: str,
    out_dim: int,
    in_dim: int,
    kernel: tuple[int, ...],
    rank: int,
    *,
    factor: int = -1,
    decompose_both: bool = False,
    full_matrix: bool = False,
    use_tucker: bool = False,
) -> dict[str, tuple[int, ...]]:
    """The file tensors (name -> shape, alpha and dora_scale aside) of an ``algo`` module on a host
    weight ``[out_dim, in_dim, *kernel]`` (``kernel`` empty for Linear)."""
    kernel = tuple(kernel)
    tucker = use_tucker and any(k != 1 for k in kernel)
    if algo == "lora":
        if tucker:
            return {
                "lora_down.weight": (rank, in_dim, 1, 1),
                "lora_up.weight": (out_dim, rank, 1, 1),
                "lora_mid.weight": (rank, rank, *kernel),
            }
        if kernel:
            return {"lora_down.weight": (rank, in_dim, *kernel), "lora_up.weight": (out_dim, rank, 1, 1)}
        return {"lora_down.weight": (rank, in_dim), "lora_up.weight": (out_dim, rank)}
    if algo == "loha":
        if tucker:
            pair = {"w1_a": (rank, out_dim), "w1_b": (rank, in_dim), "t1": (rank, rank, *kernel)}
        else:
            ksize = math.prod(kernel) if kernel else 1
            pair = {"w1_a": (out_dim, rank), "w1_b": (rank, in_dim * ksize)}
        layout = {f"hada_{name}": shape for name, shape in pair.items()}
        layout.update({f"hada_{name.replace('1', '2')}": shape for name, shape in pair.items()})
        return layout
    if algo == "lokr":
        return lora_math.lokr_layout(out_dim, in_dim, kernel, rank, factor, decompose_both, full_matrix, use_tucker)
    raise ValueError(f"unknown network algorithm {algo!r}")


def module_layout(algo: str, host: nn.Module, kind: str, rank: int, **options) -> dict[str, tuple[int, ...]]:
    """``shape_layout`` for a host layer (options: factor, decompose_both, full_matrix, use_tucker)."""
    in_dim, out_dim = host_dims(host, kind)
    kernel = tuple(host.kernel_size) if kind == "conv" else ()
    return shape_layout(algo, out_dim, in_dim, kernel, rank, **options)


class LoRAModule(NetworkModule):
    """``out = host(x) + up(down(x)) * multiplier * alpha / rank``, kohya-compatible tensors; a Tucker
    core ``lora_mid`` between them on k x k convs with ``use_tucker``; DoRA with ``dora_wd``."""

    ALGO = "lora"
    TENSORS = ("lora_down.weight", "lora_up.weight", "lora_mid.weight")
    ROLES = {"lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid"}

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
        use_tucker: bool = False,
        dora_wd: bool = False,
        layout: dict[str, tuple[int, ...]] | None = None,
    ) -> None:
        super().__init__(
            key, host, kind, rank, alpha, multiplier=multiplier, dropout=dropout, rank_dropout=rank_dropout,
            module_dropout=module_dropout, dora_wd=dora_wd,
        )  # fmt: skip
        layout = layout or module_layout("lora", host, kind, rank, use_tucker=use_tucker)
        self.lora_mid: nn.Conv2d | None = None
        if kind == "conv":
            if "lora_mid.weight" in layout:
                self.lora_down = nn.Conv2d(self.in_dim, rank, (1, 1), bias=False)
                self.lora_mid = nn.Conv2d(rank, rank, host.kernel_size, host.stride, host.padding, bias=False)
            else:
                self.lora_down = nn.Conv2d(self.in_dim, rank, host.kernel_size, host.stride, host.padding, bias=False)
            self.lora_up = nn.Conv2d(rank, self.out_dim, (1, 1), (1, 1), bias=False)
        else:
            self.lora_down = nn.Linear(self.in_dim, rank, bias=False)
            self.lora_up = nn.Linear(rank, self.out_dim, bias=False)
        init_lora_(self.lora_down.weight, self.lora_up.weight)
        if self.lora_mid is not None:
            with torch.no_grad():
                torch.nn.init.kaiming_uniform_(self.lora_mid.weight, a=math.sqrt(5))

    def algo_tensors(self) -> dict[str, torch.Tensor]:
        out = {"lora_down.weight": self.lora_down.weight, "lora_up.weight": self.lora_up.weight}
        if self.lora_mid is not None:
            out["lora_mid.weight"] = self.lora_mid.weight
        return out

    def raw_delta(self) -> torch.Tensor:
        if self.lora_mid is not None:
            return lora_math.locon_tucker_delta(
                self.lora_down.weight, self.lora_mid.weight, self.lora_up.weight, self.scale
            )
        return delta_weight(self.lora_down.weight, self.lora_up.weight, self.scale)

    def branch(self, x: torch.Tensor) -> torch.Tensor | None:
        """``up(down(x)) * multiplier * scale`` on activations (DoRA: the weight form)."""
        if self.dora_scale is not None:
            return super().branch(x)
        if self._skip_this_call():
            return None
        weight = self.lora_down.weight
        if x.dtype != weight.dtype and not _autocast_on(x.device.type):
            x = x.to(weight.dtype)
        lx = self.lora_down(x)
        if self.lora_mid is not None:
            lx = self.lora_mid(lx)
        if self.dropout and self.training:
            lx = F.dropout(lx, p=self.dropout)
        scale = self.scale
        if self.rank_dropout and self.training:
            rank_dim = 1 if self.kind == "conv" else lx.dim() - 1
            lx = lx * rank_dropout_mask(lx.shape, rank_dim, self.rank_dropout, lx.device).to(lx.dtype)
            scale = scale / (1.0 - self.rank_dropout)
        return self.lora_up(lx) * (self.multiplier * scale)


class LoHaModule(NetworkModule):
    """LoHa: ``dW = (hada_w1_a @ hada_w1_b) * (hada_w2_a @ hada_w2_b) * alpha / rank`` (Hadamard
    product), Tucker cores ``hada_t1`` / ``hada_t2`` on k x k convs with ``use_tucker``. Init as
    LyCORIS: ``w*_b`` ~ N(0, 1), ``w1_a`` ~ N(0, 0.1), ``w2_a`` zeros (the change starts at zero)."""

    ALGO = "loha"
    TENSORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
    ROLES = {"hada_w1_a": "up", "hada_w1_b": "down", "hada_w2_a": "up", "hada_w2_b": "down",
             "hada_t1": "mid", "hada_t2": "mid"}  # fmt: skip

    def __init__(
        self,
        key: str,
        host: nn.Module,
        kind: str,
        rank: int,
        alpha: float | None = None,
        *,
        multiplier: float = 1.0,
        module_dropout: float | None = None,
        use_tucker: bool = False,
        dora_wd: bool = False,
        layout: dict[str, tuple[int, ...]] | None = None,
    ) -> None:
        super().__init__(
            key, host, kind, rank, alpha, multiplier=multiplier, module_dropout=module_dropout, dora_wd=dora_wd
        )
        layout = layout or module_layout("loha", host, kind, rank, use_tucker=use_tucker)
        for name in self.TENSORS:
            setattr(self, name, nn.Parameter(torch.empty(layout[name])) if name in layout else None)
        with torch.no_grad():
            nn.init.normal_(self.hada_w1_b, std=1.0)
            nn.init.normal_(self.hada_w1_a, std=0.1)
            nn.init.normal_(self.hada_w2_b, std=1.0)
            nn.init.zeros_(self.hada_w2_a)
            for core in (self.hada_t1, self.hada_t2):
                if core is not None:
                    nn.init.normal_(core, std=0.1)

    def raw_delta(self) -> torch.Tensor:
        return lora_math.loha_delta(
            self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b, self.scale, self.weight_shape,
            self.hada_t1, self.hada_t2,
        )  # fmt: skip


class LoKrModule(NetworkModule):
    """LoKr: ``dW = kron(lokr_w1, lokr_w2) * alpha / rank``; see ``lora_math.lokr_layout`` for which
    factors are full and which low-rank. With both factors full the scale is 1 (LyCORIS and the
    webui both ignore alpha then; the file stores alpha = rank). Init as LyCORIS: ``w1*`` and
    ``w2_a`` / ``t2`` kaiming-uniform, ``lokr_w2`` / ``lokr_w2_b`` zeros."""

    ALGO = "lokr"
    TENSORS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
    ROLES = {"lokr_w1": "kron", "lokr_w1_a": "kron", "lokr_w1_b": "kron", "lokr_w2": "up", "lokr_w2_a": "up",
             "lokr_w2_b": "down", "lokr_t2": "mid"}  # fmt: skip

    def __init__(
        self,
        key: str,
        host: nn.Module,
        kind: str,
        rank: int,
        alpha: float | None = None,
        *,
        multiplier: float = 1.0,
        module_dropout: float | None = None,
        factor: int = -1,
        decompose_both: bool = False,
        full_matrix: bool = False,
        use_tucker: bool = False,
        dora_wd: bool = False,
        layout: dict[str, tuple[int, ...]] | None = None,
    ) -> None:
        layout = layout or module_layout(
            "lokr", host, kind, rank, factor=factor, decompose_both=decompose_both, full_matrix=full_matrix,
            use_tucker=use_tucker,
        )  # fmt: skip
        if "lokr_w1" in layout and "lokr_w2" in layout:
            alpha = rank  # both factors full: scale 1
        super().__init__(
            key, host, kind, rank, alpha, multiplier=multiplier, module_dropout=module_dropout, dora_wd=dora_wd
        )
        for name in self.TENSORS:
            setattr(self, name, nn.Parameter(torch.empty(layout[name])) if name in layout else None)
        with torch.no_grad():
            for name in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_t2"):
                if getattr(self, name) is not None:
                    nn.init.kaiming_uniform_(getattr(self, name), a=math.sqrt(5))
            for name in ("lokr_w2", "lokr_w2_b"):
                if getattr(self, name) is not None:
                    nn.init.zeros_(getattr(self, name))

    def set_alpha(self, alpha: float) -> None:
        if self.lokr_w1 is not None and self.lokr_w2 is not None:
            alpha = self.rank
        super().set_alpha(alpha)

    def raw_delta(self) -> torch.Tensor:
        return lora_math.lokr_delta(
            self.lokr_w1, self.lokr_w1_a, self.lokr_w1_b, self.lokr_w2, self.lokr_w2_a, self.lokr_w2_b, self.scale,
            self.weight_shape, self.lokr_t2,
        )  # fmt: skip


MODULE_CLASSES: dict[str, type[NetworkModule]] = {"lora": LoRAModule, "loha": LoHaModule, "lokr": LoKrModule}


def layout_rank(algo: str, layout: dict[str, tuple[int, ...]]) -> int:
    """The rank a file layout implies (LoKr with both factors full: 1, as LyCORIS reads it)."""
    if algo == "lora":
        return int(layout["lora_down.weight"][0])
    if algo == "loha":
        return int(layout["hada_w1_b"][0])
    if "lokr_w1_a" in layout:
        return int(layout["lokr_w1_a"][1])
    if "lokr_w2_b" in layout:
        return int(layout["lokr_w2_b"][0])
    return 1


def make_module(
    algo: str,
    key: str,
    host: nn.Module,
    kind: str,
    rank: int,
    alpha: float | None,
    *,
    dora_wd: bool = False,
    layout: dict[str, tuple[int, ...]] | None = None,
    multiplier: float = 1.0,
    dropout: float | None = None,
    rank_dropout: float | None = None,
    module_dropout: float | None = None,
    factor: int = -1,
    decompose_both: bool = False,
    full_matrix: bool = False,
    use_tucker: bool = False,
) -> NetworkModule:
    """A module of ``algo`` with the options that algorithm takes (the others are ignored)."""
    common = {"multiplier": multiplier, "module_dropout": module_dropout, "dora_wd": dora_wd, "layout": layout}
    if algo == "lora":
        return LoRAModule(key, host, kind, rank, alpha, dropout=dropout, rank_dropout=rank_dropout,
                          use_tucker=use_tucker, **common)  # fmt: skip
    if algo == "loha":
        return LoHaModule(key, host, kind, rank, alpha, use_tucker=use_tucker, **common)
    if algo == "lokr":
        return LoKrModule(key, host, kind, rank, alpha, factor=factor, decompose_both=decompose_both,
                          full_matrix=full_matrix, use_tucker=use_tucker, **common)  # fmt: skip
    raise ValueError(f"unknown network algorithm {algo!r}")


class _MHAPatch:
    """Routes an ``nn.MultiheadAttention``'s fused weights through the LoRAs attached to it."""

    _ATTR = "_lib_lora_mha_patch"

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        if not getattr(mha, "_qkv_same_embed_dim", True):
            raise ValueError("LoRA on MultiheadAttention needs a fused in_proj_weight")
        self.mha = mha
        self.loras: dict[str, NetworkModule] = {}
        self._saved_forward = mha.__dict__.get("forward")
        self._orig_forward = mha.forward
        mha.forward = self.forward
        mha.__dict__[self._ATTR] = self

    @classmethod
    def of(cls, mha: nn.MultiheadAttention) -> _MHAPatch:
        return mha.__dict__.get(cls._ATTR) or cls(mha)

    def attach(self, lora: NetworkModule) -> None:
        self.loras[lora.kind] = lora

    def detach(self, lora: NetworkModule) -> None:
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
