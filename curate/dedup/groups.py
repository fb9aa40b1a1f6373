"""Duplicate groups from pairs, and one deterministic representative per group."""

from __future__ import annotations

import numpy as np
import pandas as pd


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of n nodes joined by edges (i, j): each node's label is its component's smallest
    node. Min-label hooking with pointer jumping: a few vectorised rounds, no Python loop over edges."""
    label = np.arange(n, dtype=np.int64)
    if len(i) == 0:
        return label
    while True:
        low = np.minimum(label[i], label[j])
        np.minimum.at(label, label[i], low)
        np.minimum.at(label, label[j], low)
        while True:  # pointer jumping: every node points at its root
            jumped = label[label]
            if np.array_equal(jumped, label):
                break
            label = jumped
        if np.array_equal(label[i], label[j]):
            return label


def representatives(features: pd.DataFrame, label: np.ndarray) -> np.ndarray:
    """Position of each group's representative, per row: the highest resolution, then the earliest date taken
    (unknown dates last), then the smallest image_id. Only rows in groups of two or more are sorted: a single
    row represents itself."""
    n = len(label)
    rep = np.arange(n, dtype=np.int64)
    grouped = np.nonzero(np.bincount(label, minlength=n)[label] > 1)[0]
    if len(grouped) == 0:
        return rep
    members = features.iloc[grouped]
    order = pd.DataFrame(
        {
            "label": label[grouped],
            "pixels": -(
                members["width"].fillna(0).astype("int64") * members["height"].fillna(0).astype("int64")
            ).to_numpy(),
            "undated": members["date_taken"].isna().to_numpy(),
            "date": members["date_taken"].fillna("").to_numpy(),
            "image_id": members["image_id"].to_numpy(),
            "position": grouped,
        }
    ).sort_values(["label", "pixels", "undated", "date", "image_id"], kind="stable")
    first = order.groupby("label", sort=False)["position"].first()
    rep[grouped] = first.reindex(label[grouped]).to_numpy()
    return rep
