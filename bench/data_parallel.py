"""Data-parallel training against the plain run: the same settings as a plain ``python -m lib_lora
train``, under ``torchrun --nproc_per_node 1`` (must cost nothing: it takes the plain path) and
``--nproc_per_node N`` (N GPUs, or N CPU processes over gloo).

Prints, per run, the median seconds per optimizer step (first 5 steps left out), steps/s, images/s
(steps/s x the effective batch) and the ratio to the plain run; the speed-up of N processes is the
images/s ratio. Needs N GPUs for a meaningful N > 1 figure: on the CPU torchrun gives each of N > 1
processes one thread (OMP_NUM_THREADS=1) while the plain run uses them all, so CPU ratios say nothing.

    python bench/data_parallel.py [--model tiny-sd15] [--nproc 2] [--batch 2] [--epochs 4] [--resolution 512]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.train_data import preset_dataset  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(launcher: list[str], settings: list[str], out: Path, batch: int, processes: int) -> dict:
    subprocess.run([*launcher, "train", *settings, "--output_dir", str(out)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    rows = [json.loads(line) for line in (out / "b-log.jsonl").read_text().splitlines()]
    per_step = statistics.median(row["seconds"] for row in rows[5:] or rows)
    return {
        "steps": len(rows),
        "s_per_step": per_step,
        "steps_s": 1 / per_step,
        "images_s": batch * processes / per_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sd15")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--resolution", default="512")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = preset_dataset(Path(tmp) / "data")
        settings = ["--pretrained_model_name_or_path", args.model, "--train_data_dir", str(data), "--output_name", "b",
                    "--train_batch_size", str(args.batch), "--max_train_epochs", str(args.epochs), "--resolution",
                    args.resolution, "--seed", "1", "--cache_latents_to_disk", "true"]  # fmt: skip
        python = [sys.executable, "-m"]
        runs = {"plain": (python + ["lib_lora"], 1)}
        for n in sorted({1, args.nproc}):
            torchrun = ["torch.distributed.run", "--nproc_per_node", str(n), "--master_port", str(_port()), "-m"]
            runs[f"torchrun x{n}"] = (python + torchrun + ["lib_lora"], n)
        results = {name: run(cmd, settings, Path(tmp) / name.replace(" ", "_"), args.batch, n) for name, (cmd, n) in runs.items()}  # fmt: skip
    base = results["plain"]
    for name, r in results.items():
        print(f"{name:>12}: {r['steps']:5d} steps, {r['s_per_step'] * 1000:8.1f} ms/step, {r['steps_s']:7.2f} steps/s, "
              f"{r['images_s']:8.2f} images/s = {r['images_s'] / base['images_s']:.2f} x plain")  # fmt: skip


if __name__ == "__main__":
    main()
