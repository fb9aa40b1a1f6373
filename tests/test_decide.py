"""The decision is a pure function of stored scores; PASS v1's rule is reproduced exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd

from curate.config import DecideConfig
from curate.detect.decide import PASS_V1, STRICT, Scores, decide, family_of


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


def test_tile_scores_have_a_bar_of_their_own() -> None:
    # full-view person 0.3 passes strict's 0.1; a tile score of 0.3 does not pass its 0.4, 0.45 does
    tiled = Scores(
        face=np.array([0.0, 0.0, 0.0, 0.0]),
        person=np.array([0.3, 0.05, 0.05, np.nan]),
        clip=np.full(4, np.nan),
        person_tiles=np.array([0.0, 0.3, 0.45, 0.9]),
    )
    verdict, reason = decide(tiled, DecideConfig(preset="strict"))
    assert STRICT.person == 0.1 and STRICT.person_tiles == 0.4
    assert list(zip(verdict, reason, strict=True)) == [
        ("reject", "person"),
        ("keep", "ok"),
        ("reject", "person"),
        ("reject", "person"),  # tiles alone are evidence, even where the full view has no score
    ]
    # PASS v1 never looks at tiles
    assert list(decide(tiled, PASS_V1)[0]) == ["keep"] * 4
    # a review band for tiles
    band = DecideConfig(preset="custom", face=1, person=1, clip=1, person_tiles=0.8, person_tiles_review=0.25)
    assert list(decide(tiled, band)[0]) == ["keep", "review", "review", "reject"]


def test_tile_columns_feed_their_own_family() -> None:
    rows = pd.DataFrame({"person_x_max": [0.1, 0.2], "person_x_tiles_max": [0.7, None], "face_y_max": [0.0, 0.1]})
    assert [family_of(c) for c in rows.columns] == ["person", "person_tiles", "face"]
    assert family_of("clip_human_prob") == "clip" and family_of("person_x_count") is None
    got = Scores.from_manifest(rows)
    np.testing.assert_allclose(got.person, [0.1, 0.2])
    assert got.person_tiles is not None
    np.testing.assert_allclose(got.person_tiles, [0.7, np.nan])
