"""Stand-in of the webui's ``modules`` package (tests only; see ../README.md)."""
