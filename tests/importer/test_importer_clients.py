"""Booru clients against the fake site: paging, shapes, filters, credentials (issue 8 item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib_lora.common.errors import UserError
from lib_lora.events import RecordingEvents
from lib_lora.importer.clients import (
    DanbooruClient,
    GelbooruClient,
    make_client,
    normalize_base_url,
    parse_ratings,
)
from lib_lora.importer.download import ImportOptions, import_booru, search
from lib_lora.importer.http import HttpClient
from support.importer_fakebooru import IRENE, FakeBooru, FakePost, irene_posts, patch_sleep
from support.importer_images import image_bytes


@pytest.fixture(autouse=True)
def _no_waiting(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    return patch_sleep(monkeypatch)


def _opts(site: str, booru: FakeBooru, tmp_path: Path, **kw: object) -> ImportOptions:
    return ImportOptions(site, kw.pop("tags", IRENE), tmp_path, "Irene", base_url=booru.base_url, **kw)  # type: ignore[arg-type]


def test_danbooru_cursor_paging_visits_every_page_once(tmp_path: Path) -> None:
    posts, visible = irene_posts()
    with FakeBooru("danbooru", posts, max_limit=10) as booru:
        found = search(_opts("danbooru", booru, tmp_path, limit=1000))
        requests = booru.api_requests()
    assert [p.id for p in found.posts] == sorted((p.id for p in visible), reverse=True)
    pages = [r.query.get("page") for r in requests]
    assert pages[0] is None and all(p.startswith("b") for p in pages[1:])
    cursors = [int(p[1:]) for p in pages[1:]]
    assert cursors == sorted(cursors, reverse=True) and len(set(cursors)) == len(cursors)
    assert {r.query["limit"] for r in requests} == {"200"}


def test_danbooru_limit_stops_paging_early(tmp_path: Path) -> None:
    posts, visible = irene_posts()
    with FakeBooru("danbooru", posts, max_limit=10) as booru:
        # newest first: 9 left-out posts and 1 visible on page 1, 10 visible on page 2
        found = search(_opts("danbooru", booru, tmp_path, limit=11))
        n_requests = len(booru.api_requests())
    assert len(found.posts) == 11 and n_requests == 2


def test_danbooru_order_metatag_uses_numbered_pages(tmp_path: Path) -> None:
    posts, _ = irene_posts()
    with FakeBooru("danbooru", posts, max_limit=20) as booru:
        search(_opts("danbooru", booru, tmp_path, tags=f"{IRENE} order:score", limit=1000))
        pages = [r.query.get("page") for r in booru.api_requests()]
    assert pages == ["1", "2", "3", "4"]


def test_empty_results(tmp_path: Path) -> None:
    posts, _ = irene_posts()
    for kind, site in (("danbooru", "danbooru"), ("gelbooru02", "safebooru"), ("moebooru", "moebooru")):
        with FakeBooru(kind, posts) as booru:
            result = import_booru(_opts(site, booru, tmp_path, tags="no_such_tag"))
        assert result.found == 0 and result.downloaded == [] and result.failed == []


@pytest.mark.parametrize(
    "query, counted",
    [
        (f"{IRENE} solo", 2),
        (f"{IRENE} solo rating:g,s score:>10 -status:deleted width:>=512", 2),
        (f"{IRENE} order:score", 2),  # order: counts
        (f"{IRENE} -solo", 2),  # a negated tag counts
        ("a b c", 3),
    ],
)
def test_danbooru_counts_only_non_free_terms(query: str, counted: int) -> None:
    assert len(DanbooruClient.counted_terms(query)) == counted


def test_filters_rating_size_score_excluded_tags(tmp_path: Path) -> None:
    posts = [
        FakePost(1, image_bytes(1, size=(200, 150)), character=[IRENE], rating="g", score=5),
        FakePost(2, image_bytes(2, size=(200, 150)), character=[IRENE], rating="e", score=50),
        FakePost(3, image_bytes(3, size=(60, 40)), character=[IRENE], rating="s", score=50),
        FakePost(4, image_bytes(4, size=(200, 150)), character=[IRENE], rating="s", score=50, general=["comic"]),
        FakePost(5, image_bytes(5, size=(200, 150)), character=[IRENE], rating="s", score=50),
    ]
    with FakeBooru("danbooru", posts) as booru:
        found = search(
            _opts(
                "danbooru",
                booru,
                tmp_path,
                ratings="g,s",
                min_width=100,
                min_height=100,
                min_score=10,
                exclude_tags=("comic",),
            )  # fmt: skip
        )
    assert [p.id for p in found.posts] == [5]
    assert found.skipped == {"excluded tag": 1, "too small": 1, "rating": 1, "score": 1}


def test_unknown_rating_is_a_clear_error() -> None:
    assert parse_ratings("general, q") == {"g", "q"}
    with pytest.raises(UserError, match="Unknown rating 'safe-ish'"):
        parse_ratings("g,safe-ish")


def test_gelbooru_requires_credentials_and_says_where_to_get_them() -> None:
    http = HttpClient()
    with pytest.raises(UserError) as info:
        make_client("gelbooru", http)
    assert "API Access Credentials" in str(info.value) and "--api-key" in str(info.value)
    with pytest.raises(UserError, match="numeric user ID"):
        make_client("gelbooru", http, login="alice", api_key="k")


def test_gelbooru_401_from_the_server(tmp_path: Path) -> None:
    posts, _ = irene_posts()
    with FakeBooru("gelbooru", posts, credentials={"42": "right"}) as booru:
        with pytest.raises(UserError, match="HTTP 401.*API key or user ID"):
            search(_opts("gelbooru", booru, tmp_path, api_key="wrong", user="42"))
        assert "wrong" not in booru.requests[0].headers.get("user-agent", "")


def test_gelbooru_pid_paging_unescapes_tags_and_splits_categories(tmp_path: Path) -> None:
    posts, visible = irene_posts()
    special = FakePost(9999, image_bytes(9999), character=[IRENE], general=["jack-o'-lantern", "1girl"],
                       copyright=["original"], artist=["kanniiepan"], meta=["highres"])  # fmt: skip
    with FakeBooru("gelbooru", [*posts, special], credentials={"42": "k"}) as booru:
        found = search(_opts("gelbooru", booru, tmp_path, api_key="k", user="42", limit=1000))
        post_requests = [r for r in booru.api_requests() if r.query.get("s") == "post"]
        tag_requests = [r for r in booru.api_requests() if r.query.get("s") == "tag"]
    assert len(found.posts) == len(visible) + 2  # + the post Danbooru calls banned: Gelbooru has no such flag
    assert [r.query["pid"] for r in post_requests] == ["0", "1"]
    assert all(r.query["api_key"] == "k" and r.query["user_id"] == "42" for r in booru.api_requests())
    assert len(tag_requests) == 1  # one tag lookup for the page; names cached afterwards
    first = found.posts[0]
    assert first.id == 9999
    assert first.tags.general == ("jack-o'-lantern", "1girl")
    assert first.tags.character == (IRENE,) and first.tags.artist == ("kanniiepan",)
    assert first.tags.meta == ("highres",) and first.rating == "g"


def test_gelbooru_switches_to_an_id_cursor_before_the_depth_cap(tmp_path: Path) -> None:
    posts, visible = irene_posts()
    with FakeBooru("gelbooru", posts, credentials={"42": "k"}, max_limit=10, depth_cap=20) as booru:
        http = HttpClient()
        client = make_client("gelbooru", http, base_url=booru.base_url, login="42", api_key="k")
        assert isinstance(client, GelbooruClient)
        client.depth_cap = 20
        ids = [p.id for page in client.pages(IRENE, 10) for p in page]
        queries = [(r.query["pid"], r.query["tags"]) for r in booru.api_requests() if r.query.get("s") == "post"]
    assert ids == sorted({p.id for p in posts if IRENE in p.character}, reverse=True)
    # pids 0 and 1 stay under the cap (offsets 0 and 10); then id cursors, never a page past the cap
    assert queries[:2] == [("0", IRENE), ("1", IRENE)]
    assert all(tags.startswith(f"{IRENE} id:<") for _, tags in queries[2:]) and len(queries) > 3
    assert all(int(pid) * 10 < 20 for pid, _ in queries)


def test_safebooru_bare_lists_empty_body_urls_and_old_ratings(tmp_path: Path) -> None:
    posts, visible = irene_posts()
    with FakeBooru("gelbooru02", posts, max_limit=20) as booru:
        found = search(_opts("safebooru", booru, tmp_path, limit=1000, ratings="s"))
        result = import_booru(_opts("safebooru", booru, tmp_path, limit=3))
        files = [r.path for r in booru.file_requests()]
    # "safe" on the old scale matches g and s; there is no "banned" flag on these sites
    assert len(found.posts) == len(visible) + 1
    assert all(p.rating == "safe" for p in found.posts)
    assert all(path.startswith("/images/") and "/pic" in path for path in files)
    assert [f.md5 for f in result.downloaded] == [p.md5 for p in found.posts[:3]]
    caption = result.downloaded[-1].caption.read_text()  # a post with the full set of tags
    assert "highres" not in caption and "commentary" not in caption and "bad id" not in caption
    assert "irene (kanniiepan)" in caption and "long hair" in caption


def test_moebooru_pages_and_tag_categories(tmp_path: Path) -> None:
    posts, visible = irene_posts()
    with FakeBooru("moebooru", posts, max_limit=20) as booru:
        found = search(_opts("moebooru", booru, tmp_path, limit=1000))
        pages = [r.query["page"] for r in booru.api_requests()]
        assert all(r.query["api_version"] == "2" for r in booru.api_requests())
    assert pages == ["1", "2", "3", "4"]
    assert len(found.posts) == len(visible) + 1  # moebooru has no "banned" flag
    post = next(p for p in found.posts if p.id == visible[-1].id)
    assert post.tags.character == (IRENE,) and post.tags.copyright == ("original",)
    assert post.tags.artist == ("kanniiepan",) and "long_hair" in post.tags.general
    assert found.skipped == {"hidden": 3, "deleted": 2, "file type": 3}


def test_retries_are_reported_as_warnings(tmp_path: Path, _no_waiting: list[float]) -> None:
    posts, _ = irene_posts()
    with FakeBooru("danbooru", posts) as booru:
        booru.fail_api(503, times=1)
        events = RecordingEvents()
        search(_opts("danbooru", booru, tmp_path, limit=5), events)
    assert any("HTTP 503" in t and "retrying in 1 s" in t for t in events.texts("warning"))
    assert _no_waiting.count(1.0) >= 1


def test_base_url_normalisation() -> None:
    assert normalize_base_url("HTTPS://example.org/booru/") == "https://example.org/booru"
    for bad in ("ftp://example.org", "example.org", "https://example.org/?q=1", "http://a b.org"):
        with pytest.raises(UserError):
            normalize_base_url(bad)


def test_aliases_and_site_keys() -> None:
    http = HttpClient()
    konachan = make_client("konachan", http)
    assert konachan.base_url == "https://konachan.com" and konachan.site_key == "moebooru@konachan.com"
    assert make_client("danbooru", http).site_key == "danbooru"
    with pytest.raises(UserError, match="both --user"):
        make_client("danbooru", http, login="me")
