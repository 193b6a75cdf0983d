"""Which LaMa models exist and where the file is: a registry entry in the shared HF cache, or a local ``.onnx``.

Registry facts (Hub pages, read for this module):

- ``Carve/LaMa-ONNX`` ``lama_fp32.onnx`` (208 MB, Apache-2.0; the card calls it RECOMMENDED): big-lama
  exported with ``torch.onnx.export``, opset 17, input shape fixed at 512x512. Pinned to the commit
  ``c3c0c9e4…`` (the repo's main at the time of writing). Its export notebook
  (``Carve-Photos/lama`` ``export_LaMa_to_onnx.ipynb``) names the inputs ``image`` and ``mask`` and the
  output ``output`` with a dynamic batch axis. The Hub's scanner marks the file "suspicious"; an ONNX
  file is a protobuf graph that onnxruntime parses, never a pickle, so nothing in it is executed.
- ``g-ronimo/lama`` ``lama.onnx`` (209 MB): big-lama with one input ``input [1, 4, H, W]`` (masked RGB
  in 0..1 with the hole zeroed + the binary mask), H and W multiples of 32, output ``[1, 3, H, W]`` RGB
  in 0..1 (its model card). Main branch (no tag published).

The file is fetched once with ``hf_hub_download`` through the tagger's helpers (same cache, same
progress reporting). ``huggingface_hub`` is imported only when the cache is consulted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lib_lora.common.errors import UserError
from lib_lora.events import Events


@dataclass(frozen=True)
class LamaSpec:
    name: str
    repo_id: str
    filename: str
    revision: str | None
    size_mb: int
    about: str

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}"


MODELS: dict[str, LamaSpec] = {
    spec.name: spec
    for spec in (
        LamaSpec(
            "lama-carve",
            "Carve/LaMa-ONNX",
            "lama_fp32.onnx",
            "c3c0c9e468934d62e79c329e35d82dd09ff8c444",
            208,
            "big-lama, image + mask inputs at a fixed 512x512",
        ),
        LamaSpec(
            "lama-dynamic",
            "g-ronimo/lama",
            "lama.onnx",
            None,
            209,
            "big-lama, one 4-channel input at any size (multiples of 32)",
        ),
    )
}
DEFAULT_MODEL = "lama-carve"


@dataclass(frozen=True)
class LamaFile:
    name: str  # registry name, or the file name of a local model
    path: Path
    spec: LamaSpec | None
    source: str  # "file" | "cache" | "download"


def find_spec(name: str) -> LamaSpec | None:
    wanted = name.strip().lower()
    for spec in MODELS.values():
        if wanted in (spec.name, spec.repo_id.lower(), f"{spec.repo_id}/{spec.filename}".lower()):
            return spec
    return None


def _placement_hint(spec: LamaSpec) -> str:
    return (
        f"Download {spec.filename} from {spec.url} and give its path as the model (any .onnx with LaMa's "
        "inputs works), or run once with internet access to fill the Hugging Face cache."
    )


def cached_file(spec: LamaSpec, cache_dir: str | os.PathLike | None = None) -> Path | None:
    from lib_lora.tagger.models import cached_hub_file

    return cached_hub_file(spec.repo_id, spec.filename, spec.revision, cache_dir)


def is_cached(name: str, cache_dir: str | os.PathLike | None = None) -> bool:
    if Path(name).expanduser().is_file():
        return True
    spec = find_spec(name)
    try:
        return spec is not None and cached_file(spec, cache_dir) is not None
    except Exception:  # a broken cache folder must not break a listing
        return False


def resolve_lama(
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    cache_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
    endpoint: str | None = None,
    events: Events | None = None,
) -> LamaFile:
    """A registry name or a local ``.onnx`` path -> the model file on disk (downloaded on first use)."""
    text = os.fspath(model).strip()
    if not text:
        raise UserError("No inpainting model chosen: pick one from the list or give the path of a LaMa .onnx file.")
    path = Path(text).expanduser()
    if path.is_dir():
        candidates = sorted(path.glob("*.onnx"))
        if len(candidates) != 1:
            raise UserError(f"The folder {path} must hold exactly one .onnx file (LaMa), not {len(candidates)}.")
        path = candidates[0]
    if path.is_file():
        if path.suffix.lower() != ".onnx":
            raise UserError(f"The inpainting model {path} is not an .onnx file.")
        return LamaFile(path.name, path, None, "file")
    spec = find_spec(text)
    if spec is None:
        if text.lower().endswith(".onnx") or os.sep in text or "/" in text:
            raise UserError(f"The inpainting model file {text} does not exist.")
        raise UserError(
            f"Unknown inpainting model {text!r}.",
            f"Use {' or '.join(MODELS)}, or the path of a LaMa .onnx file.",
        )
    found = cached_file(spec, cache_dir)
    if found is not None:
        return LamaFile(spec.name, found, spec, "cache")
    from huggingface_hub import constants

    if not allow_download or constants.HF_HUB_OFFLINE:
        why = "downloads are turned off" if not allow_download else "HF_HUB_OFFLINE is set"
        raise UserError(
            f"The inpainting model {spec.name} is not in the Hugging Face cache and {why}.", _placement_hint(spec)
        )
    from lib_lora.tagger.models import download_hub_file

    try:
        downloaded = download_hub_file(spec.repo_id, spec.filename, spec.revision, cache_dir, endpoint, events)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"The inpainting model {spec.name} is not in the Hugging Face cache and could not be downloaded "
            f"from {spec.repo_id} ({type(exc).__name__}: {reason}).",
            _placement_hint(spec),
        ) from exc
    return LamaFile(spec.name, downloaded, spec, "download")
