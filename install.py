"""Run by the webui at every launch (before torch and gradio are imported).

Installs only what Train LoRA needs and the webui lacks: an ONNX runtime for the built-in tagger
(the GPU build when the webui's torch has CUDA) and, on Python 3.10, a TOML reader. It never
installs, upgrades or pins torch, gradio, transformers, numpy or anything else the webui pins:
pip gets the installed versions of those as constraints, so it picks an onnxruntime that fits them
(a current onnxruntime wants a newer protobuf than the webui's 3.20) instead of upgrading them. It
prints nothing when there is nothing to do; under ``--skip-install`` ``launch.run_pip`` does nothing.
"""

import importlib.metadata
import importlib.util
import os
import sys
import tempfile

import launch  # the webui's own installer helpers

# what the webui pins (requirements_versions.txt) and must keep exactly
PINNED = (
    "torch", "torchvision", "xformers", "gradio", "transformers", "numpy", "Pillow", "safetensors", "protobuf",
    "accelerate", "fastapi", "pydantic", "diffusers", "huggingface-hub", "tokenizers",
)  # fmt: skip


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _torch_has_cuda() -> bool:
    try:
        import torch  # the webui's torch is already installed when this runs

        return bool(torch.version.cuda) and torch.cuda.is_available()
    except Exception:
        return False


def _constraints_file() -> str:
    """A pip constraints file holding every installed pinned package at its installed version."""
    lines = []
    for name in PINNED:
        try:
            lines.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    handle, path = tempfile.mkstemp(prefix="train-lora-constraints-", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    return path


def _install(package: str, purpose: str, fallback: str) -> None:
    constraints = _constraints_file()
    try:
        launch.run_pip(f'install {package} -c "{constraints}"', f"{package} for Train LoRA's {purpose}")
    except Exception as exc:  # the webui keeps starting; the feature says what is missing
        print(f"Train LoRA: could not install {package} ({exc}); {fallback}")
    finally:
        os.remove(constraints)


def main() -> None:
    if not (launch.is_installed("onnxruntime") or launch.is_installed("onnxruntime-gpu") or _have("onnxruntime")):
        package = "onnxruntime-gpu" if _torch_has_cuda() else "onnxruntime"
        _install(package, "tagger", "the tagger will be unavailable.")
    if sys.version_info < (3, 11) and not (launch.is_installed("tomli") or _have("tomli")):
        _install("tomli", "config files", "TOML config files will be unavailable.")


main()
