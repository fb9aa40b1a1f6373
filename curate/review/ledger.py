"""The append-only ledger of review decisions: <run.dir>/review/decisions.parquet.

Entries are only ever added (the file is rewritten atomically with the new rows after the old ones, under a lock).
For each image the latest entry wins, by position in the ledger, not by clock, so skewed clocks between
reviewers cannot reorder decisions.
"""

from __future__ import annotations

import fcntl
import getpass
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from curate.io.atomic import read_parquet, sha256_file, write_parquet

DECISIONS = ("keep", "remove", "unsure")
COLUMNS = ["image_id", "decision", "reviewer", "timestamp", "note"]


def ledger_path(run_dir: Path | str) -> Path:
    return Path(run_dir) / "review" / "decisions.parquet"


def digest(run_dir: Path | str) -> str | None:
    """sha256 of the ledger file (None: no decision yet): what review's latest decisions are made from."""
    path = ledger_path(run_dir)
    return sha256_file(path) if path.exists() else None


def read(run_dir: Path | str) -> pd.DataFrame:
    path = ledger_path(run_dir)
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype="string") for c in COLUMNS})
    return read_parquet(path)


def append(
    run_dir: Path | str,
    decisions: Iterable[tuple[str, str]],
    reviewer: str | None = None,
    note: str = "",
    timestamp: str | None = None,
) -> int:
    """Add (image_id, decision) entries; returns how many. Unknown decisions are refused before anything is
    written."""
    rows = [(str(i), str(d)) for i, d in decisions]
    bad = sorted({d for _, d in rows if d not in DECISIONS})
    if bad:
        raise ValueError(f"unknown review decisions {bad}; use one of {DECISIONS}")
    if not rows:
        return 0
    who = reviewer or getpass.getuser()
    when = timestamp or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    path = ledger_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".decisions.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        new = pd.DataFrame(
            {
                "image_id": [i for i, _ in rows],
                "decision": [d for _, d in rows],
                "reviewer": who,
                "timestamp": when,
                "note": note,
            }
        ).astype("string")
        write_parquet(path, pd.concat([read(run_dir), new], ignore_index=True).astype("string"))
    return len(rows)


def latest(run_dir: Path | str) -> pd.DataFrame:
    """One row per reviewed image (index image_id): its latest decision, reviewer, timestamp and note."""
    entries = read(run_dir)
    return entries.drop_duplicates("image_id", keep="last").set_index("image_id").sort_index()
