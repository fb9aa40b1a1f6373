"""The Flickr API through `flickrapi`: `flickr.photos.search` with a licence filter, paged.

The API key and secret come from FLICKR_API_KEY / FLICKR_API_SECRET and are handed straight to the
client: they are never written to a config, a log line or a manifest row.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import flickrapi
import pyarrow as pa
import requests

from curate.config import FLICKR_KEY_ENV, FLICKR_SECRET_ENV, FlickrQuery, IngestConfig
from curate.schema import REJECTED, safe_id
from curate.sources import Unit, guarded, new_row, rows_to_table, yfcc_hash
from curate.sources.yfcc import parse_date, parse_float

EXTRAS = "license,owner_name,date_taken,geo,url_m,url_z,url_c,url_l,url_o"
# Largest first would waste bandwidth: PASS images are ~500 px, Flickr's url_m.
URL_PREFERENCE = ("url_m", "url_z", "url_c", "url_l", "url_o")
PAGE_ATTEMPTS = 3

log = logging.getLogger(__name__)


class FlickrCallFailed(RuntimeError):
    """A Flickr API call that failed after its retries (or at once, for a fatal code)."""


def make_client(query: FlickrQuery) -> flickrapi.FlickrAPI:
    client = flickrapi.FlickrAPI(
        os.environ[FLICKR_KEY_ENV],
        os.environ[FLICKR_SECRET_ENV],
        format="parsed-json",
        store_token=False,
        timeout=query.timeout_s,
    )
    if query.endpoint:
        client.REST_URL = query.endpoint
    return client


def search_params(query: FlickrQuery, page: int) -> dict[str, Any]:
    params: dict[str, Any] = {
        "license": ",".join(str(i) for i in query.license_ids),
        "extras": EXTRAS,
        "per_page": query.per_page,
        "page": page,
        "sort": "date-posted-asc",  # a stable order, so re-runs page identically
        "content_type": 1,  # photos only
        "media": "photos",
    }
    for key in ("text", "tags", "min_upload_date", "max_upload_date"):
        if getattr(query, key):
            params[key] = getattr(query, key)
    return params


def photo_row(photo: dict[str, Any], ref: str) -> dict[str, Any]:
    owner = str(photo.get("owner", ""))
    photo_id = str(photo.get("id", ""))
    url = next((photo[key] for key in URL_PREFERENCE if photo.get(key)), None)
    date_raw = str(photo.get("datetaken") or "")
    date_taken = parse_date(date_raw) if date_raw else None
    latitude = parse_float(str(photo.get("latitude") or ""))
    longitude = parse_float(str(photo.get("longitude") or ""))
    if latitude == 0 and longitude == 0:  # Flickr's "no geo"
        latitude = longitude = None
    row = new_row(
        image_id=safe_id(f"flickr-{photo_id}"),  # dot- and slash-free, like every other source
        source_id=photo_id or None,
        source="flickr",
        source_ref=ref,
        photo_id=photo_id,
        photo_hash=yfcc_hash(url) if url else None,  # the API gives no hash: PASS's rule over the URL we fetch
        owner_nsid=owner,
        owner_name=photo.get("ownername"),
        title=photo.get("title"),
        date_taken=date_taken,
        latitude=latitude,
        longitude=longitude,
        page_url=f"https://www.flickr.com/photos/{owner}/{photo_id}/",
        image_url=url,
        license_id=str(photo.get("license", "")) or None,
    )
    if date_raw and date_taken is None:
        row.update(ingest_reason="bad_date", ingest_error=f"datetaken {date_raw[:40]!r}")
    if not url:
        row.update(ingest_status=REJECTED, ingest_reason="missing_url")
    return row


# Flickr error codes that no retry can cure: invalid API key, invalid signature, unknown method.
FATAL_CODES = frozenset({"100", "96", "112"})


def call_flickr(
    call: Callable[[], dict[str, Any]],
    what: str,
    attempts: int,
    backoff_s: float,
    *,
    before_each: Callable[[], None] = lambda: None,
    answers: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """One Flickr API call with its retries: network trouble, a reply that is not JSON and Flickr errors a retry
    can cure are tried again (backing off `backoff_s`, doubled each time); a fatal code (a bad key or signature)
    gives up at once. A FlickrError whose code is in `answers` is an answer for the caller: raised at once.
    `before_each` runs before every attempt (a rate limiter). Gives up with FlickrCallFailed."""
    last: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        before_each()
        try:
            return call()
        except flickrapi.FlickrError as err:
            code = str(getattr(err, "code", "") or "")
            if code in answers:
                raise
            last = err
            if code in FATAL_CODES:
                break
        except (requests.RequestException, ValueError) as err:  # network trouble, or a reply that is not JSON
            last = err
        log.warning("%s failed (attempt %d): %s", what, attempt + 1, last)
    raise FlickrCallFailed(f"{what} failed: {last}")


def _search_page(client: flickrapi.FlickrAPI, query: FlickrQuery, page: int) -> dict[str, Any]:
    search = partial(client.photos.search, **search_params(query, page))
    return call_flickr(search, f"flickr.photos.search page {page}", PAGE_ATTEMPTS, 0.2)


def _photo_row_guarded(photo: Any, ref: str) -> dict[str, Any]:
    # One odd photo record (a field of an unexpected type) fails alone; the page goes on.
    return guarded("flickr", ref, lambda: photo_row(photo, ref))


def read(cfg: IngestConfig, unit: Unit) -> Iterator[pa.Table]:
    query = cfg.flickr
    client = make_client(query)
    page, pages, produced = 1, 1, 0
    while page <= min(pages, query.max_pages):
        reply = _search_page(client, query, page)
        photos = reply["photos"]
        pages = int(photos.get("pages", 1))
        rows = [_photo_row_guarded(p, f"page{page}:{i}") for i, p in enumerate(photos.get("photo", []))]
        if cfg.limit:
            rows = rows[: max(cfg.limit - produced, 0)]
        produced += len(rows)
        if rows:
            yield rows_to_table(rows)
        if cfg.limit and produced >= cfg.limit:
            break
        page += 1
