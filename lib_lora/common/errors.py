"""The one exception type that carries a message meant for the user."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad path, bad setting, bad file).

    The message is one clear sentence that names the thing and the problem; front ends print it as
    it is, without a traceback. ``hint`` is an optional second sentence saying what to do.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} {self.hint}"
