"""An existing PASS release's `pass_metadata.csv` (and `pass_urls.txt` beside it), to re-audit it.

Known columns: hash, unickname, latitude, longitude, datetaken; the full list is not published, so any
`url`/`image_url` column is used when present, else the line of `pass_urls.txt` with the same index. Both
files are streamed. PASS's own statement that every image is CC BY is applied by the license stage to rows
without a licence column (see curate/stages/license.py), not written here as if the file had said so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from curate.config import IngestConfig
from curate.schema import REJECTED, safe_id
from curate.sources import Unit, batched, csv_with_header, decode, guarded, new_row, yfcc_hash
from curate.sources.yfcc import parse_date, parse_float


def record_row(record: dict[str, str], number: int, ref: str, url: str, bad_encoding: bool) -> dict[str, Any]:
    photo_hash = (record.get("hash") or "").strip()
    url = (record.get("image_url") or record.get("url") or url).strip()
    date_raw = (record.get("datetaken") or "").strip()
    date_taken = parse_date(date_raw) if date_raw else None
    row = new_row(
        # selection.previous_release keys a PASS release's rows the same way: keep the two in step.
        image_id=safe_id(photo_hash) if photo_hash else f"pass-row-{number}",
        source_id=photo_hash or None,
        source="pass_release",
        source_ref=ref,
        # The release's own hash; PASS's rule over the URL for a row without one (its id stays pass-row-N).
        photo_hash=photo_hash or (yfcc_hash(url) if url else None),
        owner_nsid=record.get("owner_nsid") or None,
        owner_name=record.get("unickname") or None,
        title=record.get("title") or None,
        date_taken=date_taken,
        latitude=parse_float((record.get("latitude") or "").strip()),
        longitude=parse_float((record.get("longitude") or "").strip()),
        image_url=url or None,
        page_url=record.get("photo_page_url") or None,
        # A release made by curate writes its licence code, name and attribution URL; PASS's own file has none.
        license_id=record.get("license") or None,
        license_name=record.get("license_name") or None,
        license_url=record.get("license_url") or None,
    )
    if bad_encoding:
        row.update(ingest_reason="bad_encoding", ingest_error="bytes that are not UTF-8 were replaced by U+FFFD")
    elif date_raw and date_taken is None:
        row.update(ingest_reason="bad_date", ingest_error=f"datetaken {date_raw[:40]!r}")
    if not url:
        row.update(ingest_status=REJECTED, ingest_reason="missing_url")
    return row


def _next_url(handle: IO[bytes] | None) -> str:
    if handle is None:
        return ""
    raw = handle.readline()
    return decode(raw)[0].strip() if raw else ""


def read(cfg: IngestConfig, unit: Unit) -> Iterator[pa.Table]:
    url_file = Path(unit.path).with_name("pass_urls.txt")

    def rows() -> Iterator[dict[str, Any]]:
        found = csv_with_header(unit, ",")
        if found is None:
            return
        header, records = found
        has_urls = "url" in header or "image_url" in header
        hash_index = header.index("hash") if "hash" in header else len(header)
        handle = open(url_file, "rb") if not has_urls and url_file.exists() else None
        try:
            for index, record in enumerate(records):
                if cfg.limit and index >= cfg.limit:
                    break
                number = index + 1
                ref = f"{unit.name}:{record.line}"
                url = _next_url(handle)  # the n-th data row goes with the n-th URL, broken rows included
                if record.fields is None or len(record.fields) != len(header):
                    fields = len(record.fields or [])
                    error = record.error or f"line {record.line}: {fields} fields, the header has {len(header)}"
                    present = record.fields is not None and hash_index < len(record.fields)
                    given = record.fields[hash_index].strip() if record.fields and present else ""
                    yield new_row(
                        image_id=f"pass-row-{number}",
                        source_id=given or None,  # where the hash column would be: to find the row, nothing more
                        source="pass_release",
                        source_ref=ref,
                        ingest_status=REJECTED,
                        ingest_reason="malformed_row",
                        ingest_error=error,
                    )
                    continue
                values = dict(zip(header, record.fields, strict=True))
                bad = record.bad_encoding
                yield guarded("pass_release", ref, lambda: record_row(values, number, ref, url, bad))  # noqa: B023
        finally:
            if handle is not None:
                handle.close()

    yield from batched(rows())
