"""A network: one module (LoRA/LoCon, LoHa or LoKr, optionally DoRA) per target, over the host's own
module tree.

The network owns the parameters and nothing of the host. Its state dict uses the canonical keys and
the file's tensor names (``<component>/<path>.lora_down.weight``, ``<...>.lokr_w1``, ``<...>.alpha``,
``<...>.dora_scale`` ...); ``lib_lora.formats.kohya`` converts the keys to and from kohya's names.

Which rank and alpha each module gets is one function of the target (``dims``): the default is
kohya's (``rank``/``alpha``, ``conv_rank``/``conv_alpha`` for k x k convs); a caller may pass its own
(per-block dims) or a dict (to continue from a file). ``module_layouts`` builds each module exactly as
a file holds it (algorithm, tensor shapes, DoRA), for loading any LoRA/LoHa/LoKr file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from lib_lora.engine.lora_module import ALGO_LABELS, MODULE_CLASSES, NetworkModule, layout_rank, make_module
from lib_lora.engine.targets import Target

ALGO_TENSORS = {algo: cls.TENSORS for algo, cls in MODULE_CLASSES.items()}
TENSOR_SUFFIXES = (*(name for names in ALGO_TENSORS.values() for name in names), "alpha", "dora_scale")


@dataclass(frozen=True)
class ModuleLayout:
    """One module as a file holds it: algorithm, tensor shapes (alpha / dora_scale aside), alpha, DoRA."""

    algo: str
    shapes: dict[str, tuple[int, ...]]
    alpha: float | None
    dora: bool

    @property
    def rank(self) -> int:
        return layout_rank(self.algo, self.shapes)


def tensor_algo(name: str) -> str | None:
    """The algorithm a file tensor name belongs to (None for alpha / dora_scale / unknown)."""
    for algo, names in ALGO_TENSORS.items():
        if name in names:
            return algo
    return None


@dataclass
class LoadReport:
    loaded: int = 0
    missing: list[str] = field(default_factory=list)  # network modules the weights did not cover
    unexpected: list[str] = field(default_factory=list)  # weights for modules the network lacks
    mismatched: list[str] = field(default_factory=list)  # shape differences, "key: file vs network"


class LoRANetwork(nn.Module):
    """LoRA modules for a list of targets, with the verbs apply/restore/merge/enable/disable."""

    def __init__(
        self,
        targets: Iterable[Target],
        rank: int,
        alpha: float | None = None,
        *,
        conv_rank: int | None = None,
        conv_alpha: float | None = None,
        multiplier: float = 1.0,
        dropout: float | None = None,
        rank_dropout: float | None = None,
        module_dropout: float | None = None,
        module_dims: dict[str, tuple[int, float]] | Callable[[Target], tuple[int, float | None] | None] | None = None,
        naming: dict[str, str] | None = None,
        family: str = "sd1",
        algo: str = "lora",
        dora_wd: bool = False,
        factor: int = -1,
        decompose_both: bool = False,
        full_matrix: bool = False,
        use_tucker: bool = False,
        module_layouts: dict[str, ModuleLayout] | None = None,
    ) -> None:
        """``module_dims`` gives each target its (rank, alpha): a dict (canonical key -> (rank,
        alpha)), e.g. to continue from a file, or a function of the target; a target it does not
        name (or the function maps to None) gets no module. ``algo`` (lora | loha | lokr) and the
        algorithm options apply to every module; ``module_layouts`` instead builds each named
        module exactly as a file holds it. ``naming`` records each component's module family
        (``unet``: ldm | diffusers; text encoders: hf | openclip)."""
        super().__init__()
        if algo not in MODULE_CLASSES:
            raise ValueError(f"unknown network algorithm {algo!r}")
        self.algo = algo
        self.dora_wd = dora_wd
        self.factor = factor
        self.family = family
        self.naming = dict(naming or {})
        self.rank = rank
        self.alpha = alpha
        self.conv_rank = conv_rank
        self.conv_alpha = conv_alpha
        self.targets: dict[str, Target] = {}
        modules = []
        for target in targets:
            if module_layouts is not None:
                spec = module_layouts.get(target.key)
                if spec is None:
                    continue
                module = make_module(
                    spec.algo, target.key, target.module, target.kind, spec.rank, spec.alpha, dora_wd=spec.dora,
                    layout=spec.shapes, multiplier=multiplier,
                )  # fmt: skip
            else:
                if callable(module_dims):
                    dims = module_dims(target)
                elif module_dims is not None:
                    dims = module_dims.get(target.key)
                elif target.conv_rank:
                    dims = (conv_rank, conv_alpha) if conv_rank else None
                else:
                    dims = (rank, alpha)
                if dims is None:
                    continue
                r, a = dims
                module = make_module(
                    algo, target.key, target.module, target.kind, int(r), a, dora_wd=dora_wd, multiplier=multiplier,
                    dropout=dropout, rank_dropout=rank_dropout, module_dropout=module_dropout, factor=factor,
                    decompose_both=decompose_both, full_matrix=full_matrix, use_tucker=use_tucker,
                )  # fmt: skip
            # on the host's device; LoRA weights stay fp32 (trained under autocast)
            device = _device_of(target.module)
            if device is not None:
                module.to(device)
            self.targets[target.key] = target
            modules.append(module)
        if len({m.key for m in modules}) != len(modules):
            raise ValueError("duplicate LoRA keys")
        self.loras = nn.ModuleList(modules)
        self._by_key = {m.key: m for m in modules}

    # -- lookup ----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[NetworkModule]:  # type: ignore[override]
        return iter(self.loras)

    def __len__(self) -> int:
        return len(self.loras)

    def __getitem__(self, key: str) -> NetworkModule:
        return self._by_key[key]

    def lora_keys(self) -> list[str]:
        return list(self._by_key)

    def components(self) -> list[str]:
        return sorted({key.split("/", 1)[0] for key in self._by_key})

    def modules_of(self, component: str) -> list[NetworkModule]:
        return [m for m in self.loras if m.key.split("/", 1)[0] == component]

    # -- verbs -----------------------------------------------------------------------------------
    def apply_to(self) -> None:
        for module in self.loras:
            module.apply()

    def restore(self) -> None:
        for module in reversed(self.loras):
            module.restore()

    def merge(self, keep_backup: bool = True) -> None:
        for module in self.loras:
            module.merge(keep_backup)

    def unmerge(self) -> None:
        for module in self.loras:
            module.unmerge()

    def enable(self) -> None:
        for module in self.loras:
            module.enable()

    def disable(self) -> None:
        for module in self.loras:
            module.disable()

    def set_multiplier(self, multiplier: float, component: str | None = None) -> None:
        for module in self.loras:
            if component is None or module.key.startswith(component + "/"):
                module.set_multiplier(multiplier)

    @property
    def applied(self) -> bool:
        return any(m.applied for m in self.loras)

    # -- parameters ------------------------------------------------------------------------------
    def param_groups(
        self,
        unet_lr: float | None,
        text_encoder_lr: float | None,
        learning_rate: float,
        *,
        loraplus_unet_ratio: float | None = None,
        loraplus_text_encoder_ratio: float | None = None,
        unet_block: Callable[[str], tuple[str, float]] | None = None,
    ) -> list[dict]:
        """kohya's optimizer groups: all text-encoder LoRAs at ``text_encoder_lr`` (else
        ``learning_rate``), all UNet LoRAs at ``unet_lr`` (else ``learning_rate``); lr-0 groups dropped.
        With a LoRA+ ratio the ``lora_up`` weights of that part get their own group at lr × ratio
        (sd-scripts' prepare_optimizer_params). ``unet_block`` (module key -> (block label, lr
        factor)) splits the UNet into one group per block at ``unet_lr`` × factor (block-wise lr)."""
        te_params: list[tuple[str, nn.Parameter]] = []
        unet_params: list[tuple[str, nn.Parameter]] = []
        for module in self.loras:
            (unet_params if module.key.startswith("unet/") else te_params).extend(module.named_parameters())
        groups = []
        te = learning_rate if text_encoder_lr is None else text_encoder_lr
        un = learning_rate if unet_lr is None else unet_lr
        parts = [("textencoder", te_params, te, loraplus_text_encoder_ratio)]
        if unet_block is None:
            parts.append(("unet", unet_params, un, loraplus_unet_ratio))
        else:
            blocks: dict[str, tuple[float, list[tuple[str, nn.Parameter]]]] = {}
            for module in self.loras:
                if module.key.startswith("unet/"):
                    label, factor = unet_block(module.key)
                    blocks.setdefault(label, (factor, []))[1].extend(module.named_parameters())
            for label, (factor, params) in blocks.items():
                parts.append((label, params, un * factor, loraplus_unet_ratio))
        for name, params, lr, ratio in parts:
            plain = [p for n, p in params if ratio is None or "lora_up" not in n]
            plus = [p for n, p in params if ratio is not None and "lora_up" in n]
            if plain and lr:
                groups.append({"name": name, "params": plain, "lr": lr})
            if plus and lr:
                groups.append({"name": f"{name} plus", "params": plus, "lr": lr * ratio})
        return groups

    def requires_grad_(self, requires_grad: bool = True) -> LoRANetwork:  # type: ignore[override]
        for module in self.loras:
            for param in module.parameters():
                param.requires_grad_(requires_grad)
        return self

    def param_roles(self) -> Iterator[tuple[NetworkModule, str, nn.Parameter, str]]:
        """(module, file tensor name, parameter, role) for every trained tensor; roles: down, up,
        mid, kron, magnitude (see ``lora_module``), e.g. to give ``up`` weights their own lr."""
        for module in self.loras:
            for name, (param, role) in module.param_roles().items():
                yield module, name, param, role

    def describe(self) -> str:
        """``LoKr + DoRA``-style name of what this network trains."""
        algos = sorted({m.ALGO for m in self.loras}) or [self.algo]
        text = "/".join(ALGO_LABELS[a] for a in algos)
        return text + (" + DoRA" if any(m.dora for m in self.loras) else "")

    # -- state -----------------------------------------------------------------------------------
    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """Canonical-keyed tensors: ``<key>.<file tensor name>`` (``lora_down.weight``, ``hada_w1_a``,
        ``lokr_w1``, ``alpha``, ``dora_scale`` ...)."""
        out: dict[str, torch.Tensor] = {}
        for module in self.loras:
            for name, tensor in module.file_tensors().items():
                out[f"{module.key}.{name}"] = tensor.detach()
        return out

    @torch.no_grad()
    def load_lora_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> LoadReport:
        """Load canonical-keyed tensors (see :meth:`lora_state_dict`). With ``strict``, any missing,
        unexpected or mis-shaped module raises ValueError naming them; nothing is changed then."""
        report = LoadReport()
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in state.items():
            for suffix in TENSOR_SUFFIXES:
                if name.endswith("." + suffix):
                    grouped.setdefault(name[: -len(suffix) - 1], {})[suffix] = tensor
                    break
            else:
                report.unexpected.append(name)
        for key, tensors in grouped.items():
            module = self._by_key.get(key)
            if module is None:
                report.unexpected.append(key)
                continue
            params = {k: v for k, v in module.file_tensors().items() if k != "alpha"}
            file_algos = {tensor_algo(name) for name in tensors} - {None}
            if file_algos and module.ALGO not in file_algos:
                found = "/".join(ALGO_LABELS[a] for a in sorted(file_algos))
                report.mismatched.append(f"{key}: {found} weights, but the network trains {ALGO_LABELS[module.ALGO]}")
                continue
            if ("dora_scale" in tensors) != module.dora:
                report.mismatched.append(
                    f"{key}: "
                    + ("DoRA weights, but DoRA is off" if module.dora is False else "no dora_scale, but DoRA is on")
                )
                continue
            for suffix, param in params.items():
                tensor = tensors.get(suffix)
                if tensor is None:
                    report.mismatched.append(f"{key}: no {suffix}")
                elif tuple(tensor.shape) != tuple(param.shape):
                    report.mismatched.append(
                        f"{key}.{suffix}: {list(tensor.shape)} in the weights vs {list(param.shape)}"
                    )
            extra = sorted(set(tensors) - set(params) - {"alpha"})
            if extra:
                report.mismatched.append(f"{key}: {extra[0]} has no place in this network")
        report.missing = [key for key in self._by_key if key not in grouped]
        if strict and (report.missing or report.unexpected or report.mismatched):
            problems = (
                report.mismatched
                + [f"missing {k}" for k in report.missing]
                + [f"unexpected {k}" for k in report.unexpected]
            )
            raise ValueError(
                "LoRA weights do not fit this network: "
                + "; ".join(problems[:5])
                + (" ..." if len(problems) > 5 else "")
            )
        for key, tensors in grouped.items():
            module = self._by_key.get(key)
            if module is None or any(m.startswith((f"{key}:", f"{key}.")) for m in report.mismatched):
                continue
            for suffix, param in module.file_tensors().items():
                if suffix != "alpha":
                    param.copy_(tensors[suffix].to(param.dtype))
            if "alpha" in tensors:
                module.set_alpha(float(tensors["alpha"].float().item()))
            report.loaded += 1
        return report


def _device_of(module: nn.Module) -> torch.device | None:
    for tensor in module.parameters(recurse=False):
        return tensor.device
    for tensor in module.parameters():
        return tensor.device
    return None
