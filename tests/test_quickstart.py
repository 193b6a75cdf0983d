"""The quick start (quickstart.py, and its wrappers quickstart.sh and quickstart.bat) says what it
does: a line per step and pip's own progress (never ``-q``: a first run downloads gigabytes and used to
print nothing for minutes), one sentence naming the step that failed, a clean stop on Ctrl-C. The real
script runs under this Python; the venv's python and ``python -m venv`` are stand-ins that log their calls,
so nothing is downloaded."""

from __future__ import annotations

import ast
import io
import os
import shutil
import signal
import subprocess
import sys
import time
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEP_PREFIXES = ["==> [1/4", "==> [2/4", "==> [3/4", "==> [4/4"]

# the venv's python: logs "NAME ARGS" (NAME tells bin/python from Scripts/python.exe); the serve call
# also writes its folder and arguments, one a line, to LOG.serve. WAIT_AT: a call to wait in for Ctrl-C.
VENV_PYTHON = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$LOG"
if [ -n "$WAIT_AT" ] && [[ "$*" == *"$WAIT_AT"* ]]; then
    trap 'echo "stopped" >> "$LOG"; exit 0' INT
    echo "waiting" >> "$LOG"
    while :; do sleep 0.05; done
fi
case "$*" in
    "-c import sys, importlib.util"*) echo "${VENV_PROBE-3.11 True}" ;;
    "-c import torch") exit "${TORCH_EXIT:-1}" ;;
    "-m pip install"*) if [ -n "$PIP_FAILS" ] && [[ "$*" == *"$PIP_FAILS"* ]]; then exit 1; fi ;;
    "-m lib_lora serve"*) printf '%s\\n' "$PWD" "${@:4}" > "$LOG.serve" ;;
esac
exit 0
"""

# `python -m venv DIR` finds this package first (PYTHONPATH): it logs the call and makes DIR/bin/python
VENV_MODULE = """import os, shutil, sys
with open(os.environ["LOG"], "a") as log:
    log.write("venv " + " ".join(sys.argv[1:]) + "\\n")
os.makedirs(os.path.join(sys.argv[1], "bin"))
shutil.copy(os.environ["STAND_IN"], os.path.join(sys.argv[1], "bin", "python"))
sys.exit(int(os.environ.get("VENV_EXIT", "0")))
"""


# runs the script as this Python would if it were another one (`pretend`: the lines that make it so)
PRETEND = """import runpy, subprocess, sys
{}
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


class Project:
    """A copy of the quick-start files in tmp_path/project, the stand-ins beside it, and the calls log."""

    def __init__(self, tmp_path: Path, venv: str | None = "bin/python") -> None:
        self.dir = tmp_path / "project"
        self.dir.mkdir()
        for name in ("quickstart.py", "quickstart.sh"):
            shutil.copy(ROOT / name, self.dir / name)
        self.stand_in = tmp_path / "venv-python"
        self.stand_in.write_text(VENV_PYTHON)
        self.stand_in.chmod(0o755)
        module = tmp_path / "stand-ins" / "venv"
        module.mkdir(parents=True)
        (module / "__init__.py").write_text("")
        (module / "__main__.py").write_text(VENV_MODULE)
        if venv:  # an existing virtual environment: bin/python, or Windows' Scripts/python.exe
            (self.dir / ".venv" / venv).parent.mkdir(parents=True)
            shutil.copy(self.stand_in, self.dir / ".venv" / venv)
        self.log = tmp_path / "calls.log"
        self.env = dict(os.environ, LOG=str(self.log), STAND_IN=str(self.stand_in), PYTHONPATH=str(module.parent))
        for name in ("WAIT_AT", "PIP_FAILS", "TORCH_EXIT", "VENV_PROBE", "VENV_EXIT", "PYTHON"):
            self.env.pop(name, None)

    def run(self, *args: str, cwd: Path | None = None, pretend: str = "", **env: str) -> subprocess.CompletedProcess:
        python = [sys.executable, "-c", PRETEND.format(pretend)] if pretend else [sys.executable]
        return subprocess.run(
            [*python, str(self.dir / "quickstart.py"), *args], cwd=cwd or self.dir,
            env=dict(self.env, **env), capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def serve(self) -> list[str]:
        """The folder the app was started in, then its arguments."""
        return Path(f"{self.log}.serve").read_text().splitlines()


def _steps(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("==> ")]


def test_first_run_creates_the_venv_installs_torch_and_the_app_then_serves_with_the_arguments(tmp_path: Path) -> None:
    project = Project(tmp_path, venv=None)
    elsewhere = tmp_path / "my folder"
    elsewhere.mkdir()
    done = project.run("--checkpoint", "my model.safetensors", "--port", "7871", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    steps = _steps(done.stdout)
    assert [s.split("]")[0] for s in steps] == STEP_PREFIXES, done.stdout
    assert f"Creating a virtual environment in {project.dir / '.venv'}" in steps[0]
    assert "Installing torch" in steps[1] and "Installing the app" in steps[2] and "Starting the app" in steps[3]
    assert project.calls() == [
        f"venv {project.dir / '.venv'}",
        "python -c import torch",
        "python -m pip install --progress-bar on torch==2.13.0",  # pip's progress, never -q
        f"python -m pip install --progress-bar on -c {Path('requirements/test-constraints.txt')} -e .[standalone]",
        "python -m lib_lora serve --checkpoint my model.safetensors --port 7871",
    ]
    # started where the user is (relative paths are theirs), each argument intact
    assert project.serve() == [str(elsewhere), "--checkpoint", "my model.safetensors", "--port", "7871"]


def test_a_second_run_reuses_the_venv_and_keeps_an_importable_torch(tmp_path: Path) -> None:
    project = Project(tmp_path)
    done = project.run(TORCH_EXIT="0")
    assert done.returncode == 0, done.stderr
    steps = _steps(done.stdout)
    assert "Using the virtual environment" in steps[0] and "torch is already installed" in steps[1], steps
    calls = project.calls()
    assert not [call for call in calls if call.startswith("venv") or "torch==" in call], calls
    assert [call for call in calls if " pip " in call] == [
        f"python -m pip install --progress-bar on -c {Path('requirements/test-constraints.txt')} -e .[standalone]"
    ]
    assert calls[-1] == "python -m lib_lora serve" and project.serve() == [str(project.dir)]


def test_a_windows_venv_runs_its_scripts_python_exe(tmp_path: Path) -> None:
    project = Project(tmp_path, venv="Scripts/python.exe")
    done = project.run("--port", "7872", pretend='sys.platform = "win32"')  # subprocess is imported first
    assert done.returncode == 0, done.stderr
    steps = _steps(done.stdout)
    assert "Using the virtual environment" in steps[0] and "Installing torch" in steps[1]
    # PyPI's Windows torch has no CUDA: the user is told how to keep a GPU build instead
    assert "PyPI's torch for Windows runs on the CPU only. For an NVIDIA GPU, stop this (Ctrl-C)" in done.stdout
    calls = project.calls()
    assert calls and all(call.startswith("python.exe ") for call in calls), calls
    assert calls[-1] == "python.exe -m lib_lora serve --port 7872"


def test_other_systems_get_no_windows_torch_note(tmp_path: Path) -> None:
    done = Project(tmp_path).run(pretend='sys.platform = "linux"')
    assert done.returncode == 0 and "Installing torch" in done.stdout and "Windows" not in done.stdout


@pytest.mark.parametrize(
    ("fails", "sentence"),
    [
        ("torch==", "Step 2 failed: pip could not install torch==2.13.0 (exit status 1;"),
        ("-e .[standalone]", "Step 3 failed: pip could not install the app's packages (exit status 1;"),
    ],
)
def test_a_failing_pip_step_is_named_in_one_sentence(tmp_path: Path, fails: str, sentence: str) -> None:
    project = Project(tmp_path)
    done = project.run(PIP_FAILS=fails)
    assert done.returncode == 1
    assert sentence in done.stderr and "run this again" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not [call for call in project.calls() if "serve" in call]


@pytest.mark.parametrize(
    ("probe", "sentence"),
    [
        ("", "does not start (was the Python it was made with moved or uninstalled?); delete the .venv folder"),
        ("3.9 True", "has Python 3.9 and Train LoRA needs 3.10 or newer; delete the .venv folder"),
        ("3.11 False", "has no pip (it was not finished); delete the .venv folder"),
    ],
)
def test_an_unusable_venv_is_named_before_any_download(tmp_path: Path, probe: str, sentence: str) -> None:
    project = Project(tmp_path)
    done = project.run(VENV_PROBE=probe)
    assert done.returncode == 1
    assert f"Step 1 failed: the virtual environment in {project.dir / '.venv'} {sentence}" in done.stderr, done.stderr
    assert not [call for call in project.calls() if " pip " in call or "serve" in call]


def test_a_failed_venv_creation_is_named_and_leaves_no_half_made_venv(tmp_path: Path) -> None:
    project = Project(tmp_path, venv=None)
    done = project.run(VENV_EXIT="1")
    assert done.returncode == 1
    assert "Step 1 failed: Python could not create the virtual environment" in done.stderr, done.stderr
    assert not (project.dir / ".venv").exists()  # the next run starts afresh instead of reusing a broken one
    assert project.calls() == [f"venv {project.dir / '.venv'}"]


@pytest.mark.parametrize(
    ("wait_at", "status", "said"),
    [("serve", 0, ""), ("torch==", 130, "Stopped (Ctrl-C). Run this again to carry on")],
    ids=["app", "pip"],
)
def test_ctrl_c_stops_cleanly(tmp_path: Path, wait_at: str, status: int, said: str) -> None:
    project = Project(tmp_path)
    # a terminal's Ctrl-C goes to the whole foreground group: the script and what it runs
    child = subprocess.Popen(
        [sys.executable, str(project.dir / "quickstart.py")], cwd=project.dir, env=dict(project.env, WAIT_AT=wait_at),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while "waiting" not in project.calls() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "waiting" in project.calls(), project.calls()
    os.killpg(child.pid, signal.SIGINT)
    stdout, stderr = child.communicate(timeout=30)
    assert child.returncode == status, stderr
    assert "Traceback" not in stderr and said in stderr, stderr
    assert project.calls()[-1] == "stopped"  # the command it ran got the Ctrl-C and stopped
    assert ("Starting the app" in stdout) == (wait_at == "serve")


def test_an_old_python_is_refused_in_one_sentence_before_any_download(tmp_path: Path) -> None:
    project = Project(tmp_path, venv=None)
    done = project.run(pretend='sys.version_info = (3, 8, 10, "final", 0)')
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"Train LoRA needs Python 3.10 or newer, and this is Python 3.8.10 ({sys.executable}): install Python 3.10"
    ), done.stderr
    assert done.stdout == "" and project.calls() == [] and not (project.dir / ".venv").exists()


def test_any_python_3_can_read_the_script_up_to_its_version_check() -> None:
    source = (ROOT / "quickstart.py").read_text(encoding="utf-8")
    tree = ast.parse(source, feature_version=(3, 6))  # no walrus, match, positional-only parameters...
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "__future__"], (
        "a __future__ import an old Python does not know stops it before the version check"
    )
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    f_strings = [
        t.start[0] for t in tokens
        if t.type == getattr(tokenize, "FSTRING_START", None)
        or (t.type == tokenize.STRING and "f" in t.string.split(t.string[-1], 1)[0].lower())
    ]  # fmt: skip
    assert not f_strings, f"f-strings (a SyntaxError before Python 3.6) on lines {f_strings}"
    # annotations such as `str | None` are evaluated when a def runs: the check comes before every def
    body = [node for node in tree.body if not isinstance(node, (ast.Import, ast.ImportFrom, ast.Assign, ast.Expr))]
    assert isinstance(body[0], ast.If) and "sys.version_info < NEEDED" in ast.unparse(body[0].test), body[0]


def test_quickstart_sh_runs_the_script_with_the_arguments(tmp_path: Path) -> None:
    project = Project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        ["bash", str(project.dir / "quickstart.sh"), "--checkpoint", "a b.safetensors"], cwd=elsewhere,
        env=dict(project.env, PYTHON=sys.executable), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [s.split("]")[0] for s in _steps(done.stdout)] == STEP_PREFIXES, done.stdout
    assert project.serve() == [str(elsewhere), "--checkpoint", "a b.safetensors"]


def test_quickstart_sh_without_python_says_what_to_install(tmp_path: Path) -> None:
    project = Project(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run(
        [shutil.which("bash") or "bash", str(project.dir / "quickstart.sh")],
        env=dict(project.env, PATH=str(empty)), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == "No Python found: install Python 3.10 or newer (python.org), then run this again.\n"


def test_quickstart_bat_runs_the_script_with_its_arguments_and_pauses_on_failure() -> None:
    # the bytes in the working tree, as cmd.exe reads them: it misparses LF-only lines (labels, blocks)
    data = (ROOT / "quickstart.bat").read_bytes()
    assert data.endswith(b"\r\n") and data.count(b"\n") == data.count(b"\r\n"), "quickstart.bat needs CRLF endings"
    rules = (ROOT / ".gitattributes").read_text().splitlines()
    assert "*.bat text eol=crlf" in rules and "*.sh text eol=lf" in rules  # so a clone gets them too
    lines = [line.strip() for line in data.decode("ascii").splitlines()]
    assert lines[0] == "@echo off"
    assert 'where py >nul 2>nul && set "PYTHON=py -3"' in lines  # the launcher first, then python
    assert 'if not defined PYTHON (where python >nul 2>nul && set "PYTHON=python")' in lines
    run = lines.index('%PYTHON% "%~dp0quickstart.py" %*')  # beside the .bat wherever it is started; every argument
    assert lines[run + 1] == "if %ERRORLEVEL% equ 0 exit /b 0"
    assert lines.index("pause >nul") > run + 1 and lines[-1] == "exit /b 1"
