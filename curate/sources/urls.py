"""URL lists: a text file (one URL per line), a CSV, or a Parquet file with a URL column."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from curate.config import IngestConfig
from curate.schema import safe_id
from curate.sources import batched, new_row

# Optional columns of a CSV/Parquet list copied into the candidate row when present.
OPTIONAL_COLUMNS = {
    "license": "license_name",
    "license_url": "license_url",
    "owner": "owner_name",
    "title": "title",
    "page_url": "page_url",
    "date_taken": "date_taken",
}


def url_id(url: str) -> str:
    return "url-" + hashlib.sha1(url.encode("utf-8")).hexdigest()[:24]


def _table(cfg: IngestConfig, unit: str) -> pd.DataFrame:
    suffix = Path(unit).suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(unit).astype("string")
    if suffix in (".csv", ".tsv"):
        sep = "\t" if suffix == ".tsv" else ","
        return pd.read_csv(unit, dtype="string", sep=sep, keep_default_na=False, encoding_errors="replace")
    with open(unit, "rb") as handle:
        lines = [line.decode("utf-8", errors="replace").strip() for line in handle]
    return pd.DataFrame({cfg.url_column: [line for line in lines if line and not line.startswith("#")]})


def read(cfg: IngestConfig, unit: str) -> Iterator[pd.DataFrame]:
    table = _table(cfg, unit)
    if cfg.url_column not in table.columns:
        raise ValueError(f"{unit}: no column {cfg.url_column!r}; set ingest.url_column to one of {list(table.columns)}")
    if cfg.limit:
        table = table.head(cfg.limit)
    name = Path(unit).name

    def rows() -> Iterator[dict[str, Any]]:
        for number, record in enumerate(table.to_dict("records")):
            url = (record.get(cfg.url_column) or "").strip()
            given_id = (record.get(cfg.id_column) or "").strip() if cfg.id_column else ""
            row = new_row(
                image_id=safe_id(given_id) if given_id else url_id(url or f"{name}:{number}"),
                source="urls",
                source_ref=f"{name}:{number + 1}",
                image_url=url or None,
                license_id=cfg.assume_license or None,
            )
            for column, target in OPTIONAL_COLUMNS.items():
                if record.get(column):
                    row[target] = record[column]
            if not url:
                row.update(ingest_status="rejected", ingest_reason="missing_url")
            yield row

    yield from batched(rows())
