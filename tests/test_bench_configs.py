"""The benchmark's architectures build (a broken default would only show when someone runs it)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _train_step_module():
    spec = importlib.util.spec_from_file_location("bench_train_step", ROOT / "bench" / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("arch", ["tiny-sd15", "tiny-sdxl", "small-sd15"])
def test_train_step_bench_architectures_build(arch: str) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    config = _train_step_module().unet_config(arch)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    assert sum(1 for _ in unet.modules()) > 10
