"""An existing PASS release's `pass_metadata.csv` (and `pass_urls.txt` beside it), to re-audit it.

Known columns: hash, unickname, latitude, longitude, datetaken; the full list is not published, so any
`url`/`image_url` column is used when present, else the line of `pass_urls.txt` with the same index.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from curate.config import IngestConfig
from curate.schema import safe_id
from curate.sources import batched, new_row
from curate.sources.yfcc import parse_date, parse_float


def read(cfg: IngestConfig, unit: str) -> Iterator[pd.DataFrame]:
    table = pd.read_csv(unit, dtype="string", keep_default_na=False, encoding_errors="replace")
    if cfg.limit:
        table = table.head(cfg.limit)
    urls: list[str] = []
    url_file = Path(unit).with_name("pass_urls.txt")
    if "url" not in table.columns and "image_url" not in table.columns and url_file.exists():
        urls = url_file.read_text(encoding="utf-8", errors="replace").splitlines()
    name = Path(unit).name

    def rows() -> Iterator[dict[str, Any]]:
        for number, record in enumerate(table.to_dict("records")):
            photo_hash = (record.get("hash") or "").strip()
            url = record.get("image_url") or record.get("url") or (urls[number] if number < len(urls) else "")
            date_raw = (record.get("datetaken") or "").strip()
            date_taken = parse_date(date_raw) if date_raw else None
            row = new_row(
                image_id=safe_id(photo_hash) if photo_hash else f"pass-row-{number + 1}",
                source="pass_release",
                source_ref=f"{name}:{number + 2}",  # +2: the header is line 1
                photo_hash=photo_hash or None,
                owner_name=record.get("unickname") or None,
                date_taken=date_taken,
                latitude=parse_float(record.get("latitude") or ""),
                longitude=parse_float(record.get("longitude") or ""),
                image_url=url or None,
                page_url=record.get("photo_page_url") or None,
                # PASS states that every image it ships is CC BY; a licence column wins when present.
                license_id=None if record.get("license_name") or record.get("license_url") else "cc-by",
                license_name=record.get("license_name") or None,
                license_url=record.get("license_url") or None,
            )
            if date_raw and date_taken is None:
                row.update(ingest_reason="bad_date", ingest_error=f"datetaken {date_raw[:40]!r}")
            if not url:
                row.update(ingest_status="rejected", ingest_reason="missing_url")
            yield row

    yield from batched(rows())
