"""Recheck Flickr (and YFCC) photos per owner: one `flickr.people.getPublicPhotos` listing (`extras=license`,
500 a page) answers for every released photo of that owner at once. A release of N photos from O owners thus
costs sum over owners of ceil(public photos / 500) calls, not N: for PASS, ~18k owners rather than 1.4M photos.

Per photo: listed with an allowed licence → ok; not listed (deleted, made private, or the owner's account is
gone: Flickr error 1 "User not found") → gone_at_source; listed with a licence outside `allowed` →
license_changed, with the old and new licence codes. An owner whose listing could not be read to the end (rate
limits, 5xx, timeouts, after retries) leaves all its photos unreachable: a partial listing would make every
photo on the missing pages look deleted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import flickrapi

from curate.licenses import normalize
from curate.recheck import Answer, utc_now
from curate.recheck.limiter import RateLimiter
from curate.sources.flickr import FlickrCallFailed, call_flickr

PER_PAGE = 500  # Flickr's largest page for people.getPublicPhotos
USER_NOT_FOUND = "1"


@dataclass(frozen=True)
class ReleasedPhoto:
    image_id: str
    photo_id: str
    owner_nsid: str
    license_code: str | None  # as released


class ListingFailed(RuntimeError):
    pass


def _page(
    client: flickrapi.FlickrAPI, owner: str, page: int, limiter: RateLimiter, attempts: int, backoff_s: float
) -> dict[str, Any] | None:
    """One page of an owner's public photos; None when Flickr says the owner does not exist."""
    try:
        return call_flickr(
            lambda: client.people.getPublicPhotos(user_id=owner, extras="license", per_page=PER_PAGE, page=page),
            f"recheck: people.getPublicPhotos {owner} page {page}",
            attempts,
            backoff_s,
            before_each=limiter.wait,
            answers=frozenset({USER_NOT_FOUND}),
        )
    except flickrapi.FlickrError:  # only "User not found" gets here (answers)
        return None
    except FlickrCallFailed as err:
        raise ListingFailed(str(err)) from err


def owner_licences(
    client: flickrapi.FlickrAPI, owner: str, limiter: RateLimiter, attempts: int = 3, backoff_s: float = 1.0
) -> dict[str, str | None]:
    """photo id → licence code of every public photo of `owner` ({} when the owner is gone)."""
    listed: dict[str, str | None] = {}
    page, pages = 1, 1
    while page <= pages:
        reply = _page(client, owner, page, limiter, attempts, backoff_s)
        if reply is None:
            return {}
        try:
            photos = reply["photos"]
            pages = int(photos.get("pages") or 1)
            for photo in photos.get("photo", []):
                listed[str(photo["id"])] = normalize(license_id=photo.get("license"))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            # A reply of another shape: the listing is not known whole, so nothing is concluded from it.
            raise ListingFailed(f"people.getPublicPhotos {owner} page {page}: unexpected reply ({err!r})") from err
        page += 1
    return listed


def recheck_owners(
    photos: Iterable[ReleasedPhoto],
    allowed: Iterable[str],
    client: flickrapi.FlickrAPI,
    limiter: RateLimiter,
    *,
    attempts: int = 3,
    backoff_s: float = 1.0,
    now: Callable[[], str] = utc_now,
) -> list[Answer]:
    """An answer for every photo, asking each owner once (owners in sorted order, so a rerun asks alike)."""
    allow = set(allowed)
    by_owner: dict[str, list[ReleasedPhoto]] = defaultdict(list)
    for photo in photos:
        by_owner[photo.owner_nsid].append(photo)
    answers: list[Answer] = []
    for owner in sorted(by_owner):
        mine = by_owner[owner]
        if not owner:  # no owner id to ask by: Flickr's "User not found" must not read as a deletion
            answers += [Answer(p.image_id, "unreachable", now(), "no owner id to ask Flickr by", p.license_code)
                        for p in mine]  # fmt: skip
            continue
        try:
            listed = owner_licences(client, owner, limiter, attempts, backoff_s)
        except ListingFailed as err:
            asked = now()
            answers += [Answer(p.image_id, "unreachable", asked, str(err)[:300], p.license_code) for p in mine]
            continue
        asked = now()
        for p in mine:
            if not p.photo_id:
                answers.append(Answer(p.image_id, "unreachable", asked, "no photo id to look for", p.license_code))
            elif p.photo_id not in listed:
                answers.append(Answer(p.image_id, "gone_at_source", asked, f"not among {owner}'s public photos",
                                      p.license_code))  # fmt: skip
            elif listed[p.photo_id] not in allow:
                new = listed[p.photo_id]
                answers.append(Answer(p.image_id, "license_changed", asked, f"licence {p.license_code} -> {new}",
                                      p.license_code, new))  # fmt: skip
            else:
                answers.append(Answer(p.image_id, "ok", asked, None, p.license_code, listed[p.photo_id]))
    return answers
