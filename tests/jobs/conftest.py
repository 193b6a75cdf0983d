"""Shared fixture of the engine-level training tests: the tiny-sd15 demo model, loaded once per module."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bundle():
    from lib_lora.standalone.models import load_model

    return load_model("tiny-sd15", device="cpu")
