"""The import verb end to end against a fake Danbooru on loopback (issue 8, "done when" 1 and 3)."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest

from lib_lora.cli import main
from lib_lora.events import RecordingEvents, StopToken
from lib_lora.importer import download
from lib_lora.importer.download import ARCHIVE_NAME, ImportOptions, import_booru
from support.importer_fakebooru import IRENE, FakeBooru, FakePost, irene_posts, patch_sleep
from support.importer_images import image_bytes

EXPECTED_CAPTION_EVEN = "1girl, irene (kanniiepan), original, solo, long hair, ^_^, looking at viewer"
EXPECTED_CAPTION_ODD = "1girl, irene (kanniiepan), original, solo, long hair, o_o, looking at viewer"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _import_argv(booru: FakeBooru, out: Path, *extra: str) -> list[str]:
    return ["import", "danbooru", IRENE, "--limit", "50", "--out", str(out), "--name", "Irene",
            "--base-url", booru.base_url, *extra]  # fmt: skip


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def test_import_fetches_exactly_the_visible_posts_through_faults_and_a_second_run_fetches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sleeps = patch_sleep(monkeypatch)
    posts, visible = irene_posts()
    with FakeBooru("danbooru", posts, max_limit=20) as booru:
        # API faults: two 500s, a 429 without Retry-After, a 429 with one
        booru.fail_api(500, times=2)
        booru.fail_api(429)
        booru.fail_api(429, retry_after="3")
        # file faults
        booru.fail_file(visible[0].md5, "drop")  # connection closed mid-file -> resumed with Range
        booru.fail_file(visible[1].md5, "reset")  # connection reset mid-file -> resumed
        booru.fail_file(visible[2].md5, "status", times=2, status=503)
        booru.fail_file(visible[3].md5, "status", status=429, retry_after="5")
        booru.fail_file(visible[4].md5, "garbage")  # a non-image body once -> one fresh try
        booru.fail_file(visible[5].md5, "html")  # a web page once
        booru.fail_file(visible[6].md5, "drop", times=2)  # dropped twice, resumed twice

        code, out, err = _run(_import_argv(booru, tmp_path / "ds", "--json"), capsys)
        assert code == 0, err
        result = json.loads(out)
        folder = tmp_path / "ds" / "1_Irene"
        files = _files(folder)

        # exactly the visible stills, each complete and named by its md5, each with its caption
        expected = {p.md5: p for p in visible}
        images = {name: data for name, data in files.items() if not name.endswith((".txt", ".json"))}
        assert sorted(images) == sorted(f"{p.md5}.{p.ext}" for p in visible)
        for name, data in images.items():
            assert hashlib.md5(data).hexdigest() == name.split(".")[0]
            assert data == expected[name.split(".")[0]].data
        for post in visible:
            caption = files[f"{post.md5}.txt"].decode()
            assert caption == (EXPECTED_CAPTION_ODD if "o_o" in post.general else EXPECTED_CAPTION_EVEN)
        assert not any(name.endswith(".part") for name in files)
        assert result["found"] == 45 and len(result["downloaded"]) == 45 and result["failed"] == []
        assert result["skipped"] == {"hidden": 3, "deleted": 2, "banned": 1, "file type": 3}

        # nothing was fetched that is not visible; each file fetched once plus one per injected fault
        fetched = [r.path.rsplit("/", 1)[-1].split(".")[0] for r in booru.file_requests()]
        assert set(fetched) == set(expected)
        faults = {visible[0].md5: 1, visible[1].md5: 1, visible[2].md5: 2, visible[3].md5: 1,
                  visible[4].md5: 1, visible[5].md5: 1, visible[6].md5: 2}  # fmt: skip
        for md5 in expected:
            assert fetched.count(md5) == 1 + faults.get(md5, 0), md5
        # resumed downloads asked for the rest of the file
        ranges = [r.headers.get("range") for r in booru.file_requests() if r.path.endswith(visible[0].md5 + ".jpg")]
        assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
        # Danbooru paged with the b<id> cursor, 20 per page, until an empty page
        pages = [r.query.get("page") for r in booru.api_requests() if r.query.get("tags") == IRENE]
        assert pages[-1].startswith("b") and all(p is None or p.startswith("b") for p in pages)
        # the honest User-Agent everywhere
        assert {r.headers["user-agent"] for r in booru.requests} == {
            "TrainLoRA/0.1.0 (+https://github.com/train-lora/sd-webui-train-lora)"
        }
        # polite pauses: 429 without Retry-After waits 60 s, with it the given 3 s and 5 s; backoff 1, 2
        assert 60.0 in sleeps and 3.0 in sleeps and 5.0 in sleeps and 1.0 in sleeps and 2.0 in sleeps

        archive = json.loads((tmp_path / "ds" / ARCHIVE_NAME).read_text())
        assert len(archive["posts"]) == 45 and set(archive["files"]) == set(expected)

        # a second run downloads nothing
        before = len(booru.file_requests())
        code, out, err = _run(_import_argv(booru, tmp_path / "ds", "--json"), capsys)
        assert code == 0, err
        again = json.loads(out)
        assert again["downloaded"] == [] and len(again["already_have"]) == 45
        assert len(booru.file_requests()) == before
        assert _files(folder) == files


def test_same_md5_on_two_sites_is_downloaded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch_sleep(monkeypatch)
    shared = image_bytes(77)
    dan = [FakePost(10, shared, character=[IRENE]), FakePost(11, image_bytes(78), character=[IRENE])]
    gel = [FakePost(500, shared, character=[IRENE]), FakePost(501, image_bytes(79), character=[IRENE])]
    with FakeBooru("danbooru", dan) as d, FakeBooru("gelbooru", gel, credentials={"42": "k"}) as g:
        first = import_booru(ImportOptions("danbooru", IRENE, tmp_path, "Irene", base_url=d.base_url))
        second = import_booru(
            ImportOptions("gelbooru", IRENE, tmp_path, "Irene", base_url=g.base_url, api_key="k", user="42")
        )
        assert len(first.downloaded) == 2
        assert [f.md5 for f in second.downloaded] == [gel[1].md5]
        assert second.already_have == [f"gelbooru@{g.base_url.split('//')[1]}:500"]
        assert [r.path for r in g.file_requests()] == [f"/images/{gel[1].md5[:2]}/{gel[1].md5[2:4]}/{gel[1].md5}.png"]
    archive = json.loads((tmp_path / ARCHIVE_NAME).read_text())
    assert len(archive["posts"]) == 4 and len(archive["files"]) == 3


def test_existing_part_is_resumed_and_a_complete_part_is_accepted_on_416(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_sleep(monkeypatch)
    a, b = FakePost(1, image_bytes(1), character=[IRENE]), FakePost(2, image_bytes(2), character=[IRENE])
    folder = tmp_path / "3_Irene"
    folder.mkdir()
    (folder / f"{a.md5}.part").write_bytes(a.data[:100])  # interrupted earlier
    (folder / f"{b.md5}.part").write_bytes(b.data)  # complete, never renamed
    with FakeBooru("danbooru", [a, b]) as booru:
        result = import_booru(ImportOptions("danbooru", IRENE, tmp_path, "Irene", repeats=3, base_url=booru.base_url))
        ranges = {r.path.rsplit("/", 1)[-1]: r.headers.get("range") for r in booru.file_requests()}
    assert ranges == {f"{a.md5}.png": "bytes=100-", f"{b.md5}.png": f"bytes={len(b.data)}-"}
    assert len(result.downloaded) == 2
    assert (folder / f"{a.md5}.png").read_bytes() == a.data
    assert (folder / f"{b.md5}.png").read_bytes() == b.data
    assert not list(folder.glob("*.part"))


def test_extension_comes_from_the_file_and_names_never_from_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_sleep(monkeypatch)
    # the site says png, the bytes are a JPEG; moebooru file URLs carry tags and spaces
    post = FakePost(9, image_bytes(9, "JPEG"), ext="png", character=[IRENE], general=["../../evil"])
    with FakeBooru("moebooru", [post]) as booru:
        result = import_booru(ImportOptions("moebooru", IRENE, tmp_path, "Irene", base_url=booru.base_url))
    assert [f.image.name for f in result.downloaded] == [f"{post.md5}.jpg"]
    assert sorted(p.name for p in (tmp_path / "1_Irene").iterdir()) == [f"{post.md5}.jpg", f"{post.md5}.txt"]


def test_file_that_stays_broken_is_reported_and_the_rest_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_sleep(monkeypatch)
    good, bad = FakePost(1, image_bytes(1), character=[IRENE]), FakePost(2, image_bytes(2), character=[IRENE])
    with FakeBooru("danbooru", [good, bad]) as booru:
        booru.fail_file(bad.md5, "garbage", times=2)
        events = RecordingEvents()
        result = import_booru(ImportOptions("danbooru", IRENE, tmp_path, "Irene", base_url=booru.base_url), events)
    assert [f.md5 for f in result.downloaded] == [good.md5]
    assert len(result.failed) == 1 and "not an image" in result.failed[0][1]
    assert any("not an image" in t for t in events.texts("warning"))
    assert sorted(p.name for p in (tmp_path / "1_Irene").iterdir()) == [f"{good.md5}.png", f"{good.md5}.txt"]
    archive = json.loads((tmp_path / ARCHIVE_NAME).read_text())
    assert list(archive["files"]) == [good.md5]  # the broken one is tried again next time


def test_metadata_sidecar_and_no_captions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch_sleep(monkeypatch)
    post = FakePost(5, image_bytes(5), character=[IRENE], general=["1girl"], artist=["kanniiepan"])
    with FakeBooru("danbooru", [post]) as booru:
        opts = ImportOptions(
            "danbooru", IRENE, tmp_path, "Irene", captions="none", metadata=True, base_url=booru.base_url
        )
        import_booru(opts)
    folder = tmp_path / "1_Irene"
    assert sorted(p.name for p in folder.iterdir()) == [f"{post.md5}.json", f"{post.md5}.png"]
    meta = json.loads((folder / f"{post.md5}.json").read_text())
    assert meta["id"] == 5 and meta["md5"] == post.md5 and meta["tags"]["artist"] == ["kanniiepan"]


def test_stop_keeps_finished_files_and_the_next_run_completes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch_sleep(monkeypatch)
    posts = [FakePost(k, image_bytes(k), character=[IRENE]) for k in range(1, 6)]
    stop = StopToken()

    class StopAfterTwo(RecordingEvents):
        def progress(self, stage: str, done: int, total: int, text: str = "") -> None:
            if stage == "downloading" and done == 2 and text.endswith(".png"):
                stop.request()

    with FakeBooru("danbooru", posts) as booru:
        opts = ImportOptions("danbooru", IRENE, tmp_path, "Irene", base_url=booru.base_url)
        first = import_booru(opts, StopAfterTwo(), stop)
        assert first.stopped and len(first.downloaded) == 2
        second = import_booru(opts)
    assert len(second.downloaded) == 3 and len(second.already_have) == 2


# ---------------------------------------------------------------------------------------------
# bad input: one clear message, exit 2, nothing half-written
def _only_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_unknown_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["import", "pixivbooru", IRENE, "--out", str(tmp_path / "ds")], capsys)
    assert code == 2
    line = _only_error_line(err)
    assert "Unknown site 'pixivbooru'" in line and "danbooru, gelbooru, safebooru or moebooru" in line
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("url", ["htp:/danbooru", "danbooru.donmai.us", "https://", "http://host:port/"])
def test_malformed_base_url(tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str) -> None:
    code, _, err = _run(["import", "danbooru", IRENE, "--out", str(tmp_path / "ds"), "--base-url", url], capsys)
    assert code == 2
    assert f"'{url}'" in _only_error_line(err)
    assert not (tmp_path / "ds").exists()


def test_tags_over_the_anonymous_limit_are_explained_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_sleep(monkeypatch)
    posts, _ = irene_posts()
    with FakeBooru("danbooru", posts) as booru:
        argv = ["import", "danbooru", f"{IRENE} solo long_hair rating:g score:>5", "--out", str(tmp_path / "ds"),
                "--base-url", booru.base_url]  # fmt: skip
        code, _, err = _run(argv, capsys)
        assert booru.requests == []
    assert code == 2
    line = _only_error_line(err)
    assert "at most 2 tags" in line and "counts 3" in line and "rating:" in line and "free" in line
    assert "--user" in line and "--api-key" in line
    assert not (tmp_path / "ds").exists()


def test_server_side_tag_limit_for_a_logged_in_member(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_sleep(monkeypatch)
    posts, _ = irene_posts()
    with FakeBooru("danbooru", posts, credentials={"me": "secret"}, account_tag_limit=2) as booru:
        argv = ["import", "danbooru", f"{IRENE} solo long_hair", "--out", str(tmp_path / "ds"),
                "--base-url", booru.base_url, "--user", "me", "--api-key", "secret"]  # fmt: skip
        code, _, err = _run(argv, capsys)
        assert booru.requests[0].headers["user-agent"] == "TrainLoRA/0.1.0 (by me)"
        assert booru.requests[0].headers["authorization"].startswith("Basic ")
    assert code == 2
    line = _only_error_line(err)
    assert "at most 2 tags" in line and "You cannot search for more than 2 tags at a time." in line
    assert "secret" not in err
    assert not (tmp_path / "ds").exists()


def test_wrong_api_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    patch_sleep(monkeypatch)
    posts, _ = irene_posts()
    with FakeBooru("danbooru", posts, credentials={"me": "right"}) as booru:
        argv = [*_import_argv(booru, tmp_path / "ds"), "--user", "me", "--api-key", "wrong"]
        code, _, err = _run(argv, capsys)
    assert code == 2
    line = _only_error_line(err)
    assert "Danbooru rejected the login (HTTP 401)" in line and "--api-key" in line and "wrong" not in err


def test_html_instead_of_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    patch_sleep(monkeypatch)
    posts, _ = irene_posts()
    with FakeBooru("danbooru", posts) as booru:
        booru.html_instead_of_json = True
        code, _, err = _run(_import_argv(booru, tmp_path / "ds"), capsys)
    assert code == 2
    line = _only_error_line(err)
    assert "HTML page instead of JSON" in line and "--base-url" in line
    assert not (tmp_path / "ds").exists()


def test_cloudflare_challenge_is_reported_not_retried(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps = patch_sleep(monkeypatch)
    posts, _ = irene_posts()
    with FakeBooru("danbooru", posts) as booru:
        booru.cloudflare_api()
        code, _, err = _run(_import_argv(booru, tmp_path / "ds"), capsys)
        assert len(booru.requests) == 1
    assert code == 2 and "Cloudflare" in _only_error_line(err)
    assert sleeps == []


class _FullDisk:
    """A .part file whose writes fail with ENOSPC once ``budget`` bytes were written."""

    def __init__(self, path: Path, mode: str, budget: list[int]) -> None:
        self._handle = open(path, mode)  # noqa: SIM115 - closed in close()
        self._budget = budget

    def write(self, data: bytes) -> int:
        if self._budget[0] < len(data):
            self._handle.write(data[: max(0, self._budget[0])])
            self._budget[0] = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._budget[0] -= len(data)
        return self._handle.write(data)

    def flush(self) -> None:
        self._handle.flush()

    def fileno(self) -> int:
        return self._handle.fileno()

    def close(self) -> None:
        self._handle.close()


def test_full_disk_stops_with_a_clear_message_and_leaves_only_complete_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_sleep(monkeypatch)
    posts, visible = irene_posts()
    visible = sorted(visible, key=lambda p: -p.id)  # the order the site lists them
    budget = [sum(len(p.data) for p in visible[:3]) + 50]  # the 4th image runs out of space
    monkeypatch.setattr(download, "_open_part", lambda path, mode: _FullDisk(path, mode, budget))
    with FakeBooru("danbooru", posts) as booru:
        code, _, err = _run(_import_argv(booru, tmp_path / "ds"), capsys)
    assert code == 2
    line = _only_error_line(err)
    assert "the disk is full" in line and ".part" in line
    folder = tmp_path / "ds" / "1_Irene"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([f"{p.md5}.{p.ext}" for p in visible[:3]] + [f"{p.md5}.txt" for p in visible[:3]])
    for post in visible[:3]:
        assert (folder / f"{post.md5}.{post.ext}").read_bytes() == post.data
    archive = json.loads((tmp_path / "ds" / ARCHIVE_NAME).read_text())
    assert set(archive["files"]) == {p.md5 for p in visible[:3]}


def test_full_disk_while_writing_a_caption_leaves_no_half_pair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_sleep(monkeypatch)
    posts, visible = irene_posts()
    visible = sorted(visible, key=lambda p: -p.id)
    real = download.atomic_write_text
    calls = [0]

    def failing(path: Path, text: str) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")  # what atomic_open turns into a UserError
        real(path, text)

    def user_error_on_enospc(path: Path, text: str) -> None:
        from lib_lora.common import fsutil

        try:
            failing(path, text)
        except OSError as exc:
            raise fsutil.write_error(Path(path), exc) from exc

    monkeypatch.setattr(download, "atomic_write_text", user_error_on_enospc)
    with FakeBooru("danbooru", posts) as booru:
        code, _, err = _run(_import_argv(booru, tmp_path / "ds"), capsys)
    assert code == 2 and "the disk is full" in _only_error_line(err)
    names = sorted(p.name for p in (tmp_path / "ds" / "1_Irene").iterdir())
    assert names == sorted([f"{visible[0].md5}.{visible[0].ext}", f"{visible[0].md5}.txt"])


def test_cli_caption_and_filter_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_sleep(monkeypatch)
    posts = [
        FakePost(1, image_bytes(1), character=[IRENE], general=["1girl", "smile"], artist=["kanniiepan"], rating="g"),
        FakePost(2, image_bytes(2), character=[IRENE], general=["1girl", "comic"], rating="g"),
        FakePost(3, image_bytes(3), character=[IRENE], general=["1girl"], rating="e"),
    ]
    with FakeBooru("danbooru", posts) as booru:
        argv = ["import", "danbooru", IRENE, "--out", str(tmp_path), "--repeats", "4", "--rating", "g",
                "--exclude", "comic,monochrome", "--trigger", "ireneLoRA", "--artist-tags", "--rating-tags",
                "--base-url", booru.base_url, "--json"]  # fmt: skip
        code, out, err = _run(argv, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["folder"] == str(tmp_path / "4_irene")  # the name defaults to the first tag, qualifier dropped
    assert result["skipped"] == {"rating": 1, "excluded tag": 1}
    caption = (tmp_path / "4_irene" / f"{posts[0].md5}.txt").read_text()
    assert caption == "ireneLoRA, 1girl, irene (kanniiepan), kanniiepan, smile, safe"


# -- a hostile booru: local files, foreign hosts, endless files ------------------------------------------


@pytest.mark.parametrize("scheme", ["file", "ftp"])
def test_a_post_with_a_non_web_file_address_is_skipped_and_the_rest_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    patch_sleep(monkeypatch)
    secret = tmp_path / "secret.png"
    secret.write_bytes(image_bytes(9))
    good = FakePost(1, image_bytes(1), character=[IRENE])
    local = FakePost(2, image_bytes(9), character=[IRENE])
    local.url_override = f"{scheme}://{'' if scheme == 'file' else '127.0.0.1'}{secret.as_posix()}"
    with FakeBooru("danbooru", [good, local]) as booru:
        events = RecordingEvents()
        result = import_booru(
            ImportOptions("danbooru", IRENE, tmp_path / "ds", "Irene", base_url=booru.base_url), events
        )
    assert [f.md5 for f in result.downloaded] == [good.md5]
    ((key, reason),) = result.failed
    assert key.endswith(":2")
    assert "not a web address" in reason and "only http(s)" in reason
    assert any("Skipped" in t and "not a web address" in t for t in events.texts("warning"))
    assert not (tmp_path / "ds" / "1_Irene" / f"{local.md5}.png").exists()


def test_a_file_on_another_host_is_not_fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch_sleep(monkeypatch)
    good = FakePost(1, image_bytes(1), character=[IRENE])
    foreign = FakePost(2, image_bytes(2), character=[IRENE], url_override="http://169.254.169.254/latest/x.png")
    with FakeBooru("danbooru", [good, foreign]) as booru:
        result = import_booru(ImportOptions("danbooru", IRENE, tmp_path, "Irene", base_url=booru.base_url))
    assert [f.md5 for f in result.downloaded] == [good.md5]
    assert "169.254.169.254, not on Danbooru's own servers" in result.failed[0][1]


def test_a_redirect_to_a_local_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch_sleep(monkeypatch)
    secret = tmp_path / "secret.png"
    secret.write_bytes(image_bytes(9))
    good, bad = FakePost(1, image_bytes(1), character=[IRENE]), FakePost(2, image_bytes(2), character=[IRENE])
    with FakeBooru("danbooru", [good, bad]) as booru:
        # urllib alone refuses file:// redirects but follows ftp:// ones
        booru.fail_file(bad.md5, "redirect", times=10, body=f"ftp://127.0.0.1:1{secret.as_posix()}".encode())
        result = import_booru(ImportOptions("danbooru", IRENE, tmp_path / "ds", "Irene", base_url=booru.base_url))
    assert [f.md5 for f in result.downloaded] == [good.md5]
    assert len(result.failed) == 1 and result.failed[0][0].endswith(":2")
    assert "HTTP 302: a redirect to an address that is not downloaded" in result.failed[0][1]
    assert sorted(p.name for p in (tmp_path / "ds" / "1_Irene").iterdir()) == [f"{good.md5}.png", f"{good.md5}.txt"]


def test_a_server_sending_more_than_the_declared_size_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hostile booru that filled 1.5 GB: the declared size (with slack) caps the download, the
    part is removed, the post reported, the import goes on."""
    patch_sleep(monkeypatch)
    good = FakePost(1, image_bytes(1), character=[IRENE])
    hostile = FakePost(2, image_bytes(2), character=[IRENE], declared_size=20_000)
    with FakeBooru("danbooru", [good, hostile]) as booru:
        booru.fail_file(hostile.md5, "endless", times=10, status=400)  # would be 25 MiB
        result = import_booru(ImportOptions("danbooru", IRENE, tmp_path, "Irene", base_url=booru.base_url))
        assert booru.endless_sent
    assert [f.md5 for f in result.downloaded] == [good.md5]
    assert "more than 1.0 MiB" in result.failed[0][1] and "declared" in result.failed[0][1]
    assert sorted(p.name for p in (tmp_path / "1_Irene").iterdir()) == [f"{good.md5}.png", f"{good.md5}.txt"]


def test_a_file_without_a_declared_size_stops_at_the_hard_ceiling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_sleep(monkeypatch)
    monkeypatch.setattr(download, "MAX_FILE_BYTES", 2 << 20)
    hostile = FakePost(2, image_bytes(2), character=[IRENE], declared_size=0)  # "file_size": 0 = unknown
    with FakeBooru("danbooru", [hostile]) as booru:
        booru.fail_file(hostile.md5, "endless", times=10, status=400)
        result = import_booru(ImportOptions("danbooru", IRENE, tmp_path, "Irene", base_url=booru.base_url))
    assert not result.downloaded and "more than 2.0 MiB" in result.failed[0][1]
    assert not list((tmp_path / "1_Irene").glob("*.part"))


@pytest.mark.parametrize(
    "site, base, url, ok",
    [
        ("danbooru", None, "https://cdn.donmai.us/original/ab/cd/abcd.png", True),
        ("danbooru", None, "https://danbooru.donmai.us/data/abcd.png", True),
        ("danbooru", None, "https://cdn.donmai.us:8443/original/abcd.png", False),
        ("danbooru", None, "https://donmai.us.evil.example/abcd.png", False),
        ("gelbooru", None, "https://img3.gelbooru.com/images/ab/cd/abcd.png", True),
        ("safebooru", None, "https://safebooru.org/images/1/abcd.png", True),
        ("yandere", None, "https://files.yande.re/image/abcd/yande.re%201.png", True),
        ("konachan", None, "https://konachan.net/image/abcd/x.png", True),
        ("moebooru", "https://booru.example.org", "https://files.booru.example.org/image/x.png", True),
        ("moebooru", "https://booru.example.org", "https://example.org/image/x.png", False),
        ("danbooru", None, "file:///etc/passwd", False),
    ],
)
def test_file_hosts_each_site_may_serve(site: str, base: str | None, url: str, ok: bool) -> None:
    from lib_lora.importer.clients import make_client
    from lib_lora.importer.http import HttpClient

    client = make_client(site, HttpClient(), base_url=base, login="1", api_key="k")
    assert (client.file_url_problem(url) is None) is ok, client.file_url_problem(url)


def test_absurd_repeats_are_refused_before_any_request_and_nothing_is_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1000000000_irene would be a folder training refuses (an epoch over its step limit)."""
    # nothing listens at the base address: a request would fail with another message
    argv = ["import", "danbooru", IRENE, "--out", str(tmp_path / "data"), "--repeats", "1000000000",
            "--base-url", "http://127.0.0.1:9/"]  # fmt: skip
    code, out, err = _run(argv, capsys)
    assert code != 0 and "Repeats 1,000,000,000 is too many" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--min-width", "-5", "--min-width must be a whole number of pixels, 0 or more, not -5."),
        ("--min-height", "-1", "--min-height must be a whole number of pixels, 0 or more, not -1."),
        ("--limit", "0", "--limit must be a whole number of posts of at least 1, not 0."),
        ("--limit", "-3", "--limit must be a whole number of posts of at least 1, not -3."),
        ("--repeats", "0", "--repeats must be a whole number of at least 1, not 0."),
    ],
)
def test_negative_or_zero_numbers_are_refused_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    """A negative --min-width was taken as no minimum without a word."""
    argv = ["import", "danbooru", IRENE, "--out", str(tmp_path / "data"), option, value,
            "--base-url", "http://127.0.0.1:9/"]  # fmt: skip
    code, out, err = _run(argv, capsys)
    assert code != 0 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("limit", ["100000000", "10001"])
def test_an_absurd_limit_is_refused_before_any_request_and_nothing_is_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], limit: str
) -> None:
    """A typo such as --limit 100000000 would search page after page for hours before anyone noticed."""
    # nothing listens at the base address: a request would fail with another message
    argv = ["import", "danbooru", IRENE, "--out", str(tmp_path / "data"), "--limit", limit,
            "--base-url", "http://127.0.0.1:9/"]  # fmt: skip
    code, out, err = _run(argv, capsys)
    assert code != 0 and f"--limit {int(limit):,} is more images than one import fetches (at most 10,000)" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "data").exists()


def test_the_largest_allowed_limit_is_accepted(tmp_path: Path) -> None:
    options = ImportOptions(site="danbooru", tags=IRENE, out=tmp_path / "data", name="Irene", limit=download.MAX_LIMIT)
    options.validate()  # no refusal at the cap itself


def test_empty_tags_are_named_as_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`import danbooru "" --out data` said 'Give the subfolder's class tokens with --name'."""
    code, _, err = _run(["import", "danbooru", "  ", "--out", str(tmp_path / "data")], capsys)
    assert code == 2 and err.strip() == 'error: No tags to search for: give the booru tags, e.g. "irene_(kanniiepan)".'
    assert not (tmp_path / "data").exists()
