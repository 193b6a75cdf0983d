"""Per-instance patches of host modules for the length of a ``with`` block.

A patch replaces something on the host's own modules (an attention forward, float8 weights) while a run
trains and puts it back exactly afterwards, also after an error half-way through ``install``.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from torch import nn

_MISSING = object()


def replace_forward(module: nn.Module, forward: Callable[..., Any]) -> Any:
    """Bind ``forward`` to ``module`` (this instance only); returns what :func:`restore_forward` needs."""
    saved = module.__dict__.get("forward", _MISSING)
    module.forward = types.MethodType(forward, module)
    return saved


def restore_forward(module: nn.Module, saved: Any) -> None:
    """Undo :func:`replace_forward`: the instance's own forward again, or the class's."""
    if saved is _MISSING:
        module.__dict__.pop("forward", None)
    else:
        module.__dict__["forward"] = saved


class ModulePatch:
    """``install`` on enter (rolled back by ``remove`` if it fails part-way), ``remove`` on exit."""

    def install(self) -> int:
        raise NotImplementedError

    def remove(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        try:
            self.install()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()
