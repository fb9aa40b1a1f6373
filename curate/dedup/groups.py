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
    (unknown dates last), then the smallest image_id."""
    order = pd.DataFrame(
        {
            "label": label,
            "pixels": -(features["width"].fillna(0).astype("int64") * features["height"].fillna(0).astype("int64")),
            "undated": features["date_taken"].isna(),
            "date": features["date_taken"].fillna(""),
            "image_id": features["image_id"],
            "position": np.arange(len(features)),
        }
    ).sort_values(["label", "pixels", "undated", "date", "image_id"], kind="stable")
    first = order.groupby("label", sort=False)["position"].first()
    return first.reindex(label).to_numpy()
