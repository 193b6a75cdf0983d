"""Train LoRA for AUTOMATIC1111's webui: the "Train LoRA" tab, its settings and HTTP API.

All code lives in ``lib_lora`` (imported while the webui puts this extension on ``sys.path``);
this file only registers the callbacks. Nothing heavy is imported and no model is touched here.
"""

from lib_lora.webui import register

register.register()
