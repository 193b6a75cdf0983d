"""Tagging a dataset folder from a front end: the model list, the provider notice, one run.

A thin layer over ``lib_lora.tagger`` so the UI (which may only import ``jobs``) builds one
:class:`TagRequest` from its controls and gets a :class:`TagFolderResult` and a summary line back.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass

from lib_lora.common.errors import UserError
from lib_lora.common.text import plural, plural_word
from lib_lora.events import Events, StopToken
from lib_lora.tagger import (
    DEFAULT_MODEL,
    DEMO_MODEL,
    EXISTING_POLICIES,
    MODELS,
    TagFolderOptions,
    TagFolderResult,
    TagOptions,
    is_cached,
    plan_providers,
    tag_folder,
)

__all__ = ["DEFAULT_MODEL", "EXISTING_POLICIES", "TagRequest", "model_choices", "provider_notice", "run_tagging"]

# the policies as a UI lists them (value, label)
POLICY_LABELS = {
    "skip": "skip: keep existing captions (tag only images without one)",
    "overwrite": "overwrite existing captions",
    "append": "append new tags to existing captions",
    "prepend": "prepend new tags to existing captions",
}


def model_choices() -> list[str]:
    """The registry's tagger names, default first; the built-in demo tagger last."""
    return [DEFAULT_MODEL] + [name for name in MODELS if name != DEFAULT_MODEL] + [DEMO_MODEL]


def model_note(name: str) -> str:
    """One line about a registry model: size and whether it is already downloaded."""
    if name == DEMO_MODEL:
        return (
            f"{DEMO_MODEL}: the built-in demo tagger (tiny, no download). It only sees colours: fine for the demo "
            "dataset, useless on real images; choose a WD tagger for those."
        )
    spec = MODELS.get(name)
    if spec is None:
        return ""
    try:
        cached = is_cached(name)
    except Exception:  # a broken cache folder must not break the UI
        cached = False
    where = "downloaded" if cached else f"downloads {spec.size_mb} MB from {spec.repo_id} on first use"
    return f"{spec.name}: {where}; suggested threshold {spec.general_threshold}."


def provider_notice(device: str = "auto") -> str | None:
    """The visible warning shown before tagging when it would run on the CPU (None when a GPU
    build of onnxruntime is installed or the CPU was asked for).

    Judged from the installed onnxruntime packages without importing onnxruntime (cheap at page
    load); a GPU build that then fails to start is reported by the run itself."""
    from lib_lora.tagger.session import CPU, CUDA, DIRECTML, _installed_ort_packages

    packages = _installed_ort_packages()
    if not packages:
        return "onnxruntime is not installed: tagging is unavailable (pip install onnxruntime, or onnxruntime-gpu)."
    available = [CPU]
    if "onnxruntime-gpu" in packages:
        available.insert(0, CUDA)
    if "onnxruntime-directml" in packages:
        available.insert(0, DIRECTML)
    try:
        version = importlib.metadata.version(packages[0])
    except importlib.metadata.PackageNotFoundError:
        version = ""
    return plan_providers(device, available, version, packages).warning


@dataclass(frozen=True)
class TagRequest:
    """What the Tag & edit sub-tab collects."""

    folder: str
    model: str = DEFAULT_MODEL  # registry name
    local_model: str = ""  # a folder with model.onnx + selected_tags.csv; wins over ``model``
    general_threshold: float = 0.35
    character_threshold: float = 0.85
    general_mcut: bool = False
    character_mcut: bool = False
    existing: str = "skip"
    activation_tag: str = ""  # written first in every caption
    exclude_tags: str = ""  # comma-separated
    batch_size: int = 8
    device: str = "auto"
    caption_extension: str = ".txt"  # the Train tab's "Caption file extension": where training reads captions

    def options(self) -> TagFolderOptions:
        folder = (self.folder or "").strip()
        if not folder:
            raise UserError("No dataset folder chosen: choose it in the Dataset tab first.")
        model = (self.local_model or "").strip() or (self.model or "").strip()
        if not model:
            raise UserError("No tagger model chosen: pick one from the list or give a local model folder.")
        if (self.local_model or "").strip() and not os.path.exists(os.path.expanduser(model)):
            raise UserError(
                f"The local tagger folder {model} does not exist (it must hold model.onnx and selected_tags.csv)."
            )
        tags = TagOptions(
            general_threshold=float(self.general_threshold),
            character_threshold=float(self.character_threshold),
            general_mcut=bool(self.general_mcut),
            character_mcut=bool(self.character_mcut),
            exclude_tags=tuple(t.strip() for t in (self.exclude_tags or "").split(",") if t.strip()),
            additional_tags=tuple(t.strip() for t in (self.activation_tag or "").split(",") if t.strip()),
        )
        return TagFolderOptions(
            folder=os.path.expanduser(folder),
            model=os.path.expanduser(model),
            tags=tags,
            existing=self.existing,
            batch_size=int(self.batch_size),
            confidences=True,
            device=self.device,
            caption_extension=self.caption_extension,
        )


def run_tagging(request: TagRequest, events: Events | None = None, stop: StopToken | None = None) -> TagFolderResult:
    return tag_folder(request.options(), events, stop)


def summary(result: TagFolderResult) -> str:
    if not result.images:
        return f"No images found in {result.folder}: nothing to tag."
    skipped = (
        f"{plural(len(result.failed), 'image')} skipped ({result.failed[0].path.name}: {result.failed[0].reason})"
        if result.failed
        else ""
    )
    if not result.model:  # nothing was left to tag: the model was not even loaded
        reasons = [skipped] if skipped else []
        if result.kept:
            which = (
                "the only image already has"
                if result.images == 1
                else f"all {result.images} images already have"
                if result.kept == result.images
                else f"{plural(result.kept, 'image')} already {plural_word(result.kept, 'has')}"
            )
            reasons.insert(
                0,
                f"{which} a caption, kept as 'Existing captions: skip' says "
                "(choose overwrite, append or prepend to tag again)",
            )
        return f"Nothing to tag in {result.folder}: " + "; ".join(reasons) + "."
    parts = [f"{plural(result.written, 'caption')} written"]
    if result.unchanged:
        parts.append(f"{result.unchanged} unchanged")
    if result.kept:
        parts.append(f"{plural(result.kept, 'existing caption')} kept")
    if skipped:
        parts.append(skipped)
    if result.stopped:
        parts.append("stopped before the end")
    where = f" with {result.model} on {result.device}" if result.model else ""
    # the images that could not be read were not tagged: "Tagged 13 of 15", never "Tagged 15 ... 2 skipped"
    done = f"{result.images - len(result.failed)} of {result.images}" if result.failed else str(result.images)
    return f"Tagged {done} {plural_word(result.images, 'image')}{where}: " + ", ".join(parts) + "."
