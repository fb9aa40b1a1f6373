"""Score first, decide separately: a pure function from stored detector scores to keep / reject / review.

Reading the thresholds from config and the scores from the manifest, it never touches a model, so a notebook
or `curate.evaluate` can preview any threshold and release can re-decide without re-running detect.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from curate.config import DecideConfig

# PASS v1: any RetinaFace box > 0.5, else any COCO person > 0.5 on the full image; no tiles, no CLIP, no review
# band.
PASS_V1 = DecideConfig(preset="pass_v1", face=0.5, person=0.5, person_tiles=1.0, clip=1.0)
# Tuned on shared/evalsets/dev with the offline models (RetinaFace MobileNet-0.25 + YOLOX-Nano with
# detect.person_tiles=3): the highest recall whose false-removal rate stays <= 0.15, from the middle of the
# plateau where it holds (face 0.9-0.95, tiles 0.35-0.5). RetinaFace fires on animal faces (dogs, macaques) up to
# 0.97, so its bar goes up; the person detector's goes far down on the full image, and to 0.4 on tiles, whose
# upscaled crops fire more easily. Tuned on the set it is then measured on, so the figures are optimistic. CLIP's
# review band is a first guess: no CLIP weights exist offline to tune it.
STRICT = DecideConfig(preset="strict", face=0.9, person=0.1, person_tiles=0.4, clip=0.5, clip_review=0.3)

# what feeds each decision family: detectors' image-level `<family>_<name>_max` columns, tiles apart
FAMILIES = ("face", "person", "person_tiles", "clip")


def family_of(column: str) -> str | None:
    """The decision family a stored score column feeds (face, person, person_tiles, clip), or None."""
    if column == "clip_human_prob":
        return "clip"
    if not column.endswith("_max"):
        return None
    if column.startswith("person_") and column.endswith("_tiles_max"):
        return "person_tiles"
    for family in ("face", "person"):
        if column.startswith(f"{family}_"):
            return family
    return None


def thresholds(cfg: DecideConfig) -> DecideConfig:
    if cfg.preset == "pass_v1":
        return PASS_V1
    if cfg.preset == "strict":
        return STRICT
    return replace(cfg)


@dataclass(frozen=True)
class Scores:
    """Image-level scores: the max over every detector of a family (NaN when that family did not run)."""

    face: np.ndarray
    person: np.ndarray
    clip: np.ndarray
    person_tiles: np.ndarray | None = None  # tiles' own scores (None or NaN: no tiles were looked at)

    @classmethod
    def from_manifest(cls, rows: pd.DataFrame) -> Scores:
        def family(name: str) -> np.ndarray:
            columns = [c for c in rows.columns if family_of(c) == name]
            if not columns:
                return np.full(len(rows), np.nan)
            return rows[columns].astype("float64").max(axis=1, skipna=True).to_numpy()

        return cls(family("face"), family("person"), family("clip"), family("person_tiles"))


def decide(scores: Scores, cfg: DecideConfig) -> tuple[np.ndarray, np.ndarray]:
    """(decision, reason) per image: keep/ok, reject/face|person|clip_human, review/uncertain.

    Order matters only for the reason: a face is the strongest evidence, then a person box, then CLIP.
    """
    t = thresholds(cfg)
    tiles = scores.person_tiles if scores.person_tiles is not None else np.full(len(scores.face), np.nan)
    face, person, clip, tiles = (np.nan_to_num(a, nan=-1.0) for a in (scores.face, scores.person, scores.clip, tiles))
    decision = np.full(len(face), "keep", dtype=object)
    reason = np.full(len(face), "ok", dtype=object)
    uncertain = (face > t.face_review) | (person > t.person_review) | (clip > t.clip_review)
    uncertain |= tiles > t.person_tiles_review
    decision[uncertain], reason[uncertain] = "review", "uncertain"
    person_hit = (person > t.person) | (tiles > t.person_tiles)
    for hit, why in ((clip > t.clip, "clip_human"), (person_hit, "person"), (face > t.face, "face")):
        decision[hit], reason[hit] = "reject", why
    return decision, reason
