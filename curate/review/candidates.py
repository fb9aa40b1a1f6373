"""The rows a reviewer looks at, read from the run's stage parts (no model runs): scores, boxes, the decision
the current thresholds give, how close a kept image comes to the bar that would first act on it (borderline),
and the latest review decision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from curate.config import CurateConfig
from curate.detect.bars import NEVER, Bar
from curate.detect.decide import FAMILIES, Rule, decide, family_scores, rule
from curate.io.atomic import read_columns
from curate.review import ledger
from curate.rundir import RunDir
from curate.schema import OK

KEEP_COLUMNS = ("image_id", "owner_nsid", "title", "tar_member", "width", "height", "clip_top_class")


def scored_rows(cfg: CurateConfig) -> pd.DataFrame:
    """Every image detect scored (and dedup did not drop), with family scores, decision and review state."""
    run = RunDir(Path(cfg.run.dir))
    frames = []
    for shard in range(run.num_shards()):
        parts = [
            read_columns(run.part("ingest", shard), lambda n: n in KEEP_COLUMNS),
            read_columns(run.part("fetch", shard), lambda n: n in KEEP_COLUMNS),
            read_columns(
                run.part("detect", shard),
                lambda n: n.endswith(("_max", "_boxes")) or n in ("clip_human_prob", "clip_top_class", "detect_status"),
            ),
        ]
        if run.part("dedup", shard).exists():
            parts.append(read_columns(run.part("dedup", shard), lambda n: n in ("dedup_status", "dedup_reason")))
        frame = pd.concat(parts, axis=1)
        frame["shard"] = shard
        keep = frame["detect_status"].eq(OK).fillna(False)
        if "dedup_status" in frame:
            keep &= frame["dedup_status"].eq(OK).fillna(False)
        frames.append(frame[keep.to_numpy(dtype=bool)])
    rows = pd.concat(frames, ignore_index=True)
    for family, values in family_scores(rows).items():  # every family (NaN where it did not run), for display
        rows[family] = values
    active = rule(cfg.decide, list(rows.columns))
    decision, reason = decide(rows, active)
    rows["decision"], rows["decision_reason"] = decision, reason
    rows["closeness"] = closeness(rows, active)
    rows["top_score"] = rows[list(FAMILIES)].max(axis=1, skipna=True).fillna(0.0)
    reviewed = ledger.latest(cfg.run.dir)
    rows["review_decision"] = rows["image_id"].map(reviewed["decision"]).astype("string")
    return rows


def acting_bar(bar: Bar) -> float:
    """The bar at which a column first acts on an image: its review bar where it has a band, else its reject bar.
    At NEVER (1.0) or above it decides nothing."""
    return min(bar.review, bar.reject)


def closeness(rows: pd.DataFrame, active: Rule) -> np.ndarray:
    """How close each image comes to being flagged: its largest score / acting-bar ratio (>= 1 once above it)
    over the score columns that decide something. A column whose acting bar is NEVER (strict's RetinaFace
    MobileNet-0.25) never makes an image borderline; a null score counts as 0."""
    ratios = [
        np.nan_to_num(pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype="float64"), nan=0.0)
        / max(acting_bar(bar), 1e-6)
        for column, bar in active.bars.items()
        if acting_bar(bar) < NEVER
    ]
    return np.max(np.stack(ratios), axis=0) if ratios else np.zeros(len(rows))


def flagged_and_borderline(rows: pd.DataFrame, margin: float) -> pd.DataFrame:
    """Rows the filter rejected or sent to review, and kept rows within `margin` (relative) of the bar that would
    first act on them (`closeness`: a column's review bar where it has a band, else its reject bar)."""
    borderline = (rows["decision"] == "keep") & (rows["closeness"] >= 1.0 - margin)
    out = rows[(rows["decision"] != "keep") | borderline].copy()
    out["group"] = np.where(out["decision"] == "keep", "borderline", out["decision_reason"])
    return out
