"""Data-parallel training on PyTorch's own ``torch.distributed``: one process per device.

Launched by ``torchrun`` or ``accelerate launch``, which set ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`from_env` reads them and
:meth:`DataParallel.start` joins the process group (NCCL on GPUs, gloo on the CPU).

What a run on N processes does, and why:

- **Batches.** Every rank builds the epoch's batches exactly as one process would (same seed,
  same buckets, batch = ``train_batch_size``) and takes its share as accelerate's
  ``BatchSamplerShard`` does (``even_batches``): rank r gets batches r, r+N, r+2N, ...; when the
  count is not a multiple of N the last round is filled from the start of the epoch, so every
  rank runs ``ceil(B / N)`` batches. Each batch's random draws are seeded by its place in that
  single-process order, so two ranks never share noise or timesteps.
- **Gradients.** The LoRA parameters live inside the host's modules (the LoRA patches their
  forward), and the loop calls the host's UNet through the bundle, not through one module of ours,
  so ``DistributedDataParallel`` (which must own the module that is called, and hooks its forward)
  does not fit. Instead the trainable parameters' gradients are all-reduced once per optimizer
  step, after the last micro-batch of the accumulation and before clipping, flattened into one
  buffer and averaged over the ranks: what DDP computes (with ``no_sync`` during accumulation),
  in one collective per step. The loss and the stop flag ride in the same buffer.
- **Schedule.** As sd-scripts under accelerate: steps per epoch = ``ceil(B / N / accumulation)``,
  the LR scheduler is built for ``max_train_steps x N`` steps and stepped N times per optimizer
  step (accelerate's ``AcceleratedScheduler``), so an integer ``lr_warmup_steps`` lasts
  ``lr_warmup_steps / N`` optimizer steps, exactly as there.
- **Stop.** A stop asked on any rank (Ctrl-C) is seen by all at the same step boundary.
- **Failure.** A rank that dies breaks the collectives of the others; torchrun ends them all.
  :func:`is_peer_failure` recognises that error so a surviving rank says one sentence.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from lib_lora.events import StopToken

DEFAULT_TIMEOUT = timedelta(minutes=30)  # accelerate's default for the process group


@dataclass(frozen=True)
class LaunchEnv:
    """What the launcher told this process."""

    rank: int
    world_size: int
    local_rank: int


def from_env(environ: dict[str, str] | None = None) -> LaunchEnv | None:
    """The launch environment when this process is one of several (``WORLD_SIZE`` > 1), else None."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    if world <= 1:
        return None
    rank = int(env.get("RANK", "0"))
    local = int(env.get("LOCAL_RANK", str(rank)))
    return LaunchEnv(rank, world, local)


def shard(batches: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Rank ``rank``'s batches of one epoch, as accelerate's even-batches sharding gives them."""
    if world_size <= 1 or not batches:
        return list(batches)
    per_rank = math.ceil(len(batches) / world_size)
    return [batches[(k * world_size + rank) % len(batches)] for k in range(per_rank)]


def global_index(local_index: int, rank: int, world_size: int) -> int:
    """The place of a rank's ``local_index``-th batch in the single-process order."""
    return local_index * world_size + rank


def device_for(env: LaunchEnv, requested: str | None) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when CUDA is used, else the CPU."""
    wants_cuda = requested is None and torch.cuda.is_available() or (requested or "").startswith("cuda")
    if wants_cuda:
        return torch.device("cuda", env.local_rank)
    return torch.device(requested or "cpu")


class SteppedScheduler:
    """An LR scheduler stepped ``times`` times per call, as accelerate steps it on N processes."""

    def __init__(self, scheduler: Any, times: int) -> None:
        self.scheduler = scheduler
        self.times = times

    def step(self) -> None:
        for _ in range(self.times):
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)

    def get_last_lr(self) -> list[float]:
        return self.scheduler.get_last_lr()


class DataParallel:
    """This process's part in a data-parallel run (see the module docstring)."""

    def __init__(self, env: LaunchEnv, device: torch.device) -> None:
        self.rank = env.rank
        self.world_size = env.world_size
        self.local_rank = env.local_rank
        self.device = device
        # the loop's own token: flipped only at a step boundary, on every rank at once
        self.loop_stop = StopToken()
        self._stop: StopToken | None = None

    @classmethod
    def start(cls, env: LaunchEnv, device: torch.device, timeout: timedelta = DEFAULT_TIMEOUT) -> DataParallel:
        """Join the process group (``env://``: the launcher's address, port, rank and size)."""
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, rank=env.rank, world_size=env.world_size, timeout=timeout)
        return cls(env, device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    # -- the loop's hooks -------------------------------------------------------------------------

    def watch(self, stop: StopToken) -> StopToken:
        """The token the loop should check: it follows ``stop`` of any rank, at step boundaries."""
        self._stop = stop
        return self.loop_stop

    def batch_index(self, local_index: int) -> int:
        return global_index(local_index, self.rank, self.world_size)

    def epoch_shard(self, batches: Sequence[Any]) -> list[Any]:
        return shard(batches, self.rank, self.world_size)

    def sync_step(self, params: Sequence[torch.Tensor], loss: float) -> float:
        """Average the gradients of ``params`` and the loss over the ranks (one all-reduce); share a
        stop request. Returns the mean loss."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        dtype = grads[0].dtype if grads else torch.float32
        extra = torch.tensor(
            [loss, 1.0 if self._stop is not None and self._stop.requested else 0.0], dtype=dtype, device=self.device
        )
        flat = torch.cat([g.reshape(-1).to(self.device, dtype) for g in grads] + [extra])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(g).to(g.dtype)
            offset += n
        mean_loss, stop_votes = (float(v) for v in flat[offset:])
        if stop_votes > 0 and not self.loop_stop.requested:
            reason = self._stop.reason if self._stop is not None and self._stop.requested else None
            self.loop_stop.request(reason or "stop requested on another process")
        return mean_loss

    # -- sharing from rank 0 ----------------------------------------------------------------------

    def broadcast_parameters(self, params: Sequence[torch.Tensor]) -> None:
        """Every rank starts from rank 0's values (as DDP does when it wraps a module)."""
        if not params:
            return
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).to(self.device, torch.float32) for p in params])
            dist.broadcast(flat, src=0)
            offset = 0
            for p in params:
                n = p.numel()
                p.copy_(flat[offset : offset + n].view_as(p))
                offset += n

    def broadcast_tensors(self, tensors: Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
        """Rank 0's float tensors (any shapes) on every rank, on the CPU as float32; other ranks pass None."""
        if self.is_main:
            assert tensors is not None
            shapes = [tuple(t.shape) for t in tensors]
            width = max((len(s) for s in shapes), default=0)
            header = torch.tensor([len(shapes), width], dtype=torch.int64, device=self.device)
        else:
            header = torch.zeros(2, dtype=torch.int64, device=self.device)
        dist.broadcast(header, src=0)
        count, width = (int(v) for v in header)
        if count == 0:
            return []
        table = torch.zeros(count, width + 1, dtype=torch.int64, device=self.device)
        if self.is_main:
            for row, shape in enumerate(shapes):
                table[row, 0] = len(shape)
                table[row, 1 : 1 + len(shape)] = torch.tensor(shape, dtype=torch.int64)
        dist.broadcast(table, src=0)
        shapes = [tuple(int(v) for v in row[1 : 1 + int(row[0])]) for row in table.cpu()]
        total = sum(math.prod(s) for s in shapes)
        if self.is_main:
            flat = torch.cat([t.reshape(-1).to(self.device, torch.float32) for t in tensors])
        else:
            flat = torch.empty(total, dtype=torch.float32, device=self.device)
        dist.broadcast(flat, src=0)
        flat = flat.cpu()
        out, offset = [], 0
        for shape in shapes:
            n = math.prod(shape)
            out.append(flat[offset : offset + n].view(shape).clone())
            offset += n
        return out


class LauncherStopped(Exception):
    """torchrun ended this process (SIGTERM): another process of the run failed, or torchrun was stopped."""


def stop_on_sigterm() -> None:
    """Turn torchrun's SIGTERM (sent to the survivors when one process fails) into
    :class:`LauncherStopped`, so the process unwinds (restoring the model) and says why."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise LauncherStopped("stopped by the launcher")

    signal.signal(signal.SIGTERM, handler)


def ignore_sigterm() -> None:
    """After the failure is reported: a further SIGTERM from torchrun ends nothing half-done."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def is_peer_failure(exc: BaseException) -> bool:
    """True for the error a collective raises when another rank died or the group timed out, or
    for torchrun's SIGTERM to the survivors."""
    if any(isinstance(e, LauncherStopped) for e in _chain(exc)):
        return True
    names = {type(e).__name__ for e in _chain(exc)}
    if names & {"DistBackendError", "DistNetworkError", "DistError"}:
        return True
    text = " ".join(str(e) for e in _chain(exc)).lower()
    return any(
        word in text
        for word in ("connection closed by peer", "connection reset", "broken pipe", "timed out", "nccl", "gloo")
    )


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen
