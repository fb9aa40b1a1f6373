"""Semantic duplicates at PASS scale: pairs of embeddings with cosine >= t, found by clustering (SemDeDup) as Dask
tasks over per-shard Parquet files, so that no process holds all the embeddings.

Why clusters (SemDeDup, Abbas et al. 2023). Two embeddings with cosine >= 0.95 are close, so they almost always
fall in the same k-means cluster: cluster the embeddings, then compare all pairs exactly inside each cluster. The
comparison is exact (a cosine is computed for every pair inside a cluster); clustering only decides which pairs are
compared, so a found pair is always a true pair and only recall is at stake.

Why two levels. With one level of k clusters over n rows, assigning every row costs n * k dot products and the
searches n * (n / k): at least 2 n^1.5 whatever k is (32x per 10x rows; at 17M rows and k = sqrt(n), 5e14 flops).
So the rows are first cut into *coarse* clusters of about `COARSE_ROWS` rows (k = n / COARSE_ROWS: cheap to assign,
one task's worth of rows each), and each coarse cluster's task cuts its rows again into *leaf* clusters of about
`leaf_rows` rows, trained on that cluster's own rows, and searches each leaf exactly (`cluster_pairs`). Per row that
is n / COARSE_ROWS + COARSE_ROWS / leaf_rows + leaf_rows dot products: close to constant up to tens of millions of
rows.

The radius problem, and the margin. A pair near the boundary between two clusters can have its two rows in
different clusters, and a search inside each cluster misses it. So each row has a *home* cluster (its nearest
centroid by inner product, `assign`), and also *queries* every other cluster whose centroid similarity is within
`margin` of its best (at most `MAX_EXTRA` of them, the most similar): inside a cluster, the homes are compared
with each other and with the queries. A pair split across clusters A (home of a) and B (home of b) is found when b
is within the margin of A or a within the margin of B. The guaranteed margin is large: for unit centroids,
|<a - b, c_A - c_B>| <= |a - b| |c_A - c_B| <= 2 sqrt(2 - 2t) = 0.63 at t = 0.95, which would send every row to
most clusters. But a - b of a near copy has no preferred direction relative to c_A - c_B, so its projection is
about |a - b| |c_A - c_B| / sqrt(d): a small margin catches almost every split pair. The defaults are measured
(`bench/dedup.py --semantic-scale`, bench/README.md): recall against exact all-pairs search on clustered synthetic
512-d data. The same margin is used at both levels.

Pairs are emitted once: each cluster yields a pair once (home-home pairs in the upper triangle, home-query pairs
once since a row is either home or query in a cluster), as (i, j) with i < j by global position, and the client
merges the clusters' pairs with np.unique (a pair can be found in two clusters when both rows query each other's).

The driver, `semantic_pairs`, runs three rounds of tasks:
(a) per shard: that shard's part of a seeded sample of rows, chosen by a hash of the global position (a row is in
    the sample or not whatever task reads it, whatever the number of workers), and its count of embedded rows; the
    client trains the coarse centroids on the sample (spherical k-means, `train_centroids`);
(b) per shard: each embedded row's home and query coarse clusters; the rows (global position, home flag, float16
    vector as stored) go to work/cells-<shard>.parquet, one row group per coarse cluster, sorted by position; the
    task returns where each cluster's row group is;
(c) per coarse cluster: its row groups from every shard file, in shard order (so its rows are in global order),
    leaf clusters trained on a hash-chosen sample of its homes, memberships, exact search per leaf; returns pairs.
The client then merges the pairs (np.unique of i * n + j).

Determinism. Every task's input depends only on the data and the parameters (never on which worker runs it or
when), rows are always in global order, results are combined by tag in sorted order, samples are chosen by hash
and k-means runs single-threaded with a fixed seed (faiss's k-means gave the same centroids with 1 and 2 threads,
but `train_centroids` does not rely on it). Same parts and parameters -> byte-identical centroids and the same
pairs, with any number of workers and any completion order (tests/test_semantic_dedup.py).

Memory. A task holds one shard's embeddings (a and b) or one coarse cluster's rows, homes and queries (c), as
float16, plus a float32 copy of one leaf at a time; the client holds the sample (`sample_size` rows), the
centroids, the row-group index and the pairs, never the embeddings. Coarse clusters are about `COARSE_ROWS` rows
(so a shard of 100k rows and a cluster are of the same order), but k-means does not balance them: a dense region
of the data makes a bigger one.

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

COARSE_ROWS = 50_000  # rows per coarse cluster (one task of round c)
LEAF_ROWS = 500  # rows per leaf cluster (one exact search)
MARGIN = 0.03  # a row also queries clusters whose centroid similarity is within this of its best
MAX_EXTRA = 3  # ... at most this many of them
SAMPLE_SIZE = 65_536  # rows sampled to train the coarse centroids
LEAF_SAMPLE_PER_CENTROID = 40  # homes sampled per leaf centroid to train them
KMEANS_ITERATIONS = 20
TOLERANCE = 1e-6  # float32 rounding of a cosine computed at exactly the threshold
BLOCK_ELEMENTS = 1 << 23  # similarities materialised at once (32 MiB of float32)

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
    homes = [_similarities(block, centroids).argmax(axis=1) for block in _blocks(vectors, len(centroids))]
    return np.concatenate(homes).astype(np.int32) if homes else np.zeros(0, np.int32)


def memberships(
    vectors: np.ndarray, centroids: np.ndarray, margin: float, max_extra: int = MAX_EXTRA
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, cluster, home) for every row's home cluster (`assign`) and for each other cluster whose centroid
    similarity is within `margin` of the home's (the `max_extra` most similar at most; ties to the lower index),
    sorted by cluster then row."""
    rows, cells, home, start = [], [], [], 0
    for block in _blocks(vectors, len(centroids)):
        sims = _similarities(block, centroids)
        index = np.arange(len(block))
        best = sims.argmax(axis=1)
        near = sims >= (sims[index, best] - margin)[:, None]
        near[index, best] = False
        crowded = np.flatnonzero(near.sum(axis=1) > max_extra)
        if len(crowded):
            near[crowded] &= _ranks(sims[crowded], best[crowded]) <= max_extra
        extra_rows, extra_cells = np.nonzero(near)
        rows += [index + start, extra_rows + start]
        cells += [best, extra_cells]
        home += [np.ones(len(block), bool), np.zeros(len(extra_rows), bool)]
        start += len(block)
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool)
    row, cell, is_home = (
        np.concatenate(rows).astype(np.int64),
        np.concatenate(cells).astype(np.int32),
        np.concatenate(home),
    )
    order = np.lexsort((row, cell))
    return row[order], cell[order], is_home[order]


def _ranks(sims: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Each cluster's rank by similarity per row, the home first (0), ties to the lower index."""
    index = np.arange(len(sims))
    forced = sims.copy()
    forced[index, best] = np.inf
    order = np.argsort(-forced, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(sims.shape[1])[None, :], axis=1)
    return ranks


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
    positions_home, query_positions = np.asarray(positions_home, np.int64), np.asarray(query_positions, np.int64)
    threshold = cosine - TOLERANCE
    out_i, out_j = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    step = max(1, BLOCK_ELEMENTS // max(1, len(homes) + len(others)))
    for start in range(0, len(homes), step):
        block = homes[start : start + step]
        # homes from this block on: the block's own square's upper triangle and everything to its right
        r, c = np.nonzero(block @ homes[start:].T >= threshold)
        keep = c > r
        pairs = [(positions_home[start + r[keep]], positions_home[start + c[keep]])]
        if len(others):
            r, c = np.nonzero(block @ others.T >= threshold)
            pairs.append((positions_home[start + r], query_positions[c]))
        for a, b in pairs:
            out_i.append(np.minimum(a, b))
            out_j.append(np.maximum(a, b))
    return np.concatenate(out_i), np.concatenate(out_j)


def cell_pairs(
    vectors: np.ndarray,
    positions: np.ndarray,
    home: np.ndarray,
    cosine: float,
    *,
    margin: float = MARGIN,
    leaf_rows: int = LEAF_ROWS,
    seed: int = 0,
    counts: dict[str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of one coarse cluster: its rows (vectors, global positions, whether the cluster is the row's home)
    cut into leaf clusters trained on a hash-chosen sample of its homes, every row (home or query here) with a home
    leaf and query leaves, and each leaf searched exactly. (i, j) global positions, i < j, possibly repeated
    across leaves. `counts`, when given, receives rows, leaves and leaf_memberships."""
    homes = np.flatnonzero(home)
    info = {} if counts is None else counts
    info.update(rows=len(home), leaves=1, leaf_memberships=len(home))
    if len(homes) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(homes) <= 2 * leaf_rows:
        queries = np.flatnonzero(~home)
        return cluster_pairs(vectors[homes], positions[homes], vectors[queries], positions[queries], cosine)
    k = math.ceil(len(homes) / leaf_rows)
    rate = LEAF_SAMPLE_PER_CENTROID * k / len(homes)
    sample = homes[_uniform(positions[homes], seed) < rate]
    centroids = train_centroids(vectors[sample], k, seed)
    rows, leaves, leaf_home = memberships(vectors, centroids, margin)
    info.update(leaves=len(centroids), leaf_memberships=len(rows))
    out_i, out_j = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for lo, hi in _runs(leaves):
        members, is_home = rows[lo:hi], leaf_home[lo:hi]
        h, q = members[is_home], members[~is_home]
        i, j = cluster_pairs(vectors[h], positions[h], vectors[q], positions[q], cosine)
        out_i.append(i)
        out_j.append(j)
    return np.concatenate(out_i), np.concatenate(out_j)


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
    leaf_rows: int = LEAF_ROWS,
    stats: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(i, j), i < j, sorted, unique: global positions of every pair of rows of `parts` whose embeddings (column
    `column`, written by `embedding_store.encode`; null = no embedding, never paired) have cosine >= `cosine`, up
    to the clusters' recall (see the module docstring). Row k of parts[s] is position (rows of parts[:s]) + k.

    `run_tasks(func, {tag: args}, desc)` runs func(*args) for every tag as a Dask task and returns {tag: result};
    a missing result raises RuntimeError. `work` takes the intermediate files (work/cells-*.parquet, about 1.3x
    the parts' embeddings, and work/centroids.npy). `clusters`: coarse clusters (default: embedded rows /
    COARSE_ROWS). `stats`, when given, receives counts and seconds per round."""
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
    rate = min(1.0, sample_size / n)
    sampled = _run(run_tasks, _sample_task, {s: (parts[s], column, int(offsets[s]), rate, seed) for s in shards},
                   "semantic dedup: sample")  # fmt: skip
    embedded = sum(sampled[s][2] for s in shards)
    sample = np.concatenate([sampled[s][1] for s in shards])
    del sampled
    info.update(embedded=embedded, sample=len(sample), seconds_sample=time.perf_counter() - clock)
    if embedded < 2 or len(sample) == 0:
        return empty

    clock = time.perf_counter()
    k = clusters if clusters is not None else math.ceil(embedded / COARSE_ROWS)
    centroids = train_centroids(sample, k, seed)
    del sample
    np.save(work / "centroids.npy", centroids)
    info.update(clusters=len(centroids), seconds_train=time.perf_counter() - clock)

    clock = time.perf_counter()
    tasks = {s: (parts[s], column, int(offsets[s]), centroids, margin, work / f"cells-{s:05d}.parquet") for s in shards}
    placed = _run(run_tasks, _assign_task, tasks, "semantic dedup: assign")
    sources: dict[int, list[tuple[Path, int]]] = {}
    homes: dict[int, int] = {}
    for s in shards:
        for cell, (group, _, cell_homes) in sorted(placed[s].items()):
            sources.setdefault(cell, []).append((tasks[s][-1], group))
            homes[cell] = homes.get(cell, 0) + cell_homes
    sizes = {cell: sum(placed[s].get(cell, (0, 0, 0))[1] for s in shards) for cell in sources}
    info.update(memberships=sum(sizes.values()), largest_cluster=max(sizes.values(), default=0),
                seconds_assign=time.perf_counter() - clock)  # fmt: skip

    clock = time.perf_counter()
    searches = {cell: (sources[cell], cosine, margin, leaf_rows, _salt(seed, cell)) for cell in sorted(sources)
                if homes[cell]}  # fmt: skip
    found = _run(run_tasks, _cell_task, searches, "semantic dedup: search")
    info.update(leaves=sum(found[c][2]["leaves"] for c in searches),
                leaf_memberships=sum(found[c][2]["leaf_memberships"] for c in searches),
                seconds_search=time.perf_counter() - clock)  # fmt: skip

    clock = time.perf_counter()
    keys = [found[c][0] * n + found[c][1] for c in sorted(searches)]
    unique = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
    info.update(pairs=len(unique), seconds_merge=time.perf_counter() - clock)
    return unique // n, unique % n


def _run(run_tasks: RunTasks, func: Callable[..., Any], tasks: dict[Any, tuple[Any, ...]], desc: str) -> dict[Any, Any]:
    """run_tasks, and every task must have succeeded: a missing cluster or shard would silently lose pairs."""
    if not tasks:
        return {}
    results = run_tasks(func, tasks, desc)
    missing = [tag for tag in tasks if tag not in results]
    if missing:
        raise RuntimeError(f"{desc}: {len(missing)} of {len(tasks)} tasks failed (first: {missing[0]!r})")
    return results


def _sample_task(part: Path, column: str, offset: int, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Round a, one shard: (global positions, float16 vectors) of its sampled rows, and its embedded rows' count."""
    vectors, rows = _read(part, column)
    positions = rows + offset
    chosen = _uniform(positions, seed) < rate
    return positions[chosen], vectors[chosen], len(rows)


def _assign_task(
    part: Path, column: str, offset: int, centroids: np.ndarray, margin: float, out: Path
) -> dict[int, tuple[int, int, int]]:
    """Round b, one shard: its embedded rows by coarse cluster (homes and queries) -> `out`, a row group per cluster;
    returns {cluster: (row group, rows, homes)}."""
    vectors, rows = _read(part, column)
    if len(rows) == 0:
        return {}
    members, cells, home = memberships(vectors, centroids, margin)
    schema = pa.schema([("position", pa.int64()), ("home", pa.bool_()), ("embedding", pa.binary(vectors.shape[1] * 2))])
    placed: dict[int, tuple[int, int, int]] = {}
    with pq.ParquetWriter(out, schema, compression="none", use_dictionary=False, write_statistics=False) as writer:
        for lo, hi in _runs(cells):
            take = members[lo:hi]
            columns = {
                "position": rows[take] + offset,
                "home": home[lo:hi],
                "embedding": embedding_store.pack(vectors[take]),
            }
            table = pa.table(columns, schema=schema)
            writer.write_table(table, row_group_size=len(table))
            placed[int(cells[lo])] = (len(placed), hi - lo, int(home[lo:hi].sum()))
    return placed


def _cell_task(
    sources: list[tuple[Path, int]], cosine: float, margin: float, leaf_rows: int, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Round c, one coarse cluster: its row groups from every shard (in shard order, so rows in global order) ->
    its pairs, and counts for the stats."""
    table = pa.concat_tables([pq.ParquetFile(path).read_row_group(group) for path, group in sources])
    positions = table.column("position").to_numpy()
    home = table.column("home").to_numpy()
    vectors, _ = embedding_store.decode(table.column("embedding"))
    del table  # the vectors are a view of its one chunk or a concatenated copy: nothing else of it is needed
    counts: dict[str, int] = {}
    i, j = cell_pairs(vectors, positions, home, cosine, margin=margin, leaf_rows=leaf_rows, seed=seed, counts=counts)
    return i, j, counts


def _read(part: Path, column: str) -> tuple[np.ndarray, np.ndarray]:
    return embedding_store.decode(pq.read_table(part, columns=[column]).column(column))


def _blocks(vectors: np.ndarray, columns: int) -> Iterator[np.ndarray]:
    step = max(1, BLOCK_ELEMENTS // max(1, columns))
    for start in range(0, len(vectors), step):
        yield vectors[start : start + step]


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
    """A seed of its own for coarse cluster `cell` (its leaves' k-means and sample), from the run's seed."""
    return (seed * 1_000_003 + cell * 7_919 + 1) % (1 << 31)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
