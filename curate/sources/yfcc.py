"""YFCC100M metadata files as distributed: tab-separated, no header, plain or .bz2.

YFCC100M ships in more than one column layout, so the layout is detected from a file's first lines:

- 25 columns (the Multimedia Commons `yfcc100m_dataset`): 0 line number, 1 photo id, 2 photo hash, then the
  22 shared fields;
- 23 columns (Yahoo's original release): photo id, then the 22 shared fields (no line number, no hash);
- 24 columns: either photo id + hash (a hash-joined file without the line number), or line number + photo id
  (no hash); told apart by whether the second field is a hex hash (16-32 digits) or the third a user NSID.

The 22 shared fields, in order: user NSID, user nickname, date taken, date uploaded, capture device, title,
description, user tags, machine tags, longitude, latitude, accuracy, page URL, download URL, licence name,
licence URL, server id, farm id, secret, secret original, extension original, photo/video marker (1 = video).
Text fields are URL-encoded with '+' for spaces.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

import pyarrow as pa

from curate.config import IngestConfig
from curate.schema import OK, REJECTED, safe_id
from curate.sources import Unit, batched, decode, guarded, iter_lines, new_row, open_binary, yfcc_hash

log = logging.getLogger(__name__)

_HEX = re.compile(r"^[0-9a-f]{16,64}$")
# The photo hash drops each byte's leading zero (curate.sources.yfcc_hash): 16-32 hex digits, mostly 30-32.
_HASH = re.compile(r"[0-9a-f]{16,32}")
_NSID = re.compile(r"\d+@N\d+")
DATE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
# Offsets of the shared fields from the user NSID.
NSID, NICKNAME, DATE_TAKEN, TITLE, LONGITUDE, LATITUDE, PAGE_URL, DOWNLOAD_URL = 0, 1, 2, 5, 9, 10, 12, 13
LICENSE_NAME, LICENSE_URL, MARKER = 14, 15, 21
SAMPLE_LINES = 50  # lines read to detect a file's layout


@dataclass(frozen=True)
class Layout:
    name: str
    columns: int
    line: int | None  # YFCC's own line number
    photo_id: int
    photo_hash: int | None
    nsid: int  # where the 22 shared fields begin


LAYOUTS = {
    layout.name: layout
    for layout in (
        Layout("yfcc100m-25", 25, 0, 1, 2, 3),
        Layout("yfcc100m-24-hash", 24, None, 0, 1, 2),
        Layout("yfcc100m-24-line", 24, 0, 1, None, 2),
        Layout("yfcc100m-23", 23, None, 0, None, 1),
    )
}
DEFAULT_LAYOUT = "yfcc100m-25"


def _fits(layout: Layout, fields: list[str]) -> bool:
    """Whether a line looks like a row of this layout, field by field, not only by its count."""
    if len(fields) != layout.columns:
        return False
    checks = [
        fields[layout.photo_id].isdigit(),
        bool(_NSID.fullmatch(fields[layout.nsid + NSID])),
        fields[layout.nsid + MARKER].strip() in ("0", "1"),
    ]
    if layout.line is not None:
        checks.append(fields[layout.line].isdigit())
    if layout.photo_hash is not None:
        checks.append(bool(_HASH.fullmatch(fields[layout.photo_hash].strip().lower())))
    return all(checks)


def detect_layout(path: str) -> tuple[str, str]:
    """(layout name, how it was found) from the first lines of the file; the default when nothing fits."""
    samples: list[list[str]] = []
    with open_binary(path) as handle:
        for raw in handle:
            if raw.strip():
                samples.append(decode(raw)[0].rstrip("\r\n").split("\t"))
            if len(samples) >= SAMPLE_LINES:
                break
    if not samples:
        return DEFAULT_LAYOUT, "empty file: default layout"
    fits = Counter({name: sum(_fits(layout, fields) for fields in samples) for name, layout in LAYOUTS.items()})
    name, hits = fits.most_common(1)[0]
    if hits:
        return name, f"{hits} of the first {len(samples)} lines fit"
    counts = Counter(len(fields) for fields in samples)
    common, _ = counts.most_common(1)[0]
    by_count = [layout.name for layout in LAYOUTS.values() if layout.columns == common]
    if len(by_count) == 1:
        return by_count[0], f"no line fits any layout field by field; most lines have {common} fields"
    return DEFAULT_LAYOUT, f"no line fits a known layout (most have {common} fields): default layout"


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


def unquote_field(text: str) -> tuple[str, bool]:
    """A URL-encoded text field, and whether its %XX bytes were not UTF-8 (they are replaced, the row says so)."""
    try:
        return unquote_plus(text, errors="strict"), False
    except UnicodeDecodeError:
        return unquote_plus(text, errors="replace"), True


def parse_line(raw: bytes, ref: str, layout: Layout | None = None) -> dict[str, Any]:
    layout = layout or LAYOUTS[DEFAULT_LAYOUT]
    text, bad_encoding = decode(raw)
    fields = text.rstrip("\r\n").split("\t")
    photo_id = fields[layout.photo_id].strip() if len(fields) > layout.photo_id else ""
    if len(fields) != layout.columns:
        too_short = len(fields) < layout.columns
        return new_row(
            image_id=safe_id(f"yfcc-{photo_id}") if photo_id else safe_id(f"yfcc-row-{ref}"),
            source_id=photo_id or None,
            source="yfcc",
            source_ref=ref,
            photo_id=photo_id or None,
            ingest_status=REJECTED,
            ingest_reason="short_row" if too_short else "malformed_row",
            ingest_error=f"{ref}: {len(fields)} fields, layout {layout.name} has {layout.columns}",
        )
    shared = fields[layout.nsid :]
    photo_hash = fields[layout.photo_hash].strip().lower() if layout.photo_hash is not None else ""
    # PASS names images by the YFCC photo hash; fall back to the photo id when the hash is missing or damaged.
    image_id = photo_hash if _HEX.match(photo_hash) else safe_id(f"yfcc-{photo_id or ref}")
    date_raw = shared[DATE_TAKEN].strip()
    date_taken = parse_date(date_raw) if date_raw else None
    owner_name, bad_owner = unquote_field(shared[NICKNAME])
    title, bad_title = unquote_field(shared[TITLE])
    license_name, bad_license = unquote_field(shared[LICENSE_NAME])
    bad_encoding = bad_encoding or bad_owner or bad_title or bad_license
    note = "bad_encoding" if bad_encoding else OK
    if date_raw and date_taken is None and note == OK:
        note = "bad_date"
    row = new_row(
        image_id=image_id,
        source_id=photo_id or None,
        source="yfcc",
        source_ref=ref,
        photo_id=photo_id,
        # A layout without the hash (or a row without one) gets YFCC's own rule over the download URL; the id
        # above stays what it was.
        photo_hash=photo_hash or (yfcc_hash(shared[DOWNLOAD_URL]) if shared[DOWNLOAD_URL] else None),
        owner_nsid=shared[NSID],
        owner_name=owner_name,
        title=title,
        date_taken=date_taken,
        longitude=parse_float(shared[LONGITUDE]),
        latitude=parse_float(shared[LATITUDE]),
        page_url=shared[PAGE_URL] or None,
        image_url=shared[DOWNLOAD_URL] or None,
        license_name=license_name or None,
        license_url=shared[LICENSE_URL] or None,
        ingest_reason=note,
    )
    if note == "bad_date":
        row["ingest_error"] = f"date taken {date_raw[:40]!r}"
    elif note == "bad_encoding":
        row["ingest_error"] = "bytes that are not UTF-8 were replaced by U+FFFD"
    if shared[MARKER].strip() == "1":
        row.update(ingest_status=REJECTED, ingest_reason="video")
    elif not row["image_url"]:
        row.update(ingest_status=REJECTED, ingest_reason="missing_url")
    return row


def read(cfg: IngestConfig, unit: Unit) -> Iterator[pa.Table]:
    layout = LAYOUTS[unit.layout or DEFAULT_LAYOUT]
    name = unit.name

    def rows() -> Iterator[dict[str, Any]]:
        for number, raw in iter_lines(unit, cfg.limit):
            if raw.strip():
                ref = f"{name}:{number}"
                yield guarded("yfcc", ref, lambda: parse_line(raw, ref, layout))  # noqa: B023 - called at once

    yield from batched(rows())
