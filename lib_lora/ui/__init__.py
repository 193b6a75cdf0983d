"""The "Train LoRA" tab: gradio only (3.41.2 API, nothing that breaks on gradio 4).

It talks to its host (the webui, or the standalone app) through :class:`lib_lora.ui.host.UIHost`
and to the work through ``lib_lora.jobs``; it never imports the webui's ``modules``.
"""
