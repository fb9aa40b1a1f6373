"""The one funnel of a release: how many candidates each step leaves, counted by the first reason that stopped
each row.

The data card, the HTML report and the thresholds notebook all count with this module, so they cannot disagree.
Every row of the release manifest has exactly one step where it stopped (or none: it was released), read from
its overall `status`/`reason`; a row stopped at one step is never counted again at a later one, so each step's
remaining count is the previous one's minus the rows it stopped, and the last step's is the released count.

It counts shard by shard (`FunnelCounter.add`), so 100M candidates never need to be in memory at once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

import pandas as pd
import pyarrow.parquet as pq

from curate import pipeline
from curate.config import CurateConfig
from curate.schema import KEPT, OK

START = "candidates read"
RELEASED = "released"
# (key, label) in the order release applies them. `reason` is "<stage>:<why>"; its stage names the step, except
# "detect:", which is a scoring failure (detect_status not ok: step "detect") or the human filter's verdict on a
# scored image (step "filter").
STEPS: tuple[tuple[str, str], ...] = pipeline.funnel_steps()  # declared with the stages (curate.pipeline)
KEYS = tuple(key for key, _ in STEPS)
# The manifest columns the funnel reads (a reader needs no more).
COLUMNS = ("status", "reason", "detect_status")


def count_rows(*columns: pd.Series) -> Counter[tuple[Any, ...]]:
    """Rows per combination of the columns' values (nulls left out). Counted by pandas, not row by row in Python:
    a shard of a 100M-candidate run holds tens of thousands of rows, most of them stopped."""
    counts = pd.concat(columns, axis=1, ignore_index=True).dropna().value_counts(sort=False)
    return Counter({tuple(cast(tuple[Any, ...], key)): int(n) for key, n in counts.items()})


def first_stop(frame: pd.DataFrame) -> pd.Series:
    """The step that stopped each row (a key of STEPS), or RELEASED for rows released."""
    status = frame["status"].astype("string")
    reason = frame["reason"].astype("string")
    kept = status.eq(KEPT).fillna(False).astype(bool)
    if (kept != reason.eq(OK).fillna(False).astype(bool)).any():
        raise ValueError("manifest rows whose status is kept must have reason ok, and only those")
    step = reason.str.split(":", n=1).str[0].astype("string")
    scored = frame["detect_status"].astype("string").eq(OK).fillna(False).astype(bool)
    step = step.mask((step == "detect") & scored, "filter").mask(kept, RELEASED)
    unknown = sorted(set(step.dropna().astype(str)) - {*KEYS, RELEASED})
    if unknown or step.isna().any():
        raise ValueError(f"manifest reasons of no funnel step: {unknown or ['<null>']}")
    return step


def stop_reason(frame: pd.DataFrame) -> pd.Series:
    """The part of each row's reason after its stage ("not_allowed" of "license:not_allowed"; "ok" if kept)."""
    reason = frame["reason"].astype("string")
    return reason.str.split(":", n=1).str[-1].astype("string")


@dataclass
class FunnelCounter:
    """Rows stopped per (step, reason), accumulated shard by shard."""

    total: int = 0
    stops: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, frame: pd.DataFrame) -> None:
        step, why = first_stop(frame), stop_reason(frame)
        stopped = step != RELEASED
        self.total += len(frame)
        self.stops.update({(str(k), str(w)): n for (k, w), n in count_rows(step[stopped], why[stopped]).items()})

    @property
    def released(self) -> int:
        return self.total - sum(self.stops.values())

    def stopped_at(self, key: str) -> int:
        return sum(n for (step, _), n in self.stops.items() if step == key)

    @classmethod
    def from_manifest(cls, path: Path, batch_rows: int = 1 << 20) -> FunnelCounter:
        """The funnel of a release's manifest.parquet, read a batch of its three columns at a time."""
        counter = cls()
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=list(COLUMNS)):
            counter.add(batch.to_pandas())
        return counter


class FunnelRow(NamedTuple):
    label: str
    remaining: int  # rows no step up to and including this one stopped
    stopped: int  # rows this step stopped
    reasons: tuple[tuple[str, int], ...]  # this step's reasons, most frequent first


def funnel_rows(counter: FunnelCounter) -> list[FunnelRow]:
    """The candidates, then each step with what it leaves; the last row's `remaining` is the released count."""
    rows = [FunnelRow(START, counter.total, 0, ())]
    remaining = counter.total
    for key, label in STEPS:
        reasons = Counter({why: n for (step, why), n in counter.stops.items() if step == key})
        stopped = sum(reasons.values())
        remaining -= stopped
        rows.append(
            FunnelRow(label, remaining, stopped, tuple(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))))
        )
    if remaining != counter.released:  # a stop of no step: counted in no row, yet not released either
        raise ValueError(f"funnel stops outside its steps: {sorted({k for k, _ in counter.stops} - set(KEYS))}")
    return rows


def funnel_counts(counter: FunnelCounter) -> list[tuple[str, int]]:
    """(label, remaining) per funnel row: what a chart or a test compares."""
    return [(row.label, row.remaining) for row in funnel_rows(counter)]


def describe_reasons(reasons: tuple[tuple[str, int], ...], top: int = 4) -> str:
    """ "not_allowed 6, unknown_license 1" (the `top` most frequent, then how many other reasons)."""
    if not reasons:
        return "-"
    shown = ", ".join(f"{why} {n}" for why, n in reasons[:top])
    more = len(reasons) - top
    return shown + (f", {more} other reason(s)" if more > 0 else "")


def release_manifest(cfg: CurateConfig) -> Path:
    return Path(cfg.run.dir) / "release" / cfg.release.version / "manifest.parquet"


def release_funnel(cfg: CurateConfig) -> FunnelCounter | None:
    """The funnel of the config's release (None: that release was not made yet)."""
    path = release_manifest(cfg)
    return FunnelCounter.from_manifest(path) if path.exists() else None
