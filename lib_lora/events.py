"""How jobs talk to their front end: callbacks out, a stop token in.

The engine never renders anything. The CLI maps these callbacks to tqdm and log lines, the webui
host to ``shared.state`` and its progress bar, the standalone app to Gradio's progress.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class StopRequested(Exception):
    """Raised inside a job when its StopToken fired; jobs catch it, save what they have and return."""


class StopToken:
    """Set by the front end (Stop button, Ctrl-C, HTTP call); polled by jobs between units of work.

    ``poll`` lets a host plug in its own flag (the webui's ``state.interrupted``).
    """

    def __init__(self, poll: Callable[[], bool] | None = None) -> None:
        self._event = threading.Event()
        self._poll = poll
        self.reason = ""

    def request(self, reason: str = "stopped by the user") -> None:
        self.reason = reason
        self._event.set()

    @property
    def requested(self) -> bool:
        if self._event.is_set():
            return True
        if self._poll is not None and self._poll():
            self.reason = self.reason or "interrupted"
            return True
        return False

    def raise_if_requested(self) -> None:
        if self.requested:
            raise StopRequested(self.reason)


@dataclass
class StepInfo:
    """One optimizer step of training."""

    epoch: int
    step: int  # global optimizer step, 1-based
    total_steps: int
    loss: float  # this step's loss
    avg_loss: float  # moving average over recent steps
    lrs: dict[str, float]
    seconds: float  # wall time of this step
    steps_per_second: float
    eta_seconds: float


@dataclass
class SavedFile:
    path: Path
    epoch: int
    step: int
    loss: float | None
    kind: str  # "epoch" | "step" | "final" | "stopped"


@dataclass
class RunHistory:
    """What a resumed run did before it stopped, up to the step it continues from: its files (with
    the loss each was saved with, where the log has it), its logged losses and validation losses, and
    the file that holds the weights it continues from (None when no file does, e.g. after a kill)."""

    epoch: int  # epochs finished
    step: int
    total_steps: int
    files: list[SavedFile] = field(default_factory=list)
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    resumed_from: Path | None = None


def nothing_new_since(file_name: str) -> str:
    """The end of the line for a resumed run stopped before its first new step (engine, jobs and tab)."""
    return f"nothing new was learned since {file_name}, which this run resumed from, so no new file was written."


@dataclass
class SampleImage:
    path: Path
    epoch: int
    step: int
    prompt: str


@dataclass
class Message:
    level: str  # "info" | "warning" | "error"
    text: str
    data: dict[str, Any] = field(default_factory=dict)


class Events:
    """Base class with no-op callbacks; front ends override what they show."""

    def message(self, level: str, text: str) -> None:
        """A line for the user: ``info``, ``warning`` (shown prominently) or ``error``."""

    def progress(self, stage: str, done: int, total: int, text: str = "") -> None:
        """Generic progress of a stage ("tagging", "caching latents", "downloading", ...)."""

    def step(self, info: StepInfo) -> None:
        """A training step finished."""

    def saved(self, info: SavedFile) -> None:
        """A LoRA file was written (it exists and is complete when this is called)."""

    def sample(self, info: SampleImage) -> None:
        """A sample image was written."""

    def validation(self, epoch: int, step: int, loss: float) -> None:
        """The validation loss (held-out images, fixed noise and timesteps) after ``step``."""

    def resumed(self, history: RunHistory) -> None:
        """A stopped run continues: what it did before (before its first new step)."""

    def info(self, text: str) -> None:
        self.message("info", text)

    def warning(self, text: str) -> None:
        self.message("warning", text)


class RecordingEvents(Events):
    """Keeps every callback in lists (tests, HTTP job status)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.steps: list[StepInfo] = []
        self.saved_files: list[SavedFile] = []
        self.samples: list[SampleImage] = []
        self.validations: list[tuple[int, int, float]] = []  # (epoch, step, loss)
        self.histories: list[RunHistory] = []
        self.last_progress: tuple[str, int, int, str] | None = None

    def message(self, level: str, text: str) -> None:
        self.messages.append(Message(level, text))

    def progress(self, stage: str, done: int, total: int, text: str = "") -> None:
        self.last_progress = (stage, done, total, text)

    def step(self, info: StepInfo) -> None:
        self.steps.append(info)

    def saved(self, info: SavedFile) -> None:
        self.saved_files.append(info)

    def sample(self, info: SampleImage) -> None:
        self.samples.append(info)

    def validation(self, epoch: int, step: int, loss: float) -> None:
        self.validations.append((epoch, step, loss))

    def resumed(self, history: RunHistory) -> None:
        self.histories.append(history)

    def texts(self, level: str | None = None) -> list[str]:
        return [m.text for m in self.messages if level is None or m.level == level]


class MultiEvents(Events):
    """Fan out every callback to several listeners."""

    def __init__(self, *listeners: Events) -> None:
        self.listeners = list(listeners)

    def message(self, level: str, text: str) -> None:
        for listener in self.listeners:
            listener.message(level, text)

    def progress(self, stage: str, done: int, total: int, text: str = "") -> None:
        for listener in self.listeners:
            listener.progress(stage, done, total, text)

    def step(self, info: StepInfo) -> None:
        for listener in self.listeners:
            listener.step(info)

    def saved(self, info: SavedFile) -> None:
        for listener in self.listeners:
            listener.saved(info)

    def sample(self, info: SampleImage) -> None:
        for listener in self.listeners:
            listener.sample(info)

    def validation(self, epoch: int, step: int, loss: float) -> None:
        for listener in self.listeners:
            listener.validation(epoch, step, loss)

    def resumed(self, history: RunHistory) -> None:
        for listener in self.listeners:
            listener.resumed(history)
