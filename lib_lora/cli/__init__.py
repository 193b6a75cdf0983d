"""``python -m lib_lora <verb>``: one argparse front end, one module per verb.

Every verb module (``lib_lora/cli/<verb>.py``) defines ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int`` and imports only the standard library at module level, so ``--help`` is
instant. A :class:`UserError` becomes one ``error: ...`` line and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

from lib_lora import __version__
from lib_lora.common.errors import UserError

# verb -> module, in the order ``--help`` lists them (the workflow order)
VERBS: dict[str, str] = {
    "serve": "lib_lora.cli.serve",
    "demo-dataset": "lib_lora.cli.demo_dataset",
    "import": "lib_lora.cli.import_",
    "dedupe": "lib_lora.cli.dedupe",
    "tag": "lib_lora.cli.tag",
    "captions": "lib_lora.cli.captions",
    "clean": "lib_lora.cli.clean",
    "buckets": "lib_lora.cli.buckets",
    "train": "lib_lora.cli.train",
    "score": "lib_lora.cli.score",
    "modules": "lib_lora.cli.modules",
    "inspect": "lib_lora.cli.inspect_",
}


_SHELL_SPECIAL = set("\"'&|;<>()$`*?[]{}!#^%")


def shell_arg(value: object) -> str:
    """``value`` as one argument to paste into a command line: in double quotes when it holds a space
    or a character shells treat specially (double quotes work in cmd, PowerShell and POSIX shells)."""
    text = str(value)
    if text and not any(c.isspace() or c in _SHELL_SPECIAL for c in text):
        return text
    return '"' + text.replace('"', '\\"') + '"'


def _available_verbs() -> dict[str, object]:
    modules = {}
    for verb, module_name in VERBS.items():
        try:
            modules[verb] = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lib_lora",
        description="Train LoRA: dataset import, tagging, caption editing and kohya-compatible LoRA training.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, module in _available_verbs().items():
        help_text = getattr(module, "HELP", "")
        verb_parser = sub.add_parser(
            verb,
            help=help_text.splitlines()[0] if help_text else None,
            description=help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # SUPPRESS: absent after the verb, it leaves the global flag (``--debug VERB``) as it was
        verb_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        module.add_arguments(verb_parser)
        verb_parser.set_defaults(_run=module.run, _accepts_extra=getattr(module, "ACCEPTS_EXTRA", False))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "_accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args._extra = extra
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("LIB_LORA_DEBUG") == "1"
    if not debug:  # third-party deprecation chatter is not for our users
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stdout must stay open until exit
        return 0
    except Exception as exc:  # an unexpected failure: one line, the traceback on request
        if debug:
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
