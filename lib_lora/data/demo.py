"""A small generated dataset for the quick start: ``N_name`` folders, varied aspect ratios.

Every image is drawn from a fixed seed (a colour gradient with a few shapes), so the same call
always writes the same bytes. The folders are coloured so a tagger gives them different tags: the
red folder's images look "red", the blue folder's "blue". Repeats are low (29 images x repeats per
epoch) so a first run on a CPU takes minutes, not hours. Captions are optional: ``"none"`` (leave
them to the tagger) or ``"simple"`` (the folder's name and a few words per image).
"""

from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from lib_lora.common.errors import UserError
from lib_lora.common.fsutil import atomic_write_bytes, atomic_write_text

CAPTION_MODES = ("none", "simple")


@dataclass(frozen=True)
class DemoSubset:
    repeats: int
    name: str
    colour: tuple[int, int, int]  # the dominant colour
    words: tuple[str, ...]  # the "simple" captions' tags after the name
    sizes: tuple[tuple[int, int], ...]  # one image per size (width, height)

    @property
    def folder(self) -> str:
        return f"{self.repeats}_{self.name}"


DEMO_SUBSETS: tuple[DemoSubset, ...] = (
    DemoSubset(
        3,
        "redfox",
        (214, 48, 38),
        ("red theme", "simple background"),
        ((512, 768), (768, 512), (640, 640), (512, 704), (576, 832)),
    ),
    DemoSubset(
        2,
        "bluebird",
        (40, 82, 210),
        ("blue sky", "outdoors"),
        ((768, 512), (512, 512), (832, 576), (512, 640)),
    ),
    DemoSubset(
        2,
        "greenleaf",
        (52, 168, 70),
        ("green theme", "nature"),
        ((640, 512), (512, 768), (704, 704)),
    ),
)
SHAPES = ("circle", "square", "triangle", "star")


@dataclass
class DemoResult:
    root: Path
    folders: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    captions: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        text = f"wrote {len(self.images)} images in {len(self.folders)} folders to {self.root}"
        return text + (f" with {len(self.captions)} captions" if self.captions else " (no captions)")


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    import math

    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.45
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def draw_image(subset: DemoSubset, index: int, size: tuple[int, int]) -> tuple[Image.Image, list[str]]:
    """One demo image and the words that describe it (for the "simple" captions)."""
    rng = random.Random(f"lib_lora-demo/{subset.name}/{index}")
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    light = _mix(subset.colour, (255, 255, 255), 0.55)
    dark = _mix(subset.colour, (0, 0, 0), 0.35)
    for y in range(height):  # vertical gradient, dominant colour throughout
        draw.line([(0, y), (width, y)], fill=_mix(light, dark, y / max(1, height - 1)))
    words = []
    for _ in range(rng.randint(2, 4)):
        shape = rng.choice(SHAPES)
        r = rng.uniform(0.08, 0.2) * min(width, height)
        cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
        fill = _mix(subset.colour, (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255)), 0.3)
        outline = _mix(fill, (0, 0, 0), 0.5)
        box = [cx - r, cy - r, cx + r, cy + r]
        if shape == "circle":
            draw.ellipse(box, fill=fill, outline=outline, width=3)
        elif shape == "square":
            draw.rectangle(box, fill=fill, outline=outline, width=3)
        elif shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill, outline=outline)
        else:
            draw.polygon(_star(cx, cy, r), fill=fill, outline=outline)
        words.append(shape)
    return image, sorted(set(words))


def write_demo_dataset(root: str | os.PathLike, captions: str = "none") -> DemoResult:
    """Write the demo dataset into ``root`` (created; must not exist or be an empty folder).

    Returns what was written. Raises UserError for a bad caption mode or a folder that is not
    empty (nothing is written then)."""
    if captions not in CAPTION_MODES:
        raise UserError(f"Demo captions {captions!r} are not known; use one of {', '.join(CAPTION_MODES)}.")
    root = Path(root).expanduser()
    if root.exists():
        if not root.is_dir():
            raise UserError(f"{root} is a file, not a folder for the demo dataset.")
        if any(root.iterdir()):
            raise UserError(f"{root} is not empty; choose a new folder for the demo dataset (nothing was written).")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the demo dataset folder {root}: {exc.strerror or exc}.") from None
    result = DemoResult(root)
    for subset in DEMO_SUBSETS:
        folder = root / subset.folder
        folder.mkdir(exist_ok=True)
        result.folders.append(folder)
        for index, size in enumerate(subset.sizes):
            image, words = draw_image(subset, index, size)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=True)
            path = folder / f"{subset.name}_{index + 1:02d}.png"
            atomic_write_bytes(path, buffer.getvalue(), durable=False)
            result.images.append(path)
            if captions == "simple":
                text = ", ".join([subset.name, *subset.words, *words])
                caption = path.with_suffix(".txt")
                atomic_write_text(caption, text + "\n", durable=False)
                result.captions.append(caption)
    return result
