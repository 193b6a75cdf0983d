"""Pieces every sub-tab uses: error-safe handlers, job status HTML, optional host hooks."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

from lib_lora.common.errors import UserError
from lib_lora.events import Events
from lib_lora.jobs.manager import JobStatus
from lib_lora.ui import html
from lib_lora.ui.compat import unchanged

log = logging.getLogger("lib_lora.ui")


def guarded(n_outputs: int, status: int | tuple[int, ...] = -1) -> Callable[[Callable], Callable]:
    """Make a handler safe: a :class:`UserError` (or any unexpected exception) becomes an error
    message in output ``status`` (or in each of several) and every other output is left unchanged —
    the same number of outputs on every path, never a traceback in the browser."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except UserError as exc:
                text = str(exc)
            except Exception as exc:  # shown in the tab; the traceback goes to the log
                log.exception("Train LoRA: %s failed", getattr(fn, "__name__", "handler"))
                text = f"Unexpected {type(exc).__name__}: {exc}"
            out = unchanged(n_outputs)
            for index in status if isinstance(status, tuple) else (status,):
                out[index] = html.error(text)
            return out if n_outputs > 1 else out[0]

        return wrapper

    return decorate


def hook(host: Any, name: str, default: Any = None) -> Any:
    """An optional host hook (see ``UIHost``); ``default`` when the host has none."""
    fn = getattr(host, name, None)
    return fn if callable(fn) else default


def host_events(host: Any) -> Events | None:
    fn = hook(host, "job_events")
    return fn() if fn else None


def long_js(host: Any, kind: str) -> str | None:
    fn = hook(host, "long_handler_js")
    return fn(kind) if fn else None


def user_path(text: str | os.PathLike) -> str:
    """A folder typed in the tab as the absolute path it means: ``~`` expanded, a relative path taken
    from the working folder (where the app or the webui was started), as messages then show it."""
    return os.path.abspath(os.path.expanduser(str(text).strip()))


def resolve_output_dir(host: Any, choice: str | None, custom: str | None) -> str:
    """The custom folder when given (absolute, see :func:`user_path`), else the chosen entry of the
    host's folders, else its default."""
    if custom and str(custom).strip():
        return user_path(custom)
    choices = host.output_dir_choices() or {}
    if choice and choice in choices:
        return choices[choice]
    if choice and choice not in choices and os.path.isabs(str(choice)):
        return str(choice)
    return host.default_output_dir()


def job_line(status: JobStatus) -> str:
    if status.kind == "train" and status.stage == "scoring":  # the epochs scored after the run (score_epochs)
        done = status.stage_text if status.state == "running" else f"{status.done}/{status.total} images"
        return f"trained {status.step}/{status.total_steps} steps · scoring the epochs: {done}"
    if status.kind == "train" and status.total_steps:
        parts = [f"epoch {status.epoch}", f"step {status.step}/{status.total_steps}"]
        if status.loss is not None:
            # the trainer's moving average spans one epoch of steps (sd-scripts' avr_loss); the chart's
            # caption has its own, shorter window: say which average this is
            average = f" (average over the last epoch {status.avg_loss:.4f})" if status.avg_loss else ""
            parts.append(f"loss {status.loss:.4f}{average}")
        if status.steps_per_second:
            parts.append(f"{status.steps_per_second:.2f} it/s")
        if status.state == "running" and status.eta_seconds is not None:
            parts.append(f"ETA {html.duration(status.eta_seconds)}")
        return " · ".join(parts)
    if status.total:
        return f"{status.stage}: {status.done}/{status.total}"
    return status.stage or ""


STATE_LEVEL = {"queued": "info", "running": "info", "done": "ok", "stopped": "warning", "failed": "error"}


def job_html(
    status: JobStatus | None, idle: str = "Not started.", show_messages: int = 6, show_error: bool = True
) -> str:
    """The live status panel of a job: state, progress bar, the numbers, recent messages; the error
    too unless the panel's button shows it in its own status line (``show_error`` False: once is enough;
    then a failed job's red "TITLE: failed" line is left out too)."""
    if status is None:
        return html.message(idle)
    parts = [f'<div class="lt-job lt-job-{html.esc(status.state)}">']
    title, level = f"{status.title}: {status.state}", STATE_LEVEL.get(status.state, "info")
    if status.kind == "train" and status.stage == "scoring" and status.state == "stopped":
        # a Stop during the scoring after the run (score_epochs): the training itself finished
        title, level = f"{status.title}: done, scoring stopped", "ok"
    line = job_line(status)
    if status.state != "failed" or show_error:  # else the button's red line gives the reason: one is enough
        parts.append(html.message(f"{title}" + (f" — {line}" if line else ""), level))
    if status.state in ("running", "queued"):
        if status.kind == "train" and status.total_steps and status.stage == "training":
            parts.append(html.progress_bar(status.step, status.total_steps, f"step {status.step}/{status.total_steps}"))
        elif status.total:
            parts.append(html.progress_bar(status.done, status.total, f"{status.stage} {status.done}/{status.total}"))
    if status.error and show_error:
        parts.append(html.error(status.error))
    shown = [(lvl, text) for lvl, text in status.messages if lvl in ("info", "warning")][-show_messages:]
    log = [(lvl, text) for lvl, text in shown if lvl == "info"]
    if log:
        parts.append('<div class="lt-log">' + html.messages(log) + "</div>")
    # warnings below the scrolling log, whole: a several-line one ("2 images were skipped:" and a
    # line per image) was cut to its first line at the log's bottom edge
    parts.extend(html.message(text, "warning") for lvl, text in shown if lvl == "warning")
    parts.append("</div>")
    return "".join(parts)


def number(value: Any, what: str, minimum: float | None = None, integer: bool = False) -> float | int | None:
    """A number from a UI field ("" / None -> None); UserError naming ``what`` otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} {value!r} is not a number.") from None
    if integer:
        if not result.is_integer():
            raise UserError(f"{what} must be a whole number (got {value!r}).")
        result = int(result)
    if minimum is not None and result < minimum:
        raise UserError(f"{what} must be at least {minimum:g} (got {value!r}).")
    return result
