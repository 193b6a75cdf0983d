"""HTTP API under ``/lora-trainer/v1/`` (registered with ``on_app_started`` only when the webui's
API is on: ``--api`` or ``--nowebui``; behind ``--api-auth`` exactly like ``/sdapi/v1/``).

- ``POST train`` — a JSON config with sd-scripts' key names, flat or in TOML-like sections, plus an
  optional ``"preset"``; validated as the CLI validates a TOML file (``config.build_config``), then
  planned against the loaded model (dataset, buckets) -> ``{"job": ID}``. Invalid config or dataset:
  422; no trainable model loaded: 409. A run of the same name already in the output folder, or
  another training writing it: 409, unless ``"resume": true`` (or a state folder) continues it or
  ``"overwrite": true`` replaces it (its files move to ``.trash/``).
- ``GET jobs/{ID}`` -> ``{"state": queued|running|done|stopped|failed, "epoch", "step",
  "total_steps", "loss", "files", "error", ...}``; unknown ID: 404.
- ``POST jobs/{ID}/stop`` — the run stops after the current step and saves; 404 if unknown.
- ``POST tag`` — ``{"folder", "model", "general_threshold", "character_threshold", "existing",
  "additional_tags", "exclude_tags", "batch_size", "confidences"}`` -> ``{"job": ID}``.

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


def flatten_config(body: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(values, preset): the top-level ``preset`` taken out; sections lifted as ``load_toml`` does."""
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


def register_api(app: Any, host: Any) -> None:
    """Add the routes to the webui's FastAPI ``app`` (FastAPI 0.94 / pydantic 1 as pinned)."""
    from secrets import compare_digest

    from fastapi import APIRouter, Body, Depends, HTTPException
    from fastapi.security import HTTPBasic, HTTPBasicCredentials

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

    router = APIRouter(prefix=PREFIX, dependencies=[Depends(auth)] if credentials else [])

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

    @router.get("/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        return job_or_404(job_id).public()

    @router.post("/jobs/{job_id}/stop")
    def stop(job_id: str) -> dict[str, Any]:
        status = job_or_404(job_id)
        if status.state in ("queued", "running"):
            host.jobs.stop(job_id, reason="stopped through the HTTP API")
        return {"job": status.id, "state": status.state}

    app.include_router(router)
