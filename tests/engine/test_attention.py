"""Training attention through torch's SDPA on the real ldm classes: the same outputs and gradients
as ldm's own quadratic attention, a multi-step run that follows it, everything put back."""

from __future__ import annotations

import pytest
import torch

from lib_lora.engine.attention import SdpaAttention, is_ldm_attention, sdpa_forward
from lib_lora.engine.network import LoRANetwork
from lib_lora.engine.targets import select_targets
from support import tiny_models as tm


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is several times faster on a busy machine
    yield
    torch.set_num_threads(threads)


def _network(unet: torch.nn.Module, seed: int = 3) -> LoRANetwork:
    network = LoRANetwork(select_targets("sd1", unet, {}), 4, 4, naming={"unet": "ldm"}, family="sd1")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero up weights: every LoRA matrix gets a gradient
        for module in network:
            module.lora_up.weight.copy_(torch.randn(module.lora_up.weight.shape, generator=generator) * 0.1)
    return network


def _inputs(batch: int = 2, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=generator)
    context = torch.randn(batch, tm.MAX_TOKENS, tm.TE_HIDDEN, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    return x, context, t


def _loss_and_grads(unet, network, x, context, t) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    context = context.clone().requires_grad_(True)
    out = unet(x, t, context=context)
    loss = (out.float() ** 2).mean()
    grads = torch.autograd.grad(loss, [*network.parameters(), context])
    names = [n for n, _ in network.named_parameters()]
    return loss.detach(), dict(zip(names, grads[:-1])), grads[-1]


def test_gradients_equal_the_quadratic_path_on_the_real_ldm_unet() -> None:
    unet = tm.ldm_sd1_unet(seed=1).requires_grad_(False)
    network = _network(unet)
    network.apply_to()
    x, context, t = _inputs()
    try:
        loss_q, grads_q, ctx_q = _loss_and_grads(unet, network, x, context, t)
        with SdpaAttention([unet]) as sdpa:
            assert len(sdpa.patched) == sum(is_ldm_attention(m) for m in unet.modules()) > 0
            loss_s, grads_s, ctx_s = _loss_and_grads(unet, network, x, context, t)
    finally:
        network.restore()
    assert torch.allclose(loss_s, loss_q, rtol=1e-6, atol=0)
    for name, grad in grads_q.items():
        assert grad.abs().max() > 0, name  # the comparison means something
        torch.testing.assert_close(grads_s[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(ctx_s, ctx_q, rtol=1e-4, atol=1e-6)


def test_sdxl_layout_linear_projections_match_too() -> None:
    unet = tm.ldm_sdxl_unet(seed=2).requires_grad_(False)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, tm.MAX_TOKENS, 2 * tm.TE_HIDDEN, generator=generator)
    y = torch.randn(1, tm.SDXL_ADM, generator=generator)
    t = torch.tensor([321])
    with torch.no_grad():
        before = unet(x, t, context=context, y=y)
        with SdpaAttention([unet]):
            after = unet(x, t, context=context, y=y)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_heads_mask_and_scale_follow_ldm_cross_attention() -> None:
    from ldm.modules.attention import CrossAttention

    torch.manual_seed(0)
    cross = CrossAttention(query_dim=80, context_dim=24, heads=8, dim_head=10)  # SD's 8 heads, odd head width
    self_attention = CrossAttention(query_dim=80, heads=8, dim_head=10)
    x = torch.randn(3, 7, 80)
    context = torch.randn(3, 5, 24)
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    self_mask = torch.ones(3, 7, dtype=torch.bool)
    self_mask[0, 3:] = False
    for layer, ctx, m in (
        (self_attention, None, None),
        (self_attention, None, self_mask),
        (cross, context, None),
        (cross, context, mask),
    ):
        expected = CrossAttention.forward(layer, x, ctx, m)
        torch.testing.assert_close(sdpa_forward(layer, x, ctx, m), expected, rtol=1e-5, atol=1e-6)


def test_a_multi_step_run_stays_finite_and_follows_the_quadratic_losses() -> None:
    def run(use_sdpa: bool) -> list[float]:
        unet = tm.ldm_sd1_unet(seed=1).requires_grad_(False)
        torch.manual_seed(11)
        network = LoRANetwork(select_targets("sd1", unet, {}), 4, 2, naming={"unet": "ldm"}, family="sd1")
        network.apply_to()
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
        losses = []
        try:
            with SdpaAttention([unet]) if use_sdpa else _nothing():
                for step in range(8):
                    x, context, t = _inputs(batch=1, size=8, seed=step % 3)
                    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(step))
                    loss = torch.nn.functional.mse_loss(unet(x, t, context=context), noise)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(list(network.parameters()), 1.0)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    losses.append(float(loss.detach()))
        finally:
            network.restore()
        return losses

    quadratic, sdpa = run(False), run(True)
    assert all(torch.isfinite(torch.tensor(sdpa)))
    assert quadratic[-1] < quadratic[0]  # it learns, so the comparison covers moving weights
    for step, (a, b) in enumerate(zip(quadratic, sdpa)):
        assert abs(a - b) <= 1e-4 * abs(a), (step, a, b)


def test_install_and_remove_put_every_forward_back() -> None:
    from ldm.modules.attention import CrossAttention

    unet = tm.ldm_sd1_unet(seed=1)
    class_forward = CrossAttention.forward
    layers = [m for m in unet.modules() if is_ldm_attention(m)]
    own = layers[0].forward  # an instance forward somebody else set keeps its place
    layers[0].forward = own
    with SdpaAttention([unet, unet]):  # the same tree twice: patched once
        assert all(m.forward.__func__ is sdpa_forward for m in layers)
    assert layers[0].__dict__["forward"] is own
    assert all("forward" not in m.__dict__ for m in layers[1:])
    assert CrossAttention.forward is class_forward


def _nothing():
    import contextlib

    return contextlib.nullcontext()
