"""What the tab needs from whoever hosts it (the webui or the standalone app)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lib_lora.events import Events, StopToken
from lib_lora.jobs.manager import JobManager

if TYPE_CHECKING:
    from lib_lora.jobs.scoring import Renderer


@dataclass(frozen=True)
class ModelInfo:
    """The model training would use, as the Train sub-tab shows it."""

    loaded: bool
    name: str = ""
    family: str | None = None  # "sd1" | "sdxl" (or "sd2"/other when refused)
    v_prediction: bool = False
    clip_skip: int | None = None
    problem: str | None = None  # why training is refused (SD2, --lowvram, no model ...), None when OK
    demo: bool = False  # a built-in tiny demo model
    zero_terminal_snr: bool = False  # the model was trained with a zero-terminal-SNR schedule
    notes: tuple[str, ...] = ()  # things about the model the user should know (shown under its line)


@dataclass(frozen=True)
class HostSettings:
    """Defaults the host's settings page provides."""

    default_preset: str = "character"
    tagger_model: str = "wd-v1-4-swinv2-tagger-v2"
    tagger_threshold: float = 0.35
    tagger_character_threshold: float = 0.85
    sample_every_n_epochs: int = 0
    # settings the form starts with, over the default preset's (e.g. small values for a demo model)
    form_defaults: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GridRequest:
    """An epoch x prompt grid: every LoRA file against every prompt, same seed."""

    lora_files: list[Path]
    prompts: list[str]
    negative_prompt: str = ""
    weight: float = 1.0
    seed: int = 1234
    width: int | None = None  # None: the host's current txt2img values
    height: int | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    sampler: str | None = None
    # the host's own image settings as they are on screen now (webui: txt2img's sampler, steps, size...);
    # used where the fields above are None
    host_values: dict[str, Any] = field(default_factory=dict)
    save: bool = True  # assemble and save the grid image (False: only the images, e.g. for scoring)


@dataclass
class GridResult:
    images: list[Any]  # PIL images, row-major: for each LoRA file, every prompt
    row_labels: list[str]
    column_labels: list[str]
    grid: Any = None  # the assembled grid image
    saved_to: Path | None = None
    infotexts: list[str] = field(default_factory=list)


def grid_renderer(
    render_grid: Callable[[GridRequest, Events, StopToken], GridResult],
    *,
    save: bool = True,
    quiet: bool = False,
    **sizes: Any,
) -> Renderer:
    """A host's ``render_grid`` as the scoring's renderer (one row per call; ``sizes``: width, height,
    steps, cfg_scale, None = the host's own). ``save`` False: no grid image is assembled or saved;
    ``quiet``: the render's own progress is not passed on (the scoring reports images done)."""

    def render(paths, prompts, weight, seed, events, stop) -> list[Any]:
        request = GridRequest(
            lora_files=list(paths), prompts=list(prompts), weight=float(weight), seed=int(seed), save=save, **sizes
        )
        return list(render_grid(request, _Messages(events) if quiet else events, stop).images)

    return render


class _Messages(Events):
    """Passes on messages only."""

    def __init__(self, inner: Events) -> None:
        self.inner = inner

    def message(self, level: str, text: str) -> None:
        self.inner.message(level, text)


class UIHost(Protocol):
    kind: str  # "webui" | "standalone"
    jobs: JobManager

    def model_info(self) -> ModelInfo: ...

    def settings(self) -> HostSettings: ...

    def output_dir_choices(self) -> dict[str, str]:
        """Label -> folder, e.g. {"Lora folder": ".../models/Lora", "additional-networks": ...}."""
        ...

    def default_output_dir(self) -> str: ...

    def train(
        self, cfg: Any, events: Events, stop: StopToken, resume: str | None = None, overwrite: bool = False
    ) -> Any:
        """Run ``jobs.train.train`` on the host's model with its sample renderer; restore the model
        afterwards whatever happens. Called inside a JobManager job. ``resume``: a state folder to
        continue; ``overwrite``: replace an existing run of the same name (else it is refused)."""
        ...

    def plan(self, cfg: Any, events: Events) -> Any:
        """``jobs.train.prepare`` against the host's model (for the live bucket table / checks)."""
        ...

    def render_grid(self, request: GridRequest, events: Events, stop: StopToken) -> GridResult: ...

    def refresh_loras(self) -> None:
        """Make newly written LoRA files visible in the host's LoRA lists."""
        ...

    def wrap_long_handler(self, fn: Callable, n_outputs: int) -> Callable:
        """Wrap a long gradio handler (webui: ``wrap_gradio_gpu_call`` with progress; standalone:
        Gradio's own ``gr.Progress``).

        The tab calls it for Start (train), Render grid (test) and Start tagging. ``fn`` takes the
        task id (a hidden textbox's value, ``"task(...)"`` once :meth:`long_handler_js` set it) as
        its first argument, then the inputs, and returns ``n_outputs`` values whose last one is an
        HTML string (the webui appends its "Time taken" line there; on an exception the wrapper
        returns ``n_outputs - 1`` unchanged updates plus the error HTML)."""
        ...

    # -- optional: the tab falls back to the defaults given here when a host lacks them --------------

    def long_handler_js(self, kind: str) -> str | None:
        """JavaScript (a function name or ``(...) => ...`` source) run in the browser before a long
        handler of ``kind`` ("train" | "grid" | "tag") starts: the webui's sets ``arguments[0]`` to a
        fresh task id and calls ``requestProgress``; it must return the (possibly changed)
        arguments. Default: None (no JS)."""
        ...

    def job_events(self) -> Events | None:
        """Extra listener for every job the tab runs (``JobManager.run(..., inner=...)``), e.g. the
        standalone host forwards progress to Gradio's progress bar. Default: None."""
        ...

    def txt2img_outputs(self) -> list[Any]:
        """Components "send to txt2img" updates besides the tab's own (the webui's txt2img prompt
        and negative prompt boxes). Default: []."""
        ...

    def send_to_txt2img_js(self) -> str | None:
        """JavaScript run on "send to txt2img" (the webui switches to the txt2img tab; it must
        return its arguments). Default: None."""
        ...

    def epoch_test_note(self) -> str | None:
        """A warning for the Test sub-tab when the host's own settings keep epochs from differing
        (the webui with FP8 weight on and no FP16 cache for LoRA). Default: None."""
        ...

    def send_to_txt2img(self, prompt: str, negative_prompt: str) -> tuple[list[Any], str]:
        """Updates for :meth:`txt2img_outputs` (same length) and a message for the tab's status.
        Default: ``([], "... copy the prompt ...")``."""
        ...
