"""The Test sub-tab's inputs: a LoRA's saved files (newest run) and default test prompts."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lib_lora.captions.model import LoadOptions, load_dataset, tag_frequency
from lib_lora.common.errors import UserError
from lib_lora.formats.safetensors_io import read_header

_NAME = re.compile(r"^(?P<name>.+?)(?:-(?P<epoch>\d{6})|-step(?P<step>\d{8}))?$")


@dataclass(frozen=True)
class LoraFile:
    path: Path
    epoch: int | None
    step: int | None
    session: str | None
    mtime: float

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def label(self) -> str:
        where = []
        if self.epoch is not None:
            where.append(f"epoch {self.epoch}")
        if self.step is not None:
            where.append(f"step {self.step}")
        return f"{self.stem} ({', '.join(where)})" if where else self.stem


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "", "None") else None
    except ValueError:
        return None


def run_name(path: str | os.PathLike) -> str:
    """The run name of a saved file: ``mylora`` for ``mylora-000005.safetensors`` or ``mylora-step00000100``."""
    match = _NAME.match(Path(path).stem)
    return match.group("name") if match else Path(path).stem


def list_lora_files(output_dir: str | os.PathLike, name: str, newest_run_only: bool = True) -> list[LoraFile]:
    """``name.safetensors``, ``name-000005.safetensors`` and ``name-step00000100.safetensors`` in
    ``output_dir``, in training order. With ``newest_run_only`` only the files of the run that wrote
    the newest one (same ``ss_session_id``) are kept, so an older run's epochs are not mixed in."""
    folder = Path(str(output_dir or "")).expanduser()
    name = (name or "").strip()
    if not name or not folder.is_dir():
        return []
    found: list[LoraFile] = []
    for path in folder.glob("*.safetensors"):
        match = _NAME.match(path.stem)
        if not match or match.group("name") != name:
            continue
        try:
            meta = read_header(path).metadata
        except UserError:
            continue  # half-written or not a safetensors file: not offered
        epoch = _int(meta.get("ss_epoch")) if match.group("epoch") is None else int(match.group("epoch"))
        step = _int(meta.get("ss_steps")) if match.group("step") is None else int(match.group("step"))
        found.append(LoraFile(path, epoch, step, meta.get("ss_session_id"), path.stat().st_mtime))
    if newest_run_only and found:
        newest = max(found, key=lambda f: f.mtime)
        if newest.session:
            found = [f for f in found if f.session == newest.session]
    return sorted(found, key=lambda f: (f.step or 0, f.epoch or 0, f.mtime))


def activation_text(lora: str | os.PathLike) -> str:
    """The ``activation text`` of a LoRA file's ``name.json`` ("" when there is none)."""
    side = Path(lora).with_suffix(".json")
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(data.get("activation text", "") or "") if isinstance(data, dict) else ""


def frequent_tags(dataset: str | os.PathLike, count: int = 6, exclude: tuple[str, ...] = ()) -> list[str]:
    """The ``count`` most frequent caption tags of a dataset (ties alphabetical)."""
    text = str(dataset or "").strip()
    if not text or not Path(text).expanduser().is_dir():
        return []
    data = load_dataset(Path(text).expanduser(), LoadOptions())
    skip = {t.strip().lower() for t in exclude}
    ranked = sorted(tag_frequency(data.items).items(), key=lambda kv: (-kv[1], kv[0]))
    return [tag for tag, _ in ranked if tag.lower() not in skip][:count]


def default_prompts(activation: str, dataset: str | os.PathLike = "", count: int = 6) -> list[str]:
    """The activation text with the dataset's most frequent tags, and the activation text alone."""
    words = [w.strip() for w in (activation or "").split(",") if w.strip()]
    tags = frequent_tags(dataset, count, tuple(words)) if dataset else []
    prompts = []
    if words or tags:
        prompts.append(", ".join(words + tags))
    if words and tags:
        prompts.append(", ".join(words))
    return prompts
