"""safetensors files: atomic LoRA saves with kohya's hashes, and loads with clear errors."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from lib_lora.common.errors import UserError
from lib_lora.common.fsutil import atomic_write_bytes
from lib_lora.formats.metadata import sshs_hashes_of_bytes

_MAX_HEADER = 100 * 1024 * 1024
_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}  # fmt: skip


class NonFiniteTensorError(UserError):
    pass


@dataclass(frozen=True)
class SafetensorsHeader:
    metadata: dict[str, str]
    tensors: dict[str, dict]  # name -> {"dtype", "shape", "data_offsets"}
    header_size: int
    file_size: int


def check_finite(tensors: dict[str, torch.Tensor]) -> None:
    """Refuse NaN/inf weights before anything is written (a broken LoRA must never land)."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteTensorError(f"Refusing to save: tensor {name} contains NaN or infinite values.")


def save_lora(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """Write a kohya-style LoRA file atomically; adds ``sshs_model_hash`` / ``sshs_legacy_hash``
    computed exactly as sd-scripts does. Returns (model hash, legacy hash)."""
    from safetensors.torch import save as st_save

    check_finite(tensors)
    bad = [k for k, v in metadata.items() if not isinstance(v, str)]
    if bad:
        raise ValueError(f"metadata values must be strings: {bad[:3]}")
    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    model_hash, legacy_hash = sshs_hashes_of_bytes(st_save(tensors, ss_only))
    full = dict(metadata)
    full["sshs_model_hash"] = model_hash
    full["sshs_legacy_hash"] = legacy_hash
    atomic_write_bytes(path, st_save(tensors, full))
    return model_hash, legacy_hash


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse and validate a safetensors header; UserError for anything that is not a complete file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file.")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a .safetensors file.")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise UserError(f"{path} is not a safetensors file (only {size} bytes).")
        (header_size,) = struct.unpack("<Q", head)
        if header_size > min(_MAX_HEADER, size - 8) or header_size < 2:
            if size > 8 and header_size <= _MAX_HEADER:
                raise UserError(
                    f"{path} is truncated or damaged: its header needs {header_size} bytes, the file has {size - 8}."
                )
            raise UserError(f"{path} is not a safetensors file.")
        raw = handle.read(header_size)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path} is not a safetensors file (its header is not valid JSON).") from None
    if not isinstance(header, dict):
        raise UserError(f"{path} is not a safetensors file.")
    metadata = header.pop("__metadata__", None) or {}
    end = 0
    for name, info in header.items():
        try:
            begin, stop = info["data_offsets"]
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            expected = count * _DTYPE_SIZES.get(info["dtype"], 0)
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path} is not a safetensors file (bad entry for {name}).") from None
        if stop - begin != expected and info["dtype"] in _DTYPE_SIZES:
            raise UserError(f"{path} is damaged: tensor {name} has the wrong size.")
        end = max(end, stop)
    if 8 + header_size + end > size:
        raise UserError(f"{path} is truncated: it should hold {8 + header_size + end} bytes but has {size}.")
    return SafetensorsHeader({str(k): str(v) for k, v in metadata.items()}, header, header_size, size)


def load(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (on the CPU) and the metadata of a safetensors file, validated first."""
    header = read_header(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise UserError(f"{path} could not be read as safetensors: {exc}.") from None
    return tensors, header.metadata
