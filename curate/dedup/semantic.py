"""Semantic duplicates at PASS scale: pairs of embeddings with cosine >= t, found by clustering (SemDeDup) as Dask
tasks over per-shard Parquet files, so that no process holds all the embeddings.

Why clusters (SemDeDup, Abbas et al. 2023). Two embeddings with cosine >= 0.95 are close, so they almost always
fall in the same k-means cluster: cluster the embeddings, then compare all pairs exactly inside each cluster. The
comparison is exact (a cosine for every pair compared); the clusters only decide which pairs are compared, so a
found pair is always a true pair and only recall is at stake.

Why a tree. With k flat clusters over n rows, assigning every row costs n * k dot products and the searches
n * (n / k): at least 2 n^1.5 whatever k is (32x per 10x rows). So the search happens in small *leaf* clusters of
about `leaf_rows` rows, and rows find their leaves through *coarse* clusters of about `COARSE_ROWS` rows: a row
is compared with the coarse centroids, then with the leaf centroids of its `PROBES` most similar coarse clusters
(n / COARSE_ROWS + PROBES * COARSE_ROWS / leaf_rows dot products, not n / leaf_rows). The leaves form one flat
partition (each coarse cluster's leaves are trained on its share of a sample), so a pair meets one kind of
boundary, a leaf's, whichever coarse clusters its rows are in; a coarse cluster is the unit of work: one task
searches all of its leaves. (A first version searched leaves inside each coarse cluster, trained there: a pair
then had two boundaries to survive, and the two margins compounded: 7x the memberships, 67x the time per 10x.)

The radius problem, and the margin. A pair near the boundary of two leaves can have its rows in different leaves,
and a search inside each leaf misses it. So a row has a *home* leaf (its most similar centroid found through the
tree) and also *queries* the leaves whose boundary with its home lies within `margin` x sqrt(2 - 2t) of it (the
`max_extra` nearest such boundaries at most): inside a leaf the homes are compared with each other and with the
queries. The boundary of leaves A and B is the hyperplane of points as similar to both centroids; a row's
distance to it is (s_A - s_B) / |c_A - c_B|. If a (home A) and b (home B) are a pair, the hyperplane separates them,
so a is within |a - b| <= sqrt(2 - 2t) of it: margin 1 finds every pair, provably (but for the cap and the probes;
tests/test_semantic_dedup.py checks it against brute force), and sends most rows to dozens of leaves. Smaller
margins rely on a - b being short along the boundary's normal. The defaults are measured (`bench/dedup.py
--semantic-scale`): on clustered synthetic 512-d data whose copies move most along the directions the data varies
most in (so across the boundaries k-means draws), recall against brute force at 100k and of the planted copies at
1M, all with leaf_rows 1,000, one process (CPU seconds at 1M):
    margin 0.0                 100k recall 0.65
    margin 0.3, max_extra 4    100k 0.991    1M 0.937 (probes 4, 81 s) / 0.959 (8) / 0.968 (all 20: flat)
    margin 0.5, max_extra 8    1M 0.986 (probes 8, 169 s); leaf_rows 2,000: 0.991 (279 s)
    margin 0.4, max_extra 12   100k 1.000    1M 0.991 (probes 8, 189 s)
    margin 0.5, max_extra 12   100k 1.000    1M 0.992 (probes 8, 222 s)
                               1M with 80 coarse clusters (as 4M has): 0.986 (probes 8, 217 s) / 0.995 (24, 237 s)
and at 4M rows (80 coarse clusters, probes 8) the planted recall was 0.972: the tree's probes miss more of a
row's near leaves as coarse clusters multiply, and denser data puts more leaf boundaries through its dense
regions. So the defaults are margin 0.5, max_extra 12, probes 16, leaf_rows 1,000 (about 11 memberships per row).
With them (bench/dedup.py --semantic-scale, 2 workers x 1 thread): 100k recall 1.000 against brute force (1,008
pairs), 12.7 s; 1M planted recall 0.997, 133 s; 4M 0.988 (just short of 0.99), 494 s (8.8x per 10x rows); peak
RSS 0.56 GB in the client, 1.54 GB in a worker. At 4M, probes 24 would be the next lever (+0.009 at 1M rows with
80 coarse clusters, for 1.7x the assign round).

Pairs come once: each leaf yields a pair once (home-home pairs in the upper triangle, home-query pairs once since a
row is either home or query in a leaf), as (i, j) with i < j by global position, and the client merges all the
leaves' pairs with np.unique (a pair is found twice when each row queries the other's leaf).

The driver, `semantic_pairs`, runs five rounds of tasks:
(a) per shard: its rows of two samples chosen by a hash of the global position (so a row is in them or not
    whatever task reads it, whatever the number of workers): the coarse sample (`sample_size` rows in all) goes to
    the client, which trains the coarse centroids (spherical k-means, `train_centroids`); the leaf sample
    (LEAF_SAMPLE_PER_CENTROID rows per leaf) goes to work/sample-<shard>.parquet;
(a2) per shard: its leaf sample by coarse cluster -> work/by-cluster-<shard>.parquet, a row group per cluster;
(a3) per coarse cluster: its leaf centroids, trained on its sample rows; the client writes all of them to
    work/leaves.npy (and work/leaf_groups.npy: each leaf's coarse cluster);
(b) per shard: every embedded row's home and query leaves (`memberships` through the tree); each row once per
    coarse cluster its leaves belong to -> work/rows-<shard>.parquet (position, float16 vector as stored), its
    memberships -> work/members-<shard>.parquet (position, leaf, home), one row group per coarse cluster;
(c) per coarse cluster: its row groups from every shard, in shard order (so its rows are in global order), and an
    exact search of each of its leaves (`leaf_pairs`); returns the pairs, which the client merges.

Determinism. Every task's input depends only on the data and the parameters (never on which worker runs it or
when), rows are always in global order, results are combined by tag in sorted order, samples are chosen by hash
and k-means runs single-threaded with a fixed seed (faiss's k-means gave the same centroids with 1 and 2 threads,
but `train_centroids` does not rely on it). Same parts and parameters -> byte-identical centroids and the same
pairs, with any number of workers and any completion order (tests/test_semantic_dedup.py).

Memory. A task holds one shard's embeddings (a, b), a share of the sample (a2, a3), or one coarse cluster's rows
(its homes and the rows that query its leaves) as float16, plus one leaf's rows as float32 (c). The client holds the
coarse sample (`sample_size` rows), the centroids, the row-group index and the pairs, never the embeddings. Coarse
clusters are about COARSE_ROWS homes, but k-means does not balance them (a dense region makes a bigger one) and the
rows that query their leaves come on top (`stats`: largest_cluster).

Precision of the stored vectors: see `curate.dedup.embedding_store` (float16; cosines within 2.4e-5 of float32 at
0.95 after the renormalisation that `cluster_pairs` does).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.dedup import embedding_store

COARSE_ROWS = 50_000  # rows per coarse cluster: one search task's worth
LEAF_ROWS = 1_000  # rows per leaf cluster: one exact search
MARGIN = 0.5  # a row also queries leaves whose boundary is within this x sqrt(2 - 2 cosine) of it
MAX_EXTRA = 12  # ... at most this many of them (the nearest boundaries)
PROBES = 16  # coarse clusters whose leaves a row is compared with
SAMPLE_SIZE = 65_536  # rows sampled to train the coarse centroids
LEAF_SAMPLE_PER_CENTROID = 40  # rows sampled per leaf centroid to train them
LEAF_SAMPLE_ROWS = 1_000  # ... and at least this many rows in all
KMEANS_ITERATIONS = 20
TOLERANCE = 1e-6  # float32 rounding of a cosine computed at exactly the threshold
BLOCK_ELEMENTS = 1 << 23  # similarities materialised at once (32 MiB of float32)
CANDIDATES = 1 << 21  # (row, leaf) similarities materialised at once by `memberships`

RunTasks = Callable[[Callable[..., Any], dict[Any, tuple[Any, ...]], str], dict[Any, Any]]


def train_centroids(sample: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(k, d) float32 unit centroids of spherical k-means on `sample` (at most len(sample) of them). Deterministic:
    the same sample, k and seed give byte-identical centroids (faiss's k-means, one thread, fixed seed)."""
    import faiss

    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if sample.ndim != 2 or len(sample) == 0:
        raise ValueError(f"k-means needs a non-empty (n, d) sample, not {sample.shape}")
    k = max(1, min(k, len(sample)))
    kmeans = faiss.Kmeans(
        sample.shape[1], k, niter=KMEANS_ITERATIONS, seed=seed, spherical=True, verbose=False,
        min_points_per_centroid=1, max_points_per_centroid=1 << 30,  # the caller sampled: faiss must not again
    )  # fmt: skip
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        kmeans.train(_unit(sample))
    finally:
        faiss.omp_set_num_threads(threads)
    return _unit(np.array(kmeans.centroids, dtype=np.float32))


def assign(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each row's nearest centroid by inner product (its home cluster), int32; ties go to the lower index."""
    homes = [_similarities(block, centroids).argmax(axis=1) for _, block in _blocks(vectors, len(centroids))]
    return np.concatenate(homes).astype(np.int32) if homes else np.zeros(0, np.int32)


def memberships(
    vectors: np.ndarray,
    centroids: np.ndarray,
    reach: float,
    max_extra: int = MAX_EXTRA,
    *,
    coarse: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    probes: int = PROBES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, centroid, home) for every row's home (its most similar centroid; ties to the lower index) and for each
    other centroid whose boundary with the home (the hyperplane of points as similar to both) is within `reach` of
    the row: the `max_extra` nearest such boundaries at most (ties to the lower index). Sorted by centroid, then row.

    With `coarse` (centroids of coarse clusters) and `groups` (each centroid's coarse cluster, ascending), a row is
    compared only with the centroids of its `probes` most similar coarse clusters that have any, and its home is
    the most similar of those (a tree: n x (coarse + probes x centroids per coarse cluster) dot products instead of
    n x centroids)."""
    centroids = np.asarray(centroids, np.float32)
    tree: tuple[np.ndarray, np.ndarray, int] | None = None
    width = len(centroids)
    if coarse is not None and groups is not None:
        coarse = np.asarray(coarse, np.float32)
        bounds = np.searchsorted(np.asarray(groups), np.arange(len(coarse) + 1)).astype(np.int64)
        tree = (coarse, bounds, probes)
        width = len(coarse) + probes * int(np.diff(bounds).max(initial=1))
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start, block in _blocks(vectors, width, CANDIDATES):
        rows, cells, home = _choose(block, _candidates(block, centroids, tree), centroids, reach, max_extra)
        out.append((rows + start, cells, home))
    if not out:
        return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool)
    row = np.concatenate([o[0] for o in out])
    cell = np.concatenate([o[1] for o in out]).astype(np.int32)
    is_home = np.concatenate([o[2] for o in out])
    order = np.lexsort((row, cell))
    return row[order], cell[order], is_home[order]


Pieces = list[tuple[np.ndarray, int, np.ndarray]]  # (rows of a block, first centroid, their similarities)


def _candidates(block: np.ndarray, centroids: np.ndarray, tree: tuple[np.ndarray, np.ndarray, int] | None) -> Pieces:
    """The similarities each row of the block is compared on, by run of centroids (ascending)."""
    block = np.asarray(block, np.float32)
    if tree is None:
        return [(np.arange(len(block)), 0, block @ centroids.T)]
    coarse, bounds, probes = tree
    near = block @ coarse.T
    near[:, np.diff(bounds) == 0] = -np.inf  # a coarse cluster without centroids has nothing to offer
    p = min(probes, int((np.diff(bounds) > 0).sum()))
    top = np.argpartition(-near, p - 1, axis=1)[:, :p] if p < len(coarse) else np.argsort(-near, axis=1)[:, :p]
    flat = top.ravel()
    order = np.argsort(flat, kind="stable")  # (row, probed cluster) pairs, by cluster, rows ascending in each
    rows_of = (order // p).astype(np.int64)
    pieces: Pieces = []
    for lo, hi in _runs(flat[order]):
        cluster = int(flat[order[lo]])
        first, last = int(bounds[cluster]), int(bounds[cluster + 1])
        rows = rows_of[lo:hi]
        pieces.append((rows, first, block[rows] @ centroids[first:last].T))
    return pieces


def _choose(
    block: np.ndarray, pieces: Pieces, centroids: np.ndarray, reach: float, max_extra: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """memberships of one block from its candidate similarities."""
    n = len(block)
    best = np.full(n, -np.inf, np.float32)
    home = np.zeros(n, np.int64)
    for rows, first, sims in pieces:  # centroids ascending, so a strict > keeps ties at the lower index
        column = sims.argmax(axis=1)
        value = sims[np.arange(len(rows)), column]
        better = value > best[rows]
        best[rows[better]] = value[better]
        home[rows[better]] = first + column[better]
    extra_rows, extra_cells, extra_distance = [], [], []
    for rows, first, sims in pieces:
        # distance to the boundary = similarity gap / |c_home - c|; |c_home - c| from one more product
        own = centroids[home[rows]] @ centroids[first : first + sims.shape[1]].T
        apart = np.sqrt(np.maximum(2 - 2 * own, 0))
        gap = best[rows][:, None] - sims
        distance = np.divide(gap, apart, out=np.full_like(gap, np.inf), where=apart > 1e-6)
        r, c = np.nonzero(distance <= reach)
        other = first + c != home[rows[r]]  # the home itself: apart is 0 only up to rounding
        extra_rows.append(rows[r[other]])
        extra_cells.append(first + c[other])
        extra_distance.append(distance[r[other], c[other]])
    row = np.concatenate(extra_rows) if extra_rows else np.zeros(0, np.int64)
    cell = np.concatenate(extra_cells) if extra_cells else np.zeros(0, np.int64)
    distance = np.concatenate(extra_distance) if extra_distance else np.zeros(0, np.float32)
    order = np.lexsort((cell, distance, row))  # per row, nearest boundary first
    row, cell = row[order], cell[order]
    rank = np.arange(len(row)) - np.searchsorted(row, row)
    keep = rank < max_extra
    rows_out = np.concatenate([np.arange(n, dtype=np.int64), row[keep]])
    cells_out = np.concatenate([home, cell[keep]])
    return rows_out, cells_out, np.concatenate([np.ones(n, bool), np.zeros(int(keep.sum()), bool)])


def cluster_pairs(
    vectors_home: np.ndarray,
    positions_home: np.ndarray,
    queries: np.ndarray,
    query_positions: np.ndarray,
    cosine: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact search inside one cluster: (i, j), global positions with i < j, of every pair of homes and every
    (home, query) pair with cosine >= `cosine`, each once. Vectors are renormalised in float32 first (float16
    rows are off unit length by up to 1e-4, which would move a cosine of 0.95 by as much)."""
    homes, others = _unit(np.asarray(vectors_home, np.float32)), _unit(np.asarray(queries, np.float32))
    return _exact_pairs(homes, np.asarray(positions_home, np.int64), others, np.asarray(query_positions, np.int64),
                        cosine)  # fmt: skip


def _exact_pairs(
    homes: np.ndarray, positions_home: np.ndarray, others: np.ndarray, positions_other: np.ndarray, cosine: float
) -> tuple[np.ndarray, np.ndarray]:
    """cluster_pairs on float32 unit vectors."""
    threshold = cosine - TOLERANCE
    out_i, out_j = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    step = max(1, BLOCK_ELEMENTS // max(1, len(homes) + len(others)))
    for start in range(0, len(homes), step):
        block = homes[start : start + step]
        # homes from this block on: the block's own square's upper triangle and everything to its right
        r, c = _hits(block @ homes[start:].T, threshold)
        keep = c > r
        pairs = [(positions_home[start + r[keep]], positions_home[start + c[keep]])]
        if len(others):
            r, c = _hits(block @ others.T, threshold)
            pairs.append((positions_home[start + r], positions_other[c]))
        for a, b in pairs:
            distinct = a != b  # a row listed as both home and query would pair with itself
            out_i.append(np.minimum(a, b)[distinct])
            out_j.append(np.maximum(a, b)[distinct])
    return np.concatenate(out_i), np.concatenate(out_j)


def _hits(sims: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of the entries >= threshold. Hits are rare: the rows that have any are found first, by a
    row maximum, and only those rows are scanned (np.nonzero over the whole matrix took 8x the comparison)."""
    if sims.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.flatnonzero(sims.max(axis=1) >= threshold)
    r, c = np.nonzero(sims[rows] >= threshold)
    return rows[r], c


def leaf_pairs(
    vectors: np.ndarray,
    positions: np.ndarray,
    members: np.ndarray,
    leaves: np.ndarray,
    home: np.ndarray,
    cosine: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of one coarse cluster's leaves: `vectors` (as stored: float16, near unit length) at global
    `positions` (its rows, each once), and memberships (index into vectors, leaf, whether the leaf is the row's
    home); each leaf searched exactly (`cluster_pairs`). (i, j), i < j, possibly repeated (a pair can be found in
    both rows' leaves). Only one leaf's rows are in float32 at a time: a cluster's rows as float32 unit vectors
    were 2x its float16 ones (2.75 GB workers at 4M rows)."""
    scale = _inverse_norms(vectors)
    order = np.lexsort((members, leaves))
    members, leaves, home = members[order], leaves[order], home[order]
    out_i, out_j = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for lo, hi in _runs(leaves):
        h, q = members[lo:hi][home[lo:hi]], members[lo:hi][~home[lo:hi]]
        if len(h):
            unit_h = vectors[h].astype(np.float32) * scale[h, None]
            unit_q = vectors[q].astype(np.float32) * scale[q, None]
            i, j = _exact_pairs(unit_h, positions[h], unit_q, positions[q], cosine)
            out_i.append(i)
            out_j.append(j)
    return np.concatenate(out_i), np.concatenate(out_j)


def _inverse_norms(vectors: np.ndarray) -> np.ndarray:
    """1 / |row| in float32, a block at a time (float16 arithmetic would round the norms themselves)."""
    scale = np.empty(len(vectors), np.float32)
    for start, block in _blocks(vectors, vectors.shape[1] if vectors.ndim == 2 else 1):
        scale[start : start + len(block)] = 1 / np.maximum(np.linalg.norm(block.astype(np.float32), axis=1), 1e-12)
    return scale


def semantic_pairs(
    parts: list[Path],
    column: str,
    cosine: float,
    work: Path,
    run_tasks: RunTasks,
    *,
    clusters: int | None = None,
    sample_size: int = SAMPLE_SIZE,
    seed: int = 0,
    margin: float = MARGIN,
    max_extra: int = MAX_EXTRA,
    leaf_rows: int = LEAF_ROWS,
    probes: int = PROBES,
    stats: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(i, j), i < j, sorted, unique: global positions of every pair of rows of `parts` whose embeddings (column
    `column`, written by `embedding_store.encode`; null = no embedding, never paired) have cosine >= `cosine`, up
    to the clusters' recall (see the module docstring). Row k of parts[s] is position (rows of parts[:s]) + k.

    `run_tasks(func, {tag: args}, desc)` runs func(*args) for every tag as a Dask task and returns {tag: result};
    a missing result raises RuntimeError. `work` takes the intermediate files (samples, centroids, and the rows
    by coarse cluster: 1.5x the parts' embeddings at 100k rows, 4x at 4M). `clusters`: coarse clusters (default:
    embedded rows / COARSE_ROWS); `sample_size`: rows that train them. `margin`: a row also queries the leaves
    whose boundary with its home is within margin x sqrt(2 - 2 cosine), the farthest apart a pair can be (1: every
    pair is found, provably, but for the `max_extra` cap and the tree's `probes`). `leaf_rows`: rows per leaf
    cluster. `stats`, when given, receives counts and seconds per round."""
    info: dict[str, Any] = {} if stats is None else stats
    empty = np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = [pq.read_metadata(part).num_rows for part in parts]
    offsets = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)]).astype(np.int64)
    n = int(offsets[-1])
    info.update(rows=n, parts=len(parts))
    shards = [s for s in range(len(parts)) if rows[s] > 0]
    if n < 2 or cosine <= 0 or not shards:
        return empty
    work.mkdir(parents=True, exist_ok=True)

    clock = time.perf_counter()
    coarse, embedded = _coarse(parts, column, offsets, shards, work, run_tasks, clusters, sample_size, seed, leaf_rows)
    info.update(embedded=embedded, clusters=0 if coarse is None else len(coarse))
    if coarse is None:
        return empty
    info.update(leaves=_leaves(shards, work, run_tasks, coarse, seed), seconds_train=time.perf_counter() - clock)

    clock = time.perf_counter()
    reach = margin * math.sqrt(max(0.0, 2 - 2 * cosine))
    tasks = {s: (parts[s], column, int(offsets[s]), work, reach, max_extra, probes, s) for s in shards}
    placed = _run(run_tasks, _assign_task, tasks, "semantic dedup: assign")
    sources: dict[int, list[tuple[int, int]]] = {}
    for s in shards:
        for cell, (group, *_) in sorted(placed[s].items()):
            sources.setdefault(cell, []).append((s, group))
    stored = {c: sum(placed[s][c][1] for s in shards if c in placed[s]) for c in sources}
    info.update(memberships=sum(placed[s][c][2] for s in shards for c in placed[s]), stored=sum(stored.values()),
                largest_cluster=max(stored.values(), default=0))  # fmt: skip
    info["seconds_assign"] = time.perf_counter() - clock

    clock = time.perf_counter()
    searches = {c: (work, sources[c], cosine) for c in sorted(sources)}
    found = _run(run_tasks, _search_task, searches, "semantic dedup: search")
    info["seconds_search"] = time.perf_counter() - clock

    clock = time.perf_counter()
    keys = [found[c][0] * n + found[c][1] for c in sorted(searches)]
    unique = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
    info.update(pairs=len(unique), seconds_merge=time.perf_counter() - clock)
    return unique // n, unique % n


def _coarse(
    parts: list[Path],
    column: str,
    offsets: np.ndarray,
    shards: list[int],
    work: Path,
    run_tasks: RunTasks,
    clusters: int | None,
    sample_size: int,
    seed: int,
    leaf_rows: int,
) -> tuple[np.ndarray | None, int]:
    """Round a: the samples (the leaves' to work/sample-<shard>.parquet, the coarse one to the client) -> the
    coarse centroids (work/centroids.npy; None when fewer than two rows have embeddings) and the embedded rows."""
    n = int(offsets[-1])
    coarse_rate = min(1.0, sample_size / n)
    # and at least LEAF_SAMPLE_ROWS rows, so that a small run still has a few leaves
    leaf_rate = min(1.0, max(LEAF_SAMPLE_PER_CENTROID / max(1, leaf_rows), LEAF_SAMPLE_ROWS / n))
    tasks = {
        s: (parts[s], column, int(offsets[s]), coarse_rate, leaf_rate, seed, _sample_path(work, s)) for s in shards
    }
    sampled = _run(run_tasks, _sample_task, tasks, "semantic dedup: sample")
    embedded = sum(sampled[s][1] for s in shards)
    sample = np.concatenate([sampled[s][0] for s in shards])
    if embedded < 2 or len(sample) == 0:
        return None, embedded
    k = clusters if clusters is not None else math.ceil(embedded / COARSE_ROWS)
    coarse = train_centroids(sample, k, seed)
    np.save(work / "centroids.npy", coarse)
    return coarse, embedded


def _leaves(shards: list[int], work: Path, run_tasks: RunTasks, coarse: np.ndarray, seed: int) -> int:
    """Rounds a2 and a3: the leaf sample by coarse cluster, then each coarse cluster's leaf centroids, trained on
    its share of the sample (a cluster the sample missed: its own centroid as its one leaf) -> work/leaves.npy and
    work/leaf_groups.npy (each leaf's coarse cluster, ascending). Returns the number of leaves."""
    tasks = {s: (_sample_path(work, s), work / "centroids.npy", _sample_path(work, s, "by-cluster")) for s in shards}
    placed = _run(run_tasks, _sample_assign_task, tasks, "semantic dedup: sample by cluster")
    sources: dict[int, list[tuple[Path, int]]] = {}
    for s in shards:
        for cell, group in sorted(placed[s].items()):
            sources.setdefault(cell, []).append((_sample_path(work, s, "by-cluster"), group))
    trained = _run(run_tasks, _leaf_task, {c: (sources[c], _salt(seed, c)) for c in sorted(sources)},
                   "semantic dedup: leaves")  # fmt: skip
    per_cell = [trained.get(c, coarse[c : c + 1]) for c in range(len(coarse))]
    np.save(work / "leaves.npy", np.concatenate(per_cell).astype(np.float32))
    np.save(work / "leaf_groups.npy", np.repeat(np.arange(len(coarse), dtype=np.int32), [len(c) for c in per_cell]))
    return sum(len(c) for c in per_cell)


def _sample_path(work: Path, shard: int, kind: str = "sample") -> Path:
    return work / f"{kind}-{shard:05d}.parquet"


def _run(run_tasks: RunTasks, func: Callable[..., Any], tasks: dict[Any, tuple[Any, ...]], desc: str) -> dict[Any, Any]:
    """run_tasks, and every task must have succeeded: a missing cluster or shard would silently lose pairs."""
    if not tasks:
        return {}
    results = run_tasks(func, tasks, desc)
    missing = [tag for tag in tasks if tag not in results]
    if missing:
        raise RuntimeError(f"{desc}: {len(missing)} of {len(tasks)} tasks failed (first: {missing[0]!r})")
    return results


def _sample_task(
    part: Path, column: str, offset: int, coarse_rate: float, leaf_rate: float, seed: int, out: Path
) -> tuple[np.ndarray, int]:
    """Round a, one shard: its rows of the leaf sample -> `out` (position, embedding); returns its rows of the
    coarse sample (float16 vectors) and its count of embedded rows. Both samples are chosen by a hash of the
    global position, so a row is in them or not whoever reads it."""
    vectors, rows = _read(part, column)
    positions = rows + offset
    chance = _uniform(positions, seed)
    chosen = chance < leaf_rate
    _write(out, positions[chosen], vectors[chosen])
    return vectors[chance < coarse_rate], len(rows)


def _sample_assign_task(sample: Path, coarse_path: Path, out: Path) -> dict[int, int]:
    """Round a2, one shard: its leaf sample by coarse cluster (home only) -> `out`, a row group per cluster;
    returns {cluster: row group}."""
    table = pq.read_table(sample)
    vectors, _ = embedding_store.decode(table.column("embedding"))
    if len(vectors) == 0:
        return {}
    home = assign(vectors, np.load(coarse_path))
    order = np.argsort(home, kind="stable")
    positions = table.column("position").to_numpy()[order]
    vectors, home = vectors[order], home[order]
    placed: dict[int, int] = {}
    with _writer(out, vectors.shape[1]) as writer:
        for lo, hi in _runs(home):
            writer.write_table(_table(positions[lo:hi], vectors[lo:hi]), row_group_size=hi - lo)
            placed[int(home[lo])] = len(placed)
    return placed


def _leaf_task(sources: list[tuple[Path, int]], seed: int) -> np.ndarray:
    """Round a3, one coarse cluster: leaf centroids trained on its rows of the leaf sample (one centroid per
    LEAF_SAMPLE_PER_CENTROID of them, so a leaf holds about leaf_rows rows)."""
    table = pa.concat_tables([pq.ParquetFile(path).read_row_group(group) for path, group in sources])
    vectors, _ = embedding_store.decode(table.column("embedding"))
    k = max(1, round(len(vectors) / LEAF_SAMPLE_PER_CENTROID))
    return train_centroids(vectors, k, seed)


def _assign_task(
    part: Path, column: str, offset: int, work: Path, reach: float, max_extra: int, probes: int, shard: int
) -> dict[int, tuple[int, int, int]]:
    """Round b, one shard: every embedded row's home leaf and query leaves (`memberships`, through the coarse
    tree), written by the leaves' coarse cluster: each row once per coarse cluster to work/rows-<shard>.parquet
    (position, embedding) and its memberships to work/members-<shard>.parquet (position, leaf, home), one row
    group per coarse cluster in both. Returns {cluster: (row group, rows, memberships)}."""
    vectors, rows = _read(part, column)
    if len(rows) == 0:
        return {}
    positions = rows + offset
    leaves, groups, coarse = (
        np.load(work / "leaves.npy"),
        np.load(work / "leaf_groups.npy"),
        np.load(work / "centroids.npy"),
    )
    members, leaf, home = memberships(vectors, leaves, reach, max_extra, coarse=coarse, groups=groups, probes=probes)
    cells = groups[leaf]  # ascending, since memberships are sorted by leaf and leaves by coarse cluster
    placed: dict[int, tuple[int, int, int]] = {}
    member_schema = pa.schema([("position", pa.int64()), ("leaf", pa.int32()), ("home", pa.bool_())])
    with _writer(_sample_path(work, shard, "rows"), vectors.shape[1]) as row_writer, pq.ParquetWriter(
        _sample_path(work, shard, "members"), member_schema, compression="none", use_dictionary=False
    ) as member_writer:  # fmt: skip
        for lo, hi in _runs(cells):
            unique = np.unique(members[lo:hi])
            row_writer.write_table(_table(positions[unique], vectors[unique]), row_group_size=len(unique))
            listed = {"position": positions[members[lo:hi]], "leaf": leaf[lo:hi], "home": home[lo:hi]}
            member_writer.write_table(pa.table(listed, schema=member_schema), row_group_size=hi - lo)
            placed[int(cells[lo])] = (len(placed), len(unique), hi - lo)
    return placed


def _search_task(work: Path, sources: list[tuple[int, int]], cosine: float) -> tuple[np.ndarray, np.ndarray]:
    """Round c, one coarse cluster: its rows and memberships from every shard (in shard order, so rows in global
    order) -> the pairs of its leaves. The rows go straight into one float16 array, a row group at a time."""
    groups = [(pq.ParquetFile(_sample_path(work, s, "rows")), g) for s, g in sources]
    total = sum(file.metadata.row_group(g).num_rows for file, g in groups)
    dim = groups[0][0].schema_arrow.field("embedding").type.byte_width // 2
    vectors, positions, start = np.empty((total, dim), embedding_store.DTYPE), np.empty(total, np.int64), 0
    for file, g in groups:
        table = file.read_row_group(g)
        part, _ = embedding_store.decode(table.column("embedding"))
        vectors[start : start + len(part)] = part
        positions[start : start + len(part)] = table.column("position").to_numpy()
        start += len(part)
    listed = pa.concat_tables([pq.ParquetFile(_sample_path(work, s, "members")).read_row_group(g) for s, g in sources])
    members = np.searchsorted(positions, listed.column("position").to_numpy())
    leaves, home = listed.column("leaf").to_numpy(), listed.column("home").to_numpy()
    return leaf_pairs(vectors, positions, members, leaves, home, cosine)


def _writer(path: Path, dim: int) -> pq.ParquetWriter:
    """Work files: no compression, dictionary or statistics (float16 noise gains nothing from any)."""
    schema = pa.schema([("position", pa.int64()), ("embedding", pa.binary(2 * dim))])
    return pq.ParquetWriter(path, schema, compression="none", use_dictionary=False, write_statistics=False)


def _table(positions: np.ndarray, vectors: np.ndarray) -> pa.Table:
    return pa.table({"position": positions, "embedding": embedding_store.pack(vectors)})


def _write(path: Path, positions: np.ndarray, vectors: np.ndarray) -> None:
    with _writer(path, vectors.shape[1]) as writer:
        writer.write_table(_table(positions, vectors))


def _read(part: Path, column: str) -> tuple[np.ndarray, np.ndarray]:
    return embedding_store.decode(pq.read_table(part, columns=[column]).column(column))


def _blocks(vectors: np.ndarray, columns: int, budget: int = BLOCK_ELEMENTS) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows) of vectors, a block at a time, so that a block times `columns` stays within `budget`."""
    step = max(1, budget // max(1, columns))
    for start in range(0, len(vectors), step):
        yield start, vectors[start : start + step]


def _similarities(block: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return np.asarray(block, np.float32) @ np.asarray(centroids, np.float32).T


def _runs(sorted_keys: np.ndarray) -> Iterator[tuple[int, int]]:
    """(start, stop) of each run of equal values in a sorted array."""
    edges = np.flatnonzero(np.diff(sorted_keys)) + 1
    bounds = np.concatenate([[0], edges, [len(sorted_keys)]]).astype(np.int64)
    for lo, hi in itertools.pairwise(bounds):
        if hi > lo:
            yield int(lo), int(hi)


def _uniform(positions: np.ndarray, salt: int) -> np.ndarray:
    """A uniform number in [0, 1) per global position (splitmix64 of position and salt): which rows a sample
    takes, the same whichever task reads them."""
    z = np.asarray(positions, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(_salt(salt, 0))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _salt(seed: int, cell: int) -> int:
    """A seed of its own for coarse cluster `cell` (its leaves' k-means), from the run's seed."""
    return (seed * 1_000_003 + cell * 7_919 + 1) % (1 << 31)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
