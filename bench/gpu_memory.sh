#!/usr/bin/env bash
# The memory checks that need an NVIDIA GPU (issue 13), in one run. Prints figures only.
#   bash bench/gpu_memory.sh [python]        (from the repository root; ~5 minutes on an H100, plus
#   ~8 for the sd-scripts comparison at the end when SD_SCRIPTS is set)
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
# against kohya sd-scripts at identical settings (it/s and peak-VRAM ratios; a random full-size checkpoint is
# built under bench/results/vs-sd-scripts/, figures go to $OUT or bench/results/). Needs a sd-scripts checkout
# and a Python with its requirements: SD_SCRIPTS=DIR SD_SCRIPTS_PYTHON=PY bash bench/gpu_memory.sh
# (a CLIP tokenizer must be findable offline: HF_HOME with openai/clip-vit-large-patch14, or open_clip installed)
RESULTS=${OUT:-bench/results}
mkdir -p "$RESULTS"
if [ -n "${SD_SCRIPTS:-}" ]; then
  for mode in sd15 sdxl; do
    flags=""; [ "$mode" = sdxl ] && flags="--sdxl --cache-te"
    # shellcheck disable=SC2086
    $PY bench/vs_sd_scripts.py --sd-scripts "$SD_SCRIPTS" --sd-scripts-python "${SD_SCRIPTS_PYTHON:-$PY}" \
      --device cuda --warmup 5 --steps 30 $flags --json "$RESULTS/vs-sd-scripts-$mode.json" \
      2>&1 | tee "$RESULTS/vs-sd-scripts-$mode.txt" || echo "vs sd-scripts ($mode) failed: see $RESULTS/vs-sd-scripts-$mode.txt"
  done
else
  echo "vs sd-scripts: skipped (set SD_SCRIPTS to a kohya-ss/sd-scripts checkout and SD_SCRIPTS_PYTHON to its Python)"
fi
