"""``train``: train a LoRA headless, with sd-scripts' setting names."""

from __future__ import annotations

import argparse

from lib_lora.cli import shell_arg

HELP = """Train a LoRA from a dataset folder (kohya sd-scripts' settings and file format).

Settings come from a kohya-style TOML file, a preset and --KEY VALUE overrides (sd-scripts' names, e.g. --network_dim 16 --learning_rate 1e-4), in that order of
precedence: defaults < preset < TOML < command line.

Examples:
  python -m lib_lora train --preset character --train_data_dir data --pretrained_model_name_or_path tiny-sd15
  python -m lib_lora train my.toml --max_train_epochs 10
  python -m lib_lora train --config_file my.toml   (sd-scripts' way of giving the file)
  python -m lib_lora train my.toml --resume output/mylora-state
  python -m lib_lora train my.toml --overwrite
  python -m lib_lora train my.toml --score_epochs   (then score the epochs and name the best one)

A run whose name already has files in the output folder is refused unless --resume continues it or
--overwrite replaces it (its files move to <output_dir>/.trash/, nothing is deleted). Two trainings
cannot write the same name in the same folder at once.
Ctrl-C stops after the current step, saves the LoRA so far and a state to resume from.

Several GPUs (one process per GPU, the batches of each epoch shared among them):
  torchrun --nproc_per_node 2 -m lib_lora train my.toml
"""

ACCEPTS_EXTRA = True  # --KEY VALUE settings are parsed by this verb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = (
        "python -m lib_lora train [CONFIG.toml | --config_file CONFIG.toml] [--preset NAME] [--resume DIR | --overwrite] "
        "[--KEY VALUE ...]"
    )
    parser.add_argument("--preset", help="character, style, concept or sdxl-8gb")
    parser.add_argument("--resume", metavar="DIR", help="continue a stopped run from its <name>-state folder")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing run of the same name (its files move to <output_dir>/.trash/)",
    )
    parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    parser.add_argument("--list-settings", action="store_true", help="list every setting with its default and help")


def _config_file(extra: list[str]) -> tuple[str | None, list[str]]:
    """The TOML file (the first argument, or sd-scripts' ``--config_file FILE``) and the other arguments."""
    from lib_lora.common.errors import UserError

    rest = list(extra)
    found = rest.pop(0) if rest and not rest[0].startswith("--") else None
    i = 0
    while i < len(rest):
        flag = rest[i].split("=", 1)[0]
        if flag in ("--config_file", "--config-file", "--config"):
            if "=" in rest[i]:
                value, end = rest[i].split("=", 1)[1], i + 1
            elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                value, end = rest[i + 1], i + 2
            else:
                raise UserError(f"{flag} needs the TOML file: python -m lib_lora train --config_file FILE.toml")
            if found is not None:
                raise UserError(f"Two config files given ({found} and {value}); give one.")
            found = value
            del rest[i:end]
            continue
        i += 1
    return found, rest


def _overrides(extra: list[str]) -> dict[str, str | list[str]]:
    """``--KEY VALUE`` pairs; list settings (network_args, optimizer_args ...) take every value up to
    the next ``--KEY``, as sd-scripts' command line does: ``--network_args "algo=lokr" "factor=8"``."""
    from lib_lora.common.errors import UserError
    from lib_lora.config import FIELDS, normalize_key, unknown_key_error

    values: dict[str, str | list[str]] = {}
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--"):
            raise UserError(f"Unexpected argument {token!r}: settings are given as --KEY VALUE.")
        key = normalize_key(token[2:].split("=", 1)[0])
        if "=" in token:  # --KEY=VALUE: the value as given (tiny-sd15 keeps its hyphen)
            value = token.split("=", 1)[1]
            i += 1
        elif (
            key in FIELDS
            and str(FIELDS[key].type).startswith("bool")
            and (i + 1 == len(extra) or extra[i + 1].startswith("--"))
        ):
            value = "true"
            i += 1
        elif key in FIELDS and str(FIELDS[key].type).startswith("tuple"):
            end = i + 1
            while end < len(extra) and not extra[end].startswith("--"):
                end += 1
            value = [part for token in extra[i + 1 : end] for part in token.split()]
            i = end
        else:
            if i + 1 >= len(extra):
                raise UserError(f"--{key} needs a value.")
            value = extra[i + 1]
            i += 2
        if key not in FIELDS:
            raise unknown_key_error(key)
        values[key] = value
    return values


def _peek_family(name: str, family: str) -> str:
    """The model family before loading the model (presets depend on it)."""
    if family != "auto":
        return family
    from lib_lora.standalone.models import is_builtin

    if is_builtin(name):
        return "sd1" if name == "tiny-sd15" else "sdxl"
    from lib_lora.standalone.checkpoint import inspect_checkpoint

    return inspect_checkpoint(name).family


def _list_settings() -> None:
    from dataclasses import fields

    from lib_lora.config import TrainConfig

    for f in fields(TrainConfig):
        print(f"{f.name} = {f.default!r}\n    {f.metadata['help']}")


def _existing_hint(cfg, args: argparse.Namespace) -> str:
    from pathlib import Path

    state = Path(cfg.output_dir) / f"{cfg.output_name}-state"
    resume = f"--resume {shell_arg(state)} to continue it, " if state.is_dir() else ""
    return f"Add {resume}--overwrite to replace it, or --output_name NEW."


def run(args: argparse.Namespace) -> int:
    if args.list_settings:
        _list_settings()
        return 0
    from lib_lora.common.errors import UserError
    from lib_lora.engine.distributed import from_env

    launch = from_env()
    if launch is None or launch.rank == 0:
        return _run(args)
    training: list[bool] = []
    try:
        return _run(args, training)
    except UserError:
        if training:  # this process's own failure: say it
            raise
        return 2  # settings, data or resume errors are the same on every process: rank 0 says them


def _run(args: argparse.Namespace, training: list[bool] | None = None) -> int:
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from lib_lora.common.errors import UserError
    from lib_lora.config import build_config, load_toml, native_resolution
    from lib_lora.engine.distributed import DataParallel, device_for, ignore_sigterm, is_peer_failure, stop_on_sigterm
    from lib_lora.engine.distributed import from_env as launch_env
    from lib_lora.events import Events, StopToken
    from lib_lora.jobs.train import check_output
    from lib_lora.standalone.models import is_builtin

    config_file, extra = _config_file(args._extra)
    values = load_toml(config_file) if config_file else {}
    values.update(_overrides(extra))
    if args.resume:
        from lib_lora.jobs.train import find_state

        find_state(args.resume)  # a wrong folder is named now, not after the model has loaded
        if not str(values.get("train_data_dir") or "").strip():
            raise UserError(
                "--resume continues a stopped run with the settings it was started with: give the same TOML file "
                "or --KEY VALUE settings as the first run too, e.g. python -m lib_lora train run.toml --resume "
                f"{shell_arg(args.resume)}"
            )
    draft = build_config(values, preset=args.preset, check=False)
    family = _peek_family(draft.pretrained_model_name_or_path, draft.model_family)
    native = native_resolution(family, demo=is_builtin(draft.pretrained_model_name_or_path))
    cfg = build_config(values, preset=args.preset, family=family, native=native)
    launch = launch_env()
    if launch:
        device = device_for(launch, args.device)
    else:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    existing = check_output(cfg, args.resume, args.overwrite, hint=_existing_hint(cfg, args))
    if existing is not None and (launch is None or launch.rank == 0):
        print(f"--overwrite: the earlier {cfg.output_name} run will be moved to {cfg.output_dir}/.trash/")

    class CliEvents(Events):
        bar: tqdm | None = None

        def message(self, level: str, text: str) -> None:
            prefix = {"warning": "warning: ", "error": "error: "}.get(level, "")
            (self.bar.write if self.bar else print)(prefix + text)

        def step(self, info) -> None:
            if self.bar is None:
                self.bar = tqdm(total=info.total_steps, initial=info.step - 1, unit="step", dynamic_ncols=True)
            self.bar.update(info.step - self.bar.n)
            self.bar.set_postfix(
                epoch=info.epoch, loss=f"{info.avg_loss:.4f}", lr=f"{max(info.lrs.values(), default=0):.2e}"
            )

        def validation(self, epoch: int, step: int, loss: float) -> None:
            self.message("info", f"validation loss {loss:.4f} (epoch {epoch}, step {step})")

        def progress(self, stage: str, done: int, total: int, text: str = "") -> None:
            if total and (done == total or done % max(1, total // 10) == 0):
                print(f"{stage}: {done}/{total} {text}".rstrip())

    class QuietEvents(Events):
        """Processes other than rank 0 of a torchrun run: rank 0 speaks for the run."""

    events = CliEvents() if launch is None or launch.rank == 0 else QuietEvents()
    stop = StopToken()

    def on_sigint(signum, frame) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.request("Ctrl-C")
        events.message("info", "Stopping after this step (Ctrl-C again to abort without saving)...")

    parallel = DataParallel.start(launch, device) if launch else None
    if parallel:
        stop_on_sigterm()
    try:
        return _train(args, cfg, device, events, stop, on_sigint, parallel, training)
    except Exception as exc:
        if parallel is None or not is_peer_failure(exc):
            raise
        ignore_sigterm()
        if parallel.rank != 0:
            return 1  # rank 0 says it, once
        raise UserError(
            "Another process of this run stopped unexpectedly (killed, out of memory, or its own error above), so "
            "every process stopped; resume from the last saved state with the same command and --resume "
            f"{shell_arg(Path(cfg.output_dir) / (cfg.output_name + '-state'))} (saved with each epoch file)."
        ) from None
    finally:
        if parallel:
            parallel.close()


def _train(args, cfg, device, events, stop, on_sigint, parallel, training) -> int:
    import signal

    from lib_lora.jobs.train import prepare, train
    from lib_lora.standalone.models import load_model, training_dtype
    from lib_lora.standalone.sampler import training_renderer

    bundle = load_model(
        cfg.pretrained_model_name_or_path, device=device, dtype=training_dtype(cfg.mixed_precision, device),
        family=cfg.model_family, v_prediction=cfg.v_parameterization, clip_skip=cfg.clip_skip,
        max_token_length=cfg.max_token_length or 75,
    )  # fmt: skip
    plan = prepare(cfg, bundle, events, stop, args.resume, parallel.world_size if parallel else 1)
    previous = signal.signal(signal.SIGINT, on_sigint)
    if training is not None:
        training.append(True)
    try:
        renderer = training_renderer(bundle, cfg)
        result = train(
            cfg,
            bundle,
            events,
            stop,
            resume=args.resume,
            overwrite=args.overwrite,
            renderer=renderer,
            plan=plan,
            parallel=parallel,
        )
        if cfg.score_epochs and (parallel is None or parallel.rank == 0):
            _score(cfg, bundle, result, events, stop)
    finally:
        signal.signal(signal.SIGINT, previous)
        if getattr(events, "bar", None):
            events.bar.close()
    if parallel and parallel.rank != 0:
        return 0
    for saved in result.files:
        print(f"{saved.kind:>7}: {saved.path}")
    if result.status == "stopped":
        print(
            f"stopped at step {result.steps}; resume with the same command and --resume {shell_arg(result.state_dir)}"
        )
    print(f"log: {result.log_path}")
    if result.scoring is not None and result.scoring.report is not None:  # a skipped scoring was said above
        from lib_lora.cli.score import print_report

        print_report(result.scoring.report)
        print(f"recommendation written into {result.scoring.final}'s metadata")
    return 0


def _score(cfg, bundle, result, events, stop) -> None:
    """``--score_epochs``: the run's epochs scored on the standalone sampler (as the ``score`` verb
    does with its defaults); Ctrl-C stops the scoring and keeps every file."""
    import signal

    from lib_lora.cli.score import sampler_renderer
    from lib_lora.jobs.scoring import score_finished_run

    if getattr(events, "bar", None):
        events.bar.close()
        events.bar = None

    def on_sigint(signum, frame) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.request("Ctrl-C")
        events.message("info", "Stopping the scoring after this image; every trained file is kept...")

    signal.signal(signal.SIGINT, on_sigint)
    render = sampler_renderer(bundle, cfg.pretrained_model_name_or_path)
    result.scoring = score_finished_run(cfg, result, render, None, events, stop)
