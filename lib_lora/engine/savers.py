"""Memory savers that move parts of the model away from the training device for a run.

Once latents are cached the VAE is not needed until a sample is drawn; once every caption is
encoded (``cache_text_encoder_outputs``) the text encoders are not either. :class:`Offload` moves
such modules' parameters and buffers to the CPU in place (``tensor.data``: the same Parameter
objects, ``requires_grad`` and dtype untouched), brings them back for a moment with :meth:`back`
(samples), and puts every tensor on its own device again on :meth:`remove` — after a normal end, a
Stop or an error alike. On a CPU-only host it changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn


class Offload:
    """Move ``modules`` to ``to`` (the CPU) while a run lasts; see the module docstring."""

    def __init__(self, modules: Iterable[nn.Module], to: torch.device | str = "cpu") -> None:
        self.modules = [m for m in modules if m is not None]
        self.to = torch.device(to)
        self.moved: list[tuple[torch.Tensor, torch.device]] = []
        self.away = False

    @property
    def bytes_moved(self) -> int:
        return sum(t.numel() * t.element_size() for t, _ in self.moved)

    @staticmethod
    def device_of(tensor: torch.Tensor) -> torch.device:
        return tensor.device

    @staticmethod
    def move(tensor: torch.Tensor, device: torch.device) -> None:
        """In place: the same tensor object (a Parameter stays that Parameter) on ``device``."""
        tensor.data = tensor.data.to(device)

    def _tensors(self) -> Iterator[torch.Tensor]:
        seen: set[int] = set()
        for module in self.modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    yield tensor

    def install(self) -> int:
        """Move every tensor that is not on ``to`` yet; returns how many moved."""
        with torch.no_grad():
            for tensor in self._tensors():
                if self.device_of(tensor) != self.to:
                    self.moved.append((tensor, self.device_of(tensor)))
                    self.move(tensor, self.to)
        self.away = bool(self.moved)
        return len(self.moved)

    def _put_back(self) -> None:
        with torch.no_grad():
            for tensor, device in self.moved:
                if self.device_of(tensor) != device:
                    self.move(tensor, device)

    def _send_away(self) -> None:
        with torch.no_grad():
            for tensor, _ in self.moved:
                if self.device_of(tensor) != self.to:
                    self.move(tensor, self.to)

    @contextlib.contextmanager
    def back(self) -> Iterator[None]:
        """The modules on their own devices for the duration of the block (a sample render)."""
        if not self.away:
            yield
            return
        self._put_back()
        self.away = False
        try:
            yield
        finally:
            self._send_away()
            self.away = True

    def remove(self) -> None:
        self._put_back()
        self.moved.clear()
        self.away = False

    def __enter__(self) -> Offload:
        try:
            self.install()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def offload_modules(bundle: Any, part: str) -> list[nn.Module]:
    """The modules of ``part`` (``vae`` | ``text``) a bundle lets us move away, [] if it has none."""
    getter = getattr(bundle, "offload_modules", None)
    if getter is None:
        return []
    return list(getter(part))
