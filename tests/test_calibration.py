"""Per-model thresholds under the OR rule: the search finds known optima and matches exhaustive search."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from curate.calibration import (
    NEVER,
    in_review,
    kfold,
    rates,
    removed,
    review_rates,
    search,
    search_review,
    wilson,
)


def test_one_column_the_highest_bar_that_reaches_the_target() -> None:
    scores = pd.DataFrame({"face": [0.9, 0.8, 0.7, 0.3, 0.85, 0.2, 0.1]})
    human = np.array([True, True, True, True, False, False, False])
    bars = search(scores, human, target_recall=0.75)
    assert 0.3 <= bars["face"] < 0.7  # 3 of 4 humans; the image at 0.85 cannot be spared
    found = rates(scores, human, bars)
    assert (found.caught, found.removed_others) == (3, 1)
    assert 0.7 <= search(scores, human, target_recall=0.5)["face"] < 0.8  # 2 of 4: 0.9 and 0.8 (0.85 goes too)
    assert rates(scores, human, search(scores, human, 0.0)).caught == 0


def test_two_columns_the_known_optimum_uses_each_model_for_what_only_it_sees() -> None:
    # Faces catch humans 0-2; only the hand model sees human 3 (a lone hand, 0.6). Image 4 (no human) has a face
    # score of 0.5, image 5 a hand score of 0.55 (a paw). The one optimum at recall 1: face in [0.5, 0.8), hand
    # in [0.55, 0.6): every human removed, nothing else.
    scores = pd.DataFrame(
        {
            "face": [0.9, 0.8, 0.85, np.nan, 0.5, 0.3],
            "hand": [np.nan, 0.1, np.nan, 0.6, 0.2, 0.55],
        }
    )
    human = np.array([True, True, True, True, False, False])
    bars = search(scores, human, target_recall=1.0)
    assert removed(scores, bars).tolist() == [True, True, True, True, False, False]
    assert 0.5 <= bars["face"] < 0.8 and 0.55 <= bars["hand"] < 0.6


def exhaustive(scores: pd.DataFrame, human: np.ndarray, target: float) -> int:
    options = [[NEVER, *np.nextafter(np.unique(scores[c].dropna()), -np.inf)] for c in scores.columns]
    best = None
    for combo in itertools.product(*options):
        found = rates(scores, human, dict(zip(scores.columns, combo, strict=True)))
        if found.recall >= target - 1e-12 and (best is None or found.removed_others < best):
            best = found.removed_others
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(12))
def test_the_search_matches_exhaustive_search_on_random_tables(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 30
    human = rng.random(n) < 0.5
    scores = pd.DataFrame(
        {
            "face": np.where(human, rng.beta(3, 2, n), rng.beta(2, 3, n)).round(2),
            "person": np.where(human, rng.beta(2, 2, n), rng.beta(1, 3, n)).round(2),
        }
    )
    scores.loc[rng.random(n) < 0.2, "face"] = np.nan  # a model that did not run on some images
    for target in (0.8, 0.95):
        bars = search(scores, human, target)
        found = rates(scores, human, bars)
        assert found.recall >= target - 1e-12
        assert found.removed_others == exhaustive(scores, human, target)


def test_an_unreachable_target_gives_the_highest_recall_there_is() -> None:
    scores = pd.DataFrame({"face": [0.9, np.nan, 0.2]})
    human = np.array([True, True, False])
    found = rates(scores, human, search(scores, human, 1.0))
    assert (found.caught, found.removed_others) == (1, 0)


def test_wilson_intervals() -> None:
    low, high = wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson(110, 114)
    assert low == pytest.approx(0.9131, abs=1e-3) and high == pytest.approx(0.9865, abs=1e-3)


def test_kfold_is_seeded_and_held_out() -> None:
    rng = np.random.default_rng(3)
    n = 80
    human = rng.random(n) < 0.5
    scores = pd.DataFrame({"face": np.where(human, rng.beta(4, 2, n), rng.beta(2, 4, n))})
    first, again = kfold(scores, human, 0.9, folds=5, seed=1), kfold(scores, human, 0.9, folds=5, seed=1)
    assert first == again
    assert first.rates.humans == int(human.sum()) and first.rates.others == int((~human).sum())
    in_sample = rates(scores, human, search(scores, human, 0.9))
    # held out, the bars meet the target less surely than on the images they were fitted to
    assert first.rates.recall <= in_sample.recall + 0.05


def test_a_human_image_scoring_zero_cannot_pull_a_bar_below_every_score() -> None:
    # five human images no detector found anything on (score 0): no bar removes them without removing everything
    rng = np.random.default_rng(1)
    human = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    face = np.r_[rng.uniform(0.3, 1, 95), np.zeros(5), rng.uniform(0, 0.25, 100)]
    scores = pd.DataFrame({"face": face})
    for target in (0.97, 0.95):
        bars = search(scores, human, target)
        found = rates(scores, human, bars)
        assert bars["face"] > 0.25 and (found.caught, found.removed_others) == (95, 0)


def band_table() -> tuple[pd.DataFrame, np.ndarray]:
    # Humans 0-3; faces catch 0 and 1 above the no-human image 4 (0.7), so at recall 0.5 the reject bars are
    # face 0.75 (between 0.7 and 0.8) and no hand bar. Human 2 (face 0.6, just under the reject bar) goes to review
    # by face at the cost of image 4 (0.7) only; by hand (0.1) it would take 5, 6, 7 and 8 with it. Human 3 goes
    # by hand (0.5) alone, above the paws at 0.45 and 0.4; by face (0.3) it would take 4 and 5.
    scores = pd.DataFrame(
        {
            "face": [0.9, 0.8, 0.6, 0.3, 0.7, 0.5, 0.2, np.nan, 0.1],
            "hand": [np.nan, np.nan, 0.1, 0.5, np.nan, 0.2, 0.45, 0.4, 0.1],
        }
    )
    return scores, np.array([True, True, True, True, False, False, False, False, False])


def test_the_review_band_known_optimum() -> None:
    scores, human = band_table()
    reject = search(scores, human, target_recall=0.5)
    assert reject == {"face": 0.75, "hand": NEVER}
    review = search_review(scores, human, reject, review_recall=1.0)
    assert review == {"face": 0.55, "hand": 0.475}
    assert in_review(scores, reject, review).tolist() == [False, False, True, True, True, False, False, False, False]
    band = review_rates(scores, human, reject, review)
    assert (band.caught, band.reviewed_humans, band.reviewed_others, band.reviewed, band.images) == (4, 2, 1, 3, 9)
    assert band.recall == 1.0 and band.review_load == pytest.approx(3 / 9)
    assert band.recall_ci[1] == 1.0 and band.review_load_ci[0] < 3 / 9 < band.review_load_ci[1]
    # One human more: the hand band alone, which sends no image without humans to review; face has no band.
    review = search_review(scores, human, reject, review_recall=0.75)
    assert review == {"face": 0.75, "hand": 0.475}
    band = review_rates(scores, human, reject, review)
    assert (band.caught, band.reviewed_humans, band.reviewed_others) == (3, 1, 0)


def random_table(seed: int, n: int = 30) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    human = rng.random(n) < 0.5
    scores = pd.DataFrame(
        {
            "face": np.where(human, rng.beta(3, 2, n), rng.beta(2, 3, n)).round(2),
            "person": np.where(human, rng.beta(2, 2, n), rng.beta(1, 3, n)).round(2),
        }
    )
    scores.loc[rng.random(n) < 0.2, "face"] = np.nan
    return scores, human


def exhaustive_review(scores: pd.DataFrame, human: np.ndarray, reject: dict[str, float], target: float) -> int:
    """The fewest images without humans any review bars send to review while reaching `target` with review."""
    options = [[NEVER, *np.nextafter(np.unique(scores[c].dropna()), -np.inf)] for c in scores.columns]
    best = None
    for combo in itertools.product(*options):
        found = review_rates(scores, human, reject, dict(zip(scores.columns, combo, strict=True)))
        if found.recall >= target - 1e-12 and (best is None or found.reviewed_others < best):
            best = found.reviewed_others
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(12))
def test_the_review_search_matches_exhaustive_search_on_random_tables(seed: int) -> None:
    scores, human = random_table(seed)
    for target, review_recall in ((0.6, 0.9), (0.8, 1.0)):
        reject = search(scores, human, target)
        review = search_review(scores, human, reject, review_recall)
        assert all(review[c] <= reject[c] for c in reject)
        found = review_rates(scores, human, reject, review)
        assert found.recall >= review_recall - 1e-12
        assert found.reviewed_others == exhaustive_review(scores, human, reject, review_recall)
        # the band only adds: the reject bars' removals are as before
        assert found.caught - found.reviewed_humans == rates(scores, human, reject).caught


@pytest.mark.parametrize("seed", range(4))
def test_a_review_recall_the_reject_bars_already_reach_is_no_band(seed: int) -> None:
    scores, human = random_table(seed)
    reject = search(scores, human, 0.8)
    review = search_review(scores, human, reject, 0.8)
    assert review == reject  # review == reject: decide sends nothing to review
    assert not in_review(scores, reject, review).any()


def test_an_unreachable_review_recall_catches_what_it_can() -> None:
    scores = pd.DataFrame({"face": [0.9, 0.4, np.nan, 0.5, 0.1]})
    human = np.array([True, True, True, False, False])
    reject = search(scores, human, 0.3)
    review = search_review(scores, human, reject, 1.0)
    assert review["face"] <= reject["face"]
    band = review_rates(scores, human, reject, review)
    assert (band.caught, band.reviewed_humans, band.reviewed_others) == (2, 1, 1)  # the NaN human is out of reach


def test_kfold_with_a_review_band_is_seeded_and_held_out() -> None:
    rng = np.random.default_rng(3)
    n = 120
    human = rng.random(n) < 0.5
    scores = pd.DataFrame(
        {
            "face": np.where(human, rng.beta(4, 2, n), rng.beta(2, 4, n)),
            "hand": np.where(human, rng.beta(3, 2, n), rng.beta(2, 3, n)),
        }
    )
    first = kfold(scores, human, 0.8, folds=5, seed=1, review_recall=0.95)
    assert first == kfold(scores, human, 0.8, folds=5, seed=1, review_recall=0.95)
    plain = kfold(scores, human, 0.8, folds=5, seed=1)
    assert plain.band is None and plain.rates == first.rates  # the band leaves the reject bars as they were
    band = first.band
    assert band is not None and band.images == n and band.humans == int(human.sum())
    assert band.caught - band.reviewed_humans == first.rates.caught and band.recall >= first.rates.recall
    reject = search(scores, human, 0.8)
    in_sample = review_rates(scores, human, reject, search_review(scores, human, reject, 0.95))
    assert in_sample.recall >= 0.95
