"""modules/script_callbacks.py: registering and running the callbacks the extension uses
(on_ui_tabs, on_ui_settings, on_app_started, on_after_component, on_model_loaded,
on_script_unloaded), with the optional ``name=`` keyword of 1.10.1."""

from dataclasses import dataclass
from typing import Any

callback_map: dict[str, list] = {}


@dataclass
class ScriptCallback:
    script: str
    callback: Any
    name: str = "unnamed"


def add_callback(callbacks, fun, *, name=None, category="unknown"):
    callbacks.append(ScriptCallback("stub", fun, name or "unnamed"))


def _list(kind):
    return callback_map.setdefault(kind, [])


def clear_callbacks():
    for value in callback_map.values():
        value.clear()


def on_ui_tabs(callback, *, name=None):
    add_callback(_list("callbacks_ui_tabs"), callback, name=name, category="ui_tabs")


def on_ui_settings(callback, *, name=None):
    add_callback(_list("callbacks_ui_settings"), callback, name=name, category="ui_settings")


def on_app_started(callback, *, name=None):
    add_callback(_list("callbacks_app_started"), callback, name=name, category="app_started")


def on_after_component(callback, *, name=None):
    add_callback(_list("callbacks_after_component"), callback, name=name, category="after_component")


def on_model_loaded(callback, *, name=None):
    add_callback(_list("callbacks_model_loaded"), callback, name=name, category="model_loaded")


def on_script_unloaded(callback, *, name=None):
    add_callback(_list("callbacks_script_unloaded"), callback, name=name, category="script_unloaded")


def ui_tabs_callback():
    res = []
    for c in _list("callbacks_ui_tabs"):
        res += c.callback() or []
    return res


def ui_settings_callback():
    for c in _list("callbacks_ui_settings"):
        c.callback()


def app_started_callback(demo, app):
    for c in _list("callbacks_app_started"):
        c.callback(demo, app)


def after_component_callback(component, **kwargs):
    for c in _list("callbacks_after_component"):
        c.callback(component, **kwargs)


def model_loaded_callback(sd_model):
    for c in _list("callbacks_model_loaded"):
        c.callback(sd_model)


def script_unloaded_callback():
    for c in reversed(_list("callbacks_script_unloaded")):
        c.callback()
