"""The Dataset sub-tab's import panel (against the fake booru) and duplicate-review panel."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from lib_lora.ui.tab import build_tab
from support.importer_fakebooru import IRENE, FakeBooru, irene_posts, patch_sleep
from support.importer_images import planted_dataset, smooth_image
from support.ui_host import FakeHost

pytestmark = pytest.mark.ui


@pytest.fixture
def tab(tmp_path: Path):
    _, tab = build_tab(FakeHost(tmp_path))
    return tab


def _text(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", html or "")


def test_import_panel_downloads_with_progress(tab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch_sleep(monkeypatch)
    posts, visible = irene_posts()
    root = tmp_path / "dataset"
    with FakeBooru("danbooru", posts) as booru:
        args = ["danbooru", IRENE, str(root), "irene", 10, 6, [], "booru", "", "", booru.base_url]
        result = tab.dataset.start_import(*args)
        assert "6 downloaded" in _text(result), result
        images = sorted((root / "10_irene").glob("*.png")) + sorted((root / "10_irene").glob("*.jpg"))
        assert len(images) == 6
        assert all(p.with_suffix(".txt").is_file() for p in images)
        assert "done" in tab.dataset.poll_import()
        again = tab.dataset.start_import(*args)
        assert "0 downloaded, 6 already there" in _text(again)
        bad = list(args)
        bad[1] = "  "
        assert "No tags" in tab.dataset.start_import(*bad)
    assert "No import is running" in tab.dataset.stop_import()


def test_import_without_a_folder_name_says_which_field(tab, tmp_path: Path) -> None:
    args = ["danbooru", "hatsune_miku", str(tmp_path / "data"), "  ", 10, 6, [], "booru", "", "", ""]
    text = html.unescape(_text(tab.dataset.start_import(*args)))
    assert "No folder name for the import: enter one in 'Import into folder name'" in text, text
    assert "--name" not in text  # the page has no --name option
    assert "No import yet" in _text(tab.dataset.poll_import())  # nothing started
    assert not (tmp_path / "data").exists()


def test_a_refused_import_names_the_panel_fields_not_command_line_options(tab, tmp_path: Path) -> None:
    (tmp_path / "a file").write_text("x")
    cases = [
        ({3: "../evil"}, "'Import into folder name' '../evil' cannot be a folder name"),
        ({10: "not a url"}, "The base URL 'not a url' is not a web address"),
        ({2: str(tmp_path / "a file")}, "is a file, not a folder: choose a folder in the Dataset tab"),
    ]
    for change, expected in cases:
        args = ["danbooru", "hatsune_miku", str(tmp_path / "data"), "miku", 10, 6, [], "booru", "", "", ""]
        for index, value in change.items():
            args[index] = value
        text = html.unescape(_text(tab.dataset.start_import(*args)))
        assert expected in text, text
        assert "--" not in text  # the page has no command-line options
    assert "No import yet" in _text(tab.dataset.poll_import())  # nothing started
    assert not (tmp_path / "data").exists()


def test_a_bad_number_of_images_is_refused_in_the_fields_words_before_any_request(tab, tmp_path: Path) -> None:
    cases = [
        (100000000, "'Number of images' 100,000,000 is more images than one import fetches (at most 10,000)"),
        (-5, "'Number of images' must be a whole number of at least 1 (got -5)."),
        (0, "'Number of images' must be a whole number of at least 1 (got 0)."),
        (None, "'Number of images' must be a whole number of at least 1 (the box is empty)."),
    ]
    for limit, expected in cases:
        # nothing listens at the base address: a request would fail with other words
        args = ["danbooru", "hatsune_miku", str(tmp_path / "data"), "miku", 10, limit, [], "booru", "", "", "http://127.0.0.1:9/"]  # fmt: skip
        text = html.unescape(_text(tab.dataset.start_import(*args)))
        assert expected in text, text
        assert "--" not in text
    args = ["danbooru", "hatsune_miku", str(tmp_path / "data"), "miku", None, 6, [], "booru", "", "", ""]
    assert "'Import repeats' must be a whole number of at least 1 (the box is empty)." in html.unescape(
        _text(tab.dataset.start_import(*args))
    )
    args[4] = 1000000000
    assert "'Import repeats' 1,000,000,000 is too many: training refuses an epoch" in html.unescape(
        _text(tab.dataset.start_import(*args))
    )
    assert "No import yet" in _text(tab.dataset.poll_import())  # nothing started
    assert not (tmp_path / "data").exists()


def test_the_sites_refusals_name_the_panels_fields_not_command_line_options(
    tab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Danbooru's 2-tag limit said 'use --rating, --min-score ... or log in with --user and --api-key' on the
    page, which has none of those options."""
    patch_sleep(monkeypatch)
    posts, _ = irene_posts()
    root = tmp_path / "data"
    with FakeBooru("danbooru", posts, credentials={"me": "secret"}) as booru:
        cases = [
            # site, tags, user, key, base URL, words the page must show
            ("danbooru", "a b c", "", "", booru.base_url, "tick Ratings instead of adding rating: tags, or log in "
             "with 'Login / user ID (optional)' and 'API key (optional)'"),
            ("danbooru", IRENE, "me", "", booru.base_url, "Danbooru needs both 'Login / user ID (optional)' (your "
             "user name) and 'API key (optional)'"),
            ("danbooru", IRENE, "me", "wrong", booru.base_url, "check 'Login / user ID (optional)' (your user name"),
            ("gelbooru", IRENE, "", "", "", "fill in 'API key (optional)' and 'Login / user ID (optional)'"),
            ("gelbooru", IRENE, "me", "key", "", "Gelbooru wants the numeric user ID for 'Login / user ID (optional)'"),
        ]  # fmt: skip
        for site, tags, user, key, base_url, expected in cases:
            args = [site, tags, str(root), "irene", 10, 6, [], "booru", user, key, base_url]
            text = html.unescape(_text(tab.dataset.start_import(*args)))
            assert expected in text, text
            assert "--" not in text, text
    assert not list(root.rglob("*.png"))


def test_duplicate_review_panel(tab, tmp_path: Path) -> None:
    root = tmp_path / "dupes"
    planted = planted_dataset(root)
    state, summary, left, right, info = tab.dataset.scan_duplicates(str(root), 4)
    scan = state["scan"]
    assert f"{len(planted['moved'])} certain duplicates" in _text(summary)
    assert len(scan.review) >= len(planted["review"])
    assert Path(left).is_file() and Path(right).is_file() and "Pair 1 of" in _text(info)
    # keep the first pair, move the right image of the second
    state, summary, *_ = tab.dataset.keep_pair(state)
    assert "Kept both" in _text(summary) and state["index"] == 1
    second = scan.review[1]
    state, summary, *_ = tab.dataset.move_pair_right(state)
    assert "Moved" in _text(summary)
    assert not second.b.path.exists() and (root / "_duplicates" / second.b.rel).is_file()
    out = tab.dataset.show_previous(state)  # back on the decided pair: a second decision is refused
    out = tab.dataset.move_pair_left(out[0])
    assert "already decided" in out[1] and second.a.path.exists()
    # the certain duplicates in one go
    state, summary, *_ = tab.dataset.move_certain(state)
    assert f"Moved {len(planted['moved'])} duplicates" in _text(summary)
    for rel in planted["moved"]:
        assert not (root / rel).exists() and (root / "_duplicates" / rel).exists()
    for rel in planted["kept"]:
        assert (root / rel).exists()
    out = tab.dataset.move_certain(state)
    assert "already moved" in _text(out[1])
    # no scan yet: a message, same number of outputs
    out = tab.dataset.keep_pair(None)
    assert len(out) == 5 and "scan for duplicates first" in out[1].lower()


def test_duplicate_scan_words_one_pair_and_a_missing_folder(tab, tmp_path: Path) -> None:
    """'1 similar pairs to review', and 'nowhere is not a folder' for a folder that does not exist."""
    folder = tmp_path / "data" / "5_x"
    folder.mkdir(parents=True)
    picture = smooth_image(7, (256, 256), shapes=8)
    picture.save(folder / "a.png")
    picture.save(folder / "b.png")  # identical pixels: one certain duplicate
    (folder / "broken.png").write_bytes(b"not a picture")
    summary = " ".join(_text(tab.dataset.scan_duplicates(str(tmp_path / "data"), 4)[1]).split())
    assert "2 images scanned: 1 certain duplicate in 1 group; 0 similar pairs to review (0 left)." in summary
    assert "1 unreadable image was skipped." in summary
    missing = _text(tab.dataset.scan_duplicates(str(tmp_path / "nowhere"), 4)[1])
    assert f"Dataset folder {tmp_path / 'nowhere'} does not exist." in missing, missing


def test_bucket_table_still_shows_beside_a_stray_folder_marked_not_used(tab, tmp_path: Path) -> None:
    from lib_lora.data.demo import write_demo_dataset
    from support.data_images import write_image
    from support.ui_tab import subset_args

    root = write_demo_dataset(tmp_path / "data", captions="simple").root
    write_image(root / "originals" / "big.png", (640, 640))  # a folder of originals, no N_ prefix
    names = tab.dataset.bucket_names()
    overview, buckets, _ = tab.dataset.refresh(str(root), *subset_args(tab, names))
    row = re.search(r"<tr>(?:(?!</tr>).)*originals(?:(?!</tr>).)*</tr>", overview, re.S).group(0)
    assert "not used" in row
    assert "12 images in 3 folders" in _text(overview) and "lt-error" not in overview
    assert "not used for training" in _text(overview)  # the scan's warning names it
    assert "<table" in buckets and "steps per epoch" in _text(buckets)
    assert "steps per epoch" in _text(tab.dataset.refresh_buckets(str(root), *subset_args(tab, names)))


def test_unreadable_captions_are_all_named_and_the_overview_still_shows(tab, tmp_path: Path) -> None:
    """Binary junk in one caption and Latin-1 in another showed one red line about the first, no counts
    line, and '4' captioned for 2_bluebird; training refuses such a dataset (naming every file)."""
    from lib_lora.data.demo import write_demo_dataset
    from support.ui_tab import subset_args

    root = write_demo_dataset(tmp_path / "data", captions="simple").root
    (root / "2_bluebird" / "bluebird_01.txt").write_bytes(bytes(range(128, 256)) * 4)
    (root / "2_bluebird" / "bluebird_02.txt").write_bytes("caf\xe9".encode("latin-1"))
    names = tab.dataset.bucket_names()
    overview, buckets, status = tab.dataset.refresh(str(root), *subset_args(tab, names))
    text = " ".join(html.unescape(_text(overview)).split())
    assert "12 images in 3 folders" in text, text
    errors = re.findall(r'<div class="lt-msg lt-error">.*?</div>', overview, re.S)
    assert len(errors) == 1, errors
    error = " ".join(html.unescape(_text(errors[0])).split())
    assert "2 caption files in" in error and "training refuses to start" in error, error
    assert "2_bluebird/bluebird_01.txt is not UTF-8 text" in error
    assert "2_bluebird/bluebird_02.txt is not UTF-8 text" in error
    row = re.search(r"<tr>(?:(?!</tr>).)*2_bluebird(?:(?!</tr>).)*</tr>", overview, re.S).group(0)
    cells = [" ".join(_text(c).split()) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
    assert cells[3:] == ["4", "2", "2 caption files cannot be read"], cells
    assert "<table" in buckets and "steps per epoch" in _text(buckets)
    assert "Dataset folder:" in _text(status)
    # Check settings and Start say the same
    from support.ui_tab import form_args

    where = ("mylora", "Lora folder", "")
    checked = " ".join(html.unescape(_text(tab.train.check(str(root), *where, *form_args(tab)))).split())
    assert "2_bluebird/bluebird_01.txt is not UTF-8 text" in checked and "Settings are valid" not in checked
    started = " ".join(html.unescape(_text(tab.train.start_training("", str(root), *where, *form_args(tab)))).split())
    assert "2 caption files in" in started and "2_bluebird/bluebird_02.txt" in started, started
    # nothing was changed
    assert (root / "2_bluebird" / "bluebird_02.txt").read_bytes() == "caf\xe9".encode("latin-1")


def test_many_unreadable_captions_are_counted_after_the_first_few(tab, tmp_path: Path) -> None:
    from lib_lora.data.demo import write_demo_dataset
    from support.ui_tab import subset_args

    root = write_demo_dataset(tmp_path / "data", captions="simple").root
    for caption in sorted(root.glob("*/*.txt"))[:8]:
        caption.write_bytes(b"\xff\xfe junk")
    overview, _, _ = tab.dataset.refresh(str(root), *subset_args(tab, tab.dataset.bucket_names()))
    text = " ".join(html.unescape(_text(overview)).split())
    assert "8 caption files in" in text and "; and 3 more." in text, text
    assert "12 images in 3 folders" in text


def test_a_failed_import_shows_one_line_the_real_reason(tab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The status said 'Error: Import a b c d from danbooru: failed' above the line giving the reason."""
    patch_sleep(monkeypatch)
    posts, _ = irene_posts()
    with FakeBooru("danbooru", posts) as booru:
        args = ["danbooru", "a b c d", str(tmp_path / "data"), "x", 10, 6, [], "booru", "", "", booru.base_url]
        result = tab.dataset.start_import(*args)
        status = tab.dataset.poll_import()  # what the page shows after the Import click's chain
    errors = re.findall(r'<div class="lt-msg lt-error">.*?</div>', result + status, re.S)
    assert len(errors) == 1, (result, status)
    assert "search at most 2 tags at a time, and 'a b c d' counts 4" in html.unescape(_text(errors[0]))
    assert "failed" not in _text(status)


def test_a_messy_dataset_says_per_folder_what_training_skips(tab, tmp_path: Path) -> None:
    """A broken image, a caption over the 1 MiB limit, a Latin-1 caption and an empty folder: the table
    counted the skipped images with no word beside them, and the size read '1.43051 MiB'."""
    from lib_lora.data.demo import write_demo_dataset
    from support.ui_tab import subset_args

    root = write_demo_dataset(tmp_path / "data", captions="simple").root
    (root / "2_bluebird" / "bluebird_03.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "2_greenleaf" / "greenleaf_01.txt").write_text("tag, " * 300_000)  # 1.43 MiB
    (root / "3_redfox" / "redfox_01.txt").write_bytes("caf\xe9, renard".encode("latin-1"))
    (root / "5_empty").mkdir()
    overview, buckets, _ = tab.dataset.refresh(str(root), *subset_args(tab, tab.dataset.bucket_names()))
    notes = {}
    for row in re.findall(r"<tr>.*?</tr>", overview, re.S)[1:]:
        cells = [" ".join(_text(c).split()) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        notes[cells[0]] = cells[-1]
    assert notes == {
        "2_bluebird": "1 image skipped",
        "2_greenleaf": "1 image skipped",
        "3_redfox": "1 caption file cannot be read",
        "5_empty": "no images",
    }, notes
    text = " ".join(html.unescape(_text(overview)).split())
    assert "10 images in 4 folders, 25 with repeats, 2 skipped" in text, text
    assert "greenleaf_01.txt is 1.4 MiB, over the 1 MiB limit" in text, text
    assert (
        "3_redfox/redfox_01.txt is not UTF-8 text" in text and "training folder '5_empty' has no usable images" in text
    )
    assert "steps per epoch" in _text(buckets)
