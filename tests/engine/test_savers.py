"""fp8_base storage and the device offload: the same training maths in less memory, and every
weight, device, dtype and requires_grad put back afterwards."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from lib_lora.engine.fp8 import FP8, Fp8Base, float8_problem
from lib_lora.engine.lora_module import LoRAModule
from lib_lora.engine.savers import Offload

pytestmark = pytest.mark.skipif(FP8 is None, reason="float8 needs torch >= 2.1")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))


def _quantised_copy(model: nn.Module) -> nn.Module:
    """The same model with every weight rounded through float8 (what fp8_base computes with)."""
    import copy

    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.parameters():
            p.copy_(p.to(FP8).to(p.dtype))
    return clone


def test_fp8_layers_compute_with_float8_weights_and_pass_input_gradients() -> None:
    model = _model().requires_grad_(False)
    reference = _quantised_copy(model)
    x = torch.randn(2, 3, 6, 6)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with Fp8Base([model]) as fp8:
        assert len(fp8.converted) == 2 and fp8.bytes_saved > 0
        assert all(p.dtype == FP8 for p in model.parameters())
        out = model(x1)
        out.square().sum().backward()
    expected = reference(x2)
    expected.square().sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)


def test_a_lora_on_fp8_layers_trains_in_full_precision() -> None:
    model = _model().requires_grad_(False)
    linear = model[3]
    with Fp8Base([model]):
        lora = LoRAModule("fc", linear, "linear", 2, 2)
        lora.apply()
        try:
            assert lora.lora_up.weight.dtype == torch.float32
            model(torch.randn(2, 3, 6, 6)).sum().backward()
            assert lora.lora_up.weight.grad is not None and lora.lora_up.weight.grad.abs().sum() > 0
        finally:
            lora.restore()


def test_fp8_remove_puts_the_original_weights_back_bit_for_bit() -> None:
    model = _model()
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    originals = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    own_forward = model[0].forward
    model[0].forward = own_forward  # an instance forward somebody else set stays
    with Fp8Base([model]):
        pass
    for name, p in model.named_parameters():
        assert p is originals[name][0] and torch.equal(p, originals[name][1]) and p.requires_grad == grads[name]
    assert model[0].__dict__["forward"] is own_forward and "forward" not in model[3].__dict__


def test_layers_already_in_float8_are_left_as_the_host_stored_them() -> None:
    model = _model()
    model[3].to(FP8)  # the webui's own FP8 weight option
    stored = model[3].weight
    with Fp8Base([model]) as fp8:
        assert [m for m, *_ in fp8.converted] == [model[0]]
    assert model[3].weight is stored and stored.dtype == FP8


def test_float8_support_is_probed_on_the_device(monkeypatch) -> None:
    from lib_lora.engine import fp8

    assert float8_problem(torch.device("cpu")) is None
    monkeypatch.setattr(fp8, "FP8", None)
    assert "fp8_base needs PyTorch 2.1" in float8_problem(torch.device("cpu"))

    def no_float8(*args, **kwargs):
        raise TypeError("float8 not supported on this device")

    monkeypatch.setattr(fp8, "FP8", torch.float8_e4m3fn)
    monkeypatch.setattr(torch.Tensor, "to", no_float8)
    problem = float8_problem(torch.device("cpu"))
    monkeypatch.undo()
    assert problem == "This device (cpu) cannot store float8 weights (TypeError); turn fp8_base off."


class _TwoDevices(Offload):
    """Offload with a pretend second device (this machine has only the CPU): where each tensor
    is is recorded, what moves and comes back is checked; the in-place move itself is
    ``Offload.move`` (``tensor.data = tensor.data.to(device)``), covered by the GPU check."""

    where: dict[int, torch.device] = {}

    @classmethod
    def device_of(cls, tensor: torch.Tensor) -> torch.device:
        return cls.where.get(id(tensor), tensor.device)

    @classmethod
    def move(cls, tensor: torch.Tensor, device: torch.device) -> None:
        cls.where[id(tensor)] = torch.device(device)


def test_offload_moves_every_tensor_once_and_puts_each_back() -> None:
    model = _model()
    model.register_buffer("scale", torch.ones(3))
    _TwoDevices.where = {id(t): torch.device("cuda", 0) for t in [*model.parameters(), *model.buffers()]}
    tensors = [*model.parameters(), *model.buffers()]
    offload = _TwoDevices([model, model[3]], to="cpu")  # model[3] is inside model: moved once
    with offload:
        assert len(offload.moved) == len(tensors) and offload.bytes_moved == sum(t.numel() * 4 for t in tensors)
        assert all(_TwoDevices.device_of(t).type == "cpu" for t in tensors)
        with offload.back():  # a sample render needs them where they were
            assert all(_TwoDevices.device_of(t).type == "cuda" for t in tensors)
        assert all(_TwoDevices.device_of(t).type == "cpu" for t in tensors)
    assert all(_TwoDevices.device_of(t) == torch.device("cuda", 0) for t in tensors) and offload.moved == []


def test_offload_puts_back_after_an_error() -> None:
    model = _model()
    _TwoDevices.where = {id(t): torch.device("cuda", 0) for t in model.parameters()}
    with pytest.raises(RuntimeError), _TwoDevices([model], to="cpu"):
        raise RuntimeError("boom")
    assert all(_TwoDevices.device_of(p).type == "cuda" for p in model.parameters())


def test_offload_on_the_cpu_changes_nothing_and_keeps_parameters() -> None:
    model = _model()
    params = list(model.parameters())
    with Offload([model]) as offload:
        assert offload.moved == []
    assert list(model.parameters()) == params


def test_fp8_copies_are_released_after_the_run() -> None:
    model = _model()
    fp8 = Fp8Base([model])
    fp8.install()
    stored = weakref.ref(model[3].weight)
    fp8.remove()
    gc.collect()
    assert stored() is None and fp8.converted == []
