"""A LoRA network: one LoRAModule per target, over the host's own module tree.

The network owns the LoRA parameters and nothing of the host. Its state dict uses the canonical
keys (``<component>/<path>.lora_down.weight`` ...); ``lib_lora.formats.kohya`` converts them to and
from kohya's file names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from lib_lora.engine.lora_module import LoRAModule
from lib_lora.engine.targets import Target

TENSOR_SUFFIXES = ("lora_down.weight", "lora_up.weight", "alpha")


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
        module_dims: dict[str, tuple[int, float]] | None = None,
        naming: dict[str, str] | None = None,
        family: str = "sd1",
    ) -> None:
        """``module_dims`` (canonical key -> (rank, alpha)) overrides the ranks per module, e.g.
        to continue from a file; targets it does not name are then skipped. ``naming`` records each
        component's module family (``unet``: ldm | diffusers; text encoders: hf | openclip)."""
        super().__init__()
        self.family = family
        self.naming = dict(naming or {})
        self.rank = rank
        self.alpha = alpha
        self.conv_rank = conv_rank
        self.conv_alpha = conv_alpha
        self.targets: dict[str, Target] = {}
        modules = []
        for target in targets:
            if module_dims is not None:
                if target.key not in module_dims:
                    continue
                r, a = module_dims[target.key]
            elif target.conv_rank:
                if not conv_rank:
                    continue
                r, a = conv_rank, conv_alpha
            else:
                r, a = rank, alpha
            module = LoRAModule(
                target.key,
                target.module,
                target.kind,
                int(r),
                a,
                multiplier=multiplier,
                dropout=dropout,
                rank_dropout=rank_dropout,
                module_dropout=module_dropout,
            )
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
    def __iter__(self) -> Iterator[LoRAModule]:  # type: ignore[override]
        return iter(self.loras)

    def __len__(self) -> int:
        return len(self.loras)

    def __getitem__(self, key: str) -> LoRAModule:
        return self._by_key[key]

    def lora_keys(self) -> list[str]:
        return list(self._by_key)

    def components(self) -> list[str]:
        return sorted({key.split("/", 1)[0] for key in self._by_key})

    def modules_of(self, component: str) -> list[LoRAModule]:
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
            module.lora_down.weight.requires_grad_(requires_grad)
            module.lora_up.weight.requires_grad_(requires_grad)
        return self

    # -- state -----------------------------------------------------------------------------------
    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """Canonical-keyed tensors: ``<key>.lora_down.weight``, ``<key>.lora_up.weight``, ``<key>.alpha``."""
        out: dict[str, torch.Tensor] = {}
        for module in self.loras:
            out[f"{module.key}.lora_down.weight"] = module.lora_down.weight.detach()
            out[f"{module.key}.lora_up.weight"] = module.lora_up.weight.detach()
            out[f"{module.key}.alpha"] = module.alpha.detach()
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
            for suffix, param in (
                ("lora_down.weight", module.lora_down.weight),
                ("lora_up.weight", module.lora_up.weight),
            ):
                tensor = tensors.get(suffix)
                if tensor is None:
                    report.mismatched.append(f"{key}: no {suffix}")
                elif tuple(tensor.shape) != tuple(param.shape):
                    report.mismatched.append(
                        f"{key}.{suffix}: {list(tensor.shape)} in the weights vs {list(param.shape)}"
                    )
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
            if module is None or any(f"{key}" in m for m in report.mismatched):
                continue
            module.lora_down.weight.copy_(tensors["lora_down.weight"].to(module.lora_down.weight.dtype))
            module.lora_up.weight.copy_(tensors["lora_up.weight"].to(module.lora_up.weight.dtype))
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
