"""fetch honours a site's opt-out from AI training (`X-Robots-Tag: noai` / `noimageai`): the real download() against
the real loopback fault server, and one URL list end to end through the pipeline to the release and its data card."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import urllib3
from conftest import MODELS, NO_FILTER, read_stage, run_curate
from faultserver import FaultServer, fault_server, sample_jpeg

from curate.config import ConfigError, CurateConfig, FetchConfig
from curate.configload import load_config
from curate.fetching.download import Download, HostLimiter, download, make_pool, product_token, robots_directives
from curate.schema import REASONS, TRANSIENT_FETCH_REASONS
from curate.stages.fetch import FetchStage

FAST = FetchConfig(
    connect_timeout_s=1.0, read_timeout_s=1.0, total_timeout_s=2.0, retries=2, backoff_s=0.01, max_bytes=300_000
)
IMAGE = sample_jpeg(seed=31)


def get(url: str, cfg: FetchConfig = FAST, pool: urllib3.PoolManager | None = None) -> Download:
    got = download(url, cfg, pool or make_pool(cfg), HostLimiter(4))
    assert got.reason in REASONS["fetch"]
    return got


@pytest.fixture(scope="module", params=[False, True], ids=["close", "keep-alive"])
def server(request: pytest.FixtureRequest) -> Iterator[FaultServer]:
    with fault_server(keep_alive=request.param) as running:
        yield running


def robots(server: FaultServer, path: str, *values: str, code: int = 200) -> str:
    """`path` answers `code` with one X-Robots-Tag line per value, and the image."""
    return server.serve_header_lines(path, IMAGE, [("X-Robots-Tag", value) for value in values], code)


# download() ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (("noai",), "opt_out"),
        (("noimageai",), "opt_out"),
        (("NoAI",), "opt_out"),  # directives are case-insensitive
        (("  noindex ,  NOIMAGEAI  ",), "opt_out"),  # comma-separated, with spaces
        (("nofollow", "noimageai"), "opt_out"),  # two header lines: every one counts
        (("otherbot: noai",), "ok"),  # another agent's group
        (("otherbot: noindex, noai",), "ok"),  # ... runs on to the next token:, so noai is otherbot's too
        (("otherbot: noindex, curate: noai",), "opt_out"),  # the next group is ours
        (("curate: noai",), "opt_out"),  # our product token (fetch.user_agent up to its first '/')
        (("CURATE: NoImageAI",), "opt_out"),  # the token is compared case-insensitively
        (("*: noai",), "opt_out"),  # every agent's group
        (("otherbot: noai", "nofollow"), "ok"),  # a group ends with its header line; nofollow opts nothing out
        (("otherbot: noindex", "noai"), "opt_out"),  # ... and the next line is everyone's again
        (("unavailable_after: Friday, 25-Jun-2010 15:00:00 PST, noai",), "opt_out"),  # a date is no agent group
        (("max-image-preview: none, max-snippet: 20",), "ok"),  # valued directives, no opt-out among them
        (("noindex",), "ok"),  # not in the default opt_out_directives
        (("none",), "ok"),
        (("all",), "ok"),
        (("",), "ok"),
        ((), "ok"),
    ],
)
def test_x_robots_tag_decides_opt_out(server: FaultServer, values: tuple[str, ...], reason: str) -> None:
    url = robots(server, f"/robots/{len(server.routes)}.jpg", *values)
    got = get(url)
    assert (got.reason, got.http_status) == (reason, 200), (values, got.error)
    if reason == "ok":
        assert got.body == IMAGE and got.error is None
    else:
        assert got.body == b"" and got.attempts == 1


def test_the_error_text_holds_the_header_that_opted_out(server: FaultServer) -> None:
    got = get(robots(server, "/err/one.jpg", "noai, noimageai"))
    assert got.error == "X-Robots-Tag: noai, noimageai"
    # Of several lines, the ones that opt out.
    got = get(robots(server, "/err/two.jpg", "nofollow", "NoImageAI"))
    assert got.error == "X-Robots-Tag: NoImageAI"
    # A long value is cut to 200 characters; a byte that is no printable character is escaped.
    got = get(robots(server, "/err/long.jpg", "noai, " + "x" * 500))
    assert got.reason == "opt_out" and got.error is not None
    assert got.error.startswith("X-Robots-Tag: noai, xxx") and len(got.error) == 200
    url = server.script(
        "/err/odd.jpg",
        b"HTTP/1.1 200 OK\r\nX-Robots-Tag: noai,\x01caf\xe9\r\nContent-Length: %d\r\n\r\n" % len(IMAGE) + IMAGE,
    )
    got = get(url)
    assert got.reason == "opt_out" and got.error == "X-Robots-Tag: noai,\\x01café"
    assert got.error.isprintable()


def test_noindex_opts_out_when_the_config_lists_it(server: FaultServer) -> None:
    cfg = replace(FAST, opt_out_directives=["noai", "noimageai", "noindex"])
    assert get(robots(server, "/cfg/noindex.jpg", "noindex"), cfg).reason == "opt_out"
    assert get(robots(server, "/cfg/none.jpg", "none"), cfg).reason == "opt_out"  # none = noindex, nofollow
    # The config's list replaces the default: noai alone no longer opts out when it is not listed.
    only_noindex = replace(FAST, opt_out_directives=["noindex"])
    assert get(robots(server, "/cfg/noai.jpg", "noai"), only_noindex).reason == "ok"
    assert get(robots(server, "/cfg/noindex.jpg", "noindex"), only_noindex).reason == "opt_out"


def test_honour_opt_out_false_downloads_anyway(server: FaultServer) -> None:
    got = get(robots(server, "/off/noai.jpg", "noai, noimageai"), replace(FAST, honour_opt_out=False))
    assert (got.reason, got.body) == ("ok", IMAGE)


def test_our_token_follows_fetch_user_agent(server: FaultServer) -> None:
    assert product_token("curate/0.1 (dataset research; +https://github.com/curate)") == "curate"
    assert product_token("MyCrawler 2.0") == "mycrawler"
    url = robots(server, "/ua/mine.jpg", "mycrawler: noai")
    assert get(url).reason == "ok"  # not curate's group
    assert get(url, replace(FAST, user_agent="MyCrawler/2.0 (+https://example.org)")).reason == "opt_out"


def test_the_final_response_after_redirects_decides(server: FaultServer) -> None:
    target = robots(server, "/redir/final.jpg", "noai")
    got = get(server.redirect("/redir/start.jpg", "/redir/final.jpg"))
    assert (got.reason, got.error) == ("opt_out", "X-Robots-Tag: noai")
    assert target.endswith("/redir/final.jpg")
    # A redirect's own header is not the image's: only the final response is looked at.
    clean = server.serve("/redir/clean.jpg", IMAGE)
    hop = server.serve_header_lines(
        "/redir/tagged-hop.jpg", b"", [("Location", clean), ("X-Robots-Tag", "noai")], code=302
    )
    assert get(hop).reason == "ok"


def test_an_error_status_keeps_its_reason_whatever_its_header_says(server: FaultServer) -> None:
    got = get(robots(server, "/status/404.jpg", "noai", code=404))
    assert (got.reason, got.http_status) == ("not_found", 404)
    assert get(robots(server, "/status/403.jpg", "noai", code=403)).reason == "http_client_error"


def test_opt_out_reads_no_body_and_never_retries(server: FaultServer) -> None:
    # A body that would stall past the deadline: only a decision from the headers ends this at once.
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Robots-Tag: noai\r\nContent-Length: 100000\r\n\r\n"
    url = server.script("/nobody/stall.jpg", head + IMAGE[:100], 3.0)
    start = time.monotonic()
    got = get(url)
    assert got.reason == "opt_out" and got.attempts == 1
    assert time.monotonic() - start < FAST.total_timeout_s
    assert server.hits["/nobody/stall.jpg"] == 1  # fetch.retries=2, yet one request
    # Before the size cap too: an opt-out is the site's answer, whatever the image's size.
    big = server.serve_header_lines("/nobody/big.jpg", b"x" * 400_000, [("X-Robots-Tag", "noimageai")])
    assert get(big).reason == "opt_out"
    assert "opt_out" not in TRANSIENT_FETCH_REASONS  # fetch.retry_failed leaves it alone


def test_a_pooled_connection_is_fine_after_an_opt_out(server: FaultServer) -> None:
    pool = make_pool(FAST)
    tagged = robots(server, "/pool/tagged.jpg", "noai")
    clean = server.serve("/pool/clean.jpg", IMAGE)
    assert [get(u, FAST, pool).reason for u in (tagged, clean, tagged, clean)] == ["opt_out", "ok", "opt_out", "ok"]
    assert get(clean, FAST, pool).body == IMAGE


def test_file_urls_have_no_headers_and_are_unaffected(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(IMAGE)
    got = get("file:a.jpg", replace(FAST, file_root=str(tmp_path)))
    assert (got.reason, got.body) == ("ok", IMAGE)


def test_robots_directives_parses_groups() -> None:
    assert robots_directives("googlebot: noindex, nofollow", "curate") == set()
    assert robots_directives("noai, googlebot: noindex", "curate") == {"noai"}
    assert robots_directives("curate: max-snippet: 20, noai", "curate") == {"max-snippet", "noai"}
    assert robots_directives("None", "curate") == {"none", "noindex", "nofollow"}


# The config ------------------------------------------------------------------------------------------------


def test_the_defaults_and_an_unknown_directive_is_a_config_error() -> None:
    cfg = FetchConfig()
    assert cfg.honour_opt_out is True and cfg.opt_out_directives == ["noai", "noimageai"]
    allowed = ["noai", "noimageai", "none", "noindex", "noimageindex", "nofollow", "noarchive", "nosnippet"]
    assert FetchConfig(opt_out_directives=allowed).problems() == []
    problems = FetchConfig(opt_out_directives=["noai", "NoAI", "no-ai"]).problems()
    assert len(problems) == 1
    assert problems[0].startswith("fetch.opt_out_directives has ['NoAI', 'no-ai']; choose from noai, noimageai,")
    with pytest.raises(ConfigError, match=r"fetch\.opt_out_directives has \['noml'\]; choose from noai, noimageai"):
        load_config(["stage=report", "fetch.opt_out_directives=[noai,noml]"])
    loaded = load_config(["stage=report", "fetch.honour_opt_out=false", "fetch.opt_out_directives=[noindex]"])
    assert (loaded.fetch.honour_opt_out, loaded.fetch.opt_out_directives) == (False, ["noindex"])


def test_both_settings_are_in_the_fetch_fingerprint() -> None:
    base = FetchStage(CurateConfig()).fingerprint_config()
    assert base["honour_opt_out"] is True and base["opt_out_directives"] == ["noai", "noimageai"]
    for changed in ({"honour_opt_out": False}, {"opt_out_directives": ["noai", "noimageai", "noindex"]}):
        cfg = CurateConfig(fetch=replace(FetchConfig(), **changed))
        assert FetchStage(cfg).fingerprint_config() != base, changed
    assert "user_agent" not in base and "concurrency" not in base  # the RUNTIME keys stay out, as before


# End to end ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not MODELS.exists(), reason="needs the offline weights in ../shared/models")
def test_an_opted_out_url_is_rejected_counted_and_never_released(tmp_path: Path) -> None:
    with fault_server() as server:
        urls = {
            "plain": server.serve("/e2e/plain.jpg", sample_jpeg(seed=41)),
            "opted": robots(server, "/e2e/opted.jpg", "noai"),
            "other-bot": robots(server, "/e2e/other.jpg", "otherbot: noai"),
            "busy": server.status("/e2e/busy.jpg", 500),  # transient: fetch.retry_failed re-runs its shard
        }
        (tmp_path / "urls.csv").write_text("id,url\n" + "".join(f"{k},{u}\n" for k, u in urls.items()))
        run_dir = tmp_path / "run"
        flags = [
            "pipeline=sample",
            "ingest.source=urls",
            f"ingest.path={tmp_path / 'urls.csv'}",
            "ingest.id_column=id",
            "ingest.assume_license=cc-by",
            "ingest.num_shards=1",
            "fetch.retries=0",
            "fetch.backoff_s=0.01",
            f"run.dir={run_dir}",
            *NO_FILTER,
        ]
        assert run_curate(*flags) == 0
        rows = read_stage(run_dir, "license", "fetch").set_index("image_id")
        opted = rows.loc["opted"]
        assert (opted["fetch_status"], opted["fetch_reason"]) == ("rejected", "opt_out")
        assert opted["fetch_error"] == "X-Robots-Tag: noai" and opted["http_status"] == 200
        assert pd.isna(opted["tar_member"])
        assert rows.loc["other-bot", "fetch_reason"] == "ok" and rows.loc["plain", "fetch_reason"] == "ok"

        # A retry of failed rows leaves the site's decision alone: it is not asked again.
        hits = server.hits["/e2e/opted.jpg"]
        assert run_curate(*flags, "stage=fetch", "fetch.retry_failed=true") == 0
        assert server.hits["/e2e/busy.jpg"] == 2 and server.hits["/e2e/opted.jpg"] == hits

    release = run_dir / "release" / "v1"
    manifest = pd.read_parquet(release / "manifest.parquet").set_index("image_id")
    assert (manifest.loc["opted", "status"], manifest.loc["opted", "reason"]) == ("rejected", "fetch:opt_out")
    assert manifest.loc["opted", "fetch_error"] == "X-Robots-Tag: noai"
    assert sorted(manifest.index[manifest["status"] == "kept"]) == ["other-bot", "plain"]
    released = pd.read_csv(release / "pass_metadata.csv")
    assert len(released) == 2 and not any("opted" in str(name) for name in released["file"])

    card = (release / "DATA_CARD.md").read_text()
    assert "| fetch | rejected | opt_out | 1 |" in card  # outcomes per stage and reason
    assert "opt_out 1" in card.split("\n## Funnel\n", 1)[1].split("\n## ", 1)[0]
    assert "honour_opt_out: true" in card and "opt_out_directives:\n  - noai\n  - noimageai" in card
