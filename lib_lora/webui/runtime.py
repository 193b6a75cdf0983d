"""The webui's queue lock and ``shared.state`` around our jobs, and the progress bar text.

Lock order is always the webui's ``queue_lock`` first, then the JobManager's own lock: a job
started from a handler wrapped by ``call_queue.wrap_gradio_gpu_call`` (which already holds the
queue lock and called ``state.begin``) runs as it is; a job started anywhere else (the HTTP API, a
background thread) takes the queue lock and begins/ends ``shared.state`` itself. txt2img and
img2img (UI and API) wait while either holds the lock.
"""

from __future__ import annotations

import contextlib
import functools
import html
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from lib_lora.events import Events, SampleImage, StepInfo, StopToken
from lib_lora.jobs.manager import JobManager, JobStatus

_local = threading.local()

# txt2img components captured by ``on_after_component`` (elem_id -> component); read them with
# :func:`txt2img_component`
TXT2IMG_ELEM_IDS = (
    "txt2img_prompt", "txt2img_neg_prompt", "txt2img_sampling", "txt2img_scheduler", "txt2img_steps",
    "txt2img_cfg_scale", "txt2img_width", "txt2img_height", "txt2img_seed",
)  # fmt: skip
txt2img_components: dict[str, Any] = {}
# a newer component with the id of a script-built one in txt2img_components, kept aside until it is
# known to be in the page too (see capture_txt2img_component)
txt2img_newer: dict[str, Any] = {}


def _built_by_script_runner(component: Any) -> bool:
    """True for a control a script made for the page: the script runner marks the controls its
    scripts' ``ui()`` returned with ``custom_script_source``, the key under which the webui saves and
    restores their values in ui-config.json."""
    return getattr(component, "custom_script_source", None) is not None


def capture_txt2img_component(elem_id: str, component: Any) -> None:
    """Remember a txt2img component (``on_after_component``).

    The sampler, scheduler, steps and seed come from always-visible scripts, and the webui's HTTP API
    calls every script's ``ui()`` again at start-up (to read default arguments): copies with the same
    ids, made after the page, that never get the user's ui-config values and are in no page. A
    script-built component already captured is therefore replaced only by one the script runner
    marks as its own too (the page built again by Reload UI); others are kept apart, unused."""
    current = txt2img_components.get(elem_id)
    if current is not None and current is not component and _built_by_script_runner(current):
        txt2img_newer[elem_id] = component
    else:
        txt2img_components[elem_id] = component
        txt2img_newer.pop(elem_id, None)


def txt2img_component(elem_id: str) -> Any:
    """The captured txt2img component with this id that is in the page, or None."""
    newer = txt2img_newer.get(elem_id)
    if newer is not None and _built_by_script_runner(newer):
        txt2img_components[elem_id] = newer
        del txt2img_newer[elem_id]
    return txt2img_components.get(elem_id)


def holding_queue() -> bool:
    """True inside a wrapped handler or a job that already holds the webui's queue lock."""
    return getattr(_local, "depth", 0) > 0


def mark_queue_held(fn: Callable) -> Callable:
    """For functions run by ``wrap_gradio_gpu_call`` (which holds the lock): jobs they start run inline."""

    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:
        _local.depth = getattr(_local, "depth", 0) + 1
        try:
            return fn(*args, **kwargs)
        finally:
            _local.depth -= 1

    return inner


def reset_state_flags(state: Any) -> None:
    """What ``call_queue.wrap_gradio_call`` resets after every call (an interrupt meant for us must
    not stop the next txt2img)."""
    state.skipped = False
    state.interrupted = False
    state.stopping_generation = False
    state.job_count = 0
    state.job = ""


@contextlib.contextmanager
def gpu_section(job: str) -> Iterator[None]:
    """Hold the queue lock and ``shared.state`` for ``job`` unless this thread already does."""
    if holding_queue():
        yield
        return
    from modules import call_queue, shared

    with call_queue.queue_lock:
        _local.depth = getattr(_local, "depth", 0) + 1
        shared.state.begin(job=job)
        try:
            yield
        finally:
            _local.depth -= 1
            try:
                shared.state.end()
            finally:
                reset_state_flags(shared.state)


# job kinds that use the GPU (the tagger's onnxruntime too): they wait for txt2img and make it wait
GPU_JOBS = frozenset({"train", "grid", "tag"})


class WebuiJobManager(JobManager):
    """JobManager whose GPU jobs run under the webui's queue lock and ``shared.state``.

    ``run`` (and so ``submit``'s thread) takes the queue lock before the manager's own lock, the
    same order a wrapped gradio handler uses, so the tab and the HTTP API never deadlock. Other
    jobs (a booru import) never take the queue lock, so txt2img is not held up by a download.
    """

    def run(self, kind: str, title: str, fn: Any, inner: Events | None = None, job: Any = None) -> JobStatus:
        section = gpu_section(f"lora_trainer:{kind}") if kind in GPU_JOBS else contextlib.nullcontext()
        with section:
            return super().run(kind, title, fn, inner, job)


def interrupt_aware(stop: StopToken) -> StopToken:
    """A token that fires on ``stop`` or on the webui's Interrupt (``shared.state.interrupted``:
    txt2img's button, ``POST /sdapi/v1/interrupt``)."""
    from modules import shared

    def poll() -> bool:
        if stop.requested:
            token.reason = stop.reason or token.reason
            return True
        if getattr(shared.state, "interrupted", False):
            token.reason = token.reason or "interrupted from the webui"
            return True
        return False

    token = StopToken(poll)
    return token


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(max(0.0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def step_text(info: StepInfo, num_epochs: int | None = None) -> str:
    """One line for the progress bar: epoch, step, loss, it/s, ETA."""
    epochs = f"/{num_epochs}" if num_epochs else ""
    return (
        f"Epoch {info.epoch}{epochs} · step {info.step}/{info.total_steps} · loss {info.avg_loss:.4f} · "
        f"{info.steps_per_second:.2f} it/s · ETA {format_eta(info.eta_seconds)}"
    )


class StateEvents(Events):
    """Maps job callbacks onto ``shared.state`` so the webui's progress bar shows them:
    ``job_count`` = total, ``job_no`` = done, ``textinfo`` = one line, samples as live previews."""

    def __init__(self, num_epochs: int | None = None) -> None:
        self.num_epochs = num_epochs
        self._training_started = False

    def _state(self) -> Any:
        from modules import shared

        return shared.state

    def progress(self, stage: str, done: int, total: int, text: str = "") -> None:
        state = self._state()
        state.job_count = max(1, total)
        state.job_no = min(done, state.job_count)
        state.sampling_step = state.sampling_steps = 0
        state.textinfo = html.escape(f"{stage}: {done}/{total} {text}".strip())

    def step(self, info: StepInfo) -> None:
        state = self._state()
        if not self._training_started:
            # the ETA the progress API computes runs from time_start; start it with training
            self._training_started = True
            state.time_start = time.time() - info.seconds
        state.job_count = max(1, info.total_steps)
        state.job_no = info.step
        state.sampling_step = state.sampling_steps = 0
        state.textinfo = html.escape(step_text(info, self.num_epochs))

    def sample(self, info: SampleImage) -> None:
        try:
            from PIL import Image

            with Image.open(info.path) as image:
                image.load()
                self._state().assign_current_image(image.copy())
        except Exception:  # a live preview is a nicety; never fail training for it
            pass


@contextlib.contextmanager
def preserved_progress() -> Iterator[None]:
    """Keep our progress fields while the webui's own processing (samples) changes them."""
    from modules import shared

    state = shared.state
    keys = ("job_no", "job_count", "sampling_step", "sampling_steps", "textinfo", "job")
    saved = {key: getattr(state, key, None) for key in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(state, key, value)
