"""The URL recheck against the local fault server: 404/410 and a placeholder redirect are gone_at_source, an
opt-out header is opt_out, a 5xx or a stall is unreachable (never a removal), a served image is ok; the final URL
after redirects is what the placeholder rule reads."""

from __future__ import annotations

import hashlib

from faultserver import fault_server, sample_jpeg

from curate.config import FetchConfig
from curate.fetching.download import Download
from curate.recheck import Answer
from curate.recheck.urls import classify, is_placeholder, recheck_urls

FAST = FetchConfig(retries=1, backoff_s=0.01, connect_timeout_s=1.0, read_timeout_s=1.0, total_timeout_s=2.0)
PLACEHOLDER = b"\x89PNG\r\n\x1a\n this photo is no longer available"


def answers(items: list[tuple[str, str]], **kwargs: object) -> dict[str, Answer]:
    return {a.image_id: a for a in recheck_urls(items, FAST, now=lambda: "2026-12-02T00:00:00Z", **kwargs)}  # type: ignore[arg-type]


def test_each_answer_of_a_source_maps_to_its_recheck_reason() -> None:
    image = sample_jpeg(seed=3)
    with fault_server() as server:
        items = [
            ("still", server.serve("/a.jpg", image)),
            ("gone404", server.status("/b.jpg", 404)),
            ("gone410", server.status("/c.jpg", 410)),
            ("noai", server.serve_header_lines("/d.jpg", image, [("X-Robots-Tag", "noai")])),
            ("busy", server.status("/e.jpg", 503)),
            ("stalled", server.stall("/f.jpg", 5.0)),
            ("forbidden", server.status("/g.jpg", 403)),
        ]
        server.serve("/pw/images/en-us/photo_unavailable_l.png", PLACEHOLDER, "image/png")
        items.append(("deleted", server.redirect("/h.jpg", "/pw/images/en-us/photo_unavailable_l.png")))
        server.serve("/moved.jpg", image)
        items.append(("moved", server.redirect("/i.jpg", "/moved.jpg")))
        got = answers(items)
    assert [a.image_id for a in recheck_urls([], FAST)] == []
    reasons = {k: a.reason for k, a in got.items()}
    assert reasons == {
        "still": "ok",
        "gone404": "gone_at_source",
        "gone410": "gone_at_source",
        "noai": "opt_out",
        "busy": "unreachable",
        "stalled": "unreachable",
        "forbidden": "unreachable",
        "deleted": "gone_at_source",
        "moved": "ok",
    }
    assert {k: a.status for k, a in got.items() if a.status == "rejected"}.keys() == {
        "gone404", "gone410", "noai", "deleted"
    }  # fmt: skip
    assert got["noai"].error == "X-Robots-Tag: noai"
    assert "photo_unavailable_l.png" in (got["deleted"].error or "")
    assert (got["busy"].error or "").startswith("http_server_error")
    assert all(a.asked_at == "2026-12-02T00:00:00Z" for a in got.values())


def test_a_placeholder_served_under_the_images_own_url_is_caught_by_its_hash() -> None:
    with fault_server() as server:
        url = server.serve("/same-url.jpg", PLACEHOLDER, "image/png")
        plain = answers([("x", url)])
        by_hash = answers([("x", url)], hashes=[hashlib.sha256(PLACEHOLDER).hexdigest().upper()])
    assert plain["x"].reason == "ok" and by_hash["x"].reason == "gone_at_source"


def test_the_placeholder_rule_reads_the_final_urls_file_name_only() -> None:
    def final(url: str) -> Download:
        return Download("ok", body=b"x", http_status=200, final_url=url)

    assert is_placeholder(final("https://s.yimg.com/pw/images/en-us/photo_unavailable.png"), ["photo_unavailable"], [])
    assert is_placeholder(final("https://x/PHOTO_UNAVAILABLE_m.png?x=1"), ["photo_unavailable"], [])
    assert not is_placeholder(final("https://x/photo_unavailable/real.jpg"), ["photo_unavailable"], [])
    assert not is_placeholder(final("https://x/a.jpg"), ["photo_unavailable"], [])
    assert not is_placeholder(Download("ok", body=b"x"), ["photo_unavailable"], [])
    assert classify(Download("timeout", error="slow")) == ("unreachable", "timeout: slow")
