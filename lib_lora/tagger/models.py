"""Which tagger models exist and where their files are.

The registry lists SmilingWolf's WD taggers (v2 and v3). A model's two files (``model.onnx``,
``selected_tags.csv``) live in the shared Hugging Face cache, so other tools reuse them; they are
downloaded lazily, one model at a time, the first time the model is used. Any local folder holding
those two files is a model too. ``huggingface_hub`` is imported only when the cache is consulted.

``demo-tagger`` is built in: a tiny ONNX model (a few KB, shipped in ``tagger/demo_tagger/``) with
the real WD I/O contract — NHWC float32 BGR 0..255 input, sigmoid scores over a
``selected_tags.csv`` with ratings, general and character rows — whose scores come only from the
image's mean colour. It tags the demo dataset's colours (red theme, blue sky, green theme...), so the
quick start runs offline end to end; it knows nothing of real images. It is a shipped file rather
than one generated at first use because generating needs the ``onnx`` package, a development
dependency only (tests/support/tagger_tiny.py makes it; a test checks the shipped file is what it makes).

:func:`cached_hub_file` and :func:`download_hub_file` (cache lookup; a resumable download that
reports its progress) are shared with the dataset cleaner's LaMa model.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from lib_lora.common.errors import UserError
from lib_lora.events import Events
from lib_lora.tagger.labels import LABELS_FILE

log = logging.getLogger("lib_lora.tagger")
MODEL_FILE = "model.onnx"
V3_MIN_ONNXRUNTIME = "1.17.0"


@dataclass(frozen=True)
class ModelSpec:
    """One downloadable tagger."""

    name: str  # the repo's own name, e.g. "wd-v1-4-swinv2-tagger-v2"
    repo_id: str
    revision: str | None  # a pinned tag; None = the repo's main branch
    generation: str  # "v2" | "v3"
    size_mb: int  # model.onnx, roughly
    balanced_threshold: float | None  # precision = recall threshold from the model card
    min_onnxruntime: str | None = None
    general_threshold: float = 0.35  # the official Space's defaults
    character_threshold: float = 0.85
    model_file: str = MODEL_FILE
    labels_file: str = LABELS_FILE

    @property
    def short_name(self) -> str:
        """``wd-v1-4-swinv2-tagger-v2`` -> ``swinv2-v2``; ``wd-vit-large-tagger-v3`` -> ``vit-large-v3``."""
        return self.name.removeprefix("wd-v1-4-").removeprefix("wd-").replace("-tagger", "")

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}"


def _v2(name: str, revision: str | None, size_mb: int, threshold: float, min_ort: str | None = None) -> ModelSpec:
    return ModelSpec(name, f"SmilingWolf/{name}", revision, "v2", size_mb, threshold, min_ort)


def _v3(name: str, size_mb: int, threshold: float | None) -> ModelSpec:
    return ModelSpec(name, f"SmilingWolf/{name}", None, "v3", size_mb, threshold, V3_MIN_ONNXRUNTIME)


# The v2.0 tag is pinned where it is the final export. swinv2-v2's main branch is its v2.1 export
# (dynamic batch, needs onnxruntime >= 1.17); v3 and moat-v2 follow main.
MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _v2("wd-v1-4-swinv2-tagger-v2", None, 455, 0.3771, V3_MIN_ONNXRUNTIME),
        _v2("wd-v1-4-convnext-tagger-v2", "v2.0", 388, 0.3685),
        _v2("wd-v1-4-convnextv2-tagger-v2", "v2.0", 388, 0.3710),
        _v2("wd-v1-4-vit-tagger-v2", "v2.0", 373, 0.3537),
        _v2("wd-v1-4-moat-tagger-v2", None, 326, 0.3771),
        _v3("wd-swinv2-tagger-v3", 467, 0.2653),
        _v3("wd-convnext-tagger-v3", 395, 0.2682),
        _v3("wd-vit-tagger-v3", 379, 0.2614),
        _v3("wd-vit-large-tagger-v3", 1260, None),
        _v3("wd-eva02-large-tagger-v3", 1260, 0.5296),
    )
}
DEFAULT_MODEL = "wd-v1-4-swinv2-tagger-v2"
DEMO_MODEL = "demo-tagger"
DEMO_FOLDER = Path(__file__).resolve().parent / "demo_tagger"


def is_demo(name: str | os.PathLike) -> bool:
    return os.fspath(name).strip().lower() == DEMO_MODEL


def demo_model_files() -> ModelFiles:
    """The built-in demo tagger's files (see the module docstring)."""
    model_path, labels_path = DEMO_FOLDER / MODEL_FILE, DEMO_FOLDER / LABELS_FILE
    if not (model_path.is_file() and labels_path.is_file()):
        raise UserError(f"The built-in {DEMO_MODEL} is missing from {DEMO_FOLDER}: reinstall Train LoRA.")
    return ModelFiles(DEMO_MODEL, model_path, labels_path, None, "builtin")


def find_spec(name: str) -> ModelSpec | None:
    """A registry entry by name, short name (``convnext-v3``) or repo id, case-insensitive."""
    wanted = name.strip().lower()
    for spec in MODELS.values():
        if wanted in (spec.name.lower(), spec.short_name.lower(), spec.repo_id.lower()):
            return spec
    return None


@dataclass(frozen=True)
class ModelFiles:
    """Where one model's files are on disk."""

    name: str  # registry name, or the folder name for a local model
    model_path: Path
    labels_path: Path
    spec: ModelSpec | None  # None for a local folder
    source: str  # "folder" | "cache" | "download"


def local_model_files(path: str | os.PathLike) -> ModelFiles:
    """A local model: a folder holding ``model.onnx`` and ``selected_tags.csv``, or the ``.onnx`` itself."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".onnx":
            raise UserError(f"The tagger model {path} is not an .onnx file.")
        folder, model_path = path.parent, path
    elif path.is_dir():
        folder, model_path = path, path / MODEL_FILE
        if not model_path.is_file():
            onnx_files = sorted(path.glob("*.onnx"))
            if len(onnx_files) != 1:
                raise UserError(
                    f"The model folder {path} has no {MODEL_FILE}.",
                    "Put the tagger's model.onnx and selected_tags.csv in that folder.",
                )
            model_path = onnx_files[0]
    else:
        raise UserError(f"The tagger model folder {path} does not exist.")
    labels_path = folder / LABELS_FILE
    if not labels_path.is_file():
        raise UserError(
            f"The model folder {folder} has no {LABELS_FILE} (the tagger's label list).",
            f"Put the {LABELS_FILE} that came with {model_path.name} beside it.",
        )
    return ModelFiles(folder.name, model_path, labels_path, None, "folder")


def default_cache_dir() -> Path:
    """The shared Hugging Face hub cache (``HF_HUB_CACHE`` / ``HF_HOME`` respected)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _repo_cache_folder(repo_id: str, cache_dir: str | os.PathLike | None) -> Path:
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return root / ("models--" + repo_id.replace("/", "--"))


def cached_hub_file(
    repo_id: str, filename: str, revision: str | None, cache_dir: str | os.PathLike | None = None
) -> Path | None:
    """One file of a Hub repo from the local HF cache (no network): the pinned revision, else ``main``."""
    from huggingface_hub import try_to_load_from_cache

    for rev in [revision, "main"] if revision and revision != "main" else ["main"]:
        hit = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=rev)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def cached_model_files(spec: ModelSpec, cache_dir: str | os.PathLike | None = None) -> ModelFiles | None:
    """The model's files from the local HF cache (no network): the pinned revision, else ``main``."""
    from huggingface_hub import try_to_load_from_cache

    revisions = [spec.revision, "main"] if spec.revision else ["main"]
    for revision in revisions:
        found = []
        for filename in (spec.model_file, spec.labels_file):
            hit = try_to_load_from_cache(spec.repo_id, filename, cache_dir=cache_dir, revision=revision)
            if isinstance(hit, str) and Path(hit).is_file():
                found.append(Path(hit))
        if len(found) == 2:
            return ModelFiles(spec.name, found[0], found[1], spec, "cache")
    return None


def manual_placement_hint(spec: ModelSpec) -> str:
    """The fix, as the end of the one sentence that says the model is missing."""
    revision = f" (revision {spec.revision})" if spec.revision else ""
    return (
        f"connect to the internet once, or put {spec.model_file} and {spec.labels_file} from {spec.url}{revision} "
        f"in one folder and pass that folder as the model ({DEMO_MODEL} needs no download)"
    )


def _is_offline(exc: BaseException) -> bool:
    """A download that failed for want of a connection (not a refusal by the server)."""
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    offline = {"LocalEntryNotFoundError", "ConnectionError", "ConnectTimeout", "ReadTimeout", "OfflineModeIsEnabled"}
    return bool(names & offline)


@contextmanager
def _watch_download(folder: Path, filename: str, total: int, events: Events) -> Iterator[None]:
    """Report the growing ``*.incomplete`` blob of a download as ``progress("downloading", ...)``."""
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.5):
            size = 0
            for blob in folder.glob("*.incomplete"):
                with suppress(OSError):
                    size += blob.stat().st_size
            events.progress("downloading", size, total, filename)

    thread = threading.Thread(target=poll, name="tagger-download-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def download_hub_file(
    repo_id: str,
    filename: str,
    revision: str | None,
    cache_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    events: Events | None = None,
) -> Path:
    """``hf_hub_download`` into the HF cache (resuming a partial download), its progress reported as
    ``events.progress("downloading", bytes, total, filename)``. Exceptions are huggingface_hub's own."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    events = events or Events()
    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
    try:
        total = int(get_hf_file_metadata(url).size or 0)
    except Exception:  # the download below reports the real problem
        total = 0
    about = f" ({total / 1e6:.0f} MB)" if total > 1e6 else ""
    events.info(f"Downloading {filename}{about} of {repo_id} into the Hugging Face cache.")
    blobs = _repo_cache_folder(repo_id, cache_dir) / "blobs"
    with _watch_download(blobs, filename, total, events):
        path = hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, endpoint=endpoint)
    events.progress("downloading", total, total, filename)
    return Path(path)


def download_model_files(
    spec: ModelSpec,
    cache_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    events: Events | None = None,
) -> ModelFiles:
    """Download the model's two files into the HF cache (resuming a partial download)."""
    paths = []
    for filename in (spec.labels_file, spec.model_file):
        try:
            path = download_hub_file(spec.repo_id, filename, spec.revision, cache_dir, endpoint, events)
        except Exception as exc:  # one sentence with the fix; the hub's own words go to the log
            log.info("Downloading %s of %s failed: %r", filename, spec.repo_id, exc)
            if _is_offline(exc):
                why = "Hugging Face cannot be reached"
            else:
                first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
                why = f"it could not be downloaded from {spec.repo_id} ({first or type(exc).__name__})"
            raise UserError(
                f"The tagger model {spec.name} ({spec.repo_id}) is not downloaded yet and {why}: "
                f"{manual_placement_hint(spec)}."
            ) from exc
        paths.append(path)
    return ModelFiles(spec.name, paths[1], paths[0], spec, "download")


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "~")) or os.sep in name or (os.altsep is not None and os.altsep in name)


def resolve_model(
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    cache_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
    endpoint: str | None = None,
    events: Events | None = None,
) -> ModelFiles:
    """A registry name (or short name / repo id) or a local path -> the model's files on disk.

    Order: an existing local path; the HF cache; a download (unless ``allow_download`` is False or
    ``HF_HUB_OFFLINE`` is set). With neither cache nor network the error names the repo and how to
    place the files by hand.
    """
    text = os.fspath(model)
    if is_demo(text):
        return demo_model_files()
    if Path(text).expanduser().exists():
        return local_model_files(text)
    spec = find_spec(text)
    if spec is None:
        if _looks_like_path(text) or text.lower().endswith(".onnx"):
            raise UserError(f"The tagger model folder {text} does not exist.")
        names = ", ".join(s.short_name for s in MODELS.values())
        raise UserError(
            f"Unknown tagger model {text!r}.",
            f"Use one of {names} (or a full name such as {DEFAULT_MODEL}), or a folder holding "
            f"{MODEL_FILE} and {LABELS_FILE}.",
        )
    cached = cached_model_files(spec, cache_dir)
    if cached is not None:
        return cached
    from huggingface_hub import constants

    if not allow_download or constants.HF_HUB_OFFLINE:
        why = "downloads are turned off" if not allow_download else "HF_HUB_OFFLINE is set"
        raise UserError(
            f"The tagger model {spec.name} ({spec.repo_id}) is not in the Hugging Face cache and {why}: "
            f"{manual_placement_hint(spec).replace('connect to the internet once', 'allow one download', 1)}."
        )
    return download_model_files(spec, cache_dir=cache_dir, endpoint=endpoint, events=events)


def is_cached(model: str, cache_dir: str | os.PathLike | None = None) -> bool:
    """True when a registry model's files are already in the cache (or ``model`` is a local folder)."""
    if is_demo(model) or Path(model).expanduser().exists():
        return True
    spec = find_spec(model)
    return spec is not None and cached_model_files(spec, cache_dir) is not None
