"""The decision is a pure function of stored scores; PASS v1's rule is reproduced exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd

from curate.config import DecideConfig
from curate.detect.decide import PASS_V1, Scores, decide


def scores(face: list[float], person: list[float], clip: list[float] | None = None) -> Scores:
    n = len(face)
    return Scores(np.array(face), np.array(person), np.array(clip if clip is not None else [np.nan] * n))


def test_pass_v1_is_face_or_person_above_half() -> None:
    verdict, reason = decide(scores([0.51, 0.5, 0.1, 0.9, 0.0], [0.0, 0.51, 0.5, 0.9, 0.49]), PASS_V1)
    assert list(verdict) == ["reject", "reject", "keep", "reject", "keep"]
    assert list(reason) == ["face", "person", "ok", "face", "ok"]


def test_pass_v1_ignores_clip_and_has_no_review_band() -> None:
    verdict, _ = decide(scores([0.45], [0.45], [0.99]), DecideConfig(preset="pass_v1"))
    assert list(verdict) == ["keep"]


def test_custom_thresholds_and_review_band() -> None:
    cfg = DecideConfig(
        preset="custom", face=0.6, person=0.4, clip=0.7, face_review=0.2, person_review=0.2, clip_review=0.4
    )
    verdict, reason = decide(
        scores([0.3, 0.1, 0.1, 0.1, np.nan], [0.1, 0.1, 0.5, 0.1, np.nan], [0.1, 0.8, 0.1, 0.5, 0.1]), cfg
    )
    assert list(zip(verdict, reason, strict=True)) == [
        ("review", "uncertain"),
        ("reject", "clip_human"),
        ("reject", "person"),
        ("review", "uncertain"),
        ("keep", "ok"),  # a family that did not run never counts as evidence
    ]


def test_scores_from_manifest_take_the_max_over_detectors() -> None:
    rows = pd.DataFrame(
        {
            "face_a_max": [0.2, None, 0.9],
            "face_b_max": [0.7, None, 0.1],
            "face_a_count": [9, 9, 9],  # not a score column
            "person_x_max": [0.1, 0.3, None],
            "clip_human_prob": [0.5, 0.2, None],
        }
    )
    got = Scores.from_manifest(rows)
    np.testing.assert_allclose(got.face, [0.7, np.nan, 0.9])
    np.testing.assert_allclose(got.person, [0.1, 0.3, np.nan])
    np.testing.assert_allclose(got.clip, [0.5, 0.2, np.nan])
