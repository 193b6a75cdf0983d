"""The latent cache with a tiny fake VAE: batching, reuse, invalidation, NaN fallback, stop."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lib_lora.common.errors import UserError
from lib_lora.data.buckets import BucketManager, BucketSettings
from lib_lora.data.dataset import Sample, assign_buckets, scan_dataset
from lib_lora.data.images import load_image_rgb, transform
from lib_lora.data.latent_cache import LatentCache
from lib_lora.events import RecordingEvents, StopRequested, StopToken
from support.data_images import make_dataset

SETTINGS = BucketSettings((256, 256), True, 128, 512, 64)


class FakeVae:
    """avg-pool by 8 and 4 channels (RGB + their mean); records every batch it sees."""

    def __init__(self, nan_for: set[int] | None = None) -> None:
        self.batches: list[tuple[int, ...]] = []
        self.nan_for = nan_for or set()  # batch rows (by call order of images) that come out NaN
        self.seen = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.float32 and images.min() >= -1 and images.max() <= 1
        self.batches.append(tuple(images.shape))
        pooled = torch.nn.functional.avg_pool2d(images, 8)
        out = torch.cat([pooled, pooled.mean(dim=1, keepdim=True)], dim=1)
        for row in range(images.shape[0]):
            if self.seen + row in self.nan_for:
                out[row, 0, 0, 0] = float("nan")
        self.seen += images.shape[0]
        return out.half()  # a half-precision VAE: the cache stores float32


@pytest.fixture
def plan(tmp_path: Path):
    root = make_dataset(
        tmp_path / "ds",
        {
            "2_a": [("p1.png", (300, 300), "x"), ("p2.png", (310, 290), "x"), ("w1.png", (400, 200), "x")],
            "1_b": [("p3.jpg", (256, 256), "x"), ("t1.png", (200, 400), "x")],
        },
    )
    return assign_buckets(scan_dataset(root), BucketManager(SETTINGS), batch_size=2)


def _expected(plan, item: int, flip: bool = False) -> torch.Tensor:
    image = transform(load_image_rgb(plan.scan.items[item].path), plan.choices[item], flip=flip).image
    pooled = torch.nn.functional.avg_pool2d(image[None], 8)
    return torch.cat([pooled, pooled.mean(dim=1, keepdim=True)], dim=1)[0].half().float()


def test_memory_cache_encodes_each_image_once_in_bucket_batches(plan) -> None:
    vae = FakeVae()
    cache = LatentCache(vae, "fake-vae", batch_size=2)
    events = RecordingEvents()
    report = cache.prepare(plan, flip_aug=True, events=events)
    assert (report.encoded, report.reused, report.written) == (5, 0, 0)
    # p1 and p3 share the square bucket -> one batch of 2, one batch per other bucket; twice with flips
    sizes = sorted(b[0] for b in vae.batches)
    assert sizes == [1, 1, 1, 1, 1, 1, 2, 2]
    assert events.last_progress == ("caching latents", 5, 5, "")
    for item in range(5):
        bw, bh = plan.choices[item].bucket
        latents = cache.get(Sample(item, 0))
        assert latents.shape == (4, bh // 8, bw // 8) and latents.dtype == torch.float32
        assert torch.equal(latents, _expected(plan, item))
        assert torch.equal(cache.get(item, flip=True), _expected(plan, item, flip=True))
    pair = plan.items_in(plan.item_bucket[0])[:2]
    batch = cache.get_batch([Sample(pair[0], 1), Sample(pair[1], 0)], [False, True])
    assert batch.shape[0] == 2 and torch.equal(batch[1], _expected(plan, pair[1], flip=True))


def test_without_flip_aug_flipped_latents_are_refused(plan) -> None:
    cache = LatentCache(FakeVae(), "fake-vae")
    cache.prepare(plan)
    with pytest.raises(ValueError, match="without flip_aug"):
        cache.get(0, flip=True)


def _npz_files(plan) -> list[Path]:
    return sorted(plan.scan.root.rglob("*.npz"))


def test_disk_cache_writes_sd_scripts_files_and_reuses_them(plan) -> None:
    first = LatentCache(FakeVae(), "fake-vae", to_disk=True, batch_size=4)
    assert first.prepare(plan, flip_aug=True).written == 5
    files = _npz_files(plan)
    assert sorted(f.name for f in files) == [
        "p1_0300x0300_sd.npz", "p2_0310x0290_sd.npz", "p3_0256x0256_sd.npz", "t1_0200x0400_sd.npz", "w1_0400x0200_sd.npz"
    ]  # fmt: skip
    assert all(first.npz_path(it.path, it.size).parent == it.path.parent for it in plan.scan.items)
    assert {first.npz_path(it.path, it.size) for it in plan.scan.items} == set(files)
    assert not [p for p in plan.scan.root.rglob("*") if p.name.startswith(".tmp-")]
    item = next(i for i, it in enumerate(plan.scan.items) if it.path.name == "w1.png")
    with np.load(plan.scan.items[item].path.with_name("w1_0400x0200_sd.npz")) as data:
        bw, bh = plan.choices[item].bucket
        assert data["latents"].dtype == np.float32 and data["latents"].shape == (4, bh // 8, bw // 8)
        assert data["latents_flipped"].shape == data["latents"].shape
        assert data["original_size"].tolist() == [400, 200]
        assert len(data["crop_ltrb"]) == 4
    assert torch.equal(first.get(item), _expected(plan, item))

    vae = FakeVae()
    second = LatentCache(vae, "fake-vae", to_disk=True, batch_size=4)
    report = second.prepare(plan, flip_aug=True)
    assert (report.encoded, report.reused) == (0, 5) and vae.batches == []
    assert torch.equal(second.get(item, flip=True), _expected(plan, item, flip=True))


def test_stale_files_are_encoded_again(plan, tmp_path: Path) -> None:
    LatentCache(FakeVae(), "vae-1", to_disk=True).prepare(plan)
    paths = [it.path for it in plan.scan.items]

    # an edited image (new mtime) is encoded again, the others are reused
    stat = paths[0].stat()
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    report = LatentCache(FakeVae(), "vae-1", to_disk=True).prepare(plan)
    assert (report.encoded, report.reused) == (1, 4)

    # another VAE: everything again
    assert LatentCache(FakeVae(), "vae-2", to_disk=True).prepare(plan).encoded == 5
    # flip augmentation needs flipped latents the files lack
    assert LatentCache(FakeVae(), "vae-2", to_disk=True).prepare(plan, flip_aug=True).encoded == 5
    # a damaged file
    damaged = _npz_files(plan)[0]
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert LatentCache(FakeVae(), "vae-2", to_disk=True).prepare(plan, flip_aug=True).encoded == 1

    # other buckets (another resolution): the files no longer fit
    other = assign_buckets(plan.scan, BucketManager(BucketSettings((320, 320), True, 128, 640, 64)), 2)
    changed = sum(a.bucket != b.bucket or a.resized != b.resized for a, b in zip(plan.choices, other.choices))
    assert changed > 0
    assert LatentCache(FakeVae(), "vae-2", to_disk=True).prepare(other, flip_aug=True).encoded == changed


def test_sdxl_suffix(plan) -> None:
    LatentCache(FakeVae(), "v", to_disk=True, family_suffix="_sdxl").prepare(plan)
    assert all(p.name.endswith("_sdxl.npz") for p in _npz_files(plan))


def test_nan_latents_use_the_fallback_encoder(plan) -> None:
    fallback = FakeVae()
    cache = LatentCache(FakeVae(nan_for={1}), "fp16-vae", batch_size=2, encode_fallback=fallback)
    report = cache.prepare(plan)
    assert report.fallback == 1 and len(fallback.batches) == 1
    for item in range(5):
        assert torch.isfinite(cache.get(item)).all()


def test_nan_latents_without_fallback_name_the_image(plan, tmp_path: Path) -> None:
    cache = LatentCache(FakeVae(nan_for={0}), "fp16-vae", to_disk=True, batch_size=2)
    first = plan.scan.items[plan.items_in(0)[0]].path  # encoding goes bucket by bucket
    with pytest.raises(UserError, match="NaN/inf latents for .*fp16") as info:
        cache.prepare(plan)
    assert str(first) in str(info.value)
    assert "\n" not in str(info.value)
    assert _npz_files(plan) == []  # the failing batch wrote nothing


def test_nan_also_from_the_fallback(plan) -> None:
    cache = LatentCache(FakeVae(nan_for={0}), "v", encode_fallback=FakeVae(nan_for={0}))
    with pytest.raises(UserError, match="also with the fallback"):
        cache.prepare(plan)


def test_stop_between_batches_keeps_finished_files(plan) -> None:
    token = StopToken()

    class StopAfterFirst(FakeVae):
        def __call__(self, images: torch.Tensor) -> torch.Tensor:
            token.request()
            return super().__call__(images)

    with pytest.raises(StopRequested):
        LatentCache(StopAfterFirst(), "v", to_disk=True, batch_size=2).prepare(plan, stop=token)
    written = _npz_files(plan)
    assert 0 < len(written) < 5
    report = LatentCache(FakeVae(), "v", to_disk=True, batch_size=2).prepare(plan)
    assert report.reused == len(written) and report.encoded == 5 - len(written)


def test_image_changed_since_the_scan_is_a_clear_error(plan) -> None:
    from support.data_images import write_image

    write_image(plan.scan.items[0].path, (123, 77))
    with pytest.raises(UserError, match="scan the dataset again"):
        LatentCache(FakeVae(), "v").prepare(plan)


def test_same_stem_images_do_not_share_a_disk_file(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"1_x": [("a.png", (256, 256), "x"), ("a.jpg", (256, 256), "y")]})
    plan = assign_buckets(scan_dataset(root), BucketManager(SETTINGS), 1)
    events = RecordingEvents()
    cache = LatentCache(FakeVae(), "v", to_disk=True)
    report = cache.prepare(plan, events=events)
    assert report.written == 1 and report.encoded == 2
    assert any("share a cache file name" in w for w in events.texts("warning"))
    for item in range(2):
        assert torch.equal(cache.get(item), _expected(plan, item))
    assert not torch.equal(cache.get(0), cache.get(1))
