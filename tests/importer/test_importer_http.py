"""The polite HTTP client: User-Agent, pacing, retries, 429, Cloudflare, HTML instead of JSON."""

from __future__ import annotations

import socket

import pytest

from lib_lora.common.errors import UserError
from lib_lora.events import StopRequested, StopToken
from lib_lora.importer.http import (
    CloudflareChallenge,
    HttpClient,
    HttpError,
    NetworkError,
    parse_retry_after,
    redact_url,
    user_agent,
)
from support.importer_fakebooru import FakeBooru, FakePost
from support.importer_images import image_bytes


class FakeClock:
    """A clock that only moves when the client sleeps: pauses are recorded, never waited."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.now += seconds


def _client(clock: FakeClock, **kw: object) -> HttpClient:
    return HttpClient(sleep=clock.sleep, clock=clock, **kw)  # type: ignore[arg-type]


@pytest.fixture()
def booru():
    with FakeBooru("danbooru", [FakePost(1, image_bytes(1), general=["x"])]) as server:
        yield server


def test_user_agent_is_honest() -> None:
    assert user_agent() == "TrainLoRA/0.1.0 (+https://github.com/train-lora/sd-webui-train-lora)"
    assert user_agent("alice") == "TrainLoRA/0.1.0 (by alice)"


def test_one_request_per_second_per_host(booru: FakeBooru) -> None:
    clock = FakeClock()
    client = _client(clock, min_interval=1.0)
    for _ in range(3):
        client.get_json(booru.base_url + "/posts.json", {"tags": "x"})
    assert clock.sleeps == [1.0, 1.0]


def test_5xx_is_retried_with_growing_pauses(booru: FakeBooru) -> None:
    clock = FakeClock()
    booru.fail_api(500, times=2)
    data = _client(clock, min_interval=0).get_json(booru.base_url + "/posts.json", {"tags": "x"})
    assert [p["id"] for p in data] == [1]
    assert clock.sleeps == [1.0, 2.0]


def test_gives_up_after_five_attempts(booru: FakeBooru) -> None:
    clock = FakeClock()
    booru.fail_api(503, times=5)
    with pytest.raises(HttpError, match=r"kept answering HTTP 503 \(fake error 503\) \(tried 5 times\)"):
        _client(clock, min_interval=0).get_json(booru.base_url + "/posts.json")
    assert clock.sleeps == [1.0, 2.0, 3.0, 4.0]
    assert len(booru.requests) == 5


@pytest.mark.parametrize("retry_after, expected", [(None, 60.0), ("7", 7.0), ("100000", 600.0)])
def test_429_waits_retry_after_or_60_s(booru: FakeBooru, retry_after: str | None, expected: float) -> None:
    clock = FakeClock()
    booru.fail_api(429, retry_after=retry_after)
    _client(clock, min_interval=0).get_json(booru.base_url + "/posts.json")
    assert clock.sleeps == [expected]


def test_retry_after_as_http_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None


def test_other_4xx_fail_at_once_with_the_server_message(booru: FakeBooru) -> None:
    clock = FakeClock()
    booru.fail_api(404, body=b'{"success": false, "message": "That record was not found."}')
    with pytest.raises(HttpError) as info:
        _client(clock, min_interval=0).get_json(booru.base_url + "/posts.json", {"api_key": "s3cret"})
    assert info.value.status == 404 and "That record was not found." in str(info.value)
    assert "s3cret" not in str(info.value)
    assert clock.sleeps == []


def test_cloudflare_challenge_is_not_retried(booru: FakeBooru) -> None:
    clock = FakeClock()
    booru.cloudflare_api()
    with pytest.raises(CloudflareChallenge, match="Cloudflare browser check"):
        _client(clock, min_interval=0).get_json(booru.base_url + "/posts.json")
    assert len(booru.requests) == 1 and clock.sleeps == []


def test_html_instead_of_json(booru: FakeBooru) -> None:
    booru.html_instead_of_json = True
    with pytest.raises(UserError, match="HTML page instead of JSON"):
        _client(FakeClock(), min_interval=0).get_json(booru.base_url + "/posts.json")


def test_connection_refused_is_retried_then_reported() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    clock = FakeClock()
    with pytest.raises(NetworkError, match="connection refused"):
        _client(clock, min_interval=0).get(f"http://127.0.0.1:{port}/posts.json")
    assert clock.sleeps == [1.0, 2.0, 3.0, 4.0]


def test_stop_token_interrupts_a_long_wait(booru: FakeBooru) -> None:
    stop = StopToken()
    booru.fail_api(429)  # would wait 60 s
    client = HttpClient(min_interval=0, stop=stop, sleep=lambda s: stop.request())
    with pytest.raises(StopRequested):
        client.get_json(booru.base_url + "/posts.json")


def test_default_sleep_stops_promptly() -> None:
    stop = StopToken()
    stop.request()
    with pytest.raises(StopRequested):
        HttpClient(stop=stop).sleep(60)


def test_redact_url_hides_secrets() -> None:
    url = "https://gelbooru.com/index.php?page=dapi&api_key=abc&user_id=1&password_hash=xyz"
    assert "abc" not in redact_url(url) and "xyz" not in redact_url(url) and "user_id=1" in redact_url(url)
