"""download() against a real loopback server that misbehaves: every fault ends as a Download with its reason,
within the time the config allows, and nothing raises."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from email.utils import formatdate
from pathlib import Path

import pytest
import urllib3
from faultserver import RESET, FaultServer, fault_server, sample_jpeg, torture_routes

from curate.config import FetchConfig
from curate.fetching import download as download_module
from curate.fetching.download import Download, HostLimiter, download, make_pool
from curate.schema import REASONS

# Small timeouts keep the file fast; drips pause 0.2 s per byte, under the read timeout, so only the total
# deadline can end them.
FAST = FetchConfig(
    connect_timeout_s=1.0,
    read_timeout_s=1.0,
    total_timeout_s=2.0,
    retries=0,
    backoff_s=0.01,
    max_retry_after_s=3.0,
    max_bytes=300_000,
)
SLACK_S = 1.0  # how far past its deadline an attempt may end
# Outcomes the image check decides after download() returned ok (the body is there, it is just no image).
DECIDED_LATER = frozenset({"not_an_image"})
IMAGE = sample_jpeg(seed=21)


def get(url: object, cfg: FetchConfig = FAST, pool: urllib3.PoolManager | None = None) -> tuple[Download, float]:
    start = time.monotonic()
    got = download(url, cfg, pool or make_pool(cfg), HostLimiter(4))  # type: ignore[arg-type]
    elapsed = time.monotonic() - start
    assert got.reason in REASONS["fetch"]
    return got, elapsed


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with fault_server(keep_alive=True) as running:
        yield running


@pytest.fixture(scope="module")
def routes(server: FaultServer) -> dict[str, tuple[str, str, str]]:
    return torture_routes(server)


def _torture_ids() -> list[str]:
    scratch = FaultServer()
    try:
        return list(torture_routes(scratch))
    finally:
        scratch.server_close()


TORTURE_IDS = _torture_ids()


def test_the_torture_list_is_long_and_well_formed(routes: dict[str, tuple[str, str, str]]) -> None:
    assert len(routes) >= 25
    for url, status, reason in routes.values():
        assert url.startswith("http://127.0.0.1:")
        assert reason in REASONS["fetch"]
        policy = reason in ("too_large", "unsupported_format", "single_colour", "too_small", "extreme_aspect")
        assert status == ("ok" if reason == "ok" else "rejected" if policy else "failed"), (url, reason)


@pytest.mark.parametrize("case", TORTURE_IDS)
def test_each_http_fault_gets_its_reason_in_time(routes: dict[str, tuple[str, str, str]], case: str) -> None:
    url, _, reason = routes[case]
    retrying = case.startswith("retry-after")  # needs a second attempt to show anything
    cfg = replace(FAST, retries=1) if retrying else FAST
    got, elapsed = get(url, cfg)
    want = "ok" if reason in DECIDED_LATER else reason
    assert (got.reason, case) == (want, case), got.error
    if want == "ok":
        assert got.error is None
    else:
        assert got.error
    # One attempt never outlasts its deadline by more than the slack, whatever the server drips.
    waited = cfg.max_retry_after_s if retrying else 0.0
    assert elapsed <= got.attempts * (cfg.total_timeout_s + SLACK_S) + waited, (case, elapsed)


def test_decoded_and_clipped_bodies_are_exact(routes: dict[str, tuple[str, str, str]]) -> None:
    image = sample_jpeg(seed=11)  # what torture_routes serves
    for case in ("ok", "gzip", "length-shorter", "length-twice-same", "length-not-a-number", "interim-103"):
        got, _ = get(routes[case][0])
        assert got.body == image, case
        assert got.http_status == 200


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",
        "http://[::1/x.jpg",
        "https://[::1]:99999/x.jpg",
        "http://host:99999/x.jpg",
        "http://host:abc/x.jpg",
        "http://host:0/x.jpg",
        "http://ex ample.com/x.jpg",
        "http://example.com/a b.jpg",
        " http://example.com/x.jpg",
        "http://example.com/x\x00.jpg",
        "http://example.com/x\n.jpg",
        "http://exämple.com/x.jpg",
        "http://exa%41mple.com/x.jpg",
        "http://[1.2.3.4]/x.jpg",
        "http:///x.jpg",
        "http://:80/x.jpg",
        "//example.com/x.jpg",
        "example.com/x.jpg",
        "",
        "None",
        "nan",
        None,
        float("nan"),
        b"http://example.com/x.jpg",
        "javascript:alert(1)",
        "data:image/jpeg;base64,AAAA",
        "ftp://127.0.0.1/x.jpg",
        "gopher://example.com/",
        "http://example.com/" + "a" * 20_000,
    ],
)
def test_unusable_urls_are_bad_url_without_a_request(url: object) -> None:
    got, elapsed = get(url)
    assert got.reason == "bad_url", got
    assert got.error and got.attempts == 0
    assert elapsed < 0.5


def test_a_redirect_never_reads_local_files(server: FaultServer, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(IMAGE)
    cfg = replace(FAST, file_root=str(tmp_path))
    direct, _ = get(secret.as_uri(), cfg)
    assert direct.reason == "ok" and direct.body == IMAGE  # file: itself is allowed under the root
    for target in (secret.as_uri(), f"file:{secret.name}", "FILE:///etc/passwd"):
        redirected, _ = get(server.redirect("/to-local.jpg", target), cfg)
        assert redirected.reason == "bad_url" and redirected.body == b"", target
        assert redirected.http_status == 302


def test_file_urls_that_are_not_files(tmp_path: Path) -> None:
    cfg = replace(FAST, file_root=str(tmp_path))
    (tmp_path / "dir").mkdir()
    assert get((tmp_path / "dir").as_uri(), cfg)[0].reason == "not_found"
    assert get((tmp_path / "none.jpg").as_uri(), cfg)[0].reason == "not_found"
    assert get("file:///x%00y.jpg", cfg)[0].reason == "bad_url"
    assert get("file:///etc/passwd", cfg)[0].reason == "url_outside_root"


def test_a_trickle_is_cut_at_the_deadline_on_every_attempt(server: FaultServer) -> None:
    url = server.drip("/drip-retried.jpg", IMAGE[:400], 0.2)
    cfg = replace(FAST, retries=1)
    got, elapsed = get(url, cfg)
    assert got.reason == "timeout" and got.attempts == 2
    assert server.hits["/drip-retried.jpg"] == 2
    assert elapsed <= 2 * (cfg.total_timeout_s + SLACK_S)
    first, second = server.times["/drip-retried.jpg"]
    assert second - first <= cfg.total_timeout_s + SLACK_S  # the first attempt ended at its deadline


def test_the_deadline_holds_for_the_body_with_a_plain_pool_too(server: FaultServer) -> None:
    url = server.drip("/drip-plain.jpg", IMAGE[:400], 0.2, framing="close")
    got, elapsed = get(url, FAST, urllib3.PoolManager(retries=False))
    assert got.reason == "timeout"
    assert elapsed <= FAST.total_timeout_s + SLACK_S


def test_retry_after_seconds_is_honoured(server: FaultServer) -> None:
    url = server.retry_after("/ra-2.jpg", "2", IMAGE)
    got, _ = get(url, replace(FAST, retries=1))
    assert got.reason == "ok" and got.attempts == 2 and got.body == IMAGE
    first, second = server.times["/ra-2.jpg"]
    assert second - first >= 2.0


def test_retry_after_http_date_is_honoured(server: FaultServer) -> None:
    # An HTTP-date has whole seconds: three seconds ahead is at least two seconds of waiting.
    url = server.retry_after("/ra-date.jpg", lambda: formatdate(time.time() + 3, usegmt=True), IMAGE, code=503)
    got, _ = get(url, replace(FAST, retries=1, max_retry_after_s=5))
    assert got.reason == "ok" and got.attempts == 2
    first, second = server.times["/ra-date.jpg"]
    assert second - first >= 1.9


def test_retry_after_over_the_cap_gives_up_at_once(server: FaultServer) -> None:
    url = server.retry_after("/ra-long.jpg", "3600", IMAGE, code=503)
    got, elapsed = get(url, replace(FAST, retries=3))
    assert got.reason == "http_server_error" and got.http_status == 503 and got.attempts == 1
    assert got.error and "max_retry_after_s" in got.error
    assert elapsed < 1.0 and server.hits["/ra-long.jpg"] == 1


def test_backoff_is_full_jitter(server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        asked.append((low, high))
        return high / 2

    monkeypatch.setattr(download_module._jitter, "uniform", uniform)
    url = server.fail_then_serve("/flaky-jitter.jpg", 2, IMAGE)
    got, _ = get(url, replace(FAST, retries=3, backoff_s=0.1))
    assert got.reason == "ok" and got.attempts == 3
    assert asked == [(0.0, 0.1), (0.0, 0.2)]  # uniform over 0..backoff_s*2^n for the n-th retry


def test_an_unexpected_exception_is_internal_error(server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("a bug met by one URL")

    monkeypatch.setattr(download_module, "_follow", broken)
    got, _ = get(server.serve("/bug.jpg", IMAGE))
    assert got.reason == "internal_error"
    assert got.error and got.error.startswith("RuntimeError: a bug met by one URL")


def test_keep_alive_connections_are_not_reused_after_a_failure(server: FaultServer) -> None:
    good = server.serve("/ka-ok.jpg", IMAGE)
    server.status("/ka-403.jpg", 403, body=b"x" * 200_000)  # a big error body we do not read
    server.status("/ka-500.jpg", 500, body=b"y" * 50_000)
    # An unterminated trickle that the deadline cuts (the socket it used must not serve the next request).
    server.drip("/ka-drip.jpg", IMAGE[:50], 0.2)
    pool = make_pool(FAST)
    sequence = ["/ka-ok.jpg", "/ka-403.jpg", "/ka-ok.jpg", "/ka-500.jpg", "/ka-ok.jpg", "/ka-drip.jpg", "/ka-ok.jpg"]
    want = ["ok", "http_client_error", "ok", "http_server_error", "ok", "timeout", "ok"]
    got = [get(server.url(path), FAST, pool)[0] for path in sequence]
    assert [g.reason for g in got] == want
    assert all(g.body == IMAGE for g in got if g.reason == "ok")
    assert get(good, FAST, pool)[0].body == IMAGE


def test_a_reset_after_part_of_the_body(server: FaultServer) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(IMAGE)
    got, _ = get(server.script("/reset-late.jpg", head + IMAGE[:5000], 0.05, RESET))
    assert got.reason in ("connection_error", "truncated")  # both transient: retry_failed tries it again
    assert got.body == b""
