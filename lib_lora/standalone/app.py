"""The standalone app: the "Train LoRA" tab served by Gradio without the webui.

:class:`StandaloneHost` implements ``lib_lora.ui.host.UIHost`` over ``standalone.models.load_model``:
a single-file SD1.x/SDXL ``.safetensors`` checkpoint, or with none the built-in ``tiny-sd15`` demo
model (``tiny-sdxl``, the SDXL one, by its name). The checkpoint is checked when the host is made (a
bad path or a ``.ckpt`` is refused at once) and its weights are loaded on first use, so the page
opens quickly; a problem found later is shown in the tab and training is refused. Long handlers show
Gradio's own progress bar; samples and the Test grid come from the standalone sampler with the LoRA
applied from the saved files.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from lib_lora.common.errors import UserError
from lib_lora.events import Events, StepInfo, StopRequested, StopToken
from lib_lora.jobs.grid import assemble_grid, save_grid
from lib_lora.jobs.manager import JobManager
from lib_lora.standalone.security import AccessPolicy, FolderList, gradio_temp_folder, secure_app
from lib_lora.tagger.models import DEMO_MODEL as DEMO_TAGGER
from lib_lora.ui.compat import queue_kwargs
from lib_lora.ui.host import GridRequest, GridResult, HostSettings, ModelInfo, grid_renderer
from lib_lora.ui.tab import TITLE, build_tab, stylesheet

DEMO_MODEL = "tiny-sd15"
DEMO_MODELS = {"tiny-sd15": "sd1", "tiny-sdxl": "sdxl"}  # the built-in demo models, by name
FAMILY_DEFAULT_SIZE = {"sd1": 512, "sdxl": 1024}
DEMO_SIZE = 128  # the tiny models' images are noise; keep them quick
DEFAULT_STEPS = 20
DEFAULT_CFG = 7.0
# the form's starting values with the demo model: small and quick on a CPU. 320 px with SD1's
# 64 px bucket step gives 256x384 / 384x256 buckets, so the demo dataset's 2:3 images keep their shape
# (at 128 px the only tall bucket was 64x192 and half of each image was cropped away).
DEMO_FORM = {
    "resolution": "320", "min_bucket_reso": 64, "max_bucket_reso": 640, "train_batch_size": 4, "network_dim": 8,
    "network_alpha": 4, "max_train_epochs": 4, "save_every_n_epochs": 1, "clip_skip": None,
}  # fmt: skip


class GradioProgress(Events):
    """Forwards progress and training steps to the ``gr.Progress`` of the handler running in this
    thread (set by :meth:`StandaloneHost.wrap_long_handler`); silent elsewhere."""

    def __init__(self) -> None:
        self._local = threading.local()

    def bind(self, progress: Any) -> None:
        self._local.progress = progress

    def unbind(self) -> None:
        self._local.progress = None

    def _send(self, value: Any, desc: str) -> None:
        progress = getattr(self._local, "progress", None)
        if progress is None:
            return
        try:
            progress(value, desc=desc)
        except Exception:  # a closed connection must not break the job
            self._local.progress = None

    def progress(self, stage: str, done: int, total: int, text: str = "") -> None:
        if total:
            self._send((done, total), f"{stage} {text}".strip())

    def step(self, info: StepInfo) -> None:
        self._send(
            (info.step, info.total_steps),
            f"epoch {info.epoch} · step {info.step}/{info.total_steps} · loss {info.avg_loss:.4f}",
        )


class _OffsetProgress(Events):
    """Progress of one grid row shown as part of the whole grid."""

    def __init__(self, inner: Events, offset: int, total: int) -> None:
        self.inner, self.offset, self.total = inner, offset, total

    def progress(self, stage: str, done: int, total: int, text: str = "") -> None:
        self.inner.progress(stage, self.offset + done, self.total, text)

    def message(self, level: str, text: str) -> None:
        self.inner.message(level, text)


class StandaloneHost:
    """``UIHost`` for the standalone app (see the module docstring)."""

    kind = "standalone"

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        lora_dir: str | os.PathLike = "lora",
        device: str | None = None,
        settings: HostSettings | None = None,
    ) -> None:
        self.checkpoint = str(checkpoint) if checkpoint else None
        self.demo = self.checkpoint is None or self.checkpoint in DEMO_MODELS
        self.lora_dir = str(Path(lora_dir).expanduser().resolve())
        # what /file= may serve: Gradio's temporary copies, thumbnails, the LoRA folder, and the
        # dataset / output folders chosen in the tab (added by allow_folder)
        from lib_lora.jobs.editor import thumbnail_folder

        self.served_folders = FolderList([gradio_temp_folder(), thumbnail_folder(), self.lora_dir])
        self.device = device
        self.jobs = JobManager()
        if settings is None and self.demo:  # the quick start: small settings, the built-in demo tagger
            settings = HostSettings(form_defaults=DEMO_FORM, tagger_model=DEMO_TAGGER)
        self._settings = settings or HostSettings()
        self._progress = GradioProgress()
        self._bundle: Any = None
        self._bundle_key: tuple | None = None
        self._load_error: str | None = None
        self._lock = threading.Lock()
        self._family: str | None = DEMO_MODELS[self.model_name] if self.demo else None
        self._v_prediction = False
        self._zero_terminal_snr = False  # the checkpoint's ztsnr key (the sampler and training use it)
        if not self.demo:
            self._inspect()

    # ------------------------------------------------------------------ the model
    def _inspect(self) -> None:
        """Check the checkpoint file now (cheap: its header); UserError for a bad path or type."""
        from lib_lora.standalone.checkpoint import check_model_path, inspect_checkpoint

        check_model_path(self.checkpoint)
        info = inspect_checkpoint(self.checkpoint)
        self._family, self._v_prediction = info.family, info.v_prediction
        self._zero_terminal_snr = info.zero_terminal_snr

    @property
    def model_name(self) -> str:
        if self.demo:
            return self.checkpoint or DEMO_MODEL
        return Path(self.checkpoint or "").name

    def model_info(self) -> ModelInfo:
        problem = self._load_error
        if not self.demo and problem is None:
            from lib_lora.standalone.checkpoint import check_model_path

            try:
                check_model_path(self.checkpoint)
            except UserError as exc:
                problem = str(exc)
        return ModelInfo(
            loaded=problem is None,
            name=self.model_name,
            family=self._family,
            v_prediction=self._v_prediction,
            zero_terminal_snr=self._zero_terminal_snr,
            clip_skip=None,
            problem=problem,
            demo=self.demo,
        )

    def bundle(self, cfg: Any = None) -> Any:
        """The loaded model: loaded on first use, in the precision training uses (as the train
        verb does); reloaded only when a run needs another precision. ``cfg`` None (the Test
        grid) takes the model as it is."""
        from lib_lora.standalone.models import load_model, resolve_device, training_dtype

        info = self.model_info()
        if info.problem:
            raise UserError(info.problem)
        device = resolve_device(self.device)
        key: tuple | None = None
        if cfg is not None:
            key = (training_dtype(cfg.mixed_precision, device),)
        with self._lock:
            if self._bundle is None or (key is not None and self._bundle_key != key):
                self._bundle = None
                try:
                    self._bundle = load_model(
                        self.checkpoint or DEMO_MODEL, device=device, dtype=key[0] if key else None,
                        clip_skip=getattr(cfg, "clip_skip", None),
                        max_token_length=getattr(cfg, "max_token_length", None) or 75,
                    )  # fmt: skip
                except Exception as exc:  # shown in the tab; training stays refused until restart
                    reason = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
                    self._load_error = f"The model {self.model_name} could not be loaded: {reason}"
                    raise UserError(self._load_error) from None
                self._bundle_key = key
                self._family = self._bundle.family
                self._v_prediction = self._bundle.v_prediction
            bundle = self._bundle
        if cfg is not None and hasattr(bundle, "set_text_options"):
            bundle.set_text_options(clip_skip=cfg.clip_skip, max_token_length=cfg.max_token_length or 75)
        return bundle

    # ------------------------------------------------------------------ UIHost
    def settings(self) -> HostSettings:
        return self._settings

    def allow_folder(self, folder: str | os.PathLike | None) -> None:
        """A dataset or output folder the user chose in the tab: its files may be served to the page."""
        self.served_folders.add(folder)

    def output_dir_choices(self) -> dict[str, str]:
        return {"LoRA folder": self.lora_dir}  # short: the dropdown cut a label with the path; its info line shows it

    def default_output_dir(self) -> str:
        return self.lora_dir

    def plan(self, cfg: Any, events: Events) -> Any:
        from lib_lora.jobs.train import prepare

        return prepare(cfg, self.bundle(cfg), events)

    def train(
        self, cfg: Any, events: Events, stop: StopToken, resume: str | None = None, overwrite: bool = False
    ) -> Any:
        """Train on the model; with samples asked for and the prompt box empty, the samples use the
        activation text and the dataset's most frequent tags (as in the webui)."""
        from lib_lora.jobs.samples import default_sample_prompt
        from lib_lora.jobs.train import prepare, train
        from lib_lora.standalone.sampler import training_renderer

        bundle = self.bundle(cfg)
        plan = None
        if cfg.sample_every_n_epochs and not cfg.sample_prompts:
            with contextlib.suppress(StopRequested):  # stopped already: train() says what it kept
                plan = prepare(cfg, bundle, events, stop, resume)
                cfg = cfg.replace(sample_prompts=default_sample_prompt(plan, cfg))
        renderer = training_renderer(bundle, cfg)
        result = train(cfg, bundle, events, stop, resume=resume, overwrite=overwrite, renderer=renderer, plan=plan)
        return self.score_run(cfg, result, events, stop)

    def score_run(self, cfg: Any, result: Any, events: Events, stop: StopToken) -> Any:
        """With ``score_epochs`` on: the run's epochs scored as the Test tab scores them (this sampler at
        the Test tab's default image settings); the outcome in ``result.scoring``."""
        from lib_lora.jobs.scoring import score_finished_run

        render = grid_renderer(self.render_grid, save=False, quiet=True)
        result.scoring = score_finished_run(cfg, result, render, self._settings.tagger_model, events, stop)
        return result

    def render_grid(self, request: GridRequest, events: Events, stop: StopToken) -> GridResult:
        from lib_lora.standalone.sampler import generate

        if not request.lora_files or not request.prompts:
            raise UserError("The grid needs at least one LoRA file and one prompt.")
        bundle = self.bundle()
        default = DEMO_SIZE if self.demo else FAMILY_DEFAULT_SIZE.get(bundle.family, 512)
        width, height = request.width or default, request.height or default
        steps = request.steps or DEFAULT_STEPS
        cfg_scale = DEFAULT_CFG if request.cfg_scale is None else request.cfg_scale
        images = []
        per_row = len(request.prompts) * steps
        total = per_row * len(request.lora_files)
        for row, path in enumerate(request.lora_files):
            stop.raise_if_requested()
            row_events = _OffsetProgress(events, row * per_row, total)
            row_images = generate(
                bundle, request.prompts, negative=request.negative_prompt, seed=request.seed, steps=steps,
                cfg=cfg_scale, width=width, height=height, lora=[(path, request.weight)], events=row_events, stop=stop,
            )  # fmt: skip
            if len(row_images) < len(request.prompts):
                raise UserError("Stopped before the grid was finished.")
            images += row_images
        rows = [Path(p).stem for p in request.lora_files]
        if not request.save:
            return GridResult(images, rows, list(request.prompts))
        grid = assemble_grid(images, rows, list(request.prompts))
        name = rows[0].rsplit("-", 1)[0] if "-" in rows[0] else rows[0]
        saved = save_grid(grid, Path(request.lora_files[0]).parent, name)
        infotexts = [
            f"{prompt}, <lora:{stem}:{request.weight:g}>; seed {request.seed + i}, {steps} steps, CFG {cfg_scale:g}, {width}x{height}"
            for stem in rows
            for i, prompt in enumerate(request.prompts)
        ]
        return GridResult(images, rows, list(request.prompts), grid, saved, infotexts)

    def refresh_loras(self) -> None:
        """Nothing lists LoRA files here besides the tab itself."""

    def wrap_long_handler(self, fn: Callable, n_outputs: int) -> Callable:
        """``fn`` with Gradio's progress bar: gradio passes ``gr.Progress`` as the first argument
        (a positional parameter with a Progress default), the events of this thread feed it."""
        events = self._progress

        def with_progress(progress=gr.Progress(), *args: Any) -> Any:  # noqa: B008 - gradio's own pattern
            events.bind(progress)
            try:
                return fn(*args)
            finally:
                events.unbind()

        with_progress.__name__ = getattr(fn, "__name__", "long_handler")
        return with_progress

    def long_handler_js(self, kind: str) -> str | None:
        return None

    def job_events(self) -> Events | None:
        return self._progress

    def txt2img_outputs(self) -> list[Any]:
        return []

    def send_to_txt2img_js(self) -> str | None:
        return None

    def send_to_txt2img(self, prompt: str, negative_prompt: str) -> tuple[list[Any], str]:
        return [], (
            "The standalone app has no txt2img: copy the text of 'Prompt for txt2img' below into your generator "
            "(webui, ComfyUI...)."
        )


def build_app(host: StandaloneHost) -> gr.Blocks:
    """The page: a title, the model notice and the tab (inside ``#tab_lora_trainer`` as in the webui)."""
    info = host.model_info()
    with gr.Blocks(title=TITLE, css=stylesheet(), analytics_enabled=False) as app:
        notice = f"Model: **{info.name}**"
        if info.demo:
            notice += (
                " — the built-in **demo** model (tiny, random weights: training and testing work, the images "
                "are noise). Start with `--checkpoint FILE.safetensors` to train on a real SD1.x/SDXL model."
            )
        gr.Markdown(f"## {TITLE}\n{notice}", elem_id="lora_trainer_header")
        with gr.Tabs(), gr.Tab(TITLE, elem_id="tab_lora_trainer"):
            _, tab = build_tab(host)
    app.queue(**queue_kwargs(8))
    app.lora_trainer_tab = tab  # type: ignore[attr-defined]
    return app


@contextlib.contextmanager
def _secured_create_app(policy: AccessPolicy) -> Iterator[None]:
    """While Gradio builds its FastAPI app, put :class:`LocalOnly` in place of its CORS middleware
    (``Blocks.launch`` makes the app and starts serving in one call; gradio 3.41 and 4.x both build
    it with ``App.create_app``)."""
    from gradio.routes import App

    original = App.__dict__["create_app"]
    make = original.__func__ if isinstance(original, staticmethod) else original

    def create_app(*args: Any, **kwargs: Any) -> Any:
        app = make(*args, **kwargs)
        secure_app(app, policy)
        return app

    App.create_app = staticmethod(create_app)
    try:
        yield
    finally:
        App.create_app = original


def _no_queue_eta(app: gr.Blocks) -> None:
    """Gradio's progress text shows "elapsed/ETA", the ETA being the average duration of every event
    the queue ran — mostly the live views' one-second refreshes — so a training showed "57.7/0.1s".
    Without that average there is no ETA: the text shows the elapsed time, and the live view under
    Start shows the run's own ETA."""
    queue = getattr(app, "_queue", None)
    if queue is not None and hasattr(queue, "update_estimation"):
        queue.update_estimation = lambda *args, **kwargs: None


def launch(
    host: StandaloneHost,
    server_name: str = "127.0.0.1",
    port: int = 7870,
    block: bool = True,
    quiet: bool = False,
    allow_origins: Iterable[str] = (),
) -> gr.Blocks:
    """Build and serve the app; with ``block`` wait until Ctrl-C. Only the app's own page (and the
    ``allow_origins`` the user named) may call it; ``/file=`` serves only the app's own folders
    (see :mod:`lib_lora.standalone.security`)."""
    app = build_app(host)
    policy = AccessPolicy(server_name, host.served_folders, allow_origins)
    with _secured_create_app(policy):
        app.launch(
            server_name=server_name, server_port=port, prevent_thread_lock=True, show_api=False, quiet=quiet,
            inbrowser=False, share=False, allowed_paths=host.served_folders.as_strings,
        )  # fmt: skip
    if block:
        with contextlib.suppress(KeyboardInterrupt):
            app.block_thread()
    return app
