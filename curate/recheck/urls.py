"""Recheck an image URL with fetch's own downloader: its timeouts, retries, per-host limit, user agent and
opt-out rule (`curate.fetching.download`).

The rule, per URL:
- 404 or 410 → gone_at_source.
- a 2xx whose X-Robots-Tag opts out (fetch.opt_out_directives) → opt_out.
- a 2xx that is a placeholder → gone_at_source. Flickr answers a deleted or private photo's static URL with a
  redirect to its "This photo is no longer available" image (`https://s.yimg.com/pw/images/en-us/
  photo_unavailable.png`, with size variants such as `photo_unavailable_l.png`). A placeholder is a final URL
  (after redirects) whose file name starts with one of `placeholder_names`, or a body whose SHA-256 is one of
  `placeholder_sha256` (for placeholders served without a redirect, under the image's own URL).
- any other 2xx → ok.
- anything else (timeouts, refused or dropped connections, 5xx, 429, other 4xx, a body over the cap) →
  unreachable: no answer, never a removal; the next recheck asks again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from posixpath import basename
from urllib.parse import urlsplit

from curate.config import FetchConfig
from curate.fetching.download import Download, HostLimiter, download, make_pool
from curate.recheck import Answer, utc_now

PLACEHOLDER_NAMES = ("photo_unavailable",)


def is_placeholder(result: Download, names: Iterable[str], hashes: Iterable[str]) -> bool:
    name = basename(urlsplit(result.final_url or "").path).lower()
    if any(name.startswith(n.lower()) for n in names):
        return True
    wanted = {h.lower() for h in hashes}
    return bool(wanted) and hashlib.sha256(result.body).hexdigest() in wanted


def classify(
    result: Download, names: Iterable[str] = PLACEHOLDER_NAMES, hashes: Iterable[str] = ()
) -> tuple[str, str | None]:
    """(reason, error text) of one recheck download."""
    if result.reason == "not_found":
        return "gone_at_source", result.error
    if result.reason == "opt_out":
        return "opt_out", result.error
    if result.reason == "ok":
        if is_placeholder(result, names, hashes):
            return "gone_at_source", f"placeholder at {(result.final_url or '')[:200]}"
        return "ok", None
    return "unreachable", f"{result.reason}: {result.error or ''}"[:300]


def recheck_urls(
    items: Iterable[tuple[str, str]],
    cfg: FetchConfig,
    names: Iterable[str] = PLACEHOLDER_NAMES,
    hashes: Iterable[str] = (),
    now: Callable[[], str] = utc_now,
) -> list[Answer]:
    """An answer for every (image_id, url), in the order given, asked fetch.concurrency at a time."""
    names, hashes = tuple(names), tuple(hashes)
    pool = make_pool(cfg)
    limiter = HostLimiter(cfg.per_host_concurrency)

    def ask(item: tuple[str, str]) -> Answer:
        image_id, url = item
        result = download(url, cfg, pool, limiter)
        reason, error = classify(result, names, hashes)
        return Answer(image_id, reason, now(), error)

    with ThreadPoolExecutor(max(1, cfg.concurrency)) as threads:
        return list(threads.map(ask, list(items)))
