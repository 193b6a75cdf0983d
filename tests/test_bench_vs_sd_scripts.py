"""bench/vs_sd_scripts.py reads each tool's training progress and memory the same way (a wrong reading
would only show as a wrong ratio when someone runs the comparison on a GPU)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_vs_sd_scripts", ROOT / "bench" / "vs_sd_scripts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# as the two tools print them through tqdm (sd-scripts: desc "steps"; ours: unit "step")
SD_SCRIPTS_STEP = "steps:  50%|█████     | 3/6 [01:02<01:02, 20.81s/it, avr_loss=0.0912]"
OURS_STEP = " 50%|█████     | 3/6 [01:02<01:02, 20.81s/step, epoch=1, loss=0.0912, lr=1.00e-04]"
OURS_FAST_STEP = " 50%|█████     | 30/60 [00:05<00:05,  5.81step/s, epoch=1, loss=0.0912, lr=1.00e-04]"
CACHING = "100%|██████████| 4/4 [00:20<00:00,  5.00s/it]"  # sd-scripts' latent caching bar


def test_each_tool_s_training_bar_is_read_and_no_other_bar(bench) -> None:
    theirs, ours = bench.PROGRESS[bench.SD_SCRIPTS], bench.PROGRESS[bench.OURS]
    assert theirs.search(SD_SCRIPTS_STEP).groups() == ("3", "6")
    assert ours.search(OURS_STEP).groups() == ("3", "6")
    assert ours.search(OURS_FAST_STEP).groups() == ("30", "60")
    for pattern in (theirs, ours):
        assert pattern.search(CACHING) is None
    assert theirs.search(OURS_STEP) is None and ours.search(SD_SCRIPTS_STEP) is None


def test_steady_state_leaves_the_warm_up_steps_out(bench) -> None:
    # steps 1-3 slow (warm-up), then 2 s a step; CPU time grows 3 s a step
    steps = [(10.0, 1, 6, 5.0), (30.0, 2, 6, 20.0), (40.0, 3, 6, 30.0), (42.0, 4, 6, 33.0), (44.0, 5, 6, 36.0)]
    steps.append((46.0, 6, 6, 39.0))
    gib = bench.GIB
    run = {
        "tool": "ours",
        "wall_s": 50.0,
        "steps": steps,
        "memory": {"mark": {"rss": 3 * gib, "hwm": 5 * gib}, "end": {"rss": 3 * gib, "hwm": 4 * gib}},
        "sampled_tree_rss": {"run": 5 * gib, "train": 4 * gib},
    }
    figures = bench.figures(run, warmup=3, cuda=False)
    assert figures["s_per_it"] == pytest.approx(2.0)
    assert figures["cpu_s_per_it"] == pytest.approx(3.0)
    assert figures["timed_steps"] == 3
    assert figures["peak"] == 4 * gib and figures["over_base"] == 1 * gib
    assert figures["whole_run_peak"] == 5 * gib  # model loading's peak is reported apart


def test_too_few_updates_is_said_not_divided_by_zero(bench) -> None:
    run = {"tool": "sd-scripts", "wall_s": 1.0, "steps": [(1.0, 1, 6, 1.0)], "memory": {}, "sampled_tree_rss": {}}
    with pytest.raises(SystemExit, match="too few progress updates"):
        bench.figures(run, warmup=3, cuda=False)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS reset needs Linux /proc")
def test_launcher_marks_memory_after_step_one_and_measures_the_later_peak(bench, tmp_path: Path) -> None:
    # a stand-in tool: prints its bar like sd-scripts, holds 300 MiB more during steps 2..3 than at step 1
    tool = tmp_path / "tool.py"
    tool.write_text(
        textwrap.dedent(
            """
            import sys, time
            def bar(n):
                sys.stderr.write(f"\\rsteps:  {n * 33}%|###       | {n}/3 [00:01<00:02,  1.00s/it, avr_loss=0.1]")
                sys.stderr.flush()
            sys.stderr.write("steps:   0%|          | 0/3 [00:00<?, ?it/s]")
            bar(1)
            time.sleep(1.5)  # the mark arrives here
            held = bytearray(300 * 1024 * 1024)
            held[:: 4096] = b"x" * len(held[:: 4096])  # touched: resident
            bar(2)
            del held
            bar(3)
            print("done")
            """
        )
    )
    run = bench.run_tool(bench.SD_SCRIPTS, sys.executable, [str(tool)], tmp_path, tmp_path, env=None)
    assert [step for _, step, _, _ in run["steps"]] == [1, 2, 3]
    figures = bench.figures(run, warmup=1, cuda=False)
    assert figures["over_base"] >= 290 * 1024 * 1024
    assert figures["over_base"] < 600 * 1024 * 1024
    assert "done" in (tmp_path / "sd-scripts.log").read_text()


def test_both_tools_get_the_same_settings(bench, tmp_path: Path) -> None:
    import argparse

    args = argparse.Namespace(
        sd_scripts=str(tmp_path), sdxl=False, resolution=512, batch=1, dim=32, alpha=16.0, lr=1e-4,
        device="cpu", warmup=3, steps=3, cache_te=False,
    )  # fmt: skip
    theirs = bench.sd_scripts_command(args, Path("m.safetensors"), Path("data"), Path("tok"), Path("out"))
    ours = bench.ours_command(args, Path("m.safetensors"), Path("data"), Path("out"))
    theirs_values = {
        token: theirs[i + 1]
        for i, token in enumerate(theirs[:-1])
        if token.startswith("--") and not theirs[i + 1].startswith("--")
    }
    ours_values = dict(part[2:].split("=", 1) for part in ours if part.startswith("--") and "=" in part)
    for key in ("network_dim", "network_alpha", "resolution", "train_batch_size", "max_train_steps", "learning_rate"):
        assert float(theirs_values[f"--{key}"]) == float(ours_values[key]), key
    for flag in ("--gradient_checkpointing", "--cache_latents", "--sdpa", "--network_train_unet_only"):
        assert flag in theirs and ours_values[flag[2:]] == "true", flag
    assert theirs_values["--mixed_precision"] == ours_values["mixed_precision"] == "no"
    assert theirs[0].endswith("train_network.py") and "sdxl" not in theirs[0]


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd15", "sdxl"])
def test_the_built_checkpoint_loads_in_our_loader_with_every_key_matched(bench, sdxl: bool) -> None:
    # on the meta device: names, shapes and layout of the full-size file, no memory
    import torch

    from lib_lora.standalone.checkpoint import DictSource, build_components, component_configs, inspect_source

    layout = bench.checkpoint_layout(sdxl)
    family = "sdxl" if sdxl else "sd1"
    assert inspect_source(DictSource(layout), "bench.safetensors").family == family
    unet, vae, encoders = build_components(
        DictSource(layout), family, device=torch.device("meta"), dtype=torch.float16, configs=component_configs(family)
    )
    assert sorted(encoders) == (["te1", "te2"] if sdxl else ["te"])
    billions = sum(p.numel() for p in unet.parameters()) / 1e9
    assert billions == pytest.approx(2.57 if sdxl else 0.86, abs=0.01)  # full size, not a demo model
