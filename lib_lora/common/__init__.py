"""Small stdlib-only helpers shared by every layer (errors, atomic files, tags, dataset layout)."""
