"""Long jobs (training, tagging, importing) run one at a time, observable while they run.

The UI's handlers, the webui's HTTP API and the standalone app all go through a
:class:`JobManager`: a job gets an id, a status that can be polled (state, epoch, step, loss, loss
history, saved files, messages, error) and a stop token. The host supplies ``run_wrapper`` to hold
its own lock (the webui's queue lock and ``shared.state``) around every job.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib_lora.common.errors import UserError
from lib_lora.events import Events, RunHistory, SampleImage, SavedFile, StepInfo, StopRequested, StopToken

JobFn = Callable[[Events, StopToken], Any]
STATES = ("queued", "running", "done", "stopped", "failed")


@dataclass
class JobStatus:
    id: str
    kind: str
    title: str
    state: str = "queued"
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    avg_loss: float | None = None
    steps_per_second: float = 0.0
    eta_seconds: float | None = None
    stage: str = ""
    done: int = 0
    total: int = 0
    stage_text: str = ""  # the stage's own words for its progress (e.g. "12/30 images, about 40 s left")
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) for the chart
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss) for the chart
    files: list[dict[str, Any]] = field(default_factory=list)  # saved LoRA files
    # a resumed run: what it did before this session (files, losses), and the file it continues from
    earlier_files: list[dict[str, Any]] = field(default_factory=list)
    earlier_losses: list[tuple[int, float]] = field(default_factory=list)
    earlier_val_losses: list[tuple[int, float]] = field(default_factory=list)
    resumed_from: str | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)  # (level, text)
    error: str | None = None
    result: Any = None
    started: float | None = None
    finished: float | None = None

    def public(self) -> dict[str, Any]:
        """The JSON the HTTP API returns."""
        return {
            "id": self.id, "kind": self.kind, "state": self.state, "epoch": self.epoch, "step": self.step,
            "total_steps": self.total_steps, "loss": self.avg_loss if self.avg_loss is not None else self.loss,
            "files": [f["path"] for f in self.files], "error": self.error, "stage": self.stage, "done": self.done,
            "total": self.total, "messages": [text for _, text in self.messages[-20:]],
        }  # fmt: skip


class StatusEvents(Events):
    """Writes every callback into a JobStatus (and forwards to ``inner``, e.g. the host's progress)."""

    MAX_LOSSES = 20000

    def __init__(self, status: JobStatus, inner: Events | None = None) -> None:
        self.status = status
        self.inner = inner
        self._lock = threading.Lock()

    def message(self, level: str, text: str) -> None:
        with self._lock:
            self.status.messages.append((level, text))
            del self.status.messages[:-500]
        if self.inner:
            self.inner.message(level, text)

    def progress(self, stage: str, done: int, total: int, text: str = "") -> None:
        s = self.status
        s.stage, s.done, s.total, s.stage_text = stage, done, total, text
        if self.inner:
            self.inner.progress(stage, done, total, text)

    def step(self, info: StepInfo) -> None:
        s = self.status
        with self._lock:
            s.epoch, s.step, s.total_steps = info.epoch, info.step, info.total_steps
            s.loss, s.avg_loss = info.loss, info.avg_loss
            s.steps_per_second, s.eta_seconds = info.steps_per_second, info.eta_seconds
            s.stage = "training"
            s.losses.append((info.step, info.loss))
            if len(s.losses) > self.MAX_LOSSES:
                s.losses = s.losses[::2]
        if self.inner:
            self.inner.step(info)

    def validation(self, epoch: int, step: int, loss: float) -> None:
        with self._lock:
            self.status.val_losses.append((step, loss))
            self.status.messages.append(("info", f"validation loss {loss:.4f} (epoch {epoch}, step {step})"))
        if self.inner:
            self.inner.validation(epoch, step, loss)

    def saved(self, info: SavedFile) -> None:
        with self._lock:
            self.status.files.append(_file_row(info))
        if self.inner:
            self.inner.saved(info)

    def resumed(self, history: RunHistory) -> None:
        s = self.status
        with self._lock:
            s.epoch, s.step = history.epoch + 1, history.step  # as a step reports it: the epoch in progress
            s.total_steps = history.total_steps or s.total_steps
            s.earlier_files = [_file_row(f) for f in history.files]
            s.earlier_losses = list(history.losses)
            while len(s.earlier_losses) > self.MAX_LOSSES:
                s.earlier_losses = s.earlier_losses[::2]
            s.earlier_val_losses = list(history.val_losses)
            s.resumed_from = str(history.resumed_from) if history.resumed_from else None
        if self.inner:
            self.inner.resumed(history)

    def sample(self, info: SampleImage) -> None:
        with self._lock:
            self.status.samples.append(
                {"path": str(info.path), "epoch": info.epoch, "step": info.step, "prompt": info.prompt}
            )
        if self.inner:
            self.inner.sample(info)


def _file_row(info: SavedFile) -> dict[str, Any]:
    return {"path": str(info.path), "epoch": info.epoch, "step": info.step, "loss": info.loss, "kind": info.kind}


@contextlib.contextmanager
def _no_wrapper(status: JobStatus, stop: StopToken) -> Iterator[None]:
    yield


class JobManager:
    """One job at a time; others wait in order. Thread-safe."""

    def __init__(
        self,
        run_wrapper: Callable[[JobStatus, StopToken], contextlib.AbstractContextManager] | None = None,
        keep: int = 50,
    ) -> None:
        self._wrapper = run_wrapper or _no_wrapper
        self._jobs: dict[str, JobStatus] = {}
        self._tokens: dict[str, StopToken] = {}
        self._order: list[str] = []
        self._run_lock = threading.Lock()
        self._lock = threading.Lock()
        self._keep = keep

    def _new(self, kind: str, title: str) -> tuple[JobStatus, StopToken]:
        job = JobStatus(uuid.uuid4().hex[:12], kind, title)
        token = StopToken()
        with self._lock:
            self._jobs[job.id] = job
            self._tokens[job.id] = token
            self._order.append(job.id)
            for old in self._order[: -self._keep]:
                if self._jobs[old].state not in ("queued", "running"):
                    self._jobs.pop(old, None)
                    self._tokens.pop(old, None)
            self._order = [j for j in self._order if j in self._jobs]
        return job, token

    def run(
        self,
        kind: str,
        title: str,
        fn: JobFn,
        inner: Events | None = None,
        job: tuple[JobStatus, StopToken] | None = None,
    ) -> JobStatus:
        """Run ``fn`` now in this thread (waiting for any running job first); returns its final status."""
        status, token = job or self._new(kind, title)
        events = StatusEvents(status, inner)
        with self._run_lock:
            if token.requested:
                status.state = "stopped"
                status.finished = time.time()
                return status
            status.state, status.started = "running", time.time()
            try:
                with self._wrapper(status, token):
                    status.result = fn(events, token)
                status.state = (
                    "stopped" if token.requested or getattr(status.result, "status", "") == "stopped" else "done"
                )
            except StopRequested:  # stopped before the job had anything to keep (e.g. while reading a folder)
                status.state = "stopped"
                events.message("info", "Stopped before it started; nothing was written.")
            except UserError as exc:
                status.state, status.error = "failed", str(exc)
                events.message("error", str(exc))
            except Exception as exc:  # reported in the status; the host keeps running
                status.state, status.error = "failed", f"{type(exc).__name__}: {exc}"
                events.message("error", status.error)
                status.messages.append(("debug", traceback.format_exc()))
            finally:
                status.finished = time.time()
        return status

    def submit(self, kind: str, title: str, fn: JobFn, inner: Events | None = None) -> JobStatus:
        """Queue ``fn`` on a background thread; returns its status at once (state ``queued``)."""
        pair = self._new(kind, title)
        thread = threading.Thread(
            target=self.run, args=(kind, title, fn, inner, pair), name=f"lib_lora-{kind}-{pair[0].id}", daemon=True
        )
        thread.start()
        return pair[0]

    def get(self, job_id: str) -> JobStatus:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def stop(self, job_id: str | None = None, reason: str = "stopped by the user") -> bool:
        """Ask a job (default: the running one) to stop; True when there was one to stop."""
        with self._lock:
            ids = [job_id] if job_id else [j for j in self._order if self._jobs[j].state in ("running", "queued")]
            tokens = [self._tokens[j] for j in ids if j in self._tokens]
        for token in tokens:
            token.request(reason)
        return bool(tokens)

    def current(self, kind: str | None = None) -> JobStatus | None:
        """The running job (else the newest one) of ``kind``."""
        with self._lock:
            jobs = [self._jobs[j] for j in self._order if kind is None or self._jobs[j].kind == kind]
        running = [j for j in jobs if j.state == "running"]
        return running[-1] if running else (jobs[-1] if jobs else None)

    def busy(self) -> bool:
        return self._run_lock.locked()


def saved_paths(status: JobStatus) -> list[Path]:
    return [Path(f["path"]) for f in status.files]
