"""A fixed set of dedup features (seeded) with every kind of link the grouping knows: exact copies, pHash near
copies and mirrors, semantic copies, chains that join groups through different methods, rows without a pHash or an
embedding, failed rows, and copies of a reference set. tests/golden/dedup_groups.csv.gz holds what the in-client
grouping of December 2026 (before the grouping moved to the workers) assigned to it: the groups must not change."""

from __future__ import annotations

import numpy as np
import pandas as pd

N = 3000
SHARDS = 3
DIM = 16


def features() -> pd.DataFrame:
    rng = np.random.default_rng(20261202)
    hashes = rng.integers(0, 2**63, size=N, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, N, dtype=np.uint64)
    mirrors = rng.integers(0, 2**63, size=N, dtype=np.uint64)
    digests = np.array([f"{v:064x}" for v in rng.integers(0, 2**62, size=N)], dtype=object)
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)

    def flipped(value: np.uint64, bits: int) -> np.uint64:
        for b in rng.choice(64, size=bits, replace=False):
            value ^= np.uint64(1) << np.uint64(b)
        return value

    for _ in range(150):  # exact copies
        a, b = rng.choice(N, size=2, replace=False)
        digests[b], hashes[b] = digests[a], hashes[a]
    for _ in range(300):  # near copies at 0..8 bits (the default distance is 5)
        a, b = rng.choice(N, size=2, replace=False)
        hashes[b] = flipped(hashes[a], int(rng.integers(0, 9)))
    for _ in range(60):  # mirror images: b's mirror hash near a's hash
        a, b = rng.choice(N, size=2, replace=False)
        mirrors[b] = flipped(hashes[a], int(rng.integers(0, 4)))
    for _ in range(200):  # semantic copies around cosine 0.95
        a, b = rng.choice(N, size=2, replace=False)
        vectors[b] = vectors[a] + rng.normal(scale=float(rng.uniform(0.05, 0.5)), size=DIM) * np.linalg.norm(
            vectors[a]
        ) / np.sqrt(DIM)
    phash_ok = rng.random(N) > 0.03
    has_embedding = rng.random(N) > 0.1
    error = np.where(rng.random(N) < 0.01, "ValueError: planted", None)
    width = rng.choice([640, 800, 1024, 1024], size=N)
    height = rng.choice([480, 600, 768], size=N)
    dates = np.where(rng.random(N) < 0.2, None, [f"2012-0{1 + d % 9}-1{d % 10}" for d in rng.integers(0, 90, N)])
    embeddings = [vectors[i] if has_embedding[i] and error[i] is None else None for i in range(N)]
    return pd.DataFrame(
        {
            "image_id": pd.array([f"img{i:05d}" for i in rng.permutation(N)], dtype="string"),
            "shard": np.repeat(np.arange(SHARDS), N // SHARDS).astype(np.int64),
            "sha256": pd.array(digests, dtype="string"),
            "phash": np.where(phash_ok, hashes, 0).astype(np.uint64).view(np.int64),
            "phash_mirror": np.where(phash_ok, mirrors, 0).astype(np.uint64).view(np.int64),
            "phash_ok": phash_ok & (error == None),  # noqa: E711 - elementwise
            "width": pd.array(width, dtype="Int64"),
            "height": pd.array(height, dtype="Int64"),
            "date_taken": pd.array(dates, dtype="string"),
            "dedup_error": pd.array(error, dtype="string"),
            "embedding": pd.Series(embeddings, dtype=object),
        }
    )


def reference_hashes(frame: pd.DataFrame) -> pd.DataFrame:
    """A reference set of hashes: the sha256 of 5 rows and pHashes 2 bits away from 5 others."""
    rows = frame.iloc[[7, 70, 700, 1700, 2700]]
    near = frame.iloc[[11, 111, 1111, 2111, 2222]]
    values = near["phash"].to_numpy().view(np.uint64) ^ np.uint64(0b101)
    return pd.DataFrame(
        {
            "sha256": list(rows["sha256"]) + [None] * 5,
            "phash": [None] * 5 + [f"{int(v):016x}" for v in values],
        }
    )
