"""The arithmetic of epoch scoring: per-image scores from tagger confidences, the F-beta that
combines them, and the pick with its noise check. Pure Python; no images, files or models here.

Per image (tagger confidences are probabilities 0..1, tags in caption form: spaces, lower case):

- fidelity = mean confidence of the character's core tags on an image from the activation prompt
  (a soft tag recall: 1 when every core tag is clearly there);
- flexibility = mean confidence of a test prompt's own tags (outfit, place, pose the dataset never
  had) on the image from that prompt with the activation tag (WD-tagger prompt-following, as
  Bikini-Plus without the rarity weights);
- drift = 1 - cosine similarity of the tag vectors of the same prompt and seed without the
  activation tag, with and without the LoRA (0 = the LoRA leaves the base model's images alone).

Per seed and epoch, the three means combine as ``F_beta(fidelity, control)`` with
``control = (flexibility + (1 - drift)) / 2`` and
``F_beta = (1 + beta²) · fidelity · control / (beta² · control + fidelity)`` (beta > 1 favours
fidelity — beta times as much — ; a harmonic mean, so an epoch must do well on both).

The pick is the epoch with the best mean over seeds. It is *confident* only when it beats the
runner-up on the same seeds by more than two standard errors of the paired differences; otherwise
the epochs within that margin are reported as a tie. A margin below ``MIN_MARGIN`` (what the
table's three decimals cannot show) is a tie whatever the noise: seeds that all differ by the
same hair (noise 0) do not make a pick confident.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

DEFAULT_BETA = 2.0
NOISE_SIGMAS = 2.0  # a pick must beat the runner-up by this many standard errors
MIN_MARGIN = 0.001  # ... and by at least this much (the scores are shown to 3 decimals)


def normalize_tag(tag: str) -> str:
    """Caption form: lower case, spaces for underscores, no escapes (``\\(`` -> ``(``)."""
    return tag.strip().lower().replace("_", " ").replace("\\(", "(").replace("\\)", ")")


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def tag_confidence(scores: Mapping[str, float], tags: Iterable[str]) -> float:
    """Mean confidence of ``tags`` in ``scores`` (a missing tag counts 0); 0 without tags."""
    tags = [normalize_tag(t) for t in tags]
    return mean(float(scores.get(t, 0.0)) for t in tags) if tags else 0.0


def cosine_drift(with_lora: Mapping[str, float], without: Mapping[str, float]) -> float:
    """1 - cosine similarity of two tag-confidence vectors (0 = same tags, 1 = nothing shared)."""
    keys = set(with_lora) | set(without)
    dot = sum(with_lora.get(k, 0.0) * without.get(k, 0.0) for k in keys)
    na = math.sqrt(sum(v * v for v in with_lora.values()))
    nb = math.sqrt(sum(v * v for v in without.values()))
    if na == 0 and nb == 0:
        return 0.0
    if na == 0 or nb == 0:
        return 1.0
    return max(0.0, min(1.0, 1.0 - dot / (na * nb)))


def f_beta(fidelity: float, control: float, beta: float = DEFAULT_BETA) -> float:
    """The weighted harmonic mean of fidelity and control (0 when either is 0)."""
    if fidelity <= 0 or control <= 0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * fidelity * control / (b2 * control + fidelity)


@dataclass(frozen=True)
class SeedScore:
    """One epoch at one seed."""

    fidelity: float
    flexibility: float
    drift: float

    def combined(self, beta: float = DEFAULT_BETA) -> float:
        return f_beta(self.fidelity, (self.flexibility + (1.0 - self.drift)) / 2, beta)


@dataclass
class EpochScore:
    label: str  # the file's stem, e.g. name-000004
    epoch: int | None
    seeds: list[SeedScore]
    beta: float = DEFAULT_BETA
    validation_loss: float | None = None

    @property
    def fidelity(self) -> float:
        return mean(s.fidelity for s in self.seeds)

    @property
    def flexibility(self) -> float:
        return mean(s.flexibility for s in self.seeds)

    @property
    def drift(self) -> float:
        return mean(s.drift for s in self.seeds)

    @property
    def per_seed(self) -> list[float]:
        return [s.combined(self.beta) for s in self.seeds]

    @property
    def score(self) -> float:
        return mean(self.per_seed)

    @property
    def spread(self) -> float:
        """Standard error of the combined score over seeds (0 with one seed)."""
        values = self.per_seed
        if len(values) < 2:
            return 0.0
        m = mean(values)
        return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))


@dataclass
class Pick:
    best: int | None  # index into the scores; None when there is nothing to pick from
    confident: bool
    tied: list[int] = field(default_factory=list)  # indices within the seed noise of the best (best included)
    reason: str = ""


def _paired_margin(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean of a - b over seeds and its standard error (inf with fewer than two seeds)."""
    diffs = [x - y for x, y in zip(a, b)]
    m = mean(diffs)
    if len(diffs) < 2:
        return m, math.inf
    var = sum((d - m) ** 2 for d in diffs) / (len(diffs) - 1)
    return m, math.sqrt(var / len(diffs))


def _describe(s: EpochScore, fidelity_measured: bool = True) -> str:
    parts = [
        f"fidelity {s.fidelity:.2f}" if fidelity_measured else "fidelity not measured",
        f"flexibility {s.flexibility:.2f}",
        f"drift {s.drift:.2f}",
    ]
    if s.validation_loss is not None:
        parts.append(f"validation loss {s.validation_loss:.4f}")
    return ", ".join(parts)


def pick_best(scores: Sequence[EpochScore], sigmas: float = NOISE_SIGMAS, fidelity_measured: bool = True) -> Pick:
    """The recommended epoch and why, in words; see the module docstring for the noise rule.
    ``fidelity_measured`` False (no core tags): the words do not quote the stand-in fidelity of 1."""
    if not scores:
        return Pick(None, False, [], "Nothing to score.")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i].score, i))
    best = order[0]
    top = scores[best]
    if len(scores) == 1:
        return Pick(best, False, [best], f"Only one file ({top.label}); nothing to compare it with.")
    seeds = len(top.seeds)
    tied = [best]
    for i in order[1:]:
        margin, error = _paired_margin(top.per_seed, scores[i].per_seed)
        if not margin > max(sigmas * error, MIN_MARGIN):
            tied.append(i)
    if seeds < 2:
        same = [i for i in order if top.score - scores[i].score < MIN_MARGIN]  # equal in the table's 3 decimals
        if len(same) > 1:
            names = ", ".join(scores[i].label for i in sorted(same))
            return Pick(
                best, False, order,
                f"No confident pick: with one seed the noise cannot be measured, and {names} score the same "
                f"({top.score:.3f}; {_describe(top, fidelity_measured)}); score again with more seeds.",
            )  # fmt: skip
        names = ", ".join(scores[i].label for i in order[:3])
        return Pick(
            best, False, order,
            f"No confident pick: with one seed the noise cannot be measured. {top.label} scores highest "
            f"({top.score:.3f}; {_describe(top, fidelity_measured)}), ahead of {names.split(', ', 1)[-1]}; score again with more seeds.",
        )  # fmt: skip
    if len(tied) == 1:
        runner = scores[order[1]]
        return Pick(
            best, True, tied,
            f"{top.label} is the best epoch: score {top.score:.3f} against {runner.score:.3f} for the next best "
            f"({runner.label}), more than the seed noise (±{top.spread:.3f}); {_describe(top, fidelity_measured)}.",
        )  # fmt: skip
    names = ", ".join(scores[i].label for i in sorted(tied))
    return Pick(
        best, False, sorted(tied),
        f"No confident pick: {names} are within the seed noise of each other (best {top.label} at {top.score:.3f} "
        f"±{top.spread:.3f}; {_describe(top, fidelity_measured)}). Compare these by eye in the grid, or score with more seeds.",
    )  # fmt: skip
