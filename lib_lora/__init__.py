"""Train LoRA: the engine behind the webui's "Train LoRA" tab, its CLI and its standalone app.

Nothing heavy is imported here: the webui imports this package at start-up.
"""

__version__ = "0.1.0"
PROJECT_NAME = "Train LoRA"
PROJECT_URL = "https://github.com/train-lora/sd-webui-train-lora"
