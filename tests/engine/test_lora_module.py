"""The four LoRA invariants, for every host layer type and dtype.

zero-init leaves outputs unchanged; disabled = base output; save -> restore -> load reproduces
outputs; merged = unmerged outputs (per-dtype tolerance). Plus the kohya forward formula itself.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lib_lora.engine.lora_module import LoRAModule, lora_shapes

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MERGE_TOL = {"fp32": 1e-5, "fp16": 2e-2, "bf16": 1e-1}


def _host(kind: str) -> tuple[nn.Module, str, tuple[int, ...]]:
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Linear(16, 24), "linear", (3, 5, 16)
    if kind == "conv1x1":
        return nn.Conv2d(8, 12, 1), "conv", (2, 8, 6, 6)
    if kind == "conv3x3":
        return nn.Conv2d(8, 12, 3, padding=1), "conv", (2, 8, 6, 6)
    if kind == "conv3x3_stride2":
        return nn.Conv2d(8, 12, 3, stride=2, padding=1), "conv", (2, 8, 6, 6)
    if kind.startswith("mha"):
        mha = nn.MultiheadAttention(16, 4)
        with torch.no_grad():
            mha.in_proj_bias.normal_(0, 0.1)
        return mha, kind, (5, 2, 16)
    raise AssertionError(kind)


KINDS = ["linear", "conv1x1", "conv3x3", "conv3x3_stride2", "mha_q", "mha_k", "mha_v", "mha_out"]


def _run(host: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(host, nn.MultiheadAttention):
            return host(x, x, x, need_weights=False)[0]
        return host(x)


def _setup(kind: str, dtype_name: str):
    host, lora_kind, shape = _host(kind)
    dtype = DTYPES[dtype_name]
    host.to(dtype)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    lora = LoRAModule("k", host, lora_kind, rank=4, alpha=2.0)
    return host, lora, x


def _randomize_up(lora: LoRAModule, seed: int = 2) -> None:
    with torch.no_grad():
        lora.lora_up.weight.copy_(
            torch.randn(lora.lora_up.weight.shape, generator=torch.Generator().manual_seed(seed)) * 0.5
        )


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_zero_init_leaves_outputs_unchanged(kind: str, dtype_name: str) -> None:
    host, lora, x = _setup(kind, dtype_name)
    base = _run(host, x)
    lora.apply()
    assert torch.equal(_run(host, x), base)
    assert torch.count_nonzero(lora.lora_down.weight) > 0  # kaiming-uniform down, zero up


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_disabled_is_base_output(kind: str, dtype_name: str) -> None:
    host, lora, x = _setup(kind, dtype_name)
    base = _run(host, x)
    lora.apply()
    _randomize_up(lora)
    assert not torch.allclose(_run(host, x).float(), base.float(), atol=1e-3)
    lora.disable()
    assert torch.equal(_run(host, x), base)
    lora.enable()
    lora.set_multiplier(0.0)
    assert torch.equal(_run(host, x), base)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_save_restore_load_reproduces_outputs(kind: str, dtype_name: str) -> None:
    host, lora, x = _setup(kind, dtype_name)
    base = _run(host, x)
    lora.apply()
    _randomize_up(lora)
    trained = _run(host, x)
    saved = {k: v.clone() for k, v in lora.state_dict().items()}
    lora.restore()
    assert torch.equal(_run(host, x), base)
    assert "forward" not in host.__dict__  # nothing of ours is left on the host

    fresh = LoRAModule("k", host, lora.kind, rank=4, alpha=1.0)
    fresh.load_state_dict(saved)
    fresh.set_alpha(float(saved["alpha"]))
    fresh.apply()
    assert torch.equal(_run(host, x), trained)
    fresh.restore()
    assert torch.equal(_run(host, x), base)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_merged_equals_unmerged(kind: str, dtype_name: str) -> None:
    host, lora, x = _setup(kind, dtype_name)
    base = _run(host, x)
    weights_before = {k: v.clone() for k, v in host.state_dict().items()}
    lora.apply()
    _randomize_up(lora)
    unmerged = _run(host, x)
    lora.merge()
    merged = _run(host, x)
    scale = unmerged.float().abs().max().item()
    assert (merged.float() - unmerged.float()).abs().max().item() <= MERGE_TOL[dtype_name] * max(scale, 1.0)
    lora.unmerge()
    assert all(torch.equal(host.state_dict()[k], v) for k, v in weights_before.items())
    lora.restore()
    assert torch.equal(_run(host, x), base)


def test_forward_is_kohyas_formula() -> None:
    """out = base + up(down(x)) * multiplier * alpha / rank."""
    host = nn.Linear(6, 5)
    lora = LoRAModule("k", host, "linear", rank=3, alpha=1.5, multiplier=0.7)
    _randomize_up(lora)
    x = torch.randn(4, 6)
    expected = host(x) + (x @ lora.lora_down.weight.t() @ lora.lora_up.weight.t()) * 0.7 * (1.5 / 3)
    lora.apply()
    assert torch.allclose(host(x), expected, atol=1e-6)


def test_alpha_none_or_zero_means_rank() -> None:
    for alpha in (None, 0):
        lora = LoRAModule("k", nn.Linear(4, 4), "linear", rank=8, alpha=alpha)
        assert float(lora.alpha) == 8.0 and lora.scale == 1.0
    assert LoRAModule("k", nn.Linear(4, 4), "linear", rank=8, alpha=4).alpha.dim() == 0


def test_shapes_match_kohya_layout() -> None:
    conv = nn.Conv2d(320, 320, 3, stride=2, padding=1)
    lora = LoRAModule("k", conv, "conv", rank=4)
    assert tuple(lora.lora_down.weight.shape) == (4, 320, 3, 3) and lora.lora_down.stride == (2, 2)
    assert tuple(lora.lora_up.weight.shape) == (320, 4, 1, 1)
    assert lora_shapes(conv, "conv", 4) == ((4, 320, 3, 3), (320, 4, 1, 1))
    assert lora_shapes(nn.Linear(768, 320), "linear", 8) == ((8, 768), (320, 8))
    assert lora_shapes(nn.MultiheadAttention(1280, 20), "mha_k", 4) == ((4, 1280), (1280, 4))


def test_dropouts_only_in_training() -> None:
    host = nn.Linear(8, 8)
    x = torch.randn(4, 3, 8)
    lora = LoRAModule("k", host, "linear", rank=4, dropout=0.5, rank_dropout=0.5, module_dropout=0.0)
    _randomize_up(lora)
    lora.apply()
    lora.eval()
    first = host(x)
    assert torch.equal(first, host(x))  # deterministic in eval
    lora.train()
    torch.manual_seed(0)
    assert not torch.equal(host(x), first)

    skip = LoRAModule("k2", nn.Linear(8, 8), "linear", rank=4, module_dropout=1.0)
    _randomize_up(skip)
    base = skip.host(x)
    skip.apply()
    skip.train()
    assert torch.equal(skip.host(x), base)  # the whole module skipped
    skip.eval()
    assert not torch.equal(skip.host(x), base)


def test_rank_dropout_mask_is_per_sample_over_rank() -> None:
    host = nn.Linear(8, 8, bias=False)
    lora = LoRAModule("k", host, "linear", rank=64, rank_dropout=0.5)
    _randomize_up(lora)
    lora.train()
    x = torch.randn(2, 1, 8).expand(2, 5, 8)  # same token five times per sample
    lora.apply()
    torch.manual_seed(3)
    out = host(x) - nn.functional.linear(x, host.weight)
    # within a sample every token sees the same mask, so identical tokens give identical outputs
    assert torch.allclose(out[:, 0], out[:, 4])


def test_restore_is_idempotent_and_keeps_foreign_patch() -> None:
    host = nn.Linear(4, 4)
    calls = []

    def foreign(x):
        calls.append(1)
        return type(host).forward(host, x)

    host.forward = foreign
    lora = LoRAModule("k", host, "linear", rank=2)
    lora.apply()
    lora.apply()
    host(torch.randn(1, 4))
    assert calls == [1]
    lora.restore()
    lora.restore()
    assert host.forward is foreign
