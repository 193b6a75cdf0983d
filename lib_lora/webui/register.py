"""Hooks Train LoRA into the webui; ``scripts/lora_trainer.py`` calls :func:`register`.

Light at import: only the webui's ``script_callbacks`` and our small ``runtime`` module; the host,
the engine, torch work and the tab are imported when a callback runs. ``shared.sd_model`` is not
touched here (reading it would load a checkpoint). Reload UI re-runs the scripts file, which
registers the callbacks again; the host (its jobs) is kept across reloads.
"""

from __future__ import annotations

from typing import Any

from modules import script_callbacks

from lib_lora.webui import runtime

_host: Any = None


def get_host() -> Any:
    """The one :class:`~lib_lora.webui.host.WebuiHost` (created on first use)."""
    global _host
    if _host is None:
        from lib_lora.webui.host import WebuiHost

        _host = WebuiHost()
    return _host


def on_ui_tabs() -> list[tuple[Any, str, str]]:
    """``[(blocks, "Train LoRA", "lora_trainer")]``, built by the UI package against the host."""
    from lib_lora.ui import tab

    return tab.on_ui_tabs(get_host())


def on_ui_settings() -> None:
    from lib_lora.webui import settings

    settings.register_options()


def api_enabled() -> bool:
    from modules import shared

    return bool(getattr(shared.cmd_opts, "api", False) or getattr(shared.cmd_opts, "nowebui", False))


def on_app_started(demo: Any, app: Any) -> None:
    if not api_enabled():
        return
    from lib_lora.webui.api import register_api

    register_api(app, get_host())


def on_after_component(component: Any, **kwargs: Any) -> None:
    elem_id = kwargs.get("elem_id") or getattr(component, "elem_id", None)
    if elem_id in runtime.TXT2IMG_ELEM_IDS:
        runtime.capture_txt2img_component(elem_id, component)


def on_script_unloaded() -> None:
    """Reload UI / shutdown: ask running and queued jobs to stop (they save what they have)."""
    if _host is not None:
        _host.jobs.stop(reason="the webui is reloading")


def register() -> None:
    script_callbacks.on_ui_tabs(on_ui_tabs, name="lora_trainer_tab")
    script_callbacks.on_ui_settings(on_ui_settings, name="lora_trainer_settings")
    script_callbacks.on_app_started(on_app_started, name="lora_trainer_api")
    script_callbacks.on_after_component(on_after_component, name="lora_trainer_txt2img")
    script_callbacks.on_script_unloaded(on_script_unloaded, name="lora_trainer_unload")
