"""The training settings form, built from ``TrainConfig``'s field metadata.

Each field becomes one component labelled in plain words (its ``label``, see
:func:`lib_lora.config.plain_label`) with its ``help`` and its sd-scripts key (what a kohya TOML or
the CLI calls it) as the info line under the label; ``advanced`` fields go into a closed accordion. The form keeps
one dict ``field name -> component``; handlers get the values in that order and turn them back
into a ``{field: value}`` dict for :func:`lib_lora.config.build_config` — never 30 positional
parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import gradio as gr

from lib_lora.config import GROUPS, TrainConfig, plain_label

# chosen elsewhere in the tab (dataset folder, LoRA name, output folder) or by the host (its model)
NOT_IN_FORM = frozenset(
    {
        "pretrained_model_name_or_path",
        "model_family",
        "v_parameterization",
        "train_data_dir",
        "output_dir",
        "output_name",
    }
)
GROUP_TITLES = {
    "model": "Model",
    "dataset": "Dataset and buckets",
    "network": "Network",
    "optimizer": "Optimizer and learning rate",
    "training": "Training",
    "saving": "Saving",
    "samples": "Sample images",
}
DEFAULT_CHOICE = "default"  # how a None choice is shown
MULTILINE = {"sample_prompts": 3}


def _type(name: str) -> str:
    return str(TrainConfig.__dataclass_fields__[name].type)


def _default(name: str) -> Any:
    f = TrainConfig.__dataclass_fields__[name]
    return f.default if f.default is not MISSING else None


def label_of(name: str) -> str:
    return plain_label(name)


def info_of(name: str) -> str:
    """The help line under a field's label: its help, then the key sd-scripts (or our TOML) uses."""
    meta = TrainConfig.__dataclass_fields__[name].metadata
    where = "sd-scripts" if meta.get("kohya", True) else "config"
    help_text = str(meta.get("help") or "").strip()
    return f"{help_text} [{where}: {name}]".strip()


def to_component_value(name: str, value: Any) -> Any:
    """A config value as its component shows it."""
    kind = _type(name)
    meta = TrainConfig.__dataclass_fields__[name].metadata
    if meta.get("choices"):
        return DEFAULT_CHOICE if value is None else str(value)
    if kind.startswith("bool") and "None" not in kind:
        return bool(value)
    if kind.startswith(("int", "float")) and "None" not in kind:
        return value
    if isinstance(value, tuple):
        return " ".join(value)
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return "" if value is None else str(value)


def from_component_value(name: str, value: Any) -> Any:
    """A component's value as ``build_config`` takes it (it coerces and validates)."""
    if value == DEFAULT_CHOICE and TrainConfig.__dataclass_fields__[name].metadata.get("choices"):
        return None
    if isinstance(value, str):
        value = value.strip()
        kind = _type(name)
        if value == "" and "None" in kind:
            return None
    if isinstance(value, float) and _type(name).startswith("int") and value.is_integer():
        return int(value)
    return value


def _component(name: str, initial: dict[str, Any]) -> Any:
    f = TrainConfig.__dataclass_fields__[name]
    meta, kind = f.metadata, _type(name)
    label, info = label_of(name), info_of(name)
    value = to_component_value(name, initial[name] if name in initial else _default(name))
    elem_id = f"lora_trainer_cfg_{name}"
    if meta.get("choices"):
        choices = [DEFAULT_CHOICE if c is None else str(c) for c in meta["choices"]]
        return gr.Dropdown(choices=choices, value=value, label=label, info=info, elem_id=elem_id)
    if kind.startswith("bool") and "None" not in kind:
        return gr.Checkbox(value=value, label=label, info=info, elem_id=elem_id)
    if kind.startswith("int") and "None" not in kind:
        # no precision=0: Gradio would round 2.5 to 2 silently; the validator says "a whole number"
        return gr.Number(value=value, label=label, info=info, elem_id=elem_id)
    if kind.startswith("float") and "None" not in kind:
        return gr.Number(value=value, label=label, info=info, elem_id=elem_id)
    placeholder = "empty = default" if "None" in kind else None
    return gr.Textbox(
        value=value, label=label, info=info, lines=MULTILINE.get(name, 1), placeholder=placeholder, elem_id=elem_id
    )


def build_field(name: str, initial: dict[str, Any]) -> Any:
    """One setting's component, as the form makes it (for a :class:`Section` that lays out its own)."""
    return _component(name, initial)


@dataclass
class SettingsForm:
    components: dict[str, Any] = field(default_factory=dict)  # field name -> component

    @property
    def names(self) -> list[str]:
        return list(self.components)

    def inputs(self) -> list[Any]:
        return list(self.components.values())

    def values(self, args: Sequence[Any]) -> dict[str, Any]:
        """The form's values (given in :meth:`inputs` order) as ``{field: value}``."""
        if len(args) != len(self.components):
            raise ValueError(f"expected {len(self.components)} form values, got {len(args)}")
        return {name: from_component_value(name, value) for name, value in zip(self.components, args)}

    def values_subset(self, names: Sequence[str], args: Sequence[Any]) -> dict[str, Any]:
        """``{field: value}`` for some fields given in ``names`` order."""
        if len(args) != len(names):
            raise ValueError(f"expected {len(names)} values, got {len(args)}")
        return {name: from_component_value(name, value) for name, value in zip(names, args)}

    def updates(self, values: dict[str, Any]) -> list[Any]:
        """One update per component: the value from ``values`` where given, else unchanged."""
        out = []
        for name in self.components:
            if name in values:
                out.append(gr.update(value=to_component_value(name, values[name])))
            else:
                out.append(gr.update())
        return out


@dataclass(frozen=True)
class Section:
    """Advanced fields of one group that a panel lays out itself (e.g. behind a table): ``build``
    runs inside the Advanced accordion after the group's other rows and puts a component for each
    of ``names`` in ``form.components`` (made with :func:`build_field`)."""

    group: str
    names: tuple[str, ...]
    build: Callable[[SettingsForm, dict[str, Any]], None]


def build_settings_form(
    hidden: Iterable[str] = (), initial: dict[str, Any] | None = None, sections: Sequence[Section] = ()
) -> SettingsForm:
    """Create the components (inside the current Blocks context), grouped, advanced ones folded;
    ``initial`` values (a preset's) replace the defaults; ``sections`` lay out some fields their way."""
    initial = dict(initial or {})
    skip = set(NOT_IN_FORM) | set(hidden)
    names = [f.name for f in fields(TrainConfig) if f.name not in skip]
    apart = {n for section in sections for n in section.names}
    basic = {
        g: [n for n in names if TrainConfig.__dataclass_fields__[n].metadata["group"] == g and not _advanced(n)]
        for g in GROUPS
    }
    advanced = {
        g: [
            n
            for n in names
            if TrainConfig.__dataclass_fields__[n].metadata["group"] == g and _advanced(n) and n not in apart
        ]
        for g in GROUPS
    }
    form = SettingsForm()
    for group in GROUPS:
        if not basic[group]:
            continue
        gr.Markdown(f"**{GROUP_TITLES[group]}**", elem_classes=["lt-group-title"])
        _rows(form, basic[group], initial)
    with gr.Accordion("Advanced settings", open=False, elem_id="lora_trainer_advanced"):
        for group in GROUPS:
            if not advanced[group] and not any(section.group == group for section in sections):
                continue
            gr.Markdown(f"**{GROUP_TITLES[group]} (advanced)**", elem_classes=["lt-group-title"])
            _rows(form, advanced[group], initial)
            for section in sections:
                if section.group == group:
                    section.build(form, initial)
    # keep the declaration order of TrainConfig in the dict (stable for presets and tests)
    form.components = {n: form.components[n] for n in names if n in form.components}
    return form


def _advanced(name: str) -> bool:
    return bool(TrainConfig.__dataclass_fields__[name].metadata.get("advanced"))


def _rows(form: SettingsForm, names: list[str], initial: dict[str, Any], per_row: int = 3) -> None:
    for start in range(0, len(names), per_row):
        with gr.Row():
            for name in names[start : start + per_row]:
                form.components[name] = _component(name, initial)
