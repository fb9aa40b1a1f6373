"""What each threshold choice would remove, from the stored scores alone (no model runs), and the images at the
margin of a threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd

from curate.config import CurateConfig
from curate.funnel import describe_reasons, funnel_rows, release_funnel
from curate.review.candidates import scored_rows
from curate.review.thumbs import caption, contact_sheet, image_bytes, thumbnail

GRID = tuple(round(t, 2) for t in np.arange(0.05, 1.0, 0.05))


def removal_table(rows: pd.DataFrame, grid: tuple[float, ...] = GRID) -> pd.DataFrame:
    """Images each detector alone would remove at each threshold (score > t), one column per detector."""
    detectors = [c for c in rows.columns if c.endswith("_max")]
    if "clip_human_prob" in rows:
        detectors.append("clip_human_prob")
    table = {c.removesuffix("_max"): [int((rows[c].astype(float) > t).sum()) for t in grid] for c in detectors}
    return pd.DataFrame(table, index=pd.Index(grid, name="threshold"))


def funnel_table(cfg: CurateConfig) -> pd.DataFrame:
    """The release's funnel, as its data card and the HTML report count it (empty: no release made yet)."""
    counter = release_funnel(cfg)
    rows = funnel_rows(counter) if counter is not None else []
    return pd.DataFrame(
        {
            "step": [r.label for r in rows],
            "images left": [r.remaining for r in rows],
            "stopped here": [r.stopped for r in rows],
            "reasons": [describe_reasons(r.reasons) for r in rows],
        }
    )


def reason_counts(rows: pd.DataFrame) -> pd.DataFrame:
    """Images per decision and reason at the run's current thresholds."""
    return rows.groupby(["decision", "decision_reason"]).size().rename("images").reset_index()


def margin(rows: pd.DataFrame, family: str, threshold: float, width: float = 0.1, n: int = 12) -> pd.DataFrame:
    """The n images just above and the n just below `threshold` on a family's score."""
    score = rows[family].astype(float)
    above = rows[(score > threshold) & (score <= threshold + width)].sort_values(family).head(n)
    below = rows[(score <= threshold) & (score > threshold - width)].sort_values(family, ascending=False).head(n)
    return pd.concat([above.assign(side="above"), below.assign(side="below")])


def margin_sheet(cfg: CurateConfig, family: str, threshold: float, width: float = 0.1) -> object:
    """A contact sheet of the images at the margin (above first), boxes drawn."""
    rows = margin(scored_rows(cfg), family, threshold, width)
    blobs = image_bytes(cfg.run.dir, rows)
    items = [
        (thumbnail(blobs[r["image_id"]], r), f"{r['side']}: {caption(r)}")
        for _, r in rows.iterrows()
        if r["image_id"] in blobs
    ]
    return contact_sheet(items)
