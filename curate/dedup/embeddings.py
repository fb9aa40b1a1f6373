"""Pairs of L2-normalised embeddings with cosine >= t, through faiss: exact (flat) for small sets, IVF beyond."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

QUERY_BLOCK = 16_384


def _index(vectors: np.ndarray, flat_max: int, nprobe: int, seed: int = 0) -> Any:
    import faiss

    index: Any
    n, dim = vectors.shape
    if n <= flat_max:
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = max(1, int(4 * math.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(n, size=min(n, 64 * nlist), replace=False)
        index.cp.seed = seed
        index.train(vectors[np.sort(sample)])
        index.nprobe = nprobe
    index.add(vectors)
    return index


def similar_pairs(vectors: np.ndarray, cosine: float, flat_max: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j), i < j, of rows with cosine >= `cosine` (exact up to flat_max rows; IVF may miss a few beyond)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(vectors) < 2 or cosine <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    index = _index(vectors, flat_max, nprobe)
    out_i, out_j = [], []
    for start in range(0, len(vectors), QUERY_BLOCK):
        limits, _, found = index.range_search(vectors[start : start + QUERY_BLOCK], cosine - 1e-6)
        queries = np.repeat(np.arange(len(limits) - 1) + start, np.diff(limits).astype(np.int64))
        keep = queries < found
        out_i.append(queries[keep])
        out_j.append(found[keep].astype(np.int64))
    return np.concatenate(out_i).astype(np.int64), np.concatenate(out_j)


def matches(index_vectors: np.ndarray, query_vectors: np.ndarray, cosine: float) -> tuple[np.ndarray, np.ndarray]:
    """(query row, index row) with cosine >= `cosine`, exact (reference sets are evaluation-set sized)."""
    import faiss

    if len(index_vectors) == 0 or len(query_vectors) == 0 or cosine <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    index = faiss.IndexFlatIP(index_vectors.shape[1])
    index.add(np.ascontiguousarray(index_vectors, dtype=np.float32))
    out_q, out_r = [], []
    for start in range(0, len(query_vectors), QUERY_BLOCK):
        block = np.ascontiguousarray(query_vectors[start : start + QUERY_BLOCK], dtype=np.float32)
        limits, _, found = index.range_search(block, cosine - 1e-6)
        out_q.append(np.repeat(np.arange(len(limits) - 1) + start, np.diff(limits).astype(np.int64)))
        out_r.append(found.astype(np.int64))
    return np.concatenate(out_q).astype(np.int64), np.concatenate(out_r)
