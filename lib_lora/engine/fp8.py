"""``fp8_base``: the frozen UNet's Linear / Conv2d weights stored in float8 for a run.

sd-scripts' ``--fp8_base`` keeps the frozen base weights in ``float8_e4m3fn`` (1 byte instead of
2 or 4) and computes in the training dtype. Here each converted layer gets an instance ``forward``
that upcasts its weight for that one call (:func:`fp8_linear` / :func:`fp8_conv2d`); the backward
pass keeps the 1-byte weight, not the upcast copy, and upcasts it again for the input gradient, so
no full-precision copy of the model is alive between forward and backward. LoRA modules patched
on these layers afterwards call this forward and add their branch in full precision.

:class:`Fp8Base` converts on ``install`` and puts every weight back on ``remove``: with
``keep_originals`` (the default) the original tensors themselves (moved to the CPU while the run
lasts when they lived on a GPU), so the model is bit-identical afterwards. Layers already stored
in float8 (the webui's own FP8 weight option) are left as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lib_lora.engine.patching import ModulePatch, replace_forward, restore_forward

FP8 = getattr(torch, "float8_e4m3fn", None)


def float8_problem(device: torch.device) -> str | None:
    """Why ``fp8_base`` cannot run on ``device`` (one sentence), or None."""
    if FP8 is None:
        return f"fp8_base needs PyTorch 2.1 or newer (this is {torch.__version__}); turn fp8_base off."
    try:
        probe = torch.ones(2, 2, device=device).to(FP8)
        torch.matmul(torch.ones(1, 2, device=device), probe.to(torch.float32))
    except Exception as exc:  # a device/backend without float8 storage
        return f"This device ({device.type}) cannot store float8 weights ({type(exc).__name__}); turn fp8_base off."
    return None


def is_float8(dtype: torch.dtype) -> bool:
    return "float8" in str(dtype)


class _Fp8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (weight,) = ctx.saved_tensors
        return grad @ weight.to(grad.dtype), None, None


class _Fp8Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv: Any) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.conv = conv
        ctx.input_shape = x.shape
        b = None if bias is None else bias.to(x.dtype)
        return F.conv2d(x, weight.to(x.dtype), b, conv.stride, conv.padding, conv.dilation, conv.groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (weight,) = ctx.saved_tensors
        conv = ctx.conv
        grad_input = torch.nn.grad.conv2d_input(
            ctx.input_shape, weight.to(grad.dtype), grad, conv.stride, conv.padding, conv.dilation, conv.groups
        )
        return grad_input, None, None, None


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype this layer computes in: autocast's when it is on, else the input's."""
    device = x.device.type
    try:
        enabled = torch.is_autocast_enabled(device)
    except TypeError:  # torch < 2.4
        enabled = torch.is_autocast_cpu_enabled() if device == "cpu" else torch.is_autocast_enabled()
    if not enabled:
        return x.dtype
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype(device)
    return torch.get_autocast_cpu_dtype() if device == "cpu" else torch.get_autocast_gpu_dtype()


def fp8_linear(self: nn.Linear, x: torch.Tensor, *_: Any, **__: Any) -> torch.Tensor:
    """``nn.Linear.forward`` on a float8 weight (extra arguments, such as diffusers' LoRA ``scale``
    of its LoRA-compatible layers without a LoRA of their own, change nothing and are ignored)."""
    x = x.to(_compute_dtype(x))
    with torch.autocast(x.device.type, enabled=False):
        return _Fp8Linear.apply(x, self.weight, self.bias)


def fp8_conv2d(self: nn.Conv2d, x: torch.Tensor, *_: Any, **__: Any) -> torch.Tensor:
    """``nn.Conv2d.forward`` on a float8 weight (extra arguments ignored, as :func:`fp8_linear`)."""
    x = x.to(_compute_dtype(x))
    with torch.autocast(x.device.type, enabled=False):
        return _Fp8Conv2d.apply(x, self.weight, self.bias, self)


def convertible(module: nn.Module) -> bool:
    """A plain Linear / zero-padded Conv2d (diffusers' LoRA-compatible ones only without a LoRA of their own)."""
    if getattr(module, "lora_layer", None) is not None:
        return False
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.padding_mode == "zeros" and isinstance(module.padding, tuple)


class Fp8Base(ModulePatch):
    """Store the Linear / Conv2d weights under ``roots`` in float8 for a ``with`` block (see the
    module docstring). ``keep_originals`` False converts for good (what the webui's own FP8
    option does; the bench uses it to measure that configuration)."""

    def __init__(self, roots: Iterable[nn.Module], keep_originals: bool = True) -> None:
        self.roots = list(roots)
        self.keep_originals = keep_originals
        # (module, {name: original tensor}, original dtype, saved instance forward)
        self.converted: list[tuple[nn.Module, dict[str, torch.Tensor], torch.dtype, Any]] = []
        self.bytes_saved = 0

    def install(self) -> int:
        if FP8 is None:
            raise RuntimeError("float8 needs PyTorch 2.1 or newer")
        seen: set[int] = set()
        with torch.no_grad():
            for root in self.roots:
                for module in root.modules():
                    if id(module) in seen or not convertible(module):
                        continue
                    seen.add(id(module))
                    weight = module.weight
                    if is_float8(weight.dtype):
                        continue  # already float8 (the webui's own FP8 weight option): left as it is
                    originals: dict[str, torch.Tensor] = {}
                    for name in ("weight", "bias"):
                        tensor = module._parameters.get(name)
                        if tensor is None:
                            continue
                        originals[name] = tensor
                        new = nn.Parameter(tensor.detach().to(FP8), requires_grad=False)
                        module._parameters[name] = new
                        if self.keep_originals and tensor.device.type != "cpu":
                            tensor.data = tensor.data.to("cpu")  # the original waits in RAM
                        self.bytes_saved += tensor.numel() * (tensor.element_size() - 1)
                    saved = replace_forward(module, fp8_linear if isinstance(module, nn.Linear) else fp8_conv2d)
                    self.converted.append((module, originals if self.keep_originals else {}, weight.dtype, saved))
                    if not self.keep_originals:
                        originals.clear()
        return len(self.converted)

    def remove(self) -> None:
        with torch.no_grad():
            while self.converted:
                module, originals, dtype, saved = self.converted.pop()
                fp8_weights = {
                    n: module._parameters[n] for n in ("weight", "bias") if module._parameters.get(n) is not None
                }
                for name, current in fp8_weights.items():
                    original = originals.get(name)
                    if original is None:  # converted for good: upcast (lossy) in place
                        module._parameters[name] = nn.Parameter(current.detach().to(dtype), requires_grad=False)
                        continue
                    if original.device != current.device:
                        original.data = original.data.to(current.device)
                    module._parameters[name] = original
                restore_forward(module, saved)
