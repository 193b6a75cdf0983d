"""bench/cleanup.py's big-lama stand-in builds, has Carve's contract and big-lama's size."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def test_standin_has_lama_contract_and_size(tmp_path: Path) -> None:
    import onnx

    from lib_lora.cleanup.lama import IMAGE_MASK, Lama

    spec = importlib.util.spec_from_file_location("bench_cleanup", ROOT / "bench" / "cleanup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_big_lama(size=64)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer if len(t.dims) == 4)
    assert 45e6 < params < 56e6, params  # big-lama's generator: ~51M (lama_fp32.onnx is 208 MB)
    onnx.save(model, str(tmp_path / "standin.onnx"))
    lama = Lama(tmp_path / "standin.onnx", device="cpu")
    assert (lama.contract.form, lama.contract.size) == (IMAGE_MASK, (64, 64))
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    hole = np.zeros((64, 64), dtype=bool)
    hole[20:40, 20:40] = True
    out = lama.run(rgb, hole)  # 0..255 output read as such: the known pixels come back as they were
    assert out.shape == (64, 64, 3) and np.abs(out[~hole].astype(int) - rgb[~hole]).max() <= 1
