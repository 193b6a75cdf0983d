"""modules/extensions.py: the list of installed extensions (objects with name, path, enabled)."""

extensions: list = []
