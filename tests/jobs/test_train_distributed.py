"""Data-parallel training under torchrun on the CPU (gloo), on the built-in tiny-sd15 at 64 px.

Two processes x batch 1 must train exactly what one process trains with the same two batches per
optimizer step: gradient_accumulation_steps 2, whose step gradient is the mean of the two batch-1
gradients, as the all-reduce averages them. (One process x batch 2 takes the same mean, but draws
the noise of its two samples together from one seed, so its weights can only match statistically;
with accumulation the draws are per batch, seeded by the batch's place in the epoch, on one
process as on two.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lib_lora.cli import main
from lib_lora.config import build_config
from lib_lora.formats import safetensors_io
from lib_lora.jobs.train import train
from support.train_data import make_dataset, small_dataset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("dist_worker.py")
TOLERANCE = 1e-6  # fp32, max absolute difference of any LoRA weight


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path: Path, args: list[str], nproc: int = 2) -> subprocess.Popen:
    (tmp_path / "reports").mkdir(exist_ok=True)
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        OMP_NUM_THREADS="1",
        LIB_LORA_TEST_WATCH=os.pathsep.join([str(tmp_path / "data"), str(tmp_path / "out")]),
        LIB_LORA_TEST_REPORT=str(tmp_path / "reports"),
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), "train", *args]  # fmt: skip
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _settings(tmp_path: Path, **extra) -> dict:
    values = {
        "pretrained_model_name_or_path": "tiny-sd15", "train_data_dir": str(tmp_path / "data"),
        "output_dir": str(tmp_path / "out"), "output_name": "t", "resolution": "64", "train_batch_size": 1,
        "max_train_epochs": 2, "save_every_n_epochs": 1, "seed": 11, "network_dim": 4, "network_alpha": 2,
        "learning_rate": 1e-3, "mixed_precision": "no", "lr_scheduler": "cosine", "lr_warmup_steps": 0,
        "save_precision": "float",
    }  # fmt: skip
    values.update(extra)
    return values


def _args(values: dict) -> list[str]:
    return [token for k, v in values.items() for token in (f"--{k}", str(v))]


def test_two_processes_batch_1_train_what_one_process_trains_and_only_rank_0_writes(tmp_path: Path) -> None:
    small_dataset(tmp_path / "data")  # 5 images, 8 samples with repeats, 4 buckets: 8 batches of 1 per epoch
    run = _torchrun(tmp_path, _args(_settings(tmp_path)))
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output
    assert "effective batch 2 = batch 1 per process x 2 processes x gradient accumulation 1" in output
    assert output.count("saved t.safetensors") == 1  # rank 0 speaks for the run

    # only rank 0 wrote anything (the hook saw rank 0's writes, so it works)
    reports = {p.name: p.read_text().split() for p in (tmp_path / "reports").iterdir()}
    assert set(reports) == {"rank0.txt", "rank1.txt"}
    assert reports["rank1.txt"] == []
    # (atomic writes: a temp file beside the target, then renamed)
    assert any(Path(p).name.startswith(".tmp-t.safetensors") for p in reports["rank0.txt"]), reports["rank0.txt"]

    single = build_config(_settings(tmp_path, output_dir=str(tmp_path / "single"), gradient_accumulation_steps=2))
    from lib_lora.standalone.models import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (OMP_NUM_THREADS=1): the same summation order in every kernel
    try:
        train(single, load_model("tiny-sd15", device="cpu"))
    finally:
        torch.set_num_threads(threads)

    two, two_meta = safetensors_io.load(tmp_path / "out" / "t.safetensors")
    one, one_meta = safetensors_io.load(tmp_path / "single" / "t.safetensors")
    assert set(two) == set(one) and len(two) > 100
    worst = max(float((two[k].float() - one[k].float()).abs().max()) for k in one)
    moved = max(float(one[k].float().abs().max()) for k in one if "lora_up" in k)
    assert worst <= TOLERANCE < moved, (worst, moved)

    # sd-scripts' counts under accelerate: per-process batches, steps, the effective batch
    assert two_meta["ss_batch_size_per_device"] == "1" and two_meta["ss_total_batch_size"] == "2"
    assert two_meta["ss_num_processes"] == "2" and one_meta["ss_num_processes"] == "1"  # the world size
    assert two_meta["ss_gradient_accumulation_steps"] == "1" and one_meta["ss_total_batch_size"] == "2"
    assert two_meta["ss_num_batches_per_epoch"] == "4" and one_meta["ss_num_batches_per_epoch"] == "8"
    assert two_meta["ss_max_train_steps"] == one_meta["ss_max_train_steps"] == two_meta["ss_steps"] == "8"
    two_log = [json.loads(line) for line in (tmp_path / "out" / "t-log.jsonl").read_text().splitlines()]
    one_log = [json.loads(line) for line in (tmp_path / "single" / "t-log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two_log] == list(range(1, 9))  # one log, written once
    assert [r["loss"] for r in two_log] == pytest.approx([r["loss"] for r in one_log], rel=1e-5)
    for two_row, one_row in zip(two_log, one_log, strict=True):  # the LR schedule, stepped twice per step
        assert two_row["lr"] == pytest.approx(one_row["lr"], rel=1e-6)
    assert two_log[-1]["lr"]["unet"] < two_log[0]["lr"]["unet"] / 10  # cosine: it did decay


def _rank_pid(parent: int, rank: int) -> int | None:
    """The torchrun worker with ``RANK=rank`` among the children of ``parent``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker through /proc (Linux)")
def test_a_killed_process_stops_the_run_with_one_message_and_the_run_resumes(tmp_path: Path, capsys) -> None:
    make_dataset(tmp_path / "data", {"1_alpha": [(64, 64)] * 4})  # 2 batches per process per epoch
    values = _settings(tmp_path, max_train_epochs=30, cache_latents_to_disk="true", lr_scheduler="constant")
    run = _torchrun(tmp_path, _args(values))
    state = tmp_path / "out" / "t-state"
    deadline = time.monotonic() + 300
    while not (state / "state.json").is_file():  # the first epoch is saved
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[0]
        time.sleep(0.05)
    victim = _rank_pid(run.pid, 1)
    assert victim is not None
    os.kill(victim, 9)
    killed = time.monotonic()
    output, _ = run.communicate(timeout=120)
    took = time.monotonic() - killed
    assert run.returncode != 0
    assert took < 30, f"the run went on for {took:.1f} s after a process was killed"
    assert output.count("error: Another process of this run stopped unexpectedly") == 1, output
    assert f"--resume {Path('out') / 't-state'}" in output or f"--resume {state}" in output
    assert not (tmp_path / "out" / "t.safetensors").exists()
    assert len(list((tmp_path / "data" / "1_alpha").glob("*.npz"))) == 4  # cached once, by rank 0

    # another number of processes is refused in one sentence
    assert main(["train", *_args(values), "--resume", str(state)]) == 2
    error = capsys.readouterr().err
    assert "Cannot resume: the stopped run used 2 processes and this one 1" in error

    resumed = _torchrun(tmp_path, [*_args(values), "--resume", str(state)])
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert "latents: 0 encoded, 4 reused from disk" in output and "resuming at epoch" in output
    _, meta = safetensors_io.load(tmp_path / "out" / "t.safetensors")
    assert meta["ss_steps"] == "60" and meta["ss_epoch"] == "30"
    assert not state.exists()
    steps = [json.loads(line)["step"] for line in (tmp_path / "out" / "t-log.jsonl").read_text().splitlines()]
    assert steps[-1] == 60 and sorted(set(steps)) == list(range(1, 61))
