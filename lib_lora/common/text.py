"""Words in messages: counts with the right plural ("1 image", "2 images")."""

from __future__ import annotations

_IRREGULAR = {"copy": "copies", "entry": "entries", "is": "are", "was": "were", "has": "have"}


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``"1 image"``, ``"0 images"``, ``"3 copies"``: the count and the noun in the right number.
    ``many`` overrides the plural form."""
    return f"{count} {noun if count == 1 else (many or _IRREGULAR.get(noun) or noun + 's')}"


def plural_word(count: int, noun: str, many: str | None = None) -> str:
    """The noun alone, in the right number for ``count`` (``"image"`` / ``"images"``)."""
    return noun if count == 1 else (many or _IRREGULAR.get(noun) or noun + "s")


def sentence(text: str) -> str:
    """``text`` with its first letter upper-cased and the rest as it is (``str.capitalize`` would
    lower-case the rest: a folder ``My Data/Ärger`` in the text would read ``my data/ärger``)."""
    return text[:1].upper() + text[1:]
