"""LoKr, LoHa and DoRA train without keeping a full-size weight per layer until backward.

Their branch is ``op(x, delta_weight)``: the delta-W (and DoRA's re-normalised weight) is as large as
the host weight, in fp32. Kept by autograd for every layer, that is a whole fp32 copy of the model per
kept tensor — in the real webui (SD1.5, 64 px) LoKr added 5.3 GiB and LoKr + DoRA was killed for
memory where LoCon added 0.55 GiB. The delta is recomputed in backward instead; gradients unchanged.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib_lora.engine.lora_module import make_module

CASES = [("lokr", False), ("loha", False), ("lora", True), ("lokr", True), ("loha", True)]


def _host(kind: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "linear":
        host = nn.Linear(128, 256)
        x = torch.randn(2, 5, 128)
    else:
        host = nn.Conv2d(32, 64, 3, padding=1)
        x = torch.randn(2, 32, 6, 6)
    host.requires_grad_(False)
    return host, x.requires_grad_(True)


def _applied(algo: str, dora: bool, kind: str):
    """(host, input, module): a host layer with a trained-looking ``algo`` module applied to it."""
    host, x = _host(kind)
    module = make_module(algo, "m", host, "linear" if kind == "linear" else "conv", 4, 2.0, dora_wd=dora, factor=4)
    with torch.no_grad():  # a trained state: every factor non-zero, so every gradient is non-trivial
        g = torch.Generator().manual_seed(1)
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p is module.dora_scale else 0.0))
    module.apply()
    return host, x, module


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize(("algo", "dora"), CASES)
def test_no_full_size_tensor_is_kept_for_backward(algo: str, dora: bool, kind: str) -> None:
    host, x, module = _applied(algo, dora, kind)
    kept: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = host(x)
    full = host.weight.numel()
    big = [tuple(t.shape) for t in kept if t.numel() >= full and t.data_ptr() != host.weight.data_ptr()]
    assert big == [], f"{algo}{' + DoRA' if dora else ''} keeps full-size tensors until backward: {big}"
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize(("algo", "dora"), CASES)
def test_gradients_equal_the_merged_weight_form(algo: str, dora: bool, kind: str) -> None:
    host, x, module = _applied(algo, dora, kind)
    host(x).square().mean().backward()
    got = [p.grad.clone() for p in module.parameters()] + [x.grad.clone()]
    module.zero_grad()
    x.grad = None
    weight = host.weight + module.delta_weight()
    if kind == "linear":
        ref = F.linear(x, weight, host.bias)
    else:
        ref = F.conv2d(x, weight, host.bias, host.stride, host.padding)
    ref.square().mean().backward()
    want = [p.grad for p in module.parameters()] + [x.grad]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
