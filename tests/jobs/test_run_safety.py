"""No lost or overwritten work: one run per (output folder, name), an existing run never overwritten
without a choice, a state swap recoverable at every instant, a state at every epoch end, the output
folder checked before any work, a full disk reported in one sentence with the earlier files intact,
and states that need no pickle."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib_lora.common import fsutil
from lib_lora.common.errors import UserError
from lib_lora.engine.loop import Position
from lib_lora.events import Events, RecordingEvents
from lib_lora.formats import safetensors_io
from lib_lora.formats.metadata import sshs_model_hash_of_file
from lib_lora.jobs import train as train_job
from lib_lora.jobs.train import (
    RunExists,
    build_network,
    build_optimizer,
    check_output,
    existing_run,
    find_state,
    lock_path,
    move_run_to_trash,
    run_guard,
    settle_states,
    train,
)
from support.train_data import make_dataset, small_run_config

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path: Path, **values):
    return small_run_config(tmp_path, **{"max_train_epochs": 3, **values})


def _data(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", {"1_alpha": [(64, 64), (64, 64)]})  # one step per epoch


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class _Hook(RecordingEvents):
    def __init__(self, at_step: int, action) -> None:
        super().__init__()
        self.at_step, self.action = at_step, action

    def step(self, info) -> None:
        super().step(info)
        if info.step == self.at_step:
            self.action()


# -- 1. a second Start with the same name -------------------------------------------------------------


def test_a_second_start_with_the_same_name_is_refused_and_the_lock_is_held_during_the_run(
    tmp_path: Path, bundle
) -> None:
    _data(tmp_path)
    cfg = _cfg(tmp_path, max_train_epochs=2)
    refusals: list[str] = []

    def second_start_while_running() -> None:  # item 2: the (folder, name) lock is held for the run
        with pytest.raises(UserError) as info:
            check_output(cfg)
        refusals.append(str(info.value))

    assert train(cfg, bundle, _Hook(1, second_start_while_running)).status == "done"
    assert len(refusals) == 1 and "is already writing t in" in refusals[0] and f"process {os.getpid()}" in refusals[0]
    out = tmp_path / "out"
    before = _snapshot(out)
    with pytest.raises(RunExists) as info:
        train(cfg, bundle, RecordingEvents())
    message = str(info.value)
    assert message.startswith(f"A run named t already exists in {out} (2 LoRA files)") and "t-2" in message
    assert "\n" not in message
    assert _snapshot(out) == before  # nothing written, nothing touched
    assert not lock_path(cfg).exists()  # the lock goes with the run


def _fake_run(out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for file_name in (f"{name}.safetensors", f"{name}-000001.safetensors", f"{name}-step00000005.safetensors",
                      f"{name}.json", f"{name}-000001.json", f"{name}.preview.png", f"{name}-log.jsonl"):  # fmt: skip
        (out / file_name).write_bytes(file_name.encode())
    (out / f"{name}-state").mkdir()
    (out / f"{name}-state" / "state.json").write_text("{}")
    (out / f"{name}-samples").mkdir()
    (out / f"{name}-samples" / "s.png").write_bytes(b"png")


def test_overwrite_moves_only_the_runs_own_files_to_a_trash_the_lora_list_ignores(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _fake_run(out, "t")
    others = ["t-v2.safetensors", "tt.safetensors", "t-2.safetensors", "t-0001.safetensors", "my t.safetensors",
              "t-000001-x.safetensors", "t-2.json"]  # fmt: skip
    for name in others:
        (out / name).write_bytes(b"other lora")
    run = existing_run(out, "t")
    assert run is not None and run.suggestion == "t-3"  # t-2 is taken by another LoRA
    trash = move_run_to_trash(run)
    assert sorted(p.name for p in out.iterdir()) == sorted([*others, ".trash"])
    moved = sorted(p.name for p in trash.iterdir())
    assert moved == sorted([
        "t.safetensors.old", "t-000001.safetensors.old", "t-step00000005.safetensors.old", "t.json", "t-000001.json",
        "t.preview.png", "t-log.jsonl", "t-state", "t-samples",
    ])  # fmt: skip
    assert (trash / "t.safetensors.old").read_bytes() == b"t.safetensors"  # moved, not deleted
    # the webui lists .safetensors/.pt/.ckpt recursively, hidden folders included: none is left to list
    assert [p for p in (out / ".trash").rglob("*") if p.suffix in (".safetensors", ".pt", ".ckpt")] == []
    assert existing_run(out, "t") is None


def test_overwrite_through_train_then_runs_under_the_name(tmp_path: Path) -> None:
    """``overwrite`` is decided under the run's lock: the old files go before anything is written."""
    _fake_run(tmp_path / "out", "t")
    cfg = _cfg(tmp_path)
    with pytest.raises(RunExists), run_guard(cfg, None, False, Events()):
        pass
    events = RecordingEvents()
    with run_guard(cfg, None, True, events) as state:
        assert state is None and existing_run(tmp_path / "out", "t") is None
    assert any("moved to" in t and ".trash" in t for t in events.texts("info"))


# -- 2. two processes, one name -------------------------------------------------------------------------

HOLDER = """
import sys, time
from lib_lora.common.fsutil import FileLock
lock = FileLock(sys.argv[1])
assert lock.acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_process_on_the_same_name_is_refused_until_the_first_ends_even_killed(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    (tmp_path / "out").mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_path(cfg))], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError) as info, run_guard(cfg, None, False, Events()):
            pass
        assert str(info.value) == (
            f"Another training (process {holder.pid}) is already writing t in {tmp_path / 'out'}; wait for it to "
            "finish or choose another name."
        )
        with pytest.raises(UserError, match="already writing t"):
            check_output(cfg)
        holder.kill()  # a killed process releases its lock
        holder.wait(10)
        with run_guard(cfg, None, False, Events()):
            assert check_output(cfg.replace(output_name="other")) is None  # other names are free meanwhile
    finally:
        holder.kill()
        holder.wait(10)


# -- 6. the state: a kill at any instant of the swap, a state at every epoch end, orphans ---------------


def _state_writer(tmp_path: Path, bundle):
    cfg = _cfg(tmp_path)
    network = build_network(cfg, bundle)
    built, scheduler = build_optimizer(cfg, network.param_groups(None, None, 1e-3), 10)
    state_dir = tmp_path / "out" / "t-state"

    def write(step: int) -> None:
        with torch.no_grad():
            for p in network.parameters():
                p.fill_(float(step))
        train_job._write_state(state_dir, network, built, scheduler, Position(0, step, step), 7, cfg,
                               {"id": 1, "started": 0.0})  # fmt: skip

    return cfg, state_dir, write


def _step_of(folder: Path) -> int:
    return json.loads((folder / "state.json").read_text())["position"]["step"]


def test_a_kill_at_any_instant_of_the_state_swap_leaves_the_newest_complete_state(tmp_path: Path, bundle) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("the kill is simulated with fork (POSIX)")
    cfg, state_dir, write = _state_writer(tmp_path, bundle)
    state_dir.parent.mkdir(parents=True)
    write(1)
    # the steps of one swap: every rename and every folder removal (each also cut half-way)
    calls: list[str] = []
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def spy_replace(src, dst):
        calls.append(f"replace {Path(src).name} -> {Path(dst).name}")
        return real_replace(src, dst)

    def spy_rmtree(path, *args, **kwargs):
        calls.append(f"rmtree {Path(path).name}")
        return real_rmtree(path, *args, **kwargs)

    saved = (os.replace, shutil.rmtree)
    os.replace, shutil.rmtree = spy_replace, spy_rmtree
    try:
        write(2)
    finally:
        os.replace, shutil.rmtree = saved
    assert any("t-state -> t-state.old" in c for c in calls) and any("t-state.new -> t-state" in c for c in calls)
    complete_at = next(i for i, c in enumerate(calls) if c.endswith("-> state.json"))
    points = [(i, half) for i in range(len(calls) + 1) for half in (False, True)]
    for at, half in points:
        shutil.rmtree(state_dir.parent)
        state_dir.parent.mkdir()
        write(1)
        pid = os.fork()
        if pid == 0:  # the child dies (no cleanup, no finally) at this instant of the next swap
            try:
                count = [0]

                def cut(kind, real, at=at, half=half, count=count):
                    def wrapper(*args, **kwargs):
                        if count[0] == at:
                            if half and kind == "rmtree" and Path(args[0]).is_dir():
                                files = sorted(p for p in Path(args[0]).iterdir() if p.is_file())
                                if files:
                                    files[-1].unlink()
                            os._exit(9)
                        count[0] += 1
                        return real(*args, **kwargs)

                    return wrapper

                os.replace, shutil.rmtree = cut("replace", real_replace), cut("rmtree", real_rmtree)
                write(2)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        found = find_state(state_dir)
        expected = 2 if at > complete_at else 1
        assert _step_of(found) == expected, (at, half, calls[at] if at < len(calls) else "end")
        # the next run (holding the lock) settles it: one folder, the newest state, resumable
        with run_guard(cfg, state_dir, False, Events()) as resumed:
            assert resumed == state_dir
        assert sorted(p.name for p in state_dir.parent.iterdir()) == ["t-state"], (at, half)
        assert _step_of(state_dir) == expected
        tensors, _ = safetensors_io.load(state_dir / train_job.STATE_NETWORK)
        assert all(float(t.flatten()[0]) == expected for k, t in tensors.items() if "lora_up" in k)
        assert train_job._read_state(state_dir, cfg)["position"]["step"] == expected


def test_orphan_temp_files_and_partial_states_are_cleaned_by_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    ours = [".tmp-t-000002.safetensors.k2j3h4", ".tmp-t.json.aa11", ".tmp-t-log.jsonl.x"]
    theirs = [".tmp-other-000001.safetensors.zz", ".tmp-t-v2.safetensors.q1"]
    for name in ours + theirs:
        (out / name).write_bytes(b"half")
    (out / "t-state.new").mkdir()  # a swap killed while writing: no state.json
    (out / "t-state.new" / "network.weights").write_bytes(b"half")
    cfg = _cfg(tmp_path)
    with run_guard(cfg, None, False, Events()):
        pass
    assert sorted(p.name for p in out.iterdir()) == sorted(theirs + ["t-state.new"])
    settle_states(out / "t-state")
    assert sorted(p.name for p in out.iterdir()) == sorted(theirs)


def test_a_run_that_dies_mid_epoch_resumes_from_the_last_epoch_end(tmp_path: Path, bundle) -> None:
    """No epoch files asked for (save_every_n_epochs off): a state is still written at every epoch end."""
    _data(tmp_path)
    cfg = _cfg(tmp_path, save_every_n_epochs=None, max_train_epochs=3, save_precision="float")

    def die() -> None:
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, bundle, _Hook(2, die))  # epoch 2's step: epoch 1 ended before it
    state = tmp_path / "out" / "t-state"
    assert _step_of(find_state(state)) == 1
    assert sorted(p.name for p in state.iterdir()) == ["network.weights", "optimizer.weights", "state.json"]
    resumed = train(cfg, bundle, RecordingEvents(), resume=state)
    assert resumed.status == "done" and resumed.steps == 3


# -- 7. the output folder: writable, room enough, a full disk at any save ---------------------------------


def test_a_read_only_output_folder_is_refused_before_the_model_loads(tmp_path: Path, monkeypatch, capsys) -> None:
    from lib_lora.cli import main
    from lib_lora.standalone import models

    _data(tmp_path)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", read_only)
    monkeypatch.setattr(models, "load_model", no_model)
    argv = ["train", "--train_data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"),
            "--output_name", "t", "--resolution", "64", "--pretrained_model_name_or_path", "tiny-sd15"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: Cannot write {tmp_path / 'out'}: permission denied (a read-only file or folder, or the "
                   "file is open in another program)."]  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_too_little_free_space_is_refused_before_caching(tmp_path: Path, bundle, monkeypatch) -> None:
    _data(tmp_path)
    monkeypatch.setattr(train_job, "free_bytes", lambda folder: 300_000)
    events = RecordingEvents()
    with pytest.raises(UserError) as info:
        train(_cfg(tmp_path), bundle, events)
    message = str(info.value)
    assert message.startswith(f"The output folder {tmp_path / 'out'} has 293.0 KB free, but this run writes about")
    assert message.endswith("free some space or choose another folder.")
    assert not any("latents" in t for t in events.texts("info"))  # refused before the caching
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("target", ["t-000002.safetensors", "t-000002.json", "optimizer.weights", "state.json"])
def test_a_full_disk_at_any_save_is_one_sentence_and_keeps_the_earlier_files_and_state(
    tmp_path: Path, bundle, monkeypatch, target: str
) -> None:
    _data(tmp_path)
    out = tmp_path / "out"
    real_mkstemp = fsutil.tempfile.mkstemp
    seen: dict[str, int] = {}
    earlier: dict[str, bytes] = {}

    def disk_full_at_epoch_2(*args, prefix="", dir=None, **kwargs):
        name = prefix[len(".tmp-") :].rsplit(".", 1)[0]
        seen[name] = seen.get(name, 0) + 1
        # epoch 2's save (its file, its json, or its state: the second state write of the run)
        if name == target and (target.startswith("t-") or seen[name] == 2):
            earlier.update(_snapshot(out))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkstemp(*args, prefix=prefix, dir=dir, **kwargs)

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", disk_full_at_epoch_2)
    with pytest.raises(UserError) as info:
        train(_cfg(tmp_path, max_train_epochs=4), bundle, RecordingEvents())
    message = str(info.value)
    assert message.startswith("Cannot write ") and ": the disk is full. Training stopped;" in message, message
    assert "\n" not in message and "inline_container" not in message
    monkeypatch.undo()
    assert earlier, "the save never happened"
    for name, data in earlier.items():  # every file saved before the full disk is there, unchanged
        if name.startswith("t-state") or name in ("t-log.jsonl", ".t.lock"):
            continue
        assert (out / name).read_bytes() == data, name
    assert safetensors_io.load(out / "t-000001.safetensors")[1]["sshs_model_hash"] == sshs_model_hash_of_file(
        out / "t-000001.safetensors"
    )
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]
    state = find_state(out / "t-state")  # the last good state resumes
    assert _step_of(state) in (1, 2)
    assert train_job._read_state(state, _cfg(tmp_path, max_train_epochs=4))["seed"] == 7


# -- 11. old pickled states are never loaded ------------------------------------------------------------


class _Trap:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "the pickle ran"))


def test_an_old_pickled_state_is_refused_in_one_sentence_and_never_unpickled(tmp_path: Path, bundle) -> None:
    _data(tmp_path)
    cfg = _cfg(tmp_path)
    state = tmp_path / "out" / "t-state"
    state.mkdir(parents=True)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.as_dict().items()}
    (state / "state.json").write_text(json.dumps({"version": 1, "position": {"epoch": 1, "batch": 0, "step": 1},
                                                  "seed": 7, "session": {}, "config": config}))  # fmt: skip
    (state / "network.weights").write_bytes(b"")
    marker = tmp_path / "pwned.txt"
    with open(state / "optimizer.bin", "wb") as handle:
        pickle.dump({"optimizer": _Trap(marker)}, handle)
    with pytest.raises(UserError) as info:
        train(cfg, bundle, RecordingEvents(), resume=state)
    assert str(info.value) == (
        f"{state} was written by an older version of Train LoRA and cannot be resumed (its format needs pickle, "
        "which is never loaded); start a new run, or continue from the last epoch file with network_weights."
    )
    assert not marker.exists()


def test_a_state_with_a_damaged_optimizer_structure_is_one_sentence(tmp_path: Path, bundle) -> None:
    cfg, state_dir, write = _state_writer(tmp_path, bundle)
    state_dir.parent.mkdir(parents=True)
    write(1)
    data = json.loads((state_dir / "state.json").read_text())
    data["optimizer"] = {"optimizer": {"__object__": "os.system"}, "scheduler": {}}
    (state_dir / "state.json").write_text(json.dumps(data))
    network = build_network(cfg, bundle)
    built, scheduler = build_optimizer(cfg, network.param_groups(None, None, 1e-3), 10)
    with pytest.raises(UserError, match="is damaged"):
        train_job._load_optimizer(state_dir, data, built, scheduler)
