"""Stand-ins for epoch scoring with planted signals: a renderer that "draws" what it was asked (the
epoch, prompt, weight and seed) and a tagger that reads it back with confidences that follow
functions of the epoch, so the true best epoch is known."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

CORE = ["blue hair", "red eyes", "ahoge"]


@dataclass(frozen=True)
class Fake:
    """What the stand-in renderer "draws": the tagger stand-in reads it back."""

    epoch: int
    prompt: str
    weight: float
    seed: int


def noise(*parts: object, size: float) -> float:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return (int.from_bytes(digest[:4], "little") / 2**32 - 0.5) * 2 * size


def epoch_of(path: str | Path) -> int:
    """The epoch a file holds: from its name (``t-000005``), else (the final file) its ``ss_epoch``."""
    match = re.search(r"-(\d{6})$", Path(path).stem)
    if match:
        return int(match.group(1))
    from lib_lora.formats.safetensors_io import read_header

    return int(read_header(path).metadata["ss_epoch"])


def planted_renderer(log: list):
    def render(paths, prompts, weight, seed, events, stop):
        log.append((len(paths), len(prompts)))
        epoch = epoch_of(paths[0])
        return [Fake(epoch, p, weight, seed + i) for i, p in enumerate(prompts)]

    return render


def planted_tagger(fidelity, flexibility, drift, jitter: float, core=CORE, trigger: str = "tchar"):
    """Core tags' confidence follows ``fidelity(epoch)``; a prompt's own tags ``flexibility(epoch)``;
    with the LoRA, the trigger-less prompts gain a foreign tag of weight ``drift(epoch)``."""

    def tag(images):
        out = []
        for im in images:
            e = im.epoch
            wobble = noise(e, im.seed, im.prompt, size=jitter)
            scores = {}
            if im.weight == 0:  # the base model
                scores = {"scenery": 0.9, "sky": 0.8}
            elif im.prompt.startswith(trigger):
                for t in core:
                    scores[t] = min(1.0, max(0.0, fidelity(e) + wobble))
                extra = [t.strip() for t in im.prompt.split(",")[1:]]
                for t in extra:
                    scores[t] = min(1.0, max(0.0, flexibility(e) + wobble))
            else:
                scores = {"scenery": 0.9, "sky": 0.8, "blue hair": min(1.0, max(0.0, drift(e) + wobble))}
            out.append(scores)
        return out

    return tag
