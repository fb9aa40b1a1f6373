"""The per-owner Flickr recheck with the real `flickrapi` client against the local stand-in, at two points in
time: first every released photo is still there under CC BY; later one owner has deleted a photo, made one
private and relicensed one, another has closed the account, and two are rate-limited (one recovers within its
retries, one does not). The call count per owner is one per page of the owner's listing, plus retries."""

from __future__ import annotations

from typing import Any

import flickrapi
import pytest
from flickr_standin import RATE_LIMITED, flickr_standin

from curate.recheck import Answer
from curate.recheck.flickr import PER_PAGE, ReleasedPhoto, recheck_owners
from curate.recheck.limiter import RateLimiter

KEY, SECRET = "KEY-recheck-1", "SECRET-recheck-2"
CC_BY = "4"  # Flickr's CC BY 2.0
ALL_RIGHTS_RESERVED = "0"
BIG = 1_100  # owner A's public photos: three pages of 500


def photo(owner: str, n: int, licence: str = CC_BY, public: int = 1) -> dict[str, Any]:
    return {"id": f"{owner}-{n}", "owner": owner, "secret": "s", "server": "1", "farm": 1, "title": f"{owner} {n}",
            "ispublic": public, "isfriend": 0, "isfamily": 0, "license": licence}  # fmt: skip


def catalogue_then() -> list[dict[str, Any]]:
    return (
        [photo("A@N01", n) for n in range(BIG)]
        + [photo("B@N02", n) for n in range(4)]
        + [photo("C@N03", n) for n in range(2)]
        + [photo("D@N04", 0), photo("E@N05", 0)]
    )


def catalogue_now() -> list[dict[str, Any]]:
    changed = []
    for p in catalogue_then():
        if p["owner"] == "C@N03" or p["id"] == "B@N02-0":  # C closed the account; B deleted one photo
            continue
        if p["id"] == "B@N02-1":
            p = {**p, "ispublic": 0}  # made private
        if p["id"] in ("B@N02-2", "A@N01-1099"):  # relicensed; A's is on the last page
            p = {**p, "license": ALL_RIGHTS_RESERVED}
        changed.append(p)
    return changed


RELEASED = [
    *(ReleasedPhoto(f"flickr-A@N01-{n}", f"A@N01-{n}", "A@N01", "cc-by") for n in (0, 499, 500, 1099)),
    *(ReleasedPhoto(f"flickr-B@N02-{n}", f"B@N02-{n}", "B@N02", "cc-by") for n in range(4)),
    ReleasedPhoto("flickr-C@N03-0", "C@N03-0", "C@N03", "cc-by"),
    ReleasedPhoto("flickr-D@N04-0", "D@N04-0", "D@N04", "cc-by"),
    ReleasedPhoto("flickr-E@N05-0", "E@N05-0", "E@N05", "cc-by"),
]


def ask(endpoint: str) -> dict[str, Answer]:
    client = flickrapi.FlickrAPI(KEY, SECRET, format="parsed-json", store_token=False, timeout=5)
    client.REST_URL = endpoint
    found = recheck_owners(RELEASED, ["cc-by"], client, RateLimiter(1e9), backoff_s=0.01, now=lambda: "T")
    return {a.image_id: a for a in found}


def test_two_points_in_time() -> None:
    with flickr_standin(KEY, SECRET, catalogue_then()) as standin:
        before = ask(standin.endpoint)
        assert {a.reason for a in before.values()} == {"ok"}
        assert standin.calls_per_owner() == {"A@N01": 3, "B@N02": 1, "C@N03": 1, "D@N04": 1, "E@N05": 1}
        assert all(r.form.get("per_page") == str(PER_PAGE) for r in standin.people_calls)
        assert all(r.form.get("extras") == "license" for r in standin.people_calls)

        standin.requests.clear()
        standin.catalogue = catalogue_now()
        standin.fail_owner_page("D@N04", 1, RATE_LIMITED, RATE_LIMITED)  # recovers on its third attempt
        standin.fail_owner_page("E@N05", 1, RATE_LIMITED, RATE_LIMITED, RATE_LIMITED)  # never within three
        after = ask(standin.endpoint)
        calls = standin.calls_per_owner()

    reasons = {k: a.reason for k, a in after.items()}
    assert reasons == {
        "flickr-A@N01-0": "ok",
        "flickr-A@N01-499": "ok",
        "flickr-A@N01-500": "ok",
        "flickr-A@N01-1099": "license_changed",
        "flickr-B@N02-0": "gone_at_source",
        "flickr-B@N02-1": "gone_at_source",
        "flickr-B@N02-2": "license_changed",
        "flickr-B@N02-3": "ok",
        "flickr-C@N03-0": "gone_at_source",
        "flickr-D@N04-0": "ok",
        "flickr-E@N05-0": "unreachable",
    }
    changed = after["flickr-B@N02-2"]
    assert (changed.old_license, changed.new_license, changed.status) == ("cc-by", "all-rights-reserved", "rejected")
    assert after["flickr-E@N05-0"].status == "ok"  # unreachable never removes by itself
    assert "429" in (after["flickr-E@N05-0"].error or "")
    # one call per page per owner, plus the retries of the rate-limited pages
    assert calls == {"A@N01": 3, "B@N02": 1, "C@N03": 1, "D@N04": 3, "E@N05": 3}


def test_the_limiter_spaces_calls_evenly() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    limiter = RateLimiter(3600, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        limiter.wait()
    assert slept == [1.0, 1.0, 1.0] and limiter.calls == 4
    now[0] += 10  # an idle spell earns no burst beyond the next call
    limiter.wait()
    limiter.wait()
    assert slept[-1] == 1.0 and len(slept) == 4
    with pytest.raises(ValueError):
        RateLimiter(0)


class OddClient:
    """A client whose replies are not of Flickr's shape (the stand-in always answers well-formed JSON)."""

    def __init__(self, reply: object) -> None:
        self.reply = reply
        self.people = self

    def getPublicPhotos(self, **_: object) -> object:
        return self.reply


@pytest.mark.parametrize(
    "reply",
    [
        {},
        {"photos": None},
        {"photos": {"pages": "many"}},
        {"photos": {"photo": [{"license": "4"}]}},
        {"photos": {"photo": ["x"]}},
    ],
)
def test_an_odd_reply_or_a_missing_id_never_reads_as_a_deletion(reply: object) -> None:
    photos = [ReleasedPhoto("a", "1", "A@N01", "cc-by"), ReleasedPhoto("b", "2", "", "cc-by")]
    found = recheck_owners(photos, ["cc-by"], OddClient(reply), RateLimiter(1e9), backoff_s=0, now=lambda: "T")  # type: ignore[arg-type]
    assert [(a.image_id, a.reason) for a in found] == [("b", "unreachable"), ("a", "unreachable")]
    listed = OddClient({"photos": {"pages": 1, "photo": [{"id": "1", "license": "4"}]}})
    no_id = recheck_owners([ReleasedPhoto("c", "", "A@N01", "cc-by")], ["cc-by"], listed, RateLimiter(1e9))  # type: ignore[arg-type]
    assert no_id[0].reason == "unreachable"
