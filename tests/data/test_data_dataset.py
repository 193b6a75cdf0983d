"""Scanning dataset folders (captions, repeats, bad input) and planning buckets and epochs."""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from collections import Counter
from pathlib import Path

import pytest

from lib_lora.common.errors import UserError
from lib_lora.data.buckets import BucketManager, BucketSettings
from lib_lora.data.dataset import Sample, assign_buckets, plan_buckets, scan_dataset
from lib_lora.events import RecordingEvents, StopRequested, StopToken
from support.data_images import corrupt_zlib_png, listing, make_dataset, truncate, write_image

GUIDE = BucketSettings((512, 512), True, 320, 1280, 64)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = make_dataset(
        tmp_path / "ds",
        {
            "10_irene": [
                ("a.png", (640, 480), "irene, 1girl, Smile, smile"),
                ("b.JPG", (480, 640), None),
                ("c.webp", (512, 512), "irene, solo\nsecond line ignored"),
            ],
            "3_irene casual": [
                ("d.jpeg", (1024, 512), "irene, casual"),
                ("e.bmp", (400, 400), "irene, casual"),
            ],
        },
    )
    (root / "10_irene" / "notes.md").write_text("not an image")
    (root / "_duplicates").mkdir()
    write_image(root / "_duplicates" / "x.png", (64, 64))
    return root


def test_scan_finds_subsets_images_and_captions(dataset: Path) -> None:
    events = RecordingEvents()
    scan = scan_dataset(dataset, events=events)
    assert [(s.name, s.repeats, s.class_tokens, s.image_count) for s in scan.subsets] == [
        ("10_irene", 10, "irene", 3),
        ("3_irene casual", 3, "irene casual", 2),
    ]
    by_name = {item.path.name: item for item in scan.items}
    assert sorted(by_name) == ["a.png", "b.JPG", "c.webp", "d.jpeg", "e.bmp"]
    assert by_name["a.png"].caption == "irene, 1girl, Smile, smile"
    assert (by_name["b.JPG"].caption, by_name["b.JPG"].caption_source) == ("irene", "class tokens")
    assert by_name["c.webp"].caption == "irene, solo"
    assert by_name["b.JPG"].size == (480, 640) and by_name["d.jpeg"].repeats == 3
    assert scan.num_train_images == 3 * 10 + 2 * 3
    assert scan.skipped == []
    assert any("no caption file" in w for w in events.texts("warning"))


def test_metadata_helpers_match_sd_scripts_shapes(dataset: Path) -> None:
    scan = scan_dataset(dataset)
    assert scan.dataset_dirs_info() == {
        "10_irene": {"n_repeats": 10, "img_count": 3},
        "3_irene casual": {"n_repeats": 3, "img_count": 2},
    }
    # per folder, lower-cased, counted per occurrence, class tokens used where captions are missing
    assert scan.tag_frequency() == {
        "10_irene": {"irene": 3, "1girl": 1, "smile": 2, "solo": 1},
        "3_irene casual": {"irene": 2, "casual": 2},
    }


def test_caption_bom_crlf_and_empty_file(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"2_tok": [("a.png", (300, 300), None), ("b.png", (300, 300), None)]})
    (root / "2_tok" / "a.txt").write_bytes("\ufeffirene, smile\r\nsecond".encode())
    (root / "2_tok" / "b.txt").write_bytes(b"\n")
    items = scan_dataset(root).items
    assert items[0].caption == "irene, smile"
    assert (items[1].caption, items[1].caption_source) == ("tok", "class tokens")


def test_other_caption_extension(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"1_x": [("a.png", (300, 300), "from txt")]})
    (root / "1_x" / "a.caption").write_text("from caption")
    assert scan_dataset(root, ".caption").items[0].caption == "from caption"
    assert scan_dataset(root, "caption").items[0].caption == "from caption"


def test_bare_repeat_folder_has_empty_class_tokens(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"5": [("a.png", (300, 300), None)]})
    events = RecordingEvents()
    scan = scan_dataset(root, events=events)
    assert scan.subsets[0].repeats == 5 and scan.items[0].caption == ""
    assert any("empty caption" in w for w in events.texts("warning"))


def test_corrupt_images_are_skipped_and_listed(dataset: Path) -> None:
    truncate(dataset / "10_irene" / "a.png")
    (dataset / "3_irene casual" / "e.bmp").write_bytes(b"")
    (dataset / "3_irene casual" / "f.png").write_bytes(b"this is not a png at all")
    events = RecordingEvents()
    scan = scan_dataset(dataset, events=events)
    assert sorted(p.name for p, _ in scan.skipped) == ["a.png", "e.bmp", "f.png"]
    assert all(reason for _, reason in scan.skipped)
    assert sorted(i.path.name for i in scan.items) == ["b.JPG", "c.webp", "d.jpeg"]
    assert scan.subsets[0].image_count == 2 and scan.subsets[1].image_count == 1
    assert any("3 images cannot be read" in w for w in events.texts("warning"))


def test_warnings_for_few_and_tiny_images(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"1_x": [("a.png", (100, 120), "x")]})
    warnings = scan_dataset(root).warnings
    assert any("only 1 usable image:" in w for w in warnings)  # "1 image", not "1 images"
    assert any("smaller than 256 px" in w and "a.png" in w for w in warnings)


def test_exif_rotated_photo_is_sized_upright(tmp_path: Path) -> None:
    from PIL import Image

    from support.data_images import pattern

    folder = tmp_path / "ds" / "1_x"
    folder.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 8
    pattern((400, 300)).save(folder / "p.jpg", "JPEG", exif=exif.tobytes())
    assert scan_dataset(tmp_path / "ds").items[0].size == (300, 400)


# -- bad input: one clear error, nothing written ------------------------------------------------


def _refused(root: Path, match: str) -> str:
    before = listing(root) if root.exists() else None
    with pytest.raises(UserError, match=match) as info:
        scan_dataset(root)
    if before is not None:
        assert listing(root) == before
    assert "\n" not in str(info.value)
    return str(info.value)


def test_folder_without_repeat_prefix_is_refused_by_name(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"irene": [("a.png", (300, 300), "x")]})
    message = _refused(root, "Folder 'irene'")
    assert "N_name" in message and "10_irene" in message and "repeated per epoch" in message


def test_zero_repeats_is_refused_with_the_right_fix(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"0_irene": [("a.png", (300, 300), "x")]})
    message = _refused(root, "Folder '0_irene'")
    assert "0 times" in message and "at least 1" in message and "'10_irene'" in message


def test_unprefixed_folder_beside_good_ones_is_not_used_with_a_warning(tmp_path: Path) -> None:
    """A stray folder of originals beside the training folders: the Dataset tab says "not used", so
    the scan (and the bucket table, and training) goes on without it, as sd-scripts does."""
    root = make_dataset(
        tmp_path / "ds", {"10_irene": [("a.png", (300, 300), "x")], "raw": [("b.png", (300, 300), "x")]}
    )
    scan = scan_dataset(root)
    assert [item.path.name for item in scan.items] == ["a.png"]
    assert [s.name for s in scan.subsets] == ["10_irene"]
    warning = next(w for w in scan.warnings if "raw" in w)
    assert "1 folder in" in warning and "is not used for training" in warning and "'10_raw'" in warning


def test_zero_repeats_folder_beside_good_ones_is_still_refused(tmp_path: Path) -> None:
    root = make_dataset(
        tmp_path / "ds", {"10_irene": [("a.png", (300, 300), "x")], "0_raw": [("b.png", (300, 300), "x")]}
    )
    _refused(root, "Folder '0_raw'")


def test_folders_without_images_are_ignored(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"10_irene": [("a.png", (300, 300), "x")]})
    (root / "logs").mkdir()
    assert len(scan_dataset(root).items) == 1


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    _refused(tmp_path / "ds", "contains no training folders")


def test_missing_folder(tmp_path: Path) -> None:
    _refused(tmp_path / "nope", "does not exist")


def test_pointed_at_the_subset_itself(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"10_irene": [("a.png", (300, 300), "x")]})
    message = _refused(root / "10_irene", "is a training folder itself")
    assert str(root) in message


def test_images_directly_in_an_unprefixed_root(tmp_path: Path) -> None:
    write_image(tmp_path / "pics" / "a.png", (300, 300))
    message = _refused(tmp_path / "pics", "holds images directly")
    assert "10_pics" in message


def test_pointed_at_the_grandparent(tmp_path: Path) -> None:
    make_dataset(tmp_path / "project" / "img", {"10_irene": [("a.png", (300, 300), "x")]})
    message = _refused(tmp_path / "project", "has no N_name training folders")
    assert str(tmp_path / "project" / "img") in message


def test_subsets_without_images(tmp_path: Path) -> None:
    (tmp_path / "ds" / "10_irene").mkdir(parents=True)
    _refused(tmp_path / "ds", "No images in the training folders")


def test_all_images_corrupt(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"10_irene": [("a.png", (300, 300), "x"), ("b.jpg", (300, 300), "y")]})
    for path in (root / "10_irene").glob("*.*g"):
        truncate(path)
    _refused(root, "No usable images .* all 2 images are unreadable")


def test_caption_not_utf8_names_the_file(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"10_irene": [("a.png", (300, 300), None)]})
    (root / "10_irene" / "a.txt").write_bytes("irène, café".encode("cp1252"))
    message = _refused(root, "is not UTF-8")
    assert str(root / "10_irene" / "a.txt") in message


def test_every_unreadable_caption_is_named_in_one_refusal(tmp_path: Path) -> None:
    """Training stopped at the first caption that is not UTF-8: fix it, start again, meet the next."""
    root = make_dataset(
        tmp_path / "ds",
        {"10_irene": [("a.png", (300, 300), None), ("b.png", (300, 300), None), ("c.png", (300, 300), "ok")]},
    )
    (root / "10_irene" / "a.txt").write_bytes(bytes(range(128, 256)))
    (root / "10_irene" / "b.txt").write_bytes("caf\xe9".encode("latin-1"))
    message = _refused(root, "2 caption files in .* cannot be read, so training refuses to start")
    assert "10_irene/a.txt is not UTF-8 text (invalid byte at position 0); 10_irene/b.txt" in message, message
    assert "10_irene/b.txt is not UTF-8 text (invalid byte at position 3)." in message, message
    # a view of the dataset (strict=False) keeps the images and lists the files instead
    scan = scan_dataset(root, strict=False)
    assert scan.num_images == 3
    assert [(p.name, why) for p, why in scan.unreadable_captions] == [
        ("a.txt", "is not UTF-8 text (invalid byte at position 0)"),
        ("b.txt", "is not UTF-8 text (invalid byte at position 3)"),
    ]
    assert [i.caption_source for i in scan.items] == ["unreadable", "unreadable", "file"]
    assert not any("a.png" in w for w in scan.warnings)  # not called "no caption file"


def test_stop_token_stops_the_image_check(dataset: Path) -> None:
    token = StopToken()
    token.request()
    with pytest.raises(StopRequested):
        scan_dataset(dataset, stop=token)


# -- bucket plan --------------------------------------------------------------------------------


def test_steps_per_epoch_is_per_bucket_ceiling() -> None:
    manager = BucketManager(GUIDE)
    # bucket 512x512: 3 images x 10 = 30 -> 8 batches of 4; bucket 640x384: 1 x 3 = 3 -> 1 batch
    plan = plan_buckets([(512, 512)] * 3 + [(1920, 1080)], [10, 10, 10, 3], manager, 4)
    assert [(r.resolution, r.images, r.count, r.batches) for r in plan.rows()] == [
        ((512, 512), 3, 30, 8),
        ((640, 384), 1, 3, 1),
    ]
    assert plan.steps_per_epoch == 9 and plan.num_samples == 33
    assert plan.optimizer_steps_per_epoch(4) == 3


def test_guide_example_forty_images_ten_repeats() -> None:
    plan = plan_buckets([(512, 512)] * 40, [10] * 40, BucketManager(GUIDE), 2)
    assert plan.steps_per_epoch == 200


def test_assign_buckets_from_a_scan(dataset: Path) -> None:
    scan = scan_dataset(dataset)
    plan = assign_buckets(scan, BucketManager(GUIDE), batch_size=2)
    assert plan.scan is scan and len(plan.choices) == len(scan.items)
    expected = sum(
        math.ceil(sum(scan.items[i].repeats for i in plan.items_in(b)) / 2) for b in range(len(plan.buckets))
    )
    assert plan.steps_per_epoch == expected
    info = plan.bucket_info()
    assert sum(b["count"] for b in info["buckets"].values()) == scan.num_train_images
    json.dumps(info)


def _plan():
    sizes = [(512, 512), (1920, 1080), (480, 640), (512, 512), (1080, 1920), (640, 640), (300, 900)]
    repeats = [3, 2, 5, 1, 4, 2, 3]
    return plan_buckets(sizes, repeats, BucketManager(GUIDE), 3)


def test_epoch_batches_cover_every_repeat_once_and_never_mix_buckets() -> None:
    plan = _plan()
    batches = plan.epoch_batches(seed=42, epoch=1)
    assert len(batches) == plan.steps_per_epoch
    samples = [s for batch in batches for s in batch]
    assert Counter(samples) == Counter(Sample(i, r) for i, n in enumerate(plan.repeats) for r in range(n))
    for batch in batches:
        assert 1 <= len(batch) <= 3
        assert len({plan.item_bucket[s.item] for s in batch}) == 1


def test_epoch_batches_are_deterministic_and_independent_of_other_epochs() -> None:
    first = _plan()
    replayed = [first.epoch_batches(7, e) for e in range(5)]
    fresh = _plan().epoch_batches(7, 4)  # epoch 4 alone, without epochs 0-3
    assert fresh == replayed[4]
    assert first.epoch_batches(7, 4) == replayed[4]
    assert len({json.dumps(b) for b in replayed}) == 5  # epochs differ
    assert _plan().epoch_batches(8, 4) != replayed[4]  # seeds differ


def test_png_with_a_broken_zlib_stream_is_skipped_by_the_scan(tmp_path: Path) -> None:
    """Valid chunk CRCs around a corrupt deflate stream: a header check passes it and training stops
    at the first batch holding it; the scan decodes the pixels, so it is skipped and named at once."""
    root = make_dataset(tmp_path / "ds", {"10_irene": [("a.png", (320, 320), "irene"), ("b.png", (320, 320), "x")]})
    corrupt_zlib_png(root / "10_irene" / "b.png")
    scan = scan_dataset(root)
    assert [item.path.name for item in scan.items] == ["a.png"]
    assert [p.name for p, _ in scan.skipped] == ["b.png"]
    assert any("1 image cannot be read and is skipped: b.png" in w for w in scan.warnings)


def _scan_in_thread(root: Path, seconds: float = 20.0):
    """scan_dataset in a thread: (scan or exception, finished in time)."""
    box: list = []
    thread = threading.Thread(target=lambda: box.append(_try(scan_dataset, root)), daemon=True)
    thread.start()
    thread.join(seconds)
    return (box[0] if box else None), not thread.is_alive()


def _try(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:
        return exc


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_caption_that_is_a_fifo_does_not_hang_the_scan(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"10_irene": [("a.png", (320, 320), "irene"), ("b.png", (320, 320), None)]})
    fifo = root / "10_irene" / "b.txt"
    os.mkfifo(fifo)
    scan, finished = _scan_in_thread(root)
    if not finished:  # unblock the stuck reader before failing
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert finished, "the scan hangs on a caption that is a FIFO"
    assert [item.path.name for item in scan.items] == ["a.png"]
    ((path, why),) = scan.skipped
    assert path.name == "b.png" and "not a regular file" in why and str(fifo) in why


@pytest.mark.skipif(not os.path.exists("/dev/zero") or os.name != "posix", reason="needs /dev/zero and symlinks")
def test_caption_symlinked_to_dev_zero_is_refused_not_read(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"10_irene": [("a.png", (320, 320), "irene"), ("b.png", (320, 320), None)]})
    (root / "10_irene" / "b.txt").symlink_to("/dev/zero")
    scan = scan_dataset(root)
    assert [item.path.name for item in scan.items] == ["a.png"]
    assert "not a regular file" in scan.skipped[0][1]


def test_caption_over_the_size_cap_is_refused_and_a_symlink_to_a_good_file_is_followed(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"10_irene": [("a.png", (320, 320), None), ("b.png", (320, 320), None)]})
    (root / "10_irene" / "b.txt").write_bytes(b"irene, " * 200_000)  # 1.4 MB
    real = tmp_path / "shared-caption.txt"
    real.write_text("irene, linked", encoding="utf-8")
    (root / "10_irene" / "a.txt").symlink_to(real)
    scan = scan_dataset(root)
    assert [(item.path.name, item.caption) for item in scan.items] == [("a.png", "irene, linked")]
    assert "over the 1 MiB limit" in scan.skipped[0][1]
