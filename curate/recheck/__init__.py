"""Asking the sources again about images already released: is each still there, under the same licence, and
not opted out of AI training? The answers (`Answer`) use the reasons of `REASONS`; building a new version from
them is the release's job.

- `curate.recheck.flickr`: Flickr and YFCC photos, asked per owner (`flickr.people.getPublicPhotos`, 500 a page),
  never per photo, under a calls-per-hour limiter.
- `curate.recheck.urls`: any other image URL, asked with fetch's own downloader (its timeouts, retries, per-host
  limit and user agent).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from curate.schema import OK, REJECTED

# ok: still served, licence still allowed. unreachable: no answer (timeouts, 5xx, rate limits, other refusals):
# never removes an image by itself and is asked again by the next recheck. The others remove the image.
REASONS = frozenset({OK, "unreachable", "gone_at_source", "license_changed", "opt_out"})
REMOVING = frozenset({"gone_at_source", "license_changed", "opt_out"})


@dataclass(frozen=True)
class Answer:
    """What a source said about one released image, and when it was asked (UTC, ISO 8601)."""

    image_id: str
    reason: str
    asked_at: str
    error: str | None = None
    old_license: str | None = None
    new_license: str | None = None

    @property
    def status(self) -> str:
        return REJECTED if self.reason in REMOVING else OK


def utc_now() -> str:
    """When an answer came, as every answer records it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
