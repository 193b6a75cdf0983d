"""Freed host memory goes back to the OS after a run (glibc keeps it resident otherwise)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lib_lora.common.memory import release_freed_host_memory


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc heap behaviour (Linux only)")
def test_freed_small_allocations_leave_resident_memory() -> None:
    # many small blocks (below glibc's mmap threshold) land in the heap; freed, glibc keeps them resident
    blocks = [bytearray(16 * 1024) for _ in range(20_000)]  # ~310 MiB
    keep = blocks[-1]  # the top of the heap stays in use, so free() alone cannot shrink it
    del blocks
    held = _rss_mib()
    assert release_freed_host_memory() is True
    released = _rss_mib()
    assert held - released > 100, (held, released)
    del keep


def test_elsewhere_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    assert release_freed_host_memory() is False
