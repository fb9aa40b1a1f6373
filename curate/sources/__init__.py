"""Candidate sources. Each yields batches of rows in the candidate schema (`curate.schema.CANDIDATE_SCHEMA`).

A source splits its input into *units* (a file, an API query) that ingest reads in parallel; every line it
reads becomes a row, malformed ones included, with an `ingest_reason`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from curate.config import IngestConfig, Source
from curate.schema import CANDIDATE_COLUMNS, CANDIDATE_SCHEMA

BATCH_ROWS = 50_000


def new_row(**values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(CANDIDATE_COLUMNS)
    row.update(ingest_status="ok", ingest_reason="ok")
    row.update(values)
    return row


def rows_to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA).to_pandas()


def batched(rows: Iterator[dict[str, Any]], size: int = BATCH_ROWS) -> Iterator[pd.DataFrame]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield rows_to_frame(batch)
            batch = []
    if batch:
        yield rows_to_frame(batch)


def expand_inputs(cfg: IngestConfig) -> list[str]:
    """The units of work for this source, in a fixed order; raises FileNotFoundError naming the path."""
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


def read_unit(cfg: IngestConfig, unit: str) -> Iterator[pd.DataFrame]:
    from curate.sources import flickr, folder, pass_release, urls, yfcc

    readers: dict[Source, Any] = {
        Source.yfcc: yfcc.read,
        Source.flickr: flickr.read,
        Source.urls: urls.read,
        Source.folder: folder.read,
        Source.pass_release: pass_release.read,
    }
    yield from readers[cfg.source](cfg, unit)


def unit_fingerprint(cfg: IngestConfig, unit: str) -> dict[str, Any]:
    """What identifies a unit's content without reading it all (size + mtime for files)."""
    if cfg.source == Source.flickr:
        return {"unit": unit}
    if cfg.source == Source.folder:
        listing = [
            (str(p.relative_to(unit)), stat.st_size, stat.st_mtime_ns)
            for p in sorted(Path(unit).rglob("*"))
            if p.is_file() and (stat := p.stat())
        ]
        return {"unit": unit, "listing": listing}
    stat = os.stat(unit)
    return {"unit": unit, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
