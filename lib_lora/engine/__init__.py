"""The LoRA engine: torch and the standard library only (see DESIGN.md)."""
