"""Score first, decide separately: a pure function from stored detector scores to keep / reject / review.

Reading the thresholds from config and the scores from the manifest, it never touches a model, so a notebook
or `curate.evaluate` can preview any threshold and release can re-decide without re-running detect.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from curate.config import DecideConfig

# PASS v1: any RetinaFace box > 0.5, else any COCO person > 0.5; no CLIP, no review band.
PASS_V1 = DecideConfig(preset="pass_v1", face=0.5, person=0.5, clip=1.0)
# Tuned on shared/evalsets/dev with the offline models (RetinaFace MobileNet-0.25 + YOLOX-Nano): the highest
# recall whose false-removal rate stays <= 0.15. RetinaFace fires on animal faces (dogs, macaques) up to 0.97,
# so its bar goes up, while the person detector's goes far down. CLIP's review band is a first guess: no
# CLIP weights exist offline to tune it.
STRICT = DecideConfig(preset="strict", face=0.7, person=0.1, clip=0.5, clip_review=0.3)


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

    @classmethod
    def from_manifest(cls, rows: pd.DataFrame) -> Scores:
        def family(prefix: str) -> np.ndarray:
            columns = [c for c in rows.columns if c.startswith(prefix) and c.endswith("_max")]
            if not columns:
                return np.full(len(rows), np.nan)
            return rows[columns].astype("float64").max(axis=1, skipna=True).to_numpy()

        clip = rows["clip_human_prob"].astype("float64").to_numpy() if "clip_human_prob" in rows else None
        return cls(family("face_"), family("person_"), clip if clip is not None else np.full(len(rows), np.nan))


def decide(scores: Scores, cfg: DecideConfig) -> tuple[np.ndarray, np.ndarray]:
    """(decision, reason) per image: keep/ok, reject/face|person|clip_human, review/uncertain.

    Order matters only for the reason: a face is the strongest evidence, then a person box, then CLIP.
    """
    t = thresholds(cfg)
    face, person, clip = (np.nan_to_num(a, nan=-1.0) for a in (scores.face, scores.person, scores.clip))
    decision = np.full(len(face), "keep", dtype=object)
    reason = np.full(len(face), "ok", dtype=object)
    uncertain = (face > t.face_review) | (person > t.person_review) | (clip > t.clip_review)
    decision[uncertain], reason[uncertain] = "review", "uncertain"
    for hit, why in ((clip > t.clip, "clip_human"), (person > t.person, "person"), (face > t.face, "face")):
        decision[hit], reason[hit] = "reject", why
    return decision, reason
