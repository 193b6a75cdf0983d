"""Peak memory of one training step of the full-size SD1.5 UNet, saver by saver.

The model is what the webui trains: the real ldm ``UNetModel`` (configs/v1-inference.yaml's UNet,
random weights) and a full-size CLIP-L text encoder, held as the webui holds them (float32 on the
CPU, as ``--no-half``; float16 on CUDA). One step = text encoding, UNet forward at the given
resolution, backward, AdamW step on a LoRA of kohya's default targets. Savers are added one by one,
each on top of the ones before (the webui host's configuration: our LoRA modules, our SDPA
attention patch, our non-reentrant block checkpointing, our float8 storage):

    default         ldm's quadratic attention, UNet + text encoder LoRA trained
    +sdpa           the UNet's attention through torch's scaled_dot_product_attention
    +checkpointing  gradient checkpointing of every UNet block
    +te_cache       UNet only; caption encoded once before the step (cache_text_encoder_outputs),
                    the text encoder off the device (on the CPU, where RAM is the device, its
                    weights are dropped: what a GPU gets back when it leaves)
    +fp8_base       the frozen UNet's Linear/Conv2d weights stored in float8_e4m3fn

Each configuration runs in a fresh process. Figures: on the CPU the process's peak resident memory
(VmHWM, reset after the model is loaded) over the resident memory with the model loaded; on CUDA
``torch.cuda.max_memory_allocated`` over the allocation with the model loaded. "total" adds the
loaded model (so the float8 configuration, whose stored model is smaller, shows it there).

    python bench/memory.py                       # CPU, 512 px, batch 1, dim 8
    python bench/memory.py --device cuda --resolution 512 --batch 1
    python bench/memory.py --device cuda --arch sdxl --resolution 1024 --dim 32   # GPU only (13 GB in fp32)

``--arch sdxl`` uses the standalone host's diffusers SDXL UNet and its two CLIP text encoders (the
sgm classes the webui runs are not on PyPI); its default row uses diffusers' plain attention
processor and +sdpa its ``AttnProcessor2_0``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = ("default", "+sdpa", "+checkpointing", "+te_cache", "+fp8_base")
GIB = 1024**3


def savers(config: str) -> set[str]:
    """The savers on in ``config`` (each configuration adds one to the ones before)."""
    index = CONFIGS.index(config)
    return {name.lstrip("+") for name in CONFIGS[1 : index + 1]}


def _status_kib(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")  # resets VmHWM to the current RSS


def resident_bytes(module, device: str) -> int:
    """Bytes of ``module``'s tensors on the training device (what left it does not count)."""
    kind = device.split(":")[0]
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()] if t.device.type == kind)


def build(device: str, dtype):
    import torch
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lib_lora.standalone.architectures import load_config

    torch.manual_seed(0)
    unet = UNetModel(
        image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
        num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
        transformer_depth=1, context_dim=768, use_checkpoint=False, legacy=False,
    )  # fmt: skip
    te = CLIPTextModel(CLIPTextConfig(**load_config("clip_l")))
    for module in (unet, te):
        module.to(device=device, dtype=dtype).requires_grad_(False).eval()
    return unet, te


def build_sdxl(device: str, dtype, arch: str = "sdxl"):
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lib_lora.standalone.architectures import load_config
    from lib_lora.standalone.tiny import tiny_configs

    torch.manual_seed(0)
    if arch == "tiny-sdxl":  # a smoke run of this path on any machine
        configs = tiny_configs("tiny-sdxl")
    else:
        configs = {"unet": load_config("sdxl_unet"), "te1": load_config("clip_l"), "te2": load_config("clip_bigg")}
    unet = UNet2DConditionModel(**configs["unet"])
    te1 = CLIPTextModel(CLIPTextConfig(**configs["te1"]))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs["te2"]))
    for module in (unet, te1, te2):
        module.to(device=device, dtype=dtype).requires_grad_(False).eval()
    return unet, {"te1": te1, "te2": te2}


def run_sdxl(config: str, args: argparse.Namespace) -> dict:
    import torch
    from diffusers.models.attention_processor import AttnProcessor

    from lib_lora.engine.fp8 import Fp8Base
    from lib_lora.engine.network import LoRANetwork
    from lib_lora.engine.targets import select_targets

    on = savers(config)
    cuda = args.device.startswith("cuda")
    dtype = torch.float16 if cuda else torch.float32
    unet, tes = build_sdxl(args.device, dtype, args.arch)
    if "fp8_base" in on:
        Fp8Base([unet], keep_originals=False).install()
    train_te = "te_cache" not in on
    network = LoRANetwork(
        select_targets("sdxl", unet, tes if train_te else {}), args.dim, args.dim,
        naming={"unet": "diffusers", "te1": "hf", "te2": "hf"}, family="sdxl",
    )  # fmt: skip
    network.to(args.device)
    network.apply_to()
    network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(1)
    size = args.resolution // 8
    latents = torch.randn(args.batch, 4, size, size, generator=generator).to(args.device)
    noise = torch.randn(latents.shape, generator=generator).to(args.device)
    vocab = tes["te1"].config.vocab_size - 2
    tokens = torch.randint(0, vocab, (args.batch, 77), generator=generator).to(args.device)
    timesteps = torch.randint(0, 1000, (args.batch,), generator=generator).to(args.device)
    r = args.resolution
    time_ids = torch.tensor([[r, r, 0, 0, r, r]] * args.batch, device=args.device, dtype=dtype)
    autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else torch.autocast("cpu", enabled=False)

    def encode():
        h1 = tes["te1"](tokens, output_hidden_states=True).hidden_states[-2]
        out2 = tes["te2"](tokens, output_hidden_states=True)
        return torch.cat([h1, out2.hidden_states[-2]], dim=-1), out2.text_embeds

    cached = None
    if not train_te:
        with torch.no_grad(), autocast:
            cached = tuple(t.detach() for t in encode())
        for te in tes.values():
            te.to("cpu" if cuda else "meta")
    if "sdpa" not in on:
        unet.set_attn_processor(AttnProcessor())
    if "checkpointing" in on:
        unet.enable_gradient_checkpointing()
        unet.train()
    base = _start_peak(cuda)
    started = time.perf_counter()
    with autocast:
        context, pooled = cached if cached is not None else encode()
        prediction = unet(
            latents.to(dtype), timesteps, encoder_hidden_states=context.to(dtype),
            added_cond_kwargs={"text_embeds": pooled.to(dtype), "time_ids": time_ids},
        ).sample  # fmt: skip
    loss = torch.nn.functional.mse_loss(prediction.float(), noise)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    peak = _peak(cuda)
    modules = [unet, *tes.values()]
    return {
        "config": config,
        "over_model_bytes": peak - base,
        "model_bytes": sum(resident_bytes(m, args.device) for m in modules),
        "seconds": time.perf_counter() - started,
        "lora_params": sum(p.numel() for p in network.parameters()),
        "loss": float(loss.detach()),
    }


def _start_peak(cuda: bool) -> int:
    """Collect garbage, reset the peak counter; the bytes in use now (CUDA allocated, or RSS)."""
    import torch

    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    _reset_peak_rss()
    return _status_kib("VmRSS") * 1024


def _peak(cuda: bool) -> int:
    """The peak since :func:`_start_peak` (CUDA max allocated, or the process's RSS high-water mark)."""
    if cuda:
        import torch

        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _status_kib("VmHWM") * 1024


def run_config(config: str, args: argparse.Namespace) -> dict:
    import torch

    from lib_lora.engine.attention import SdpaAttention
    from lib_lora.engine.fp8 import Fp8Base
    from lib_lora.engine.network import LoRANetwork
    from lib_lora.engine.targets import select_targets
    from lib_lora.webui.model_bundle import _checkpoint_blocks

    torch.set_num_threads(args.threads or torch.get_num_threads())
    if args.arch in ("sdxl", "tiny-sdxl"):
        return run_sdxl(config, args)
    on = savers(config)
    cuda = args.device.startswith("cuda")
    dtype = torch.float16 if cuda else torch.float32
    unet, te = build(args.device, dtype)
    fp8 = None
    if "fp8_base" in on:  # as the webui's own FP8 option stores it (the fp32/fp16 copy is not kept)
        fp8 = Fp8Base([unet], keep_originals=False)
        fp8.install()
    train_te = "te_cache" not in on
    network = LoRANetwork(
        select_targets("sd1", unet, {"te": te} if train_te else {}), args.dim, args.dim,
        naming={"unet": "ldm", "te": "hf"}, family="sd1",
    )  # fmt: skip
    network.to(args.device)
    network.apply_to()
    network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(1)
    size = args.resolution // 8
    latents = torch.randn(args.batch, 4, size, size, generator=generator).to(args.device)
    noise = torch.randn(latents.shape, generator=generator).to(args.device)
    tokens = torch.randint(0, 49406, (args.batch, 77), generator=generator).to(args.device)
    timesteps = torch.randint(0, 1000, (args.batch,), generator=generator).to(args.device)
    autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else torch.autocast("cpu", enabled=False)
    cached = None
    if not train_te:  # cache_text_encoder_outputs: encoded once, the encoder leaves the device
        with torch.no_grad(), autocast:
            cached = te(tokens).last_hidden_state.detach()
        te.to("cpu" if cuda else "meta")  # on the CPU the device is RAM: the weights are dropped
    attention = SdpaAttention([unet]) if "sdpa" in on else None
    patched = _checkpoint_blocks(unet, {"te": te} if train_te else {}) if "checkpointing" in on else []
    if attention is not None:
        attention.install()
    base = _start_peak(cuda)
    started = time.perf_counter()
    with autocast:
        context = cached if cached is not None else te(tokens).last_hidden_state
        prediction = unet(latents.to(dtype), timesteps, context=context.to(dtype))
    loss = torch.nn.functional.mse_loss(prediction.float(), noise)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    peak = _peak(cuda)
    seconds = time.perf_counter() - started
    model_bytes = sum(resident_bytes(m, args.device) for m in (unet, te))
    del patched, fp8
    return {
        "config": config,
        "over_model_bytes": peak - base,
        "model_bytes": model_bytes,
        "seconds": seconds,
        "lora_params": sum(p.numel() for p in network.parameters()),
        "loss": float(loss.detach()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sd15", choices=["sd15", "sdxl", "tiny-sdxl"])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS))
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--config", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.config:
        print(json.dumps(run_config(args.config, args)))
        return 0
    rows = []
    for config in [c.strip() for c in args.configs.split(",") if c.strip()]:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--config", config]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        row = rows[-1]
        print(
            f"{config:<15} peak over the loaded model {row['over_model_bytes'] / GIB:6.2f} GiB   "
            f"total {(row['over_model_bytes'] + row['model_bytes']) / GIB:6.2f} GiB   step {row['seconds']:6.1f} s",
            flush=True,
        )
    what = "peak RSS (VmHWM)" if args.device == "cpu" else "torch.cuda.max_memory_allocated"
    model = "SD1.5 ldm UNet + CLIP-L" if args.arch == "sd15" else f"{args.arch} diffusers UNet + CLIP-L + bigG"
    print(
        f"{model}, {args.resolution} px, batch {args.batch}, dim {args.dim}, {args.device}; {what}; "
        "each row adds one saver to the rows above it"
    )
    for before, after in zip(rows, rows[1:]):
        a = before["over_model_bytes"] + before["model_bytes"]
        b = after["over_model_bytes"] + after["model_bytes"]
        print(f"  {after['config']:<15} total {b / a:5.2f}x of {before['config']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
