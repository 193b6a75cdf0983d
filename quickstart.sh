#!/usr/bin/env bash
# Quick start: set up a virtual environment (.venv) with the standalone app, then start it on the
# built-in demo model. Open http://127.0.0.1:7870 and follow the tabs left to right.
#   bash quickstart.sh                                  # demo model (tiny, random weights)
#   bash quickstart.sh --checkpoint model.safetensors   # your SD1.x / SDXL checkpoint
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first (on Linux this wheel carries CUDA; pick another build from pytorch.org if you need one),
# then the app with the versions the tests run against.
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -c requirements/test-constraints.txt -e ".[standalone]"

exec python -m lib_lora serve "$@"
