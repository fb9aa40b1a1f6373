"""Per-model thresholds from labelled scores: the lowest false-removal rate at a target recall, under the OR rule.

An image is removed when ANY score column is above its bar. Given one row per labelled image (a score per
column, NaN where a model did not run, and whether the image shows a human), `search` finds one bar per column.
It works on stored scores only, so changing the target never re-runs a model.

The search is a deterministic local search. Given the other bars, the best bar for one column is exact: just
under the k-th highest score among the human images the others miss, k being how many the target still needs.
It starts from every bar set that way, then moves one bar at a time to each of its possible values, sets the
others again, and keeps the move that removes fewest images without humans; it stops when no move helps. With one
column this is the exact optimum; with several it is a local one (`tests/test_calibration.py` compares it with
exhaustive search).

`search_review` adds an optional review band: with the reject bars fixed, the same search on the images they keep
finds review bars for the human images still short of a higher `review_recall`, sending as few images without
humans to review as it finds (an image already rejected costs nothing). Each review bar is at most its reject bar;
one equal to it is no band. `kfold` says how well the bars, and the band, hold on images the search did not see.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from curate.detect.bars import NEVER  # a bar above every score in [0, 1]: the column removes nothing

# 95 % two-sided normal quantile, for Wilson intervals.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rates:
    """Recall (human images removed) and false removal (images without humans removed), with 95 % intervals."""

    humans: int
    caught: int
    others: int
    removed_others: int

    @property
    def recall(self) -> float:
        return self.caught / self.humans if self.humans else math.nan

    @property
    def false_removal(self) -> float:
        return self.removed_others / self.others if self.others else math.nan

    @property
    def recall_ci(self) -> tuple[float, float]:
        return wilson(self.caught, self.humans)

    @property
    def false_removal_ci(self) -> tuple[float, float]:
        return wilson(self.removed_others, self.others)


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval: sound at 0 and at the ends, where the normal approximation is not."""
    if trials == 0:
        return (math.nan, math.nan)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return (max(0.0, centre - half), min(1.0, centre + half))


def removed(scores: pd.DataFrame, bars: dict[str, float]) -> np.ndarray:
    """Which images the OR rule removes: any column strictly above its bar (NaN never is)."""
    hit = np.zeros(len(scores), dtype=bool)
    for column, bar in bars.items():
        hit |= np.nan_to_num(scores[column].to_numpy(dtype="float64"), nan=-math.inf) > bar
    return hit


def rates(scores: pd.DataFrame, human: np.ndarray, bars: dict[str, float]) -> Rates:
    hit = removed(scores, bars)
    human = np.asarray(human, dtype=bool)
    return Rates(int(human.sum()), int((hit & human).sum()), int((~human).sum()), int((hit & ~human).sum()))


def per_column(scores: pd.DataFrame, human: np.ndarray, bars: dict[str, float]) -> dict[str, tuple[Rates, np.ndarray]]:
    """Each column alone at its bar, and which human images only it removes (no other column is above its bar)."""
    human = np.asarray(human, dtype=bool)
    fired = {c: removed(scores[[c]], {c: bar}) for c, bar in bars.items()}
    out = {}
    for column, hits in fired.items():
        others = np.zeros(len(scores), dtype=bool)
        for other, other_hits in fired.items():
            if other != column:
                others |= other_hits
        out[column] = (rates(scores[[column]], human, {column: bars[column]}), hits & human & ~others)
    return out


def category_rates(frame: pd.DataFrame, removed: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per label/category of `frame` (columns label, category): images, and the share removed (recall for
    humans, false-removal rate for the others)."""
    out: dict[str, dict[str, Any]] = {}
    for (label, category), group in frame.assign(_removed=removed).groupby(["label", "category"], sort=True):
        key = "recall" if label == "human" else "false_removal_rate"
        out[f"{label}/{category}"] = {"n": len(group), key: round(float(group["_removed"].mean()), 4)}
    return out


def search(
    scores: pd.DataFrame, human: np.ndarray, target_recall: float, columns: Sequence[str] | None = None
) -> dict[str, float]:
    """One bar per column: at least `target_recall` of the human images removed, as few others as this search
    finds (see the module docstring). When the target cannot be met, the bars reach the highest recall possible."""
    columns = list(scores.columns if columns is None else columns)
    human = np.asarray(human, dtype=bool)
    values = column_values(scores, columns)
    bars = fit(values, human, math.ceil(target_recall * human.sum() - 1e-9))
    return {c: centred(values[c], bar) for c, bar in bars.items()}


def search_review(
    scores: pd.DataFrame,
    human: np.ndarray,
    reject_bars: dict[str, float],
    review_recall: float,
    columns: Sequence[str] | None = None,
) -> dict[str, float]:
    """One review bar per column, each at most its reject bar: at least `review_recall` of the human images
    rejected or sent to review, as few images without humans sent to review as this search finds. The same
    search as `search`, on the images the reject bars keep (a rejected image costs nothing and counts as caught),
    for the humans still short of the target. A review bar equal to its reject bar is no band (`decide` sends an
    image to review only when it is above a review bar and no reject bar)."""
    columns = list(scores.columns if columns is None else columns)
    human = np.asarray(human, dtype=bool)
    values = column_values(scores, columns)
    kept = ~removed(scores, reject_bars)
    needed = math.ceil(review_recall * human.sum() - 1e-9) - int((human & ~kept).sum())
    bars = fit({c: v[kept] for c, v in values.items()}, human[kept], needed)
    # Every kept image is at or under each reject bar, so a review bar found at or above one catches nothing.
    return {c: min(centred(values[c], bar), reject_bars[c]) for c, bar in bars.items()}


def column_values(scores: pd.DataFrame, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Each column as floats, NaN (a model that did not run) as -inf: below every bar."""
    return {c: np.nan_to_num(scores[c].to_numpy(dtype="float64"), nan=-math.inf) for c in columns}


def fit(values: dict[str, np.ndarray], human: np.ndarray, needed: int) -> dict[str, float]:
    """The search itself (see the module docstring): bars, each NEVER or just under a human image's score, that
    remove at least `needed` of these human images (or as many as any bars can) and as few others as it finds."""
    columns = list(values)
    # A score of 0 (a detector that found nothing) or none at all can never be above a bar: scores live in [0, 1]
    # and no bar goes below 0, so such an image is removed only by another column.
    positive = {c: v > 0 for c, v in values.items()}
    # The bars worth trying, highest first: NEVER, then just under each human image's score (a bar anywhere else
    # can rise to the next such value, keeping every human it removes and sparing as many others or more).
    steps = {c: np.unique(np.concatenate([[NEVER], np.nextafter(v[human & positive[c]], -math.inf)]))[::-1] for c, v
             in values.items()}  # fmt: skip
    reachable = np.zeros(len(human), dtype=bool)
    for c in columns:
        reachable |= positive[c]
    needed = min(needed, int((reachable & human).sum()))

    def hits(bars: dict[str, float], skip: str | None = None) -> np.ndarray:
        hit = np.zeros(len(human), dtype=bool)
        for c, bar in bars.items():
            if c != skip:
                hit |= values[c] > bar
        return hit

    def refit(bars: dict[str, float], fixed: str | None) -> dict[str, float]:
        """Every other bar, in column order, at the highest value that still lets the recall reach the target."""
        bars = dict(bars)
        for _ in range(2):  # a second pass: an earlier column may rise once a later one has come down
            for c in columns:
                if c == fixed:
                    continue
                rest = hits(bars, skip=c)
                short = needed - int((rest & human).sum())
                if short <= 0:
                    bars[c] = NEVER
                    continue
                wanted = np.sort(values[c][human & ~rest & positive[c]])[::-1]
                bars[c] = float(np.nextafter(wanted[min(short, len(wanted)) - 1], -math.inf)) if len(wanted) else NEVER
        return bars

    def cost(bars: dict[str, float]) -> tuple[int, int]:
        hit = hits(bars)
        return (int((hit & human).sum()) < needed, int((hit & ~human).sum()))  # feasibility first

    best = refit(dict.fromkeys(columns, NEVER), None)
    best_cost = cost(best)
    while True:  # move one bar to any of its values, refit the others; keep the best strict improvement
        improved = False
        for c in columns:
            for bar in steps[c]:
                trial = refit({**best, c: float(bar)}, c)
                trial_cost = cost(trial)
                if trial_cost < best_cost:
                    best, best_cost, improved = trial, trial_cost, True
        if not improved:
            return best


def centred(values: np.ndarray, bar: float) -> float:
    """The same removals as `bar`, from the middle of the gap it lies in: halfway between the lowest score it
    removes and the highest it keeps, rounded to 4 decimals where that keeps the same removals. The search
    returns bars just under a score; an image scoring a hair lower would slip through one of those."""
    if bar >= NEVER:
        return NEVER
    finite = values[np.isfinite(values)]
    above, below = finite[finite > bar], finite[finite <= bar]
    if not len(above):
        return NEVER
    low = float(below.max()) if len(below) else 0.0
    high = float(above.min())
    middle = (low + high) / 2
    rounded = round(middle, 4)
    return rounded if low <= rounded < high else middle


def in_review(scores: pd.DataFrame, reject_bars: dict[str, float], review_bars: dict[str, float]) -> np.ndarray:
    """Which images go to review, as `decide` sends them: above some review bar and no reject bar."""
    return removed(scores, review_bars) & ~removed(scores, reject_bars)


@dataclass(frozen=True)
class BandRates:
    """What a review band adds to the reject bars: the images it sends to review (humans and others), the recall
    counting those as caught (a reviewer removes the humans among them), and the review load (the share of all
    images sent to review), with 95 % intervals."""

    images: int
    humans: int
    caught: int  # humans rejected or sent to review
    reviewed_humans: int
    reviewed_others: int

    @property
    def reviewed(self) -> int:
        return self.reviewed_humans + self.reviewed_others

    @property
    def recall(self) -> float:
        return self.caught / self.humans if self.humans else math.nan

    @property
    def review_load(self) -> float:
        return self.reviewed / self.images if self.images else math.nan

    @property
    def recall_ci(self) -> tuple[float, float]:
        return wilson(self.caught, self.humans)

    @property
    def review_load_ci(self) -> tuple[float, float]:
        return wilson(self.reviewed, self.images)


def band_rates(rejected: np.ndarray, reviewed: np.ndarray, human: np.ndarray) -> BandRates:
    """The band's figures from which images are rejected and which go to review."""
    human = np.asarray(human, dtype=bool)
    caught = int(((rejected | reviewed) & human).sum())
    return BandRates(
        len(human), int(human.sum()), caught, int((reviewed & human).sum()), int((reviewed & ~human).sum())
    )


def review_rates(
    scores: pd.DataFrame, human: np.ndarray, reject_bars: dict[str, float], review_bars: dict[str, float]
) -> BandRates:
    return band_rates(removed(scores, reject_bars), in_review(scores, reject_bars, review_bars), human)


@dataclass(frozen=True)
class FoldEstimate:
    """Held-out rates: each image scored by bars searched on the other folds (pooled over folds); `band` too when
    a review band was searched."""

    folds: int
    rates: Rates
    band: BandRates | None = None


def kfold(
    scores: pd.DataFrame,
    human: np.ndarray,
    target_recall: float,
    folds: int = 5,
    seed: int = 0,
    review_recall: float | None = None,
) -> FoldEstimate:
    """k-fold estimate of the search's recall and false removal on images it did not see (stratified by label,
    seeded, so the same data gives the same estimate). With `review_recall`, each fold's review bars are searched
    on the same training folds after its reject bars, and the band's held-out figures come too."""
    human = np.asarray(human, dtype=bool)
    rng = np.random.default_rng(seed)
    fold_of = np.zeros(len(human), dtype=np.int64)
    for label in (True, False):
        members = np.flatnonzero(human == label)
        rng.shuffle(members)
        fold_of[members] = np.arange(len(members)) % folds
    held_out_hit = np.zeros(len(human), dtype=bool)
    held_out_review = np.zeros(len(human), dtype=bool)
    for fold in range(folds):
        test = fold_of == fold
        if not test.any():
            continue
        train, tested = scores[~test].reset_index(drop=True), scores[test].reset_index(drop=True)
        bars = search(train, human[~test], target_recall)
        held_out_hit[test] = removed(tested, bars)
        if review_recall is not None:
            review = search_review(train, human[~test], bars, review_recall)
            held_out_review[test] = in_review(tested, bars, review)
    caught, wrongly = int((held_out_hit & human).sum()), int((held_out_hit & ~human).sum())
    band = None if review_recall is None else band_rates(held_out_hit, held_out_review, human)
    return FoldEstimate(folds, Rates(int(human.sum()), caught, int((~human).sum()), wrongly), band)
