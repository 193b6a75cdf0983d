"""The training use-case: ``train(cfg, bundle, events, stop)``.

Everything is checked before any work (settings, dataset, buckets, optimizer, starting weights,
resume state); then latents and text are cached, the LoRA is injected into the host's own modules,
the loop runs, and every save lands as a complete kohya file with its ``name.json`` beside it. The
host's model is restored in every case.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lib_lora import __version__
from lib_lora.common.errors import UserError
from lib_lora.common.fsutil import atomic_write_text
from lib_lora.common.tags import split_tags
from lib_lora.config import TrainConfig, check_rules
from lib_lora.data.buckets import BucketManager, BucketSettings, crop_top_left
from lib_lora.data.captions import CaptionOptions, is_static, process_caption
from lib_lora.data.dataset import BucketPlan, DatasetScan, assign_buckets, scan_dataset
from lib_lora.data.images import load_and_transform
from lib_lora.data.latent_cache import LatentCache, LatentEntry
from lib_lora.engine import optim
from lib_lora.engine.bundle import ModelBundle, TextCond
from lib_lora.engine.distributed import DataParallel, SteppedScheduler
from lib_lora.engine.loop import LoopHooks, LoopSettings, Position, Schedule, derive_seed, run_loop
from lib_lora.engine.network import LoRANetwork
from lib_lora.engine.step import Batch, LossSettings
from lib_lora.engine.targets import check_family, select_targets
from lib_lora.events import Events, SampleImage, SavedFile, StopRequested, StopToken
from lib_lora.formats import metadata as md
from lib_lora.jobs.lora_files import check_file_family, load_network_weights, read_lora_file, save_network
from lib_lora.jobs.samples import SamplePrompt, load_sample_prompts, sample_path

STATE_VERSION = 1
# The state folder lives beside the LoRA files, often inside the webui's Lora folder, which lists every
# .safetensors/.pt/.ckpt it finds (recursively): the state files use names it ignores.
STATE_NETWORK = "network.weights"
STATE_OPTIMIZER = "optimizer.bin"
# settings that must not change between a stopped run and its resume
RESUME_KEYS = (
    "train_data_dir", "resolution", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
    "bucket_no_upscale", "network_dim", "network_alpha", "conv_dim", "conv_alpha", "train_batch_size",
    "gradient_accumulation_steps", "max_train_epochs", "max_train_steps", "optimizer_type", "optimizer_args",
    "lr_scheduler", "lr_warmup_steps", "lr_scheduler_num_cycles", "lr_scheduler_power", "learning_rate",
    "unet_lr", "text_encoder_lr", "network_train_unet_only", "network_train_text_encoder_only", "seed",
)  # fmt: skip
SD_VERSION = {"sd1": "SD1", "sdxl": "SDXL"}

Renderer = Callable[[SamplePrompt, int], Any]  # (prompt, seed) -> PIL image, with the live LoRA applied


@dataclass
class TrainPlan:
    """What a run will do, computed before any work (the UI shows it; training uses it)."""

    cfg: TrainConfig
    family: str
    scan: DatasetScan
    buckets: BucketPlan
    schedule: Schedule
    seed: int
    mixed_precision: str
    warnings: list[str] = field(default_factory=list)
    num_processes: int = 1  # data-parallel processes (torchrun); batches per epoch count one process's share

    @property
    def effective_batch(self) -> int:
        return self.cfg.train_batch_size * self.num_processes * self.cfg.gradient_accumulation_steps

    def summary_lines(self) -> list[str]:
        s = self.schedule
        lines = [f"{self.scan.summary()}"]
        lines += self.buckets.log_lines()
        lines.append(
            f"{self.buckets.num_samples} images x repeats per epoch, batch {self.cfg.train_batch_size}: "
            f"{s.batches_per_epoch} batches = {s.steps_per_epoch} steps per epoch; {s.num_epochs} epochs = {s.total_steps} steps"
        )
        if self.num_processes > 1:
            lines.append(_parallel_line(self))
        return lines


@dataclass
class TrainResult:
    status: str  # done | stopped
    files: list[SavedFile]
    steps: int
    last_loss: float | None
    state_dir: Path | None
    log_path: Path
    losses: list[float]


def caption_options(cfg: TrainConfig) -> CaptionOptions:
    return CaptionOptions(
        shuffle_caption=cfg.shuffle_caption, keep_tokens=cfg.keep_tokens, keep_tokens_separator=cfg.keep_tokens_separator,
        caption_tag_dropout_rate=cfg.caption_tag_dropout_rate, caption_dropout_rate=cfg.caption_dropout_rate,
        caption_dropout_every_n_epochs=cfg.caption_dropout_every_n_epochs, caption_prefix=cfg.caption_prefix,
        caption_suffix=cfg.caption_suffix,
    )  # fmt: skip


def bucket_settings(cfg: TrainConfig) -> BucketSettings:
    return BucketSettings(
        resolution=cfg.resolution_wh, enable_bucket=cfg.enable_bucket, min_bucket_reso=cfg.min_bucket_reso,
        max_bucket_reso=cfg.max_bucket_reso, bucket_reso_steps=cfg.bucket_reso_steps, bucket_no_upscale=cfg.bucket_no_upscale,
    )  # fmt: skip


def resolve_mixed_precision(value: str, device: torch.device) -> str:
    if value != "auto":
        return value
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def output_paths(cfg: TrainConfig) -> tuple[Path, Path, Path]:
    out = Path(cfg.output_dir)
    return out, out / f"{cfg.output_name}-state", out / f"{cfg.output_name}-log.jsonl"


def prepare(
    cfg: TrainConfig,
    bundle: ModelBundle,
    events: Events | None = None,
    stop: StopToken | None = None,
    resume: str | None = None,
    num_processes: int = 1,
) -> TrainPlan:
    """Check everything and plan the run; nothing is written. With ``num_processes`` > 1 (torchrun)
    each process runs ``ceil(batches / num_processes)`` batches per epoch, as under accelerate."""
    events = events or Events()
    check_rules(cfg)
    family = bundle.family
    check_family(family)
    warnings = bucket_settings(cfg).validate(family)  # shown below; the scan shows its own as it goes
    caption_options(cfg).validate()
    if cfg.mixed_precision == "fp16" and bundle.device.type == "cpu":
        raise UserError("mixed_precision fp16 needs a GPU; use no (or bf16) on the CPU.")
    for warning in warnings:
        events.warning(warning)
    scan = scan_dataset(cfg.train_data_dir, cfg.caption_extension, events=events, stop=stop)
    warnings += scan.warnings
    plan = assign_buckets(scan, BucketManager(bucket_settings(cfg)), cfg.train_batch_size)
    schedule = Schedule.plan(
        math.ceil(plan.steps_per_epoch / num_processes),
        cfg.gradient_accumulation_steps,
        cfg.max_train_epochs,
        cfg.max_train_steps,
    )
    _check_optimizer(cfg, schedule)
    if cfg.network_weights:
        _, _, summary = read_lora_file(cfg.network_weights)
        check_file_family(cfg.network_weights, summary.family, family)
    if resume:
        _check_state_processes(_read_state(Path(resume), cfg), num_processes)
    seed = cfg.seed if cfg.seed is not None else random.randrange(1 << 31)
    return TrainPlan(
        cfg,
        family,
        scan,
        plan,
        schedule,
        seed,
        resolve_mixed_precision(cfg.mixed_precision, bundle.device),
        warnings,
        num_processes,
    )


def build_optimizer(cfg: TrainConfig, param_groups: list[dict], total_steps: int) -> tuple[optim.OptimizerInfo, Any]:
    """The optimizer and LR schedule ``cfg`` asks for (sd-scripts' rules, e.g. Adafactor's own schedule)."""
    built = optim.build_optimizer(
        cfg.optimizer_type,
        param_groups,
        cfg.learning_rate,
        cfg.optimizer_args,
        lr_scheduler=cfg.lr_scheduler,
        max_grad_norm=cfg.max_grad_norm,
    )
    scheduler = optim.build_scheduler(
        built.forced_scheduler or cfg.lr_scheduler, built.optimizer, num_training_steps=total_steps,
        num_warmup_steps=cfg.lr_warmup_steps, num_cycles=cfg.lr_scheduler_num_cycles, power=cfg.lr_scheduler_power,
        initial_lr=built.scheduler_initial_lr,
    )  # fmt: skip
    return built, scheduler


def _check_optimizer(cfg: TrainConfig, schedule: Schedule) -> None:
    """Build the optimizer and schedule once on a dummy parameter: a missing package or a bad
    optimizer argument is reported before any work."""
    build_optimizer(
        cfg, [{"params": [torch.zeros(1, requires_grad=True)], "lr": cfg.learning_rate}], schedule.total_steps
    )


def build_network(cfg: TrainConfig, bundle: ModelBundle) -> LoRANetwork:
    unet, encoders, naming = bundle.lora_hosts()
    targets = select_targets(
        bundle.family,
        unet if cfg.train_unet else None,
        encoders if cfg.train_text_encoder else {},
        conv=cfg.conv_dim is not None,
    )
    return LoRANetwork(
        targets, cfg.network_dim, cfg.network_alpha, conv_rank=cfg.conv_dim,
        conv_alpha=cfg.conv_alpha if cfg.conv_alpha is not None else 1.0, dropout=cfg.network_dropout,
        rank_dropout=cfg.rank_dropout, module_dropout=cfg.module_dropout, naming=naming, family=bundle.family,
    )  # fmt: skip


def default_activation_text(scan: DatasetScan) -> str:
    """The trigger words: each subset's class tokens where its captions use them as a tag,
    otherwise the tag most captions start with."""
    words: list[str] = []
    firsts: dict[str, int] = {}
    for subset_index, subset in enumerate(scan.subsets):
        items = [i for i in scan.items if i.subset == subset_index]
        tags = [[t.lower() for t in split_tags(i.caption)] for i in items]
        token = subset.class_tokens.strip().lower()
        if token and tags and sum(token in t for t in tags) * 2 >= len(tags):
            words.append(subset.class_tokens.strip())
        for t in tags:
            if t:
                firsts[t[0]] = firsts.get(t[0], 0) + 1
    if not words and firsts:
        tag, count = max(firsts.items(), key=lambda kv: kv[1])
        if count * 2 >= len(scan.items):
            words.append(tag)
    return ", ".join(dict.fromkeys(words))


def _base_metadata(
    cfg: TrainConfig,
    plan: TrainPlan,
    bundle: ModelBundle,
    network: LoRANetwork,
    optimizer_name: str,
    session_id: int,
    started: float,
) -> dict[str, Any]:
    scan, buckets, schedule = plan.scan, plan.buckets, plan.schedule
    net_args: dict[str, str] = {}
    if cfg.conv_dim is not None:
        net_args["conv_dim"] = str(cfg.conv_dim)
    for key in ("conv_alpha", "rank_dropout", "module_dropout"):  # as given (sd-scripts records its network_args)
        if getattr(cfg, key) is not None:
            net_args[key] = str(getattr(cfg, key))
    values: dict[str, Any] = {
        "ss_session_id": session_id, "ss_training_started_at": started, "ss_output_name": cfg.output_name,
        "ss_learning_rate": cfg.learning_rate, "ss_text_encoder_lr": cfg.text_encoder_lr, "ss_unet_lr": cfg.unet_lr,
        "ss_num_train_images": scan.num_train_images, "ss_num_validation_images": 0, "ss_num_reg_images": 0,
        "ss_num_batches_per_epoch": schedule.batches_per_epoch, "ss_num_epochs": schedule.num_epochs,
        "ss_gradient_checkpointing": cfg.gradient_checkpointing, "ss_gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "ss_max_train_steps": schedule.total_steps, "ss_lr_warmup_steps": cfg.lr_warmup_steps if cfg.lr_warmup_steps < 1 else int(cfg.lr_warmup_steps),
        "ss_lr_scheduler": cfg.lr_scheduler, "ss_network_module": cfg.network_module, "ss_network_dim": cfg.network_dim,
        "ss_network_alpha": cfg.network_alpha, "ss_network_dropout": cfg.network_dropout, "ss_mixed_precision": plan.mixed_precision,
        "ss_full_fp16": False, "ss_v2": False, "ss_base_model_version": md.base_model_version(bundle.family, bundle.v_prediction),
        "ss_clip_skip": bundle.clip_skip, "ss_max_token_length": cfg.max_token_length, "ss_cache_latents": cfg.cache_latents,
        "ss_seed": plan.seed, "ss_lowram": False, "ss_noise_offset": cfg.noise_offset, "ss_multires_noise_iterations": None,
        "ss_multires_noise_discount": 0.3, "ss_adaptive_noise_scale": None, "ss_zero_terminal_snr": False,
        "ss_training_comment": cfg.training_comment, "ss_sd_scripts_commit_hash": f"lib_lora {__version__}",
        "ss_optimizer": optimizer_name, "ss_max_grad_norm": cfg.max_grad_norm, "ss_caption_dropout_rate": cfg.caption_dropout_rate,
        "ss_caption_dropout_every_n_epochs": cfg.caption_dropout_every_n_epochs, "ss_caption_tag_dropout_rate": cfg.caption_tag_dropout_rate,
        "ss_face_crop_aug_range": None, "ss_prior_loss_weight": 1.0, "ss_min_snr_gamma": cfg.min_snr_gamma,
        "ss_scale_weight_norms": None, "ss_ip_noise_gamma": None, "ss_debiased_estimation": False,
        "ss_noise_offset_random_strength": cfg.noise_offset_random_strength, "ss_ip_noise_gamma_random_strength": False,
        "ss_loss_type": cfg.loss_type, "ss_huber_schedule": "snr", "ss_huber_scale": 1.0, "ss_huber_c": 0.1,
        "ss_fp8_base": False, "ss_fp8_base_unet": False, "ss_validation_seed": None, "ss_validation_split": 0.0,
        "ss_max_validation_steps": None, "ss_validate_every_n_epochs": None, "ss_validate_every_n_steps": None,
        "ss_resize_interpolation": None,
        "ss_batch_size_per_device": cfg.train_batch_size, "ss_total_batch_size": plan.effective_batch,
        "ss_resolution": cfg.resolution_wh, "ss_color_aug": False, "ss_flip_aug": cfg.flip_aug, "ss_random_crop": cfg.random_crop,
        "ss_shuffle_caption": cfg.shuffle_caption, "ss_enable_bucket": cfg.enable_bucket, "ss_bucket_no_upscale": cfg.bucket_no_upscale,
        "ss_min_bucket_reso": cfg.min_bucket_reso, "ss_max_bucket_reso": cfg.max_bucket_reso, "ss_keep_tokens": cfg.keep_tokens,
        "ss_dataset_dirs": scan.dataset_dirs_info(), "ss_reg_dataset_dirs": {}, "ss_tag_frequency": scan.tag_frequency(),
        "ss_bucket_info": buckets.bucket_info(), "ss_network_args": net_args or None,
        "ss_sd_model_name": bundle.model_name,
        "ss_sd_model_hash": None, "ss_new_sd_model_hash": None, "ss_vae_name": None, "ss_vae_hash": None, "ss_new_vae_hash": None,
    }  # fmt: skip
    if net_args == {}:
        values.pop("ss_network_args")
    model_path = getattr(bundle, "model_path", None)
    if model_path and os.path.isfile(model_path):
        values["ss_sd_model_hash"] = getattr(bundle, "model_hash", None) or md.legacy_model_hash(model_path)
        values["ss_new_sd_model_hash"] = getattr(bundle, "model_sha256", None) or md.sha256_of_file(model_path)
    else:
        for key in ("ss_sd_model_hash", "ss_new_sd_model_hash"):
            values.pop(key)
    for key in ("ss_vae_name", "ss_vae_hash", "ss_new_vae_hash"):
        values.pop(key)
    return values


class _Saver:
    """Writes each save as ``name[-000005|-step00000100].safetensors`` + ``name.json`` and keeps the
    last N epoch files."""

    def __init__(
        self,
        cfg: TrainConfig,
        plan: TrainPlan,
        bundle: ModelBundle,
        network: LoRANetwork,
        base: dict[str, Any],
        activation: str,
        events: Events,
    ) -> None:
        self.cfg, self.plan, self.bundle, self.network, self.base = cfg, plan, bundle, network, base
        self.activation = activation
        self.events = events
        self.out = Path(cfg.output_dir)
        self.files: list[SavedFile] = []

    def file_name(self, kind: str, epoch: int, step: int) -> str:
        name = self.cfg.output_name
        if kind == "epoch":
            return f"{name}-{epoch:06d}.safetensors"
        if kind in ("step", "stopped"):
            return f"{name}-step{step:08d}.safetensors"
        return f"{name}.safetensors"

    def __call__(self, kind: str, epoch: int, step: int, loss: float | None) -> None:
        values = dict(self.base)
        values["ss_training_finished_at"] = time.time()
        values["ss_steps"] = step
        values["ss_epoch"] = epoch
        meta = md.format_ss_metadata(values)
        for key in ("ss_network_args", "ss_sd_model_hash", "ss_new_sd_model_hash"):
            if key not in values:
                meta.pop(key, None)
        meta.update(
            md.modelspec(
                self.bundle.family,
                title=self.cfg.output_name,
                resolution=self.cfg.resolution_wh,
                v_prediction=self.bundle.v_prediction,
                clip_skip=self.bundle.clip_skip,
                trigger_phrase=self.activation or None,
            )  # fmt: skip
        )
        path = self.out / self.file_name(kind, epoch, step)
        save_network(self.network, path, meta, self.cfg.save_precision)
        self._write_user_metadata(path, kind, epoch, step, loss)
        info = SavedFile(path, epoch, step, loss, kind)
        self.files.append(info)
        self.events.saved(info)
        self.events.info(
            f"saved {path.name} (epoch {epoch}, step {step}" + (f", loss {loss:.4f})" if loss is not None else ")")
        )
        if kind == "epoch" and self.cfg.save_last_n_epochs and self.cfg.save_every_n_epochs:
            old = epoch - self.cfg.save_every_n_epochs * self.cfg.save_last_n_epochs
            if old > 0:
                for suffix in (".safetensors", ".json"):
                    stale = self.out / f"{self.cfg.output_name}-{old:06d}{suffix}"
                    with contextlib.suppress(FileNotFoundError):
                        stale.unlink()

    def _write_user_metadata(self, path: Path, kind: str, epoch: int, step: int, loss: float | None) -> None:
        """The webui's per-LoRA user metadata (``name.json``): activation text, weight, SD version."""
        loss_text = f", loss {loss:.4f}" if loss is not None else ""
        notes = f"Trained with Train LoRA {__version__} on {self.bundle.model_name}: epoch {epoch}/{self.plan.schedule.num_epochs}, step {step}/{self.plan.schedule.total_steps}{loss_text}."
        data = {
            "description": f"{self.cfg.output_name} ({kind} save)",
            "sd version": SD_VERSION[self.bundle.family],
            "activation text": self.activation,
            "preferred weight": self.cfg.preferred_weight,
            "negative text": "",
            "notes": notes,
        }
        atomic_write_text(path.with_suffix(".json"), json.dumps(data, indent=4, ensure_ascii=False) + "\n")


# -- training state (stop and resume) ----------------------------------------------------------------


def _write_state(
    state_dir: Path,
    network: LoRANetwork,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    position: Position,
    seed: int,
    cfg: TrainConfig,
    session: dict[str, Any],
    num_processes: int = 1,
) -> None:
    """Network, optimizer, scheduler and position, written to a temp folder then swapped in."""
    tmp = state_dir.with_name(state_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_network(network, tmp / STATE_NETWORK, {"ss_network_module": "networks.lora"}, save_precision="float")
    torch.save(optim.optimizer_state(optimizer, scheduler), tmp / STATE_OPTIMIZER)
    state = {
        "version": STATE_VERSION, "position": position.as_dict(), "seed": seed, "session": session,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.as_dict().items()},
    }  # fmt: skip
    if num_processes > 1:
        state["num_processes"] = num_processes
    atomic_write_text(tmp / "state.json", json.dumps(state, indent=1))
    old = state_dir.with_name(state_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if state_dir.exists():
        os.replace(state_dir, old)
    os.replace(tmp, state_dir)
    shutil.rmtree(old, ignore_errors=True)


def _read_state(state_dir: Path, cfg: TrainConfig) -> dict[str, Any]:
    state_file = state_dir / "state.json"
    if (
        not state_file.is_file()
        or not (state_dir / STATE_NETWORK).is_file()
        or not (state_dir / STATE_OPTIMIZER).is_file()
    ):
        raise UserError(
            f"{state_dir} is not a training state folder (it needs state.json, {STATE_NETWORK} and {STATE_OPTIMIZER})."
        )
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{state_file} cannot be read: {exc}.") from None
    if state.get("version") != STATE_VERSION:
        raise UserError(f"{state_dir} was written by another version of Train LoRA and cannot be resumed.")
    saved = state["config"]
    changed = []
    for key in RESUME_KEYS:
        ours = getattr(cfg, key)
        ours = list(ours) if isinstance(ours, tuple) else ours
        if key == "seed" and ours is None:
            continue
        if saved.get(key) != ours:
            changed.append(f"{key} ({saved.get(key)!r} -> {ours!r})")
    if changed:
        raise UserError("Cannot resume: these settings differ from the stopped run: " + ", ".join(changed) + ".")
    return state


# -- the job ------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    bundle: ModelBundle,
    events: Events | None = None,
    stop: StopToken | None = None,
    *,
    resume: str | os.PathLike | None = None,
    renderer: Renderer | None = None,
    plan: TrainPlan | None = None,
    parallel: DataParallel | None = None,
) -> TrainResult:
    """Train a LoRA on ``bundle`` as ``cfg`` says; see the module docstring. ``parallel``: this
    process's part in a data-parallel run (engine/distributed.py); only its rank 0 writes files."""
    events = events or Events()
    stop = stop or StopToken()
    processes = parallel.world_size if parallel else 1
    plan = plan or prepare(cfg, bundle, events, stop, str(resume) if resume else None, processes)
    state = _read_state(Path(resume), cfg) if resume else None
    if state:
        _check_state_processes(state, processes)
    seed = state["seed"] if state else plan.seed
    for line in plan.summary_lines():
        events.info(line)
    out, state_dir, log_path = output_paths(cfg)
    writes = parallel is None or parallel.is_main
    if writes:
        out.mkdir(parents=True, exist_ok=True)
    else:
        renderer = None  # samples too are rank 0's

    with torch.random.fork_rng():  # the LoRA's initial weights follow the seed; the global RNG is left as it was
        torch.manual_seed(derive_seed(seed, 0x10A))
        network = build_network(cfg, bundle)
    if not len(network):
        raise UserError(
            "Nothing to train: no LoRA modules were created (check network_train_unet_only / text_encoder_only)."
        )
    if state:
        load_network_weights(network, Path(resume) / STATE_NETWORK)
    elif cfg.network_weights:
        load_network_weights(network, cfg.network_weights)
        events.info(f"starting from {cfg.network_weights}")
    if parallel:
        parallel.broadcast_parameters([p for p in network.parameters() if p.requires_grad])
    param_groups = network.param_groups(cfg.unet_lr, cfg.text_encoder_lr, cfg.learning_rate)
    built, scheduler = build_optimizer(cfg, param_groups, plan.schedule.total_steps * processes)
    if parallel:  # accelerate steps the scheduler once per process (so sd-scripts builds it for steps x N)
        scheduler = SteppedScheduler(scheduler, processes)
    for warning in built.warnings:
        events.warning(warning)
    position = Position()
    session = {"id": random.randrange(1 << 32), "started": time.time()}
    if state:
        saved = torch.load(Path(resume) / STATE_OPTIMIZER, map_location="cpu", weights_only=True)
        optim.load_optimizer_state(built, scheduler, saved)
        position = Position(**state["position"])
        session = state["session"]
        events.info(f"resuming at epoch {position.epoch + 1}, step {position.step} of {plan.schedule.total_steps}")

    activation = cfg.activation_text if cfg.activation_text is not None else default_activation_text(plan.scan)
    base = _base_metadata(cfg, plan, bundle, network, built.name_for_metadata, session["id"], session["started"])
    saver = _Saver(cfg, plan, bundle, network, base, activation, events)
    options = caption_options(cfg)
    family = bundle.family
    rng_state = torch.get_rng_state()  # the loop seeds the global RNG per batch (LoRA dropouts)
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    try:
        network.apply_to()
        if parallel and cfg.cache_latents:
            latents = _prepare_latents_parallel(cfg, plan, bundle, seed, events, stop, parallel)
        else:
            latents = _prepare_latents(cfg, plan, bundle, seed, events, stop) if cfg.cache_latents else None
        text_cache = _prepare_text_cache(cfg, plan, bundle, options, events)

        def make_batch(epoch: int, samples: list, rng: random.Random) -> Batch:
            flips = [cfg.flip_aug and rng.random() < 0.5 for _ in samples]
            items = [plan.scan.items[s.item] for s in samples]
            if latents is not None:
                batch_latents = latents.get_batch(samples, flips)
                ltrbs = [latents.entry(s.item).crop_ltrb for s in samples]
            else:
                batch_latents, ltrbs = _encode_on_the_fly(plan, bundle, samples, flips, cfg.random_crop, rng)
            captions = [process_caption(item.caption, options, epoch, rng) for item in items]
            text = TextCond.cat([text_cache[c] for c in captions]) if text_cache is not None else None
            size_cond = None
            if family == "sdxl":
                rows = []
                for sample, flip, ltrb in zip(samples, flips, ltrbs):
                    ow, oh = plan.buckets.sizes[sample.item]
                    bw, bh = plan.buckets.choices[sample.item].bucket
                    top, left = crop_top_left(ltrb, (bw, bh), flip)
                    rows.append([oh, ow, top, left, bh, bw])
                size_cond = torch.tensor(rows, dtype=torch.float32)
            return Batch(batch_latents, captions, text, size_cond)

        log_handle = open(log_path if writes else os.devnull, "a", encoding="utf-8")  # noqa: SIM115 - closed in finally

        def log_step(row: dict[str, Any]) -> None:
            log_handle.write(json.dumps(row) + "\n")
            log_handle.flush()

        def save_state(pos: Position) -> None:
            if writes:
                _write_state(state_dir, network, built, scheduler, pos, seed, cfg, session, processes)

        def after_epoch(epoch: int, step: int) -> None:
            if renderer and cfg.sample_every_n_epochs and epoch % cfg.sample_every_n_epochs == 0:
                _render_samples(cfg, renderer, network, epoch, step, events)

        hooks = LoopHooks(
            epoch_batches=lambda e: plan.buckets.epoch_batches(seed, e), make_batch=make_batch, save=saver,
            save_state=save_state, after_epoch=after_epoch, log_step=log_step,
        )  # fmt: skip
        if parallel:
            _parallel_hooks(hooks, parallel)
        loss_settings = LossSettings(
            v_prediction=bundle.v_prediction, latent_scaling=bundle.latent_scaling, noise_offset=cfg.noise_offset,
            noise_offset_random_strength=cfg.noise_offset_random_strength, min_snr_gamma=cfg.min_snr_gamma,
            min_timestep=cfg.min_timestep, max_timestep=cfg.max_timestep, loss_type=cfg.loss_type,
        )  # fmt: skip
        settings = LoopSettings(
            seed=seed, mixed_precision=plan.mixed_precision, max_grad_norm=cfg.max_grad_norm,
            save_every_n_epochs=cfg.save_every_n_epochs, save_every_n_steps=cfg.save_every_n_steps,
            train_unet=cfg.train_unet, train_text_encoder=cfg.train_text_encoder, gradient_checkpointing=cfg.gradient_checkpointing,
        )  # fmt: skip
        try:
            result = run_loop(
                bundle,
                network,
                built.optimizer,
                scheduler,
                loss_settings,
                plan.schedule,
                settings,
                hooks,
                events,
                parallel.watch(stop) if parallel else stop,
                position,
            )
        finally:
            log_handle.close()
    except StopRequested:
        # stopped while caching: nothing trained yet, nothing to save
        events.info("Stopped before training started; nothing was saved.")
        return TrainResult("stopped", saver.files, 0, None, None, log_path, [])
    finally:
        network.restore()
        torch.set_rng_state(rng_state)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    if result.status == "done" and writes:
        shutil.rmtree(state_dir, ignore_errors=True)
    return TrainResult(
        result.status,
        saver.files,
        result.position.step,
        result.last_loss,
        state_dir if result.status == "stopped" else None,
        log_path,
        result.losses,
    )


def _prepare_latents(
    cfg: TrainConfig, plan: TrainPlan, bundle: ModelBundle, seed: int, events: Events, stop: StopToken
) -> LatentCache:
    generator = torch.Generator(device=bundle.device).manual_seed(seed)

    def encode(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return bundle.encode_images(images.to(bundle.device), generator=generator).float().cpu()

    cache = LatentCache(
        encode,
        vae_id=bundle.vae_identity(),
        to_disk=cfg.cache_latents_to_disk,
        family_suffix="_sdxl" if bundle.family == "sdxl" else "_sd",
        batch_size=4,
    )
    report = cache.prepare(plan.buckets, flip_aug=cfg.flip_aug, events=events, stop=stop)
    events.info(
        f"latents: {report.encoded} encoded, {report.reused} reused from disk"
        + (f", {report.fallback} redone in float32" if report.fallback else "")
    )
    return cache


def _encode_on_the_fly(
    plan: TrainPlan, bundle: ModelBundle, samples: list, flips: list[bool], random_crop: bool, rng: random.Random
):
    images, ltrbs = [], []
    for sample, flip in zip(samples, flips):
        item = plan.scan.items[sample.item]
        done = load_and_transform(
            item.path, plan.buckets.choices[sample.item], flip=flip, random_crop=random_crop, rng=rng
        )
        images.append(done.image)
        ltrbs.append(done.crop_ltrb)
    generator = torch.Generator(device=bundle.device).manual_seed(rng.randrange(1 << 62))
    with torch.no_grad():
        latents = bundle.encode_images(torch.stack(images).to(bundle.device), generator=generator).float()
    if not torch.isfinite(latents).all():
        raise UserError(
            "The VAE produced NaN latents for this batch; train with the VAE in float32 (a fixed fp16 VAE for SDXL)."
        )
    return latents, ltrbs


def _prepare_text_cache(
    cfg: TrainConfig, plan: TrainPlan, bundle: ModelBundle, options: CaptionOptions, events: Events
) -> dict[str, TextCond] | None:
    """Text-encoder outputs per caption, when the text encoders are frozen and captions static."""
    if cfg.train_text_encoder or not is_static(options):
        return None
    captions = sorted({process_caption(item.caption, options, 1, random.Random(0)) for item in plan.scan.items})
    cache: dict[str, TextCond] = {}
    with torch.no_grad():
        for start in range(0, len(captions), 16):
            chunk = captions[start : start + 16]
            encoded = bundle.encode_text(chunk)
            for i, caption in enumerate(chunk):
                cache[caption] = encoded[i : i + 1].detach()
    events.info(f"text encoder outputs cached for {len(cache)} captions")
    return cache


def _render_samples(
    cfg: TrainConfig, renderer: Renderer, network: LoRANetwork, epoch: int, step: int, events: Events
) -> None:
    prompts = load_sample_prompts(cfg.sample_prompts, cfg.resolution_wh[0])
    if not prompts:
        return
    folder = Path(cfg.output_dir) / f"{cfg.output_name}-samples"
    folder.mkdir(parents=True, exist_ok=True)
    was_training = network.training
    network.eval()
    try:
        for index, prompt in enumerate(prompts):
            seed = prompt.seed if prompt.seed is not None else 1234 + index
            image = renderer(prompt, seed)
            path = sample_path(folder, cfg.output_name, epoch, step, index, seed)
            image.save(path)
            events.sample(SampleImage(path, epoch, step, prompt.prompt))
    finally:
        network.train(was_training)


def math_steps_note(total_steps: int, batch_size: int) -> str:
    """The guide's rule of thumb beside the total steps."""
    hint = "a character LoRA at batch 2 is usually good after 1,000-2,000 steps"
    equivalent = total_steps * batch_size / 2
    return f"{total_steps} steps (~{math.floor(equivalent)} at batch 2); {hint}."


# -- data-parallel runs (torchrun; engine/distributed.py) ----------------------------------------------


def _parallel_line(plan: TrainPlan) -> str:
    cfg = plan.cfg
    return (
        f"{plan.num_processes} processes: effective batch {plan.effective_batch} = batch {cfg.train_batch_size} per "
        f"process x {plan.num_processes} processes x gradient accumulation {cfg.gradient_accumulation_steps}; "
        f"each process runs {plan.schedule.batches_per_epoch} batches per epoch"
    )


def _check_state_processes(state: dict[str, Any], processes: int) -> None:
    saved = int(state.get("num_processes", 1))
    if saved != processes:
        raise UserError(
            f"Cannot resume: the stopped run used {saved} process{'es' if saved != 1 else ''} and this one "
            f"{processes}; resume with the same number (torchrun --nproc_per_node {saved}), since each process's "
            "share of the epoch, the steps and the learning-rate schedule depend on it."
        )


def _parallel_hooks(hooks: LoopHooks, parallel: DataParallel) -> None:
    """Each process trains its own share of every epoch; gradients are averaged before each step; only
    rank 0 saves, logs and renders samples."""
    whole_epoch = hooks.epoch_batches
    hooks.epoch_batches = lambda epoch: parallel.epoch_shard(whole_epoch(epoch))
    hooks.batch_index = parallel.batch_index
    hooks.sync_step = parallel.sync_step
    if not parallel.is_main:
        hooks.save = lambda kind, epoch, step, loss: None
        hooks.after_epoch = None
        hooks.log_step = None


def _prepare_latents_parallel(
    cfg: TrainConfig,
    plan: TrainPlan,
    bundle: ModelBundle,
    seed: int,
    events: Events,
    stop: StopToken,
    parallel: DataParallel,
) -> LatentCache:
    """Each image is encoded once: rank 0 caches every latent (to disk where asked) while the others
    wait; then they read its files and receive its in-memory latents."""
    if parallel.is_main:
        cache = _prepare_latents(cfg, plan, bundle, seed, events, stop)
        entries = [cache.entry(i) for i in range(len(plan.buckets.choices))]
        table = torch.tensor(
            [[float(e.npz is not None), *e.original_size, *e.crop_ltrb] for e in entries], dtype=torch.float64
        )
        tensors = [table]
        for e in entries:
            if e.npz is None:
                tensors += [e.latents] + ([e.latents_flipped] if cfg.flip_aug else [])
        parallel.broadcast_tensors(tensors)
        return cache
    received = parallel.broadcast_tensors(None)
    table, tensors = received[0], iter(received[1:])
    cache = LatentCache(
        lambda images: images,  # never called: this process only reads what rank 0 made
        vae_id=bundle.vae_identity(),
        to_disk=cfg.cache_latents_to_disk,
        family_suffix="_sdxl" if bundle.family == "sdxl" else "_sd",
    )
    entries = {}
    for i, row in enumerate(table.tolist()):
        on_disk, width, height, *ltrb = row
        entry = LatentEntry((int(width), int(height)), tuple(ltrb), plan.buckets.choices[i].bucket)
        if on_disk:
            entry.npz = cache.npz_path(plan.scan.items[i].path, plan.buckets.sizes[i])
        else:
            entry.latents = next(tensors)
            entry.latents_flipped = next(tensors) if cfg.flip_aug else None
        entries[i] = entry
    cache.adopt(entries, flip_aug=cfg.flip_aug)
    return cache
