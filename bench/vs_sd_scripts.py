"""Training speed and peak memory against kohya sd-scripts itself, at identical settings.

Runs sd-scripts' ``train_network.py`` (``sdxl_train_network.py`` with ``--sdxl``) from the user's own
checkout and install, and our ``python -m lib_lora train``, one after the other, each in a fresh
process, on the same random-weight full-size checkpoint, the same dataset and the same settings:

    resolution 512 (SDXL 1024), batch 1, LoRA dim 32 / alpha 16 on the UNet only, AdamW, lr 1e-4
    constant, max_grad_norm 1, gradient checkpointing, latents cached, SDPA attention (sd-scripts
    ``--sdpa``), fp32 on the CPU / fp16 mixed precision (fp16 base weights) on a GPU, no sampling,
    one save at the end, seed 42, data loading in the training process. ``--cache-te`` adds
    ``cache_text_encoder_outputs`` to both (SDXL only: sd-scripts' train_network.py has no such
    cache for SD1).

Figures, read the same way for both tools:

- s/it: steady state. Each tool's training progress bar (sd-scripts' "steps", ours' "step") is read
  as it is printed and every update is time-stamped; s/it = time from the update that reached step
  ``--warmup`` to the last one, over the steps in between (the warm-up steps, model loading, latent
  caching and the final save are left out).
- peak memory: each tool runs under a small launcher (this file, ``--launch``) that runs the
  training script in the same interpreter. When the bar reaches step 1 this script signals the
  launcher, which notes the memory at that moment ("after step 1": model + LoRA + optimizer state
  + cached latents) and resets the peak counters; at the end it reads the peak over steps 2..N.
  On CUDA: ``torch.cuda.max_memory_allocated`` (and ``max_memory_reserved``); on the CPU the
  process's peak resident memory (VmHWM; the process tree's summed RSS is also sampled every
  0.25 s, in case a tool starts helper processes). "over base" = peak - after step 1; "whole run"
  = the peak including model loading and latent caching.

Ratios are ours / sd-scripts: speed ratio = our it/s over theirs (the issue's goal: >= 1.25),
memory ratio = our peak over theirs (goal: <= 0.75).

    python bench/vs_sd_scripts.py --sd-scripts ~/sd-scripts --sd-scripts-python ~/sd-scripts/venv/bin/python
    python bench/vs_sd_scripts.py --sd-scripts DIR --sd-scripts-python PY --device cpu --warmup 3 --steps 3
    python bench/vs_sd_scripts.py --sd-scripts DIR --sd-scripts-python PY --sdxl --cache-te --steps 30

The checkpoint (``--checkpoint``, else a random-weight one is built once into ``--work``: SD1.5 from
the webui's ldm classes, ~2 GB; SDXL with diffusers' UNet renamed to sgm keys, ~7 GB), the dataset
(``--images`` 512 / 1024 px PNGs with captions) and a tokenizer folder for sd-scripts
(``--tokenizer_cache_dir``, written from the CLIP vocabulary our loader finds: the Hugging Face cache
or open_clip) are made under ``--work``. Both tools then run offline. Needs sd-scripts' requirements
installed in ``--sd-scripts-python``'s environment and this project's standalone extra plus
``stable-diffusion-sdkit`` (the ldm classes) in the Python that runs this script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3
SD_SCRIPTS = "sd-scripts"
OURS = "ours"
# a training progress-bar update: sd-scripts' tqdm has desc "steps", ours unit "step"
PROGRESS = {
    SD_SCRIPTS: re.compile(r"steps:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)"),
    OURS: re.compile(r"(\d+)/(\d+) \[[^\]]*(?:s/step|step/s)"),
}
TOKENIZER_IDS = ("openai/clip-vit-large-patch14", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k")


# -- the launcher (runs inside each tool's own interpreter: stdlib and, when loaded, torch only) ----


def _status_kib(pid: int | str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _memory_now() -> dict:
    out = {"rss": _status_kib("self", "VmRSS") * 1024, "hwm": _status_kib("self", "VmHWM") * 1024}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        out.update(
            cuda_allocated=torch.cuda.memory_allocated(),
            cuda_max_allocated=torch.cuda.max_memory_allocated(),
            cuda_max_reserved=torch.cuda.max_memory_reserved(),
        )
    return out


def _reset_peaks() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")  # VmHWM := VmRSS
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def launch(result_path: str, cwd: str, argv: list[str]) -> int:
    """Run ``argv`` (``-m MODULE ARGS`` or ``SCRIPT ARGS``) in this interpreter; on SIGUSR1 note the
    memory and reset the peaks; at the end write both snapshots to ``result_path``."""
    import runpy

    state: dict = {}

    def on_mark(signum, frame) -> None:
        state["mark"] = _memory_now()
        _reset_peaks()

    signal.signal(signal.SIGUSR1, on_mark)
    os.chdir(cwd)
    code = 0
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = cwd
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path[0] = str(Path(argv[0]).resolve().parent)
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        state["end"] = _memory_now()
        Path(result_path).write_text(json.dumps(state))
    return code


# -- inputs: checkpoint, dataset, tokenizer folder ------------------------------------------------------


def _fill_(tensor, name: str, generator) -> None:
    """Random weights that keep activations O(1): fan-in scaled normals for matrices and kernels,
    ones for norm scales, small random biases (a zero final LayerNorm bias is a NaN trap in the
    webui's emphasis code)."""
    import torch

    if tensor.dim() >= 2:
        tensor.copy_(torch.randn(tensor.shape, generator=generator) / math.sqrt(tensor[0].numel()))
    elif name.endswith(("weight", "scale")):
        tensor.fill_(1.0)
    else:
        tensor.copy_(0.02 * torch.randn(tensor.shape, generator=generator))


def _ldm_vae_state() -> dict:
    """The SD / SDXL VAE (ldm AutoencoderKL: ch 128, mult 1,2,4,4, two res blocks, z 4) as ldm names."""
    import torch
    from ldm.modules.diffusionmodules.model import Decoder, Encoder

    common = dict(ch=128, out_ch=3, ch_mult=(1, 2, 4, 4), num_res_blocks=2, attn_resolutions=[],
                  in_channels=3, resolution=256, z_channels=4)  # fmt: skip
    parts = {
        "encoder": Encoder(double_z=True, **common),
        "decoder": Decoder(**common),
        "quant_conv": torch.nn.Conv2d(8, 8, 1),
        "post_quant_conv": torch.nn.Conv2d(4, 4, 1),
    }
    return {f"{part}.{key}": value for part, module in parts.items() for key, value in module.state_dict().items()}


def _bigg_openclip_shapes() -> dict[str, tuple[int, ...]]:
    """SDXL's second text encoder (OpenCLIP ViT-bigG/14 text tower) as sgm checkpoints name it."""
    width, layers, vocab, context = 1280, 32, 49408, 77
    shapes: dict[str, tuple[int, ...]] = {
        "token_embedding.weight": (vocab, width),
        "positional_embedding": (context, width),
        "ln_final.weight": (width,),
        "ln_final.bias": (width,),
        "text_projection": (width, width),
        "logit_scale": (),
    }
    for i in range(layers):
        block = f"transformer.resblocks.{i}."
        shapes.update({
            block + "ln_1.weight": (width,), block + "ln_1.bias": (width,),
            block + "attn.in_proj_weight": (3 * width, width), block + "attn.in_proj_bias": (3 * width,),
            block + "attn.out_proj.weight": (width, width), block + "attn.out_proj.bias": (width,),
            block + "ln_2.weight": (width,), block + "ln_2.bias": (width,),
            block + "mlp.c_fc.weight": (4 * width, width), block + "mlp.c_fc.bias": (4 * width,),
            block + "mlp.c_proj.weight": (width, 4 * width), block + "mlp.c_proj.bias": (width,),
        })  # fmt: skip
    return shapes


def checkpoint_layout(sdxl: bool) -> dict:
    """Every tensor of a full-size SD1.5 / SDXL checkpoint in the webui's single-file layout, as meta
    tensors (names, shapes, dtypes; no memory): SD1.5 from the webui's ldm UNetModel (as bench/memory.py
    builds it), SDXL from diffusers' UNet renamed to sgm keys; CLIP-L from transformers, bigG under
    OpenCLIP names, the VAE from ldm's Encoder/Decoder."""
    import torch

    from lib_lora.standalone.architectures import load_config

    out: dict[str, torch.Tensor] = {}
    with torch.device("meta"):
        if not sdxl:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from memory import build  # the ldm UNetModel the webui trains + CLIP-L

            unet, te = build("meta", torch.float32)
            out.update({"model.diffusion_model." + k: v for k, v in unet.state_dict().items()})
            out.update({"cond_stage_model.transformer." + _hf(k): v for k, v in te.state_dict().items()})
        else:
            from diffusers import UNet2DConditionModel
            from transformers import CLIPTextConfig, CLIPTextModel

            from lib_lora.formats.keymap import SDXL_LAYOUT, convert_unet_state_dict

            unet = UNet2DConditionModel(**load_config("sdxl_unet"))
            sgm = convert_unet_state_dict(unet.state_dict(), SDXL_LAYOUT, to_diffusers=False)
            out.update({"model.diffusion_model." + k: v for k, v in sgm.items()})
            te1 = CLIPTextModel(CLIPTextConfig(**load_config("clip_l")))
            out.update({"conditioner.embedders.0.transformer." + _hf(k): v for k, v in te1.state_dict().items()})
            for name, shape in _bigg_openclip_shapes().items():
                out["conditioner.embedders.1.model." + name] = torch.empty(shape)
        out.update({"first_stage_model." + k: v for k, v in _ldm_vae_state().items()})
    for key in [k for k in out if k.endswith("embeddings.position_ids")]:
        out[key] = torch.arange(77, dtype=torch.int64).unsqueeze(0)
    return out


def build_checkpoint(path: Path, sdxl: bool) -> None:
    """A full-size random-weight checkpoint (:func:`checkpoint_layout`), fp16, written atomically."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(1234)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in checkpoint_layout(sdxl).items():
        if not tensor.is_floating_point():
            out[name] = tensor.contiguous()
            continue
        value = torch.empty(tensor.shape, dtype=torch.float32)
        _fill_(value, name, generator)
        out[name] = value.to(torch.float16)
    if sdxl:
        out["conditioner.embedders.1.model.logit_scale"] = torch.tensor(math.log(100.0), dtype=torch.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(out, str(partial))
    os.replace(partial, path)


def _hf(name: str) -> str:
    return name if name.startswith("text_model.") else "text_model." + name


def make_dataset(folder: Path, images: int, resolution: int, repeats: int) -> Path:
    """``images`` smooth random RGB pictures with a caption each, in sd-scripts' ``N_name`` layout."""
    import numpy as np
    from PIL import Image

    if folder.exists():
        shutil.rmtree(folder)
    sub = folder / f"{repeats}_bench"
    sub.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(images):
        coarse = rng.random((8, 8, 3)) * 255
        picture = Image.fromarray(coarse.astype(np.uint8)).resize((resolution, resolution), Image.BICUBIC)
        picture.save(sub / f"img{i:02d}.png")
        (sub / f"img{i:02d}.txt").write_text(f"benchtoken, picture {i}, colourful, abstract", encoding="utf-8")
    return folder


def make_tokenizer_cache(folder: Path, sdxl: bool) -> Path:
    """sd-scripts' ``--tokenizer_cache_dir`` layout, from the CLIP vocabulary our loader uses."""
    import tempfile

    from lib_lora.standalone.tokenizer import resolve_tokenizer_files, tokenizers_for

    with tempfile.TemporaryDirectory() as work:
        tokenizers = tokenizers_for("sdxl" if sdxl else "sd1", resolve_tokenizer_files(None, work))
    for model_id, tokenizer in zip(TOKENIZER_IDS, tokenizers.values()):
        tokenizer.save_pretrained(str(folder / model_id.replace("/", "_")))
    return folder


# -- running the tools ------------------------------------------------------------------------------


def sd_scripts_command(args, checkpoint: Path, data: Path, tokenizers: Path, out: Path) -> list[str]:
    script = Path(args.sd_scripts) / ("sdxl_train_network.py" if args.sdxl else "train_network.py")
    command = [
        str(script), "--pretrained_model_name_or_path", str(checkpoint), "--train_data_dir", str(data),
        "--caption_extension", ".txt", "--resolution", str(args.resolution), "--train_batch_size", str(args.batch),
        "--network_module", "networks.lora", "--network_dim", str(args.dim), "--network_alpha", str(args.alpha),
        "--network_train_unet_only", "--optimizer_type", "AdamW", "--learning_rate", str(args.lr),
        "--lr_scheduler", "constant", "--max_grad_norm", "1.0", "--gradient_checkpointing", "--cache_latents",
        "--sdpa", "--mixed_precision", precision(args), "--max_train_steps", str(args.warmup + args.steps),
        "--output_dir", str(out), "--output_name", "sd_scripts", "--save_model_as", "safetensors",
        "--save_precision", "fp16", "--seed", "42", "--max_data_loader_n_workers", "0",
        "--tokenizer_cache_dir", str(tokenizers),
    ]  # fmt: skip
    if args.cache_te:
        command.append("--cache_text_encoder_outputs")
    if args.sdxl:  # SDXL's VAE overflows in fp16 (only latent caching: ours retries such a batch in fp32)
        command.append("--no_half_vae")
    return command


def ours_command(args, checkpoint: Path, data: Path, out: Path) -> list[str]:
    settings = {
        "pretrained_model_name_or_path": checkpoint, "train_data_dir": data, "caption_extension": ".txt",
        "resolution": args.resolution, "train_batch_size": args.batch, "network_dim": args.dim,
        "network_alpha": args.alpha, "network_train_unet_only": "true", "optimizer_type": "AdamW",
        "learning_rate": args.lr, "lr_scheduler": "constant", "max_grad_norm": "1.0",
        "gradient_checkpointing": "true", "cache_latents": "true", "sdpa": "true",
        "mixed_precision": precision(args), "max_train_steps": args.warmup + args.steps, "output_dir": out,
        "output_name": "ours", "save_precision": "fp16", "seed": 42, "auto_memory": "false",
        "cache_text_encoder_outputs": "true" if args.cache_te else "false",
    }  # fmt: skip
    return ["-m", "lib_lora", "train", "--device", args.device, *[f"--{k}={v}" for k, v in settings.items()]]


def precision(args) -> str:
    return "fp16" if args.device.startswith("cuda") else "no"


def _tree_rss(root: int) -> int:
    """Summed resident memory of ``root`` and every process below it."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(_status_kib(pid, "VmRSS") for pid in tree) * 1024


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def run_tool(tool: str, python: str, argv: list[str], cwd: Path, work: Path, env: dict) -> dict:
    """One fresh process of ``tool`` under the launcher; progress time-stamped, memory sampled."""
    result_file = work / f"{tool}-memory.json"
    result_file.unlink(missing_ok=True)
    log_path = work / f"{tool}.log"
    command = [python, str(Path(__file__).resolve()), "--launch", str(result_file), "--cwd", str(cwd), "--", *argv]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, bufsize=0)
    steps: list[tuple[float, int, int, float]] = []  # (seconds since start, step, total, CPU seconds)
    marked: list[float] = []
    samples = {"run": 0, "train": 0}

    def read() -> None:
        pattern, pending = PROGRESS[tool], b""
        with open(log_path, "wb") as log:
            while chunk := os.read(process.stdout.fileno(), 65536):
                log.write(chunk)
                log.flush()
                now = time.perf_counter() - started
                *lines, pending = re.split(rb"[\r\n]", pending + chunk)
                for line in [*lines, pending]:  # tqdm ends a bar with the next one's \r: read the open one too
                    match = pattern.search(line.decode("utf-8", "replace"))
                    if match and int(match.group(1)) > (steps[-1][1] if steps else 0):  # from step 1 on
                        steps.append((now, int(match.group(1)), int(match.group(2)), _cpu_seconds(process.pid)))
                        if not marked and steps[-1][1] >= 1:
                            marked.append(now)
                            samples["train"] = 0
                            process.send_signal(signal.SIGUSR1)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while process.poll() is None:
        rss = _tree_rss(process.pid)
        samples["run"] = max(samples["run"], rss)
        if marked:
            samples["train"] = max(samples["train"], rss)
        time.sleep(0.25)
    reader.join(timeout=30)
    wall = time.perf_counter() - started
    if process.returncode:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise SystemExit(f"{tool} failed (exit {process.returncode}); the end of {log_path}:\n{tail}")
    memory = json.loads(result_file.read_text())
    return {"tool": tool, "wall_s": wall, "steps": steps, "memory": memory, "sampled_tree_rss": samples}


def figures(run: dict, warmup: int, cuda: bool) -> dict:
    steps = run["steps"]
    first = next((s for s in steps if s[1] >= warmup), None)
    last = steps[-1] if steps else None
    if first is None or last is None or last[1] <= first[1]:
        raise SystemExit(f"{run['tool']}: too few progress updates were seen to time steady-state steps: {steps}")
    mark, end = run["memory"].get("mark"), run["memory"]["end"]
    if mark is None:
        raise SystemExit(f"{run['tool']}: the memory mark after step 1 was not taken")
    if cuda:
        peak, base = end["cuda_max_allocated"], mark["cuda_allocated"]
        whole = max(mark["cuda_max_allocated"], peak)
        extra = {"reserved_peak": end["cuda_max_reserved"]}
    else:
        peak = max(end["hwm"], run["sampled_tree_rss"]["train"])
        base, whole = mark["rss"], max(mark["hwm"], peak, run["sampled_tree_rss"]["run"])
        extra = {}
    seconds = (last[0] - first[0]) / (last[1] - first[1])
    return {
        "s_per_it": seconds,
        "it_per_s": 1 / seconds,
        "cpu_s_per_it": (last[3] - first[3]) / (last[1] - first[1]),
        "timed_steps": last[1] - first[1],
        "peak": peak,
        "base_after_step1": base,
        "over_base": peak - base,
        "whole_run_peak": whole,
        "to_first_step_s": steps[0][0],
        "wall_s": run["wall_s"],
        **extra,
    }


def table(theirs: dict, ours: dict, cuda: bool) -> str:
    what = "CUDA max allocated" if cuda else "peak RSS"
    rows = [
        ("s/it, steady state", "s_per_it", "{:.3f}", 1),
        ("it/s", "it_per_s", "{:.3f}", 1),
        ("  CPU seconds per it (the process's user+sys)", "cpu_s_per_it", "{:.2f}", 1),
        (f"peak memory over steps 2..N ({what}), GiB", "peak", "{:.2f}", GIB),
        ("  memory after step 1, GiB", "base_after_step1", "{:.2f}", GIB),
        ("  peak over after-step-1, GiB", "over_base", "{:.2f}", GIB),
        ("whole-run peak (loading included), GiB", "whole_run_peak", "{:.2f}", GIB),
        ("start to step 1, s", "to_first_step_s", "{:.1f}", 1),
    ]
    if cuda:
        rows.insert(5, ("  peak reserved by the allocator, GiB", "reserved_peak", "{:.2f}", GIB))
    lines = [f"| {'figure':<46} | {'sd-scripts':>10} | {'ours':>10} | {'ours/theirs':>11} |"]
    lines.append(f"|{'-' * 48}|{'-' * 12}|{'-' * 12}|{'-' * 13}|")
    for label, key, fmt, scale in rows:
        a, b = theirs[key] / scale, ours[key] / scale
        ratio = f"{b / a:.2f}" if a > 0 else "n/a"
        lines.append(f"| {label:<46} | {fmt.format(a):>10} | {fmt.format(b):>10} | {ratio:>11} |")
    speed = ours["it_per_s"] / theirs["it_per_s"]
    memory = ours["peak"] / theirs["peak"]
    lines.append(f"speed: ours {speed:.2f}x sd-scripts' it/s (goal >= 1.25: {'met' if speed >= 1.25 else 'not met'})")
    lines.append(
        f"memory: ours {memory:.2f}x sd-scripts' peak (goal <= 0.75: {'met' if memory <= 0.75 else 'not met'})"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd-scripts", help="a kohya-ss/sd-scripts checkout (the folder with train_network.py)")
    parser.add_argument("--sd-scripts-python", help="the Python that has sd-scripts' requirements installed")
    parser.add_argument("--checkpoint", help="a .safetensors SD1.5 / SDXL checkpoint (default: a random one, built)")
    parser.add_argument("--work", default=str(ROOT / "bench" / "results" / "vs-sd-scripts"))
    parser.add_argument("--sdxl", action="store_true", help="SDXL: sdxl_train_network.py, 1024 px")
    parser.add_argument("--cache-te", action="store_true", help="cache_text_encoder_outputs on both (SDXL)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--steps", type=int, default=30, help="timed steps after the warm-up")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads of each tool (default: all)")
    parser.add_argument("--only", choices=[SD_SCRIPTS, OURS], help="run one tool (its figures, no ratios)")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--build-checkpoint", help=argparse.SUPPRESS)
    if sys.argv[1:2] == ["--launch"]:  # the launcher: the tool's own arguments must not meet this parser
        result, cwd, argv = sys.argv[2], sys.argv[4], sys.argv[6:]  # --launch FILE --cwd DIR -- ARGV
        return launch(result, cwd, argv)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.build_checkpoint:
        build_checkpoint(Path(args.build_checkpoint), args.sdxl)
        return 0
    if args.only != OURS and not (args.sd_scripts and args.sd_scripts_python):
        parser.error("--sd-scripts DIR and --sd-scripts-python PY are needed (or --only ours)")
    if args.sd_scripts and not (Path(args.sd_scripts) / "train_network.py").is_file():
        parser.error(f"{args.sd_scripts} has no train_network.py: give the sd-scripts checkout folder")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.resolution = args.resolution or (1024 if args.sdxl else 512)
    cuda = args.device.startswith("cuda")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)

    checkpoint = (
        Path(args.checkpoint).resolve()
        if args.checkpoint
        else work / f"random-{'sdxl' if args.sdxl else 'sd15'}.safetensors"
    )
    if not checkpoint.is_file():
        if args.checkpoint:
            parser.error(f"{checkpoint} does not exist")
        print(f"building a random-weight checkpoint: {checkpoint}", flush=True)
        build = [sys.executable, __file__, "--build-checkpoint", str(checkpoint)] + (["--sdxl"] if args.sdxl else [])
        subprocess.run(build, check=True)
    repeats = max(1, math.ceil((args.warmup + args.steps) / (args.images * args.batch)))  # one epoch: no epoch-end work
    data = make_dataset(work / "data", args.images, args.resolution, repeats)
    tokenizers = make_tokenizer_cache(work / "tokenizers", args.sdxl)

    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONWARNINGS": "ignore",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    runs: dict[str, dict] = {}
    plan = [t for t in (SD_SCRIPTS, OURS) if args.only in (None, t)]
    for tool in plan:
        out = work / f"out-{tool}"
        if out.exists():
            shutil.rmtree(out)
        if tool == SD_SCRIPTS:
            python, argv, cwd = (
                args.sd_scripts_python,
                sd_scripts_command(args, checkpoint, data, tokenizers, out),
                Path(args.sd_scripts),
            )
        else:
            python, argv, cwd = sys.executable, ours_command(args, checkpoint, data, out), ROOT
        print(f"running {tool} ({args.warmup} warm-up + {args.steps} timed steps) ...", flush=True)
        runs[tool] = run_tool(tool, python, argv, cwd.resolve(), work, env)
        runs[tool]["figures"] = figures(runs[tool], args.warmup, cuda)
        f = runs[tool]["figures"]
        print(
            f"  {tool}: {f['s_per_it']:.3f} s/it, peak {f['peak'] / GIB:.2f} GiB ({f['timed_steps']} timed steps)",
            flush=True,
        )

    model = "SDXL" if args.sdxl else "SD1.5"
    print(
        f"\n{model} {args.resolution} px, batch {args.batch}, dim {args.dim}/alpha {args.alpha:g}, UNet only, AdamW lr {args.lr:g}, "
        f"gradient checkpointing, cached latents{', cached TE outputs' if args.cache_te else ''}, SDPA, "
        f"{'fp16 mixed precision' if cuda else 'fp32'}, {args.device}; {args.warmup} warm-up + {args.steps} timed steps"
    )
    if len(runs) == 2:
        print(table(runs[SD_SCRIPTS]["figures"], runs[OURS]["figures"], cuda))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
