"""Training-step speed and peak memory: our LoRA engine vs the reference path (diffusers + peft).

Both sides train LoRAs of the same rank on exactly the same modules of the same randomly
initialised diffusers UNet (kohya's default targets: every Linear / 1x1 conv inside the
transformer blocks) with the same batch, resolution, AdamW, loss and precision. Each side runs in
its own process so peak memory (CUDA max allocated, or the process's peak RSS on the CPU) is its
own. Prints it/s, peak memory and the ratios ours / baseline.

    python bench/train_step.py --arch tiny-sd15 --resolution 512 --batch 2
    python bench/train_step.py --arch sd15 --resolution 512 --batch 1 --device cuda --dtype fp16
    python bench/train_step.py --arch sdxl --resolution 1024 --batch 1 --device cuda --dtype bf16

Architectures: tiny-sd15 / tiny-sdxl (the built-in demo models), small-sd15 (SD1.5's layout at a
quarter of its width: real shapes, small enough for a CPU), sd15, sdxl (full size).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def unet_config(arch: str) -> dict:
    from lib_lora.standalone.architectures import load_config

    if arch in ("tiny-sd15", "tiny-sdxl"):
        from lib_lora.standalone.tiny import tiny_configs

        return tiny_configs(arch)["unet"]
    if arch == "small-sd15":
        config = load_config("sd15_unet")
        config["block_out_channels"] = [80, 160, 320, 320]
        config["cross_attention_dim"] = 192
        config["norm_num_groups"] = 16  # 80 channels: SD1.5's 32 groups do not divide them
        return config
    return load_config({"sd15": "sd15_unet", "sdxl": "sdxl_unet"}[arch])


def build(arch: str, device: str, dtype):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_config(arch)).to(device=device, dtype=dtype)
    unet.requires_grad_(False)
    unet.train()
    return unet


def inputs(unet, batch: int, resolution: int, device: str, dtype):
    import torch

    g = torch.Generator().manual_seed(1)
    config = unet.config
    latents = torch.randn(batch, 4, resolution // 8, resolution // 8, generator=g).to(device, dtype)
    context = torch.randn(batch, 77, config.cross_attention_dim, generator=g).to(device, dtype)
    added = None
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        added = {
            "text_embeds": torch.randn(batch, pooled, generator=g).to(device, dtype),
            "time_ids": torch.tensor(
                [[resolution, resolution, 0, 0, resolution, resolution]] * batch, dtype=dtype, device=device
            ),
        }
    return latents, context, added


def run_side(side: str, args: argparse.Namespace) -> dict:
    import torch

    from lib_lora.engine.network import LoRANetwork
    from lib_lora.engine.targets import unet_targets

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    torch.set_num_threads(args.threads or torch.get_num_threads())
    unet = build(args.arch, args.device, dtype)
    targets = unet_targets(unet)
    if side == "ours":
        network = LoRANetwork(targets, args.dim, args.dim, naming={"unet": "diffusers"})
        network.apply_to()
        params = [p for p in network.parameters()]
    else:
        from peft import LoraConfig, inject_adapter_in_model

        names = sorted(t.path for t in targets)
        config = LoraConfig(
            r=args.dim, lora_alpha=args.dim, target_modules=names, lora_dropout=0.0, init_lora_weights=True
        )
        unet = inject_adapter_in_model(config, unet)
        params = [p for n, p in unet.named_parameters() if "lora_" in n]
        for p in params:
            p.data = p.data.float()
            p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    latents, context, added = inputs(unet, args.batch, args.resolution, args.device, dtype)
    autocast = torch.autocast(args.device.split(":")[0], dtype=dtype) if dtype != torch.float32 else None
    timesteps = torch.randint(0, 1000, (args.batch,), generator=torch.Generator().manual_seed(2)).to(args.device)
    noise = torch.randn_like(latents)

    def step() -> None:
        if autocast is not None:
            with autocast:
                out = unet(latents, timesteps, encoder_hidden_states=context, added_cond_kwargs=added).sample
        else:
            out = unet(latents, timesteps, encoder_hidden_states=context, added_cond_kwargs=added).sample
        loss = torch.nn.functional.mse_loss(out.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    cuda = args.device.startswith("cuda")
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "side": side,
        "modules": len(targets),
        "lora_params": sum(p.numel() for p in params),
        "it_s": args.steps / seconds,
        "peak_bytes": peak,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arch", default="small-sd15", choices=["tiny-sd15", "tiny-sdxl", "small-sd15", "sd15", "sdxl"]
    )
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--side", choices=["ours", "peft"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_side(args.side, args)))
        return 0
    results = {}
    for side in ("ours", "peft"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--side", side]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)
            return done.returncode
        results[side] = json.loads(done.stdout.strip().splitlines()[-1])
    ours, peft = results["ours"], results["peft"]
    print(
        f"{args.arch} {args.resolution}px batch {args.batch} dim {args.dim} {args.dtype} on {args.device}: {ours['modules']} LoRA modules"
    )
    for r in (ours, peft):
        print(
            f"  {r['side']:<5} {r['it_s']:7.3f} it/s   peak {r['peak_bytes'] / 2**20:9.1f} MiB   LoRA params {r['lora_params']:,}"
        )
    print(
        f"  ratio ours/peft: speed {ours['it_s'] / peft['it_s']:.2f}x, peak memory {ours['peak_bytes'] / peft['peak_bytes']:.2f}x"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
