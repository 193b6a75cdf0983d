"""The "Train LoRA" tab: gradio only (3.41.2 API, nothing that breaks on gradio 4).

It talks to its host (the webui, or the standalone app) through :class:`lib_lora.ui.host.UIHost`
and to the work through ``lib_lora.jobs``; it never imports the webui's ``modules``.

- ``tab.on_ui_tabs(host)`` -> ``[(blocks, "Train LoRA", "lora_trainer")]`` for the webui's callback;
- ``tab.build_tab(host)`` -> ``(blocks, TrainerTab)`` (the standalone app renders ``blocks`` inside
  ``#tab_lora_trainer``; tests call the panels' handlers directly);
- ``tab.stylesheet()``: the tab's CSS (style.css, every rule under ``#tab_lora_trainer``).

Modules: ``tab`` (sub-tabs in workflow order), ``dataset_panel``, ``editor_panel`` (Tag & edit),
``train_panel``, ``test_panel``, ``forms`` (settings from the config's field metadata), ``html``
(messages, tables, the SVG loss chart), ``common`` (error-safe handlers), ``compat`` (gradio 3/4).
"""
