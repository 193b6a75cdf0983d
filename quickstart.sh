#!/usr/bin/env bash
# Quick start: runs quickstart.py (which does the work, the same on every system) with the first
# python3/python it finds, or the one named in PYTHON; arguments go to the app.
#   bash quickstart.sh                                  # demo model (tiny, random weights)
#   bash quickstart.sh --checkpoint model.safetensors   # your SD1.x / SDXL checkpoint
#   PYTHON=python3.12 bash quickstart.sh                # another Python
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
if [ -z "$PYTHON" ]; then
    echo "No Python found: install Python 3.10 or newer (python.org), then run this again." >&2
    exit 1
fi
exec "$PYTHON" "$(dirname "$0")/quickstart.py" "$@"
