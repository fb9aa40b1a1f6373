"""Malformed YFCC metadata ends as rows with reasons, never a crash; plain and .bz2 read the same."""

from __future__ import annotations

import bz2
import json
from pathlib import Path

import pytest
from conftest import read_stage, run_curate

from curate.sources import yfcc_hash

GOOD = [
    "0", "6985418911", "4e2f7a26a1dfbf165a7e30bdabf7e72a", "39089491@N00", "guck+xzs", "2012-02-16 09:56:37.0",
    "1331840483", "Canon+PowerShot", "IMG_0520", "", "canon", "", "-81.804885", "24.550558", "12",
    "http://www.flickr.com/photos/39089491@N00/6985418911/", "file:a.jpg", "Attribution License",
    "http://creativecommons.org/licenses/by/2.0/", "7205", "8", "abc", "def", "jpg", "0",
]  # fmt: skip


def line(**changes: str) -> bytes:
    fields = list(GOOD)
    names = {"number": 0, "id": 1, "hash": 2, "nick": 4, "date": 5, "license": 17, "license_url": 18, "marker": 24}
    for key, value in changes.items():
        fields[names[key]] = value
    return "\t".join(fields).encode("utf-8") + b"\n"


def metadata() -> bytes:
    rows = [
        line(),
        line(number="1", id="2", hash="bb" * 16, date="31/12/2012 noon"),
        line(number="2", id="3", hash="cc" * 16, license="Some Custom License", license_url="http://x.invalid/"),
        b"3\t4\t" + b"dd" * 16 + b"\tshort\n",
        line(number="4", id="5", hash="ee" * 16).replace(b"guck+xzs", b"caf\xe9+\xff\xfe"),
        line(number="5", id="6", hash="ff" * 16, marker="1"),
        line(number="6", id="7", hash="4e2f7a26a1dfbf165a7e30bdabf7e72a"),  # the same photo hash again
        line(number="7", id="8", hash="not-hex!", license="Attribution-NonCommercial License",
             license_url="http://creativecommons.org/licenses/by-nc/2.0/"),
        b"\n",  # blank lines are not candidates
    ]  # fmt: skip
    return b"".join(rows)


@pytest.mark.parametrize("compressed", [False, True])
def test_malformed_rows_end_with_reasons(tmp_path: Path, compressed: bool) -> None:
    path = tmp_path / ("yfcc.tsv.bz2" if compressed else "yfcc.tsv")
    path.write_bytes(bz2.compress(metadata()) if compressed else metadata())
    run_dir = tmp_path / "run"
    assert run_curate(f"ingest.path={path}", f"run.dir={run_dir}", "stage=ingest") == 0
    assert run_curate(f"ingest.path={path}", f"run.dir={run_dir}", "stage=license") == 0
    rows = read_stage(run_dir, "license").set_index("photo_id")
    assert len(rows) == 8
    outcome = {
        pid: (r.ingest_status, r.ingest_reason, r.license_status, r.license_reason) for pid, r in rows.iterrows()
    }
    assert outcome["6985418911"] == ("ok", "ok", "ok", "ok")
    assert outcome["2"] == ("ok", "bad_date", "ok", "ok")
    assert rows.loc["2", "date_taken"] is None or rows.loc["2", "date_taken"] != rows.loc["2", "date_taken"]
    assert outcome["3"] == ("ok", "ok", "rejected", "unknown_license")
    assert outcome["4"][:2] == ("rejected", "short_row")
    assert outcome["5"][:2] == ("ok", "bad_encoding")
    assert "\ufffd" in rows.loc["5", "owner_name"] and rows.loc["5", "owner_name"].startswith("caf")
    assert outcome["6"][:2] == ("rejected", "video")
    assert outcome["7"][:2] == ("rejected", "duplicate_id")
    assert outcome["8"] == ("ok", "ok", "rejected", "not_allowed")
    assert rows.loc["8", "image_id"] == "yfcc-8"  # a damaged hash falls back to a dot-free id
    assert rows.loc["6985418911", "owner_name"] == "guck xzs"
    assert rows.loc["6985418911", "latitude"] == pytest.approx(24.550558)


# YFCC100M ships more than one column layout: 25 (Multimedia Commons: line number, id, hash, ...), 23 (Yahoo's
# original: no line number, no hash), 24 (hash but no line number, or line number but no hash).
LAYOUT_DROPS = {"yfcc100m-25": [], "yfcc100m-24-hash": [0], "yfcc100m-24-line": [2], "yfcc100m-23": [0, 2]}


def variant(raw: bytes, drop: list[int]) -> bytes:
    fields = raw.rstrip(b"\n").split(b"\t")
    return b"\t".join(f for i, f in enumerate(fields) if i not in drop) + b"\n"


@pytest.mark.parametrize("layout", list(LAYOUT_DROPS))
def test_every_yfcc_layout_is_detected_and_read(tmp_path: Path, layout: str, caplog: pytest.LogCaptureFixture) -> None:
    drop = LAYOUT_DROPS[layout]
    rows_in = [
        line(),
        line(number="1", id="2", hash="bb" * 16, license="Attribution-NonCommercial License"),
        line(number="2", id="3", hash="cc" * 16, marker="1"),
        line(number="3", id="4", hash="dd" * 16).replace(b"IMG_0520", b"caf%E9+%FF"),  # %XX bytes, not UTF-8
        line(number="4", id="5", hash="ee" * 16).rstrip(b"\n") + b"\textra\n",  # a field too many
    ]
    path = tmp_path / "yfcc.tsv"
    path.write_bytes(b"".join(variant(raw, drop) for raw in rows_in))
    run_dir = tmp_path / "run"
    with caplog.at_level("INFO", logger="curate"):
        assert run_curate(f"ingest.path={path}", f"run.dir={run_dir}", "stage=ingest") == 0
    assert any(layout in record.getMessage() for record in caplog.records)
    if layout != "yfcc100m-25":
        assert any(layout in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    report = json.loads((run_dir / "stats" / "ingest_sources.json").read_text())
    assert [(u["layout"], u["rows"], u["malformed"]) for u in report["units"]] == [(layout, 5, 1)]
    rows = read_stage(run_dir).set_index("photo_id")
    assert rows.loc["6985418911", "owner_name"] == "guck xzs"
    assert rows.loc["6985418911", "license_url"] == "http://creativecommons.org/licenses/by/2.0/"
    assert rows.loc["6985418911", "image_url"] == "file:a.jpg"
    assert rows.loc["6985418911", "latitude"] == pytest.approx(24.550558)
    assert rows.loc["6985418911", "source_id"] == "6985418911"
    has_hash = 2 not in drop
    assert rows.loc["6985418911", "image_id"] == ("4e2f7a26a1dfbf165a7e30bdabf7e72a" if has_hash else "yfcc-6985418911")
    # A layout without the hash gets YFCC's own rule over the download URL; the id above does not follow it.
    hashed = "4e2f7a26a1dfbf165a7e30bdabf7e72a" if has_hash else yfcc_hash("file:a.jpg")
    assert rows.loc["6985418911", "photo_hash"] == hashed
    assert rows.loc["2", "license_name"] == "Attribution-NonCommercial License"
    assert rows.loc["3", "ingest_reason"] == "video"
    assert tuple(rows.loc["4", ["ingest_status", "ingest_reason"]]) == ("ok", "bad_encoding")
    assert rows.loc["4", "title"] == "caf\ufffd \ufffd"
    assert tuple(rows.loc["5", ["ingest_status", "ingest_reason"]]) == ("rejected", "malformed_row")
    assert (rows.drop(["3", "4", "5"])["ingest_reason"] == "ok").all()
