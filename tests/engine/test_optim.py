"""Optimizers and lr schedules as sd-scripts builds them (engine/optim.py).

Schedules are checked step by step against diffusers' ``get_scheduler`` and transformers' schedule
functions (what sd-scripts calls); optimizers step a tiny regression and must lower its loss; a run
split by a save/load of the optimizer state must end with the same weights as a straight run.
"""

from __future__ import annotations

import ast
import io
import math
import sys
import types

import pytest
import torch

from lib_lora.common.errors import UserError
from lib_lora.engine import optim
from lib_lora.engine.optim import (
    Lion,
    build_optimizer,
    build_scheduler,
    effective_lrs,
    load_optimizer_state,
    lr_at,
    lr_curve,
    optimizer_state,
    parse_optimizer_args,
    resolve_warmup_steps,
    schedule_spec,
)

# --------------------------------------------------------------------------------------------
# a tiny model: linear regression in two parameter groups (like UNet / text encoder)
# --------------------------------------------------------------------------------------------


def _model(seed: int = 0) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.nn.Parameter(torch.randn(8, 4, generator=g) * 0.3),
        torch.nn.Parameter(torch.randn(4, generator=g) * 0.3),
    )


def _groups(params, lrs=(None, None)) -> list[dict]:
    weight, bias = params
    out = [{"params": [weight], "name": "unet"}, {"params": [bias], "name": "text_encoder"}]
    for group, lr in zip(out, lrs):
        if lr is not None:
            group["lr"] = lr
    return out


_W_TRUE = torch.randn(8, 4, generator=torch.Generator().manual_seed(123))
_B_TRUE = torch.randn(4, generator=torch.Generator().manual_seed(124))


def _loss(params, step: int) -> torch.Tensor:
    weight, bias = params
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1000 + step))
    return torch.nn.functional.mse_loss(x @ weight + bias, x @ _W_TRUE + _B_TRUE)


def _train(info, scheduler, params, steps: range) -> list[float]:
    losses = []
    for step in steps:
        loss = _loss(params, step)
        info.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        info.optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(float(loss.detach()))
    return losses


def _eval_loss(params) -> float:
    with torch.no_grad():
        return sum(float(_loss(params, 10_000 + i)) for i in range(4)) / 4


# name, lr, optimizer_args, steps: every optimizer that is importable in the test environment
# (prodigyopt and dadaptation are dev dependencies; transformers is a webui pin)
STEPPING = [
    ("AdamW", 3e-2, None, 150),
    ("AdamW", 3e-2, ["weight_decay=0.01", "betas=0.9,0.999"], 150),
    ("Lion", 3e-3, ["weight_decay=0.1", "betas=0.9,0.99"], 150),
    ("SGDNesterov", 5e-2, None, 150),
    ("Prodigy", 1.0, None, 150),
    ("DAdaptAdam", 1.0, None, 150),
    ("DAdaptation", 1.0, None, 150),
    ("DAdaptAdaGrad", 1.0, None, 150),
    ("DAdaptAdan", 1.0, None, 150),
    ("DAdaptAdanIP", 1.0, None, 150),
    ("DAdaptLion", 1.0, None, 150),
    ("DAdaptSGD", 1.0, None, 150),
    ("Adafactor", 1e-3, None, 150),
    ("Adafactor", 3e-2, ["scale_parameter=False", "relative_step=False", "warmup_init=False"], 150),
]


@pytest.mark.parametrize(("name", "lr", "args", "steps"), STEPPING, ids=lambda v: str(v))
def test_every_importable_optimizer_reduces_the_loss(name, lr, args, steps):
    params = _model()
    info = build_optimizer(name, _groups(params), lr, args)
    scheduler = build_scheduler(
        info.forced_scheduler or "constant",
        info.optimizer,
        num_training_steps=steps,
        initial_lr=info.scheduler_initial_lr,
    )
    before = _eval_loss(params)
    _train(info, scheduler, params, range(steps))
    after = _eval_loss(params)
    assert after < 0.5 * before, (name, before, after)
    assert all(torch.isfinite(p).all() for p in params)


def test_torch_adafactor_stands_in_when_transformers_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setitem(sys.modules, "transformers.optimization", None)
    params = _model()
    info = build_optimizer("adafactor", _groups(params, (1e-4, 5e-5)), 1e-4, None)
    assert isinstance(info.optimizer, torch.optim.Adafactor)
    assert info.forced_scheduler == "adafactor" and info.group_lrs_dropped
    assert any("torch.optim.Adafactor" in w for w in info.warnings)
    assert info.name_for_metadata == "torch.optim.Adafactor(relative_step=True)"
    scheduler = build_scheduler("adafactor", info.optimizer, num_training_steps=150, initial_lr=1e-4)
    before = _eval_loss(params)
    _train(info, scheduler, params, range(150))
    assert _eval_loss(params) < 0.5 * before
    # the relative-step cap stays what transformers uses
    assert [g["lr"] for g in info.optimizer.param_groups] == [1e-2, 1e-2]


def test_torch_adafactor_refuses_what_only_transformers_can_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setitem(sys.modules, "transformers.optimization", None)
    with pytest.raises(
        UserError, match=r"relative_step=False needs the transformers package.*pip install transformers"
    ):
        build_optimizer("Adafactor", _groups(_model()), 1e-3, ["relative_step=False"])


# --------------------------------------------------------------------------------------------
# optimizer_args parsing
# --------------------------------------------------------------------------------------------


def _sd_scripts_parse(args: list[str]) -> dict:
    """sd-scripts' rule, written out as the oracle: split at '=', value through literal_eval."""
    out = {}
    for arg in args:
        key, value = arg.split("=")
        out[key] = ast.literal_eval(value)
    return out


@pytest.mark.parametrize(
    "args",
    [
        ["weight_decay=0.01", "betas=.9,.999"],
        ["weight_decay=0.1", "betas=0.9,0.99"],
        ["scale_parameter=False", "relative_step=False", "warmup_init=False"],
        ["d_coef=2", "use_bias_correction=True", "safeguard_warmup=True", "decouple=True"],
        ["eps=(1e-30,1e-3)", "beta1=None", "decay_rate=-0.8", "momentum=0.9"],
        ["mode='fast'", "betas=[0.9,0.95]"],
    ],
)
def test_optimizer_args_parse_exactly_as_sd_scripts(args):
    assert parse_optimizer_args(args) == _sd_scripts_parse(args)
    assert parse_optimizer_args(" ".join(args)) == _sd_scripts_parse(args)  # one string, as typed in a box


def test_optimizer_args_values_have_python_types():
    kwargs = parse_optimizer_args(["weight_decay=0.01", "betas=.9,.999", "relative_step=False", "d0=1e-6"])
    assert kwargs == {"weight_decay": 0.01, "betas": (0.9, 0.999), "relative_step": False, "d0": 1e-6}
    assert isinstance(kwargs["betas"], tuple)
    assert parse_optimizer_args({"weight_decay": 0.1}) == {"weight_decay": 0.1}
    assert parse_optimizer_args(None) == {} and parse_optimizer_args([]) == {} and parse_optimizer_args(["", " "]) == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["weight_decay"], r"'weight_decay' is not of the form key=value"),
        (["a=b=c"], r"'a=b=c' is not of the form key=value"),
        (["=0.1"], r"'=0.1' is not of the form key=value"),
        (["relative_step=false"], r"'relative_step=false' has a value that is not a Python literal.*True/False"),
        (["betas=0.9,,0.99"], r"not a Python literal"),
    ],
)
def test_bad_optimizer_args_name_the_entry(args, message):
    with pytest.raises(UserError, match=message):
        parse_optimizer_args(args)


def test_unknown_or_reserved_optimizer_args_are_refused():
    params = _model()
    with pytest.raises(UserError, match=r"AdamW has no setting 'wieght_decay'\. Did you mean weight_decay\?.*betas"):
        build_optimizer("AdamW", _groups(params), 1e-4, ["wieght_decay=0.1"])
    with pytest.raises(UserError, match=r"sets the learning rate.*learning_rate"):
        build_optimizer("AdamW", _groups(params), 1e-4, ["lr=0.1"])
    with pytest.raises(UserError, match=r"'nesterov'"):
        build_optimizer("SGDNesterov", _groups(params), 1e-4, ["nesterov=False"])
    with pytest.raises(UserError, match=r"AdamW refused its settings: Invalid beta"):
        build_optimizer("AdamW", _groups(params), 1e-4, ["betas=1.5,0.9"])
    with pytest.raises(UserError, match=r"Invalid learning rate"):
        build_optimizer("AdamW", _groups(params), -1e-4)
    with pytest.raises(UserError, match=r"no trainable parameters"):
        build_optimizer("AdamW", [{"params": []}], 1e-4)


# --------------------------------------------------------------------------------------------
# names, metadata strings, optional packages
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("AdamW", None, "torch.optim.adamw.AdamW"),
        ("", None, "torch.optim.adamw.AdamW"),
        (
            "adamw",
            ["weight_decay=0.01", "betas=.9,.999"],
            "torch.optim.adamw.AdamW(weight_decay=0.01,betas=(0.9, 0.999))",
        ),
        ("SGDNesterov", None, "torch.optim.sgd.SGD(momentum=0.9)"),
        ("sgdnesterov", ["weight_decay=0.1"], "torch.optim.sgd.SGD(weight_decay=0.1,momentum=0.9)"),
        ("SGDNesterov", ["momentum=0.8"], "torch.optim.sgd.SGD(momentum=0.8)"),
        ("Prodigy", ["d_coef=2", "decouple=True"], "prodigyopt.prodigy.Prodigy(d_coef=2,decouple=True)"),
        ("DAdaptAdam", None, "dadaptation.dadapt_adam.DAdaptAdam"),
        ("DAdaptation", None, "dadaptation.experimental.dadapt_adam_preprint.DAdaptAdamPreprint"),
        ("AdaFactor", None, "transformers.optimization.Adafactor(relative_step=True)"),
        (
            "Adafactor",
            ["scale_parameter=False", "relative_step=False", "warmup_init=False"],
            "transformers.optimization.Adafactor(scale_parameter=False,relative_step=False,warmup_init=False)",
        ),
        ("Lion", ["weight_decay=0.1"], "lib_lora.engine.optim.Lion(weight_decay=0.1)"),
    ],
)
def test_metadata_name_is_sd_scripts_ss_optimizer(name, args, expected):
    lr = 1.0 if name in ("Prodigy", "DAdaptAdam", "DAdaptation") else 1e-4
    assert build_optimizer(name, _groups(_model()), lr, args).name_for_metadata == expected


def _fake_bitsandbytes() -> types.ModuleType:
    class AdamW8bit(torch.optim.AdamW):
        pass

    AdamW8bit.__module__ = "bitsandbytes.optim.adamw"
    module = types.ModuleType("bitsandbytes")
    module.optim = types.SimpleNamespace(AdamW8bit=AdamW8bit)  # no Paged*/Lion8bit: an old version
    return module


def test_bitsandbytes_when_installed_gives_sd_scripts_name(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", _fake_bitsandbytes())
    info = build_optimizer("AdamW8bit", _groups(_model()), 1e-4, ["weight_decay=0.1", "betas=0.9,0.99"])
    assert info.name_for_metadata == "bitsandbytes.optim.adamw.AdamW8bit(weight_decay=0.1,betas=(0.9, 0.99))"
    assert info.optimizer.param_groups[0]["betas"] == (0.9, 0.99)
    assert any("CUDA" in w for w in info.warnings)  # the parameters are on the CPU here
    with pytest.raises(UserError, match=r"PagedAdamW8bit is not in the installed bitsandbytes.*0\.39\.0"):
        build_optimizer("PagedAdamW8bit", _groups(_model()), 1e-4)


@pytest.mark.parametrize(
    ("name", "module", "pip_name"),
    [
        ("AdamW8bit", "bitsandbytes", "bitsandbytes"),
        ("adamw8bit", "bitsandbytes", "bitsandbytes"),
        ("Lion8bit", "bitsandbytes", "bitsandbytes"),
        ("Prodigy", "prodigyopt", "prodigyopt"),
        ("DAdaptAdam", "dadaptation", "dadaptation"),
        ("DAdaptLion", "dadaptation", "dadaptation"),
    ],
)
def test_missing_package_says_what_to_install(monkeypatch, name, module, pip_name):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(UserError) as caught:
        build_optimizer(name, _groups(_model()), 1.0)
    text = str(caught.value)
    assert f"needs the Python package {module}, which is not installed" in text
    assert f"pip install {pip_name}" in text and "choose AdamW" in text
    if module == "bitsandbytes":
        assert "CUDA GPU" in text


def test_lion_uses_lion_pytorch_when_installed_and_its_own_otherwise(monkeypatch):
    monkeypatch.setitem(sys.modules, "lion_pytorch", None)
    info = build_optimizer("Lion", _groups(_model()), 1e-4)
    assert type(info.optimizer) is Lion and info.warnings == []

    class FakeLion(Lion):
        pass

    FakeLion.__name__ = "Lion"
    FakeLion.__module__ = "lion_pytorch.lion_pytorch"
    monkeypatch.setitem(sys.modules, "lion_pytorch", types.SimpleNamespace(Lion=FakeLion))
    info = build_optimizer("lion", _groups(_model()), 1e-4, ["betas=0.95,0.98"])
    assert type(info.optimizer) is FakeLion
    assert info.name_for_metadata == "lion_pytorch.lion_pytorch.Lion(betas=(0.95, 0.98))"


def test_our_lion_follows_the_paper():
    """One step by hand: c = b1*m + (1-b1)*g; w -= lr*(sign(c) + wd*w); m = b2*m + (1-b2)*g."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = Lion([w], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    for g, expected_w, expected_m in [
        # m = 0: sign(c) = sign(g)
        ([0.5, 0.5, -1.0], [1 - 0.1 * (1 + 0.5), -2 - 0.1 * (1 - 1.0), 0.5 - 0.1 * (-1 + 0.25)], [0.005, 0.005, -0.01]),
    ]:
        w.grad = torch.tensor(g)
        opt.step()
        torch.testing.assert_close(w.detach(), torch.tensor(expected_w), rtol=0, atol=1e-7)
        torch.testing.assert_close(opt.state[w]["exp_avg"], torch.tensor(expected_m), rtol=0, atol=1e-9)
    # second step: the momentum (not the raw gradient) can decide the sign
    w.grad = torch.tensor([-0.001, 0.0, 0.0])  # c[0] = 0.9*0.005 + 0.1*(-0.001) > 0
    before = w.detach().clone()
    opt.step()
    assert w[0] < before[0] * (1 - 0.05)  # moved against the momentum's sign, not the gradient's


def test_sgd_nesterov_defaults_as_sd_scripts():
    group = build_optimizer("SGDNesterov", _groups(_model()), 1e-3).optimizer.param_groups[0]
    assert group["nesterov"] is True and group["momentum"] == 0.9


def test_unknown_optimizer_lists_the_choices():
    with pytest.raises(UserError) as caught:
        build_optimizer("AdamW9bit", _groups(_model()), 1e-4)
    text = str(caught.value)
    assert "optimizer_type 'AdamW9bit' is not a known optimizer" in text
    assert "Did you mean AdamW8bit" in text
    for name in ("AdamW", "AdamW8bit", "Lion", "SGDNesterov", "Prodigy", "DAdaptAdam", "Adafactor"):
        assert name in text


def test_adaptive_optimizers_warn_about_low_and_multiple_lrs():
    params = _model()
    low = build_optimizer("Prodigy", _groups(params, (1e-4, 5e-5)), 1e-4)
    assert any("around 1.0" in w for w in low.warnings)
    assert any("only the first learning rate" in w for w in low.warnings)
    assert low.adaptive
    fine = build_optimizer("DAdaptAdam", _groups(params), 1.0)
    assert fine.warnings == []
    mixed = build_optimizer("DAdaptAdam", _groups(params, (1.0, 0.5)), 1.0)
    assert [w for w in mixed.warnings if "only the first" in w] and not [w for w in mixed.warnings if "around 1.0" in w]


@pytest.mark.parametrize("name", ["Prodigy", "DAdaptAdam"])
def test_adaptive_optimizers_train_every_group_with_the_first_lr(name):
    # the packages raise at the first step when non-zero group lrs differ; the first one counts
    params = _model()
    info = build_optimizer(name, _groups(params, (1.0, 0.5)), 1.0)
    assert [g["lr"] for g in info.optimizer.param_groups] == [1.0, 1.0]
    _train(info, None, params, range(3))
    # a group at lr 0 stays frozen and is allowed
    params = _model()
    bias_before = params[1].detach().clone()
    info = build_optimizer(name, _groups(params, (1.0, 0.0)), 1.0)
    assert [g["lr"] for g in info.optimizer.param_groups] == [1.0, 0.0] and info.warnings == []
    _train(info, None, params, range(3))
    assert torch.equal(params[1].detach(), bias_before)


def test_effective_lrs_are_d_times_lr_for_adaptive_optimizers():
    params = _model()
    info = build_optimizer("DAdaptAdam", _groups(params), 1.0)
    scheduler = build_scheduler("cosine", info.optimizer, num_training_steps=20)
    _train(info, scheduler, params, range(5))
    lrs = effective_lrs(info, scheduler)
    expected = [g["d"] * g["lr"] for g in info.optimizer.param_groups]
    assert lrs == expected and lrs[0] != scheduler.get_last_lr()[0]
    adam = build_optimizer("AdamW", _groups(params, (1e-4, 5e-5)), 1e-4)
    sched = build_scheduler("linear", adam.optimizer, num_training_steps=10)
    adam.optimizer.step()
    sched.step()
    assert effective_lrs(adam, sched) == pytest.approx([0.9e-4, 0.45e-4])


# --------------------------------------------------------------------------------------------
# the Adafactor rule
# --------------------------------------------------------------------------------------------


def test_adafactor_relative_step_forces_its_schedule_and_drops_group_lrs():
    import transformers.optimization as tfo

    params = _model()
    groups = _groups(params, (1.6e-4, 6.5e-5))
    info = build_optimizer("Adafactor", groups, 1e-3, lr_scheduler="cosine")
    assert info.forced_scheduler == "adafactor"
    assert info.scheduler_initial_lr == 1e-3 and info.learning_rate is None
    assert info.group_lrs_dropped
    assert [g["lr"] for g in info.optimizer.param_groups] == [None, None]
    assert groups[0]["lr"] == 1.6e-4  # the caller's dicts are left alone
    assert any("replaced by 'adafactor'" in w for w in info.warnings)
    assert any("ignores unet_lr and text_encoder_lr" in w for w in info.warnings)

    scheduler = build_scheduler(info.forced_scheduler, info.optimizer, num_training_steps=10, initial_lr=1e-3)
    assert isinstance(scheduler, tfo.AdafactorSchedule)
    assert scheduler.get_last_lr() == [1e-3, 1e-3]  # the initial lr until the first step
    _train(info, scheduler, params, range(1))
    # afterwards the step size Adafactor computed: min(1e-2, 1/sqrt(1)) * max(1e-3, RMS(param))
    rms = [float(p.detach().pow(2).mean().sqrt()) for p in params]
    assert scheduler.get_last_lr() == pytest.approx([1e-2 * max(1e-3, r) for r in rms], rel=0.05)

    no_warning = build_optimizer("Adafactor", _groups(params), 1e-3, lr_scheduler="adafactor")
    assert not any("replaced" in w for w in no_warning.warnings) and not no_warning.group_lrs_dropped


def test_adafactor_without_relative_step_keeps_lrs_and_advice():
    params = _model()
    args = ["scale_parameter=False", "relative_step=False", "warmup_init=False"]
    info = build_optimizer(
        "Adafactor", _groups(params, (1.6e-4, 6.5e-5)), 1e-4, args, lr_scheduler="cosine", max_grad_norm=1.0
    )
    assert info.forced_scheduler is None and info.learning_rate == 1e-4
    assert [g["lr"] for g in info.optimizer.param_groups] == [1.6e-4, 6.5e-5]
    assert any("constant_with_warmup" in w for w in info.warnings)
    assert any("max_grad_norm 0" in w for w in info.warnings)
    quiet = build_optimizer(
        "Adafactor", _groups(params), 1e-4, args, lr_scheduler="constant_with_warmup", max_grad_norm=0
    )
    assert quiet.warnings == []
    with pytest.raises(UserError, match=r"adafactor works only with Adafactor's relative_step=True"):
        build_scheduler("adafactor", info.optimizer, num_training_steps=10)
    # warmup_init needs relative steps: sd-scripts turns relative_step back on
    forced = build_optimizer("Adafactor", _groups(params), 1e-4, ["relative_step=False", "warmup_init=True"])
    assert forced.kwargs["relative_step"] is True and forced.forced_scheduler == "adafactor"


def test_adafactor_schedule_needs_adafactor():
    info = build_optimizer("AdamW", _groups(_model()), 1e-4)
    with pytest.raises(UserError, match=r"adafactor works only with optimizer_type Adafactor"):
        build_scheduler("adafactor", info.optimizer, num_training_steps=10)
    with pytest.raises(UserError, match=r"no preview"):
        lr_at("adafactor", 0, 1e-4, num_training_steps=10)


# --------------------------------------------------------------------------------------------
# schedules against diffusers / transformers at every step
# --------------------------------------------------------------------------------------------

SCHEDULE_CASES = [
    # name, total, warmup, cycles, power
    ("constant", 50, 0, 1, 1.0),
    ("constant_with_warmup", 50, 0, 1, 1.0),
    ("constant_with_warmup", 60, 7, 1, 1.0),
    ("linear", 100, 0, 1, 1.0),
    ("linear", 100, 10, 1, 1.0),
    ("linear", 37, 36, 1, 1.0),
    ("cosine", 100, 0, 1, 1.0),
    ("cosine", 250, 25, 1, 1.0),
    ("cosine", 7, 3, 1, 1.0),
    ("cosine_with_restarts", 100, 0, 1, 1.0),
    ("cosine_with_restarts", 1000, 0, 5, 1.0),
    ("cosine_with_restarts", 333, 17, 3, 1.0),
    ("cosine_with_restarts", 97, 5, 7, 1.0),
    ("cosine_with_restarts", 10, 0, 20, 1.0),
    ("polynomial", 100, 0, 1, 1.0),
    ("polynomial", 120, 12, 1, 2.0),
    ("polynomial", 55, 5, 1, 0.5),
    ("polynomial", 80, 0, 1, 3.0),
]


def _two_group_optimizer():
    # the default lr differs from both groups' lrs: polynomial's end lr is relative to the default
    params = _model()
    return torch.optim.AdamW(_groups(params, (1.6e-4, 6.5e-5)), lr=2e-4)


def _lrs(opt) -> list[float]:
    return [g["lr"] for g in opt.param_groups]


def _compare(ours, theirs, name: str, total: int, kwargs: dict) -> None:
    ours_opt, theirs_opt = ours.optimizer, theirs.optimizer
    for step in range(total + 5):  # a few past the end, too
        assert _lrs(ours_opt) == _lrs(theirs_opt), (name, step)
        for i, base in enumerate((1.6e-4, 6.5e-5)):
            assert lr_at(name, step, base, learning_rate=2e-4, **kwargs) == _lrs(theirs_opt)[i], (name, step)
        ours_opt.step()
        theirs_opt.step()
        ours.step()
        theirs.step()


@pytest.mark.parametrize(("name", "total", "warmup", "cycles", "power"), SCHEDULE_CASES, ids=str)
def test_schedule_equals_diffusers_get_scheduler_at_every_step(name, total, warmup, cycles, power):
    from diffusers.optimization import get_scheduler

    kwargs = {"num_training_steps": total, "num_warmup_steps": warmup, "num_cycles": cycles, "power": power}
    ours = build_scheduler(name, _two_group_optimizer(), **kwargs)
    theirs = get_scheduler(name, _two_group_optimizer(), **kwargs)
    _compare(ours, theirs, name, total, kwargs)


def _sd_scripts_transformers_scheduler(name, optimizer, total, warmup, cycles, power, min_lr_ratio=None):
    """The calls sd-scripts' get_scheduler_fix makes (transformers' schedule functions)."""
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType

    kind = SchedulerType(name)
    func = TYPE_TO_SCHEDULER_FUNCTION[kind]
    if name == "constant":
        return func(optimizer)
    if name == "constant_with_warmup":
        return func(optimizer, num_warmup_steps=warmup)
    if name == "inverse_sqrt":
        return func(optimizer, num_warmup_steps=warmup, timescale=None)
    if name == "cosine_with_restarts":
        return func(optimizer, num_warmup_steps=warmup, num_training_steps=total, num_cycles=cycles)
    if name == "polynomial":
        return func(optimizer, num_warmup_steps=warmup, num_training_steps=total, power=power)
    return func(optimizer, num_warmup_steps=warmup, num_training_steps=total)


@pytest.mark.parametrize(
    ("name", "total", "warmup", "cycles", "power"),
    [*SCHEDULE_CASES, ("inverse_sqrt", 100, 10, 1, 1.0), ("inverse_sqrt", 50, 1, 1, 1.0)],
    ids=str,
)
def test_schedule_equals_transformers_schedule_functions_at_every_step(name, total, warmup, cycles, power):
    kwargs = {"num_training_steps": total, "num_warmup_steps": warmup, "num_cycles": cycles, "power": power}
    ours = build_scheduler(name, _two_group_optimizer(), **kwargs)
    theirs = _sd_scripts_transformers_scheduler(name, _two_group_optimizer(), total, warmup, cycles, power)
    _compare(ours, theirs, name, total, kwargs)


def test_cosine_with_min_lr_formula():
    """transformers >= 4.38 (sd-scripts' pin): cosine to a floor; sd-scripts passes num_cycles / 2."""
    total, warmup, ratio = 100, 10, 0.1
    curve = lr_curve("cosine_with_min_lr", 1e-4, num_training_steps=total, num_warmup_steps=warmup, min_lr_ratio=ratio)
    assert curve[5] == pytest.approx(0.5e-4)
    assert curve[10] == pytest.approx(1e-4)
    assert curve[55] == pytest.approx(1e-4 * (0.5 * (1 - ratio) + ratio))
    assert lr_at("cosine_with_min_lr", 100, 1e-4, num_training_steps=100, num_warmup_steps=10, min_lr_ratio=0.1) == (
        pytest.approx(1e-5)
    )
    with pytest.raises(UserError, match=r"needs lr_scheduler_min_lr_ratio"):
        lr_at("cosine_with_min_lr", 0, 1e-4, num_training_steps=100)


def test_inverse_sqrt_default_timescale_as_sd_scripts_pin():
    """transformers 4.54 (sd-scripts' pin): timescale defaults to the warmup, or 10,000 without one."""
    assert lr_at("inverse_sqrt", 0, 1.0, num_training_steps=10) == 1.0
    assert lr_at("inverse_sqrt", 30_000, 1.0, num_training_steps=10) == 0.5
    assert lr_at("inverse_sqrt", 40, 1.0, num_training_steps=100, num_warmup_steps=10) == 0.5
    assert lr_at("inverse_sqrt", 40, 1.0, num_training_steps=100, num_warmup_steps=10, timescale=40) == 1 / math.sqrt(
        70 / 40
    )


def test_guide_preset_cosine_with_restarts_five_cycles_by_hand():
    """The character preset: cosine_with_restarts, 5 cycles, unet 1.6e-4, text encoder 6.5e-5;
    e.g. 50 epochs x 20 steps = 1000 steps, no warmup."""
    total, cycles = 1000, 5
    opt = _two_group_optimizer()
    scheduler = build_scheduler("cosine_with_restarts", opt, num_training_steps=total, num_cycles=cycles)
    unet, te = [], []
    for _ in range(total + 1):
        unet.append(opt.param_groups[0]["lr"])
        te.append(opt.param_groups[1]["lr"])
        opt.step()
        scheduler.step()

    def expected(step: int, base: float) -> float:
        # factor = 0.5 * (1 + cos(pi * ((5 * step / 1000) mod 1)))
        return base * 0.5 * (1 + math.cos(math.pi * ((cycles * step / total) % 1)))

    by_hand = {
        0: 1.6e-4,
        50: 1.6e-4 * 0.8535533905932737,  # (1 + cos(pi/4)) / 2
        100: 0.8e-4,  # half way down the first cycle
        150: 1.6e-4 * 0.14644660940672624,  # (1 + cos(3pi/4)) / 2
        199: 1.6e-4 * 6.168375916970614e-05,  # sin^2(pi/400): just before the restart
        200: 1.6e-4,  # restart at the peak, no warmup
        600: 1.6e-4,
        700: 0.8e-4,
        999: 1.6e-4 * 6.168375916970614e-05,
        1000: 0.0,  # the end
    }
    for step, value in by_hand.items():
        assert unet[step] == pytest.approx(value, rel=1e-9, abs=1e-18), step
        if step < total:
            assert unet[step] == pytest.approx(expected(step, 1.6e-4), rel=1e-9, abs=1e-18)
    assert te[100] == pytest.approx(3.25e-5, rel=1e-12)
    restarts = [s for s in range(1, total) if unet[s] > unet[s - 1]]
    assert restarts == [200, 400, 600, 800]  # 5 cycles = 4 restarts
    assert min(unet[:total]) > 0 and max(unet) == 1.6e-4


def test_schedules_count_optimizer_steps_and_first_step_is_zero_with_warmup():
    # warmup 10 of 100: the first optimizer step runs at lr 0, the 11th at the full lr (as sd-scripts)
    curve = lr_curve("linear", 1e-4, num_training_steps=100, num_warmup_steps=10)
    assert len(curve) == 100
    assert curve[0] == 0.0 and curve[1] == pytest.approx(1e-5) and curve[10] == 1e-4
    assert curve[99] == pytest.approx(1e-4 / 90)


@pytest.mark.parametrize(
    ("value", "total", "steps"),
    [
        (0, 1000, 0),
        (100, 1000, 100),
        (100.0, 1000, 100),
        (0.1, 1000, 100),
        (0.05, 333, 16),
        ("10%", 250, 25),
        ("40", 99, 40),
        (None, 10, 0),
    ],
)
def test_warmup_ratio_as_sd_scripts(value, total, steps):
    assert resolve_warmup_steps(value, total) == steps


@pytest.mark.parametrize("value", [-1, 1.5, "abc", True, float("nan")])
def test_bad_warmup_is_refused(value):
    with pytest.raises(UserError, match=r"lr_warmup_steps"):
        resolve_warmup_steps(value, 100)


def test_warmup_ratio_reaches_the_scheduler():
    opt = _two_group_optimizer()
    build_scheduler("cosine", opt, num_training_steps=200, num_warmup_steps=0.1)
    curve = lr_curve("cosine", 1.0, num_training_steps=200, num_warmup_steps=0.1)
    assert curve[19] < 1.0 and curve[20] == 1.0
    assert opt.param_groups[0]["lr"] == 0.0


def test_constant_ignores_warmup_with_a_warning():
    spec = schedule_spec("constant", num_training_steps=100, num_warmup_steps=10)
    assert spec.num_warmup_steps == 0 and any("constant_with_warmup" in w for w in spec.warnings)
    assert lr_curve("constant", 1e-4, num_training_steps=100, num_warmup_steps=10) == [1e-4] * 100
    long = schedule_spec("linear", num_training_steps=10, num_warmup_steps=20)
    assert any("never reaches" in w for w in long.warnings)


def test_schedule_settings_are_checked():
    with pytest.raises(UserError, match=r"lr_scheduler 'cosine_restarts' is not a known schedule\. Did you mean"):
        lr_at("cosine_restarts", 0, 1e-4, num_training_steps=10)
    assert lr_at("Cosine_With_Restarts", 0, 1e-4, num_training_steps=10) == 1e-4  # any case
    with pytest.raises(UserError, match=r"lr_scheduler_num_cycles"):
        lr_at("cosine_with_restarts", 0, 1e-4, num_training_steps=10, num_cycles=0)
    with pytest.raises(UserError, match=r"lr_scheduler_power"):
        lr_at("polynomial", 0, 1e-4, num_training_steps=10, power=-1)
    with pytest.raises(UserError, match=r"training steps"):
        lr_at("linear", 0, 1e-4, num_training_steps=0)
    with pytest.raises(UserError, match=r"polynomial decays to 1e-07"):
        build_scheduler("polynomial", torch.optim.AdamW(_model(), lr=1e-8), num_training_steps=10)


# --------------------------------------------------------------------------------------------
# resume: optimizer + scheduler state round trip
# --------------------------------------------------------------------------------------------

RESUME = [
    ("AdamW", 1e-2, ["weight_decay=0.01"]),
    ("Lion", 1e-3, None),
    ("SGDNesterov", 1e-2, None),
    ("Prodigy", 1.0, None),
    ("DAdaptAdam", 1.0, None),
    ("Adafactor", 1e-3, None),
    ("Adafactor", 1e-2, ["relative_step=False", "scale_parameter=False"]),
]


def _run(name, lr, args, steps: range, total: int, state=None):
    params = _model()
    if state is not None:
        with torch.no_grad():
            for p, saved in zip(params, state["params"]):
                p.copy_(saved)
    info = build_optimizer(name, _groups(params, (lr, lr / 2)), lr, args)
    scheduler = build_scheduler(
        info.forced_scheduler or "cosine_with_restarts",
        info.optimizer,
        num_training_steps=total,
        num_warmup_steps=0 if info.forced_scheduler else 3,
        num_cycles=2,
        initial_lr=info.scheduler_initial_lr,
    )
    if state is not None:
        load_optimizer_state(info, scheduler, state["optim"])
    _train(info, scheduler, params, steps)
    return params, info, scheduler


@pytest.mark.parametrize(("name", "lr", "args"), RESUME, ids=lambda v: str(v))
def test_resume_continues_with_the_same_lr_and_moments(name, lr, args):
    total, split = 12, 5
    straight, straight_info, straight_sched = _run(name, lr, args, range(total), total)

    first, info, scheduler = _run(name, lr, args, range(split), total)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in first], "optim": optimizer_state(info, scheduler)}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # what a resumed run reads back from disk
    resumed, resumed_info, resumed_sched = _run(name, lr, args, range(split, total), total, state)

    for a, b in zip(straight, resumed):
        assert torch.equal(a, b), name
    assert effective_lrs(resumed_info, resumed_sched) == effective_lrs(straight_info, straight_sched)
    assert resumed_sched.state_dict()["last_epoch"] == total


def test_resume_refuses_state_of_another_optimizer_or_network():
    params = _model()
    info = build_optimizer("AdamW", _groups(params), 1e-3)
    scheduler = build_scheduler("constant", info.optimizer, num_training_steps=10)
    _train(info, scheduler, params, range(2))
    state = optimizer_state(info, scheduler)

    lion = build_optimizer("Lion", _groups(params), 1e-4)
    with pytest.raises(UserError, match=r"saved training state is for optimizer AdamW, but this run uses Lion"):
        load_optimizer_state(lion, build_scheduler("constant", lion.optimizer, num_training_steps=10), state)

    one_group = build_optimizer("AdamW", [{"params": list(params)}], 1e-3)
    with pytest.raises(UserError, match=r"does not fit this run"):
        load_optimizer_state(one_group, build_scheduler("constant", one_group.optimizer, num_training_steps=10), state)


def test_table_lists_the_issue_optimizers():
    for name in ("AdamW", "AdamW8bit", "Lion", "SGDNesterov", "Prodigy", "DAdaptAdam", "Adafactor"):
        assert name in optim.OPTIMIZERS
    for name in ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"):
        assert name in optim.SCHEDULERS
