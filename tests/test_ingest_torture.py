"""Ingest never loses a unit to one record: odd file names, broken CSV lines, bad bytes, a record that raises;
ids stay distinct; a URL list's owner feeds the owner cap; the parts are the same whatever the split."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

import pandas as pd
import pytest
from conftest import read_parts, run_curate
from test_malformed_metadata import line

import curate.sources as sources
import curate.stages.ingest as ingest
from curate.schema import safe_id
from curate.sources import yfcc_hash

# Folder sources --------------------------------------------------------------------------------------------


def test_a_non_utf8_file_name_is_kept_and_its_url_round_trips(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "ok.jpg").write_bytes(b"one")
    (folder / "sub").mkdir()
    (folder / "sub" / "ok.jpg").write_bytes(b"two")
    raw_name = os.path.join(os.fsencode(folder), b"caf\xe9 \xff.jpg")
    with open(raw_name, "wb") as handle:
        handle.write(b"three")
    run_dir = tmp_path / "run"
    assert run_curate("ingest.source=folder", f"ingest.path={folder}", f"run.dir={run_dir}", "stage=ingest") == 0
    rows = read_parts(run_dir, "ingest").set_index("source_ref")
    assert sorted(rows.index) == ["caf\\xe9 \\xff.jpg", "ok.jpg", "sub/ok.jpg"]
    odd = rows.loc["caf\\xe9 \\xff.jpg"]
    assert (odd.ingest_status, odd.ingest_reason) == ("ok", "bad_encoding")  # kept: it can still be fetched
    assert odd.source_id == "caf\\xe9 \\xff.jpg" and odd.title == "caf\ufffd \ufffd.jpg"
    assert odd.image_id == "caf----" + hashlib.sha1(b"caf\xe9 \xff.jpg").hexdigest()[:12]  # the raw bytes' hash
    assert unquote_to_bytes(urlsplit(odd.image_url).path) == os.path.realpath(raw_name)
    assert rows["image_id"].is_unique and (rows["ingest_status"] == "ok").all()
    # UTF-8 names keep the ids they always had.
    assert rows.loc["ok.jpg", "image_id"] == f"ok-{hashlib.sha1(b'ok.jpg').hexdigest()[:12]}"
    # PASS's hash over the path relative to the folder (its raw bytes), not over the absolute file: URL, so that
    # it stays the same when the folder moves.
    relative = {"ok.jpg": b"ok.jpg", "sub/ok.jpg": b"sub/ok.jpg", "caf\\xe9 \\xff.jpg": b"caf\xe9 \xff.jpg"}
    assert {ref: rows.loc[ref, "photo_hash"] for ref in relative} == {r: yfcc_hash(b) for r, b in relative.items()}


# CSV / TSV / text lists --------------------------------------------------------------------------------------

CSV = (
    b"\xef\xbb\xbfid,url,title\n"  # a spreadsheet's byte-order mark
    b"a,http://h.invalid/a.jpg,fine\n"
    b"b,http://h.invalid/b.jpg,one,field,too many\n"  # once a ParserError that lost every row
    b"c,http://h.invalid/c.jpg\n"  # one field short
    b'd,http://h.invalid/d.jpg,"a title\nover two lines"\n'  # a quoted newline is one record
    b"e,http://h.invalid/e.jpg,caf\xe9\n"  # not UTF-8
    b'f,http://h.invalid/f.jpg,"never closed\n'
    b"g,http://h.invalid/g.jpg,after the broken one\n"
    b"\n"
    b"h,,no url\n"
    b"i,http://[::1,a bad url is fetch's to reject\n"
)


@pytest.mark.parametrize("suffix", ["csv", "tsv"])
def test_broken_csv_lines_cost_only_themselves(tmp_path: Path, suffix: str) -> None:
    data = CSV if suffix == "csv" else CSV.replace(b",", b"\t")
    path = tmp_path / f"list.{suffix}"
    path.write_bytes(data)
    run_dir = tmp_path / "run"
    flags = ["ingest.source=urls", f"ingest.path={path}", "ingest.id_column=id", f"run.dir={run_dir}"]
    assert run_curate(*flags, "stage=ingest") == 0
    rows = read_parts(run_dir, "ingest").set_index("source_ref")
    name = path.name
    outcome = {ref.removeprefix(f"{name}:"): (r.ingest_status, r.ingest_reason) for ref, r in rows.iterrows()}
    assert outcome == {
        "2": ("ok", "ok"),
        "3": ("rejected", "malformed_row"),
        "4": ("rejected", "malformed_row"),
        "5": ("ok", "ok"),
        "7": ("ok", "bad_encoding"),
        "8": ("rejected", "malformed_row"),
        "9": ("ok", "ok"),
        "11": ("rejected", "missing_url"),
        "12": ("ok", "ok"),
    }
    assert "line 3" in rows.loc[f"{name}:3", "ingest_error"] and "5 fields" in rows.loc[f"{name}:3", "ingest_error"]
    # A broken row keeps the field in its id column, so a person can find it; its other fields are not trusted.
    assert rows.loc[f"{name}:3", "source_id"] == "b" and pd.isna(rows.loc[f"{name}:3", "image_url"])
    by_id = rows.dropna(subset=["source_id"]).set_index("source_id")
    assert by_id.loc["a", "image_id"] == "a"  # the byte-order mark did not end up in the header
    assert by_id.loc["d", "title"] == "a title\nover two lines"
    assert by_id.loc["e", "title"] == "caf\ufffd"
    assert by_id.loc["g", "title"] == "after the broken one"


def test_text_list_keeps_line_numbers_and_flags_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "urls.txt"
    path.write_bytes(b"# a comment\nhttp://h.invalid/1.jpg\n\nhttp://h.invalid/caf\xe9.jpg\n")
    run_dir = tmp_path / "run"
    assert run_curate("ingest.source=urls", f"ingest.path={path}", f"run.dir={run_dir}", "stage=ingest") == 0
    rows = read_parts(run_dir, "ingest").set_index("source_ref")
    assert rows.loc["urls.txt:2", "ingest_reason"] == "ok"
    assert rows.loc["urls.txt:2", "source_id"] == "http://h.invalid/1.jpg"
    assert tuple(rows.loc["urls.txt:4", ["ingest_status", "ingest_reason"]]) == ("ok", "bad_encoding")
    # A list gives no hash: PASS's over the URL; the id stays the list's own key.
    url = "http://h.invalid/1.jpg"
    assert rows.loc["urls.txt:2", "photo_hash"] == yfcc_hash(url)
    assert rows.loc["urls.txt:2", "image_id"] == "url-" + hashlib.sha1(url.encode()).hexdigest()[:24]
    assert rows.loc["urls.txt:4", "photo_hash"] == yfcc_hash(rows.loc["urls.txt:4", "image_url"])


def test_yfcc_hash_drops_each_bytes_leading_zero() -> None:
    # md5("") = d4 1d 8c d9 8f 00 b2 04 e9 80 09 98 ec f8 42 7e: 00, 04 and 09 lose their leading zeros
    assert hashlib.md5(b"").hexdigest() == "d41d8cd98f00b204e9800998ecf8427e"
    assert yfcc_hash(b"") == "d41d8cd98f0b24e980998ecf8427e"
    for url in ("http://farm8.staticflickr.com/7205/6985418911_abc.jpg", "file:a.jpg", "https://x.invalid/é"):
        digest = hashlib.md5(url.encode("utf-8")).digest()
        assert yfcc_hash(url) == "".join(format(byte, "x") for byte in digest)
        assert 16 <= len(yfcc_hash(url)) <= 32 and yfcc_hash(url) == yfcc_hash(url).lower()


# Ids --------------------------------------------------------------------------------------------------------

TRICKY_IDS = ["a/b", "a.b", "a b", "a-b", "图片", "写真", "4e2f7a26a1dfbf165a7e30bdabf7e72a", "x_1-Y", "café"]


def test_safe_id_keeps_safe_ids_and_never_merges_others() -> None:
    assert safe_id("4e2f7a26a1dfbf165a7e30bdabf7e72a") == "4e2f7a26a1dfbf165a7e30bdabf7e72a"  # PASS ids
    assert safe_id("x_1-Y") == "x_1-Y" and safe_id("yfcc-8") == "yfcc-8"
    escaped = safe_id("a/b")
    assert escaped.startswith("a-b--") and safe_id("café").startswith("cafe--")
    # A raw id that looks like the escaped form of another is escaped too, so it cannot collide with it.
    tricky = [*TRICKY_IDS, escaped, "", "\udce9", "a" * 300]
    made = [safe_id(raw) for raw in tricky]
    assert len(set(made)) == len(tricky)
    assert all(set(m) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") for m in made)


def test_distinct_ids_stay_distinct_rows(tmp_path: Path) -> None:
    table = pd.DataFrame({"id": TRICKY_IDS, "url": [f"http://h.invalid/{i}.jpg" for i in range(len(TRICKY_IDS))]})
    table.to_csv(tmp_path / "list.csv", index=False)
    run_dir = tmp_path / "run"
    flags = ["ingest.source=urls", f"ingest.path={tmp_path / 'list.csv'}", "ingest.id_column=id", f"run.dir={run_dir}"]
    assert run_curate(*flags, "stage=ingest") == 0
    rows = read_parts(run_dir, "ingest")
    assert sorted(rows["source_id"]) == sorted(TRICKY_IDS)
    assert rows["image_id"].is_unique and (rows["ingest_reason"] == "ok").all()  # no duplicate_id


def test_a_rejected_first_line_does_not_make_the_good_one_a_duplicate(tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text("id,url\nx,\nx,http://h.invalid/x.jpg\nx,http://h.invalid/x2.jpg\n")
    run_dir = tmp_path / "run"
    flags = ["ingest.source=urls", f"ingest.path={tmp_path / 'list.csv'}", "ingest.id_column=id", f"run.dir={run_dir}"]
    assert run_curate(*flags, "stage=ingest") == 0
    rows = read_parts(run_dir, "ingest").sort_values("source_ref")
    assert list(rows["ingest_reason"]) == ["missing_url", "ok", "duplicate_id"]


# Owners ------------------------------------------------------------------------------------------------------


def test_a_url_list_owner_fills_the_nsid_the_owner_cap_groups_by(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {
            "url": [f"http://h.invalid/{i}.jpg" for i in range(3)],
            "owner": ["alice", "bob", "carol"],
            "owner_nsid": ["", "", "123@N01"],
        }
    )
    table.to_csv(tmp_path / "list.csv", index=False)
    run_dir = tmp_path / "run"
    flags = ["ingest.source=urls", f"ingest.path={tmp_path / 'list.csv'}", f"run.dir={run_dir}", "stage=ingest"]
    assert run_curate(*flags) == 0
    rows = read_parts(run_dir, "ingest").set_index("owner_name")
    assert rows.loc["alice", "owner_nsid"] == "alice" and rows.loc["bob", "owner_nsid"] == "bob"
    assert rows.loc["carol", "owner_nsid"] == "123@N01"  # an explicit NSID column wins


# One record that raises --------------------------------------------------------------------------------------


def test_a_record_that_raises_is_one_failed_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import curate.sources.yfcc as yfcc

    real = yfcc.parse_line

    def flaky(raw: bytes, ref: str, layout: yfcc.Layout | None = None) -> dict[str, object]:
        if ref.endswith(":2"):
            raise KeyError("boom")
        return real(raw, ref, layout)

    monkeypatch.setattr(yfcc, "parse_line", flaky)  # the test's workers are threads of this process
    path = tmp_path / "yfcc.tsv"
    path.write_bytes(b"".join(line(number=str(i), id=str(i + 1), hash=f"{i:032x}") for i in range(3)))
    run_dir = tmp_path / "run"
    assert run_curate(f"ingest.path={path}", f"run.dir={run_dir}", "stage=ingest") == 0
    rows = read_parts(run_dir, "ingest").set_index("source_ref")
    assert len(rows) == 3
    broken = rows.loc["yfcc.tsv:2"]
    assert (broken.ingest_status, broken.ingest_reason) == ("failed", "internal_error")
    assert broken.ingest_error.startswith("KeyError: 'boom'") and "flaky" in broken.ingest_error
    assert (rows.drop("yfcc.tsv:2")["ingest_reason"] == "ok").all()


# The same parts whatever the split ---------------------------------------------------------------------------


def _yfcc_file(path: Path, n: int) -> None:
    lines = []
    for i in range(n):
        lines.append(line(number=str(i), id=str(10_000 + i), hash=f"{i % (n - 7):032x}"))  # some repeated hashes
        if i % 97 == 0:
            lines.append(b"\n")  # blank lines count as lines
        if i % 211 == 0:
            lines.append(b"short\trow\n")
    path.write_bytes(b"".join(lines))


def _parts(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "manifest" / "ingest").glob("part-*.parquet"))}


def test_parts_are_byte_identical_whatever_the_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "yfcc.tsv"
    _yfcc_file(path, 3000)
    reference = tmp_path / "whole"
    assert run_curate(f"ingest.path={path}", f"run.dir={reference}", "stage=ingest", "ingest.num_shards=3") == 0
    whole = _parts(reference)
    rows = read_parts(reference, "ingest").set_index("source_ref")
    # Line numbers are the file's own: line k of the file is row k, blank and short lines included.
    lines = path.read_bytes().split(b"\n")
    for ref, row in rows.iterrows():
        number = int(str(ref).rsplit(":", 1)[1])
        fields = lines[number - 1].split(b"\t")
        assert row.photo_id == (fields[1].decode() if len(fields) > 1 else None)
    assert (rows["ingest_reason"] == "duplicate_id").sum() == 7

    monkeypatch.setattr(ingest, "RANGE_BYTES", 7_919)  # many ranges, cut in the middle of lines
    monkeypatch.setattr(ingest, "ROW_GROUP_ROWS", 100)
    monkeypatch.setattr(sources, "BATCH_ROWS", 37)
    split = tmp_path / "split"
    assert run_curate(f"ingest.path={path}", f"run.dir={split}", "stage=ingest", "ingest.num_shards=3") == 0
    report = json.loads((split / "stats" / "ingest_sources.json").read_text())
    assert report["units"][0]["ranges"] > 50 and report["units"][0]["layout"] == "yfcc100m-25"
    pd.testing.assert_frame_equal(read_parts(split, "ingest"), read_parts(reference, "ingest"))
    monkeypatch.setattr(ingest, "ROW_GROUP_ROWS", 65_536)
    split = tmp_path / "split-again"
    assert run_curate(f"ingest.path={path}", f"run.dir={split}", "stage=ingest", "ingest.num_shards=3") == 0
    assert _parts(split) == whole


def test_a_quote_that_never_closes_costs_one_line_even_far_from_the_end() -> None:
    lines = [b'1,"never closed\n', *(f"{i},fine\n".encode() for i in range(2, 200)), b'200,"a\n', b'b"\n']
    records = list(sources.csv_records(iter(enumerate(lines, start=1)), ","))
    assert records[0].line == 1 and records[0].fields is None and "line 1" in records[0].error
    assert [r.fields for r in records[1:-1]] == [[str(i), "fine"] for i in range(2, 200)]
    assert (records[-1].line, records[-1].fields) == (200, ["200", "a\nb"])  # a real multi-line record still is one


def test_a_split_text_list_reads_like_a_whole_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "urls.txt"
    path.write_text("".join(f"http://h.invalid/{i}.jpg\n" if i % 13 else "# comment\n" for i in range(500)))
    whole, split = tmp_path / "whole", tmp_path / "split"
    flags = ["ingest.source=urls", f"ingest.path={path}", "stage=ingest"]
    assert run_curate(*flags, f"run.dir={whole}") == 0
    monkeypatch.setattr(ingest, "RANGE_BYTES", 1_000)
    assert run_curate(*flags, f"run.dir={split}") == 0
    assert _parts(split) == _parts(whole)
    rows = read_parts(split, "ingest").set_index("source_ref")
    assert len(rows) == 500 - 39 and rows.loc["urls.txt:15", "source_id"] == "http://h.invalid/14.jpg"
