"""Pick the best epoch: render every epoch file at fixed seeds, tag the images, score, recommend one.

The host renders (the webui's txt2img with ``<lora:…>``, or the standalone sampler): a
:data:`Renderer` gets LoRA files, prompts, a weight and a seed and returns the images row-major
(each file, every prompt; prompt ``i`` at ``seed + i``), exactly what the Test grid renders. A
:data:`TagScorer` (the built-in WD tagger, see :func:`tagger_scorer`) turns images into tag
confidences. Per epoch and seed:

- the activation prompt -> *fidelity*: the character's core tags (those in at least
  ``core_threshold`` of the training captions, from the file's ``ss_tag_frequency`` — the rule the
  caption editor's suggestions use) found by the tagger;
- the activation prompt + each flexibility prompt (outfits, places, poses the dataset never had)
  -> *flexibility*: the tagger's confidence in that prompt's tags;
- each drift prompt (no activation tag) with the LoRA, against the same prompt and seed at weight
  0 -> *drift*.

:mod:`lib_lora.jobs.score_math` combines them and decides whether one epoch is clearly best.
:func:`keep_epoch` then makes the chosen file ``name.safetensors`` and moves the others into
``archive/`` (moved, never deleted).

:func:`score_finished_run` does the same by itself when a training ends (``score_epochs``; each host
calls it with its own renderer once its model is restored): the pick in words for the result, and in
the final file's metadata under our own ``lora_trainer_*`` keys (only the header is rewritten: the
tensor bytes, and so ``sshs_model_hash``, stay as they were), its ``name.json`` notes and the log.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib_lora.captions.model import ranked_counts
from lib_lora.common.errors import UserError
from lib_lora.common.tags import split_tags
from lib_lora.common.text import plural
from lib_lora.events import Events, StopRequested, StopToken
from lib_lora.formats.safetensors_io import read_header
from lib_lora.jobs.epochs import LoraFile, activation_text, list_lora_files
from lib_lora.jobs.score_math import (
    DEFAULT_BETA,
    EpochScore,
    Pick,
    SeedScore,
    cosine_drift,
    normalize_tag,
    pick_best,
    tag_confidence,
)
from lib_lora.jobs.score_math import mean as _mean

# (lora files, prompts, weight, seed, events, stop) -> images row-major; prompt i is rendered at seed + i
Renderer = Callable[[Sequence[Path], Sequence[str], float, int, Events, StopToken], list[Any]]
TagScorer = Callable[[Sequence[Any]], list[dict[str, float]]]  # images -> {tag: confidence} each

DEFAULT_FLEXIBILITY_PROMPTS = (
    "red dress",
    "school uniform",
    "beach, ocean",
    "city street, night",
    "sitting, chair",
    "arms up",
)
DEFAULT_DRIFT_PROMPTS = ("1girl, solo, standing, outdoors", "landscape, mountain, sky, no humans")
DEFAULT_SEEDS = (1234, 5678, 9012)
CORE_THRESHOLD = 0.5
ARCHIVE_DIR = "archive"
SIDE_SUFFIXES = (".json", ".preview.png", ".png", ".jpg", ".jpeg", ".webp", ".preview.jpg", ".preview.webp")


@dataclass(frozen=True)
class ScoreSettings:
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    flexibility_prompts: tuple[str, ...] = DEFAULT_FLEXIBILITY_PROMPTS
    drift_prompts: tuple[str, ...] = DEFAULT_DRIFT_PROMPTS
    beta: float = DEFAULT_BETA
    weight: float = 1.0
    core_threshold: float = CORE_THRESHOLD

    def images_per_epoch(self) -> int:
        return len(self.seeds) * (1 + len(self.flexibility_prompts) + len(self.drift_prompts))

    def base_images(self) -> int:
        """Images of the base model (weight 0) for the drift comparison, once per run."""
        return len(self.seeds) * len(self.drift_prompts)


@dataclass
class ScoreReport:
    scores: list[EpochScore]
    pick: Pick
    core_tags: list[str]
    activation: str
    images: int
    seconds: float
    files: list[Path] = field(default_factory=list)

    @property
    def best(self) -> EpochScore | None:
        return self.scores[self.pick.best] if self.pick.best is not None else None

    def table_rows(self) -> list[list[str]]:
        rows = []
        for i, s in enumerate(self.scores):
            mark = "*" if i == self.pick.best else ("~" if i in self.pick.tied else "")
            rows.append(
                [
                    s.label, "" if s.epoch is None else str(s.epoch),
                    f"{s.fidelity:.3f}" if self.core_tags else "not measured", f"{s.flexibility:.3f}",
                    f"{s.drift:.3f}", f"{s.score:.3f}", f"±{s.spread:.3f}",
                    "" if s.validation_loss is None else f"{s.validation_loss:.4f}", mark,
                ]
            )  # fmt: skip
        return rows

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {
            "pick": None if best is None else {"file": str(self.files[self.pick.best]), "label": best.label, "epoch": best.epoch},
            "confident": self.pick.confident,
            "tied": [self.scores[i].label for i in self.pick.tied],
            "reason": self.pick.reason,
            "core_tags": self.core_tags,
            "fidelity_measured": bool(self.core_tags),  # False: no core tags, each fidelity is a stand-in 1
            "activation": self.activation,
            "images": self.images,
            "seconds": round(self.seconds, 2),
            "epochs": [
                {
                    "file": str(path), "label": s.label, "epoch": s.epoch, "fidelity": s.fidelity,
                    "flexibility": s.flexibility, "drift": s.drift, "score": s.score, "spread": s.spread,
                    "per_seed": s.per_seed, "validation_loss": s.validation_loss,
                }
                for path, s in zip(self.files, self.scores)
            ],
        }  # fmt: skip


TABLE_HEADERS = ("file", "epoch", "fidelity", "flexibility", "drift", "score", "noise", "val loss", "pick")


def lora_family(folder: str | os.PathLike, name: str) -> list[LoraFile]:
    """The epoch files and the final file of the newest run of ``name`` (step saves left out)."""
    path = Path(str(folder or "")).expanduser()
    if not path.exists():
        raise UserError(f"The LoRA folder {path.resolve()} does not exist.")
    if not path.is_dir():
        raise UserError(f"{path.resolve()} is a file, not a folder: give the folder that holds the LoRA files.")
    found = [f for f in list_lora_files(folder, name) if "-step" not in f.path.stem]
    if not found:
        raise UserError(f"No LoRA files named {name!r} (name-000001.safetensors ... name.safetensors) in {folder}.")
    return found


def core_tags_of(path: str | os.PathLike, threshold: float = CORE_THRESHOLD, exclude: Sequence[str] = ()) -> list[str]:
    """Tags in at least ``threshold`` of the training captions (``ss_tag_frequency`` over
    ``ss_dataset_dirs``' image counts), the activation tags left out."""
    meta = read_header(path).metadata
    try:
        frequency = json.loads(meta.get("ss_tag_frequency") or "{}")
        dirs = json.loads(meta.get("ss_dataset_dirs") or "{}")
    except json.JSONDecodeError:
        return []
    counts: Counter[str] = Counter()
    for folder in frequency.values():
        counts.update({normalize_tag(tag): int(n) for tag, n in folder.items()})
    total = sum(int(d.get("img_count", 0)) for d in dirs.values()) or max(counts.values(), default=0)
    skip = {normalize_tag(t) for t in exclude}
    return [
        tc.tag for tc in ranked_counts(counts, total) if tc.count >= threshold * total - 1e-9 and tc.tag not in skip
    ]


def _validation_loss(path: Path) -> float | None:
    try:
        value = read_header(path).metadata.get("ss_validation_loss")
        return float(value) if value not in (None, "None") else None
    except (UserError, OSError, ValueError):
        return None


def score_epochs(
    files: Sequence[LoraFile],
    renderer: Renderer,
    tagger: TagScorer,
    settings: ScoreSettings | None = None,
    events: Events | None = None,
    stop: StopToken | None = None,
    *,
    activation: str | None = None,
    core_tags: Sequence[str] | None = None,
) -> ScoreReport:
    """Render, tag and score every file of ``files``; the recommendation is in ``report.pick``."""
    settings = settings or ScoreSettings()
    events = events or Events()
    stop = stop or StopToken()
    if not files:
        raise UserError("No LoRA files to score.")
    if not settings.seeds:
        raise UserError("Scoring needs at least one seed.")
    newest = files[-1].path
    activation = activation if activation is not None else activation_text(newest)
    if not activation.strip():
        raise UserError(f"{newest.name} has no activation text (its .json); give the activation tag to score fidelity.")
    triggers = split_tags(activation)
    core = list(core_tags) if core_tags is not None else core_tags_of(newest, settings.core_threshold, triggers)
    if not core:
        events.warning("No core tags (tags in most training captions): fidelity is not measured (counted as 1).")
    prompts = [activation] + [f"{activation}, {p}" for p in settings.flexibility_prompts] + list(settings.drift_prompts)
    n_flex = len(settings.flexibility_prompts)
    total = settings.images_per_epoch() * len(files) + settings.base_images()
    events.info(
        f"Scoring {plural(len(files), 'file')}: {plural(settings.images_per_epoch(), 'image')} per file "
        f"({plural(len(settings.seeds), 'seed')} x {plural(len(prompts), 'prompt')}) + "
        f"{settings.base_images()} of the base model = {plural(total, 'image')}."
    )
    events.progress("scoring", 0, total, f"0/{total} images")
    started = time.perf_counter()
    done = 0

    def tick(count: int) -> None:
        nonlocal done
        done += count
        elapsed = time.perf_counter() - started
        eta = elapsed / done * (total - done) if done else 0.0
        events.progress("scoring", done, total, f"{done}/{total} images, about {eta:.0f} s left")

    per_file: list[list[SeedScore]] = [[] for _ in files]
    paths = [f.path for f in files]
    for seed in settings.seeds:
        stop.raise_if_requested()
        base_images = renderer([paths[0]], list(settings.drift_prompts), 0.0, seed + 1 + n_flex, events, stop)
        base_tags = tagger(base_images)
        tick(len(base_images))
        for index, path in enumerate(paths):
            stop.raise_if_requested()
            images = renderer([path], prompts, settings.weight, seed, events, stop)
            if len(images) != len(prompts):
                raise UserError("Stopped before scoring was finished.")
            tags = tagger(images)
            tick(len(images))
            fidelity = tag_confidence(tags[0], core) if core else 1.0
            flexibility = _mean(
                tag_confidence(tags[1 + k], split_tags(settings.flexibility_prompts[k])) for k in range(n_flex)
            )
            drift = _mean(cosine_drift(tags[1 + n_flex + k], base_tags[k]) for k in range(len(base_tags)))
            per_file[index].append(SeedScore(fidelity, flexibility if n_flex else 1.0, drift))
    scores = [
        EpochScore(f.path.stem, f.epoch, per_file[i], settings.beta, _validation_loss(f.path))
        for i, f in enumerate(files)
    ]
    pick = pick_best(scores, fidelity_measured=bool(core))
    return ScoreReport(scores, pick, core, activation, total, time.perf_counter() - started, paths)


def load_tag_scorer(model: str | os.PathLike | None, events: Events | None = None) -> TagScorer:
    """The built-in WD tagger as a :data:`TagScorer`: ``model`` is a registry name or a folder holding
    ``model.onnx`` and ``selected_tags.csv`` (None: the default model; downloaded on first use)."""
    from lib_lora.tagger import DEFAULT_MODEL, load_tagger

    return tagger_scorer(load_tagger(model or DEFAULT_MODEL, events=events))


def tagger_scorer(tagger: Any, minimum: float = 0.05) -> TagScorer:
    """A :data:`TagScorer` from a loaded :class:`lib_lora.tagger.session.Tagger`: the general and
    character tags' confidences (those at or above ``minimum``), in caption form."""
    import numpy as np

    from lib_lora.tagger.preprocess import prepare_image

    labels = tagger.labels
    wanted = np.concatenate([labels.general, labels.character])
    names = [normalize_tag(labels.names[i]) for i in wanted]

    def score(images: Sequence[Any]) -> list[dict[str, float]]:
        if not images:
            return []
        rows = tagger.predict(np.stack([prepare_image(image, tagger.size) for image in images]))
        out = []
        for row in rows:
            values = row[wanted]
            out.append({names[k]: float(v) for k, v in enumerate(values) if v >= minimum})
        return out

    return score


# -- after training ----------------------------------------------------------------------------------

# what the automatic scoring after training uses: the Test sub-tab's defaults (tests shrink it)
AUTO_SETTINGS = ScoreSettings()
# our own keys beside sd-scripts' ss_* (never ss_-prefixed: no sd-scripts tool should take them for its own)
META_RECOMMENDATION = "lora_trainer_recommendation"  # the pick in words, as the Test sub-tab says it
META_RECOMMENDED_EPOCH = "lora_trainer_recommended_epoch"  # only for a confident pick
META_RECOMMENDED_FILE = "lora_trainer_recommended_file"  # the file's stem (only for a confident pick)
META_SCORES = "lora_trainer_scores"  # the score table as JSON (file names, not paths)


@dataclass
class AutoScore:
    """How the scoring after a training went: ``state`` done | skipped | stopped | failed, and one
    sentence for the result line (the pick in words when done)."""

    state: str
    sentence: str
    report: ScoreReport | None = None
    final: Path | None = None  # the file whose metadata holds the recommendation


def auto_cost(cfg: Any, epochs: int) -> tuple[int, int]:
    """(files, images) the scoring after a run of ``epochs`` epochs renders with :data:`AUTO_SETTINGS`."""
    files = 1
    if cfg.save_every_n_epochs:
        saved = max(0, (epochs - 1) // cfg.save_every_n_epochs)
        files += min(saved, cfg.save_last_n_epochs) if cfg.save_last_n_epochs else saved
    settings = AUTO_SETTINGS
    return files, settings.images_per_epoch() * files + settings.base_images()


def auto_cost_sentence(cfg: Any, epochs: int) -> str:
    """What the Train tab says of the scoring before Start (only when it is on)."""
    files, images = auto_cost(cfg, epochs)
    if files < 2:
        return (
            "Scoring after training needs two saved files or more to compare: set Save every N epochs "
            "(otherwise only the final file is saved, and it is not scored)."
        )
    per, base = AUTO_SETTINGS.images_per_epoch(), AUTO_SETTINGS.base_images()
    return (
        f"After training, scoring renders {plural(per, 'image')} per epoch file plus {base} without the LoRA: "
        f"{plural(images, 'image')} for {plural(files, 'file')} (each takes about as long as one image of a "
        "Test grid); Stop ends it and keeps every file."
    )


def scores_metadata(report: ScoreReport) -> dict[str, str | None]:
    """Our metadata keys for the final file: the recommendation in words, the recommended epoch and
    file (a confident pick only; else removed), and the score table as JSON."""
    best = report.best if report.pick.confident else None
    table = {
        "confident": report.pick.confident,
        "recommended": None if best is None else best.label,
        "tied": [report.scores[i].label for i in report.pick.tied],
        "reason": report.pick.reason,
        "core_tags": report.core_tags,
        "fidelity_measured": bool(report.core_tags),
        "activation": report.activation,
        "images": report.images,
        "epochs": [
            {
                "file": s.label, "epoch": s.epoch, "fidelity": round(s.fidelity, 4) if report.core_tags else None,
                "flexibility": round(s.flexibility, 4),
                "drift": round(s.drift, 4), "score": round(s.score, 4), "noise": round(s.spread, 4),
                "validation_loss": s.validation_loss,
            }
            for s in report.scores
        ],
    }  # fmt: skip
    return {
        META_RECOMMENDATION: report.pick.reason,
        META_RECOMMENDED_EPOCH: None if best is None or best.epoch is None else str(best.epoch),
        META_RECOMMENDED_FILE: None if best is None else best.label,
        META_SCORES: json.dumps(table, ensure_ascii=False),
    }


def written_pick(path: str | os.PathLike) -> tuple[str | None, str | None]:
    """What the scoring after training wrote into ``path``'s metadata: the pick in words, and the
    stem of the recommended file (a confident pick only); None for what is not there or unreadable."""
    try:
        metadata = read_header(path).metadata
    except UserError:
        return None, None
    return metadata.get(META_RECOMMENDATION) or None, metadata.get(META_RECOMMENDED_FILE) or None


def _record(final: Path, report: ScoreReport, log_path: Path | None, step: int) -> None:
    """The recommendation into the final file's metadata (atomically, tensors untouched), its
    ``name.json`` notes (the webui's Lora card shows them) and the run's log."""
    from lib_lora.common.fsutil import atomic_write_text
    from lib_lora.formats.safetensors_io import update_metadata

    values = scores_metadata(report)
    update_metadata(final, values)
    side = final.with_suffix(".json")
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict):
        notes = str(data.get("notes") or "").split(" Scored after training:")[0]
        data["notes"] = f"{notes} Scored after training: {report.pick.reason}".strip()
        atomic_write_text(side, json.dumps(data, indent=4, ensure_ascii=False) + "\n")
    if log_path is not None:
        row = {"step": step, "scores": json.loads(values[META_SCORES])}
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def score_finished_run(
    cfg: Any,
    result: Any,
    renderer: Renderer,
    tagger_model: str | None,
    events: Events | None = None,
    stop: StopToken | None = None,
    *,
    load_tagger: Callable[[str | None, Events | None], TagScorer] | None = None,
    settings: ScoreSettings | None = None,
) -> AutoScore | None:
    """Score the epoch files of a finished run (``cfg.score_epochs``) with the host's ``renderer``
    and write the pick into the final file's metadata. None when the setting is off. The trained
    files stand whatever happens here: a run that was stopped is not scored, and a scoring that
    cannot run, is stopped or fails says so in one sentence and changes no file (a run stopped
    before its first step: None, nothing to say)."""
    if not getattr(cfg, "score_epochs", False) or result is None:
        return None
    if result.status != "done" and not result.files and not result.steps:
        return None  # stopped before its first step: nothing was saved, the run's own line says so
    events = events or Events()
    stop = stop or StopToken()
    load_tagger = load_tagger or load_tag_scorer

    def skipped(reason: str, state: str = "skipped") -> AutoScore:
        score = AutoScore(state, reason)
        events.warning(reason)
        return score

    if result.status != "done":
        return skipped(
            "The epochs were not scored: the run was stopped (resume it to the end to score them, or score the "
            "files in the Test tab)."
        )
    try:
        files = lora_family(cfg.output_dir, cfg.output_name)
    except UserError as exc:
        return skipped(f"The epochs were not scored: {exc}")
    final = next((f.path for f in files if f.path.stem == cfg.output_name), None)
    if final is None:
        return skipped(f"The epochs were not scored: {cfg.output_name}.safetensors, the final file, is missing.")
    if len(files) < 2:
        return skipped(
            f"The epochs were not scored: the run saved only {final.name}, nothing to compare it with "
            "(set Save every N epochs to save epoch files)."
        )
    try:
        tagger = load_tagger(cfg.score_tagger or tagger_model, events)
        report = score_epochs(files, renderer, tagger, settings or AUTO_SETTINGS, events, stop)
    except StopRequested:
        return skipped(STOPPED_SCORING, "stopped")
    except UserError as exc:
        if stop.requested:
            return skipped(STOPPED_SCORING, "stopped")
        return skipped(
            f"The epochs were not scored: {exc} The trained files are kept; score them later in the Test tab."
        )
    except Exception as exc:  # a bug or a host failure must not cost the finished training
        return skipped(f"Scoring failed ({type(exc).__name__}: {exc}); the trained files are kept.", "failed")
    try:
        _record(final, report, getattr(result, "log_path", None), getattr(result, "steps", 0))
    except (UserError, OSError) as exc:
        return skipped(
            f"The recommendation could not be written into {final.name}: {exc} {report.pick.reason}", "failed"
        )
    events.info(report.pick.reason)
    events.info(f"The recommendation and the scores are in {final.name}'s metadata ({META_SCORES}).")
    return AutoScore("done", report.pick.reason, report, final)


STOPPED_SCORING = "Scoring was stopped before it finished: every trained file is kept, and no epoch was recommended."


# -- keep one ----------------------------------------------------------------------------------------


@dataclass
class KeepResult:
    kept: Path  # name.safetensors
    source: Path  # the epoch file it was copied from (now in archive/)
    archived: list[Path]


def _sidecars(path: Path) -> list[Path]:
    return [
        path.with_name(path.stem + suffix) for suffix in SIDE_SUFFIXES if path.with_name(path.stem + suffix).is_file()
    ]


def _free_name(folder: Path, stem: str) -> str:
    candidate, n = stem, 1
    while (folder / f"{candidate}.safetensors").exists():
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def _move_with_sidecars(path: Path, folder: Path, stem: str) -> Path:
    stem = _free_name(folder, stem)
    for side in _sidecars(path):
        os.replace(side, folder / (stem + side.name[len(path.stem) :]))
    target = folder / f"{stem}.safetensors"
    os.replace(path, target)
    return target


def keep_epoch(chosen: str | os.PathLike, folder: str | os.PathLike, name: str) -> KeepResult:
    """Make ``chosen`` the LoRA ``name``: every file of the family (the chosen one included, the old
    ``name.safetensors`` under its epoch's name) and the run's step saves (a Stop) move with their
    json/preview into ``archive/``; the chosen one is then copied back as ``name.safetensors`` (+
    ``name.json`` and preview). Nothing is deleted."""
    folder = Path(folder)
    chosen = Path(chosen)
    family = lora_family(folder, name)
    if chosen.resolve() not in {f.path.resolve() for f in family}:
        raise UserError(f"{chosen.name} is not one of the files of {name!r} in {folder}.")
    steps = [f for f in list_lora_files(folder, name) if "-step" in f.path.stem]  # the run's step saves
    archive = folder / ARCHIVE_DIR
    try:
        archive.mkdir(exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create {archive}: {exc.strerror or exc}.") from None
    archived: list[Path] = []
    source: Path | None = None
    for f in family:
        stem = f.path.stem if f.path.stem != name else f"{name}-{(f.epoch or 0):06d}"
        moved = _move_with_sidecars(f.path, archive, stem)
        archived.append(moved)
        if f.path.resolve() == chosen.resolve():
            source = moved
    assert source is not None
    for f in steps:
        archived.append(_move_with_sidecars(f.path, archive, f.path.stem))
    kept = folder / f"{name}.safetensors"
    for side in [source, *_sidecars(source)]:
        target = folder / (name + side.name[len(source.stem) :])
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(side, tmp)
        os.replace(tmp, target)
    return KeepResult(kept, source, archived)
