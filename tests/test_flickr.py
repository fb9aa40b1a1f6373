"""ingest.source=flickr end to end: the real `flickrapi` client, through `curate.run.main`, against a local stand-in
of Flickr's REST endpoint (tests/flickr_standin.py) that checks the OAuth signature, filters by licence, pages,
honours `extras`, and records every request.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import read_parts, read_stage
from flickr_standin import Fail, FlickrStandIn, flickr_standin

from curate.config import FLICKR_KEY_ENV, FLICKR_SECRET_ENV
from curate.run import main
from curate.sources import yfcc_hash
from curate.sources.flickr import PAGE_ATTEMPTS

KEY = "KEY-s3cr3t-123"
SECRET = "SECRET-t0p-456"
LICENCES = ("4", "11", "1", "0")  # CC BY 2.0, CC BY 4.0, CC BY-NC-SA, all rights reserved
WANTED = {"4", "11"}
PER_PAGE = 5
REQUIRED_EXTRAS = {"license", "owner_name", "date_taken", "geo", "url_m"}


def make_photo(i: int) -> dict[str, Any]:
    pid = str(5_200_000_000 + i * 7919)
    secret = f"{i * 104729:010x}"
    photo: dict[str, Any] = {
        "id": pid,
        "owner": f"{10_000_000 + i}@N0{i % 8}",
        "secret": secret,
        "server": "65535",
        "farm": 66,
        "title": f"Photo number {i}",
        "ispublic": 1,
        "isfriend": 0,
        "isfamily": 0,
        "license": LICENCES[i % len(LICENCES)],
        "ownername": f"Owner {i}",
        "datetaken": f"2012-02-{i % 28 + 1:02d} 09:56:{i % 60:02d}",
        "datetakengranularity": 0,
        "datetakenunknown": "0",
        "latitude": f"{51.5 + i / 1000:.6f}",
        "longitude": f"{-0.1 - i / 1000:.6f}",
        "accuracy": 16,
        "context": 0,
        "url_m": f"https://live.staticflickr.com/65535/{pid}_{secret}.jpg",
        "height_m": 375,
        "width_m": 500,
        "url_l": f"https://live.staticflickr.com/65535/{pid}_{secret}_b.jpg",
        "height_l": 768,
        "width_l": 1024,
    }
    if i % 3 == 0:  # Flickr's "no geo": 0/0, sometimes as numbers, sometimes as strings
        zero: Any = 0 if i % 2 else "0"
        photo.update(latitude=zero, longitude=zero, accuracy=0)
    if i == 5:  # on the equator, but placed: lat 0 alone is a real position
        photo.update(latitude="0.000000", longitude="32.580000", accuracy=11)
    if i == 9:  # no medium size: the next size in preference order is used
        for key in ("url_m", "height_m", "width_m"):
            del photo[key]
    return photo


def make_catalogue(n: int = 23) -> list[dict[str, Any]]:
    return [make_photo(i) for i in range(n)]


CATALOGUE = make_catalogue()
MATCHING = [p for p in CATALOGUE if p["license"] in WANTED]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Any:
    """Every log line at INFO and above (what `main` configures for the CLI), from every logger.

    caplog alone is not enough: pytest also hangs its capture handlers on non-propagating loggers such as
    `distributed`, and LocalCluster(silence_logs=ERROR) raises those (shared) handlers to ERROR while the
    cluster is up, so caplog misses the warnings of tasks that run in-process. This handler is our own.
    """
    caplog.set_level(logging.INFO)
    handler = _Lines()
    loggers = [logging.getLogger(), logging.getLogger("distributed")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture
def flickr(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(FLICKR_KEY_ENV, KEY)
    monkeypatch.setenv(FLICKR_SECRET_ENV, SECRET)
    with flickr_standin(KEY, SECRET, CATALOGUE) as standin:
        yield standin


def args(standin: FlickrStandIn, run_dir: Path, *extra: str, stage: str = "ingest") -> list[str]:
    return [
        "pipeline=sample",
        "ingest.source=flickr",
        f"ingest.flickr.endpoint={standin.endpoint}",
        "ingest.flickr.license_ids=[4,11]",
        f"ingest.flickr.per_page={PER_PAGE}",
        "ingest.flickr.max_pages=100",
        "ingest.flickr.timeout_s=5",
        "ingest.num_shards=2",
        f"run.dir={run_dir}",
        f"stage={stage}",
        "dask.processes=false",
        "dask.n_workers=1",
        "run.progress=false",
        *extra,
    ]


def expected_row(photo: dict[str, Any]) -> dict[str, Any]:
    lat, lon = float(photo["latitude"]), float(photo["longitude"])
    placed = not (lat == 0 and lon == 0)
    return {
        "image_id": f"flickr-{photo['id']}",
        "source": "flickr",
        "photo_id": photo["id"],
        "owner_nsid": photo["owner"],
        "owner_name": photo["ownername"],
        "title": photo["title"],
        "page_url": f"https://www.flickr.com/photos/{photo['owner']}/{photo['id']}/",
        "image_url": photo.get("url_m") or photo["url_l"],
        # the API gives no hash: PASS's over the URL fetched (the id stays flickr-<photo id>)
        "photo_hash": yfcc_hash(photo.get("url_m") or photo["url_l"]),
        "license_id": photo["license"],
        "date_taken": photo["datetaken"],
        "latitude": lat if placed else None,
        "longitude": lon if placed else None,
        "ingest_status": "ok",
        "ingest_reason": "ok",
    }


def rows_by_id(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return {r["image_id"]: {k: r[k] for k in expected_row(MATCHING[0])} for r in records}


def assert_rows(run_dir: Path, photos: list[dict[str, Any]]) -> pd.DataFrame:
    frame = read_parts(run_dir, "ingest")
    assert len(frame) == len(photos), frame["image_id"].tolist()
    assert frame["image_id"].is_unique
    assert frame["image_id"].str.fullmatch(r"flickr-\d+").all()
    got = rows_by_id(frame)
    want = {f"flickr-{p['id']}": expected_row(p) for p in photos}
    assert got.keys() == want.keys()
    for image_id, row in want.items():
        assert got[image_id] == row, image_id
    return frame


def assert_search_requests(standin: FlickrStandIn, pages: list[int]) -> None:
    assert standin.pages_asked() == pages
    for request in standin.searches:
        form = request.form
        assert request.http_method == "POST" and request.path == "/services/rest/"
        assert form["license"] == "4,11"
        assert form["per_page"] == str(PER_PAGE)
        assert REQUIRED_EXTRAS <= set(form["extras"].split(","))
        assert (form["format"], form["nojsoncallback"]) == ("json", "1")
        assert request.api_key == KEY and request.signature_ok


# 1. paging ----------------------------------------------------------------------------------------------------


def test_pages_through_every_matching_photo_exactly_once(flickr: FlickrStandIn, run_dir: Path) -> None:
    assert len(MATCHING) == 12 and len(CATALOGUE) == 23  # 3 pages of 5, 5, 2

    assert main(args(flickr, run_dir)) == 0

    assert_search_requests(flickr, [1, 2, 3])
    assert all(r.reply == "ok" for r in flickr.requests)
    frame = assert_rows(run_dir, MATCHING)
    assert set(frame["license_id"]) == WANTED
    # Flickr's 0/0 is "no position"; a photo on the equator keeps its latitude 0.
    no_geo = {f"flickr-{p['id']}" for p in MATCHING if float(p["latitude"]) == 0 and float(p["longitude"]) == 0}
    assert no_geo and set(frame.loc[frame["latitude"].isna(), "image_id"]) == no_geo
    assert set(frame.loc[frame["longitude"].isna(), "image_id"]) == no_geo
    equator = frame.set_index("image_id").loc[f"flickr-{CATALOGUE[5]['id']}"]
    assert (equator["latitude"], equator["longitude"]) == (0.0, 32.58)
    # Both shards were written and marked complete.
    assert len(list((run_dir / "manifest" / "ingest").glob("part-*.parquet"))) == 2
    assert len(list((run_dir / "stats" / "ingest").glob("part-*.json"))) == 2


# 2. max_pages / limit ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_pages", [1, 2])
def test_max_pages_stops_paging(flickr: FlickrStandIn, run_dir: Path, max_pages: int) -> None:
    assert main([*args(flickr, run_dir), f"ingest.flickr.max_pages={max_pages}"]) == 0

    assert_search_requests(flickr, list(range(1, max_pages + 1)))
    assert_rows(run_dir, MATCHING[: max_pages * PER_PAGE])


def test_limit_stops_paging_once_enough_rows_were_read(flickr: FlickrStandIn, run_dir: Path) -> None:
    assert main([*args(flickr, run_dir), "ingest.limit=7"]) == 0

    assert_search_requests(flickr, [1, 2])
    assert_rows(run_dir, MATCHING[:7])


# 3. errors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [Fail(105, "Service currently unavailable"), Fail(http_status=502)],
    ids=["stat-fail-105", "http-502"],
)
def test_a_page_that_fails_once_is_retried(flickr: FlickrStandIn, run_dir: Path, failure: Fail) -> None:
    flickr.fail_page(2, failure)

    assert main(args(flickr, run_dir)) == 0

    assert_search_requests(flickr, [1, 2, 2, 3])
    assert [r.reply for r in flickr.searches][1] != "ok"
    assert_rows(run_dir, MATCHING)


def _assert_failed_cleanly(run_dir: Path, output: str) -> None:
    assert not list((run_dir / "stats" / "ingest").glob("*.json"))
    assert not (run_dir / "shards.json").exists()
    assert not list((run_dir / "manifest" / "ingest").glob("part-*.parquet"))
    assert "FAILED" in output


@pytest.mark.parametrize(
    ("key", "secret", "failure", "code"),
    [
        # The stand-in refuses an unknown consumer key with code 100, as Flickr does: no retry can help.
        ("WRONG-KEY-s3cr3t-999", SECRET, None, "100"),
        # Signed with the wrong secret: the signature does not verify.
        (KEY, "WRONG-SECRET-t0p-999", None, "96"),
        # A transient error that never clears: bounded retries, then a failure.
        (KEY, SECRET, Fail(105, "Service currently unavailable"), "105"),
    ],
    ids=["invalid-key", "bad-signature", "persistent-105"],
)
def test_a_persistent_error_fails_ingest_without_leaking_secrets(
    flickr: FlickrStandIn,
    run_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    logs: _Lines,
    key: str,
    secret: str,
    failure: Fail | None,
    code: str,
) -> None:
    monkeypatch.setenv(FLICKR_KEY_ENV, key)
    monkeypatch.setenv(FLICKR_SECRET_ENV, secret)
    flickr.always = failure

    assert main(args(flickr, run_dir)) != 0

    out, err = capsys.readouterr()
    output = "\n".join((out, err, caplog.text, logs.text))
    _assert_failed_cleanly(run_dir, output)
    assert f"{code}:" in output  # the Flickr error code reaches the user
    for value in (key, secret, KEY, SECRET):
        assert value not in output
    assert flickr.pages_asked()[0] == 1 and set(flickr.pages_asked()) == {1}
    asked = len(flickr.searches)
    if code == "100":
        assert asked == 1  # an invalid key is not retried
    elif code == "105":
        assert asked == PAGE_ATTEMPTS
    else:
        assert 1 <= asked <= PAGE_ATTEMPTS


def test_invalid_key_on_a_later_page_marks_no_shard_complete(flickr: FlickrStandIn, run_dir: Path) -> None:
    flickr.fail_page(3, Fail(100, "Invalid API Key (Key has expired)"))

    assert main(args(flickr, run_dir)) != 0

    assert flickr.pages_asked() == [1, 2, 3]
    assert not list((run_dir / "stats" / "ingest").glob("*.json"))
    assert not (run_dir / "shards.json").exists()


# 4. licence stage on what was paged in -------------------------------------------------------------------------


def test_license_stage_keeps_cc_by_photos(flickr: FlickrStandIn, run_dir: Path) -> None:
    assert main(args(flickr, run_dir)) == 0
    assert main(args(flickr, run_dir, stage="license")) == 0

    frame = read_stage(run_dir, "license")
    assert len(frame) == len(MATCHING)
    assert set(frame["license_id"]) == {"4", "11"}
    assert (frame["license_status"] == "ok").all(), frame[["license_id", "license_status", "license_reason"]]
    assert (frame["license_reason"] == "ok").all()
    assert (frame["license_code"] == "cc-by").all()
    assert frame["license_attribution_url"].str.startswith("https://creativecommons.org/licenses/by/").all()
    assert len(flickr.searches) == 3  # the licence stage does not call the API


# 5. secrets ----------------------------------------------------------------------------------------------------


def test_key_and_secret_are_written_nowhere(
    flickr: FlickrStandIn,
    run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    logs: _Lines,
) -> None:
    flickr.fail_page(2, Fail(105, "Service currently unavailable"))  # a warning gets logged too

    assert main(args(flickr, run_dir)) == 0
    assert main(args(flickr, run_dir, stage="license")) == 0

    # They were in play: the stand-in saw the key and a signature made with the secret.
    assert flickr.searches and all(r.api_key == KEY and r.signature_ok for r in flickr.searches)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.relative_to(run_dir).as_posix() for p in files if p.is_relative_to(run_dir)}
    assert "config.yaml" in names
    assert any(n.startswith("invocations/") for n in names)
    assert any(n.startswith("manifest/ingest/part-") for n in names)
    assert any(n.startswith("stats/ingest/part-") for n in names)
    for path in files:
        data = path.read_bytes()
        for value in (KEY, SECRET):
            assert value.encode() not in data, f"{value!r} written to {path}"
    out, err = capsys.readouterr()
    assert "flickr.photos.search page 2 failed (attempt 1): Error: 105" in logs.text  # the logs were really captured
    for value in (KEY, SECRET):
        for text in (out, err, caplog.text, logs.text):
            assert value not in text


# 6. missing credentials ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [{}, {FLICKR_SECRET_ENV: SECRET}, {FLICKR_KEY_ENV: KEY}, {FLICKR_KEY_ENV: "", FLICKR_SECRET_ENV: SECRET}],
    ids=["neither", "no-key", "no-secret", "empty-key"],
)
def test_missing_credentials_stop_before_any_work(
    flickr: FlickrStandIn,
    run_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
) -> None:
    monkeypatch.delenv(FLICKR_KEY_ENV)
    monkeypatch.delenv(FLICKR_SECRET_ENV)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    assert main(args(flickr, run_dir)) == 2

    err = capsys.readouterr().err
    assert FLICKR_KEY_ENV in err and FLICKR_SECRET_ENV in err and "ingest.source=flickr" in err
    assert flickr.requests == []
    assert not run_dir.exists()


# image ids -----------------------------------------------------------------------------------------------------


def test_an_odd_photo_id_still_gives_a_safe_image_id(monkeypatch: pytest.MonkeyPatch, run_dir: Path) -> None:
    """WebDataset splits keys at the first dot and release uses the id in tar member names."""
    monkeypatch.setenv(FLICKR_KEY_ENV, KEY)
    monkeypatch.setenv(FLICKR_SECRET_ENV, SECRET)
    odd = make_photo(0) | {"id": "123.456/../x"}
    with flickr_standin(KEY, SECRET, [odd, make_photo(4)]) as standin:
        assert main(args(standin, run_dir)) == 0

    frame = read_parts(run_dir, "ingest")
    assert len(frame) == 2 and frame["image_id"].is_unique
    assert frame["image_id"].str.fullmatch(r"flickr-[A-Za-z0-9_-]+").all(), frame["image_id"].tolist()
    assert "123.456/../x" in set(frame["photo_id"])
