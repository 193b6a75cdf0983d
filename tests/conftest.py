"""Suite-wide settings.

One intra-op thread for torch, here and in every process the tests start (``serve``, the CLI, the
tagger, workers): the tiny models do microsecond-sized kernels, and with several threads each kernel
waits on the others; on a small or busy machine that costs several times the CPU and wall time. An
``OMP_NUM_THREADS`` already set by the user is kept.
"""

from __future__ import annotations

import os

ONE_THREAD = "OMP_NUM_THREADS" not in os.environ
if ONE_THREAD:
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the subprocesses the tests start


def pytest_configure(config) -> None:
    if ONE_THREAD:
        import torch

        torch.set_num_threads(1)  # in case torch was imported before this file
