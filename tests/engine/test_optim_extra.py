"""Schedule-free (package schedulefree) and CAME (came-pytorch or pytorch-optimizer) as sd-scripts'
get_optimizer makes them; schedule-free's train/eval switching (sd-scripts' get_optimizer_train_eval_fn)."""

from __future__ import annotations

import sys

import pytest
import torch

from lib_lora.common.errors import UserError
from lib_lora.engine import optim


def _param() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))


def _steps(info: optim.OptimizerInfo, param: torch.nn.Parameter, n: int = 5) -> None:
    for _ in range(n):
        info.optimizer.zero_grad()
        (param**2).sum().backward()
        info.optimizer.step()


@pytest.mark.parametrize("name", ["AdamWScheduleFree", "RAdamScheduleFree", "schedulefree.AdamWScheduleFree"])
def test_schedule_free_builds_in_train_mode_with_a_constant_schedule(name: str) -> None:
    args = [] if name.startswith("RAdam") else ["warmup_steps=2"]  # RAdamScheduleFree has no warm-up
    info = optim.build_optimizer(name, [_param()], 1e-2, args, lr_scheduler="cosine")
    assert info.schedule_free and info.forced_scheduler == "constant"
    assert all(g["train_mode"] for g in info.optimizer.param_groups)  # sd-scripts: train() before training
    assert any("lr_scheduler cosine is replaced by constant" in w for w in info.warnings)
    assert info.name_for_metadata.startswith("schedulefree.")
    assert info.name_for_metadata.endswith("(warmup_steps=2)" if args else "ScheduleFree")
    scheduler = optim.build_scheduler(info.forced_scheduler, info.optimizer, num_training_steps=10)
    for _ in range(5):
        scheduler.step()
    assert info.optimizer.param_groups[0]["lr"] == 1e-2  # the optimizer's own warm-up; the schedule is flat


def test_evaluation_holds_the_eval_mode_weights_and_returns_to_train_mode() -> None:
    a, b = _param(), _param()
    first = optim.build_optimizer("AdamWScheduleFree", [a], 5e-2)
    second = optim.build_optimizer("AdamWScheduleFree", [b], 5e-2)
    _steps(first, a)
    _steps(second, b)
    train_weights = a.detach().clone()
    second.optimizer.eval()  # the package's own eval(): the averaged x sequence
    with optim.evaluation(first):
        assert not first.optimizer.param_groups[0]["train_mode"]
        assert torch.equal(a.detach(), b.detach())
        assert not torch.allclose(a.detach(), train_weights)  # eval weights differ from the training point
    assert first.optimizer.param_groups[0]["train_mode"]
    assert torch.allclose(a.detach(), train_weights, atol=1e-6)
    plain = optim.build_optimizer("AdamW", [_param()], 1e-2)
    with optim.evaluation(plain):  # other optimizers: nothing happens
        pass


@pytest.mark.parametrize("name", ["CAME", "came_pytorch.CAME", "pytorch_optimizer.CAME"])
def test_came_builds_and_trains(name: str) -> None:
    param = _param()
    info = optim.build_optimizer(name, [param], 1e-2, ["weight_decay=0.01"])
    assert info.name == "CAME" and info.name_for_metadata == "came_pytorch.CAME.CAME(weight_decay=0.01)"
    before = float((param**2).sum())
    _steps(info, param, 20)
    assert float((param**2).sum()) < before


@pytest.mark.parametrize(
    ("name", "module", "pip"),
    [("AdamWScheduleFree", "schedulefree", "schedulefree==1.4.1"), ("CAME", "came_pytorch", "came-pytorch==0.1.3")],
)
def test_missing_optional_package_says_the_pip_command(monkeypatch, name: str, module: str, pip: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)
    with pytest.raises(UserError) as info:
        optim.build_optimizer(name, [_param()], 1e-3)
    assert f"pip install {pip}" in str(info.value) + str(getattr(info.value, "hint", ""))
