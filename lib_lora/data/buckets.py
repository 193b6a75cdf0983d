"""Aspect-ratio buckets, computed exactly as sd-scripts does (so users see the same buckets).

* :func:`make_bucket_resolutions` lists the predefined buckets for a resolution's area.
* :class:`BucketSettings` holds the user's bucket options and checks them (:meth:`BucketSettings.validate`).
* :class:`BucketManager` picks an image's bucket and the size it is resized to before the crop.

Pure Python (no numpy): sd-scripts' float arithmetic is IEEE double either way, so the choices are equal.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from lib_lora.common.errors import UserError

Size = tuple[int, int]  # (width, height)
Family = Literal["sd1", "sd2", "sdxl"]

# sd-scripts' defaults (train_util.add_dataset_arguments)
DEFAULT_MIN_BUCKET_RESO = 256
DEFAULT_MAX_BUCKET_RESO = 1024
DEFAULT_BUCKET_RESO_STEPS = 64

# bucket_reso_steps must be divisible by this (train_network.py: 64, sdxl_train_network.py: 32)
STEP_DIVISOR: dict[str, int] = {"sd1": 64, "sd2": 64, "sdxl": 32}


def make_bucket_resolutions(
    resolution: Size,
    min_size: int = DEFAULT_MIN_BUCKET_RESO,
    max_size: int = DEFAULT_MAX_BUCKET_RESO,
    steps: int = DEFAULT_BUCKET_RESO_STEPS,
) -> list[Size]:
    """The predefined buckets for ``resolution`` (width, height), sorted by (width, height), no duplicates.

    The area of ``resolution`` is the budget: the square that fits it, then for every width from
    ``min_size`` to ``max_size`` in ``steps`` the tallest height (a multiple of ``steps``, at most
    ``max_size``) within the area, and its transpose, when that height is at least ``min_size``.
    """
    area = resolution[0] * resolution[1]
    found: set[Size] = set()
    side = int(math.sqrt(area) // steps) * steps
    found.add((side, side))
    width = min_size
    while width <= max_size:
        height = min(max_size, int((area // width) // steps) * steps)
        if height >= min_size:
            found.add((width, height))
            found.add((height, width))
        width += steps
    return sorted(found)


@dataclass(frozen=True)
class BucketSettings:
    """The bucket options, with sd-scripts' names and defaults."""

    resolution: Size = (512, 512)
    enable_bucket: bool = False
    min_bucket_reso: int = DEFAULT_MIN_BUCKET_RESO
    max_bucket_reso: int = DEFAULT_MAX_BUCKET_RESO
    bucket_reso_steps: int = DEFAULT_BUCKET_RESO_STEPS
    bucket_no_upscale: bool = False

    @property
    def effective_min_bucket_reso(self) -> int:
        """``min_bucket_reso`` rounded down to a multiple of ``bucket_reso_steps`` (sd-scripts does this)."""
        step = max(1, self.bucket_reso_steps)
        return self.min_bucket_reso - self.min_bucket_reso % step

    @property
    def effective_max_bucket_reso(self) -> int:
        """``max_bucket_reso`` rounded up to a multiple of ``bucket_reso_steps`` (sd-scripts does this)."""
        step = max(1, self.bucket_reso_steps)
        if self.max_bucket_reso % step == 0:
            return self.max_bucket_reso
        return self.max_bucket_reso + step - self.max_bucket_reso % step

    def validate(self, family: str | None = None) -> list[str]:
        """Check the settings as sd-scripts does; return warnings, raise :class:`UserError` on a bad value.

        Rules (sd-scripts ``adjust_min_max_bucket_reso_by_steps``, ``verify_bucket_reso_steps``,
        ``BucketManager``): min/max are rounded to ``bucket_reso_steps`` (min down, max up; a
        warning); then ``min_bucket_reso <= min(resolution)`` and ``max(resolution) <=
        max_bucket_reso``; ``bucket_reso_steps`` divisible by 64 for SD1/SD2 and by 32 for SDXL
        (``family`` None: no family rule). Bucket options are only checked with ``enable_bucket``.
        Without buckets the resolution must be a multiple of 8 (the VAE's scale; our rule).
        """
        width, height = self.resolution
        if width <= 0 or height <= 0:
            raise UserError(f"resolution {width},{height} is invalid: both sides must be positive.")
        if not self.enable_bucket:
            if width % 8 or height % 8:
                raise UserError(
                    f"resolution {width},{height} is invalid without buckets: both sides must be multiples of 8."
                )
            return []
        step = self.bucket_reso_steps
        if step <= 0:
            raise UserError(f"bucket_reso_steps {step} is invalid: it must be a positive number of pixels.")
        if family is not None:
            divisor = STEP_DIVISOR.get(family)
            if divisor is None:
                raise ValueError(f"unknown model family {family!r}")
            if step % divisor:
                raise UserError(
                    f"bucket_reso_steps {step} is invalid for {family.upper()}: it must be divisible by {divisor}."
                )
        elif step % 8:
            raise UserError(f"bucket_reso_steps {step} is invalid: it must be divisible by 8.")
        if self.min_bucket_reso <= 0:
            raise UserError(f"min_bucket_reso {self.min_bucket_reso} is invalid: it must be positive.")
        warnings = []
        lo, hi = self.effective_min_bucket_reso, self.effective_max_bucket_reso
        if lo != self.min_bucket_reso:
            warnings.append(
                f"min_bucket_reso adjusted to a multiple of bucket_reso_steps: {self.min_bucket_reso} -> {lo}"
            )
        if hi != self.max_bucket_reso:
            warnings.append(
                f"max_bucket_reso adjusted to a multiple of bucket_reso_steps: {self.max_bucket_reso} -> {hi}"
            )
        if lo <= 0:
            raise UserError(
                f"min_bucket_reso {self.min_bucket_reso} is invalid: it is smaller than bucket_reso_steps ({step})."
            )
        if min(width, height) < lo:
            raise UserError(
                f"min_bucket_reso {lo} is larger than the resolution's shorter side ({min(width, height)}): "
                "lower min_bucket_reso or raise the resolution."
            )
        if max(width, height) > hi:
            raise UserError(
                f"max_bucket_reso {hi} is smaller than the resolution's longer side ({max(width, height)}): "
                "raise max_bucket_reso or lower the resolution."
            )
        if self.bucket_no_upscale:
            warnings.append(
                "min_bucket_reso and max_bucket_reso are ignored with bucket_no_upscale: "
                "buckets follow the image sizes."
            )
        return warnings


@dataclass(frozen=True)
class BucketChoice:
    """Where one image goes: its bucket, the size it is resized to (covering the bucket) and the
    bucket's aspect-ratio error (bucket ratio minus image ratio, signed, as sd-scripts)."""

    bucket: Size
    resized: Size
    ar_error: float


class BucketError(UserError):
    """An image that cannot be put in any bucket (bucket_no_upscale and smaller than a step)."""


class BucketManager:
    """Chooses buckets as sd-scripts' ``BucketManager.select_bucket`` does.

    With ``enable_bucket`` off there is one bucket, the resolution itself (cover-resize, then crop).
    With ``bucket_no_upscale`` there is no predefined list: each image's bucket is derived from
    its own size (shrunk to the resolution's area when larger), so buckets appear on demand.
    """

    def __init__(self, settings: BucketSettings) -> None:
        settings.validate()  # raises UserError on settings that cannot make buckets
        self.settings = settings
        width, height = settings.resolution
        self.max_area = width * height
        self.no_upscale = settings.enable_bucket and settings.bucket_no_upscale
        self.steps = settings.bucket_reso_steps
        if not settings.enable_bucket:
            self.predefined: list[Size] = [(width, height)]
        elif self.no_upscale:
            self.predefined = []
        else:
            self.predefined = make_bucket_resolutions(
                settings.resolution,
                settings.effective_min_bucket_reso,
                settings.effective_max_bucket_reso,
                settings.bucket_reso_steps,
            )
        self._predefined_set = set(self.predefined)
        self._predefined_ratios = [w / h for w, h in self.predefined]

    def select(self, image_size: Size) -> BucketChoice:
        """The bucket and resized size for an image of ``image_size`` (width, height)."""
        image_width, image_height = image_size
        if image_width <= 0 or image_height <= 0:
            raise BucketError(f"image size {image_width}x{image_height} is invalid.")
        aspect_ratio = image_width / image_height
        if not self.no_upscale:
            reso = (image_width, image_height)
            if reso not in self._predefined_set:
                errors = [abs(r - aspect_ratio) for r in self._predefined_ratios]
                reso = self.predefined[errors.index(min(errors))]  # first of equals, like argmin
            if aspect_ratio > reso[0] / reso[1]:  # image relatively wider: match heights
                scale = reso[1] / image_height
            else:
                scale = reso[0] / image_width
            resized = (int(image_width * scale + 0.5), int(image_height * scale + 0.5))
        else:
            resized = self._no_upscale_size(image_width, image_height, aspect_ratio)
            reso = (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)
            if reso[0] <= 0 or reso[1] <= 0:
                raise BucketError(
                    f"image size {image_width}x{image_height} is too small or too narrow for bucket_no_upscale: "
                    f"a side would be under bucket_reso_steps ({self.steps} px)."
                )
        return BucketChoice(bucket=reso, resized=resized, ar_error=reso[0] / reso[1] - aspect_ratio)

    def _round_to_steps(self, x: float) -> int:
        rounded = int(x + 0.5)
        return rounded - rounded % self.steps

    def _no_upscale_size(self, image_width: int, image_height: int, aspect_ratio: float) -> Size:
        if image_width * image_height <= self.max_area:
            return (image_width, image_height)  # never upscaled
        # shrink to the resolution's area keeping the ratio; round the width or the height to the
        # step and derive the other side, whichever keeps the aspect ratio closer
        resized_width = math.sqrt(self.max_area * aspect_ratio)
        resized_height = self.max_area / resized_width
        width_rounded = self._round_to_steps(resized_width)
        height_in_wr = self._round_to_steps(width_rounded / aspect_ratio)
        height_rounded = self._round_to_steps(resized_height)
        width_in_hr = self._round_to_steps(height_rounded * aspect_ratio)
        # sd-scripts divides by zero here for extreme ratios; treat such a candidate as unusable
        ar_width_rounded = width_rounded / height_in_wr if height_in_wr else math.inf
        ar_height_rounded = width_in_hr / height_rounded if height_rounded else math.inf
        if abs(ar_width_rounded - aspect_ratio) < abs(ar_height_rounded - aspect_ratio):
            return (width_rounded, int(width_rounded / aspect_ratio + 0.5))
        return (int(height_rounded * aspect_ratio + 0.5), height_rounded)


def crop_offsets(resized: Size, bucket: Size, random_crop: bool, rng: random.Random | None = None) -> tuple[int, int]:
    """(left, top) of the bucket-sized window in the resized image: centred, or uniformly random.

    With ``random_crop`` the width offset is drawn before the height offset (sd-scripts' order).
    """
    offsets = []
    for length, target in zip(resized, bucket):
        excess = length - target
        if excess < 0:
            raise ValueError(f"resized size {resized} does not cover bucket {bucket}")
        if excess == 0:
            offsets.append(0)
        elif random_crop:
            offsets.append((rng or random).randint(0, excess))
        else:
            offsets.append(excess // 2)
    return offsets[0], offsets[1]


def crop_ltrb(bucket: Size, original_size: Size) -> tuple[float, float, float, float]:
    """SDXL's crop box as sd-scripts computes it (``BucketManager.get_crop_ltrb``).

    It is the original image *fitted inside* the bucket (Stability AI's preprocessing), centred:
    (left, top, right, bottom), possibly fractional. Random crops are not reflected (as sd-scripts).
    """
    bucket_ar = bucket[0] / bucket[1]
    image_ar = original_size[0] / original_size[1]
    if bucket_ar > image_ar:
        resized_width = bucket[1] * image_ar
        resized_height = bucket[1]
    else:
        resized_width = bucket[0]
        resized_height = bucket[0] / image_ar
    left = (bucket[0] - resized_width) // 2
    top = (bucket[1] - resized_height) // 2
    return left, top, left + resized_width, top + resized_height


def crop_top_left(ltrb: tuple[float, float, float, float], target_size: Size, flipped: bool) -> tuple[int, int]:
    """SDXL's ``crop_top_left`` conditioning (top, left) from a ``crop_ltrb``; mirrored when flipped."""
    if flipped:
        left = target_size[0] - ltrb[2]
    else:
        left = ltrb[0]
    return int(ltrb[1]), int(left)
