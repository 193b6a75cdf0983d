"""The few places where Gradio 3.41 (AUTOMATIC1111 1.10) and Gradio 4 (Forge) differ.

- event listeners take ``_js=`` in 3.x and ``js=`` in 4.x: use :func:`js_kwargs`;
- ``Blocks.queue`` takes ``concurrency_count`` in 3.x and ``default_concurrency_limit`` in 4.x;
- ``gr.update`` exists in both (deprecated in 4 but working), and is the only way handlers
  change components here.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

try:
    GRADIO_MAJOR = int(str(gr.__version__).split(".")[0])
except (AttributeError, ValueError):  # pragma: no cover - a very unusual gradio build
    GRADIO_MAJOR = 3


def js_kwargs(js: str | None) -> dict[str, Any]:
    """``{"_js": js}`` on Gradio 3, ``{"js": js}`` on Gradio 4; empty when there is no JS."""
    if not js:
        return {}
    return {"_js": js} if GRADIO_MAJOR < 4 else {"js": js}


def queue_kwargs(concurrency: int) -> dict[str, Any]:
    if GRADIO_MAJOR < 4:
        return {"concurrency_count": concurrency}
    return {"default_concurrency_limit": concurrency}


def update(**kwargs: Any) -> Any:
    """``gr.update(**kwargs)``: a change to a component (no arguments = leave it as it is)."""
    return gr.update(**kwargs)


def unchanged(count: int) -> list[Any]:
    """``count`` updates that change nothing (for error paths: same number of outputs)."""
    return [gr.update() for _ in range(count)]


def hidden_progress() -> dict[str, Any]:
    """Event options for background refreshes: no spinner over the refreshed components."""
    return {"show_progress": "hidden"}


def is_update(value: Any) -> bool:
    """True for what :func:`update` returns (a dict whose ``__type__`` names an update)."""
    return isinstance(value, dict) and value.get("__type__") in ("update", "generic_update")
