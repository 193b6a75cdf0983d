"""A torchrun worker for the data-parallel tests: ``python -m lib_lora``'s own ``main``, with an audit
hook that lists every file this process creates, changes or removes under the watched folders.

Environment: ``LIB_LORA_TEST_WATCH`` (folders, ``os.pathsep``-separated) and ``LIB_LORA_TEST_REPORT``
(a folder that receives ``rank<R>.txt``, one written path per line, when the process exits).
"""

from __future__ import annotations

import atexit
import os
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
CHANGES = {"os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate", "shutil.move"}


def _watch(roots: list[str], report: str) -> None:
    written: list[str] = []

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
        elif event in CHANGES:
            path, writing = args[0], True
        else:
            return
        if not writing or not isinstance(path, (str, bytes, os.PathLike)):
            return
        full = os.path.abspath(os.fsdecode(path))
        if any(full == root or full.startswith(root + os.sep) for root in roots):
            written.append(full)

    def dump() -> None:
        rank = os.environ.get("RANK", "x")
        with open(os.path.join(report, f"rank{rank}.txt"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(dict.fromkeys(written)))

    atexit.register(dump)
    sys.addaudithook(hook)


if __name__ == "__main__":
    _watch(
        [os.path.abspath(p) for p in os.environ["LIB_LORA_TEST_WATCH"].split(os.pathsep)],
        os.environ["LIB_LORA_TEST_REPORT"],
    )
    from lib_lora.cli import main

    sys.exit(main(sys.argv[1:]))
