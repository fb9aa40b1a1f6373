"""URL lists: a text file (one URL per line), a CSV/TSV, or a Parquet file with a URL column.

All three are read as a stream (never a whole table in memory). CSV/TSV go through the `csv` module record
by record: a line with too many or too few fields, or quotes that never close, becomes one `malformed_row`
with its line number instead of a parser error that lost the whole file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.config import IngestConfig
from curate.schema import REJECTED, safe_id
from curate.sources import (
    BATCH_ROWS,
    ERROR_TEXT,
    Unit,
    batched,
    csv_with_header,
    decode,
    guarded,
    iter_lines,
    new_row,
    yfcc_hash,
)
from curate.sources.yfcc import parse_date, parse_float

# Optional text columns copied into the candidate row: column (lower case) → candidate field. When several
# columns feed one field, the first present wins.
TEXT_COLUMNS: dict[str, tuple[str, ...]] = {
    "title": ("title",),
    "page_url": ("page_url",),
    "license_id": ("license_id",),
    "license_name": ("license_name", "license"),
    "license_url": ("license_url",),
    # The owner cap groups by owner_nsid: a list's owner column must fill it, not only the display name.
    "owner_nsid": ("owner_nsid", "owner", "author"),
    "owner_name": ("owner_name", "owner", "author"),
}


def url_id(url: str) -> str:
    return "url-" + hashlib.sha1(url.encode("utf-8")).hexdigest()[:24]


def record_row(cfg: IngestConfig, record: dict[str, str], ref: str, bad_encoding: bool) -> dict[str, Any]:
    """One candidate from one record of a list (keys lower-cased, except the configured url/id columns)."""
    url = (record.get(cfg.url_column) or "").strip()
    given_id = (record.get(cfg.id_column) or "").strip() if cfg.id_column else ""
    row = new_row(
        image_id=safe_id(given_id) if given_id else url_id(url or ref),
        source_id=given_id or url or None,
        source="urls",
        source_ref=ref,
        photo_hash=yfcc_hash(url) if url else None,  # a list gives no hash: PASS's rule over the URL
        image_url=url or None,
    )
    lowered = {key.strip().lower(): value for key, value in record.items()}
    for target, columns in TEXT_COLUMNS.items():
        value = next((lowered[c].strip() for c in columns if (lowered.get(c) or "").strip()), None)
        if value:
            row[target] = value
    for target in ("latitude", "longitude"):
        row[target] = parse_float((lowered.get(target) or "").strip())
    date_raw = (lowered.get("date_taken") or "").strip()
    if date_raw:
        row["date_taken"] = parse_date(date_raw)
    if bad_encoding:
        row.update(ingest_reason="bad_encoding", ingest_error="bytes that are not UTF-8 were replaced by U+FFFD")
    elif date_raw and row["date_taken"] is None:
        row.update(ingest_reason="bad_date", ingest_error=f"date_taken {date_raw[:40]!r}")
    if not url:
        row.update(ingest_status=REJECTED, ingest_reason="missing_url")
    return row


def malformed_row(ref: str, error: str, source_id: str | None = None) -> dict[str, Any]:
    return new_row(
        image_id=url_id(ref),
        source_id=source_id,
        source="urls",
        source_ref=ref,
        ingest_status=REJECTED,
        ingest_reason="malformed_row",
        ingest_error=error,
    )


def _csv_rows(cfg: IngestConfig, unit: Unit, delimiter: str) -> Iterator[dict[str, Any]]:
    found = csv_with_header(unit, delimiter)
    if found is None:
        return
    header, records = found
    if cfg.url_column not in header:
        raise ValueError(f"{unit.name}: no column {cfg.url_column!r}; set ingest.url_column to one of {header}")
    id_index = header.index(cfg.id_column) if cfg.id_column and cfg.id_column in header else None
    for count, record in enumerate(records):
        if cfg.limit and count >= cfg.limit:
            break
        ref = f"{unit.name}:{record.line}"
        if record.fields is None:
            yield malformed_row(ref, record.error)
        elif len(record.fields) != len(header):
            text = delimiter.join(record.fields)[:ERROR_TEXT]
            error = f"line {record.line}: {len(record.fields)} fields, the header has {len(header)}: {text!r}"
            # The id column's field, as written, so a person can find the broken row; nothing else is trusted.
            given = record.fields[id_index].strip() if id_index is not None and id_index < len(record.fields) else ""
            yield malformed_row(ref, error, given or None)
        else:
            values = dict(zip(header, record.fields, strict=True))
            bad = record.bad_encoding
            yield guarded("urls", ref, lambda: record_row(cfg, values, ref, bad))  # noqa: B023 - called at once


def _text_rows(cfg: IngestConfig, unit: Unit) -> Iterator[dict[str, Any]]:
    produced = 0
    for number, raw in iter_lines(unit):
        text, bad = decode(raw)
        line = text.strip()
        if not line or line.startswith("#"):
            continue
        if cfg.limit and produced >= cfg.limit:
            break
        produced += 1
        ref = f"{unit.name}:{number}"
        yield guarded("urls", ref, lambda: record_row(cfg, {cfg.url_column: line}, ref, bad))  # noqa: B023


def _parquet_rows(cfg: IngestConfig, unit: Unit) -> Iterator[dict[str, Any]]:
    table = pq.ParquetFile(unit.path)
    if cfg.url_column not in table.schema_arrow.names:
        names = table.schema_arrow.names
        raise ValueError(f"{unit.name}: no column {cfg.url_column!r}; set ingest.url_column to one of {names}")
    number = 0
    for batch in table.iter_batches(batch_size=BATCH_ROWS):
        for values in batch.to_pylist():
            if cfg.limit and number >= cfg.limit:
                return
            number += 1
            ref = f"{unit.name}:{number}"
            record = {key: "" if value is None else str(value) for key, value in values.items()}
            yield guarded("urls", ref, lambda: record_row(cfg, record, ref, False))  # noqa: B023


def read(cfg: IngestConfig, unit: Unit) -> Iterator[pa.Table]:
    suffix = unit.path.lower().rsplit(".", 1)[-1]
    if suffix == "parquet":
        rows = _parquet_rows(cfg, unit)
    elif suffix in ("csv", "tsv"):
        rows = _csv_rows(cfg, unit, "\t" if suffix == "tsv" else ",")
    else:
        rows = _text_rows(cfg, unit)
    yield from batched(rows)
