"""Per-sample caption processing, in sd-scripts' order (``BaseDataset.process_caption``).

1. ``caption_prefix`` / ``caption_suffix`` are joined on with a space.
2. Whole-caption dropout: with probability ``caption_dropout_rate``, or in every epoch divisible by
   ``caption_dropout_every_n_epochs`` (epochs are 1-based, as in sd-scripts' training loop) -> ``""``.
3. Otherwise: wildcards ``{a|b}`` (and one random line of a multi-line caption) with
   ``enable_wildcard``, else the first line only.
4. With ``shuffle_caption`` or ``caption_tag_dropout_rate``: split on ``caption_separator`` and
   strip; the first ``keep_tokens`` tags stay in front — or, when ``keep_tokens_separator``
   occurs, the text before it stays in front and text after a second occurrence stays at the
   end; the rest is shuffled, then each tag dropped with ``caption_tag_dropout_rate``; joined
   with ``", "``.
5. ``secondary_separator`` is replaced by ``caption_separator``.

Random draws happen in the same order as in sd-scripts, from the ``random.Random`` passed in.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from lib_lora.common.errors import UserError

_WILDCARD = re.compile(r"\{([^}]+)\}")


@dataclass(frozen=True)
class CaptionOptions:
    """Caption options with sd-scripts' names and defaults."""

    shuffle_caption: bool = False
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    caption_tag_dropout_rate: float = 0.0
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_separator: str = ","
    secondary_separator: str | None = None
    enable_wildcard: bool = False

    def validate(self) -> None:
        """Raise :class:`UserError` naming the option when a value is out of range."""
        for name in ("caption_tag_dropout_rate", "caption_dropout_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"{name} {value} is invalid: it must be between 0 and 1.")
        for name in ("keep_tokens", "caption_dropout_every_n_epochs"):
            value = getattr(self, name)
            if value < 0:
                raise UserError(f"{name} {value} is invalid: it must be 0 or more.")
        if not self.caption_separator:
            raise UserError("caption_separator is empty: it must be at least one character (default ',').")


def is_static(options: CaptionOptions) -> bool:
    """True when a caption comes out the same at every step and epoch (text-encoder outputs can be cached)."""
    return not (
        options.shuffle_caption
        or options.caption_tag_dropout_rate > 0
        or options.caption_dropout_rate > 0
        or options.caption_dropout_every_n_epochs > 0
        or options.enable_wildcard
    )


def _split(text: str, separator: str, drop_empty: bool) -> list[str]:
    tags = [t.strip() for t in text.split(separator)]
    return [t for t in tags if t] if drop_empty else tags


def _resolve_wildcards(caption: str, rng: random.Random) -> str:
    if "\n" in caption:
        caption = rng.choice(caption.split("\n"))
    # "{{" and "}}" are literal braces: park them on characters that do not occur in the caption
    open_mark, close_mark = "\u2985", "\u2986"
    while open_mark in caption or close_mark in caption:
        open_mark += "\u2985"
        close_mark += "\u2986"
    caption = caption.replace("{{", open_mark).replace("}}", close_mark)
    caption = _WILDCARD.sub(lambda m: rng.choice(m.group(1).split("|")), caption)
    return caption.replace(open_mark, "{").replace(close_mark, "}")


def process_caption(caption: str, options: CaptionOptions, epoch: int, rng: random.Random) -> str:
    """The caption one training sample sees at (1-based) ``epoch``, drawing randomness from ``rng``."""
    if options.caption_prefix:
        caption = options.caption_prefix + " " + caption
    if options.caption_suffix:
        caption = caption + " " + options.caption_suffix

    dropped = options.caption_dropout_rate > 0 and rng.random() < options.caption_dropout_rate
    every = options.caption_dropout_every_n_epochs
    if dropped or (every > 0 and epoch % every == 0):
        return ""

    if options.enable_wildcard:
        caption = _resolve_wildcards(caption, rng)
    else:
        caption = caption.split("\n")[0]

    sep = options.caption_separator
    if options.shuffle_caption or options.caption_tag_dropout_rate > 0:
        fixed: list[str] = []
        fixed_suffix: list[str] = []
        marker = options.keep_tokens_separator
        if marker and marker in caption:
            fixed_part, flex_part = caption.split(marker, 1)
            if marker in flex_part:
                flex_part, suffix_part = flex_part.split(marker, 1)
                fixed_suffix = _split(suffix_part, sep, drop_empty=True)
            fixed = _split(fixed_part, sep, drop_empty=True)
            flex = _split(flex_part, sep, drop_empty=True)
        else:
            # sd-scripts keeps empty tags here (a trailing comma gives a trailing ", ")
            flex = _split(caption.strip(), sep, drop_empty=False)
            if options.keep_tokens > 0:
                fixed, flex = flex[: options.keep_tokens], flex[options.keep_tokens :]
        if options.shuffle_caption:
            rng.shuffle(flex)
        if options.caption_tag_dropout_rate > 0:
            flex = [t for t in flex if rng.random() >= options.caption_tag_dropout_rate]
        caption = ", ".join(fixed + flex + fixed_suffix)

    if options.secondary_separator:
        caption = caption.replace(options.secondary_separator, sep)
    return caption
