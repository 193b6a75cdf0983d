"""Atomic writes on a machine where another program (the webui, an image viewer) holds the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lib_lora.common import fsutil
from lib_lora.common.errors import UserError


def test_a_locked_target_is_retried_until_it_is_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "lora.safetensors"
    target.write_bytes(b"old")
    real_replace = os.replace
    calls = []

    def locked_twice(src, dst):
        calls.append(dst)
        if len(calls) <= 2:
            raise PermissionError(13, "The process cannot access the file because it is being used")
        real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", locked_twice)
    monkeypatch.setattr(fsutil.time, "sleep", lambda s: None)
    fsutil.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora.safetensors"]  # no temp file left


def test_a_target_that_stays_locked_fails_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "caption.txt"
    target.write_text("old")

    def always_locked(src, dst):
        raise PermissionError(13, "locked")

    monkeypatch.setattr(fsutil.os, "replace", always_locked)
    monkeypatch.setattr(fsutil.time, "sleep", lambda s: None)
    with pytest.raises(UserError, match="permission denied .*open in another program"):
        fsutil.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caption.txt"]


def test_read_only_is_judged_by_the_permission_bits(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("x")
    assert not fsutil.is_read_only(path)
    path.chmod(0o444)
    try:
        assert fsutil.is_read_only(path)
    finally:
        path.chmod(0o644)
    assert not fsutil.is_read_only(tmp_path / "missing.txt")
