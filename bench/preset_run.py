"""The `character` preset end to end on the built-in demo models, as a user runs it from the terminal.

Generates 12 images of mixed aspect ratios in two folders with different repeats (`1_irene` x6,
`2_outfit` x6), then for each model runs

    python -m lib_lora train --preset character --pretrained_model_name_or_path MODEL ...

in a fresh process (imports, model build, latent caching and 550 steps all counted) and prints the
wall time against the 2-minute budget of the training issue, the mean loss of each 110-step block,
and whether every written LoRA's stored `sshs_model_hash` matches its contents.

    python bench/preset_run.py [--models tiny-sd15,tiny-sdxl] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from lib_lora.formats import safetensors_io  # noqa: E402
from lib_lora.formats.metadata import sshs_model_hash_of_file  # noqa: E402
from support.train_data import preset_dataset  # noqa: E402

BUDGET_S = 120.0


def run(model: str, data: Path, out: Path) -> dict:
    argv = [sys.executable, "-m", "lib_lora", "train", "--preset", "character", "--train_data_dir", str(data),
            "--pretrained_model_name_or_path", model, "--output_dir", str(out), "--output_name", "irene", "--seed", "1"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "irene-log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    blocks = [statistics.mean(losses[i : i + 110]) for i in range(0, len(losses), 110)]
    files = sorted(out.glob("*.safetensors"))
    hashes_ok = sum(safetensors_io.load(f)[1].get("sshs_model_hash") == sshs_model_hash_of_file(f) for f in files)
    return {"model": model, "seconds": seconds, "steps": len(losses), "loss_blocks": blocks, "files": len(files),
            "hashes_ok": hashes_ok, "json": (out / "irene.json").is_file()}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny-sd15,tiny-sdxl")
    parser.add_argument("--keep", action="store_true", help="keep the generated dataset and outputs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="preset-run-"))
    try:
        data = work / "data"
        preset_dataset(data)
        for model in args.models.split(","):
            r = run(model, data, work / model)
            trend = " -> ".join(f"{v:.4f}" for v in r["loss_blocks"])
            print(
                f"{model}: {r['seconds']:.1f} s for {r['steps']} steps ({r['seconds'] / BUDGET_S:.2f}x the {BUDGET_S:.0f} s budget)"
            )
            print(f"  mean loss per 110 steps: {trend}")
            print(
                f"  {r['files']} LoRA files, {r['hashes_ok']} with a matching sshs_model_hash; irene.json: {r['json']}"
            )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
