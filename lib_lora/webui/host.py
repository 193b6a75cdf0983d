"""``WebuiHost``: the tab's :class:`~lib_lora.ui.host.UIHost` inside AUTOMATIC1111's webui.

- The model is the loaded checkpoint (``sd_models.model_data.sd_model``: reading it never starts
  a load); unsupported models are refused with one sentence (:func:`model_bundle.model_problem`).
- Long work runs through :attr:`jobs` (a :class:`~lib_lora.webui.runtime.WebuiJobManager`): under
  the webui's queue lock and ``shared.state``, one at a time, shared with the HTTP API. Progress
  goes to the webui's progress bar (epoch, step, loss, it/s, ETA); Interrupt stops a run and saves.
- Gradio handlers that do long work are wrapped with :meth:`wrap_long_handler`
  (``call_queue.wrap_gradio_gpu_call`` + the ``requestProgress`` hook from
  ``javascript/lora_trainer.js``). Inside such a handler call ``host.jobs.run(...)`` (blocking),
  never ``jobs.submit`` followed by waiting: the handler already holds the queue lock.
- Sample images and epoch grids are made by the webui's own txt2img processing.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import time
import traceback
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

from lib_lora.common.errors import UserError
from lib_lora.common.memory import release_freed_host_memory
from lib_lora.config import TrainConfig
from lib_lora.events import Events, MultiEvents, SampleImage, SavedFile, StopRequested, StopToken
from lib_lora.jobs.samples import default_sample_prompt
from lib_lora.ui.host import GridRequest, GridResult, HostSettings, ModelInfo, grid_renderer
from lib_lora.webui import runtime, settings

FAMILY_LABELS = {"sd1": "SD1.x", "sdxl": "SDXL", "sd2": "SD2.x", "sd3": "SD3", "flux": "Flux"}
SAMPLER_FALLBACK = "Euler a"
# txt2img's image settings by elem_id -> our key
TXT2IMG_SETTINGS = {
    "txt2img_sampling": "sampler", "txt2img_scheduler": "scheduler", "txt2img_steps": "steps",
    "txt2img_cfg_scale": "cfg_scale", "txt2img_width": "width", "txt2img_height": "height",
}  # fmt: skip
TXT2IMG_FALLBACK = {
    "sampler": SAMPLER_FALLBACK,
    "scheduler": None,
    "steps": 20,
    "cfg_scale": 7.0,
    "width": 512,
    "height": 512,
}


def loaded_model() -> Any:
    """The loaded checkpoint, or None; unlike ``shared.sd_model`` this never triggers a load."""
    from modules import sd_models

    return sd_models.model_data.sd_model


def sampler_name(name: str | None, fallback: str | None = None) -> str:
    """An sd-scripts sampler name (``euler_a``, ``ddim``, ``k_dpm_2``) or a webui one -> the webui's."""
    from modules import sd_samplers

    table = getattr(sd_samplers, "samplers_map", {}) or {}
    if name:
        key = name.strip().lower()
        for candidate in (key, f"k_{key}", key.replace(" ", "_")):
            if candidate in table:
                return table[candidate]
    return fallback or SAMPLER_FALLBACK


def lora_prompt_tag(path: str | os.PathLike, weight: float = 1.0) -> str:
    """``<lora:name-000005:0.8>`` for a LoRA file (the built-in Lora finds it by its file stem)."""
    return f"<lora:{Path(path).stem}:{weight:g}>"


def _blank_image(width: int, height: int) -> Any:
    from PIL import Image

    return Image.new("RGB", (width, height), (0, 0, 0))


class PreviewWriter(Events):
    """After each save: ``<file stem>.preview.png`` beside it (the first sample of its epoch, as the
    webui's extra-networks cards look for), and the built-in Lora's list rescanned."""

    def __init__(self) -> None:
        self.samples: dict[int, Path] = {}
        self.pending: list[SavedFile] = []
        self.previews: list[Path] = []
        self.failed_renders = 0  # blank stand-ins for samples txt2img could not render: never a preview

    def saved(self, info: SavedFile) -> None:
        self.pending.append(info)
        self._match()
        from lib_lora.webui import lora_builtin

        with contextlib.suppress(Exception):
            lora_builtin.refresh_available()

    def sample(self, info: SampleImage) -> None:
        if self.failed_renders:
            self.failed_renders -= 1
            return
        self.samples.setdefault(info.epoch, Path(info.path))
        self._match()

    def _match(self) -> None:
        from lib_lora.common.fsutil import atomic_write_bytes

        for info in list(self.pending):
            sample = self.samples.get(info.epoch)
            if sample is None or not sample.is_file():
                continue
            preview = Path(info.path).with_name(Path(info.path).stem + ".preview.png")
            atomic_write_bytes(preview, sample.read_bytes())
            self.previews.append(preview)
            self.pending.remove(info)


class WebuiHost:
    """See the module docstring."""

    kind = "webui"

    def __init__(self) -> None:
        self.jobs = runtime.WebuiJobManager()

    # -- model and settings ------------------------------------------------------------------------
    def model_info(self) -> ModelInfo:
        from modules import shared

        from lib_lora.webui.model_bundle import detect_family, detect_prediction, model_problem

        sd_model = loaded_model()
        if sd_model is None:
            from lib_lora.webui.model_bundle import NO_MODEL

            return ModelInfo(loaded=False, problem=NO_MODEL)
        info = getattr(sd_model, "sd_checkpoint_info", None)
        name = getattr(info, "name_for_extra", None) or getattr(info, "model_name", None) or type(sd_model).__name__
        family = detect_family(sd_model)
        clip_skip = int(shared.opts.CLIP_stop_at_last_layers) if family == "sd1" else None
        prediction = detect_prediction(sd_model)  # the webui's config and noise schedule, or the v_pred/ztsnr keys
        return ModelInfo(
            loaded=True,
            name=str(name),
            family=family,
            v_prediction=prediction.v_prediction,
            zero_terminal_snr=prediction.zero_terminal_snr,
            clip_skip=clip_skip,
            problem=model_problem(sd_model),
            notes=tuple(prediction.notes) + tuple(n for n in [self.epoch_test_note()] if n),
        )

    def epoch_test_note(self) -> str | None:
        from lib_lora.webui.lora_builtin import fp8_rounding_note

        return fp8_rounding_note()

    def settings(self) -> HostSettings:
        return settings.host_settings()

    def _family(self) -> str | None:
        from lib_lora.webui.model_bundle import detect_family

        return detect_family(loaded_model())

    def output_dir_choices(self) -> dict[str, str]:
        return settings.output_dir_choices(self._family())

    def default_output_dir(self) -> str:
        return settings.default_output_dir(self._family())

    def bundle(self, cfg: TrainConfig | None = None) -> Any:
        """The loaded model as the engine's bundle; UserError (one sentence) when it is refused."""
        from lib_lora.webui.model_bundle import WebuiBundle

        return WebuiBundle(loaded_model(), max_token_length=cfg.max_token_length if cfg else None)

    def host_config(self, cfg: TrainConfig, bundle: Any, events: Events | None = None) -> TrainConfig:
        """What the webui decides for a run: the output folder (the Lora folder unless one was
        chosen), CLIP skip from the user's setting, the mixed precision the webui's autocast implies."""
        events = events or Events()
        changes: dict[str, Any] = {}
        if not cfg.output_dir or cfg.output_dir == TrainConfig().output_dir:
            changes["output_dir"] = self.default_output_dir()
        if bundle.family == "sd1" and cfg.clip_skip is not None and cfg.clip_skip != bundle.clip_skip:
            events.warning(
                f"clip_skip {cfg.clip_skip} is ignored: the webui's Clip skip setting ({bundle.clip_skip}) is used, "
                "so the LoRA learns what txt2img sees; change it in Settings > Stable Diffusion."
            )
        changes["clip_skip"] = bundle.clip_skip
        if cfg.mixed_precision == "no" and bundle.device.type == "cuda" and bundle.dtype != _float32():
            # the webui runs its half-precision UNet under autocast anyway: use a matching scaler
            changes["mixed_precision"] = "auto"
        return cfg.replace(**changes)

    def plan(self, cfg: TrainConfig, events: Events) -> Any:
        from lib_lora.jobs.train import prepare

        bundle = self.bundle(cfg)
        return prepare(self.host_config(cfg, bundle, events), bundle, events)

    # -- training --------------------------------------------------------------------------------------
    def train(
        self,
        cfg: TrainConfig,
        events: Events,
        stop: StopToken,
        resume: str | None = None,
        overwrite: bool = False,
        host_values: Mapping[str, Any] | None = None,
    ) -> Any:
        """Train on the loaded model (called inside a job). The model is restored whatever happens.
        ``host_values``: txt2img's settings on screen at Start (:meth:`txt2img_live_inputs`), which
        the scoring after training renders with, as the Test tab's Score does."""
        from lib_lora.jobs.train import prepare, stopped_while_preparing, train
        from lib_lora.webui.model_bundle import TrainingSession

        token = runtime.interrupt_aware(stop)
        bundle = self.bundle(cfg)  # refusals happen here, before anything changes
        cfg = self.host_config(cfg, bundle, events)
        try:
            plan = prepare(cfg, bundle, events, token, resume)
        except StopRequested:  # stopped while the dataset was read: a resumed run names the file it resumed from
            return stopped_while_preparing(cfg, events, resume)
        if cfg.sample_every_n_epochs and not cfg.sample_prompts:
            cfg = cfg.replace(sample_prompts=default_sample_prompt(plan, cfg))
        previews = PreviewWriter()
        listeners = MultiEvents(events, runtime.StateEvents(plan.schedule.num_epochs), previews)
        error: BaseException | None = None
        try:
            with TrainingSession(bundle) as session:
                renderer = self._sample_renderer(session, cfg, listeners, previews)
                result = train(
                    cfg, bundle, listeners, token, resume=resume, overwrite=overwrite, renderer=renderer, plan=plan
                )
        except BaseException as exc:
            traceback.clear_frames(exc.__traceback__)  # free the tensors the failed step held
            if _is_out_of_memory(exc):
                error = UserError(
                    "Training ran out of GPU memory; the model is restored and the last saved epoch is intact.",
                    "Lower train_batch_size or the resolution, turn on gradient_checkpointing, or train the UNet only.",
                )
            else:
                raise
        finally:
            gc.collect()
            with contextlib.suppress(Exception):
                from modules import devices

                devices.torch_gc()
            release_freed_host_memory()  # else the run's freed CPU memory stays resident (glibc)
        if error is not None:
            raise error
        self.refresh_loras()
        if cfg.score_epochs:  # on the restored model, through txt2img as the Test tab scores
            from lib_lora.jobs.scoring import score_finished_run

            render = grid_renderer(self.render_grid, save=False, quiet=True, host_values=dict(host_values or {}))
            result.scoring = score_finished_run(cfg, result, render, self.settings().tagger_model, listeners, token)
            self.refresh_loras()  # the final file's metadata changed
        return result

    def _sample_renderer(self, session: Any, cfg: TrainConfig, events: Events, previews: PreviewWriter) -> Callable:
        """Renders one sample through txt2img's processing. A sample txt2img cannot render (a
        NansException, an error in another extension's hook) costs only that picture: a warning and
        a blank stand-in, never the run; the last epoch is saved after its samples."""
        from modules import processing, shared

        defaults = self.txt2img_defaults()

        def render(prompt: Any, seed: int) -> Any:
            try:
                with session.sampling():
                    p = processing.StableDiffusionProcessingTxt2Img(
                        sd_model=shared.sd_model, prompt=prompt.prompt, negative_prompt=prompt.negative, seed=seed,
                        sampler_name=sampler_name(prompt.sampler or cfg.sample_sampler, defaults["sampler"]),
                        steps=prompt.steps, cfg_scale=prompt.cfg_scale, width=prompt.width, height=prompt.height,
                        do_not_save_samples=True, do_not_save_grid=True, override_settings={},
                    )  # fmt: skip
                    p.disable_extra_networks = True  # our live network is applied; no <lora:> from settings
                    with closing(p):
                        processed = processing.process_images(p)
            except Exception as exc:
                traceback.clear_frames(exc.__traceback__)
                events.warning(
                    f"Sample image skipped: txt2img could not render {prompt.prompt!r} "
                    f"({type(exc).__name__}: {exc}); training goes on."
                )
                previews.failed_renders += 1
                return _blank_image(prompt.width, prompt.height)
            if not processed.images:  # interrupted: the loop stops (and saves) at the next step
                return _blank_image(prompt.width, prompt.height)
            return processed.images[0]

        return render

    def refresh_loras(self) -> None:
        from lib_lora.webui import lora_builtin

        lora_builtin.refresh_available()

    # -- epoch grid ------------------------------------------------------------------------------------
    def txt2img_defaults(self, live: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """txt2img's sampler, scheduler, steps, CFG and size: ``live`` (the values on screen, sent with
        the click by :meth:`txt2img_live_inputs`), else the values of its components in the page as
        built (the user's saved ui-config values; see :func:`runtime.capture_txt2img_component`),
        else defaults."""
        values = dict(TXT2IMG_FALLBACK)
        for elem_id, key in TXT2IMG_SETTINGS.items():
            component = runtime.txt2img_component(elem_id)
            value = getattr(component, "value", None)
            if value is not None and value != "":
                values[key] = value
        if self._family() == "sdxl" and runtime.txt2img_component("txt2img_width") is None:
            values["width"] = values["height"] = 1024
        for key, value in (live or {}).items():
            if key in values and value is not None and value != "":
                values[key] = value
        return values

    def txt2img_live_inputs(self) -> tuple[list[Any], list[str]]:
        """txt2img's image-setting components (as inputs of the grid click, so the grid uses what the
        user has on screen now) and the keys their values stand for."""
        found = [(runtime.txt2img_component(elem_id), key) for elem_id, key in TXT2IMG_SETTINGS.items()]
        found = [(component, key) for component, key in found if component is not None]
        return [component for component, _ in found], [key for _, key in found]

    def render_grid(self, request: GridRequest, events: Events, stop: StopToken) -> GridResult:
        """Every LoRA file x every prompt through txt2img with ``<lora:name-0000NN:w>`` (the
        built-in Lora applies it), same seed; the grid is shown and saved."""
        from modules import processing, shared

        from lib_lora.webui import lora_builtin
        from lib_lora.webui.model_bundle import check_model, clear_cond_caches, preserved_rng

        sd_model = loaded_model()
        check_model(sd_model, training=False)  # the grid is plain txt2img
        files = [Path(f) for f in request.lora_files]
        prompts = [p.strip() for p in request.prompts if p and p.strip()]
        if not files:
            raise UserError("Choose at least one epoch file for the grid.")
        if not prompts:
            raise UserError("Enter at least one prompt for the grid.")
        for path in files:
            if not path.is_file():
                raise UserError(f"{path} does not exist.")
            if not lora_builtin.is_inside_lora_dirs(str(path)):
                raise UserError(
                    f"{path} is not inside the webui's Lora folder, so <lora:{path.stem}:1> cannot find it; "
                    "train into the Lora folder to test epochs here."
                )
        if lora_builtin.networks_module() is None:
            raise UserError("The built-in Lora extension is disabled; enable it to test epochs in txt2img.")
        defaults = self.txt2img_defaults(request.host_values)
        width = int(request.width or defaults["width"])
        height = int(request.height or defaults["height"])
        steps = int(request.steps or defaults["steps"])
        cfg_scale = float(request.cfg_scale if request.cfg_scale is not None else defaults["cfg_scale"])
        sampler = sampler_name(request.sampler, defaults["sampler"]) if request.sampler else defaults["sampler"]
        token = runtime.interrupt_aware(stop)
        total = len(files) * len(prompts)
        images: list[Any] = []
        infotexts: list[str] = []
        with runtime.gpu_section("lora_trainer:grid"):
            lora_builtin.refresh_available()
            state = shared.state
            state.job_count, state.job_no = total, 0
            with preserved_rng():
                clear_cond_caches()
                for path in files:
                    for col, prompt in enumerate(prompts):
                        if token.requested:
                            break
                        p = processing.StableDiffusionProcessingTxt2Img(
                            sd_model=shared.sd_model, prompt=f"{prompt} {lora_prompt_tag(path, request.weight)}",
                            negative_prompt=request.negative_prompt, seed=request.seed, sampler_name=sampler,
                            steps=steps, cfg_scale=cfg_scale, width=width, height=height, do_not_save_samples=True,
                            do_not_save_grid=True, override_settings={},
                        )  # fmt: skip
                        if defaults.get("scheduler"):
                            p.scheduler = defaults["scheduler"]
                        with closing(p):
                            processed = processing.process_images(p)
                        if not processed.images:
                            break
                        images.append(processed.images[0])
                        infotexts.append(processed.infotexts[0] if processed.infotexts else "")
                        state.textinfo = f"Testing {path.stem}: prompt {col + 1}/{len(prompts)}"
                        events.progress("grid", len(images), total, path.stem)
        row_labels = [p.stem for p in files]
        result = GridResult(images=images, row_labels=row_labels, column_labels=prompts, infotexts=infotexts)
        if not images or not request.save:
            return result
        while len(images) < total:  # stopped part-way: fill the grid's empty cells
            images.append(_blank_image(*images[0].size))
        result.grid = self._assemble_grid(images, row_labels, prompts)
        result.saved_to = self._save_grid(result.grid, files[0], infotexts[0] if infotexts else "")
        return result

    def _assemble_grid(self, images: list[Any], rows: list[str], columns: list[str]) -> Any:
        from modules import images as webui_images

        grid = webui_images.image_grid(images, rows=len(rows))
        width, height = images[0].size
        hor = [[webui_images.GridAnnotation(text)] for text in columns]
        ver = [[webui_images.GridAnnotation(text)] for text in rows]
        return webui_images.draw_grid_annotations(grid, width, height, hor, ver)

    def _save_grid(self, grid: Any, first: Path, infotext: str) -> Path:
        from modules import shared

        from lib_lora.common.fsutil import atomic_write_bytes

        folder = getattr(shared.opts, "outdir_grids", "") or getattr(shared.opts, "outdir_txt2img_grids", "")
        folder = Path(os.path.abspath(folder or os.path.join("outputs", "txt2img-grids")))
        folder.mkdir(parents=True, exist_ok=True)
        name = first.stem.rsplit("-", 1)[0] if "-" in first.stem else first.stem
        path = folder / f"{name}-epochs-{time.strftime('%Y%m%d-%H%M%S')}.png"
        buffer = io.BytesIO()
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        if infotext:
            info.add_text("parameters", infotext)
        grid.save(buffer, format="PNG", pnginfo=info)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    # -- gradio glue -----------------------------------------------------------------------------------
    def wrap_long_handler(self, fn: Callable, n_outputs: int) -> Callable:
        """``call_queue.wrap_gradio_gpu_call`` around ``fn``: the queue lock, ``shared.state`` and
        the progress bar for the task id ``fn`` gets first (set by :meth:`long_handler_js`).

        ``fn`` returns ``n_outputs`` values, the last an HTML string (the webui appends its "Time
        taken" note to it); on an exception the webui returns ``n_outputs - 1`` unchanged updates
        and the error HTML. Jobs ``fn`` runs with ``host.jobs.run`` execute inline (the lock is
        already held)."""
        import gradio as gr
        from modules import call_queue

        def handler(*args: Any) -> list[Any]:
            result = fn(*args)
            values = list(result) if isinstance(result, (tuple, list)) else [result]
            if values and values[-1] is None:
                values[-1] = ""
            return values

        wrapped = call_queue.wrap_gradio_gpu_call(
            runtime.mark_queue_held(handler), extra_outputs=[gr.update() for _ in range(max(0, n_outputs - 1))]
        )
        if n_outputs != 1:
            return wrapped

        def single(*args: Any) -> Any:  # gradio wants the bare value for a single output
            return wrapped(*args)[0]

        return single

    #: containers the progress bar goes above (and galleries for live previews), per long handler
    PROGRESS_TARGETS = {
        "train": ("lora_trainer_train_result", None, None),
        "grid": ("lora_trainer_test_result", "lora_trainer_grid", None),
        "tag": ("lora_trainer_tag_result", None, None),
    }

    def long_handler_js(self, kind: str) -> str | None:
        """The ``_js`` of a long handler's click: sets ``arguments[0]`` to a task id and starts the
        webui's ``requestProgress`` (javascript/lora_trainer.js), as the built-in trainer does."""
        container, gallery, info = self.PROGRESS_TARGETS.get(kind, (f"lora_trainer_{kind}_result", None, None))
        return self.progress_js(container, gallery, info)

    @staticmethod
    def progress_js(container_id: str, gallery_id: str | None = None, info_id: str | None = None) -> str:
        args = ", ".join("null" if v is None else repr(v) for v in (container_id, gallery_id, info_id))
        return f"(...args) => loraTrainerStartTask({args}, args)"

    def job_events(self) -> Events:
        """Every job the tab runs shows in the webui's progress bar."""
        return runtime.StateEvents()

    @staticmethod
    def lora_prompt_tag(path: str | os.PathLike, weight: float = 1.0) -> str:
        return lora_prompt_tag(path, weight)

    def txt2img_outputs(self) -> list[Any]:
        """txt2img's prompt and negative prompt boxes (captured by ``on_after_component``)."""
        prompt = runtime.txt2img_component("txt2img_prompt")
        negative = runtime.txt2img_component("txt2img_neg_prompt")
        return [c for c in (prompt, negative) if c is not None] if prompt is not None else []

    def send_to_txt2img_js(self) -> str:
        return "switch_to_txt2img"  # the webui's own: switches tab, returns its arguments

    def send_to_txt2img(self, prompt: str, negative_prompt: str) -> tuple[list[Any], str]:
        import gradio as gr

        outputs = self.txt2img_outputs()
        if not outputs:
            return [], "txt2img's prompt box was not found; copy the prompt above into txt2img."
        updates = [gr.update(value=prompt)]
        if len(outputs) > 1:
            updates.append(gr.update(value=negative_prompt) if negative_prompt else gr.update())
        return updates, "Sent to txt2img."


def _float32() -> Any:
    import torch

    return torch.float32


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    oom_types = tuple(
        t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if t
    )
    if oom_types and isinstance(exc, oom_types):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
