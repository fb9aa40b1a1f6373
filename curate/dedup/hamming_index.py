"""All pairs of 64-bit hashes within Hamming distance k, without comparing all pairs: multi-index hashing.

The 64 bits are cut into m chunks of b bits. If two hashes differ in at most k bits, then (pigeonhole) some chunk
differs in at most floor(k / m) bits. So for every chunk, each hash looks up the hashes whose chunk equals its own
with up to floor(k / m) bits flipped (a direct-address table of 2^b buckets), and only those candidates are
compared in full. m and b are chosen per call from the set's size to minimise the expected lookups plus
candidates (Norouzi et al., "Fast Search in Hamming Space with Multi-Index Hashing", CVPR 2012).

faiss (a dependency) has the same scheme as `IndexBinaryMultiHash`; measured against it (`bench/dedup.py --compare`,
bench/README.md), this one found the same pairs 10-23x faster at 1M and 4M hashes in 0.6x the peak memory, so it
stays.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from functools import cache

import numpy as np

MAX_TABLE_BITS = 24  # 16M buckets of int64 offsets = 128 MiB per table at most
BLOCK = 1 << 22  # candidate pairs materialised at once


@cache
def flip_masks(bits: int, radius: int) -> np.ndarray:
    """Every `bits`-bit mask with at most `radius` ones."""
    masks = [0]
    for r in range(1, radius + 1):
        masks += [sum(1 << i for i in combo) for combo in itertools.combinations(range(bits), r)]
    return np.array(masks, dtype=np.int64)


def plan(n_index: int, n_query: int, k: int) -> tuple[int, int]:
    """(m chunks, b bits per chunk) with the least expected work for uniform hashes."""
    best: tuple[float, int, int] | None = None
    for m in range(1, 9):
        b = min(64 // m, MAX_TABLE_BITS)
        probes = m * sum(math.comb(b, r) for r in range(k // m + 1))
        cost = n_query * probes * (1.0 + n_index / 2.0**b)
        if best is None or cost < best[0]:
            best = (cost, m, b)
    assert best is not None
    return best[1], best[2]


def _chunk(hashes: np.ndarray, index: int, bits: int) -> np.ndarray:
    return ((hashes >> np.uint64(index * bits)) & np.uint64((1 << bits) - 1)).astype(np.int64)


def chunks(n_index: int, n_query: int, k: int) -> int:
    """How many chunk tables `plan` chooses for a search of this size: the units it can be split into, one task each
    (`near_pairs(..., chunk=c, m=chunks(...))`). Any m finds every pair: the size only changes the speed."""
    return plan(n_index, n_query, k)[0]


def _layout(n_index: int, n_query: int, k: int, m: int | None) -> tuple[int, int]:
    return plan(n_index, n_query, k) if m is None else (m, min(64 // m, MAX_TABLE_BITS))


def _pairs_per_chunk(
    index_hashes: np.ndarray, query_hashes: np.ndarray, k: int, m: int, b: int, only: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Candidate (query, index) position pairs within distance k, chunk table by chunk table (with repeats).

    Both sides are visited in the order of their chunk value: flipping a few bits of sorted keys gives runs of
    nearby table slots, so the lookups and the full-hash comparisons read memory almost sequentially (at 4M
    random order made the search cache-bound). `only`: that chunk's table alone (one task of a split search)."""
    radius = k // m
    masks = flip_masks(b, radius)
    same = index_hashes is query_hashes
    for c in range(m) if only is None else [only]:
        keys = _chunk(index_hashes, c, b)
        order = np.argsort(keys, kind="stable")
        sorted_hashes = index_hashes[order]
        offsets = np.zeros((1 << b) + 1, dtype=np.int64)
        np.cumsum(np.bincount(keys, minlength=1 << b), out=offsets[1:])
        if same:
            query_order, query_keys, query_sorted = order, keys[order], sorted_hashes
        else:
            raw = _chunk(query_hashes, c, b)
            query_order = np.argsort(raw, kind="stable")
            query_keys, query_sorted = raw[query_order], query_hashes[query_order]
        del keys
        for mask in masks:
            target = query_keys ^ mask
            start = offsets[target]
            count = offsets[target + 1] - start
            hit = np.nonzero(count)[0]
            for lo in range(0, len(hit), BLOCK // 8):
                part = hit[lo : lo + BLOCK // 8]
                n = count[part]
                queries = np.repeat(part, n)
                # slots start[q] .. start[q] + n[q] - 1 of the sorted table, for every hit query q
                found = np.repeat(start[part] - np.cumsum(n) + n, n) + np.arange(len(queries))
                close = np.bitwise_count(query_sorted[queries] ^ sorted_hashes[found]) <= k
                yield query_order[queries[close]], order[found[close]]


def near_pairs(
    hashes: np.ndarray, k: int, chunk: int | None = None, m: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with i < j for every pair of positions in `hashes` (uint64) within Hamming distance k, each once.
    With `chunk` (0 .. m - 1, m as given or planned) only the pairs that chunk's table finds: the union over every
    chunk is the whole answer, so a search can run as one task per chunk, each given the same m."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    if k < 0 or len(hashes) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    m, b = _layout(len(hashes), len(hashes), k, m)
    keys = []
    for q, f in _pairs_per_chunk(hashes, hashes, k, m, b, chunk):
        keep = q < f
        keys.append(q[keep] * len(hashes) + f[keep])
    unique = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
    return unique // len(hashes), unique % len(hashes)


def matches(
    index_hashes: np.ndarray, query_hashes: np.ndarray, k: int, chunk: int | None = None, m: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(query position, index position) for every query within distance k of an index hash, each pair once (with
    `chunk`, that chunk table's share, as in `near_pairs`)."""
    index_hashes = np.ascontiguousarray(index_hashes, dtype=np.uint64)
    query_hashes = np.ascontiguousarray(query_hashes, dtype=np.uint64)
    if k < 0 or len(index_hashes) == 0 or len(query_hashes) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    m, b = _layout(len(index_hashes), len(query_hashes), k, m)
    keys = [q * len(index_hashes) + f for q, f in _pairs_per_chunk(index_hashes, query_hashes, k, m, b, chunk)]
    unique = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
    return unique // len(index_hashes), unique % len(index_hashes)


def brute_force_pairs(hashes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The all-pairs reference (quadratic: tests and the benchmark's agreement check only)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    out_i, out_j = [], []
    for start in range(0, len(hashes), 1024):
        block = hashes[start : start + 1024]
        distance = np.bitwise_count(block[:, None] ^ hashes[None, :])
        i, j = np.nonzero(distance <= k)
        i = i + start
        keep = i < j
        out_i.append(i[keep])
        out_j.append(j[keep])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64)
