"""The README stays true: the two quick-start commands exist, every setting and verb is documented,
and every image it shows is in the tree."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from lib_lora.cli import VERBS
from lib_lora.config import PRESETS, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_quick_start_is_two_commands_that_exist() -> None:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["bash quickstart.sh", "bash .ci/run"]
    assert (ROOT / "quickstart.sh").is_file() and (ROOT / ".ci" / "run").is_file()
    # Windows users, mostly without bash, are told how to run the first one
    assert "`py quickstart.py`" in section and "`quickstart.bat`" in section
    assert (ROOT / "quickstart.py").is_file() and (ROOT / "quickstart.bat").is_file()
    assert "python -m pytest" in (ROOT / ".ci" / "run").read_text()


def test_every_setting_verb_and_preset_is_documented() -> None:
    missing = [f.name for f in fields(TrainConfig) if f"`{f.name}`" not in README]
    assert not missing, missing
    assert [v for v in VERBS if f"`{v}" not in README] == []
    assert [p for p in PRESETS if f"`{p}`" not in README] == []


def test_images_exist() -> None:
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert images and all((ROOT / image).is_file() for image in images), images


def test_http_api_bodies_use_real_keys() -> None:
    from lib_lora.webui.api import TAG_KEYS

    row = next(line for line in README.splitlines() if line.startswith("| `POST tag`"))
    keys = set(re.findall(r'"(\w+)":', row.split("→")[0]))  # the request body, not the answer
    assert keys and keys <= TAG_KEYS, keys - TAG_KEYS
