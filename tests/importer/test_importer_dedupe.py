"""Duplicate filter on generated images (issue 8, "done when" 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_lora.cli import main
from lib_lora.common.errors import UserError
from lib_lora.events import RecordingEvents, StopToken
from lib_lora.importer.dedupe import (
    BLANK_HASH,
    DUPLICATES_DIR,
    DedupeOptions,
    _dct_matrix,
    apply,
    dedupe,
    find_pairs,
    hamming,
    is_blank_hash,
    keep_both,
    move_to_duplicates,
    naive_pairs,
    phash_grey,
    phash_image,
    restore_from_duplicates,
    scan,
)
from support.importer_images import planted_dataset, smooth_image


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------
# the hash
def test_dct_matrix_is_the_orthonormal_dct_ii() -> None:
    c = _dct_matrix(32)
    assert np.allclose(c @ c.T, np.eye(32))
    x = np.random.default_rng(0).random(32)
    n = np.arange(32)
    direct = [np.sum(x * np.cos(np.pi * (2 * n + 1) * k / 64)) for k in range(32)]
    scale = np.array([np.sqrt(1 / 32)] + [np.sqrt(2 / 32)] * 31)
    assert np.allclose(c @ x, scale * direct)


def test_hash_bits_follow_the_median_of_the_ac_terms() -> None:
    grey = Image.fromarray((np.random.default_rng(1).random((32, 32)) * 255).astype(np.uint8), "L")
    value = phash_grey(grey)
    c8 = _dct_matrix(32)[:8]
    coefficients = (c8 @ np.asarray(grey, dtype=np.float64) @ c8.T).ravel()
    bits = coefficients > np.median(coefficients[1:])
    assert value == int("".join("1" if b else "0" for b in bits), 2)
    assert value >> 63 == 1  # the DC term of a non-black picture is above the median


def test_flat_pictures_give_the_blank_hash() -> None:
    assert phash_image(Image.new("RGB", (64, 48), (90, 10, 200))) == BLANK_HASH
    assert is_blank_hash(BLANK_HASH ^ 0b1111) and not is_blank_hash(BLANK_HASH ^ 0b11111)


def test_transparent_pixels_count_as_white() -> None:
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((10, 20, 200, 255), (10, 10, 40, 50))
    on_white = Image.new("RGB", (64, 64), (255, 255, 255))
    on_white.paste((10, 20, 200), (10, 10, 40, 50))
    assert phash_image(rgba) == phash_image(on_white)


def test_resized_and_reencoded_copies_hash_close_and_different_pictures_far() -> None:
    base = smooth_image(7, (400, 300), shapes=10)
    small = base.resize((200, 150), Image.LANCZOS)
    assert hamming(phash_image(base), phash_image(small)) <= 2
    assert hamming(phash_image(base), phash_image(smooth_image(8, (400, 300), shapes=10))) > 12


# ---------------------------------------------------------------------------------------------
# the pair search
def _hashes_with_near_copies(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, size=400, dtype=np.int64).astype(np.uint64)
    near = []
    for k in range(300):  # near copies with 0..12 flipped bits, some of them copies of copies
        value = int(base[k % 400]) if k < 200 else near[k - 200]
        for bit in rng.choice(64, size=k % 13, replace=False):
            value ^= 1 << int(bit)
        near.append(value)
    return np.concatenate([base, np.array(near, dtype=np.uint64)])


@pytest.mark.parametrize(
    "distance, plan",
    [(0, None), (1, None), (2, None), (4, None), (8, None), (4, (5, 0)), (4, (3, 1)), (8, (5, 1)), (8, (3, 2)),
     (12, (7, 1)), (16, (6, 2))],
)  # fmt: skip
def test_pair_search_finds_exactly_what_all_pairs_finds(distance: int, plan: tuple[int, int] | None) -> None:
    hashes = _hashes_with_near_copies(distance)
    got = find_pairs(hashes, distance, plan)
    want = naive_pairs(hashes, distance)
    assert len(want[0]) > 0
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


def test_pair_search_rejects_a_plan_that_could_miss_pairs() -> None:
    with pytest.raises(ValueError):
        find_pairs(_hashes_with_near_copies(0), 8, plan=(4, 1))


# ---------------------------------------------------------------------------------------------
# the planted dataset
def test_dedupe_moves_exactly_the_planted_duplicates_and_keeps_the_best_copy(tmp_path: Path) -> None:
    expected = planted_dataset(tmp_path)
    before = _tree(tmp_path)
    events = RecordingEvents()
    result = dedupe(tmp_path, DedupeOptions(), events)
    scan_result = result.scan

    moved = {d.image.rel for d in scan_result.duplicates}
    assert moved == expected["moved"]
    assert {g.keep.rel for g in scan_result.groups} == expected["kept"]
    assert {f"{p.a.rel}|{p.b.rel}" for p in scan_result.review} == expected["review"]
    assert {str(Path(p).relative_to(tmp_path).as_posix()) for p, _ in scan_result.skipped} == expected["skipped"]
    assert any("broken.png" in t for t in events.texts("warning"))

    after = _tree(tmp_path)
    # every moved image (and its caption) is under _duplicates/ with the same relative path
    for rel in expected["moved"]:
        assert rel not in after and f"{DUPLICATES_DIR}/{rel}" in after
    assert f"{DUPLICATES_DIR}/10_irene/a_small.txt" in after and "10_irene/a_small.txt" not in after
    assert f"{DUPLICATES_DIR}/5_style/c_copy.txt" in after
    # nothing else moved, nothing deleted
    untouched = before - expected["moved"] - {"10_irene/a_small.txt", "5_style/c_copy.txt"}
    assert untouched <= after
    assert len(after) == len(before) + 1  # + the report
    report = json.loads(result.report.read_text())
    assert {d["file"] for g in report["groups"] for d in g["duplicates"]} == expected["moved"]
    assert len(report["review"]) == 3 and report["skipped"][0]["file"] == "5_style/broken.png"
    assert result.report.parent == tmp_path / DUPLICATES_DIR

    # the reasons say which layer found each duplicate
    reasons = {d.image.rel: d.reason for d in scan_result.duplicates}
    assert reasons["5_style/c_copy.png"] == "identical file"
    assert reasons["10_irene/b.png"] == "identical pixels"
    assert reasons["10_irene/a.jpg"].startswith("same picture")

    # a second run finds nothing more to move, and lists the same pairs for review
    again = scan(tmp_path, DedupeOptions())
    assert again.groups == [] and {f"{p.a.rel}|{p.b.rel}" for p in again.review} == expected["review"]


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    expected = planted_dataset(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = dedupe(tmp_path, DedupeOptions(dry_run=True))
    assert {d.image.rel for d in result.scan.duplicates} == expected["moved"]
    assert result.moved == [] and result.report is None
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_larger_distance_lists_more_pairs_but_moves_the_same(tmp_path: Path) -> None:
    expected = planted_dataset(tmp_path)
    result = scan(tmp_path, DedupeOptions(distance=8))
    assert {d.image.rel for d in result.duplicates} == expected["moved"]
    assert {f"{p.a.rel}|{p.b.rel}" for p in result.review} >= expected["review"]


def test_review_decisions_move_restore_and_keep_both(tmp_path: Path) -> None:
    planted_dataset(tmp_path)
    first = scan(tmp_path)
    tint = next(p for p in first.review if p.b.rel == "10_irene/f_tint.png")

    target = move_to_duplicates(tmp_path, tint.b.path)
    assert target == tmp_path / DUPLICATES_DIR / "10_irene" / "f_tint.png" and not tint.b.path.exists()
    with pytest.raises(UserError, match="already in _duplicates"):
        move_to_duplicates(tmp_path, target)
    assert restore_from_duplicates(tmp_path, target) == tint.b.path and tint.b.path.exists()

    keep_both(tmp_path, tint.a.path, tint.b.path)
    second = scan(tmp_path)
    assert all(p.b.rel != "10_irene/f_tint.png" for p in second.review)
    assert len(second.review) == len(first.review) - 1


def test_move_never_overwrites(tmp_path: Path) -> None:
    folder = tmp_path / "1_x"
    folder.mkdir()
    smooth_image(1).save(folder / "a.png")
    (folder / "a.txt").write_text("mine")
    (tmp_path / DUPLICATES_DIR / "1_x").mkdir(parents=True)
    (tmp_path / DUPLICATES_DIR / "1_x" / "a.png").write_bytes(b"older duplicate")
    target = move_to_duplicates(tmp_path, folder / "a.png")
    assert target.name == "a-1.png" and target.with_suffix(".txt").read_text() == "mine"
    assert (tmp_path / DUPLICATES_DIR / "1_x" / "a.png").read_bytes() == b"older duplicate"


def test_stopped_scan_moves_nothing(tmp_path: Path) -> None:
    planted_dataset(tmp_path)
    stop = StopToken()
    stop.request()
    found = scan(tmp_path, DedupeOptions(), stop=stop)
    result = apply(found)
    assert found.stopped and result.moved == [] and not (tmp_path / DUPLICATES_DIR).exists()


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--distance must be between 0 and 16"):
        scan(tmp_path, DedupeOptions(distance=40))
    with pytest.raises(UserError, match="is not a folder"):
        scan(tmp_path / "missing")


def test_cli_dedupe_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = planted_dataset(tmp_path)
    code = main(["dedupe", str(tmp_path), "--dry-run", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert {d["file"] for g in data["groups"] for d in g["duplicates"]} == expected["moved"]
    assert data["moved"] == [] and data["dry_run"] is True
    assert not (tmp_path / DUPLICATES_DIR).exists()

    code = main(["dedupe", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0 and "keep 10_irene/a.png" in out and "moved 10_irene/a.jpg" in out
    assert "to review" in out and "6 duplicates moved, 3 pairs to review" in err


def test_cli_dedupe_moves_with_a_folder_given_relative_to_the_current_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m lib_lora dedupe datasets/irene` (the README's way) moved nothing and said
    'datasets/irene/datasets/irene/... does not exist': the folder was put in front of each path twice."""
    expected = planted_dataset(tmp_path / "datasets" / "irene")
    monkeypatch.chdir(tmp_path)
    code = main(["dedupe", "datasets/irene"])
    _, err = capsys.readouterr()
    assert code == 0, err
    moved = tmp_path / "datasets" / "irene" / DUPLICATES_DIR
    images = {p.relative_to(moved).as_posix() for p in moved.rglob("*") if p.suffix in (".png", ".jpg", ".bmp")}
    assert images == expected["moved"]
    assert "6 duplicates moved" in err


def test_cli_dedupe_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["dedupe", str(tmp_path / "nope")])
    _, err = capsys.readouterr()
    assert code == 2 and err.strip() == f"error: {tmp_path / 'nope'} is not a folder."
