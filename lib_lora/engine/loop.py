"""Epochs and steps: gradient accumulation, mixed precision, clipping, saves, stop and resume.

The loop knows nothing of files or hosts: batches come from ``hooks.make_batch``, saving goes
through ``hooks.save`` / ``hooks.save_state``, progress through :class:`~lib_lora.events.Events`.
Every random draw of a step (noise, timesteps, caption shuffles, flips, dropout) comes from a seed
derived from (seed, epoch, batch), so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from lib_lora.common.errors import UserError
from lib_lora.engine.bundle import ModelBundle
from lib_lora.engine.network import LoRANetwork
from lib_lora.engine.step import Batch, LossSettings, NonFiniteTextError, batch_loss
from lib_lora.events import Events, StepInfo, StopToken, nothing_new_since


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class Schedule:
    """How long the run is, counted as sd-scripts counts it."""

    batches_per_epoch: int
    accumulation: int
    total_steps: int  # optimizer steps
    num_epochs: int

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.accumulation)

    @staticmethod
    def plan(batches_per_epoch: int, accumulation: int, max_train_epochs: int | None, max_train_steps: int) -> Schedule:
        """``max_train_epochs`` wins (steps = epochs x optimizer steps per epoch); otherwise
        ``max_train_steps`` and as many epochs as it needs."""
        if batches_per_epoch < 1:
            raise UserError("The dataset gives no batches.")
        per_epoch = math.ceil(batches_per_epoch / accumulation)
        if max_train_epochs:
            total = max_train_epochs * per_epoch
        else:
            total = max_train_steps
        return Schedule(batches_per_epoch, accumulation, total, math.ceil(total / per_epoch))


@dataclass
class Position:
    """Where a run is: ``epoch`` (0-based, the one in progress), batches done in it, optimizer steps done."""

    epoch: int = 0
    batch: int = 0
    step: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class LoopHooks:
    epoch_batches: Callable[[int], list]  # epoch index (0-based) -> that epoch's batches of samples
    make_batch: Callable[[int, list, random.Random], Batch]  # (epoch 1-based, samples, rng) -> Batch
    save: Callable[[str, int, int, float | None], None]  # (kind epoch|step|final|stopped, epoch, step, loss)
    save_state: Callable[[Position], None]
    after_epoch: Callable[[int, int], None] | None = None  # (epoch 1-based, step): samples
    log_step: Callable[[dict[str, Any]], None] | None = None
    # (epoch 1-based, step) -> validation loss of the current weights (the LoRA in eval mode), or None
    validate: Callable[[int, int], float | None] | None = None
    # data-parallel runs (engine/distributed.py): the batch's place in the single-process order (seeds
    # its random draws), and the all-reduce of the gradients and the loss before each optimizer step
    batch_index: Callable[[int], int] | None = None
    sync_step: Callable[[list[torch.Tensor], float], float] | None = None


@dataclass
class LoopSettings:
    seed: int
    mixed_precision: str = "no"  # no | fp16 | bf16
    max_grad_norm: float = 1.0
    save_every_n_epochs: int | None = None
    save_every_n_steps: int | None = None
    train_unet: bool = True
    train_text_encoder: bool = True
    gradient_checkpointing: bool = False
    loss_window: int = 0  # steps in the moving-average loss; 0 = one epoch
    validate_every_n_epochs: int | None = None  # sd-scripts: None = every epoch (when there is a held-out set)
    validate_every_n_steps: int | None = None


@dataclass
class LoopResult:
    status: str  # "done" | "stopped"
    position: Position
    last_loss: float | None
    losses: list[float] = field(default_factory=list)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across runs and platforms."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def autocast_context(device: torch.device, mixed_precision: str) -> contextlib.AbstractContextManager:
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.float16 if mixed_precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _grad_scaler(device: torch.device, mixed_precision: str):
    if mixed_precision != "fp16" or device.type != "cuda":
        return None
    try:
        return torch.amp.GradScaler("cuda")
    except (AttributeError, TypeError):  # torch < 2.3
        return torch.cuda.amp.GradScaler()


def _kept(saved: bool) -> str:
    return "The last saved epoch is intact." if saved else "Nothing had been saved yet."


def _divergence_message(step: int, mixed_precision: str, bundle: ModelBundle, saved: bool = True) -> str:
    causes = []
    if mixed_precision == "fp16":
        causes.append("fp16 overflow (try mixed_precision bf16, or no on GPUs without bf16 such as GTX 16xx)")
    causes.append("a learning rate that is too high")
    if bundle.family == "sdxl":
        causes.append("NaN from SDXL's fp16 VAE (use a fixed fp16 VAE or train with the VAE in fp32)")
    return f"Training stopped at step {step}: the loss became NaN or infinite. Likely cause: {'; or '.join(causes)}. {_kept(saved)}"


def _text_divergence_message(step: int, captions: list[str], saved: bool = True) -> str:
    shown = "; ".join(repr(c[:80]) for c in captions[:2])
    return (
        f"Training stopped at step {step}: the text encoder's output for the caption {shown} is NaN or infinite, "
        "so the loss would be too. This comes from the model's text encoder, not from the learning rate: "
        f"the checkpoint's text encoder may be broken. {_kept(saved)}"
    )


def _base_text_is_finite(bundle: ModelBundle, network: LoRANetwork, batch: Batch, autocast) -> bool:
    """Whether the model's own text encoder (every LoRA switched off) gives ``batch`` finite
    conditioning: if so, a NaN with the LoRA on is the training's doing (a learning rate too high
    can blow up the text-encoder LoRA while its weights stay finite), not the checkpoint's."""
    if batch.text is not None:  # cached outputs: encoded without any trained LoRA
        return False
    enabled = [module.enabled for module in network.loras]
    network.disable()
    try:
        with torch.no_grad(), autocast:
            text = bundle.encode_text(batch.captions)
    finally:
        for module, on in zip(network.loras, enabled):
            module.enabled = on
    return all(bool(torch.isfinite(t).all()) for t in (text.context, text.pooled) if t is not None)


def run_loop(
    bundle: ModelBundle,
    network: LoRANetwork,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loss_settings: LossSettings,
    schedule: Schedule,
    settings: LoopSettings,
    hooks: LoopHooks,
    events: Events,
    stop: StopToken,
    start: Position | None = None,
    start_file: str | None = None,
) -> LoopResult:
    """Train from ``start`` (a fresh run: Position()) to the end of the schedule or a stop.
    ``start_file``: the name of the saved file that already holds the weights at ``start`` (a resumed
    run's last file); a stop before any new step writes no second copy of it."""
    position = Position(**(start or Position()).as_dict())
    device = bundle.device
    scaler = _grad_scaler(device, settings.mixed_precision)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    window = settings.loss_window or schedule.steps_per_epoch
    recent: deque[float] = deque(maxlen=max(1, window))
    step_times: deque[float] = deque(maxlen=20)
    losses: list[float] = []
    last_loss: float | None = None
    saved_at = -1  # the step of the latest epoch/step file: a stop there needs no second file
    resumed_at = position.step  # a resumed run saved its earlier files in the session before

    def saved_before() -> bool:
        return saved_at >= 0 or resumed_at > 0

    def validate(kind: str, epoch: int) -> None:
        if not hooks.validate:
            return
        was_training = network.training
        network.eval()
        try:
            value = hooks.validate(epoch, position.step)
        finally:
            network.train(was_training)
        if value is None:
            return
        events.validation(epoch, position.step, value)
        if hooks.log_step:
            hooks.log_step({"epoch": epoch, "step": position.step, "val_loss": value, "validation": kind})

    def report(step_seconds: float, loss_value: float) -> None:
        step_times.append(step_seconds)
        per_step = sum(step_times) / len(step_times)
        lrs = {group.get("name", str(i)): float(group["lr"]) for i, group in enumerate(optimizer.param_groups)}
        info = StepInfo(
            epoch=position.epoch + 1, step=position.step, total_steps=schedule.total_steps, loss=loss_value,
            avg_loss=sum(recent) / len(recent), lrs=lrs, seconds=step_seconds,
            steps_per_second=1.0 / per_step if per_step > 0 else 0.0,
            eta_seconds=per_step * (schedule.total_steps - position.step),
        )  # fmt: skip
        events.step(info)
        if hooks.log_step:
            hooks.log_step(
                {
                    "epoch": info.epoch,
                    "step": info.step,
                    "loss": loss_value,
                    "avg_loss": info.avg_loss,
                    "lr": lrs,
                    "seconds": round(step_seconds, 4),
                }
            )

    with bundle.training(
        train_unet=settings.train_unet,
        train_text_encoder=settings.train_text_encoder,
        gradient_checkpointing=settings.gradient_checkpointing,
    ):
        network.train()
        optimizer.zero_grad(set_to_none=True)
        while position.step < schedule.total_steps and position.epoch < schedule.num_epochs:
            batches = hooks.epoch_batches(position.epoch)
            micro = 0
            accumulated = 0.0
            step_started = time.perf_counter()
            while position.batch < len(batches) and position.step < schedule.total_steps:
                if stop.requested:
                    if start_file and not losses:
                        return _stopped_unchanged(position, hooks, events, stop, start_file)
                    return _stopped(position, hooks, last_loss, losses, events, stop, saved_at)
                index = hooks.batch_index(position.batch) if hooks.batch_index else position.batch
                batch_seed = derive_seed(settings.seed, position.epoch, index)
                rng = random.Random(batch_seed)
                torch.manual_seed(batch_seed)  # LoRA dropouts draw from the global generator
                generator = torch.Generator(device=device).manual_seed(batch_seed)
                batch = hooks.make_batch(position.epoch + 1, batches[position.batch], rng)
                try:
                    loss = batch_loss(
                        bundle, batch, loss_settings, generator, autocast_context(device, settings.mixed_precision)
                    )
                except NonFiniteTextError as exc:
                    sane = all(bool(torch.isfinite(p).all()) for p in params)
                    if sane and not _base_text_is_finite(
                        bundle, network, batch, autocast_context(device, settings.mixed_precision)
                    ):  # the LoRA is finite and the model alone gives NaN: the model's doing
                        raise TrainingDiverged(
                            _text_divergence_message(position.step + 1, exc.captions, saved_before())
                        ) from None
                    raise TrainingDiverged(
                        _divergence_message(position.step + 1, settings.mixed_precision, bundle, saved_before())
                    ) from None
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        _divergence_message(position.step + 1, settings.mixed_precision, bundle, saved_before())
                    )
                scaled = loss / schedule.accumulation
                (scaler.scale(scaled) if scaler else scaled).backward()
                accumulated += float(loss.detach()) / schedule.accumulation
                micro += 1
                position.batch += 1
                boundary = micro == schedule.accumulation or position.batch == len(batches)
                if not boundary:
                    continue
                if micro < schedule.accumulation:  # a short last group at the end of the epoch
                    accumulated *= schedule.accumulation / micro
                if hooks.sync_step:
                    accumulated = hooks.sync_step(params, accumulated)
                if scaler:
                    scaler.unscale_(optimizer)
                if settings.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                if scaler:
                    scale_before = scaler.get_scale()
                    scaler.step(optimizer)
                    scaler.update()
                    skipped = scaler.get_scale() < scale_before  # inf/NaN grads: no optimizer step
                else:
                    optimizer.step()
                    skipped = False
                if not skipped:  # as accelerate (and so sd-scripts): the schedule follows real steps
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                position.step += 1
                last_loss = accumulated
                losses.append(accumulated)
                recent.append(accumulated)
                report(time.perf_counter() - step_started, accumulated)
                micro, accumulated = 0, 0.0
                if (
                    settings.save_every_n_steps
                    and position.step % settings.save_every_n_steps == 0
                    and position.step < schedule.total_steps
                ):
                    hooks.save("step", position.epoch + 1, position.step, _avg(recent))
                    saved_at = position.step
                if settings.validate_every_n_steps and position.step % settings.validate_every_n_steps == 0:
                    validate("step", position.epoch + 1)
                step_started = time.perf_counter()
            if position.batch < len(batches):  # total steps reached inside the epoch
                break
            finished_epoch = position.epoch + 1
            position.epoch += 1
            position.batch = 0
            is_last = position.step >= schedule.total_steps or position.epoch >= schedule.num_epochs
            if finished_epoch % (settings.validate_every_n_epochs or 1) == 0:  # before the save, as sd-scripts
                validate("epoch", finished_epoch)
            if settings.save_every_n_epochs and finished_epoch % settings.save_every_n_epochs == 0 and not is_last:
                hooks.save("epoch", finished_epoch, position.step, _avg(recent))
                saved_at = position.step
            if not is_last:  # a state at every epoch end: a kill loses at most the epoch in progress
                hooks.save_state(position)
            if hooks.after_epoch:
                hooks.after_epoch(finished_epoch, position.step)
        hooks.save("final", position.epoch if position.batch == 0 else position.epoch + 1, position.step, _avg(recent))
    return LoopResult("done", position, last_loss, losses)


def _avg(values: deque[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _stopped(
    position: Position,
    hooks: LoopHooks,
    last_loss: float | None,
    losses: list[float],
    events: Events,
    stop: StopToken,
    saved_at: int = -1,
) -> LoopResult:
    events.info(
        f"Stopping ({stop.reason or 'stop requested'}) after step {position.step}: saving the LoRA so far and the training state."
    )
    # a stop right after an epoch (or step) file was written: that file is the LoRA so far, a
    # name-stepN file would only repeat it; the state is still written to resume from
    if position.step > 0 and saved_at != position.step:
        # stopped before the first batch of an epoch: the file holds the epoch just finished, as "final" says
        epoch = position.epoch if position.batch == 0 and position.epoch > 0 else position.epoch + 1
        hooks.save("stopped", epoch, position.step, last_loss)
    hooks.save_state(position)
    return LoopResult("stopped", position, last_loss, losses)


def _stopped_unchanged(
    position: Position, hooks: LoopHooks, events: Events, stop: StopToken, start_file: str
) -> LoopResult:
    """Stopped before the first step of a resumed run: the weights are those of ``start_file``."""
    events.info(
        f"Stopped ({stop.reason or 'stop requested'}) at step {position.step} before any new step: "
        + nothing_new_since(start_file)
    )
    hooks.save_state(position)
    return LoopResult("stopped", position, None, [])
