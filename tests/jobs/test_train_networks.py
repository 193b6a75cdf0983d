"""Stop and resume for the LyCORIS types: a LoKr + DoRA and a LoHa run stopped mid-way and resumed
write the same final file as an uninterrupted run; a resume with another network type is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib_lora.common.errors import UserError
from lib_lora.events import RecordingEvents, StopToken
from lib_lora.formats import safetensors_io
from lib_lora.jobs.train import train
from support.train_data import StopAtStep, small_dataset, small_run_config

TYPES = {
    "lokr-dora": {"algo": "lokr", "factor": 4, "dora_wd": True},
    "loha-tucker": {"algo": "loha", "conv_dim": 2, "use_tucker": True},
}


def _cfg(tmp_path: Path, out: str, **values):
    return small_run_config(tmp_path, out, **{"save_every_n_epochs": None, "save_precision": "float", **values})


@pytest.mark.parametrize("kind", list(TYPES))
def test_resume_equals_an_uninterrupted_run(tmp_path: Path, bundle, kind: str) -> None:
    small_dataset(tmp_path / "data")
    options = TYPES[kind]
    straight = train(_cfg(tmp_path, "a", **options), bundle)
    assert straight.status == "done"

    token = StopToken()
    cfg = _cfg(tmp_path, "b", **options)
    assert train(cfg, bundle, StopAtStep(token, 3), token).status == "stopped"
    state = tmp_path / "b" / "t-state"
    other = "loha" if options["algo"] == "lokr" else "lokr"
    with pytest.raises(UserError, match=r"algo"):
        train(_cfg(tmp_path, "b", **{**options, "algo": other, "factor": -1, "use_tucker": False}), bundle,
              RecordingEvents(), resume=state)  # fmt: skip
    resumed = train(cfg, bundle, RecordingEvents(), resume=state)
    assert resumed.status == "done" and resumed.steps == straight.steps
    a = safetensors_io.load(tmp_path / "a" / "t.safetensors")[0]
    b = safetensors_io.load(tmp_path / "b" / "t.safetensors")[0]
    assert a.keys() == b.keys()
    assert any(name.endswith((".lokr_w1", ".hada_w1_a")) for name in a)
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) <= 1e-6
