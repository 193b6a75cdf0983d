"""Run by the webui at every launch (before torch and gradio are imported).

Installs only what Train LoRA needs and the webui lacks: an ONNX runtime for the built-in tagger
(the GPU build when the webui's torch has CUDA) and, on Python 3.10, a TOML reader. It never
installs, upgrades or pins torch, gradio, transformers, numpy or anything else the webui pins, and
prints nothing when there is nothing to do.
"""

import importlib.util
import sys

import launch  # the webui's own installer helpers


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _torch_has_cuda() -> bool:
    try:
        import torch  # the webui's torch is already installed when this runs

        return bool(torch.version.cuda) and torch.cuda.is_available()
    except Exception:
        return False


def main() -> None:
    if not (launch.is_installed("onnxruntime") or launch.is_installed("onnxruntime-gpu") or _have("onnxruntime")):
        package = "onnxruntime-gpu" if _torch_has_cuda() else "onnxruntime"
        try:
            launch.run_pip(f"install {package}", f"{package} for Train LoRA's tagger")
        except Exception as exc:  # the webui keeps starting; the tagger says what is missing
            print(f"Train LoRA: could not install {package} ({exc}); the tagger will be unavailable.")
    if sys.version_info < (3, 11) and not (launch.is_installed("tomli") or _have("tomli")):
        try:
            launch.run_pip("install tomli", "tomli for Train LoRA's config files")
        except Exception as exc:
            print(f"Train LoRA: could not install tomli ({exc}); TOML config files will be unavailable.")


main()
