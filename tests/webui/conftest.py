"""The stand-in webui fixture for tests/webui (see tests/support/webui_env.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from support.webui_env import stub_webui


@pytest.fixture
def webui(tmp_path: Path) -> Iterator[SimpleNamespace]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is several times faster on a busy 2-core box
    try:
        with stub_webui(tmp_path) as env:
            yield env
    finally:
        torch.set_num_threads(threads)
