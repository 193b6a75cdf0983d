#!/usr/bin/env bash
# The memory checks that need an NVIDIA GPU (issue 13), in one run. Prints figures only.
#   bash bench/gpu_memory.sh [python]        (from the repository root; ~5 minutes on an H100)
set -euo pipefail
PY=${1:-python}
nvidia-smi --query-gpu=name,memory.total --format=csv
# SD1.5 512 px, batch 2, dim 32, UNet + text encoder, fp16 weights: each saver's peak
$PY bench/memory.py --device cuda --resolution 512 --batch 2 --dim 32 --json bench/results/memory-sd15.json
# SDXL 1024 px, batch 1, dim 32 (diffusers UNet), fp16 weights: each saver's peak
$PY bench/memory.py --device cuda --arch sdxl --resolution 1024 --batch 1 --dim 32 --json bench/results/memory-sdxl.json
# a run with every saver gives its memory back; VAE / text encoders off the GPU while it trains
$PY bench/memory_release.py --device cuda --model tiny-sdxl
# SDPA gradients and fp8 layers on the GPU's kernels (the tests run on whatever device is default: CPU)
$PY -m pytest tests/engine/test_attention.py tests/engine/test_savers.py -q
