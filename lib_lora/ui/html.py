"""Small HTML fragments the tab shows (messages, tables, a progress bar, the loss chart).

Everything user-supplied is escaped. Class names start with ``lt-``; style.css scopes them under
``#tab_lora_trainer``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

LEVELS = ("info", "ok", "warning", "error")
AVERAGE_STEPS = 10  # the loss chart's moving average covers at least this many steps


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def message(text: str, level: str = "info") -> str:
    """One message line; ``level`` is info | ok | warning | error (errors and warnings stand out)."""
    level = level if level in LEVELS else "info"
    label = {"error": "Error: ", "warning": "Warning: "}.get(level, "")
    return f'<div class="lt-msg lt-{level}">{esc(label)}{esc(text)}</div>'


def messages(items: Iterable[tuple[str, str]]) -> str:
    """Several ``(level, text)`` messages."""
    return "".join(message(text, level) for level, text in items)


def error(text: str) -> str:
    return message(text, "error")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], css: str = "", empty: str = "") -> str:
    rows = list(rows)
    if not rows and empty:
        return f'<div class="lt-empty">{esc(empty)}</div>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="lt-table {esc(css)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def progress_bar(done: int, total: int, text: str = "") -> str:
    fraction = 0.0 if total <= 0 else max(0.0, min(1.0, done / total))
    label = text or (f"{done}/{total}" if total else "")
    return (
        f'<div class="lt-progress" role="progressbar" aria-valuenow="{done}" aria-valuemax="{total}">'
        f'<div class="lt-progress-fill" style="width:{fraction * 100:.1f}%"></div>'
        f'<span class="lt-progress-text">{esc(label)}</span></div>'
    )


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.ceil(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_chart(
    losses: Sequence[tuple[int, float]],
    total_steps: int | None = None,
    epochs: Sequence[tuple[int, int]] = (),
    width: int = 640,
    height: int = 220,
    max_points: int = 600,
    validation: Sequence[tuple[int, float]] = (),
) -> str:
    """An inline SVG line chart of (step, loss): raw losses faint, a moving average bold, saved
    epochs as dotted vertical lines (``epochs``: (step, epoch)), validation losses as orange dots
    joined by a line (``validation``: (step, loss))."""
    checks = [(int(s), float(v)) for s, v in validation if v is not None and math.isfinite(float(v))]
    points = [(int(s), float(v)) for s, v in losses if v is not None and math.isfinite(float(v))]
    if not points:
        return '<div class="lt-chart lt-empty">The loss chart appears when training starts.</div>'
    # the bold line and the "average": a moving average over the last `window` steps (at least 10,
    # a twentieth of the run on long ones), so it is not the last loss again on a short run
    window = min(len(points), max(AVERAGE_STEPS, len(points) // 20))
    last_loss = points[-1][1]
    average = sum(v for _, v in points[-window:]) / window
    size = 1
    if len(points) > max_points:  # keep the shape: bucket by step range, mean per bucket
        size = math.ceil(len(points) / max_points)
        points = [
            (
                points[min(i + size, len(points)) - 1][0],
                sum(v for _, v in points[i : i + size]) / len(points[i : i + size]),
            )
            for i in range(0, len(points), size)
        ]
    left, right, top, bottom = 52, 12, 24, 28  # the caption sits in the band above the plot, never on the lines
    plot_w, plot_h = width - left - right, height - top - bottom
    x_max = max(total_steps or 0, points[-1][0], 1)
    x_min = min(points[0][0], 1)
    values = [v for _, v in points]
    y_low, y_high = min(values + [v for _, v in checks]), max(values + [v for _, v in checks])
    if y_high - y_low < 1e-9:
        y_low, y_high = y_low - 0.05, y_high + 0.05
    pad = (y_high - y_low) * 0.05
    y_low, y_high = y_low - pad, y_high + pad

    def x(step: float) -> float:
        return left + (step - x_min) / max(1e-9, x_max - x_min) * plot_w

    def y(value: float) -> float:
        return top + (1 - (value - y_low) / (y_high - y_low)) * plot_h

    raw = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points)
    smooth_values = _smooth(values, max(1, round(window / size)))
    smooth = " ".join(f"{x(s):.1f},{y(v):.1f}" for (s, _), v in zip(points, smooth_values))
    parts = [
        f'<svg class="lt-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="Training loss by step">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="lt-chart-bg" fill="none" stroke="#8884"/>',
    ]
    for tick in _nice_ticks(y_low, y_high):
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="lt-grid" stroke="#8883"/>'
        )
        parts.append(
            f'<text x="{left - 4}" y="{y(tick) + 4:.1f}" text-anchor="end" class="lt-axis" font-size="11" fill="#888">{tick:.3g}</text>'
        )
    for tick in _nice_ticks(x_min, x_max):
        parts.append(
            f'<text x="{x(tick):.1f}" y="{height - 8}" text-anchor="middle" class="lt-axis" font-size="11" fill="#888">{int(tick)}</text>'
        )
    for step, epoch in epochs:
        if x_min <= step <= x_max:
            parts.append(
                f'<line x1="{x(step):.1f}" x2="{x(step):.1f}" y1="{top}" y2="{top + plot_h}" class="lt-epoch" stroke="#8888" stroke-dasharray="3,3">'
                f"<title>epoch {int(epoch)} saved at step {int(step)}</title></line>"
            )
    parts.append(f'<polyline points="{raw}" class="lt-loss-raw" fill="none" stroke="#93b4e8" stroke-width="1"/>')
    parts.append(f'<polyline points="{smooth}" class="lt-loss-avg" fill="none" stroke="#2563eb" stroke-width="2"/>')
    if checks:
        line = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in checks)
        parts.append(f'<polyline points="{line}" class="lt-val-loss" fill="none" stroke="#ea580c" stroke-width="1.5"/>')
        for s, v in checks:
            parts.append(
                f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="3" class="lt-val-point" fill="#ea580c">'
                f"<title>validation loss {v:.4f} at step {s}</title></circle>"
            )
    val_text = f"; validation {checks[-1][1]:.4f}" if checks else ""
    parts.append(
        f'<text x="{left}" y="{top - 8}" class="lt-axis" font-size="11" fill="#888">loss (last {last_loss:.4f}, '
        f"average of the last {window} steps {average:.4f}){val_text}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)
