"""Sample prompts in sd-scripts' format, and where sample images go.

One prompt per line, ``#`` comments; options after `` --``: ``--n`` negative prompt, ``--w`` /
``--h`` size (default 512, floored to 8, at least 64), ``--d`` seed, ``--s`` steps (default 30,
1..1000), ``--l`` CFG scale (7.5), ``--ss`` sampler.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib_lora.common.errors import UserError

_OPTION = re.compile(r"\s--(n|w|h|d|s|l|ss)\s+")


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    seed: int | None = None
    steps: int = 30
    cfg_scale: float = 7.5
    sampler: str | None = None


def parse_prompt_line(line: str, default_size: int = 512) -> SamplePrompt | None:
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    parts = _OPTION.split(" " + line)
    prompt = parts[0].strip()
    values: dict[str, str] = {}
    for key, value in zip(parts[1::2], parts[2::2]):
        values[key] = value.strip()
    try:
        width = max(64, int(values.get("w", default_size)) // 8 * 8)
        height = max(64, int(values.get("h", default_size)) // 8 * 8)
        steps = min(1000, max(1, int(values.get("s", 30))))
        cfg = float(values.get("l", 7.5))
        seed = int(values["d"]) if "d" in values else None
    except ValueError:
        raise UserError(f"Sample prompt {line!r} has an option that is not a number.") from None
    return SamplePrompt(prompt, values.get("n", ""), width, height, seed, steps, cfg, values.get("ss"))


def load_sample_prompts(text_or_path: str | None, default_size: int = 512) -> list[SamplePrompt]:
    """Prompts from a file path, or from the text itself (one prompt per line)."""
    if not text_or_path:
        return []
    text = text_or_path
    if "\n" not in text_or_path and os.path.isfile(text_or_path):
        try:
            text = Path(text_or_path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"Sample prompt file {text_or_path} is not UTF-8 text.") from None
    prompts = [p for p in (parse_prompt_line(line, default_size) for line in text.splitlines()) if p]
    return prompts


def sample_path(folder: Path, name: str, epoch: int | None, step: int, index: int, seed: int | None) -> Path:
    """sd-scripts' name: ``<name>_<e000005|000123>_<idx:02d>_<YYYYmmddHHMMSS>[_<seed>].png``."""
    stamp = time.strftime("%Y%m%d%H%M%S")
    when = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    suffix = f"_{seed}" if seed is not None else ""
    return folder / f"{name}_{when}_{index:02d}_{stamp}{suffix}.png"


def default_sample_prompt(plan: Any, cfg: Any) -> str:
    """The sample prompt of a run whose prompt box is empty (both hosts, as the webui's built-in
    trainer previews): the activation text and the dataset's most frequent tags."""
    from lib_lora.jobs.train import default_activation_text

    activation = cfg.activation_text if cfg.activation_text is not None else default_activation_text(plan.scan)
    counts: Counter[str] = Counter()
    for tags in plan.scan.tag_frequency().values():
        counts.update(tags)
    words = [w.strip() for w in activation.split(",") if w.strip()]
    words += [tag for tag, _ in counts.most_common(12) if tag not in words][: max(0, 8 - len(words))]
    return ", ".join(words) or "a picture"
