"""The stand-in's flickr.people.getPublicPhotos, driven by the real `flickrapi` client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import flickrapi
import pytest
from flickr_standin import RATE_LIMITED, Fail, FlickrStandIn, flickr_standin

KEY = "KEY-people-123"
SECRET = "SECRET-people-456"
ALICE = "11111111@N01"
BOB = "22222222@N02"


def photo(i: int, owner: str, *, public: bool = True, license: str = "4") -> dict[str, Any]:
    return {
        "id": str(9_000_000_000 + i),
        "owner": owner,
        "secret": f"{i:010x}",
        "server": "65535",
        "farm": 66,
        "title": f"Photo {i}",
        "ispublic": 1 if public else 0,
        "isfriend": 0,
        "isfamily": 0,
        "license": license,
        "ownername": f"Name of {owner}",
    }


# Alice: 6 photos, one of them private (so 5 public); Bob: 2, interleaved.
CATALOGUE = [
    photo(0, ALICE),
    photo(1, BOB),
    photo(2, ALICE, license="11"),
    photo(3, ALICE, public=False),
    photo(4, ALICE),
    photo(5, BOB, license="0"),
    photo(6, ALICE),
    photo(7, ALICE),
]
ALICE_PUBLIC = [p["id"] for p in CATALOGUE if p["owner"] == ALICE and p["ispublic"]]


@pytest.fixture
def standin() -> Iterator[FlickrStandIn]:
    with flickr_standin(KEY, SECRET, CATALOGUE) as s:
        yield s


def client(standin: FlickrStandIn, key: str = KEY, secret: str = SECRET) -> flickrapi.FlickrAPI:
    c = flickrapi.FlickrAPI(key, secret, format="parsed-json", store_token=False, timeout=5)
    c.REST_URL = standin.endpoint
    return c


def public_photos(c: flickrapi.FlickrAPI, user_id: str, **params: Any) -> dict[str, Any]:
    reply: dict[str, Any] = c.people.getPublicPhotos(user_id=user_id, **params)
    return reply


def test_pages_an_owners_public_photos(standin: FlickrStandIn) -> None:
    c = client(standin)
    assert len(ALICE_PUBLIC) == 5
    seen: list[str] = []
    for page in (1, 2, 3):
        reply = public_photos(c, ALICE, extras="license", per_page=2, page=page)
        assert reply["stat"] == "ok"
        photos = reply["photos"]
        assert (photos["page"], photos["pages"], photos["perpage"], photos["total"]) == (page, 3, 2, 5)
        assert len(photos["photo"]) == (2 if page < 3 else 1)
        for p in photos["photo"]:
            assert p["owner"] == ALICE and p["ispublic"] == 1
            assert "license" in p and "ownername" not in p  # only the extras asked for
        seen += [p["id"] for p in photos["photo"]]
    assert seen == ALICE_PUBLIC  # catalogue order, each once, the private one left out
    assert CATALOGUE[3]["id"] not in seen

    # Past the end: the last page again, as search does.
    late = public_photos(c, ALICE, per_page=2, page=9)["photos"]
    assert late["page"] == 3 and [p["id"] for p in late["photo"]] == ALICE_PUBLIC[4:]
    assert "license" not in late["photo"][0]  # no extras asked for
    # Defaults: per_page 100, page 1.
    whole = public_photos(c, BOB)["photos"]
    assert (whole["page"], whole["pages"], whole["perpage"], whole["total"]) == (1, 1, 100, 2)
    assert all(r.signature_ok and r.api_key == KEY for r in standin.people_calls)


def test_unknown_user_is_user_not_found(standin: FlickrStandIn) -> None:
    with pytest.raises(flickrapi.FlickrError) as error:
        public_photos(client(standin), "99999999@N09")
    assert error.value.code == 1 and "User not found" in str(error.value)
    assert standin.people_calls[-1].reply == "fail 1"


def test_bad_key_and_bad_signature_are_refused(standin: FlickrStandIn) -> None:
    with pytest.raises(flickrapi.FlickrError) as error:
        public_photos(client(standin, key="WRONG"), ALICE)
    assert error.value.code == 100
    with pytest.raises(flickrapi.FlickrError) as error:
        public_photos(client(standin, secret="WRONG"), ALICE)
    assert error.value.code == 96


def test_scripted_429_then_success_and_call_counts(standin: FlickrStandIn) -> None:
    standin.fail_owner_page(ALICE, 2, RATE_LIMITED, Fail(105, "Service currently unavailable"))
    c = client(standin)

    assert public_photos(c, ALICE, per_page=2, page=1)["stat"] == "ok"
    with pytest.raises(flickrapi.FlickrError, match="429"):
        public_photos(c, ALICE, per_page=2, page=2)
    with pytest.raises(flickrapi.FlickrError) as error:
        public_photos(c, ALICE, per_page=2, page=2)
    assert error.value.code == 105
    reply = public_photos(c, ALICE, per_page=2, page=2)
    assert [p["id"] for p in reply["photos"]["photo"]] == ALICE_PUBLIC[2:4]
    assert public_photos(c, BOB)["stat"] == "ok"
    # fail_page is for search only: it does not touch people calls.
    standin.fail_page(1, Fail(105))
    assert public_photos(c, BOB)["stat"] == "ok"

    assert [r.reply for r in standin.people_calls] == ["ok", "http 429", "fail 105", "ok", "ok", "ok"]
    assert standin.owner_pages_asked(ALICE) == [1, 2, 2, 2]
    assert standin.calls_per_owner() == {ALICE: 4, BOB: 2}
    assert standin.ok_calls_per_owner() == {ALICE: 2, BOB: 2}
    assert standin.searches == []


def test_catalogue_can_be_replaced_between_calls(standin: FlickrStandIn) -> None:
    c = client(standin)
    assert public_photos(c, BOB)["photos"]["total"] == 2
    standin.catalogue = [*CATALOGUE, photo(8, BOB), photo(9, BOB, public=False)]
    assert [p["id"] for p in public_photos(c, BOB)["photos"]["photo"]] == [
        CATALOGUE[1]["id"],
        CATALOGUE[5]["id"],
        photo(8, BOB)["id"],
    ]
    standin.replace_catalogue([photo(10, ALICE)])
    with pytest.raises(flickrapi.FlickrError) as error:
        public_photos(c, BOB)
    assert error.value.code == 1
    standin.known_users.add(BOB)  # a user with no photos is known, and has none
    assert public_photos(c, BOB)["photos"] == {"page": 1, "pages": 0, "perpage": 100, "total": 0, "photo": []}


def test_search_still_works_and_other_methods_are_unknown(standin: FlickrStandIn) -> None:
    c = client(standin)
    reply = c.photos.search(license="11", per_page=5)
    assert [p["id"] for p in reply["photos"]["photo"]] == [CATALOGUE[2]["id"]]
    with pytest.raises(flickrapi.FlickrError) as error:
        c.people.getInfo(user_id=ALICE)
    assert error.value.code == 112
