"""YFCC100M metadata files as distributed: tab-separated, no header, plain or .bz2.

Columns (0-based): 0 line number, 1 photo id, 2 photo hash, 3 user NSID, 4 user nickname, 5 date taken,
6 date uploaded, 7 capture device, 8 title, 9 description, 10 user tags, 11 machine tags, 12 longitude,
13 latitude, 14 accuracy, 15 page URL, 16 download URL, 17 licence name, 18 licence URL, 19 server id,
20 farm id, 21 secret, 22 secret original, 23 extension original, 24 photo/video marker (1 = video).
Text fields are URL-encoded with '+' for spaces.
"""

from __future__ import annotations

import bz2
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote_plus

import pandas as pd

from curate.config import IngestConfig
from curate.schema import safe_id
from curate.sources import batched, new_row

N_COLUMNS = 25
_HEX = re.compile(r"^[0-9a-f]{16,64}$")
DATE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def _open(path: str) -> IO[bytes]:
    return bz2.open(path, "rb") if path.endswith(".bz2") else open(path, "rb")


def parse_date(text: str) -> str | None:
    """The date as YFCC/PASS write it, or None when it does not parse."""
    for fmt in (DATE_FORMAT, "%Y-%m-%d %H:%M:%S"):
        try:
            datetime.strptime(text, fmt)
            return text
        except ValueError:
            continue
    return None


def parse_float(text: str) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def parse_line(raw: bytes, ref: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
        note = "ok"
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        note = "bad_encoding"
    fields = text.rstrip("\r\n").split("\t")
    photo_id = fields[1].strip() if len(fields) > 1 else ""
    if len(fields) < N_COLUMNS:
        fallback = safe_id(f"yfcc-{photo_id}") if photo_id else safe_id(f"yfcc-row-{ref}")
        return new_row(
            image_id=fallback,
            source="yfcc",
            source_ref=ref,
            photo_id=photo_id or None,
            ingest_status="rejected",
            ingest_reason="short_row",
            ingest_error=f"{len(fields)} of {N_COLUMNS} columns",
        )
    photo_hash = fields[2].strip().lower()
    # PASS names images by the YFCC photo hash; fall back to the photo id when the hash is damaged.
    image_id = photo_hash if _HEX.match(photo_hash) else safe_id(f"yfcc-{photo_id or ref}")
    date_raw = fields[5].strip()
    date_taken = parse_date(date_raw) if date_raw else None
    if date_raw and date_taken is None and note == "ok":
        note = "bad_date"
    row = new_row(
        image_id=image_id,
        source="yfcc",
        source_ref=ref,
        photo_id=photo_id,
        photo_hash=photo_hash or None,
        owner_nsid=fields[3],
        owner_name=unquote_plus(fields[4]),
        title=unquote_plus(fields[8]),
        date_taken=date_taken,
        longitude=parse_float(fields[12]),
        latitude=parse_float(fields[13]),
        page_url=fields[15] or None,
        image_url=fields[16] or None,
        license_name=unquote_plus(fields[17]) or None,
        license_url=fields[18] or None,
        ingest_reason=note,
    )
    if note == "bad_date":
        row["ingest_error"] = f"date taken {date_raw[:40]!r}"
    if fields[24].strip() == "1":
        row.update(ingest_status="rejected", ingest_reason="video")
    elif not row["image_url"]:
        row.update(ingest_status="rejected", ingest_reason="missing_url")
    return row


def read(cfg: IngestConfig, unit: str) -> Iterator[pd.DataFrame]:
    name = Path(unit).name

    def rows() -> Iterator[dict[str, Any]]:
        with _open(unit) as handle:
            for number, raw in enumerate(handle):
                if cfg.limit and number >= cfg.limit:
                    break
                if raw.strip():
                    yield parse_line(raw, f"{name}:{number + 1}")

    yield from batched(rows())
