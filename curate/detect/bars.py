"""Score columns and their bars: which family a stored score column feeds, and one column's bars."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from curate.config import DETECTOR_FAMILIES

# The families a score column feeds, strongest evidence first: the reason of a rejection is the strongest family
# above its bar (a face, then a person box, then a hand, then CLIP).
FAMILIES = ("face", "person", "person_tiles", "hand", "clip")
REASON = {"face": "face", "person": "person", "person_tiles": "person", "hand": "hand", "clip": "clip_human"}
# A bar no score in [0, 1] passes: the column never removes an image (and 1.0 as a review bar: no band).
NEVER = 1.0


def family_of(column: str) -> str | None:
    """The family a stored score column feeds (face, person, person_tiles, hand, clip), or None."""
    if column == "clip_human_prob":
        return "clip"
    if not column.endswith("_max"):
        return None
    if column.startswith("person_") and column.endswith("_tiles_max"):
        return "person_tiles"
    for family in DETECTOR_FAMILIES:
        if column.startswith(f"{family}_"):
            return family
    return None


def score_columns(columns: Iterable[str]) -> list[str]:
    """The score columns among `columns` (those the decision reads), in their order."""
    return [c for c in columns if family_of(c) is not None]


@dataclass(frozen=True)
class Bar:
    """One score column's bars: above `reject` the image is removed; above `review` (and no reject) a person
    looks. `calibrated`: searched on a labelled set (`curate calibrate`); otherwise `source` says where the value
    comes from (a published operating point, PASS's rule, a guess)."""

    reject: float
    review: float = NEVER
    calibrated: bool = False
    source: str = ""
