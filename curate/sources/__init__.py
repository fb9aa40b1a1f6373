"""Candidate sources. Each yields batches (Arrow tables in `curate.schema.CANDIDATE_SCHEMA`) of rows.

A source splits its input into *units* (a file, a byte range of a large plain file, an API query) that ingest
reads in parallel; every line it reads becomes a row, malformed ones included, with an `ingest_reason`. One
record's trouble never ends its unit: an exception while making one row becomes that row, `failed` with
`internal_error` (see `guarded`).
"""

from __future__ import annotations

import bz2
import csv
import glob
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from curate.config import IngestConfig, Source
from curate.faults import describe
from curate.schema import CANDIDATE_COLUMNS, CANDIDATE_SCHEMA, FAILED, OK, safe_id

# Rows per batch a reader yields: ingest writes each batch to its shard buckets at once, so this bounds a
# reader's memory (a 2M-row file once sat whole in one worker).
BATCH_ROWS = 20_000
# A CSV record whose quotes stay open for this many lines is taken as one broken line, not a huge field that
# swallows the rest of the file.
MAX_RECORD_LINES = 64
ERROR_TEXT = 200  # characters of a broken line kept in ingest_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    """One read task's share of the input: a whole file or API query, or a byte range of a large plain file.

    A range holds the lines that *start* in [start, end); `lines_before` is the number of newlines before
    `start`, so that its rows carry the file's own line numbers whatever the split.
    """

    path: str
    file_index: int = 0
    part: int = 0
    start: int = 0
    end: int | None = None
    lines_before: int = 0
    layout: str = ""  # the YFCC column layout, detected once for the whole file (see yfcc.detect_layout)

    @property
    def name(self) -> str:
        return display(Path(self.path).name)


def display(text: str) -> str:
    """A str Arrow can store: undecodable file-name bytes (surrogates) written as \\xNN, losslessly."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", errors="backslashreplace")


def yfcc_hash(text: str | bytes) -> str:
    """The YFCC100M photo hash, which PASS names its images by (PASS's `hash`): the md5 of the download URL with
    each of its 16 bytes in lower-case hex WITHOUT that byte's leading zero (0x0a is written "a"), so 16-32
    characters. Real hashes show that the zeros go per byte, not only at the front: YFCC's hash of item 3460698881
    is "db3c58ef5f0e089f2a7e9cf7d8", 26 characters. For sources that give no hash of their own."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", errors="surrogateescape")
    return "".join(f"{byte:x}" for byte in hashlib.md5(data).digest())


def new_row(**values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(CANDIDATE_COLUMNS)
    row.update(ingest_status=OK, ingest_reason=OK)
    row.update(values)
    return row


def error_row(source: str, ref: str, err: BaseException) -> dict[str, Any]:
    """The row for a record whose handling raised something no reason code foresaw."""
    return new_row(
        image_id=safe_id(f"{source}-error-{ref}"),
        source=source,
        source_ref=ref,
        ingest_status=FAILED,
        ingest_reason="internal_error",
        ingest_error=describe(err),
    )


def guarded(source: str, ref: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return make()
    except Exception as err:  # noqa: BLE001 - one record's fault is that record's outcome, not the unit's
        return error_row(source, ref, err)


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    try:
        return pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA)
    except (pa.ArrowException, TypeError, ValueError, UnicodeError):
        # One value Arrow cannot take (a wrong type, a lone surrogate): find the row, keep all the others.
        tables = []
        for row in rows:
            try:
                tables.append(pa.Table.from_pylist([row], schema=CANDIDATE_SCHEMA))
            except (pa.ArrowException, TypeError, ValueError, UnicodeError) as err:
                ref = row.get("source_ref")
                ref = ref if isinstance(ref, str) and display(ref) == ref else "?"
                fault = error_row(str(row.get("source") or "unknown"), ref, err)
                tables.append(pa.Table.from_pylist([fault], schema=CANDIDATE_SCHEMA))
        return pa.concat_tables(tables)


def batched(rows: Iterator[dict[str, Any]], size: int = 0) -> Iterator[pa.Table]:
    size = size or BATCH_ROWS  # looked up at call time, so a test can make batches tiny
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield rows_to_table(batch)
            batch = []
    if batch:
        yield rows_to_table(batch)


def open_binary(path: str) -> IO[bytes]:
    return bz2.open(path, "rb") if path.endswith(".bz2") else open(path, "rb")


def iter_lines(unit: Unit, limit: int = 0) -> Iterator[tuple[int, bytes]]:
    """(1-based line number in the file, raw line) for every line that starts inside the unit's byte range."""
    with open_binary(unit.path) as handle:
        newlines = unit.lines_before
        position = unit.start
        if unit.start > 0:
            # The line running through start-1 belongs to the range before; ours begin after its newline.
            handle.seek(unit.start - 1)
            position = unit.start - 1 + len(handle.readline())
            if position > unit.start:  # that newline lies at or after start: counted in no earlier range
                newlines += 1
        for index, raw in enumerate(handle):
            if unit.end is not None and position >= unit.end:
                break
            if limit and index >= limit:
                break
            yield newlines + 1, raw
            position += len(raw)
            newlines += 1


def decode(raw: bytes) -> tuple[str, bool]:
    """The text, and whether it had bytes that are not UTF-8 (replaced by U+FFFD: the row says bad_encoding)."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


@dataclass
class CsvRecord:
    line: int  # where the record starts
    fields: list[str] | None  # None: it could not be parsed (error says why)
    bad_encoding: bool = False
    error: str = ""


def csv_with_header(unit: Unit, delimiter: str) -> tuple[list[str], Iterator[CsvRecord]] | None:
    """The unit's header (stripped, without a spreadsheet's byte-order mark) and its remaining records; None for an
    empty file. A header that cannot be parsed is the unit's error: no row could be read without it."""
    records = csv_records(iter_lines(unit), delimiter)
    header_record = next(records, None)
    if header_record is None:
        return None
    if header_record.fields is None:
        raise ValueError(f"{unit.name}: the header line cannot be parsed ({header_record.error})")
    header = [field.strip() for field in header_record.fields]
    if header:
        header[0] = header[0].removeprefix("\ufeff")
    return header, records


def csv_records(lines: Iterator[tuple[int, bytes]], delimiter: str) -> Iterator[CsvRecord]:
    """A CSV/TSV stream record by record, a broken record costing only itself.

    A record may span lines (a quoted field with a newline) while its quotes are open, up to MAX_RECORD_LINES;
    a line whose quotes never close is then one malformed record and reading goes on at the next line.
    """
    pending: list[tuple[int, bytes]] = []
    quotes = 0
    source = iter(lines)
    replay: list[tuple[int, bytes]] = []
    while True:
        if replay:
            item = replay.pop(0)
        else:
            try:
                item = next(source)
            except StopIteration:
                break
        pending.append(item)
        quotes += item[1].count(b'"')
        if quotes % 2 and len(pending) < MAX_RECORD_LINES:
            continue
        record = _parse_record(pending, delimiter)
        if record is None or (quotes % 2 and len(pending) > 1):
            # Not one clean record over these lines: the first line alone is the record, the rest is read again.
            replay = pending[1:] + replay
            record = _parse_record(pending[:1], delimiter) or _broken(pending[0], delimiter)
        pending, quotes = [], 0
        if record.fields != []:  # a blank line is no record
            yield record
    if pending:  # the file ended inside a quoted field
        replay = pending
        for item in replay:
            record = _parse_record([item], delimiter) or _broken(item, delimiter)
            if record.fields != []:
                yield record


def _parse_record(chunk: list[tuple[int, bytes]], delimiter: str) -> CsvRecord | None:
    """The one record these lines hold; None when they hold more than one (a stray quote joined them)."""
    texts, bad = [], False
    for _, raw in chunk:
        text, replaced = decode(raw)
        texts.append(text)
        bad |= replaced
    line = chunk[0][0]
    try:
        parsed = list(csv.reader(texts, delimiter=delimiter, strict=True))
    except csv.Error as err:
        if len(chunk) > 1:
            return None
        return CsvRecord(line, None, bad, f"line {line}: {err}: {texts[0][:ERROR_TEXT]!r}")
    if len(parsed) > 1:
        return None
    return CsvRecord(line, parsed[0] if parsed else [], bad)


def _broken(item: tuple[int, bytes], delimiter: str) -> CsvRecord:
    text, bad = decode(item[1])
    return CsvRecord(item[0], None, bad, f"line {item[0]}: not one CSV record: {text[:ERROR_TEXT]!r}")


def check_inputs(cfg: IngestConfig) -> str | None:
    """What is wrong with ingest.path for this source (nothing matches it), or None: checked before any work."""
    if cfg.source == Source.flickr or not cfg.path:
        return None
    try:
        expand_inputs(cfg)
    except FileNotFoundError as err:
        return f"ingest.path: {err}"
    return None


def expand_inputs(cfg: IngestConfig) -> list[str]:
    """The input files (or folder, or API) of this source, in a fixed order; raises FileNotFoundError."""
    if cfg.source == Source.flickr:
        return ["flickr-api"]
    if cfg.source == Source.folder:
        if not os.path.isdir(cfg.path):
            raise FileNotFoundError(f"{cfg.path!r} is not a folder")
        return [str(Path(cfg.path).resolve())]
    matches = sorted(glob.glob(cfg.path)) if glob.has_magic(cfg.path) else [cfg.path]
    files = [m for m in matches if os.path.isfile(m)]
    if not files:
        raise FileNotFoundError(f"no file matches {cfg.path!r}")
    return [str(Path(f).resolve()) for f in files]


def splittable(cfg: IngestConfig, path: str) -> bool:
    """Whether a file may be read as byte ranges: plain (not compressed) and one record per line.

    CSV/TSV stay whole: a quoted field may hold a newline, so a line start is not always a record start, and
    the rows would depend on where the ranges fell. A limit counts lines from the top of the file.
    """
    if cfg.limit or path.endswith(".bz2"):
        return False
    if cfg.source == Source.yfcc:
        return True
    return cfg.source == Source.urls and Path(path).suffix.lower() not in (".csv", ".tsv", ".parquet")


def byte_ranges(cfg: IngestConfig, path: str, range_bytes: int) -> list[tuple[int, int | None]]:
    if not splittable(cfg, path):  # also every input that is no file (an API query, a folder)
        return [(0, None)]
    size = os.path.getsize(path)
    if size <= range_bytes:
        return [(0, None)]
    starts = list(range(0, size, range_bytes))
    return [(start, starts[i + 1] if i + 1 < len(starts) else None) for i, start in enumerate(starts)]


def count_newlines(path: str, start: int, end: int) -> int:
    """Newlines in [start, end) of a plain file: ingest's cheap pass that gives each range its line numbers."""
    count = 0
    with open(path, "rb") as handle:
        handle.seek(start)
        remaining = end - start
        while remaining > 0:
            chunk = handle.read(min(remaining, 8 * 2**20))
            if not chunk:
                break
            count += chunk.count(b"\n")
            remaining -= len(chunk)
    return count


def unit_fingerprint(cfg: IngestConfig, unit: str) -> dict[str, Any]:
    """What identifies an input's content without reading it all (size + mtime for files)."""
    if cfg.source == Source.flickr:
        return {"unit": unit}
    if cfg.source == Source.folder:
        listing = [
            (display(str(p.relative_to(unit))), stat.st_size, stat.st_mtime_ns)
            for p in sorted(Path(unit).rglob("*"))
            if p.is_file() and (stat := p.stat())
        ]
        return {"unit": display(unit), "listing": listing}
    stat = os.stat(unit)
    return {"unit": display(unit), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
