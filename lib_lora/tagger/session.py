"""An onnxruntime session for one tagger, with the execution provider chosen explicitly.

Providers: CUDA when onnxruntime-gpu and a GPU work, else DirectML when present, else the CPU, and
a warning that says *why* no GPU is used (a silent CPU fallback is the most reported complaint of
the existing taggers). Input name, size and batch dimension are read from the model: a fixed
batch-1 export is fed one image at a time, never reshaped. ``onnxruntime`` is imported lazily.

:func:`open_session` (providers, options, the CPU-fallback warning, a readable load error) is the
one place any ONNX model of the project is opened; the dataset cleaner's LaMa uses it too.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lib_lora.common.errors import UserError
from lib_lora.events import Events
from lib_lora.tagger.labels import Labels, Prediction, TagOptions, predict_tags, read_labels
from lib_lora.tagger.models import DEFAULT_MODEL, ModelFiles, ModelSpec, resolve_model
from lib_lora.tagger.preprocess import prepare_image

CUDA, DIRECTML, CPU = "CUDAExecutionProvider", "DmlExecutionProvider", "CPUExecutionProvider"
DEVICES = ("auto", "cuda", "directml", "cpu")
_GPU_PACKAGE = {CUDA: "onnxruntime-gpu", DIRECTML: "onnxruntime-directml"}
_DEVICE_NAME = {CUDA: "CUDA", DIRECTML: "DirectML", CPU: "CPU"}


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _installed_ort_packages() -> list[str]:
    names = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")
    found = []
    for name in names:
        try:
            importlib.metadata.distribution(name)
            found.append(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def check_onnxruntime_version(spec: ModelSpec | None, ort_version: str) -> UserError | None:
    """The error for a registry model that needs a newer onnxruntime (v3 taggers: >= 1.17), else None."""
    if spec is None or not spec.min_onnxruntime:
        return None
    if _version_tuple(ort_version) >= _version_tuple(spec.min_onnxruntime):
        return None
    return UserError(
        f"The tagger {spec.name} needs onnxruntime >= {spec.min_onnxruntime}, but onnxruntime {ort_version} is installed.",
        "Upgrade it (pip install -U onnxruntime, or onnxruntime-gpu for an NVIDIA GPU).",
    )


@dataclass(frozen=True)
class ProviderPlan:
    providers: list[str]  # what to ask onnxruntime for, best first
    warning: str | None  # why no GPU will be used (None when one is requested or the CPU was asked for)


def plan_providers(
    device: str, available: Sequence[str], ort_version: str = "", packages: Sequence[str] = (), task: str = "Tagging"
) -> ProviderPlan:
    """Choose the execution providers for ``device`` ("auto", "cuda", "directml", "cpu");
    ``task`` names the work in the warning ("Tagging runs on the CPU: ...")."""
    device = device.lower()
    if device == "dml":
        device = "directml"
    if device not in DEVICES:
        raise UserError(f"The tagger device must be one of {', '.join(DEVICES)} (got {device!r}).")
    if device == "cpu":
        return ProviderPlan([CPU], None)
    wanted = {"cuda": [CUDA], "directml": [DIRECTML], "auto": [CUDA, DIRECTML]}[device]
    for provider in wanted:
        if provider in available:
            return ProviderPlan([provider, CPU], None)
    build = f"onnxruntime {ort_version}".strip()
    if "onnxruntime" in packages and "onnxruntime-gpu" in packages:
        why = (
            "both onnxruntime and onnxruntime-gpu are installed and the CPU package shadows the GPU one; "
            "uninstall both, then install onnxruntime-gpu alone"
        )
    elif device == "auto":
        why = (
            f"this {build} build has no GPU provider (install onnxruntime-gpu for an NVIDIA GPU, "
            "onnxruntime-directml on Windows)"
        )
    else:
        provider = wanted[0]
        why = f"this {build} build has no {provider} (install {_GPU_PACKAGE[provider]} instead of onnxruntime)"
    asked = "" if device == "auto" else f"{_DEVICE_NAME[wanted[0]]} was asked for but "
    return ProviderPlan([CPU], f"{task} runs on the CPU: {asked}{why}.")


def _ort_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


def device_name(providers: Sequence[str]) -> str:
    """ "CUDA", "DirectML" or "CPU": where a session with these providers runs."""
    return _DEVICE_NAME.get(providers[0], providers[0]) if providers else "CPU"


def _gpu_failure_hint(provider: str, ort_version: str) -> str:
    if provider == CUDA:
        cuda = "CUDA 12 and cuDNN 9" if _version_tuple(ort_version) >= (1, 19) else "the CUDA/cuDNN its docs name"
        return (
            f"onnxruntime-gpu {ort_version} needs {cuda} and a working NVIDIA driver; "
            "onnxruntime's own message above names the missing library"
        )
    return "the DirectML device could not be opened"


def _load_error(exc: Exception, ort_version: str, path: object, what: str, hint: str | None) -> UserError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    lowered = text.lower()
    if "protobuf" in lowered or "invalid_protobuf" in lowered or "parse" in lowered:
        return UserError(f"{path} is not a valid ONNX model file (onnxruntime could not parse it).")
    opset = "opset" in lowered or "ir_version" in lowered or "unsupported model" in lowered
    return UserError(f"onnxruntime {ort_version} could not load {what} {path}: {text}", hint if opset else None)


@dataclass
class OpenedSession:
    session: Any  # onnxruntime.InferenceSession
    providers: list[str]  # what the session really runs on, best first
    warnings: list[str]  # why no GPU is used (already sent to ``events.warning``)

    @property
    def device(self) -> str:
        return device_name(self.providers)


def open_session(
    model_path: str | os.PathLike,
    *,
    device: str = "auto",
    threads: int = 0,
    events: Events | None = None,
    session_config: Mapping[str, str] | None = None,
    task: str = "Tagging",
    what: str = "the model",
    min_onnxruntime: UserError | None = None,
    load_hint: str | None = None,
) -> OpenedSession:
    """An onnxruntime session for ``model_path`` on the best provider ``device`` allows.

    A warning (sent to ``events`` and returned) says why no GPU is used: no GPU build installed,
    both builds installed, or the GPU provider failed to start. ``min_onnxruntime`` is raised
    first when given (the model needs a newer onnxruntime); a file onnxruntime cannot load is one
    :class:`UserError` naming ``what`` and the path (``load_hint`` added for opset/IR errors).
    """
    import onnxruntime as ort

    events = events or Events()
    if min_onnxruntime is not None:
        raise min_onnxruntime
    plan = plan_providers(device, ort.get_available_providers(), ort.__version__, _installed_ort_packages(), task)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # this session's chatter; provider load errors still print
    config = dict(session_config or {})
    if plan.providers == [CPU]:
        # idle worker threads that spin take CPU from the decode threads (and other programs):
        # neutral on an idle 2-core machine, ~10 % faster on a busy one (bench/tagger.py)
        config.setdefault("session.intra_op.allow_spinning", "0")
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    try:
        session = ort.InferenceSession(os.fspath(model_path), sess_options=options, providers=plan.providers)
    except Exception as exc:
        raise _load_error(exc, ort.__version__, model_path, what, load_hint) from None
    providers = list(session.get_providers())
    warnings: list[str] = []
    if plan.warning:
        warnings.append(plan.warning)
    elif plan.providers[0] != CPU and providers[0] != plan.providers[0]:
        requested = plan.providers[0]
        warnings.append(
            f"{task} runs on the CPU: {requested} failed to start ({_gpu_failure_hint(requested, ort.__version__)})."
        )
    for text in warnings:
        events.warning(text)
    return OpenedSession(session, providers, warnings)


@dataclass(frozen=True)
class ModelInput:
    name: str
    size: int
    batch: int | None  # a fixed batch dimension, or None when dynamic


def read_input(session: object, model_name: str) -> ModelInput:
    """Validate the session's input/output against the WD contract (NHWC float32, one square input)."""
    inputs = session.get_inputs()  # type: ignore[attr-defined]
    outputs = session.get_outputs()  # type: ignore[attr-defined]
    contract = "a WD tagger takes one float32 input [batch, size, size, 3] (NHWC) and returns [batch, labels]"
    if len(inputs) != 1:
        raise UserError(f"{model_name} is not a WD tagger: it has {len(inputs)} inputs, but {contract}.")
    shape = list(inputs[0].shape)
    square = len(shape) == 4 and isinstance(shape[1], int) and shape[1] == shape[2] and shape[1] > 0
    if not square or shape[3] != 3 or inputs[0].type != "tensor(float)":
        raise UserError(f"{model_name} is not a WD tagger: its input is {inputs[0].type} {shape}, but {contract}.")
    if not outputs or len(outputs[0].shape) != 2:
        found = outputs[0].shape if outputs else "no output"
        raise UserError(f"{model_name} is not a WD tagger: its output is {found}, but {contract}.")
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return ModelInput(inputs[0].name, int(shape[1]), batch)


class Tagger:
    """One loaded tagger: the ORT session, its labels and its input contract.

    ``predict`` takes prepared images (``[N, size, size, 3]``) and returns ``[N, labels]`` scores;
    ``tag`` takes PIL images and returns :class:`Prediction` objects. Safe to call from one thread
    at a time (the batch job runs inference in one thread).
    """

    def __init__(
        self,
        files: ModelFiles,
        *,
        device: str = "auto",
        threads: int = 0,
        events: Events | None = None,
        session_config: Mapping[str, str] | None = None,
    ) -> None:
        events = events or Events()
        self.files = files
        self.name = files.name
        self.labels: Labels = read_labels(files.labels_path)
        opened = open_session(
            files.model_path,
            device=device,
            threads=threads,
            events=events,
            session_config=session_config,
            task="Tagging",
            what="the tagger",
            min_onnxruntime=check_onnxruntime_version(files.spec, _ort_version()),
            load_hint="WD v3 taggers need onnxruntime >= 1.17; upgrade onnxruntime (or onnxruntime-gpu).",
        )
        self.session = opened.session
        self.providers: list[str] = opened.providers
        self.warnings: list[str] = opened.warnings  # why no GPU is used; repeated each time the tagger is reused
        self.input: ModelInput = read_input(self.session, f"The model {files.model_path}")
        self.output_name: str = self.session.get_outputs()[0].name
        n_out = self.session.get_outputs()[0].shape[1]
        if isinstance(n_out, int) and n_out != len(self.labels):
            raise self._label_mismatch(n_out)
        self._lock = threading.Lock()

    def _label_mismatch(self, n_out: int) -> UserError:
        return UserError(
            f"{self.files.labels_path} lists {len(self.labels)} tags but the model {self.files.model_path} "
            f"has {n_out} outputs; they do not belong together.",
            "Use the selected_tags.csv that came with this model.onnx.",
        )

    @property
    def size(self) -> int:
        return self.input.size

    @property
    def device(self) -> str:
        return device_name(self.providers)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Scores ``[N, labels]`` for prepared images ``[N, size, size, 3]`` (float32, BGR, 0..255)."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        n = batch.shape[0]
        fixed = self.input.batch
        with self._lock:
            if fixed is None:
                chunks = [batch]
            else:
                chunks = []
                for start in range(0, n, fixed):
                    chunk = batch[start : start + fixed]
                    if chunk.shape[0] < fixed:  # pad the last chunk; the padding's scores are dropped
                        pad = np.zeros((fixed - chunk.shape[0], *chunk.shape[1:]), dtype=np.float32)
                        chunk = np.concatenate([chunk, pad])
                    chunks.append(chunk)
            outputs = [self.session.run([self.output_name], {self.input.name: c})[0] for c in chunks]
        scores = np.concatenate(outputs)[:n]
        if scores.ndim != 2 or scores.shape[1] != len(self.labels):
            raise self._label_mismatch(scores.shape[-1])
        return scores.astype(np.float32, copy=False)

    def tag(self, images: Sequence[Image.Image], options: TagOptions | None = None) -> list[Prediction]:
        """Tag PIL images (e.g. one image in the UI); the caption tags are in ``Prediction.tags``."""
        options = options or TagOptions()
        if not images:
            return []
        scores = self.predict(np.stack([prepare_image(image, self.size) for image in images]))
        return [predict_tags(row, self.labels, options) for row in scores]

    def close(self) -> None:
        """Drop the session (frees its memory; VRAM on a GPU)."""
        self.__dict__.pop("session", None)


class SessionCache:
    """Models (tagger, LaMa) loaded once per device, thread count and model files as they are on disk
    (a replaced file loads again); a hit repeats the load's warnings (e.g. no GPU provider) to the new
    caller. Items have ``warnings`` and ``close()``."""

    def __init__(self) -> None:
        self._items: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def get(
        self, device: str, threads: int, files: Sequence[os.PathLike], make: Callable[[], Any], events: Events | None
    ) -> Any:
        key = (device.lower(), threads) + tuple(
            (os.fspath(Path(f).resolve()), os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in files
        )
        with self._lock:
            item = self._items.get(key)
            if item is None:
                item = self._items[key] = make()
            elif events is not None:
                for text in item.warnings:
                    events.warning(text)
            return item

    def clear(self) -> int:
        """Close and drop every cached model; returns how many there were."""
        with self._lock:
            count = len(self._items)
            for item in self._items.values():
                item.close()
            self._items.clear()
        return count


_CACHE = SessionCache()


def load_tagger(
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str = "auto",
    threads: int = 0,
    cache_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
    endpoint: str | None = None,
    events: Events | None = None,
) -> Tagger:
    """The tagger for ``model`` (registry name or local folder), loaded once and kept until
    :func:`unload_taggers`. Downloads the model on first use unless ``allow_download`` is False."""
    files = resolve_model(model, cache_dir=cache_dir, allow_download=allow_download, endpoint=endpoint, events=events)
    return _CACHE.get(
        device, threads, (files.model_path, files.labels_path),
        lambda: Tagger(files, device=device, threads=threads, events=events), events,
    )  # fmt: skip


def unload_taggers() -> int:
    """Release every cached tagger session; returns how many were released."""
    return _CACHE.clear()
