#!/usr/bin/env bash
# Quick start: set up a virtual environment (.venv) with the standalone app, then start it on the
# built-in demo model. Open http://127.0.0.1:7870 and follow the tabs left to right.
#   bash quickstart.sh                                  # demo model (tiny, random weights)
#   bash quickstart.sh --checkpoint model.safetensors   # your SD1.x / SDXL checkpoint
# Each step prints a line first, and pip shows its download progress: the first run downloads a few GB.
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> [%s/4] %s\n' "$1" "$2"; }

# Windows (Git Bash) names the interpreter python and puts the venv's scripts in Scripts/
PYTHON=${PYTHON:-$(command -v python3 || command -v python || true)}
if [ -x .venv/bin/python ] || [ -x .venv/Scripts/python.exe ]; then
    step 1 "Using the virtual environment in $(pwd)/.venv"
else
    step 1 "Creating a virtual environment in $(pwd)/.venv"
    if [ -z "$PYTHON" ]; then
        echo "No Python found: install Python 3.10 or newer (python.org), then run this again." >&2
        exit 1
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        echo "Train LoRA needs Python 3.10 or newer; $PYTHON is $("$PYTHON" -V 2>&1). Install Python 3.10+" \
            "(python.org) and run this again, naming it: PYTHON=python3.10 bash quickstart.sh" >&2
        exit 1
    fi
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; else . .venv/Scripts/activate; fi
export PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first (on Linux this wheel carries CUDA; pick another build from pytorch.org if you need one),
# then the app with the versions the tests run against.
if python -c "import torch" 2>/dev/null; then
    step 2 "torch is already installed"
else
    step 2 "Installing torch (the largest download: it can take several minutes)"
    pip install --progress-bar on torch==2.13.0
fi
step 3 "Installing the app and its packages (gradio, diffusers, transformers, onnxruntime)"
pip install --progress-bar on -c requirements/test-constraints.txt -e ".[standalone]"

step 4 "Starting the app (the first page load builds the demo model; Ctrl-C stops it)"
exec python -m lib_lora serve "$@"
