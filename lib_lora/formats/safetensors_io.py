"""safetensors files: atomic LoRA saves with kohya's hashes, and loads with clear errors."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def update_metadata(path: str | os.PathLike, changes: dict[str, str | None]) -> None:
    """Change only the ``__metadata__`` of a safetensors file (a value None removes its key), atomically.
    The tensor bytes are copied exactly as they are, so ``sshs_model_hash`` (their sha256) stays true;
    ``sshs_legacy_hash`` is computed over a copy with only the ``ss_*`` keys, so a non-``ss_`` key
    changes it neither. The tensors' order and offsets in the header are kept."""
    bad = [k for k, v in changes.items() if v is not None and not isinstance(v, str)]
    if bad:
        raise ValueError(f"metadata values must be strings: {bad[:3]}")
    info = read_header(path)  # a damaged file is refused here, in one sentence
    with open(path, "rb") as handle:
        blob = handle.read()
    if len(blob) != info.file_size:
        raise UserError(f"{path} changed while its metadata was being updated; try again.")
    header = json.loads(blob[8 : 8 + info.header_size].decode("utf-8"))
    metadata = dict(header.pop("__metadata__", None) or {})
    for key, value in changes.items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    raw = json.dumps({"__metadata__": metadata, **header}, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    atomic_write_bytes(path, struct.pack("<Q", len(raw)) + raw + blob[8 + info.header_size :])


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
    except RecursionError:
        raise UserError(f"{path} is not a safetensors file (its header is nested too deeply).") from None
    if not isinstance(header, dict):
        raise UserError(f"{path} is not a safetensors file.")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise UserError(f"{path} is not a valid safetensors file (its metadata must map names to text).")
    end = 0
    for name, info in header.items():
        problem = _entry_problem(info)
        if problem:
            raise UserError(f"{path} is not a valid safetensors file (tensor {name[:80]}: {problem}).")
        begin, stop = info["data_offsets"]
        count = 1
        for dim in info["shape"]:
            count *= dim
        if info["dtype"] in _DTYPE_SIZES and stop - begin != count * _DTYPE_SIZES[info["dtype"]]:
            raise UserError(f"{path} is damaged: tensor {name[:80]} has the wrong size.")
        end = max(end, stop)
    if 8 + header_size + end > size:
        raise UserError(f"{path} is truncated: it should hold {8 + header_size + end} bytes but has {size}.")
    return SafetensorsHeader({str(k): str(v) for k, v in metadata.items()}, header, header_size, size)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry_problem(info: object) -> str | None:
    """What is wrong with one tensor entry of a header, or None."""
    if not isinstance(info, dict):
        return "its entry is not an object"
    if not isinstance(info.get("dtype"), str):
        return "no dtype"
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        return "the shape is not a list of whole numbers"
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        return "the data offsets are not two whole numbers"
    if offsets[1] < offsets[0]:
        return "the data offsets are reversed"
    return None


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


# -- tensors + JSON structure: nested Python data (an optimizer's state dict) without pickle -----------


def pack_tree(value: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split nested data into a JSON-able structure and the tensors it refers to (``{"__tensor__": key}``).

    Tuples, dicts with non-text keys and dtypes are tagged so :func:`unpack_tree` gives back the same
    types; anything else is refused (it could only be stored with pickle)."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = v.detach().to("cpu").contiguous().clone()
            return {"__tensor__": key}
        if isinstance(v, torch.dtype):
            return {"__dtype__": str(v).removeprefix("torch.")}
        if isinstance(v, list):
            return [enc(x) for x in v]
        if isinstance(v, tuple):
            return {"__tuple__": [enc(x) for x in v]}
        if isinstance(v, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in v):
                return {k: enc(x) for k, x in v.items()}
            return {"__dict__": [[enc(k), enc(x)] for k, x in v.items()]}
        raise UserError(f"Cannot save a value of type {type(v).__name__} in a training state.")

    return enc(value), tensors


def unpack_tree(structure: Any, tensors: dict[str, torch.Tensor], source: str = "the training state") -> Any:
    """The inverse of :func:`pack_tree`; UserError for anything it would not have written."""

    def dec(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return [dec(x) for x in v]
        if not isinstance(v, dict):
            raise UserError(f"{source} is damaged (an unexpected value).")
        if len(v) == 1:
            ((tag, inner),) = v.items()
            if tag == "__tensor__":
                if not isinstance(inner, str) or inner not in tensors:
                    raise UserError(f"{source} is damaged (tensor {str(inner)[:40]} is missing).")
                return tensors[inner]
            if tag == "__dtype__":
                dtype = getattr(torch, str(inner), None)
                if not isinstance(dtype, torch.dtype):
                    raise UserError(f"{source} is damaged (unknown dtype {str(inner)[:40]}).")
                return dtype
            if tag == "__tuple__" and isinstance(inner, list):
                return tuple(dec(x) for x in inner)
            if tag == "__dict__" and isinstance(inner, list):
                if not all(isinstance(p, list) and len(p) == 2 for p in inner):
                    raise UserError(f"{source} is damaged (a bad mapping).")
                try:
                    return {dec(k): dec(x) for k, x in inner}
                except TypeError:
                    raise UserError(f"{source} is damaged (a bad mapping key).") from None
        if any(k.startswith("__") for k in v):
            raise UserError(f"{source} is damaged (an unknown entry).")
        return {k: dec(x) for k, x in v.items()}

    try:
        return dec(structure)
    except RecursionError:
        raise UserError(f"{source} is damaged (nested too deeply).") from None


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write plain tensors (no LoRA hashes, NaN allowed) as a safetensors file, atomically."""
    from safetensors.torch import save as st_save

    atomic_write_bytes(path, st_save(tensors, metadata))
