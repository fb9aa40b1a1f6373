"""A local folder of images: every regular file becomes a candidate (fetch rejects what is not an image)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from curate.config import IngestConfig
from curate.schema import safe_id
from curate.sources import batched, new_row


def folder_id(relative: str) -> str:
    # Readable stem for humans, a hash of the whole relative path so that a/x.jpg and b/x.jpg stay apart.
    stem = safe_id(Path(relative).stem)[:40]
    return f"{stem}-{hashlib.sha1(relative.encode('utf-8')).hexdigest()[:12]}"


def read(cfg: IngestConfig, unit: str) -> Iterator[pd.DataFrame]:
    root = Path(unit)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if cfg.limit:
        files = files[: cfg.limit]

    def rows() -> Iterator[dict[str, Any]]:
        for path in files:
            relative = path.relative_to(root).as_posix()
            yield new_row(
                image_id=folder_id(relative),
                source="folder",
                source_ref=relative,
                title=path.name,
                image_url=path.resolve().as_uri(),
                license_id=cfg.assume_license or None,
            )

    yield from batched(rows())
