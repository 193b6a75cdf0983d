"""File formats: kohya LoRA keys and metadata, key maps, safetensors I/O. torch + safetensors only."""
