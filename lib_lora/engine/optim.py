"""Optimizers and learning-rate schedules, built the way kohya sd-scripts builds them.

Two entry points for the training loop, one for the UI:

- ``build_optimizer(name, param_groups, lr, optimizer_args)`` -> ``OptimizerInfo``: the optimizer,
  the ``ss_optimizer`` metadata string, warnings to show, and the Adafactor rule (with
  ``relative_step=True`` the optimizer schedules itself: ``forced_scheduler == "adafactor"``).
- ``build_scheduler(name, optimizer, num_training_steps=..., num_warmup_steps=...)`` -> a torch
  ``LambdaLR`` whose lr at every step equals sd-scripts' (transformers/diffusers schedule functions).
- ``lr_at`` / ``lr_curve``: the same schedule as plain numbers, for a preview (no optimizer needed).

Counting, as in sd-scripts: steps are optimizer steps (a gradient-accumulation group is one step);
``num_training_steps`` is the run's total optimizer steps (``max_train_steps``; sd-scripts multiplies
by the number of processes only because accelerate steps the scheduler once per process). Step the
scheduler once after each optimizer step that really happened (accelerate skips it when a fp16
GradScaler skipped the optimizer step). ``lr_at(step)`` is the lr the optimizer step with 0-based
index ``step`` uses: with warmup, the very first step runs at lr 0, as in sd-scripts.

Optional optimizer packages (bitsandbytes, prodigyopt, dadaptation, lion_pytorch, transformers)
are imported here only, lazily, inside functions.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from lib_lora.common.errors import UserError

# --------------------------------------------------------------------------------------------
# optimizer_args: sd-scripts' "key=value" strings
# --------------------------------------------------------------------------------------------


def parse_optimizer_args(optimizer_args: Sequence[str] | Mapping[str, Any] | str | None) -> dict[str, Any]:
    """sd-scripts' parsing: each ``key=value`` is split at ``=`` and the value goes through
    ``ast.literal_eval`` (so ``betas=0.9,0.999`` is a tuple, ``relative_step=False`` a bool).

    A mapping is taken as already parsed; a single string is split on whitespace first (the way a
    shell hands ``--optimizer_args weight_decay=0.01 betas=.9,.999`` over).
    """
    if optimizer_args is None:
        return {}
    if isinstance(optimizer_args, Mapping):
        return {str(k): v for k, v in optimizer_args.items()}
    if isinstance(optimizer_args, str):
        optimizer_args = optimizer_args.split()
    kwargs: dict[str, Any] = {}
    for raw in optimizer_args:
        arg = str(raw).strip()
        if not arg:
            continue
        parts = arg.split("=")
        if len(parts) != 2 or not parts[0].strip():
            raise UserError(
                f"optimizer_args entry {arg!r} is not of the form key=value.",
                hint="Write one key=value per entry, for example weight_decay=0.01 or betas=0.9,0.999.",
            )
        key, value = parts[0].strip(), parts[1]
        try:
            kwargs[key] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise UserError(
                f"optimizer_args entry {arg!r} has a value that is not a Python literal.",
                hint="Numbers as 0.01, lists as 0.9,0.999, booleans as True/False, text in quotes ('text').",
            ) from None
    return kwargs


def format_optimizer_args(kwargs: Mapping[str, Any]) -> str:
    """sd-scripts' text of the arguments: ``k=v`` joined by commas, values as ``str()`` prints them."""
    return ",".join(f"{k}={v}" for k, v in kwargs.items())


def optimizer_metadata_name(optimizer_class: type, kwargs: Mapping[str, Any]) -> str:
    """What sd-scripts writes to ``ss_optimizer``: ``module.Class`` plus ``(args)`` when there are
    any, e.g. ``bitsandbytes.optim.adamw.AdamW8bit(weight_decay=0.1,betas=(0.9, 0.99))``."""
    args = format_optimizer_args(kwargs)
    name = f"{optimizer_class.__module__}.{optimizer_class.__name__}"
    return name + (f"({args})" if args else "")


# --------------------------------------------------------------------------------------------
# Lion, for when lion_pytorch is not installed
# --------------------------------------------------------------------------------------------


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2).

    ``c = b1*m + (1-b1)*g``; ``w -= lr * (sign(c) + wd*w)``; ``m = b2*m + (1-b2)*g``.
    Defaults and state (``exp_avg``) as lion_pytorch, so configs and lrs carry over.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        if not lr > 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if len(betas) != 2 or not all(0.0 <= b <= 1.0 for b in betas):
            raise ValueError(f"Invalid beta parameters: {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                update = torch.lerp(p.grad, m, beta1).sign_()  # b1*m + (1-b1)*g
                if wd:
                    p.mul_(1.0 - lr * wd)
                p.add_(update, alpha=-lr)
                m.lerp_(p.grad, 1.0 - beta2)  # b2*m + (1-b2)*g
        return loss


# --------------------------------------------------------------------------------------------
# the optimizer table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Choice:
    name: str  # canonical spelling
    family: str  # adamw | lion | sgd | bnb | dadapt | prodigy | adafactor
    attr: str = ""  # class name inside its package
    min_version: str = ""  # bitsandbytes version that introduced the class
    nesterov: bool = False


_CHOICES: tuple[_Choice, ...] = (
    _Choice("AdamW", "adamw"),
    _Choice("AdamW8bit", "bnb", "AdamW8bit"),
    _Choice("PagedAdamW8bit", "bnb", "PagedAdamW8bit", "0.39.0"),
    _Choice("PagedAdamW", "bnb", "PagedAdamW", "0.39.0"),
    _Choice("PagedAdamW32bit", "bnb", "PagedAdamW32bit", "0.39.0"),
    _Choice("Lion8bit", "bnb", "Lion8bit", "0.38.0"),
    _Choice("PagedLion8bit", "bnb", "PagedLion8bit", "0.39.0"),
    _Choice("SGDNesterov8bit", "bnb", "SGD8bit", nesterov=True),
    _Choice("Lion", "lion"),
    _Choice("SGDNesterov", "sgd", nesterov=True),
    _Choice("Prodigy", "prodigy"),
    _Choice("DAdaptAdam", "dadapt", "DAdaptAdam"),
    _Choice("DAdaptation", "dadapt", "experimental.DAdaptAdamPreprint"),
    _Choice("DAdaptAdamPreprint", "dadapt", "experimental.DAdaptAdamPreprint"),
    _Choice("DAdaptAdaGrad", "dadapt", "DAdaptAdaGrad"),
    _Choice("DAdaptAdan", "dadapt", "DAdaptAdan"),
    _Choice("DAdaptAdanIP", "dadapt", "experimental.DAdaptAdanIP"),
    _Choice("DAdaptLion", "dadapt", "DAdaptLion"),
    _Choice("DAdaptSGD", "dadapt", "DAdaptSGD"),
    _Choice("Adafactor", "adafactor"),
    _Choice("AdamWScheduleFree", "schedulefree", "AdamWScheduleFree"),
    _Choice("RAdamScheduleFree", "schedulefree", "RAdamScheduleFree"),
    _Choice("SGDScheduleFree", "schedulefree", "SGDScheduleFree"),
    _Choice("CAME", "came"),
)
_BY_LOWER = {c.name.lower(): c for c in _CHOICES}
# the dotted class paths kohya_ss / sd-scripts users write for the same optimizers
_ALIASES = {"came_pytorch.came": "came", "pytorch_optimizer.came": "came", "schedulefree.adamwschedulefree": "adamwschedulefree",
            "schedulefree.radamschedulefree": "radamschedulefree", "schedulefree.sgdschedulefree": "sgdschedulefree"}  # fmt: skip
# the optional packages, pinned as the project tests them
PIP_PINS = {"schedulefree": "schedulefree==1.4.1", "came": "came-pytorch==0.1.3"}

#: Every optimizer name ``build_optimizer`` accepts (matched case-insensitively, as sd-scripts).
OPTIMIZERS: tuple[str, ...] = tuple(c.name for c in _CHOICES)


def resolve_optimizer_name(name: str | None) -> str:
    """The canonical spelling of an optimizer name; empty means AdamW. Unknown -> UserError."""
    key = (name or "").strip().lower() or "adamw"
    key = _ALIASES.get(key, key)
    choice = _BY_LOWER.get(key)
    if choice is None:
        close = difflib.get_close_matches(key, list(_BY_LOWER), n=3, cutoff=0.6)
        maybe = f" Did you mean {', '.join(_BY_LOWER[c].name for c in close)}?" if close else ""
        raise UserError(
            f"optimizer_type {name!r} is not a known optimizer.{maybe}",
            hint=f"Choose one of: {', '.join(OPTIMIZERS)} (case does not matter).",
        )
    return choice.name


@dataclass
class OptimizerInfo:
    """What ``build_optimizer`` made and what the caller has to know about it."""

    optimizer: torch.optim.Optimizer
    name: str  # canonical optimizer_type, e.g. "AdamW8bit"
    name_for_metadata: str  # sd-scripts' ss_optimizer string
    kwargs: dict[str, Any]  # the keyword arguments as sd-scripts passes them (after its defaults)
    learning_rate: float | None  # the optimizer's default lr; None when Adafactor schedules itself
    warnings: list[str] = field(default_factory=list)
    # Adafactor relative_step=True: the scheduler must be "adafactor" (build_scheduler(forced_scheduler,
    # initial_lr=scheduler_initial_lr)); per-group lrs were dropped (unet_lr / text_encoder_lr ignored).
    forced_scheduler: str | None = None
    scheduler_initial_lr: float | None = None
    group_lrs_dropped: bool = False
    adaptive: bool = False  # D-Adaptation / Prodigy: lr is a multiplier (about 1.0), d*lr is logged
    # schedule-free (AdamWScheduleFree...): no lr schedule; optimizer.eval() before sampling and
    # saving (the eval-mode weights are the ones to keep), optimizer.train() to go on training
    schedule_free: bool = False


def _missing_package(choice: _Choice, package: str, pip_name: str, extra: str = "") -> UserError:
    return UserError(
        f"optimizer_type {choice.name} needs the Python package {package}, which is not installed{extra}.",
        hint=f"Install it into the Python that runs training (pip install {pip_name}), or choose AdamW.",
    )


def _optimizer_class(choice: _Choice) -> tuple[type, list[str]]:
    """The class for a table entry (lazy import), plus warnings about the choice itself."""
    notes: list[str] = []
    if choice.family == "adamw":
        return torch.optim.AdamW, notes
    if choice.family == "sgd":
        return torch.optim.SGD, notes
    if choice.family == "lion":
        try:
            import lion_pytorch
        except ImportError:
            return Lion, notes
        return lion_pytorch.Lion, notes
    if choice.family == "bnb":
        try:
            import bitsandbytes
        except ImportError:
            raise _missing_package(
                choice, "bitsandbytes", "bitsandbytes", " (8-bit optimizers also need an NVIDIA CUDA GPU)"
            ) from None
        except Exception as exc:  # bitsandbytes raises all kinds of errors when it finds no usable GPU
            raise UserError(
                f"optimizer_type {choice.name} needs bitsandbytes, which is installed but failed to load ({exc}).",
                hint="8-bit optimizers need an NVIDIA CUDA GPU and a bitsandbytes build for it; or choose AdamW.",
            ) from None
        cls = getattr(bitsandbytes.optim, choice.attr, None)
        if cls is None:
            raise UserError(
                f"optimizer_type {choice.name} is not in the installed bitsandbytes (too old).",
                hint=f"Upgrade it to {choice.min_version or 'a newer version'} or later (pip install -U bitsandbytes), or choose AdamW8bit.",
            )
        return cls, notes
    if choice.family == "dadapt":
        try:
            import dadaptation
            import dadaptation.experimental
        except ImportError:
            raise _missing_package(choice, "dadaptation", "dadaptation") from None
        holder: Any = dadaptation
        for part in choice.attr.split("."):
            holder = getattr(holder, part)
        return holder, notes
    if choice.family == "prodigy":
        try:
            import prodigyopt
        except ImportError:
            raise _missing_package(choice, "prodigyopt", "prodigyopt") from None
        return prodigyopt.Prodigy, notes
    if choice.family == "schedulefree":
        try:
            import schedulefree
        except ImportError:
            raise _missing_package(choice, "schedulefree", PIP_PINS["schedulefree"]) from None
        return getattr(schedulefree, choice.attr), notes
    if choice.family == "came":
        try:
            from came_pytorch import CAME
        except ImportError:
            try:
                from pytorch_optimizer import CAME
            except ImportError:
                raise _missing_package(choice, "came-pytorch (or pytorch-optimizer)", PIP_PINS["came"]) from None
        return CAME, notes
    if choice.family == "adafactor":
        try:
            import transformers.optimization
        except ImportError:
            cls = getattr(torch.optim, "Adafactor", None)
            if cls is None:
                raise _missing_package(choice, "transformers", "transformers") from None
            notes.append(
                "transformers is not installed: using torch.optim.Adafactor, which follows the same paper but "
                "is not step-for-step identical to sd-scripts' (transformers) Adafactor."
            )
            return cls, notes
        return transformers.optimization.Adafactor, notes
    raise AssertionError(choice.family)  # pragma: no cover - the table is closed


def _check_kwargs(cls: type, display: str, kwargs: Mapping[str, Any], reserved: Iterable[str]) -> None:
    for key in reserved:
        if key in kwargs:
            what = "the learning rate" if key == "lr" else f"{key!r}"
            raise UserError(
                f"optimizer_args sets {what}, which training sets itself for {display}.",
                hint="Remove it from optimizer_args (set learning_rate / unet_lr / text_encoder_lr instead)."
                if key == "lr"
                else "Remove it from optimizer_args.",
            )
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # pragma: no cover - C classes without a signature
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [
        n
        for n, p in params.items()
        if n not in ("self", "params", "lr", *reserved)
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    for key in kwargs:
        if key not in params:
            close = difflib.get_close_matches(key, accepted, n=1)
            maybe = f" Did you mean {close[0]}?" if close else ""
            raise UserError(
                f"optimizer_args: {display} has no setting {key!r}.{maybe}",
                hint=f"Its settings are: {', '.join(accepted)}.",
            )


def _normalise_groups(param_groups: Iterable[Any]) -> list[dict[str, Any]]:
    groups = list(param_groups)
    if groups and not isinstance(groups[0], Mapping):
        groups = [{"params": groups}]
    out = []
    for group in groups:
        g = dict(group)
        g["params"] = list(g["params"])
        out.append(g)
    if not any(g["params"] for g in out):
        raise UserError("There is nothing to train: the optimizer got no trainable parameters.")
    return out


def build_optimizer(
    name: str | None,
    param_groups: Iterable[Any],
    lr: float,
    optimizer_args: Sequence[str] | Mapping[str, Any] | str | None = None,
    *,
    lr_scheduler: str | None = None,
    max_grad_norm: float | None = None,
) -> OptimizerInfo:
    """Make the optimizer sd-scripts' ``get_optimizer`` would make for ``optimizer_type=name``.

    ``param_groups``: dicts with ``params`` and optionally ``lr`` (and extra keys such as ``name``),
    or a plain list of tensors. ``lr`` is the default lr (``learning_rate``). The caller's group
    dicts are not modified. ``lr_scheduler`` and ``max_grad_norm``, when given, only sharpen the
    warnings (sd-scripts' advice for Adafactor).
    """
    choice = _BY_LOWER[resolve_optimizer_name(name).lower()]
    display = choice.name
    groups = _normalise_groups(param_groups)
    kwargs = parse_optimizer_args(optimizer_args)
    cls, warnings = _optimizer_class(choice)
    reserved: list[str] = ["params", "lr"]
    extra: dict[str, Any] = {}
    construct_lr: float | None = lr
    forced_scheduler: str | None = None
    dropped = False

    if choice.nesterov:
        reserved.append("nesterov")
        extra["nesterov"] = True
        if "momentum" not in kwargs:
            kwargs["momentum"] = 0.9  # sd-scripts: SGD with Nesterov needs momentum

    if choice.family == "bnb" and not any(p.is_cuda for g in groups for p in g["params"]):
        warnings.append(f"{display} (bitsandbytes) is made for CUDA GPUs; the parameters to train are not on one.")

    adaptive = choice.family in ("dadapt", "prodigy")
    if adaptive:
        actual_lr = groups[0].get("lr", lr)
        if actual_lr <= 0.1:
            warnings.append(
                f"The learning rate {actual_lr} is very low for {display}: D-Adaptation and Prodigy find the step "
                "size themselves and expect a learning rate around 1.0."
            )
        nonzero = [g.get("lr", lr) for g in groups if g.get("lr", lr) != 0]
        if len(set(nonzero)) > 1:
            # sd-scripts warns that only the first lr counts; the packages refuse unequal non-zero group
            # lrs at the first step, so make that rule true here (a group at lr 0 stays frozen)
            for g in groups:
                if g.get("lr", lr) != 0:
                    g["lr"] = nonzero[0]
            warnings.append(
                f"{display} uses only the first learning rate ({nonzero[0]}) for every group; the other "
                "learning rates (unet_lr / text_encoder_lr) are ignored."
            )

    if choice.family == "adafactor":
        if "relative_step" not in kwargs:
            kwargs["relative_step"] = True  # transformers' default, made explicit as sd-scripts does
        if not kwargs["relative_step"] and kwargs.get("warmup_init", False):
            kwargs["relative_step"] = True  # sd-scripts: warmup_init needs relative_step
            warnings.append("Adafactor: warmup_init=True needs relative_step, so relative_step was set to True.")
        if kwargs["relative_step"]:
            # sd-scripts: the optimizer sets its own step size; lr only labels the start of the
            # 'adafactor' schedule; per-group lrs are dropped
            forced_scheduler = "adafactor"
            construct_lr = None
            for g in groups:
                dropped = (g.pop("lr", None) is not None) or dropped
            if lr_scheduler is None or _scheduler_name_or_none(lr_scheduler) != "adafactor":
                warnings.append(
                    "Adafactor with relative_step=True sets its own step size: the lr scheduler is replaced by "
                    f"'adafactor' and the learning rate ({lr}) is only shown as its starting value."
                )
            if dropped:
                warnings.append("Adafactor with relative_step=True ignores unet_lr and text_encoder_lr.")
        else:
            if max_grad_norm:
                warnings.append(
                    "Adafactor: gradient clipping (max_grad_norm) is on; sd-scripts advises max_grad_norm 0."
                )
            if lr_scheduler is not None and _scheduler_name_or_none(lr_scheduler) != "constant_with_warmup":
                warnings.append("Adafactor: sd-scripts advises lr_scheduler constant_with_warmup.")
            if kwargs.get("clip_threshold", 1.0) != 1.0:
                warnings.append("Adafactor: clip_threshold=1.0 is the recommended value.")

    schedule_free = choice.family == "schedulefree"
    if schedule_free:
        # sd-scripts gives schedule-free optimizers a dummy scheduler: the lr stays as given
        forced_scheduler = "constant"
        if lr_scheduler is not None and _scheduler_name_or_none(lr_scheduler) not in ("constant", None):
            warnings.append(
                f"{display} needs no learning-rate schedule: lr_scheduler {lr_scheduler} is replaced by constant "
                "(AdamWScheduleFree warms up with optimizer_args warmup_steps=N)."
            )

    if cls is getattr(torch.optim, "Adafactor", object()):
        optimizer = _torch_adafactor(cls, groups, kwargs, display)
    else:
        _check_kwargs(cls, display, kwargs, reserved)
        try:
            optimizer = cls(groups, lr=construct_lr, **extra, **kwargs)
        except (ValueError, TypeError) as exc:
            raise UserError(
                f"{display} refused its settings: {exc}.", hint="Check optimizer_args and the learning rates."
            ) from None
    if schedule_free:
        optimizer.train()  # sd-scripts: train mode for training; eval mode only around samples and saves
    return OptimizerInfo(
        optimizer=optimizer,
        name=display,
        name_for_metadata=optimizer_metadata_name(cls, kwargs),
        kwargs=kwargs,
        learning_rate=None if forced_scheduler == "adafactor" else lr,
        warnings=warnings,
        forced_scheduler=forced_scheduler,
        scheduler_initial_lr=lr if forced_scheduler == "adafactor" else None,
        group_lrs_dropped=dropped,
        adaptive=adaptive,
        schedule_free=schedule_free,
    )


@contextlib.contextmanager
def evaluation(info: OptimizerInfo) -> Iterator[None]:
    """Schedule-free optimizers in eval mode for the block (the parameters hold the averaged weights
    that are sampled and saved), back in train mode afterwards; other optimizers untouched."""
    if not info.schedule_free:
        yield
        return
    info.optimizer.eval()
    try:
        yield
    finally:
        info.optimizer.train()


def _scheduler_name_or_none(name: str) -> str | None:
    try:
        return _scheduler_name(name)
    except UserError:
        return None


def _torch_adafactor(cls: type, groups: list[dict[str, Any]], kwargs: Mapping[str, Any], display: str) -> Any:
    """torch.optim.Adafactor standing in for transformers' Adafactor (relative steps only)."""
    unsupported = {
        "relative_step": False,
        "scale_parameter": False,
        "warmup_init": True,
    }
    for key, bad in unsupported.items():
        if key in kwargs and bool(kwargs[key]) == bad:
            raise UserError(
                f"Adafactor with {key}={kwargs[key]} needs the transformers package, which is not installed.",
                hint="Install it (pip install transformers), or use Adafactor with its default relative steps.",
            )
    if kwargs.get("beta1") is not None:
        raise UserError(
            "Adafactor with beta1 needs the transformers package, which is not installed.",
            hint="Install it (pip install transformers), or remove beta1.",
        )
    mapped: dict[str, Any] = {"lr": 1e-2}  # transformers' relative-step cap min(1e-2, 1/sqrt(t))
    known = {
        "relative_step",
        "scale_parameter",
        "warmup_init",
        "beta1",
        "decay_rate",
        "clip_threshold",
        "eps",
        "weight_decay",
    }
    for key in kwargs:
        if key not in known:
            raise UserError(
                f"optimizer_args: {display} has no setting {key!r}.",
                hint=f"Its settings are: {', '.join(sorted(known))}.",
            )
    if "decay_rate" in kwargs:
        mapped["beta2_decay"] = kwargs["decay_rate"]
    if "clip_threshold" in kwargs:
        mapped["d"] = kwargs["clip_threshold"]
    if "weight_decay" in kwargs:
        mapped["weight_decay"] = kwargs["weight_decay"]
    if "eps" in kwargs:
        eps1, eps2 = kwargs["eps"]
        mapped["eps"] = (None if eps1 is None else math.sqrt(eps1), eps2)  # torch squares eps1, transformers adds it
    try:
        return cls(groups, **mapped)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{display} refused its settings: {exc}.", hint="Check optimizer_args.") from None


def effective_lrs(info: OptimizerInfo, scheduler: Any | None = None) -> list[float]:
    """The lr of each group as sd-scripts logs it: the scheduler's last lr (Adafactor's own step
    size under the adafactor schedule), or ``d * lr`` for D-Adaptation / Prodigy (their real step)."""
    groups = info.optimizer.param_groups
    if info.adaptive:
        return [float(g["d"]) * float(g["lr"]) for g in groups]
    if scheduler is not None:
        return [float(v) for v in scheduler.get_last_lr()]
    return [float(g["lr"]) for g in groups]


# --------------------------------------------------------------------------------------------
# learning-rate schedules
# --------------------------------------------------------------------------------------------

#: Schedules a user can pick (``adafactor`` is also accepted, with the Adafactor optimizer only).
SCHEDULERS: tuple[str, ...] = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "cosine_with_min_lr",
    "inverse_sqrt",
)
POLYNOMIAL_LR_END = 1e-7  # the end lr of transformers' / diffusers' polynomial decay


def resolve_warmup_steps(value: int | float | str | None, num_training_steps: int) -> int:
    """``lr_warmup_steps`` as sd-scripts reads it: a whole number of steps, or a ratio below 1 of
    the total (``int(ratio * total)``); ``"10%"`` is 0.1."""
    raw = value
    if value is None:
        return 0
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            raise UserError(f"lr_warmup_steps {raw!r} is not a number of steps or a ratio.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UserError(f"lr_warmup_steps {raw!r} must be a whole number of steps (>= 0) or a ratio below 1.")
    if isinstance(value, float) and value < 1:
        return int(value * num_training_steps)
    if isinstance(value, float) and not value.is_integer():
        raise UserError(
            f"lr_warmup_steps {raw!r} is neither a whole number of steps nor a ratio below 1.",
            hint="Write e.g. 100 for 100 steps or 0.05 for 5 % of all steps.",
        )
    return int(value)


def _scheduler_name(name: str | None) -> str:
    key = (name or "constant").strip().lower()
    if key.startswith("adafactor"):
        return "adafactor"
    if key not in SCHEDULERS:
        close = difflib.get_close_matches(key, SCHEDULERS, n=2, cutoff=0.6)
        maybe = f" Did you mean {' or '.join(close)}?" if close else ""
        raise UserError(
            f"lr_scheduler {name!r} is not a known schedule.{maybe}", hint=f"Choose one of: {', '.join(SCHEDULERS)}."
        )
    return key


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule with its numbers resolved and checked (``num_warmup_steps`` in steps)."""

    name: str
    num_training_steps: int
    num_warmup_steps: int
    num_cycles: int = 1
    power: float = 1.0
    min_lr_ratio: float | None = None
    timescale: int | None = None
    warnings: tuple[str, ...] = ()

    def factor(self, step: int, lr_init: float) -> float:
        """The multiplier of the base lr at 0-based optimizer step ``step`` (what LambdaLR calls).

        ``lr_init`` is the optimizer's default lr; only ``polynomial`` uses it (its end lr 1e-7 is
        relative to it, as in transformers/diffusers, whatever a group's own lr).
        """
        return _FACTORS[self.name](self, step, lr_init)


def _warmup(s: ScheduleSpec, step: int) -> float:
    return float(step) / float(max(1, s.num_warmup_steps))


def _progress(s: ScheduleSpec, step: int) -> float:
    return float(step - s.num_warmup_steps) / float(max(1, s.num_training_steps - s.num_warmup_steps))


def _constant(s: ScheduleSpec, step: int, lr_init: float) -> float:
    return 1.0


def _constant_with_warmup(s: ScheduleSpec, step: int, lr_init: float) -> float:
    return _warmup(s, step) if step < s.num_warmup_steps else 1.0


def _linear(s: ScheduleSpec, step: int, lr_init: float) -> float:
    if step < s.num_warmup_steps:
        return _warmup(s, step)
    return max(0.0, float(s.num_training_steps - step) / float(max(1, s.num_training_steps - s.num_warmup_steps)))


def _cosine(s: ScheduleSpec, step: int, lr_init: float) -> float:
    if step < s.num_warmup_steps:
        return _warmup(s, step)
    # one half-wave (num_cycles 0.5 in transformers' terms), from 1 to 0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * _progress(s, step))))


def _cosine_with_restarts(s: ScheduleSpec, step: int, lr_init: float) -> float:
    if step < s.num_warmup_steps:
        return _warmup(s, step)
    progress = _progress(s, step)
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(s.num_cycles) * progress) % 1.0))))


def _polynomial(s: ScheduleSpec, step: int, lr_init: float) -> float:
    if step < s.num_warmup_steps:
        return _warmup(s, step)
    if step > s.num_training_steps:
        return POLYNOMIAL_LR_END / lr_init
    decay_steps = s.num_training_steps - s.num_warmup_steps
    if decay_steps == 0:  # warmup as long as the run: the only step left is the end
        return POLYNOMIAL_LR_END / lr_init
    pct_remaining = 1 - (step - s.num_warmup_steps) / decay_steps
    return ((lr_init - POLYNOMIAL_LR_END) * pct_remaining**s.power + POLYNOMIAL_LR_END) / lr_init


def _cosine_with_min_lr(s: ScheduleSpec, step: int, lr_init: float) -> float:
    if step < s.num_warmup_steps:
        return _warmup(s, step)
    # sd-scripts passes num_cycles / 2 (one cycle = one half-wave down to the floor)
    factor = 0.5 * (1.0 + math.cos(math.pi * float(s.num_cycles / 2) * 2.0 * _progress(s, step)))
    ratio = s.min_lr_ratio or 0.0
    return max(0, factor * (1 - ratio) + ratio)


def _inverse_sqrt(s: ScheduleSpec, step: int, lr_init: float) -> float:
    if step < s.num_warmup_steps:
        return _warmup(s, step)
    timescale = s.timescale or s.num_warmup_steps or 10_000
    shift = timescale - s.num_warmup_steps
    return 1.0 / math.sqrt((step + shift) / timescale)


_FACTORS: dict[str, Callable[[ScheduleSpec, int, float], float]] = {
    "constant": _constant,
    "constant_with_warmup": _constant_with_warmup,
    "linear": _linear,
    "cosine": _cosine,
    "cosine_with_restarts": _cosine_with_restarts,
    "polynomial": _polynomial,
    "cosine_with_min_lr": _cosine_with_min_lr,
    "inverse_sqrt": _inverse_sqrt,
    "adafactor": _constant,
}


def schedule_spec(
    name: str | None,
    *,
    num_training_steps: int,
    num_warmup_steps: int | float | str | None = 0,
    num_cycles: int = 1,
    power: float = 1.0,
    min_lr_ratio: float | None = None,
    timescale: int | None = None,
) -> ScheduleSpec:
    """Check a schedule's settings and resolve the warmup (ratio -> steps). Warnings, not errors,
    for settings sd-scripts would refuse but that have an obvious meaning (warmup on ``constant``)."""
    key = _scheduler_name(name)
    if isinstance(num_training_steps, bool) or not isinstance(num_training_steps, int) or num_training_steps < 1:
        raise UserError(
            f"The number of training steps must be a whole number of at least 1, not {num_training_steps!r}."
        )
    warmup = resolve_warmup_steps(num_warmup_steps, num_training_steps)
    warnings: list[str] = []
    if key in ("constant", "adafactor") and warmup:
        what = "lr_scheduler 'constant'" if key == "constant" else "Adafactor's own schedule"
        warnings.append(
            f"{what} has no warmup: lr_warmup_steps ({warmup} steps) is ignored"
            + ("; use constant_with_warmup to warm up." if key == "constant" else ".")
        )
        warmup = 0
    elif warmup >= num_training_steps:
        warnings.append(
            f"The warmup ({warmup} steps) is not shorter than the run ({num_training_steps} steps): the learning rate "
            "never reaches its full value."
        )
    if key == "cosine_with_restarts" and (
        isinstance(num_cycles, bool) or not isinstance(num_cycles, int) or num_cycles < 1
    ):
        raise UserError(f"lr_scheduler_num_cycles must be a whole number of at least 1, not {num_cycles!r}.")
    if key == "polynomial" and not (isinstance(power, (int, float)) and math.isfinite(power) and power > 0):
        raise UserError(f"lr_scheduler_power must be a number above 0, not {power!r}.")
    if key == "cosine_with_min_lr":
        if min_lr_ratio is None:
            raise UserError("lr_scheduler cosine_with_min_lr needs lr_scheduler_min_lr_ratio (for example 0.1).")
        if not 0 <= min_lr_ratio <= 1:
            raise UserError(f"lr_scheduler_min_lr_ratio must be between 0 and 1, not {min_lr_ratio!r}.")
    if key == "inverse_sqrt" and timescale is not None and (not isinstance(timescale, int) or timescale < 1):
        raise UserError(f"lr_scheduler_timescale must be a whole number of at least 1, not {timescale!r}.")
    return ScheduleSpec(
        name=key,
        num_training_steps=num_training_steps,
        num_warmup_steps=warmup,
        num_cycles=int(num_cycles) if key == "cosine_with_restarts" else num_cycles,
        power=float(power),
        min_lr_ratio=min_lr_ratio,
        timescale=timescale,
        warnings=tuple(warnings),
    )


def _check_polynomial_lr(spec: ScheduleSpec, lr_init: float | None) -> float:
    if spec.name != "polynomial":
        return lr_init if lr_init is not None else 1.0
    if lr_init is None or not lr_init > POLYNOMIAL_LR_END:
        raise UserError(
            f"lr_scheduler polynomial decays to {POLYNOMIAL_LR_END}, so the learning rate must be above it (it is {lr_init})."
        )
    return lr_init


def build_scheduler(
    name: str | None,
    optimizer: torch.optim.Optimizer,
    *,
    num_training_steps: int,
    num_warmup_steps: int | float | str | None = 0,
    num_cycles: int = 1,
    power: float = 1.0,
    min_lr_ratio: float | None = None,
    timescale: int | None = None,
    initial_lr: float | None = None,
) -> LambdaLR:
    """A ``LambdaLR`` for the named schedule with sd-scripts' values at every step.

    Call ``scheduler.step()`` once after each optimizer step. ``adafactor`` (what
    ``OptimizerInfo.forced_scheduler`` asks for) needs the Adafactor optimizer and its
    ``scheduler_initial_lr`` as ``initial_lr``. State round-trips through ``state_dict`` /
    ``load_state_dict`` (see ``load_optimizer_state``).
    """
    spec = schedule_spec(
        name,
        num_training_steps=num_training_steps,
        num_warmup_steps=num_warmup_steps,
        num_cycles=num_cycles,
        power=power,
        min_lr_ratio=min_lr_ratio,
        timescale=timescale,
    )
    if spec.name == "adafactor":
        return _adafactor_schedule(optimizer, initial_lr)
    lr_init = _check_polynomial_lr(spec, optimizer.defaults.get("lr"))

    def lr_lambda(step: int) -> float:
        return spec.factor(step, lr_init)

    return LambdaLR(optimizer, lr_lambda)


def _adafactor_schedule(optimizer: torch.optim.Optimizer, initial_lr: float | None) -> LambdaLR:
    relative = all(g.get("relative_step", False) for g in optimizer.param_groups)
    try:
        import transformers.optimization as tfo
    except ImportError:
        tfo = None
    if tfo is not None and isinstance(optimizer, tfo.Adafactor):
        if not relative:
            raise UserError(
                "lr_scheduler adafactor works only with Adafactor's relative_step=True.",
                hint="With relative_step=False choose another schedule, such as constant_with_warmup.",
            )
        # the optimizer computes its own step size; this proxy reports it (sd-scripts uses the same class)
        return tfo.AdafactorSchedule(optimizer, initial_lr if initial_lr is not None else 0.0)
    torch_adafactor = getattr(torch.optim, "Adafactor", None)
    if torch_adafactor is not None and isinstance(optimizer, torch_adafactor):
        # torch's Adafactor uses the group lr as the cap of its relative step: leave it as it is
        return LambdaLR(optimizer, _constant_one)
    raise UserError("lr_scheduler adafactor works only with optimizer_type Adafactor.", hint="Choose another schedule.")


def _constant_one(step: int) -> float:
    return 1.0


def lr_at(
    name: str | None,
    step: int,
    base_lr: float,
    *,
    num_training_steps: int,
    **schedule: Any,
) -> float:
    """The lr a group with lr ``base_lr`` trains with at 0-based optimizer step ``step``.

    ``schedule``: ``num_warmup_steps``, ``num_cycles``, ``power``, ``min_lr_ratio``, ``timescale``
    as for ``schedule_spec``, and ``learning_rate``, the optimizer's default lr (only
    ``polynomial`` uses it; default ``base_lr``). The ``adafactor`` schedule depends on the
    optimizer's state and has no preview.
    """
    spec, lr_init = _preview_spec(name, base_lr, num_training_steps, **schedule)
    return base_lr * spec.factor(step, lr_init)


def lr_curve(
    name: str | None,
    base_lr: float,
    *,
    num_training_steps: int,
    **schedule: Any,
) -> list[float]:
    """``lr_at`` for every optimizer step of the run (``num_training_steps`` values), for a plot."""
    spec, lr_init = _preview_spec(name, base_lr, num_training_steps, **schedule)
    return [base_lr * spec.factor(step, lr_init) for step in range(num_training_steps)]


def _preview_spec(
    name: str | None,
    base_lr: float,
    num_training_steps: int,
    *,
    num_warmup_steps: int | float | str | None = 0,
    num_cycles: int = 1,
    power: float = 1.0,
    min_lr_ratio: float | None = None,
    timescale: int | None = None,
    learning_rate: float | None = None,
) -> tuple[ScheduleSpec, float]:
    spec = schedule_spec(
        name,
        num_training_steps=num_training_steps,
        num_warmup_steps=num_warmup_steps,
        num_cycles=num_cycles,
        power=power,
        min_lr_ratio=min_lr_ratio,
        timescale=timescale,
    )
    if spec.name == "adafactor":
        raise UserError("The adafactor schedule is computed by the optimizer while it trains; it has no preview.")
    return spec, _check_polynomial_lr(spec, base_lr if learning_rate is None else learning_rate)


# --------------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------------


def optimizer_state(info: OptimizerInfo, scheduler: Any) -> dict[str, Any]:
    """Everything a resumed run needs from the optimizer and the scheduler (tensors and plain data:
    the training state stores it as safetensors + JSON, no pickle)."""
    return {
        "optimizer_type": info.name,
        "optimizer": info.optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }


def load_optimizer_state(info: OptimizerInfo, scheduler: Any, state: Mapping[str, Any]) -> None:
    """Restore ``optimizer_state`` into a freshly built optimizer and scheduler (build both first,
    with the same settings, then load): the next step runs with the saved lr and moments."""
    saved_type = state.get("optimizer_type")
    if saved_type is not None and saved_type != info.name:
        raise UserError(
            f"The saved training state is for optimizer {saved_type}, but this run uses {info.name}.",
            hint=f"Resume with optimizer_type {saved_type}, or start a new run.",
        )
    try:
        info.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as exc:
        raise UserError(
            f"The saved optimizer state does not fit this run ({exc}).",
            hint="Resume with the same network settings (dim, modules, trained parts) as the saved run.",
        ) from None
    scheduler.load_state_dict(state["scheduler"])
    if info.schedule_free:
        info.optimizer.train()  # a state saved in eval mode (as saves are) continues in train mode
