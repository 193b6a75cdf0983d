"""quickstart.sh says what it does: a line per step, and pip's own progress (never ``-q``): a first
run downloads gigabytes and used to print nothing for minutes. Run against stand-in python/pip."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$LOG"
if [ "$(basename "$0")" = python3 ] && [ "$1" = -m ] && [ "$2" = venv ]; then
    mkdir -p "$3/bin"
    printf 'export PATH="%s:$PATH"\\n' "$BIN" > "$3/bin/activate"
    touch "$3/bin/python" && chmod +x "$3/bin/python"
fi
if [ "$(basename "$0")" = python ] && [ "$1" = -c ]; then exit 1; fi  # no torch yet
exit 0
"""


def _stage(tmp_path: Path, fakes: dict[str, str]) -> tuple[Path, Path, Path]:
    """A copy of quickstart.sh in tmp_path/project and a bin folder of stand-in
    commands (name -> script); returns (work, bin folder, the calls log the stand-ins write)."""
    work = tmp_path / "project"
    work.mkdir()
    shutil.copy(ROOT / "quickstart.sh", work / "quickstart.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in fakes.items():
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    return work, bin_dir, tmp_path / "calls.log"


def _run(work: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "quickstart.sh"], cwd=work, env=env, capture_output=True, text=True, timeout=60)


def test_quickstart_prints_a_line_per_step_and_pips_progress(tmp_path: Path) -> None:
    work, bin_dir, log = _stage(tmp_path, {"python3": FAKE, "python": FAKE, "pip": FAKE})
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", LOG=str(log), BIN=str(bin_dir))
    env.pop("PYTHON", None)
    done = _run(work, env)
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stdout.splitlines() if line.startswith("==> ")]
    assert [s.split("]")[0] for s in steps] == ["==> [1/4", "==> [2/4", "==> [3/4", "==> [4/4"], done.stdout
    assert "Creating a virtual environment" in steps[0] and "Installing torch" in steps[1]
    pip_calls = [line for line in log.read_text().splitlines() if line.startswith("pip ")]
    assert len(pip_calls) == 2 and all("-q" not in call.split() and "--progress-bar on" in call for call in pip_calls)
    assert log.read_text().splitlines()[-1] == "python -m lib_lora serve"


OLD_PYTHON = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$LOG"
if [ "$1" = -V ]; then echo "Python 3.8.10"; fi
if [ "$1" = -c ]; then exit 1; fi  # the version check: too old
exit 0
"""


def test_quickstart_refuses_a_python_older_than_3_10_before_any_download(tmp_path: Path) -> None:
    work, bin_dir, log = _stage(tmp_path, {"python3": OLD_PYTHON})
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", LOG=str(log), PYTHON="python3")
    done = _run(work, env)
    assert done.returncode == 1
    assert "Train LoRA needs Python 3.10 or newer; python3 is Python 3.8.10." in done.stderr, done.stderr
    assert not (work / ".venv").exists()
    assert not [line for line in log.read_text().splitlines() if "venv" in line or line.startswith("pip")]


def test_quickstart_uses_a_windows_venv_scripts_folder(tmp_path: Path) -> None:
    # Git Bash on Windows: the venv's python and activate script live in .venv/Scripts
    work, bin_dir, log = _stage(tmp_path, {"python": FAKE, "pip": FAKE})
    scripts = work / ".venv" / "Scripts"
    scripts.mkdir(parents=True)
    (scripts / "python.exe").write_text("")
    (scripts / "python.exe").chmod(0o755)
    (scripts / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    env = dict(os.environ, LOG=str(log), BIN=str(bin_dir))
    done = _run(work, env)
    assert done.returncode == 0, done.stderr
    assert "==> [1/4] Using the virtual environment" in done.stdout
    assert log.read_text().splitlines()[-1] == "python -m lib_lora serve"
