#!/usr/bin/env python3
"""Quick start, the same on Windows, Linux and macOS: set up a virtual environment (.venv beside this
file) with the standalone app, then start it on the built-in demo model. Open http://127.0.0.1:7870
and follow the tabs left to right.

    python3 quickstart.py                                  # demo model (tiny, random weights)
    python3 quickstart.py --checkpoint model.safetensors   # your SD1.x / SDXL checkpoint
    py quickstart.py                                       # Windows (or double-click quickstart.bat)

Every argument goes to ``python -m lib_lora serve``, which starts in the folder you run this from.
Each step prints a line first, and pip shows its download progress: the first run downloads a few GB.
Ctrl-C stops it. Any Python 3 can read this file, so an old one is told what is missing before any
download (it uses no f-strings and no other newer syntax).
"""

import os
import shutil
import subprocess
import sys

NEEDED = (3, 10)
TORCH = "torch==2.13.0"

# First, before anything is defined or downloaded: an older Python stops here with one sentence.
if sys.version_info < NEEDED:
    sys.exit(
        "Train LoRA needs Python 3.10 or newer, and this is Python "
        + ".".join(str(part) for part in sys.version_info[:3])
        + " ("
        + sys.executable
        + "): install Python 3.10 or newer from python.org, then run this again with it"
        + " (py -3.12 quickstart.py on Windows, PYTHON=python3.12 bash quickstart.sh elsewhere)."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, ".venv")
# the venv's own python: Scripts\python.exe on Windows, bin/python elsewhere (and in MSYS2 on Windows)
VENV_PYTHONS = (os.path.join(VENV, "Scripts", "python.exe"), os.path.join(VENV, "bin", "python"))
# prints e.g. "3.11 True": the venv's Python version, and whether it has pip (a half-made one has not)
VENV_PROBE = "import sys, importlib.util; print('%d.%d' % sys.version_info[:2], bool(importlib.util.find_spec('pip')))"


class StepFailed(Exception):
    """A step could not be done; the message is the one sentence the user reads."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while a command ran; ``status`` is how that command ended once it had stopped."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def step(number: int, text: str) -> None:
    print("\n==> [" + str(number) + "/4] " + text, flush=True)


def venv_python() -> str | None:
    """The virtual environment's own python (no "activate" needed), or None when there is none."""
    return next((path for path in VENV_PYTHONS if os.path.isfile(path)), None)


def run(command: list[str], cwd: str | None = None) -> int:
    """Run ``command`` in this console (its output, its progress bars) and return its exit status.
    Ctrl-C reaches the command too: wait until it has stopped, then raise :class:`Interrupted`."""
    child = subprocess.Popen(command, cwd=cwd, env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    interrupted = False
    while True:
        try:
            status = child.wait()
            break
        except KeyboardInterrupt:  # the command got the same Ctrl-C (maybe twice): wait until it stops
            interrupted = True
    if interrupted:
        raise Interrupted(status)
    return status


def reuse_venv(python: str) -> str:
    step(1, "Using the virtual environment in " + VENV)
    try:
        probe = subprocess.run([python, "-c", VENV_PROBE], capture_output=True, text=True).stdout.split()
        version, has_pip = tuple(int(part) for part in probe[0].split(".")), probe[1] == "True"
    except (OSError, ValueError, IndexError):
        raise StepFailed(
            "Step 1 failed: the virtual environment in " + VENV + " does not start (was the Python it was"
            " made with moved or uninstalled?); delete the .venv folder and run this again."
        ) from None
    if version < NEEDED:
        raise StepFailed(
            "Step 1 failed: the virtual environment in " + VENV + " has Python " + probe[0] + " and Train LoRA"
            " needs 3.10 or newer; delete the .venv folder and run this again."
        )
    if not has_pip:
        raise StepFailed(
            "Step 1 failed: the virtual environment in " + VENV + " has no pip (it was not finished);"
            " delete the .venv folder and run this again."
        )
    return python


def create_venv() -> str:
    step(1, "Creating a virtual environment in " + VENV)
    existed = os.path.exists(VENV)
    try:
        status = run([sys.executable, "-m", "venv", VENV])
    except BaseException:
        if not existed:  # half made: the next run starts afresh
            shutil.rmtree(VENV, ignore_errors=True)
        raise
    python = venv_python()
    if status != 0 or python is None:
        if not existed:
            shutil.rmtree(VENV, ignore_errors=True)
        raise StepFailed(
            "Step 1 failed: Python could not create the virtual environment in " + VENV + " (its message is"
            " above; on Debian or Ubuntu, install the python3-venv package first), then run this again."
        )
    return python


def pip_install(python: str, number: int, what: str, arguments: list[str]) -> None:
    status = run([python, "-m", "pip", "install", "--progress-bar", "on", *arguments], cwd=ROOT)
    if status != 0:
        raise StepFailed(
            "Step " + str(number) + " failed: pip could not install " + what + " (exit status " + str(status)
            + "; its message is above): check the internet connection and the free disk space,"
            " then run this again."
        )  # fmt: skip


def install_torch(python: str) -> None:
    found = subprocess.run([python, "-c", "import torch"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if found.returncode == 0:
        step(2, "torch is already installed")
        return
    step(2, "Installing torch (the largest download: it can take several minutes)")
    if sys.platform == "win32":
        print(
            "PyPI's torch for Windows runs on the CPU only. For an NVIDIA GPU, stop this (Ctrl-C), install"
            " the CUDA build that pytorch.org names for " + TORCH + " with " + python + " -m pip install,"
            " and run this again: this step then keeps it.",
            flush=True,
        )  # fmt: skip
    # on Linux this wheel carries CUDA; macOS gets Apple's GPU (MPS)
    pip_install(python, 2, TORCH, [TORCH])


def main(arguments: list[str]) -> int:
    try:
        python = venv_python()
        python = reuse_venv(python) if python else create_venv()
        install_torch(python)
        step(3, "Installing the app and its packages (gradio, diffusers, transformers, onnxruntime)")
        # the app with the versions the tests run against
        constraints = os.path.join("requirements", "test-constraints.txt")
        pip_install(python, 3, "the app's packages", ["-c", constraints, "-e", ".[standalone]"])
        step(4, "Starting the app (the first page load builds the demo model; Ctrl-C stops it)")
        try:
            return run([python, "-m", "lib_lora", "serve", *arguments])
        except Interrupted as stop:  # Ctrl-C is how the app is stopped: it says so itself
            return stop.status if stop.status >= 0 else 130  # < 0: ended by the signal itself
    except StepFailed as failure:
        print("\n" + str(failure), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopped (Ctrl-C). Run this again to carry on: what is installed stays.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
