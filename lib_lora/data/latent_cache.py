"""VAE latents computed once per (image, bucket, flip), in memory or in sd-scripts' per-image files.

Disk files are sd-scripts': ``<stem>_<W:04d>x<H:04d>_sd.npz`` (``_sdxl.npz``) beside the image,
W, H = the image's size, with ``latents`` (float32 [4, h/8, w/8], *unscaled*), ``original_size``
[W, H], ``crop_ltrb`` and, with flip augmentation, ``latents_flipped``. sd-scripts reads them as
they are. Extra keys (``lib_lora_*``) record the VAE, the image's mtime and byte size and the
resize, so a file made from another VAE, an edited image or another bucket is encoded again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lib_lora.common.errors import UserError
from lib_lora.common.fsutil import atomic_open
from lib_lora.data.buckets import BucketChoice, Size
from lib_lora.data.dataset import BucketPlan, Sample
from lib_lora.data.images import Transformed, load_image_rgb, transform
from lib_lora.events import Events, StopToken

Encoder = Callable[[torch.Tensor], torch.Tensor]
"""Images [B, 3, H, W] float32 in [-1, 1] (CPU) -> unscaled latents [B, C, H/8, W/8]."""

FORMAT_VERSION = 1
STAGE = "caching latents"


@dataclass
class LatentEntry:
    """One image's cached latents: tensors in memory, or the npz file that holds them."""

    original_size: Size
    crop_ltrb: tuple[float, float, float, float]
    bucket: Size
    latents: torch.Tensor | None = None
    latents_flipped: torch.Tensor | None = None
    npz: Path | None = None


@dataclass(frozen=True)
class CacheReport:
    encoded: int  # images encoded now
    reused: int  # valid files found on disk
    written: int  # files written
    fallback: int  # images the fallback encoder had to redo (NaN/inf from the main one)


class LatentCache:
    """Latents for every image of a :class:`BucketPlan`.

    ``encode`` returns unscaled latents (the VAE's sample/mean, before ``scaling_factor``).
    ``vae_id`` identifies the VAE and its precision (a file made by another is re-encoded).
    ``encode_fallback`` (e.g. the VAE in float32) re-encodes images whose latents are NaN/inf.
    """

    def __init__(
        self,
        encode: Encoder,
        vae_id: str,
        to_disk: bool = False,
        family_suffix: str = "_sd",
        batch_size: int = 1,
        encode_fallback: Encoder | None = None,
        workers: int | None = None,
    ) -> None:
        if family_suffix not in ("_sd", "_sdxl"):
            raise ValueError(f"family_suffix must be '_sd' or '_sdxl', not {family_suffix!r}")
        if batch_size < 1:
            raise UserError(f"vae_batch_size {batch_size} is invalid: it must be 1 or more.")
        self.encode = encode
        self.encode_fallback = encode_fallback
        self.vae_id = vae_id
        self.to_disk = to_disk
        self.suffix = family_suffix + ".npz"
        self.batch_size = batch_size
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.flip_aug = False
        self._entries: dict[int, LatentEntry] = {}

    # -- files ----------------------------------------------------------------------------------

    def npz_path(self, image: str | os.PathLike, original_size: Size) -> Path:
        """sd-scripts' cache file name: ``<stem>_<W:04d>x<H:04d>_sd.npz`` beside the image."""
        image = Path(image)
        return image.with_name(f"{image.stem}_{original_size[0]:04d}x{original_size[1]:04d}{self.suffix}")

    @staticmethod
    def _image_stamp(image: Path) -> tuple[int, int]:
        stat = image.stat()
        return stat.st_mtime_ns, stat.st_size

    def _file_is_valid(self, npz: Path, image: Path, choice: BucketChoice, flip_aug: bool) -> bool:
        if not npz.is_file():
            return False
        expected = (choice.bucket[1] // 8, choice.bucket[0] // 8)
        try:
            with np.load(npz) as data:
                keys = set(data.files)
                if not {"latents", "original_size", "crop_ltrb", "lib_lora_vae"} <= keys or "alpha_mask" in keys:
                    return False
                if tuple(data["latents"].shape[1:]) != expected or data["latents"].ndim != 3:
                    return False
                if flip_aug and ("latents_flipped" not in keys or tuple(data["latents_flipped"].shape[1:]) != expected):
                    return False
                mtime, size = self._image_stamp(image)
                return (
                    str(data["lib_lora_vae"]) == self.vae_id
                    and int(data["lib_lora_version"]) == FORMAT_VERSION
                    and int(data["lib_lora_image_mtime_ns"]) == mtime
                    and int(data["lib_lora_image_bytes"]) == size
                    and tuple(int(v) for v in data["lib_lora_resized"]) == tuple(choice.resized)
                )
        except Exception:  # unreadable / truncated / other layout: encode again
            return False

    def _write(self, npz: Path, image: Path, choice: BucketChoice, entry: LatentEntry) -> None:
        mtime, size = self._image_stamp(image)
        arrays = {
            "latents": entry.latents.float().numpy(),
            "original_size": np.array(entry.original_size),
            "crop_ltrb": np.array(entry.crop_ltrb),
            "lib_lora_version": np.array(FORMAT_VERSION),
            "lib_lora_vae": np.array(self.vae_id),
            "lib_lora_image_mtime_ns": np.array(mtime, dtype=np.int64),
            "lib_lora_image_bytes": np.array(size, dtype=np.int64),
            "lib_lora_resized": np.array(choice.resized),
        }
        if entry.latents_flipped is not None:
            arrays["latents_flipped"] = entry.latents_flipped.float().numpy()
        with atomic_open(npz, "wb") as handle:
            np.savez(handle, **arrays)

    # -- building -------------------------------------------------------------------------------

    def prepare(
        self,
        plan: BucketPlan,
        flip_aug: bool = False,
        events: Events | None = None,
        stop: StopToken | None = None,
        paths: Sequence[str | os.PathLike] | None = None,
    ) -> CacheReport:
        """Encode every image of ``plan`` (and its mirror image with ``flip_aug``) not yet cached.

        Batches of ``batch_size`` images share a bucket. Images are centre-cropped (latent
        caching and ``random_crop`` exclude each other, as in sd-scripts). ``paths`` defaults to
        the plan's scanned image paths. Stops with ``StopRequested`` between batches; files
        already written stay valid.
        """
        events = events or Events()
        if paths is None:
            if plan.scan is None:
                raise ValueError("plan has no scan: pass the image paths")
            paths = [item.path for item in plan.scan.items]
        image_paths = [Path(p) for p in paths]
        self.flip_aug = flip_aug
        self._entries = {}

        todo: list[int] = []
        disk_targets: dict[int, Path] = {}
        claimed: dict[Path, int] = {}
        reused = 0
        for i, (path, choice) in enumerate(zip(image_paths, plan.choices)):
            if self.to_disk:
                npz = self.npz_path(path, plan.sizes[i])
                if npz in claimed:  # "a.png" and "a.jpg" of one size: the second stays in memory
                    other = image_paths[claimed[npz]].name
                    events.warning(f"{path.name} and {other} share a cache file name; {path.name} stays in memory.")
                else:
                    claimed[npz] = i
                    if self._file_is_valid(npz, path, choice, flip_aug):
                        self._entries[i] = self._entry_from_file(npz, choice)
                        reused += 1
                        continue
                    disk_targets[i] = npz
            todo.append(i)

        todo.sort(key=lambda i: (plan.item_bucket[i], i))
        batches: list[list[int]] = []
        for i in todo:
            if (
                batches
                and len(batches[-1]) < self.batch_size
                and plan.item_bucket[batches[-1][0]] == plan.item_bucket[i]
            ):
                batches[-1].append(i)
            else:
                batches.append([i])

        if reused:
            events.info(f"latents: {reused} cached files reused")
        total = len(todo)
        done = written = fallback_count = 0
        events.progress(STAGE, 0, total)

        def submit(batch: list[int]) -> list[Future]:
            return [pool.submit(self._load, image_paths[i], plan.sizes[i], plan.choices[i]) for i in batch]

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            upcoming = submit(batches[0]) if batches else []
            for number, batch in enumerate(batches):
                if stop is not None and stop.requested:
                    for future in upcoming:
                        future.cancel()
                    stop.raise_if_requested()
                current = upcoming
                # decode the next batch while this one is encoded
                upcoming = submit(batches[number + 1]) if number + 1 < len(batches) else []
                loaded = [future.result() for future in current]
                images = torch.stack([t.image for t in loaded])
                latents = self._run(self.encode, images)
                flipped = self._run(self.encode, torch.flip(images, dims=[3])) if flip_aug else None
                bad = self._non_finite(latents, flipped)
                if bad:
                    fallback_count += len(bad)
                    self._redo(bad, images, latents, flipped, [image_paths[batch[k]] for k in range(len(batch))])
                for k, i in enumerate(batch):
                    entry = LatentEntry(
                        original_size=tuple(loaded[k].original_size),
                        crop_ltrb=tuple(loaded[k].crop_ltrb),
                        bucket=plan.choices[i].bucket,
                        latents=latents[k].clone(),
                        latents_flipped=flipped[k].clone() if flipped is not None else None,
                    )
                    npz = disk_targets.get(i)
                    if npz is not None:
                        self._write(npz, image_paths[i], plan.choices[i], entry)
                        written += 1
                        entry = self._entry_from_file(npz, plan.choices[i], entry)
                    self._entries[i] = entry
                done += len(batch)
                events.progress(STAGE, done, total)
        return CacheReport(encoded=total, reused=reused, written=written, fallback=fallback_count)

    @staticmethod
    def _load(path: Path, size: Size, choice: BucketChoice) -> Transformed:
        try:
            image = load_image_rgb(path)
        except Exception as exc:
            raise UserError(f"Cannot read image {path}: {exc}.", "Was it changed or removed after the scan?") from exc
        if image.size != tuple(size):
            raise UserError(
                f"Image {path} is now {image.size[0]}x{image.size[1]}, not {size[0]}x{size[1]} as when the dataset "
                "was scanned; scan the dataset again."
            )
        return transform(image, choice)

    @staticmethod
    def _entry_from_file(npz: Path, choice: BucketChoice, made: LatentEntry | None = None) -> LatentEntry:
        if made is not None:
            return LatentEntry(made.original_size, made.crop_ltrb, made.bucket, npz=npz)
        with np.load(npz) as data:
            original = tuple(int(v) for v in data["original_size"])
            ltrb = tuple(float(v) for v in data["crop_ltrb"])
        return LatentEntry(original, ltrb, choice.bucket, npz=npz)

    @staticmethod
    def _run(encoder: Encoder, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = encoder(images)
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != images.shape[0]:
            raise ValueError(
                f"the latent encoder returned {getattr(out, 'shape', type(out))} for {tuple(images.shape)}"
            )
        if tuple(out.shape[2:]) != (images.shape[2] // 8, images.shape[3] // 8):
            raise ValueError(f"the latent encoder returned {tuple(out.shape)} for images {tuple(images.shape)}")
        return out.detach().to("cpu", torch.float32)

    @staticmethod
    def _non_finite(latents: torch.Tensor, flipped: torch.Tensor | None) -> list[int]:
        bad = ~torch.isfinite(latents).flatten(1).all(dim=1)
        if flipped is not None:
            bad |= ~torch.isfinite(flipped).flatten(1).all(dim=1)
        return [int(k) for k in torch.nonzero(bad).flatten()]

    def _redo(
        self,
        bad: list[int],
        images: torch.Tensor,
        latents: torch.Tensor,
        flipped: torch.Tensor | None,
        paths: list[Path],
    ) -> None:
        """Re-encode the rows ``bad`` with the fallback encoder, in place; fail naming the image."""
        first = paths[bad[0]]
        if self.encode_fallback is None:
            raise UserError(
                f"The VAE produced NaN/inf latents for {first}.",
                "Likely an fp16 VAE overflowing (SDXL's VAE does in fp16): encode in fp32 "
                "(no_half_vae) or use an fp16-fixed VAE.",
            )
        subset = images[bad]
        again = self._run(self.encode_fallback, subset)
        again_flipped = self._run(self.encode_fallback, torch.flip(subset, dims=[3])) if flipped is not None else None
        still = self._non_finite(again, again_flipped)
        if still:
            raise UserError(
                f"The VAE produced NaN/inf latents for {paths[bad[still[0]]]}, also with the fallback encoder.",
                "The image or the VAE weights may be broken; check the image and the VAE.",
            )
        latents[bad] = again
        if flipped is not None and again_flipped is not None:
            flipped[bad] = again_flipped

    # -- reading --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, item: int) -> LatentEntry:
        return self._entries[item]

    def adopt(self, entries: dict[int, LatentEntry], flip_aug: bool = False) -> None:
        """Take entries another process prepared (data-parallel training: one process encodes, the
        others read its files and tensors instead of encoding every image again)."""
        self.flip_aug = flip_aug
        self._entries = dict(entries)

    def get(self, sample: Sample | int, flip: bool = False) -> torch.Tensor:
        """Unscaled latents [C, h, w] float32 of a sample's image (mirrored with ``flip``).

        The tensor is shared with the cache: do not modify it in place.
        """
        item = sample.item if isinstance(sample, tuple) else int(sample)
        try:
            entry = self._entries[item]
        except KeyError:
            raise KeyError(f"image {item} is not cached; call prepare() first") from None
        if flip and not self.flip_aug:
            raise ValueError("flipped latents requested but the cache was prepared without flip_aug")
        if entry.npz is None:
            tensor = entry.latents_flipped if flip else entry.latents
            assert tensor is not None
            return tensor
        with np.load(entry.npz) as data:
            return torch.from_numpy(np.array(data["latents_flipped" if flip else "latents"], dtype=np.float32))

    def get_batch(self, samples: Sequence[Sample | int], flips: Sequence[bool] | None = None) -> torch.Tensor:
        """``get`` for a batch, stacked: [B, C, h, w]."""
        flips = flips or [False] * len(samples)
        return torch.stack([self.get(s, f) for s, f in zip(samples, flips)])
