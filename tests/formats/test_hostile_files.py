"""Hostile or malformed files give one sentence, never a traceback: safetensors headers our reader of
LoRA files parses (``inspect``, ``network_weights``, resume) and the training state's tensor+JSON codec."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch

from lib_lora.cli import main
from lib_lora.common.errors import UserError
from lib_lora.formats import safetensors_io

ROOT = Path(__file__).resolve().parents[2]


def _file(path: Path, header: dict | str, data: bytes = b"") -> Path:
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


TENSOR = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
HOSTILE = {
    "list metadata": ({"__metadata__": ["a", "b"], "x.lora_down.weight": TENSOR}, "metadata"),
    "string metadata": ({"__metadata__": "ss_network_dim=4", "x.lora_down.weight": TENSOR}, "metadata"),
    "number in metadata": ({"__metadata__": {"ss_network_dim": 4}, "x.lora_down.weight": TENSOR}, "metadata"),
    "text offsets": ({"x.lora_down.weight": {**TENSOR, "data_offsets": ["0", "8"]}}, "offsets"),
    "fractional offsets": ({"x.lora_down.weight": {**TENSOR, "data_offsets": [0.5, 8.5]}}, "offsets"),
    "one offset": ({"x.lora_down.weight": {**TENSOR, "data_offsets": [8]}}, "offsets"),
    "reversed offsets": ({"x.lora_down.weight": {**TENSOR, "data_offsets": [8, 0]}}, "reversed"),
    "list dtype": ({"x.lora_down.weight": {**TENSOR, "dtype": ["F32"]}}, "dtype"),
    "text shape": ({"x.lora_down.weight": {**TENSOR, "shape": "2"}}, "shape"),
    "entry is a number": ({"x.lora_down.weight": 5}, "entry"),
    "deeply nested": ('{"__metadata__": {}, "x": ' + "[" * 200_000 + "]" * 200_000 + "}", "nested too deeply"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_header_is_one_sentence_for_every_reader(tmp_path: Path, case: str, capsys) -> None:
    header, words = HOSTILE[case]
    path = _file(tmp_path / "bad.safetensors", header, b"\0" * 8)
    with pytest.raises(UserError, match=re.escape(words)) as info:
        safetensors_io.load(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert main(["inspect", str(path)]) == 2  # the CLI prints it as one line, no traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err


def test_a_hostile_network_weights_file_is_refused_before_training(tmp_path: Path) -> None:
    from lib_lora.jobs.lora_files import read_lora_file

    path = _file(tmp_path / "start.safetensors", HOSTILE["text offsets"][0], b"\0" * 8)
    with pytest.raises(UserError, match="offsets"):
        read_lora_file(path)


def test_tensors_and_json_round_trip_an_optimizer_state_without_pickle(tmp_path: Path) -> None:
    param = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([param], lr=1e-3, betas=(0.9, 0.99))
    param.grad = torch.randn(3, 2)
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "dtype": torch.bfloat16}
    structure, tensors = safetensors_io.pack_tree(state)
    text = json.dumps(structure)
    safetensors_io.save_tensors(tmp_path / "opt.weights", tensors)
    loaded, _ = safetensors_io.load(tmp_path / "opt.weights")
    back = safetensors_io.unpack_tree(json.loads(text), loaded)
    assert back["dtype"] is torch.bfloat16
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)  # tuples stay tuples
    saved = back["optimizer"]["state"][0]  # integer keys stay integers
    for key, value in opt.state_dict()["state"][0].items():
        assert torch.equal(saved[key], value)
    fresh = torch.optim.AdamW([torch.nn.Parameter(param.detach().clone())], lr=1e-3)
    fresh.load_state_dict(back["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert not (tmp_path / "opt.weights").read_bytes().startswith((b"\x80", b"PK"))  # neither pickle nor torch zip


@pytest.mark.parametrize(
    "structure, words",
    [
        ({"__tensor__": "t9"}, "missing"),
        ({"__object__": "os.system"}, "unknown entry"),
        ({"__dtype__": "Tensor"}, "dtype"),
        ({"__dict__": [[[1], 2]]}, "mapping key"),
        ({"__dict__": [1, 2]}, "bad mapping"),
    ],
)
def test_a_damaged_state_structure_is_one_sentence(structure: object, words: str) -> None:
    with pytest.raises(UserError, match=words):
        safetensors_io.unpack_tree(structure, {}, "The training state x")


def test_a_deeply_nested_state_structure_is_one_sentence() -> None:
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(UserError, match="nested too deeply"):
        safetensors_io.unpack_tree(deep, {}, "The training state x")


def test_no_pickle_is_ever_loaded_by_lib_lora() -> None:
    """The README's promise, literally: no torch.load, pickle or weights_only anywhere in the package."""
    banned = re.compile(r"torch\.load\(|\bpickle\.(?:load|loads|Unpickler)\b|^\s*import pickle|weights_only", re.M)
    hits = [
        f"{path.relative_to(ROOT)}: {m.group(0)}"
        for path in sorted((ROOT / "lib_lora").rglob("*.py"))
        for m in banned.finditer(path.read_text(encoding="utf-8"))
    ]
    assert hits == []
