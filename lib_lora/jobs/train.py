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
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lib_lora import __version__
from lib_lora.common.errors import UserError
from lib_lora.common.fsutil import (
    FileLock,
    WriteError,
    atomic_write_text,
    check_writable,
    free_bytes,
    human_bytes,
    remove_orphan_temps,
    replace_with_retry,
    write_error,
)
from lib_lora.common.tags import split_tags
from lib_lora.common.text import plural
from lib_lora.config import MAX_STEPS, TrainConfig, check_rules
from lib_lora.data.buckets import BucketManager, BucketSettings, crop_top_left
from lib_lora.data.captions import CaptionOptions, is_static, process_caption
from lib_lora.data.dataset import BucketPlan, DatasetScan, assign_buckets, scan_dataset, split_validation
from lib_lora.data.images import load_and_transform
from lib_lora.data.latent_cache import LatentCache, LatentEntry
from lib_lora.engine import optim
from lib_lora.engine.bundle import ModelBundle, TextCond
from lib_lora.engine.distributed import DataParallel, SteppedScheduler
from lib_lora.engine.fp8 import Fp8Base, float8_problem
from lib_lora.engine.loop import (
    LoopHooks,
    LoopSettings,
    Position,
    Schedule,
    autocast_context,
    derive_seed,
    run_loop,
)
from lib_lora.engine.lora_module import host_dims
from lib_lora.engine.network import LoRANetwork
from lib_lora.engine.savers import Offload, offload_modules
from lib_lora.engine.step import Batch, LossSettings
from lib_lora.engine.targets import check_family, select_targets
from lib_lora.engine.validation import validation_loss
from lib_lora.events import (
    Events,
    MultiEvents,
    RunHistory,
    SampleImage,
    SavedFile,
    StopRequested,
    StopToken,
    nothing_new_since,
)
from lib_lora.formats import metadata as md
from lib_lora.formats import safetensors_io
from lib_lora.jobs import vram
from lib_lora.jobs.epochs import list_lora_files
from lib_lora.jobs.lora_files import (
    check_file_family,
    check_file_type,
    load_network_weights,
    read_lora_file,
    save_network,
)
from lib_lora.jobs.samples import SamplePrompt, load_sample_prompts, sample_path
from lib_lora.jobs.train_options import (
    add_regularization,
    block_module_dims,
    centre_offset,
    check_masks,
    check_options,
    check_per_group_lrs,
    loss_settings,
    mask_source,
    network_args_metadata,
    resolve_v_prediction,
    resolve_zero_terminal_snr,
    timestep_range,
    unet_block_groups,
    uses_blocks,
    vae_metadata,
)

STATE_VERSION = 2
# The state folder lives beside the LoRA files, often inside the webui's Lora folder, which lists every
# .safetensors/.pt/.ckpt it finds (recursively): the state files use names it ignores. Version 2 needs no
# pickle: tensors in safetensors files, everything else in state.json (written last: its presence, with
# the sizes it lists, marks a complete state).
STATE_NETWORK = "network.weights"
STATE_OPTIMIZER = "optimizer.weights"
OLD_STATE_OPTIMIZER = "optimizer.bin"  # version 1 (a torch pickle): never loaded
STATE_SIDES = (".new", ".old", ".tmp")  # the swap's other folders (".tmp": version 1's)
TRASH_FOLDER = ".trash"
LISTED_SUFFIXES = (".safetensors", ".pt", ".ckpt")  # what the webui's Lora list shows (recursively)
# settings that must not change between a stopped run and its resume
RESUME_KEYS = (
    "train_data_dir", "resolution", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
    "bucket_no_upscale", "network_dim", "network_alpha", "conv_dim", "conv_alpha", "train_batch_size",
    "gradient_accumulation_steps", "max_train_epochs", "max_train_steps", "optimizer_type", "optimizer_args",
    "lr_scheduler", "lr_warmup_steps", "lr_scheduler_num_cycles", "lr_scheduler_power", "learning_rate",
    "unet_lr", "text_encoder_lr", "network_train_unet_only", "network_train_text_encoder_only", "seed",
    "algo", "dora_wd", "factor", "decompose_both", "full_matrix", "use_tucker",
    "loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio", "down_lr_weight", "mid_lr_weight",
    "up_lr_weight", "block_lr_zero_threshold", "block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas",
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
    validation: BucketPlan | None = None  # the held-out images (validation_split), never trained on
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
        if self.validation is not None:
            lines.append(
                f"{plural(len(self.validation.sizes), 'image')} held out for the validation loss (validation_split)"
            )
        if self.num_processes > 1:
            lines.append(_parallel_line(self))
        return lines


def _check_epoch_size(scan: DatasetScan, steps_per_epoch: int) -> None:
    """An epoch is built as a list before it starts: a folder named 1000000000_x would hang the run
    (and no run that long could finish), so refuse it before any work, naming the folder."""
    if steps_per_epoch <= MAX_STEPS:
        return
    biggest = max(scan.subsets, key=lambda s: s.repeats)
    raise UserError(
        f"One epoch would be {steps_per_epoch:,} steps (more than {MAX_STEPS:,}): the folder {biggest.name} repeats "
        f"each image {biggest.repeats:,} times. Rename it with fewer repeats (N_name, usually N = 1-100)."
    )


@dataclass
class TrainResult:
    status: str  # done | stopped
    files: list[SavedFile]
    steps: int
    last_loss: float | None
    state_dir: Path | None
    log_path: Path
    losses: list[float]
    scoring: Any = None  # jobs.scoring.AutoScore: the epochs scored after the run (score_epochs), else None


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
    if cfg.fp8_base and not _host_float8(bundle):
        problem = float8_problem(bundle.device)
        if problem:
            raise UserError(problem)
    warnings += check_options(cfg, bundle)
    for warning in warnings:
        events.warning(warning)
    scan = scan_dataset(cfg.train_data_dir, cfg.caption_extension, events=events, stop=stop)
    seed = cfg.seed if cfg.seed is not None else random.randrange(1 << 31)
    if resume:
        seed = _read_state(Path(resume), cfg)["seed"]  # the same held-out images as the stopped run
    scan, held_out = split_validation(  # held out of the training images only, before the reg images join
        scan, cfg.validation_split, cfg.validation_seed if cfg.validation_seed is not None else seed
    )
    scan = add_regularization(cfg, scan, events, stop)
    warnings += scan.warnings
    check_masks(cfg, scan)
    plan = assign_buckets(scan, BucketManager(bucket_settings(cfg)), cfg.train_batch_size)
    _check_epoch_size(scan, plan.steps_per_epoch)
    validation = assign_buckets(held_out, BucketManager(bucket_settings(cfg)), 1) if held_out else None
    schedule = Schedule.plan(
        math.ceil(plan.steps_per_epoch / num_processes),
        cfg.gradient_accumulation_steps,
        cfg.max_train_epochs,
        cfg.max_train_steps,
    )
    _check_optimizer(cfg, schedule)
    check_network(cfg, bundle)
    if resume:
        _check_state_processes(_read_state(Path(resume), cfg), num_processes)
    return TrainPlan(
        cfg, family, scan, plan, schedule, seed, resolve_mixed_precision(cfg.mixed_precision, bundle.device), warnings,
        validation, num_processes,
    )  # fmt: skip


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
    built, _ = build_optimizer(
        cfg, [{"params": [torch.zeros(1, requires_grad=True)], "lr": cfg.learning_rate}], schedule.total_steps
    )
    check_per_group_lrs(cfg, built)


def _network_targets(cfg: TrainConfig, bundle: ModelBundle) -> tuple[list, dict[str, str]]:
    unet, encoders, naming = bundle.lora_hosts()
    targets = select_targets(
        bundle.family,
        unet if cfg.train_unet else None,
        encoders if cfg.train_text_encoder else {},
        conv=cfg.effective_conv_dim is not None or (uses_blocks(cfg) and cfg.conv_block_dims is not None),
    )
    return targets, naming


def build_network(cfg: TrainConfig, bundle: ModelBundle) -> LoRANetwork:
    """The network ``cfg`` asks for (type, ranks, LoKr/Tucker/DoRA options, block-wise dims) on the
    bundle's modules."""
    targets, naming = _network_targets(cfg, bundle)
    module_dims = block_module_dims(cfg, bundle.family, targets, naming) if uses_blocks(cfg) else None
    return LoRANetwork(
        targets, cfg.network_dim, cfg.network_alpha, conv_rank=cfg.effective_conv_dim,
        conv_alpha=cfg.effective_conv_alpha, dropout=cfg.network_dropout,
        rank_dropout=cfg.rank_dropout, module_dropout=cfg.module_dropout, naming=naming, family=bundle.family,
        algo=cfg.engine_algo, dora_wd=cfg.dora_wd, factor=cfg.factor, decompose_both=cfg.decompose_both,
        full_matrix=cfg.full_matrix, use_tucker=cfg.use_tucker,
        module_dims=module_dims,
    )  # fmt: skip


def check_network(cfg: TrainConfig, bundle: ModelBundle) -> None:
    """Before anything is written: a LoKr factor must divide every trained layer's size, and a
    network_weights file must be of this family and this network type."""
    if cfg.engine_algo == "lokr" and cfg.factor > 0:
        targets, _ = _network_targets(cfg, bundle)
        for target in targets:
            for size in host_dims(target.module, target.kind):
                if size % cfg.factor:
                    raise UserError(
                        f"factor = {cfg.factor} does not divide the {size} channels of {target.key}: LoKr needs a "
                        "factor that divides every layer's size (4, 8 or 16 for SD models), or -1 for automatic."
                    )
    if cfg.network_weights:
        _, _, summary = read_lora_file(cfg.network_weights)
        check_file_family(cfg.network_weights, summary.family, bundle.family)
        check_file_type(cfg.network_weights, summary, cfg.engine_algo, cfg.dora_wd)


def default_activation_text(scan: DatasetScan) -> str:
    """The trigger words: each subset's class tokens where its captions use them as a tag,
    otherwise the tag most captions start with."""
    words: list[str] = []
    firsts: dict[str, int] = {}
    for subset_index, subset in enumerate(scan.subsets):
        if subset.is_reg:
            continue
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
        if count * 2 >= sum(1 for i in scan.items if not scan.subsets[i.subset].is_reg):
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
    net_args = network_args_metadata(cfg)
    v_pred = resolve_v_prediction(cfg, bundle)
    values: dict[str, Any] = {
        "ss_session_id": session_id, "ss_training_started_at": started, "ss_output_name": cfg.output_name,
        "ss_learning_rate": cfg.learning_rate, "ss_text_encoder_lr": cfg.text_encoder_lr, "ss_unet_lr": cfg.unet_lr,
        "ss_num_train_images": scan.num_train_images, "ss_num_validation_images": len(plan.validation.sizes) if plan.validation else 0, "ss_num_reg_images": scan.num_reg_images,
        "ss_num_batches_per_epoch": schedule.batches_per_epoch, "ss_num_epochs": schedule.num_epochs,
        "ss_gradient_checkpointing": cfg.gradient_checkpointing, "ss_gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "ss_max_train_steps": schedule.total_steps, "ss_lr_warmup_steps": cfg.lr_warmup_steps if cfg.lr_warmup_steps < 1 else int(cfg.lr_warmup_steps),
        "ss_lr_scheduler": cfg.lr_scheduler, "ss_network_module": cfg.effective_network_module, "ss_network_dim": cfg.network_dim,
        "ss_network_alpha": cfg.network_alpha, "ss_network_dropout": cfg.network_dropout, "ss_mixed_precision": plan.mixed_precision,
        "ss_full_fp16": False, "ss_v2": False, "ss_base_model_version": md.base_model_version(bundle.family, v_pred),
        "ss_clip_skip": bundle.clip_skip, "ss_max_token_length": cfg.max_token_length, "ss_cache_latents": cfg.cache_latents,
        "ss_seed": plan.seed, "ss_lowram": False, "ss_noise_offset": cfg.noise_offset, "ss_multires_noise_iterations": cfg.multires_noise_iterations,
        "ss_multires_noise_discount": cfg.multires_noise_discount, "ss_adaptive_noise_scale": cfg.adaptive_noise_scale,
        "ss_zero_terminal_snr": resolve_zero_terminal_snr(cfg, bundle),
        "ss_training_comment": cfg.training_comment, "ss_sd_scripts_commit_hash": f"lib_lora {__version__}",
        "ss_optimizer": optimizer_name, "ss_max_grad_norm": cfg.max_grad_norm, "ss_caption_dropout_rate": cfg.caption_dropout_rate,
        "ss_caption_dropout_every_n_epochs": cfg.caption_dropout_every_n_epochs, "ss_caption_tag_dropout_rate": cfg.caption_tag_dropout_rate,
        "ss_face_crop_aug_range": None, "ss_prior_loss_weight": cfg.prior_loss_weight, "ss_min_snr_gamma": cfg.min_snr_gamma,
        "ss_scale_weight_norms": None, "ss_ip_noise_gamma": cfg.ip_noise_gamma,
        "ss_debiased_estimation": cfg.debiased_estimation_loss, "ss_noise_offset_random_strength": cfg.noise_offset_random_strength,
        "ss_ip_noise_gamma_random_strength": cfg.ip_noise_gamma_random_strength, "ss_loss_type": cfg.loss_type,
        "ss_huber_schedule": cfg.huber_schedule, "ss_huber_scale": cfg.huber_scale, "ss_huber_c": cfg.huber_c,
        "ss_fp8_base": cfg.fp8_base, "ss_fp8_base_unet": False, "ss_validation_seed": cfg.validation_seed, "ss_validation_split": cfg.validation_split,
        "ss_max_validation_steps": cfg.max_validation_steps, "ss_validate_every_n_epochs": cfg.validate_every_n_epochs,
        "ss_validate_every_n_steps": cfg.validate_every_n_steps,
        "ss_resize_interpolation": None,
        "ss_batch_size_per_device": cfg.train_batch_size, "ss_total_batch_size": plan.effective_batch,
        "ss_num_processes": plan.num_processes,  # ours: the data-parallel world size (sd-scripts derives it)
        "ss_resolution": cfg.resolution_wh, "ss_color_aug": False, "ss_flip_aug": cfg.flip_aug, "ss_random_crop": cfg.random_crop,
        "ss_shuffle_caption": cfg.shuffle_caption, "ss_enable_bucket": cfg.enable_bucket, "ss_bucket_no_upscale": cfg.bucket_no_upscale,
        "ss_min_bucket_reso": cfg.min_bucket_reso if cfg.enable_bucket else None,
        "ss_max_bucket_reso": cfg.max_bucket_reso if cfg.enable_bucket else None, "ss_keep_tokens": cfg.keep_tokens,
        "ss_dataset_dirs": scan.dataset_dirs_info(), "ss_reg_dataset_dirs": scan.reg_dataset_dirs_info(), "ss_tag_frequency": scan.tag_frequency(),
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
    values.update(vae_metadata(bundle))  # a separate VAE file, when the host has one
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
        self.validation: tuple[int, float] | None = None  # (step, loss) of the latest validation

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
        if self.validation is not None and self.validation[0] == step:
            # ours: sd-scripts logs the validation loss but writes none into the file
            values["ss_validation_loss"] = self.validation[1]
        meta = md.format_ss_metadata(values)
        for key in ("ss_network_args", "ss_sd_model_hash", "ss_new_sd_model_hash"):
            if key not in values:
                meta.pop(key, None)
        meta.update(
            md.modelspec(
                self.bundle.family,
                title=self.cfg.output_name,
                resolution=self.cfg.resolution_wh,
                v_prediction=resolve_v_prediction(self.cfg, self.bundle),
                clip_skip=self.bundle.clip_skip,
                trigger_phrase=self.activation or None,
                implementation_version=f"train-lora/{__version__}",
                timestep_range=timestep_range(self.cfg),
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


def _read_log(log_path: Path, up_to: int) -> tuple[dict[int, dict[str, Any]], dict[int, float]]:
    """The training log's step rows (step -> row) and validation losses (step -> loss) up to step
    ``up_to``; a later row of a step wins (a killed run's steps are logged again when it resumes)."""
    steps: dict[int, dict[str, Any]] = {}
    checks: dict[int, float] = {}
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return steps, checks
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        step = row.get("step") if isinstance(row, dict) else None
        if not isinstance(step, int) or step > up_to:
            continue
        if isinstance(row.get("val_loss"), (int, float)):
            checks[step] = float(row["val_loss"])
        elif isinstance(row.get("loss"), (int, float)):
            steps[step] = row
    return steps, checks


def _saved_kind(path: Path, name: str) -> str:
    """How a file of the run ``name`` was saved (epoch, step, final, stopped): its ``name.json``
    says; without one, its name."""
    try:
        description = json.loads(path.with_suffix(".json").read_text(encoding="utf-8")).get("description", "")
    except (OSError, ValueError, AttributeError):
        description = ""
    match = re.search(r"\((epoch|step|final|stopped) save\)$", str(description))
    if match:
        return match.group(1)
    if path.stem == name:
        return "final"
    return "epoch" if re.fullmatch(rf"{re.escape(name)}-\d{{6}}", path.stem) else "step"


def run_history(cfg: TrainConfig, session_id: int, position: Position, total_steps: int) -> RunHistory:
    """What the stopped run resumed at ``position`` did before: its files (same session id, up to that
    step) with the loss each was saved with (from the log: the moving average at its step, a stop
    file's last loss), its logged losses and validation losses, and the file holding the weights it
    continues from."""
    out, _, log_path = output_paths(cfg)
    steps, checks = _read_log(log_path, position.step)
    files: list[SavedFile] = []
    for lora in list_lora_files(out, cfg.output_name, newest_run_only=False):
        if lora.session != str(session_id) or lora.step is None or lora.step > position.step:
            continue
        kind = _saved_kind(lora.path, cfg.output_name)
        row = steps.get(lora.step, {})
        loss = row.get("loss") if kind == "stopped" else row.get("avg_loss", row.get("loss"))
        files.append(SavedFile(lora.path, lora.epoch or 0, lora.step, float(loss) if loss is not None else None, kind))
    at_start = [f.path for f in files if f.step == position.step]
    return RunHistory(
        epoch=position.epoch, step=position.step, total_steps=total_steps, files=files,
        losses=[(step, float(row["loss"])) for step, row in sorted(steps.items())],
        val_losses=sorted(checks.items()), resumed_from=at_start[-1] if at_start else None,
    )  # fmt: skip


# -- training state (stop and resume) ----------------------------------------------------------------
#
# The swap: the new state is written complete into ``NAME-state.new`` (state.json last), then
# ``NAME-state`` becomes ``NAME-state.old``, ``.new`` becomes ``NAME-state`` and ``.old`` is removed.
# At every instant one of the three folders holds a complete state, and the newest complete one is
# what resume reads (``find_state``); the next run (holding the lock) puts it back in place.

OLD_STATE_MESSAGE = (
    "{folder} was written by an older version of Train LoRA and cannot be resumed (its format needs "
    "pickle, which is never loaded); start a new run, or continue from the last epoch file with network_weights."
)


def state_base(path: str | os.PathLike) -> Path:
    """``NAME-state`` for ``NAME-state``, ``NAME-state.new`` or ``NAME-state.old``."""
    path = Path(path)
    for side in STATE_SIDES:
        if path.name.endswith("-state" + side):
            return path.with_name(path.name[: -len(side)])
    return path


def _state_folders(base: Path) -> list[Path]:
    return [base] + [base.with_name(base.name + side) for side in STATE_SIDES]


def _complete_state(folder: Path) -> dict[str, Any] | None:
    """The state.json of a complete version-2 state folder (every file it lists, at its size), else None."""
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    files = state.get("files") if isinstance(state, dict) else None
    if state.get("version") != STATE_VERSION or not isinstance(files, dict) or not files:
        return None
    for name, size in files.items():
        try:
            if (folder / str(name)).stat().st_size != size:
                return None
        except OSError:
            return None
    position = state.get("position")
    if not isinstance(position, dict) or not all(isinstance(position.get(k), int) for k in ("epoch", "batch", "step")):
        return None
    return state


def _state_order(state: dict[str, Any]) -> tuple:
    p = state["position"]
    written = state.get("written")
    return (p["step"], p["epoch"], p["batch"], written if isinstance(written, int) else 0)


def _newest_state(base: Path) -> tuple[Path, dict[str, Any]] | None:
    found = [(folder, state) for folder in _state_folders(base) if (state := _complete_state(folder))]
    return max(found, key=lambda item: _state_order(item[1])) if found else None


def find_state(path: str | os.PathLike) -> Path:
    """The newest complete state folder of the run whose state folder is ``path`` (see the swap above)."""
    base = state_base(path)
    newest = _newest_state(base)
    if newest:
        return newest[0]
    for folder in _state_folders(base):
        if (folder / OLD_STATE_OPTIMIZER).is_file():
            raise UserError(OLD_STATE_MESSAGE.format(folder=folder))
    if any(folder.exists() for folder in _state_folders(base)):
        raise UserError(
            f"{base} holds no complete training state (it needs state.json, {STATE_NETWORK} and {STATE_OPTIMIZER})."
        )
    raise UserError(f"{base}: no such training state folder.")


def settle_states(base: Path) -> Path | None:
    """Leave only the newest complete state, as ``base`` (after a kill in the middle of a swap); partial
    folders go. Call it only while holding the run's lock. Returns ``base`` when a state remains."""
    newest = _newest_state(base)
    keep = newest[0] if newest else None
    for folder in _state_folders(base)[1:]:
        if folder != keep:
            shutil.rmtree(folder, ignore_errors=True)
    if keep is not None and keep != base:
        shutil.rmtree(base, ignore_errors=True)  # older or partial: ``keep`` stays complete meanwhile
        replace_with_retry(keep, base)
    return base if keep is not None else None


def remove_states(state_dir: Path) -> None:
    """A finished run leaves no state behind (nor the swap's other folders)."""
    for folder in _state_folders(state_base(state_dir)):
        shutil.rmtree(folder, ignore_errors=True)


def _write_state(
    state_dir: Path,
    network: LoRANetwork,
    optimizer: Any,
    scheduler: Any,
    position: Position,
    seed: int,
    cfg: TrainConfig,
    session: dict[str, Any],
    num_processes: int = 1,
) -> None:
    """Network, optimizer, scheduler and position, written complete beside the current state, then
    swapped in (see the swap above). No pickle: tensors go to safetensors files, the rest to JSON."""
    new, old = state_dir.with_name(state_dir.name + ".new"), state_dir.with_name(state_dir.name + ".old")
    shutil.rmtree(new, ignore_errors=True)
    try:
        new.mkdir(parents=True)
    except OSError as exc:
        raise write_error(new, exc) from None
    save_network(network, new / STATE_NETWORK, {"ss_network_module": "networks.lora"}, save_precision="float")
    structure, tensors = safetensors_io.pack_tree(optim.optimizer_state(optimizer, scheduler))
    safetensors_io.save_tensors(new / STATE_OPTIMIZER, tensors)
    state = {
        "version": STATE_VERSION, "written": time.time_ns(), "position": position.as_dict(), "seed": seed,
        "session": session, "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.as_dict().items()},
        "optimizer": structure, "files": {n: (new / n).stat().st_size for n in (STATE_NETWORK, STATE_OPTIMIZER)},
    }  # fmt: skip
    if num_processes > 1:
        state["num_processes"] = num_processes
    atomic_write_text(new / "state.json", json.dumps(state, indent=1))
    try:
        if state_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            replace_with_retry(state_dir, old)
        replace_with_retry(new, state_dir)
    except OSError as exc:
        raise write_error(state_dir, exc) from None
    shutil.rmtree(old, ignore_errors=True)


def _read_state(state_dir: Path, cfg: TrainConfig) -> dict[str, Any]:
    """The newest complete state of ``state_dir``'s run, checked against ``cfg``."""
    folder = find_state(state_dir)
    state = _complete_state(folder) or {}
    saved = state.get("config")
    if (
        not isinstance(saved, dict)
        or not isinstance(state.get("seed"), int)
        or not isinstance(state.get("session"), dict)
    ):
        raise UserError(f"{folder / 'state.json'} is damaged (no settings, seed or session).")
    changed = []
    for key in RESUME_KEYS:
        ours = getattr(cfg, key)
        ours = list(ours) if isinstance(ours, tuple) else ours
        if key == "seed" and ours is None:
            continue
        if key not in saved and ours == TrainConfig.__dataclass_fields__[key].default:
            continue  # a state written before the setting existed
        if saved.get(key) != ours:
            changed.append(f"{key} ({saved.get(key)!r} -> {ours!r})")
    if changed:
        raise UserError("Cannot resume: these settings differ from the stopped run: " + ", ".join(changed) + ".")
    return state


def _load_optimizer(folder: Path, state: dict[str, Any], built: Any, scheduler: Any) -> None:
    tensors, _ = safetensors_io.load(folder / STATE_OPTIMIZER)
    saved = safetensors_io.unpack_tree(state.get("optimizer"), tensors, f"The training state {folder}")
    if not isinstance(saved, dict) or "optimizer" not in saved or "scheduler" not in saved:
        raise UserError(f"The training state {folder} is damaged (no optimizer state).")
    try:
        optim.load_optimizer_state(built, scheduler, saved)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        raise UserError(f"The training state {folder} does not fit this run ({type(exc).__name__}).") from None


def state_summary(state_dir: str | os.PathLike) -> dict[str, Any] | None:
    """What the Resume list shows of a state folder: name, folder, position, total steps, when; None
    when it holds no complete (current-format) state."""
    base = state_base(state_dir)
    newest = _newest_state(base)
    if newest is None:
        return None
    folder, state = newest
    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    return {
        "state": base, "folder": folder, "name": config.get("output_name") or base.name.removesuffix("-state"),
        "position": state["position"], "written": state.get("written"), "config": config,
    }  # fmt: skip


def resumable_states(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every resumable state in ``output_dir``, newest first."""
    try:
        folders = [p for p in Path(output_dir).iterdir() if p.is_dir() and p.name.endswith("-state")]
    except OSError:
        return []
    found = [s for s in (state_summary(p) for p in folders) if s is not None]
    return sorted(found, key=lambda s: s.get("written") or 0, reverse=True)


# -- one run per (output folder, name): refuse to overwrite, lock, room to write ---------------------------


class RunExists(UserError):
    """A run with this name already has files in the output folder."""

    def __init__(self, message: str, existing: ExistingRun, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.existing = existing


@dataclass
class ExistingRun:
    folder: Path
    name: str
    files: list[Path]  # the run's own files and folders (LoRA files, json, previews, log, states, samples)
    loras: list[Path]  # its LoRA files
    state: Path | None  # its resumable state folder
    suggestion: str  # a name with no run yet

    def summary(self) -> str:
        parts = [f"{len(self.loras)} LoRA file{'s' if len(self.loras) != 1 else ''}"]
        info = state_summary(self.state) if self.state else None
        if info:
            parts.append(f"a state to resume from at step {info['position']['step']}")
        return " and ".join(parts)


def _run_pattern(name: str) -> re.Pattern[str]:
    stem = re.escape(name)
    return re.compile(
        rf"^{stem}(?:-\d{{6}}|-step\d{{8}})?(?:\.safetensors|\.json|\.preview\.png|\.png)$"
        rf"|^{stem}-log\.jsonl$|^{stem}-(?:samples|grids)$|^{stem}-state(?:\.new|\.old|\.tmp)?$"
    )


def is_run_file(name: str, file_name: str) -> bool:
    """True for the names a run called ``name`` writes in its output folder (never another LoRA's)."""
    return bool(_run_pattern(name).match(file_name))


def existing_run(output_dir: str | os.PathLike, name: str) -> ExistingRun | None:
    """The files of a run called ``name`` in ``output_dir``, when it has a LoRA file or a state."""
    folder = Path(output_dir)
    try:
        files = sorted(p for p in folder.iterdir() if is_run_file(name, p.name))
    except OSError:
        return None
    loras = [p for p in files if p.suffix == ".safetensors"]
    states = [p for p in files if "-state" in p.name[len(name) :] and (p / "state.json").is_file()]
    if not loras and not states:  # leftovers alone (a partial state, a log) are no run to protect
        return None
    state = folder / f"{name}-state"
    resumable = state if _newest_state(state) else None
    return ExistingRun(folder, name, files, loras, resumable, suggest_name(folder, name))


def suggest_name(output_dir: str | os.PathLike, name: str) -> str:
    """``name-2`` (or the next free number): a name no run uses yet in ``output_dir``."""
    match = re.fullmatch(r"(.*)-(\d{1,3})", name)
    stem, number = (match.group(1), int(match.group(2))) if match else (name, 1)
    folder = Path(output_dir)
    try:
        taken = {p.name for p in folder.iterdir()}
    except OSError:
        taken = set()
    while True:
        number += 1
        candidate = f"{stem}-{number}"
        if not any(is_run_file(candidate, t) for t in taken):
            return candidate


def move_run_to_trash(run: ExistingRun) -> Path:
    """Move every file of ``run`` into ``.trash/NAME-YYYYmmdd-HHMMSS/`` in its folder (nothing is
    deleted); LoRA files there end in ``.old`` so no Lora list shows them."""
    trash = run.folder / TRASH_FOLDER / f"{run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while trash.exists():
        suffix += 1
        trash = trash.with_name(f"{run.name}-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}")
    try:
        trash.mkdir(parents=True)
        for path in run.files:
            target = trash / (path.name + (".old" if path.suffix in LISTED_SUFFIXES else ""))
            replace_with_retry(path, target)
    except OSError as exc:
        raise UserError(
            f"Cannot move the old run's files into {trash}: {exc.strerror or exc} (a file may be open in another program)."
        ) from None
    return trash


def _same_path(a: Path, b: Path) -> bool:
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def lock_path(cfg: TrainConfig) -> Path:
    return Path(cfg.output_dir) / f".{cfg.output_name}.lock"


def _lock_message(cfg: TrainConfig, holder: int | None) -> str:
    who = f" (process {holder})" if holder else ""
    return (
        f"Another training{who} is already writing {cfg.output_name} in {cfg.output_dir}; wait for it to finish "
        "or choose another name."
    )


def _existing_to_replace(
    cfg: TrainConfig, resume: str | os.PathLike | None, overwrite: bool, hint: str | None = None
) -> ExistingRun | None:
    """The existing run ``overwrite`` replaces; RunExists when there is one and no choice was made."""
    out, state_dir, _ = output_paths(cfg)
    if resume is not None and _same_path(state_base(resume), state_dir):
        return None  # continuing this very run: its files are expected
    run = existing_run(out, cfg.output_name)
    if run is None or overwrite:
        return run
    raise RunExists(
        f"A run named {cfg.output_name} already exists in {out} ({run.summary()}); resume it, use a new name such "
        f"as {run.suggestion}, or overwrite it.",
        run,
        hint,
    )


def check_output(
    cfg: TrainConfig, resume: str | os.PathLike | None = None, overwrite: bool = False, hint: str | None = None
) -> ExistingRun | None:
    """Before any work (model load, caching): the output folder is writable, no other process is
    training this name, and an existing run of this name is not overwritten unless asked (``resume``
    continues it; ``overwrite`` moves its files to the trash when the run starts). Returns the run that
    ``overwrite`` will replace, if any. ``hint``: the front end's words for the choices."""
    check_writable(cfg.output_dir)
    if Path(cfg.output_dir).is_dir():
        lock = FileLock(lock_path(cfg))
        if not lock.acquire():
            raise UserError(_lock_message(cfg, lock.holder))
        lock.release()
    return _existing_to_replace(cfg, resume, overwrite, hint)


@contextlib.contextmanager
def run_guard(
    cfg: TrainConfig, resume: str | os.PathLike | None, overwrite: bool, events: Events
) -> Iterator[Path | None]:
    """Hold the (output folder, name) lock for the run: refuse an existing run (unless resumed or
    overwritten), move an overwritten run to the trash, clean a killed run's leftovers, and yield the
    state folder to resume from."""
    out, state_dir, _ = output_paths(cfg)
    check_writable(out, create=True)
    lock = FileLock(lock_path(cfg))
    if not lock.acquire():
        raise UserError(_lock_message(cfg, lock.holder))
    try:
        run = _existing_to_replace(cfg, resume, overwrite)
        if run is not None:
            events.info(f"The earlier {cfg.output_name} run was moved to {move_run_to_trash(run)}.")
        remove_orphan_temps(out, lambda target: is_run_file(cfg.output_name, target))
        folder = None
        if resume is not None:
            base = state_base(resume)
            if _same_path(base, state_dir):
                settle_states(base)
            folder = find_state(base)
        yield folder
    finally:
        lock.release()


def estimate_output_bytes(cfg: TrainConfig, plan: TrainPlan, network: LoRANetwork) -> tuple[int, int, int]:
    """(total, one LoRA file, the resume state) in bytes: what the run writes at most at one time."""
    params = sum(p.numel() for p in network.parameters())
    per_value = 4 if cfg.save_precision == "float" else 2
    lora = params * per_value + 64 * 1024  # + header and metadata
    epochs = plan.schedule.num_epochs
    files = 1  # the final file
    if cfg.save_every_n_epochs:
        epoch_files = max(0, (epochs - 1) // cfg.save_every_n_epochs)
        if cfg.save_last_n_epochs:
            epoch_files = min(epoch_files, cfg.save_last_n_epochs + 1)
        files += epoch_files
    if cfg.save_every_n_steps:
        files += plan.schedule.total_steps // cfg.save_every_n_steps
    files += 1  # a stopped run's file
    state = 2 * params * 4 * 3  # network + two optimizer moments in float32, twice during the swap
    return lora * files + state + 1024 * 1024, lora, state


def check_free_space(cfg: TrainConfig, plan: TrainPlan, network: LoRANetwork) -> None:
    """Refuse before caching when the output folder's disk cannot hold what the run will write."""
    need, lora, state = estimate_output_bytes(cfg, plan, network)
    free = free_bytes(cfg.output_dir)
    if free is not None and free < need:
        raise UserError(
            f"The output folder {cfg.output_dir} has {human_bytes(free)} free, but this run writes about "
            f"{human_bytes(need)} (LoRA files of {human_bytes(lora)} each and a resume state of {human_bytes(state)}); "
            "free some space or choose another folder."
        )


# -- the job ------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    bundle: ModelBundle,
    events: Events | None = None,
    stop: StopToken | None = None,
    *,
    resume: str | os.PathLike | None = None,
    overwrite: bool = False,
    renderer: Renderer | None = None,
    plan: TrainPlan | None = None,
    parallel: DataParallel | None = None,
) -> TrainResult:
    """Train a LoRA on ``bundle`` as ``cfg`` says; see the module docstring.

    The run holds a lock on (output folder, name) throughout; an existing run of that name is refused
    unless ``resume`` (its state folder) or ``overwrite`` (its files move to ``.trash/``) is given.
    ``parallel``: this process's part in a data-parallel run (engine/distributed.py); only its rank 0
    writes files (and holds the lock)."""
    events = events or Events()
    processes = parallel.world_size if parallel else 1
    try:
        plan = plan or prepare(cfg, bundle, events, stop, str(resume) if resume else None, processes)
    except StopRequested:  # stopped while the dataset was read: nothing trained, nothing written
        return stopped_while_preparing(cfg, events, resume, parallel is None or parallel.is_main)
    guard = run_guard(cfg, resume, overwrite, events) if parallel is None or parallel.is_main else None
    with guard or contextlib.nullcontext(Path(resume) if resume else None) as state_folder:
        if parallel:  # the other processes read the state only once rank 0 has the lock (and any repair done)
            parallel.barrier()
        try:
            return _train_locked(
                cfg, bundle, events, stop, resume=state_folder, renderer=renderer, plan=plan, parallel=parallel
            )
        except WriteError as exc:
            raise WriteError(
                exc.message,
                "Training stopped; the files and the resume state saved before are intact: free some space "
                "(or fix the folder), then resume.",
            ) from None


def _train_locked(
    cfg: TrainConfig,
    bundle: ModelBundle,
    events: Events,
    stop: StopToken | None = None,
    *,
    resume: Path | None = None,
    renderer: Renderer | None = None,
    plan: TrainPlan | None = None,
    parallel: DataParallel | None = None,
) -> TrainResult:
    stop = stop or StopToken()
    cfg = vram.apply_auto_memory(cfg, bundle, events)  # CUDA only: the savers the card needs
    if bundle.device.type == "cuda":  # the spill guard: steps suddenly 5x slower
        events = MultiEvents(events, vram.SpillEvents(events.warning))
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
    check_free_space(cfg, plan, network)
    if state:
        load_network_weights(network, Path(resume) / STATE_NETWORK)
    elif cfg.network_weights:
        load_network_weights(network, cfg.network_weights)
        events.info(f"starting from {cfg.network_weights}")
    if parallel:
        parallel.broadcast_parameters([p for p in network.parameters() if p.requires_grad])
    param_groups = network.param_groups(
        cfg.unet_lr, cfg.text_encoder_lr, cfg.learning_rate, loraplus_unet_ratio=cfg.loraplus_unet_lr_ratio or cfg.loraplus_lr_ratio,
        loraplus_text_encoder_ratio=cfg.loraplus_text_encoder_lr_ratio or cfg.loraplus_lr_ratio,
        unet_block=unet_block_groups(cfg, network),
    )  # fmt: skip
    built, scheduler = build_optimizer(cfg, param_groups, plan.schedule.total_steps * processes)
    if parallel:  # accelerate steps the scheduler once per process (so sd-scripts builds it for steps x N)
        scheduler = SteppedScheduler(scheduler, processes)
    for warning in built.warnings:
        events.warning(warning)
    position = Position()
    session = {"id": random.randrange(1 << 32), "started": time.time()}
    if state:
        _load_optimizer(Path(resume), state, built, scheduler)
        position = Position(**state["position"])
        session = state["session"]
        events.info(f"resuming at epoch {position.epoch + 1}, step {position.step} of {plan.schedule.total_steps}")
    history = run_history(cfg, session["id"], position, plan.schedule.total_steps) if state and writes else None
    if history is not None:
        events.resumed(history)
    resumed_from = history.resumed_from.name if history is not None and history.resumed_from else None
    start = Position(**position.as_dict())

    activation = cfg.activation_text if cfg.activation_text is not None else default_activation_text(plan.scan)
    base = _base_metadata(cfg, plan, bundle, network, built.name_for_metadata, session["id"], session["started"])
    saver = _Saver(cfg, plan, bundle, network, base, activation, events)
    options = caption_options(cfg)
    family = bundle.family
    rng_state = torch.get_rng_state()  # the loop seeds the global RNG per batch (LoRA dropouts)
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    if hasattr(bundle, "sdpa"):
        bundle.sdpa = cfg.sdpa
    fp8 = Fp8Base([bundle.lora_hosts()[0]]) if cfg.fp8_base and not _host_float8(bundle) else None
    offloads: list[Offload] = []
    try:
        if fp8 is not None:  # before the LoRA patches the layers, so the LoRA calls the float8 forward
            fp8.install()
            events.info(
                f"fp8_base: {len(fp8.converted)} UNet layers stored in float8 ({fp8.bytes_saved / 2**30:.2f} GiB less)"
            )
        network.apply_to()
        if parallel and cfg.cache_latents:
            latents = _prepare_latents_parallel(cfg, plan, bundle, seed, events, stop, parallel)
        else:
            latents = _prepare_latents(cfg, plan, bundle, seed, events, stop) if cfg.cache_latents else None
        text_cache = _prepare_text_cache(cfg, plan, bundle, options, events)
        offloads = _offload_after_caching(cfg, bundle, latents is not None, text_cache is not None, events)
        masks = mask_source(cfg, plan.scan)

        def make_batch(epoch: int, samples: list, rng: random.Random) -> Batch:
            flips = [cfg.flip_aug and rng.random() < 0.5 for _ in samples]
            items = [plan.scan.items[s.item] for s in samples]
            if latents is not None:
                batch_latents = latents.get_batch(samples, flips)
                ltrbs = [latents.entry(s.item).crop_ltrb for s in samples]
                offsets = [centre_offset(plan.buckets.choices[s.item]) for s in samples]
            else:
                batch_latents, ltrbs, offsets = _encode_on_the_fly(plan, bundle, samples, flips, cfg.random_crop, rng)
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
            mask = None
            if masks is not None:
                mask = torch.stack(
                    [
                        masks.tensor(s.item, plan.buckets.choices[s.item], offset, flip)
                        for s, offset, flip in zip(samples, offsets, flips)
                    ]
                )
            weights = None
            if any(subset.is_reg for subset in plan.scan.subsets):
                weights = torch.tensor([cfg.prior_loss_weight if plan.scan.is_reg(s.item) else 1.0 for s in samples])
            return Batch(batch_latents, captions, text, size_cond, mask=mask, loss_weights=weights)

        log_handle = open(log_path if writes else os.devnull, "a", encoding="utf-8")  # noqa: SIM115 - closed in finally

        def log_step(row: dict[str, Any]) -> None:
            try:
                log_handle.write(json.dumps(row) + "\n")
                log_handle.flush()
            except OSError as exc:
                raise write_error(log_path, exc) from None

        def save_state(pos: Position) -> None:
            if state and pos == start and _same_path(Path(resume), state_dir):
                return  # stopped where it resumed: the state it resumed from is that state already
            if writes:
                with optim.evaluation(built):  # schedule-free: the state holds the eval-mode weights
                    _write_state(state_dir, network, built, scheduler, pos, seed, cfg, session, processes)

        def save(kind: str, epoch: int, step: int, loss: float | None) -> None:
            with optim.evaluation(built):  # schedule-free: files get the eval-mode (averaged) weights
                saver(kind, epoch, step, loss)

        def after_epoch(epoch: int, step: int) -> None:
            if renderer and cfg.sample_every_n_epochs and epoch % cfg.sample_every_n_epochs == 0:
                with contextlib.ExitStack() as back:  # the VAE / text encoders return for the samples
                    for offload in offloads:
                        back.enter_context(offload.back())
                    back.enter_context(optim.evaluation(built))  # schedule-free: eval-mode weights
                    _render_samples(cfg, renderer, network, epoch, step, events)

        step_settings = loss_settings(cfg, bundle)
        validate = _validation_hook(cfg, plan, bundle, step_settings, seed, saver, offloads)
        hooks = LoopHooks(
            epoch_batches=lambda e: plan.buckets.epoch_batches(seed, e), make_batch=make_batch, save=save,
            save_state=save_state, after_epoch=after_epoch, log_step=log_step, validate=validate,
        )  # fmt: skip
        if parallel:
            _parallel_hooks(hooks, parallel)
        settings = LoopSettings(
            seed=seed, mixed_precision=plan.mixed_precision, max_grad_norm=cfg.max_grad_norm,
            save_every_n_epochs=cfg.save_every_n_epochs, save_every_n_steps=cfg.save_every_n_steps,
            train_unet=cfg.train_unet, train_text_encoder=cfg.train_text_encoder, gradient_checkpointing=cfg.gradient_checkpointing,
            validate_every_n_epochs=cfg.validate_every_n_epochs, validate_every_n_steps=cfg.validate_every_n_steps,
        )  # fmt: skip
        try:
            result = run_loop(
                bundle,
                network,
                built.optimizer,
                scheduler,
                step_settings,
                plan.schedule,
                settings,
                hooks,
                events,
                parallel.watch(stop) if parallel else stop,
                position,
                resumed_from,
            )
        finally:
            log_handle.close()
    except StopRequested:
        # stopped while caching: nothing trained yet, nothing to save
        events.info(_stopped_before_training(resumed_from))
        return TrainResult("stopped", saver.files, 0, None, None, log_path, [])
    finally:
        network.restore()
        for offload in reversed(offloads):
            offload.remove()
        if fp8 is not None:
            fp8.remove()
        torch.set_rng_state(rng_state)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    if result.status == "done" and writes:
        remove_states(state_dir)
    return TrainResult(
        result.status,
        saver.files,
        result.position.step,
        result.last_loss,
        state_dir if result.status == "stopped" else None,
        log_path,
        result.losses,
    )


def stopped_while_preparing(
    cfg: TrainConfig, events: Events, resume: str | os.PathLike | None = None, report_history: bool = True
) -> TrainResult:
    """The result of a run stopped while :func:`prepare` read its dataset: nothing trained, nothing
    written. A resumed run reports its history and names the file it resumed from (nothing new was
    learned since). Front ends whose own :func:`prepare` call was stopped end the run with this."""
    history = _resume_history(cfg, resume) if resume and report_history else None
    if history is not None:
        events.resumed(history)
    events.info(_stopped_before_training(history.resumed_from.name if history and history.resumed_from else None))
    return TrainResult("stopped", [], history.step if history else 0, None, None, output_paths(cfg)[2], [])


def _stopped_before_training(resumed_from: str | None) -> str:
    if resumed_from:
        return "Stopped before training started: " + nothing_new_since(resumed_from)
    return "Stopped before training started; nothing was saved."


def _resume_history(cfg: TrainConfig, resume: str | os.PathLike) -> RunHistory | None:
    """:func:`run_history` of the state ``resume`` (its total steps unknown: 0), or None when it cannot be read."""
    try:
        state = _complete_state(find_state(resume)) or {}
        return run_history(cfg, state["session"]["id"], Position(**state["position"]), 0)
    except (UserError, KeyError, TypeError):
        return None


def _validation_hook(
    cfg: TrainConfig,
    plan: TrainPlan,
    bundle: ModelBundle,
    loss_settings: LossSettings,
    seed: int,
    saver: _Saver,
    offloads: list[Offload],
) -> Callable[[int, int], float | None] | None:
    """The loop's validation hook: the held-out images are encoded once (no flip, centre crop, fixed VAE
    noise, captions without shuffle or dropout), then scored by :func:`validation_loss` at each call;
    a VAE or text encoder moved off the GPU by a memory saver comes back for it."""
    held = plan.validation
    if held is None:
        return None
    vseed = cfg.validation_seed if cfg.validation_seed is not None else seed
    options = CaptionOptions(caption_prefix=cfg.caption_prefix, caption_suffix=cfg.caption_suffix)
    batches: list[Batch] = []

    def encode_all() -> None:
        generator = torch.Generator(device=bundle.device).manual_seed(vseed)
        assert held.scan is not None
        for index, item in enumerate(held.scan.items):
            choice = held.choices[index]
            done = load_and_transform(item.path, choice, rng=random.Random(vseed))
            with torch.no_grad():
                latents = bundle.encode_images(done.image[None].to(bundle.device), generator=generator).float().cpu()
            caption = process_caption(item.caption, options, 1, random.Random(vseed))
            size_cond = None
            if bundle.family == "sdxl":
                (ow, oh), (bw, bh) = held.sizes[index], choice.bucket
                top, left = crop_top_left(done.crop_ltrb, (bw, bh), False)
                size_cond = torch.tensor([[oh, ow, top, left, bh, bw]], dtype=torch.float32)
            batches.append(Batch(latents, [caption], None, size_cond))

    def validate(epoch: int, step: int) -> float:
        with contextlib.ExitStack() as back:
            for offload in offloads:
                back.enter_context(offload.back())
            if not batches:
                encode_all()
            value = validation_loss(
                bundle, batches, loss_settings, vseed, cfg.max_validation_steps,
                lambda: autocast_context(bundle.device, plan.mixed_precision),
            )  # fmt: skip
        saver.validation = (step, value)
        return value

    return validate


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
    images, ltrbs, offsets = [], [], []
    for sample, flip in zip(samples, flips):
        item = plan.scan.items[sample.item]
        done = load_and_transform(
            item.path, plan.buckets.choices[sample.item], flip=flip, random_crop=random_crop, rng=rng
        )
        images.append(done.image)
        ltrbs.append(done.crop_ltrb)
        offsets.append(done.offset)
    generator = torch.Generator(device=bundle.device).manual_seed(rng.randrange(1 << 62))
    with torch.no_grad():
        latents = bundle.encode_images(torch.stack(images).to(bundle.device), generator=generator).float()
    if not torch.isfinite(latents).all():
        raise UserError(
            "The VAE produced NaN latents for this batch; train with the VAE in float32 (a fixed fp16 VAE for SDXL)."
        )
    return latents, ltrbs, offsets


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


def _host_float8(bundle: ModelBundle) -> bool:
    """The host already stores its UNet weights in float8 (the webui's FP8 weight option)."""
    return bool(getattr(bundle, "float8_weights", False))


def _offload_after_caching(
    cfg: TrainConfig, bundle: ModelBundle, latents_cached: bool, text_cached: bool, events: Events
) -> list[Offload]:
    """The VAE off the training device once latents are cached (as sd-scripts does); the text
    encoders too once every caption is encoded, when cache_text_encoder_outputs is on."""
    offloads: list[Offload] = []
    parts = [("vae", latents_cached), ("text", text_cached and cfg.cache_text_encoder_outputs)]
    try:
        for part, wanted in parts:
            modules = offload_modules(bundle, part) if wanted else []
            if not modules:
                continue
            offload = Offload(modules)
            offloads.append(offload)
            if offload.install():
                label = "the VAE" if part == "vae" else "the text encoders"
                events.info(f"{label} moved off the GPU for the run ({offload.bytes_moved / 2**30:.2f} GiB)")
    except BaseException:
        for offload in reversed(offloads):
            offload.remove()
        raise
    return offloads


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
