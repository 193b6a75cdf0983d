"""Helpers for calling the tab's handlers in-process (no browser)."""

from __future__ import annotations

from typing import Any

from lib_lora.ui.compat import is_update


def value(output: Any) -> Any:
    """The value an output sets (``gr.update(value=...)`` or a plain value); None when unchanged."""
    if is_update(output):
        return output.get("value")
    return output


def unchanged(output: Any) -> bool:
    return is_update(output) and set(output) == {"__type__"}


def form_args(tab: Any, **changes: Any) -> list[Any]:
    """The settings form's current (initial) values in input order, with ``changes`` applied."""
    out = []
    for name, component in tab.train.form.components.items():
        out.append(changes.pop(name) if name in changes else component.value)
    assert not changes, f"not in the form: {sorted(changes)}"
    return out


def subset_args(tab: Any, names: list[str], **changes: Any) -> list[Any]:
    values = dict(zip(tab.train.form.names, form_args(tab)))
    values.update(changes)
    return [values[n] for n in names]


class Select:
    """Stands in for ``gr.SelectData`` (a gallery click)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.value = None
        self.selected = True
