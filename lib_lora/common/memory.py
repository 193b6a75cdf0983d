"""Giving freed host memory back to the operating system after a run."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def release_freed_host_memory() -> bool:
    """Ask glibc to return the free parts of its heap to the OS (``malloc_trim(0)``).

    On Linux a training run's freed CPU tensors stay in glibc's heap: the process's resident memory
    stays near the run's peak although nothing holds the memory any more. Returns True when the
    trim ran (glibc), False elsewhere (Windows, macOS, musl), where it is not needed or not possible.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
