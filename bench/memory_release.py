"""Does a run give its memory back? Trains the built-in demo model with every saver through the
job (``lib_lora.jobs.train.train``) and prints the device memory before, at the peak and after,
plus where the VAE and text encoders were during training (moved off the GPU, then back).

    python bench/memory_release.py                 # CPU: resident memory (VmRSS)
    python bench/memory_release.py --device cuda   # GPU: torch.cuda.memory_allocated

On CUDA "after" must equal "before" (the run's caches, hooks and float8 copies are gone).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def used(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    with open("/proc/self/status", encoding="ascii") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmRSS:"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-sdxl", choices=["tiny-sd15", "tiny-sdxl"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from lib_lora.config import build_config
    from lib_lora.events import Events, StopToken
    from lib_lora.jobs.train import train
    from lib_lora.standalone.models import load_model
    from support.data_images import make_dataset

    cuda = args.device.startswith("cuda")
    bundle = load_model(args.model, device=args.device, dtype="fp16" if cuda else "fp32")
    where: dict[str, set[str]] = {}

    class Watch(Events):
        def step(self, info) -> None:
            for name, modules in (("vae", [bundle.vae]), ("text", list(bundle.text_encoders.values()))):
                where.setdefault(name, set()).update(p.device.type for m in modules for p in m.parameters())

        def info(self, text: str) -> None:
            print("  " + text)

    with tempfile.TemporaryDirectory() as tmp:
        files = [(f"img{i}.png", (64, 64), "irene, smile") for i in range(3)]
        data = make_dataset(Path(tmp) / "data", {"1_irene": files})
        cfg = build_config({
            "train_data_dir": str(data), "output_dir": str(Path(tmp) / "out"), "resolution": "64",
            "max_train_epochs": 2, "network_dim": 4, "network_train_unet_only": True,
            "cache_text_encoder_outputs": True, "gradient_checkpointing": True, "fp8_base": True,
            "mixed_precision": "fp16" if cuda else "no", "seed": 1, "auto_memory": False,
        })  # fmt: skip
        gc.collect()
        before = used(args.device)
        if cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        result = train(cfg, bundle, Watch(), StopToken())
        peak = torch.cuda.max_memory_allocated() if cuda else None
        del result
        gc.collect()
        after = used(args.device)
        trimmed = None
        if not cuda:  # freed but kept by the C allocator (glibc)? hand it back and look again
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
            trimmed = used(args.device)
    mib = 2**20
    print(f"{args.model} on {args.device}: before {before / mib:.1f} MiB, after {after / mib:.1f} MiB", end="")
    print(f", peak {peak / mib:.1f} MiB" if peak is not None else "", end="")
    print(f", after malloc_trim {trimmed / mib:.1f} MiB" if trimmed is not None else "")
    print(f"  during training: VAE on {sorted(where.get('vae', []))}, text encoders on {sorted(where.get('text', []))}")
    back = {p.device.type for m in bundle.modules() for p in m.parameters()}
    print(
        f"  after: every module on {sorted(back)}; {'memory returned' if min(after, trimmed or after) <= before else 'memory NOT returned'}"
    )
    return 0 if (not cuda or after <= before) else 1


if __name__ == "__main__":
    sys.exit(main())
