"""A local folder of images: every regular file becomes a candidate (fetch rejects what is not an image).

File names are bytes on POSIX and need not be UTF-8. Such a name is kept losslessly rather than ending the
whole ingest: source_ref/source_id write the odd bytes as \\xNN, the id hashes the raw bytes, the file: URL
percent-encodes the raw bytes, and the row says `bad_encoding` (it can still be fetched).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import pyarrow as pa

from curate.config import IngestConfig
from curate.sources import Unit, batched, display, guarded, new_row, yfcc_hash

_STEM_UNSAFE = str.maketrans({c: "-" for c in map(chr, range(128)) if not (c.isalnum() or c in "_-")})


def folder_id(relative: str) -> str:
    # Readable stem for humans, a hash of the whole relative path (its raw bytes) so that a/x.jpg and b/x.jpg
    # stay apart; for a UTF-8 name the bytes are its UTF-8, so ids of such names are as they always were.
    stem = "".join(c if c.isascii() else "-" for c in Path(relative).stem).translate(_STEM_UNSAFE)[:40]
    return f"{stem}-{hashlib.sha1(os.fsencode(relative)).hexdigest()[:12]}"


def file_url(path: Path) -> str:
    """file:///… of the raw path bytes: unquote_to_bytes of its path gives back exactly os.fsencode(path)."""
    return "file://" + quote_from_bytes(os.fsencode(path), safe="/")


def file_row(root: Path, path: Path) -> dict[str, Any]:
    relative_raw = path.relative_to(root).as_posix()
    relative = display(relative_raw)
    row = new_row(
        image_id=folder_id(relative_raw),
        source_id=relative,
        source="folder",
        source_ref=relative,
        # PASS's rule over the path relative to the folder, not over image_url (absolute): the hash stays the same
        # when the folder moves, like the id.
        photo_hash=yfcc_hash(os.fsencode(relative_raw)),
        title=os.fsencode(path.name).decode("utf-8", errors="replace"),
        image_url=file_url(path.resolve()),
    )
    if relative != relative_raw:
        row.update(ingest_reason="bad_encoding", ingest_error=f"file name is not UTF-8: {relative}")
    return row


def read(cfg: IngestConfig, unit: Unit) -> Iterator[pa.Table]:
    root = Path(unit.path)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if cfg.limit:
        files = files[: cfg.limit]

    def rows() -> Iterator[dict[str, Any]]:
        for path in files:
            ref = display(path.relative_to(root).as_posix())
            yield guarded("folder", ref, lambda: file_row(root, path))  # noqa: B023 - called at once

    yield from batched(rows())
