"""HTTP API under ``/lora-trainer/v1/`` (registered with ``on_app_started`` only when the webui's
API is on: ``--api`` or ``--nowebui``; behind ``--api-auth`` exactly like ``/sdapi/v1/``).

- ``POST train`` — a JSON config with sd-scripts' key names, flat or in TOML-like sections, plus an
  optional ``"preset"``; validated as the CLI validates a TOML file (``config.build_config``), then
  planned against the loaded model (dataset, buckets) -> ``{"job": ID}``. Invalid config or dataset:
  422; no trainable model loaded: 409. A run of the same name already in the output folder, or
  another training writing it: 409, unless ``"resume": true`` (or a state folder) continues it or
  ``"overwrite": true`` replaces it (its files move to ``.trash/``).
- ``GET jobs/{ID}`` -> ``{"state": queued|running|done|stopped|failed, "epoch", "step",
  "total_steps", "loss", "files", "error", "recommendation", ...}``; unknown ID: 404.
  ``recommendation``: null, or once a run with ``score_epochs`` has ended, how its scoring went
  (:func:`recommendation`).
- ``POST jobs/{ID}/stop`` — the run stops after the current step and saves; 404 if unknown.
- ``POST tag`` — ``{"folder", "model", "general_threshold", "character_threshold", "existing",
  "additional_tags", "exclude_tags", "batch_size", "confidences"}`` -> ``{"job": ID}``.
- ``POST clean`` — ``{"folder", "mask" | "masks", "images", "model", "margin"}`` (one mask for the
  folder's images — or only ``images``, relative paths —, or a folder of masks mirroring it), or
  ``{"folder", "restore": true}`` -> ``{"job": ID}``; originals go to ``<folder>/.clean-history``.

Every route refuses a request from another web site (``lib_lora.common.origin``: a foreign
``Origin`` unless the webui's ``--cors-allow-origins`` / ``--cors-allow-origins-regex`` lists it, a
cross-site ``Sec-Fetch-Site``, and — while the webui listens on loopback only — a non-loopback
``Host``): 403. Paths in a request (``train_data_dir``, ``output_dir``, ``network_weights``, the tag
``folder``) are taken from the webui's working folder when relative, and reported absolute. Nothing
here serves files: the job status names the saved files, the webui's own ``/file=`` rules apply.

Jobs go through the tab's JobManager: one at a time, in order, under the webui's queue lock and
``shared.state`` (txt2img waits; Interrupt stops training).
"""

# no ``from __future__ import annotations``: FastAPI reads the route signatures at runtime
import os
from collections.abc import Mapping
from typing import Any

from lib_lora.common.errors import UserError

PREFIX = "/lora-trainer/v1"
TAG_KEYS = {
    "folder", "model", "general_threshold", "character_threshold", "existing", "additional_tags",
    "exclude_tags", "batch_size", "confidences", "keep_underscores", "general_mcut", "character_mcut",
    "include_ratings", "caption_extension",
}  # fmt: skip
CLEAN_KEYS = {"folder", "mask", "masks", "images", "model", "margin", "restore"}


PATH_KEYS = ("train_data_dir", "output_dir", "network_weights")


def absolute(path: str) -> str:
    """A path from a request as the absolute path it means (relative: from the working folder)."""
    return os.path.abspath(os.path.expanduser(path.strip()))


def flatten_config(body: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(values, preset): the top-level ``preset`` taken out; sections lifted as ``load_toml`` does;
    the folder and file settings made absolute (see the module docstring)."""
    values: dict[str, Any] = {}
    preset = body.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise UserError("preset must be a preset name such as character, style, concept or sdxl-8gb.")
    for key, value in body.items():
        if key == "preset":
            continue
        if isinstance(value, Mapping):
            values.update(value)
        else:
            values[key] = value
    for key in PATH_KEYS:
        value = values.get(key)
        # output_dir's default ("output") means the webui's Lora folder (WebuiHost.host_config)
        if isinstance(value, str) and value.strip() and not (key == "output_dir" and value == "output"):
            values[key] = absolute(value)
    return values, preset


def run_choice(body: Mapping[str, Any]) -> tuple[Any, bool]:
    """(resume, overwrite) taken out of a train request: ``resume`` true or a state folder."""
    resume, overwrite = body.get("resume"), body.get("overwrite", False)
    if resume is not None and not isinstance(resume, (bool, str)):
        raise UserError("resume must be true or the path of a <name>-state folder.")
    if not isinstance(overwrite, bool):
        raise UserError("overwrite must be true or false.")
    if resume and overwrite:
        raise UserError("Give resume or overwrite, not both.")
    return resume or None, overwrite


def validate_train(host: Any, body: Any) -> Any:
    """The TrainConfig a request asks for; HTTPException-ready errors as (status, message)."""
    cfg, _, _ = validate_train_request(host, body)
    return cfg


def validate_train_request(host: Any, body: Any) -> tuple[Any, str | None, bool]:
    """(TrainConfig, state folder to resume or None, overwrite); errors as ``_Reject``."""
    from lib_lora.config import build_config
    from lib_lora.events import RecordingEvents
    from lib_lora.jobs.train import check_output

    if not isinstance(body, Mapping):
        raise _Reject(422, "The request body must be a JSON object of sd-scripts settings.")
    info = host.model_info()
    if info.problem:
        raise _Reject(409, info.problem)
    try:
        resume, overwrite = run_choice(body)
        values, preset = flatten_config({k: v for k, v in body.items() if k not in ("resume", "overwrite")})
        cfg = build_config(values, preset=preset, family=info.family or "sd1")
        plan = host.plan(cfg, RecordingEvents())
    except UserError as exc:
        raise _Reject(422, str(exc)) from None
    planned = getattr(plan, "cfg", cfg)  # the host's own output folder when none was given
    if resume is True:
        resume = os.path.join(planned.output_dir, f"{planned.output_name}-state")
    try:
        check_output(planned, resume, overwrite, hint='Send "resume": true to continue it or "overwrite": true.')
    except UserError as exc:
        raise _Reject(409, str(exc)) from None
    return cfg, resume, overwrite


def tag_options(body: Any) -> Any:
    from lib_lora.tagger.batch import TagFolderOptions
    from lib_lora.tagger.labels import TagOptions

    if not isinstance(body, Mapping):
        raise UserError("The request body must be a JSON object with at least a folder.")
    unknown = sorted(set(body) - TAG_KEYS)
    if unknown:
        raise UserError(f"Unknown tagger option(s): {', '.join(unknown)}; known: {', '.join(sorted(TAG_KEYS))}.")
    folder = body.get("folder")
    if not folder or not isinstance(folder, str):
        raise UserError("folder is required: the dataset folder to tag.")
    folder = absolute(folder)
    if not os.path.isdir(folder):
        raise UserError(f"The folder {folder} does not exist.")
    tag_keys = ("general_threshold", "character_threshold", "keep_underscores", "general_mcut", "character_mcut", "include_ratings")  # fmt: skip
    try:
        tags = TagOptions(
            **{k: body[k] for k in tag_keys if k in body},
            additional_tags=tuple(body.get("additional_tags") or ()),
            exclude_tags=tuple(body.get("exclude_tags") or ()),
        )
        kwargs = {
            k: body[k] for k in ("model", "existing", "batch_size", "confidences", "caption_extension") if k in body
        }
        return TagFolderOptions(folder=folder, tags=tags, **kwargs)
    except TypeError as exc:
        raise UserError(f"A tagger option has the wrong type: {exc}.") from None


def clean_job(body: Any) -> tuple[str, Any]:
    """(job title, job function) for a ``POST clean`` body; UserError for a bad one (checked before queueing)."""
    from pathlib import Path

    from lib_lora.cleanup.clean import clean_folder, load_lama, read_mask, restore_folder

    if not isinstance(body, Mapping):
        raise UserError("The request body must be a JSON object with at least a folder.")
    unknown = sorted(set(body) - CLEAN_KEYS)
    if unknown:
        raise UserError(f"Unknown clean option(s): {', '.join(unknown)}; known: {', '.join(sorted(CLEAN_KEYS))}.")
    folder = body.get("folder")
    if not folder or not isinstance(folder, str) or not os.path.isdir(folder):
        raise UserError(f"folder must be an existing dataset folder (got {folder!r}).")
    if body.get("restore"):

        def restore(events: Any, stop: Any) -> str:
            restored, refused = restore_folder(folder)
            for _, why in refused:
                events.warning(why)
            events.info(f"Restored {len(restored)} originals.")
            return f"restored {len(restored)}"

        return f"Restore {folder}", restore
    if bool(body.get("mask")) == bool(body.get("masks")):
        raise UserError("Give mask (one mask image for the images) or masks (a folder of masks), not both or neither.")
    mask = read_mask(body["mask"]) if body.get("mask") else None
    if mask is not None and not mask.any():
        raise UserError(f"The mask {body['mask']} is empty (no white or painted pixels).")
    images = body.get("images")
    if images is not None:
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise UserError("images must be a list of image paths relative to the folder.")
        missing = [i for i in images if not (Path(folder) / i).is_file()]
        if missing:
            raise UserError(f"Not in {folder}: {', '.join(missing[:5])}.")
        images = [Path(folder) / i for i in images]
    margin = body.get("margin", 128)
    if not isinstance(margin, int) or margin < 0:
        raise UserError("margin must be a whole number of pixels, 0 or more.")
    model = body.get("model") or "lama-carve"

    def run(events: Any, stop: Any) -> str:
        lama = load_lama(model, events=events)
        result = clean_folder(
            folder, lama, masks_dir=body.get("masks"), mask=mask, images=images, margin=margin, events=events,
            stop=stop,
        )  # fmt: skip
        for _, why in result.failed:
            events.warning(why)
        events.info(result.summary().capitalize() + ".")
        return result.summary()

    return f"Clean {folder}", run


def recommendation(status: Any) -> dict[str, Any] | None:
    """The scoring after training of a finished train job (``score_epochs``) for its JSON status:
    ``{"state": done|skipped|stopped|failed, "sentence", "file", "epoch", "final"}`` — ``sentence``
    the pick in the Train tab's words, ``file``/``epoch`` the recommended file (a confident pick
    only, else null), ``final`` the file whose metadata holds the pick. None: not scored (the
    setting is off, the job is still running, or it is no training)."""
    score = getattr(getattr(status, "result", None), "scoring", None)
    if score is None:
        return None
    report = score.report
    best = report.best if report is not None and report.pick.confident else None
    return {
        "state": score.state,
        "sentence": score.sentence,
        "file": None if best is None else str(report.files[report.pick.best]),
        "epoch": None if best is None else best.epoch,
        "final": None if score.final is None else str(score.final),
    }


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _credentials() -> dict[str, str]:
    from modules import shared

    result: dict[str, str] = {}
    for item in (getattr(shared.cmd_opts, "api_auth", None) or "").split(","):
        if ":" in item:
            user, password = item.split(":", 1)
            result[user] = password
    return result


def _origin_rules() -> dict[str, Any]:
    """The webui's own CORS options and whether it listens on loopback only."""
    from modules import shared

    opts = shared.cmd_opts
    origins = [o.strip() for o in str(getattr(opts, "cors_allow_origins", None) or "").split(",") if o.strip()]
    public = any(getattr(opts, name, None) for name in ("listen", "server_name", "share", "ngrok"))
    return {
        "allow_origins": origins,
        "allow_origin_regex": getattr(opts, "cors_allow_origins_regex", None) or None,
        "check_host": not public,
    }


def register_api(app: Any, host: Any) -> None:
    """Add the routes to the webui's FastAPI ``app`` (FastAPI 0.94 / pydantic 1 as pinned)."""
    from secrets import compare_digest

    from fastapi import APIRouter, Body, Depends, HTTPException, Request
    from fastapi.security import HTTPBasic, HTTPBasicCredentials

    from lib_lora.common.origin import cross_site_refusal

    credentials = _credentials()
    basic = Depends(HTTPBasic())
    required_body = Body(...)

    def auth(login: HTTPBasicCredentials = basic) -> bool:
        password = credentials.get(login.username)
        if password is not None and compare_digest(login.password, password):
            return True
        raise HTTPException(
            status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"}
        )

    rules = _origin_rules()

    def same_site(request: Request) -> None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        reason = cross_site_refusal(headers, **rules)
        if reason is not None:
            raise HTTPException(status_code=403, detail=reason)

    guards = [Depends(same_site), *([Depends(auth)] if credentials else [])]
    router = APIRouter(prefix=PREFIX, dependencies=guards)

    def job_or_404(job_id: str) -> Any:
        try:
            return host.jobs.get(job_id)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"No job {job_id!r}.") from None

    @router.post("/train")
    def train(body: Any = required_body) -> dict[str, Any]:
        try:
            cfg, resume, overwrite = validate_train_request(host, body)
        except _Reject as exc:
            raise HTTPException(status_code=exc.status, detail=exc.message) from None
        status = host.jobs.submit(
            "train",
            f"Train {cfg.output_name}",
            lambda events, stop: host.train(cfg, events, stop, resume=resume, overwrite=overwrite),
        )
        return {"job": status.id, "state": status.state}

    @router.post("/tag")
    def tag(body: Any = required_body) -> dict[str, Any]:
        from lib_lora.tagger.batch import tag_folder

        try:
            options = tag_options(body)
        except UserError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        status = host.jobs.submit(
            "tag", f"Tag {options.folder}", lambda events, stop: tag_folder(options, events, stop)
        )
        return {"job": status.id, "state": status.state}

    @router.post("/clean")
    def clean(body: Any = required_body) -> dict[str, Any]:
        try:
            title, run = clean_job(body)
        except UserError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        status = host.jobs.submit("clean", title, run)
        return {"job": status.id, "state": status.state}

    @router.get("/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        status = job_or_404(job_id)
        return {**status.public(), "recommendation": recommendation(status)}

    @router.post("/jobs/{job_id}/stop")
    def stop(job_id: str) -> dict[str, Any]:
        status = job_or_404(job_id)
        if status.state in ("queued", "running"):
            host.jobs.stop(job_id, reason="stopped through the HTTP API")
        return {"job": status.id, "state": status.state}

    app.include_router(router)
