"""The webui host: the only package that imports AUTOMATIC1111's ``modules``.

- :mod:`register` — the callbacks (tab, settings section, HTTP API, txt2img component capture);
  imported by ``scripts/lora_trainer.py`` and light at import time.
- :mod:`host` — :class:`~lib_lora.webui.host.WebuiHost`, the tab's ``UIHost``.
- :mod:`model_bundle` — :class:`~lib_lora.webui.model_bundle.WebuiBundle`, the engine's
  ``ModelBundle`` over ``shared.sd_model``, and the training session that restores the model.
- :mod:`lora_builtin` — the built-in Lora extension (clear applied networks, refresh the list).
- :mod:`api` — ``/lora-trainer/v1/`` routes.
- :mod:`runtime` — the webui's queue lock and ``shared.state`` around jobs.
- :mod:`settings` — the "Train LoRA" settings section.

Every ``modules`` import is done inside functions, so importing this package touches nothing.
"""
