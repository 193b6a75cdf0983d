"""The standalone app's access rule without a server: which requests and which /file= paths pass."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lib_lora.cli import main
from lib_lora.common.origin import cross_site_refusal, normalize_origin
from lib_lora.standalone.security import AccessPolicy, FolderList


def _scope(path: str = "/config", **headers: str) -> dict:
    raw = [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]
    return {"type": "http", "path": path, "headers": [(b"host", b"127.0.0.1:7870"), *raw]}


def test_files_are_served_only_from_the_chosen_folders(tmp_path: Path) -> None:
    lora, data, outside = tmp_path / "lora", tmp_path / "data", tmp_path / "outside"
    for folder in (lora, data, outside):
        folder.mkdir()
    (outside / "secret.txt").write_text("x")
    (lora / "a.png").write_bytes(b"png")
    (lora / ".hidden.png").write_bytes(b"png")
    os.symlink(outside / "secret.txt", lora / "link.png")  # a symlink out of a served folder
    files = FolderList([lora])
    policy = AccessPolicy("127.0.0.1", files)
    assert policy.refusal(_scope(f"/file={lora / 'a.png'}")) is None
    for refused in (f"{lora}/../outside/secret.txt", str(lora / "link.png"), str(lora / ".hidden.png"), "/etc/passwd"):
        assert policy.refusal(_scope(f"/file={refused}")) is not None, refused
    assert policy.refusal(_scope(f"/file={data / 'x.png'}")) is not None
    files.add(str(data))  # a dataset folder chosen in the tab
    (data / "x.png").write_bytes(b"png")
    assert policy.refusal(_scope(f"/file={data / 'x.png'}")) is None
    assert str(data.resolve()) in files.as_strings  # Gradio's own allowed_paths list follows
    assert policy.refusal(_scope("/proxy=http://example.com/")) is not None


def test_only_the_apps_own_origin_and_loopback_host_names() -> None:
    own = {"host": "127.0.0.1:7870"}
    assert cross_site_refusal(own) is None
    assert cross_site_refusal({**own, "origin": "http://127.0.0.1:7870"}) is None
    assert cross_site_refusal({**own, "origin": "http://evil.example"}) is not None
    assert cross_site_refusal({**own, "origin": "null"}) is not None
    assert cross_site_refusal({**own, "origin": "http://localhost:3000"}, ["http://localhost:3000/"]) is None
    assert cross_site_refusal({"host": "evil.example:7870"}) is not None  # DNS rebinding
    assert cross_site_refusal({"host": "evil.example:7870"}, check_host=False) is None  # --host 0.0.0.0
    assert cross_site_refusal({**own, "sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors"}) is not None
    assert cross_site_refusal({**own, "sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}) is None
    assert normalize_origin("HTTP://LocalHost:3000/path") == "http://localhost:3000"


def test_serve_refuses_a_bad_allow_origin_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--lora-dir", str(tmp_path / "lora"), "--allow-origin", "localhost:3000"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --allow-origin ") and err.strip().count("\n") == 0, err
