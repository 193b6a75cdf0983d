"""install.py with a fake ``launch`` module: what it installs, and that it keeps the webui's pins."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import runpy
import shlex
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class FakeLaunch(types.ModuleType):
    def __init__(self, installed: set[str], fail: bool = False) -> None:
        super().__init__("launch")
        self.installed = installed
        self.fail = fail
        self.calls: list[tuple[list[str], str]] = []

    def is_installed(self, name: str) -> bool:
        return name in self.installed

    def run_pip(self, command: str, desc: str | None = None) -> None:
        words = shlex.split(command)
        constraints = Path(words[words.index("-c") + 1]).read_text(encoding="utf-8")
        self.calls.append((words, constraints))
        if self.fail:
            raise RuntimeError("Couldn't install onnxruntime")


def run_install(monkeypatch: pytest.MonkeyPatch, *, installed: set[str], cuda: bool, fail: bool = False) -> FakeLaunch:
    launch = FakeLaunch(installed, fail)
    monkeypatch.setitem(sys.modules, "launch", launch)
    fake_torch = types.SimpleNamespace(
        version=types.SimpleNamespace(cuda="12.1" if cuda else None),
        cuda=types.SimpleNamespace(is_available=lambda: cuda),
    )
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object):
        if name in ("onnxruntime", "tomli") and name not in installed:
            return None
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    runpy.run_path(str(ROOT / "install.py"))
    return launch


def test_nothing_to_do_is_quiet(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    launch = run_install(monkeypatch, installed={"onnxruntime", "tomli"}, cuda=True)
    assert launch.calls == []
    assert capsys.readouterr().out == ""


def test_gpu_build_also_counts_as_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    launch = run_install(monkeypatch, installed={"onnxruntime-gpu", "tomli"}, cuda=True)
    assert launch.calls == []


@pytest.mark.parametrize("cuda, package", [(True, "onnxruntime-gpu"), (False, "onnxruntime")])
def test_missing_runtime_is_installed_for_the_torch_build(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, package: str
) -> None:
    launch = run_install(monkeypatch, installed={"tomli"}, cuda=cuda)
    assert len(launch.calls) == 1
    words, constraints = launch.calls[0]
    # only the runtime is named; everything the webui pins is held at its installed version
    assert words[: words.index("-c")] == ["install", package]
    pins = dict(line.split("==") for line in constraints.split())
    assert pins["numpy"] == importlib.metadata.version("numpy")
    assert pins["Pillow"] == importlib.metadata.version("Pillow")
    assert pins["gradio"] == importlib.metadata.version("gradio")
    for name in ("torch", "numpy", "gradio", "transformers", "protobuf", "Pillow"):
        assert name not in words


def test_failed_install_is_reported_and_startup_continues(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    launch = run_install(monkeypatch, installed={"tomli"}, cuda=False, fail=True)
    assert len(launch.calls) == 1
    out = capsys.readouterr().out
    assert "could not install onnxruntime" in out and "tagger will be unavailable" in out


def test_constraints_file_is_removed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    run_install(monkeypatch, installed={"tomli"}, cuda=False)
    assert list(tmp_path.iterdir()) == []
