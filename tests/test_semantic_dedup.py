"""Semantic dedup by clusters (curate.dedup.semantic) and its float16 column (curate.dedup.embedding_store):
exact against brute force with the guaranteed margin; boundary copies found with the default margin (recall 1.0 on
a small clustered set) and missed without one; the same pairs and centroids whatever the workers and task order;
nulls; empty parts; the float16 accuracy bound."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.dedup import embedding_store, semantic

DIM = 64
COSINE = 0.95
Runner = Callable[[Callable[..., Any], dict[Any, tuple[Any, ...]], str], dict[Any, Any]]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def near_copies(rng: np.random.Generator, originals: np.ndarray, low: float = COSINE) -> np.ndarray:
    """A copy of each row at a cosine drawn from [low, 1) (a step orthogonal to the row)."""
    step = rng.standard_normal(originals.shape).astype(np.float32)
    step = unit(step - np.einsum("ij,ij->i", step, originals)[:, None] * originals)
    target = rng.uniform(low, 1.0, len(originals))
    return unit(originals + np.sqrt(1 / target**2 - 1)[:, None].astype(np.float32) * step)


def clustered(n: int = 5_000, centres: int = 8, seed: int = 0) -> np.ndarray:
    """n rows around `centres` centres (rows of a centre: cosine ~0.7), 2 % of them near copies of others."""
    rng = np.random.default_rng(seed)
    directions = unit(rng.standard_normal((centres, DIM)))
    x = unit(
        np.sqrt(0.7) * directions[rng.integers(0, centres, n)] + np.sqrt(0.3) * unit(rng.standard_normal((n, DIM)))
    )
    copies = rng.choice(n, size=n // 50, replace=False)
    x[copies] = near_copies(rng, x[rng.integers(0, n, len(copies))])
    return x


def plant_at_boundaries(x: np.ndarray, sample_size: int, k: int, pairs: int = 40) -> np.ndarray:
    """Replace rows of x by `pairs` pairs at cosine ~0.998 that straddle the boundary of two of the coarse clusters
    semantic_pairs(..., clusters=k, sample_size=sample_size, seed=0) will train (only rows outside its sample
    are replaced, so those centroids stay the same). -> the pairs' row numbers."""
    rng = np.random.default_rng(1)
    stored = embedding_store.decode(embedding_store.encode(x))[0]
    sampled = semantic._uniform(np.arange(len(x)), 0) < sample_size / len(x)  # the driver's sample, by position
    centroids = semantic.train_centroids(stored[sampled], k, seed=0)
    free = iter(rng.permutation(np.flatnonzero(~sampled)).tolist())
    planted: list[tuple[int, int]] = []
    while len(planted) < pairs:
        a, b = rng.choice(k, size=2, replace=False)
        middle, side = unit(centroids[[a]] + centroids[[b]]), unit(centroids[[a]] - centroids[[b]])
        shared = 0.1 * unit(rng.standard_normal((1, DIM)))
        first, second = unit(middle + 0.03 * side + shared), unit(middle - 0.03 * side + shared)
        if semantic.assign(first, centroids)[0] == a and semantic.assign(second, centroids)[0] == b:
            rows = (next(free), next(free))
            x[rows[0]], x[rows[1]] = first[0], second[0]
            planted.append((min(rows), max(rows)))
    return np.array(planted)


def write_parts(
    directory: Path, vectors: np.ndarray, sizes: list[int], present: np.ndarray | None = None
) -> list[Path]:
    """vectors cut into parts of `sizes` rows (0 allowed), each a Parquet file with an `embedding` column."""
    directory.mkdir(parents=True, exist_ok=True)
    assert sum(sizes) == len(vectors)
    keep = np.ones(len(vectors), bool) if present is None else present
    paths, start = [], 0
    for s, size in enumerate(sizes):
        column = embedding_store.encode(vectors[start : start + size].reshape(size, DIM), keep[start : start + size])
        table = pa.table({"row": np.arange(start, start + size), "embedding": column})
        path = directory / f"part-{s:03d}.parquet"
        pq.write_table(table, path, row_group_size=700, **embedding_store.parquet_options(table, ["embedding"]))
        paths.append(path)
        start += size
    return paths


def brute_force(parts: list[Path], cosine: float = COSINE) -> set[tuple[int, int]]:
    """All pairs of the stored (float16, renormalised) vectors, global positions."""
    decoded = [embedding_store.decode(pq.read_table(p, columns=["embedding"])["embedding"]) for p in parts]
    offsets = np.cumsum([0] + [pq.read_metadata(p).num_rows for p in parts])
    vectors = unit(np.concatenate([v.astype(np.float32) for v, _ in decoded]))
    positions = np.concatenate([rows + offsets[s] for s, (_, rows) in enumerate(decoded)])
    r, c = np.nonzero(np.triu(vectors @ vectors.T >= cosine - semantic.TOLERANCE, k=1))
    return set(zip(positions[r].tolist(), positions[c].tolist(), strict=True))


def pair_set(pairs: tuple[np.ndarray, np.ndarray]) -> set[tuple[int, int]]:
    i, j = pairs
    assert (i < j).all()
    assert len(set(zip(i.tolist(), j.tolist(), strict=True))) == len(i), "a pair twice"
    return set(zip(i.tolist(), j.tolist(), strict=True))


def in_order(func: Callable[..., Any], tasks: dict[Any, tuple[Any, ...]], desc: str) -> dict[Any, Any]:
    return {tag: func(*args) for tag, args in tasks.items()}


def shuffled(seed: int) -> Runner:
    """Tasks run (and results come back) in a seeded random order."""

    def run(func: Callable[..., Any], tasks: dict[Any, tuple[Any, ...]], desc: str) -> dict[Any, Any]:
        tags = list(tasks)
        random.Random(seed).shuffle(tags)
        return {tag: func(*tasks[tag]) for tag in tags}

    return run


def on_dask(client: Any) -> Runner:
    """Tasks on a real distributed.Client; results gathered in completion order."""
    from distributed import as_completed

    def run(func: Callable[..., Any], tasks: dict[Any, tuple[Any, ...]], desc: str) -> dict[Any, Any]:
        futures = {client.submit(func, *args, pure=False): tag for tag, args in tasks.items()}
        return {futures[future]: future.result() for future in as_completed(futures)}

    return run


@pytest.fixture(scope="module")
def clients() -> Iterator[dict[int, Any]]:
    from distributed import Client, LocalCluster

    opened = {}
    try:
        for workers in (1, 2):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=False, dashboard_address=":0",
                                   silence_logs=logging.ERROR)  # fmt: skip
            opened[workers] = (cluster, Client(cluster))
        yield {workers: client for workers, (_, client) in opened.items()}
    finally:
        for cluster, client in opened.values():
            client.close()
            cluster.close()


# leaves inside the coarse clusters even at 5k rows; a sample that leaves rows out (plant_at_boundaries)
SMALL: dict[str, Any] = {"clusters": 8, "leaf_rows": 100, "sample_size": 2_000}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], np.ndarray]:
    """5k x 64-d clustered rows with near copies and boundary pairs, in four parts (one empty)."""
    x = clustered()
    boundary = plant_at_boundaries(x, SMALL["sample_size"], SMALL["clusters"])
    return write_parts(tmp_path_factory.mktemp("parts"), x, [1_300, 0, 2_000, 1_700]), boundary


def test_exact_with_the_guaranteed_margin(data: tuple[list[Path], np.ndarray], tmp_path: Path) -> None:
    """margin 1 (a row queries every leaf whose boundary is within the farthest a pair can be apart), no cap, and
    every coarse cluster probed: every pair is found, so the pairs are brute force's."""
    parts = data[0]
    everything = {"margin": 1.0, "max_extra": 1 << 20, "probes": SMALL["clusters"]}
    found = semantic.semantic_pairs(parts, "embedding", COSINE, tmp_path, in_order, **everything, **SMALL)
    exact = brute_force(parts)
    assert len(exact) > 100
    assert pair_set(found) == exact


def home_leaves(work: Path, vectors: np.ndarray) -> np.ndarray:
    """Each row's home leaf, as the driver's assign round found it (from the centroids it left in work/)."""
    coarse, leaves, groups = (np.load(work / f"{name}.npy") for name in ("centroids", "leaves", "leaf_groups"))
    rows, cells, home = semantic.memberships(vectors, leaves, 0.0, coarse=coarse, groups=groups)
    assert home.all()
    out = np.empty(len(vectors), np.int64)
    out[rows] = cells
    return out


def test_boundary_copies_need_the_margin(data: tuple[list[Path], np.ndarray], tmp_path: Path) -> None:
    """The planted boundary pairs straddle two coarse clusters and (nearly all) two leaves; the default margin
    finds every one of them and recall is 1.0 on this set; with no margin the straddling ones are lost."""
    parts, boundary = data
    exact = brute_force(parts)
    found = pair_set(semantic.semantic_pairs(parts, "embedding", COSINE, tmp_path / "a", in_order, **SMALL))
    vectors = np.concatenate([embedding_store.decode(pq.read_table(p)["embedding"])[0] for p in parts])
    coarse = semantic.assign(vectors.astype(np.float32), np.load(tmp_path / "a" / "centroids.npy"))
    leaf = home_leaves(tmp_path / "a", vectors)
    planted = {(int(a), int(b)) for a, b in boundary}
    assert all(coarse[a] != coarse[b] for a, b in planted)  # they do straddle the driver's own clusters
    straddling = {(a, b) for a, b in planted if leaf[a] != leaf[b]}
    assert len(straddling) >= 30
    assert planted <= exact
    assert planted <= found
    assert found == exact
    none = pair_set(semantic.semantic_pairs(parts, "embedding", COSINE, tmp_path / "b", in_order, margin=0.0, **SMALL))
    assert not straddling & none
    assert none < exact


def test_same_pairs_and_centroids_whatever_the_workers_and_order(
    data: tuple[list[Path], np.ndarray], clients: dict[int, Any], tmp_path: Path
) -> None:
    parts = data[0]
    runs = {"one worker": on_dask(clients[1]), "two workers": on_dask(clients[2]), "in order": in_order,
            "shuffled": shuffled(1), "shuffled again": shuffled(2)}  # fmt: skip
    results = {}
    for name, runner in runs.items():
        i, j = semantic.semantic_pairs(parts, "embedding", COSINE, tmp_path / name, runner, **SMALL)
        centroids = b"".join((tmp_path / name / f).read_bytes() for f in ("centroids.npy", "leaves.npy"))
        results[name] = (i.tobytes(), j.tobytes(), centroids)
    assert len(set(results.values())) == 1
    assert len(np.frombuffer(results["in order"][0], np.int64)) > 100
    semantic.semantic_pairs(parts, "embedding", COSINE, tmp_path / "seed", in_order, seed=1, **SMALL)
    assert (tmp_path / "seed" / "centroids.npy").read_bytes() not in results["in order"][2]


def test_centroids_are_deterministic() -> None:
    import faiss

    sample = clustered(2_000)
    first = semantic.train_centroids(sample, 16, seed=3)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        assert semantic.train_centroids(sample, 16, seed=3).tobytes() == first.tobytes()
    finally:
        faiss.omp_set_num_threads(threads)
    assert faiss.omp_get_max_threads() == threads
    assert semantic.train_centroids(sample.copy(order="F"), 16, seed=3).tobytes() == first.tobytes()
    assert semantic.train_centroids(sample, 16, seed=4).tobytes() != first.tobytes()
    assert first.shape == (16, DIM) and np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-6)
    assert semantic.train_centroids(sample[:5], 16, seed=3).shape == (5, DIM)  # at most one per row


def test_nulls_are_never_paired(tmp_path: Path) -> None:
    """Rows without an embedding are skipped; whatever their input values were (here: copies of present rows)."""
    rng = np.random.default_rng(5)
    x = clustered(1_200, seed=5)
    present = rng.random(len(x)) > 0.2
    x[~present] = x[np.flatnonzero(present)[: (~present).sum()]]  # would pair with a present row if stored
    parts = write_parts(tmp_path / "parts", x, [400, 800], present)
    found = pair_set(semantic.semantic_pairs(parts, "embedding", COSINE, tmp_path / "w", in_order, clusters=4))
    absent = set(np.flatnonzero(~present).tolist())
    assert found and not {p for pair in found for p in pair} & absent
    assert found == brute_force(parts)


def test_empty_and_null_parts(tmp_path: Path) -> None:
    x = clustered(900, seed=6)
    present = np.ones(len(x), bool)
    present[300:500] = False  # the second part has embeddings for none of its rows
    parts = write_parts(tmp_path / "parts", x, [0, 300, 200, 0, 400], present)
    found = semantic.semantic_pairs(parts, "embedding", COSINE, tmp_path / "w", in_order, clusters=3)
    assert pair_set(found) == brute_force(parts) and len(found[0])
    only_empty = write_parts(tmp_path / "empty", x[:0], [0, 0])
    for some in (only_empty, [], parts[2:3]):  # no rows; no parts; rows but no embeddings
        i, j = semantic.semantic_pairs(some, "embedding", COSINE, tmp_path / "w2", in_order)
        assert i.dtype == j.dtype == np.int64 and len(i) == len(j) == 0


def test_a_failed_task_fails_the_search(data: tuple[list[Path], np.ndarray], tmp_path: Path) -> None:
    def loses_one(func: Callable[..., Any], tasks: dict[Any, tuple[Any, ...]], desc: str) -> dict[Any, Any]:
        done = in_order(func, tasks, desc)
        if "search" in desc:
            done.pop(next(iter(done)))
        return done

    with pytest.raises(RuntimeError, match="search: 1 of"):
        semantic.semantic_pairs(data[0], "embedding", COSINE, tmp_path, loses_one, **SMALL)


def test_cluster_pairs_and_memberships() -> None:
    x = clustered(600, seed=7)
    positions = np.arange(600, dtype=np.int64) * 3 + 10  # any increasing global positions
    homes, queries = np.arange(0, 600, 2), np.arange(1, 600, 2)
    i, j = semantic.cluster_pairs(x[homes], positions[homes], x[queries], positions[queries], COSINE)
    sims = unit(x) @ unit(x).T >= COSINE - semantic.TOLERANCE
    is_home = np.zeros(600, bool)
    is_home[homes] = True
    r, c = np.nonzero(np.triu(sims, k=1) & (is_home[:, None] | is_home[None, :]))
    assert pair_set((i, j)) == set(zip(positions[r].tolist(), positions[c].tolist(), strict=True))

    centroids = semantic.train_centroids(x, 6, seed=0)
    rows, cells, home = semantic.memberships(x, centroids, reach=0.3, max_extra=2)
    assert (np.lexsort((rows, cells)) == np.arange(len(rows))).all()
    assert (np.bincount(rows[home], minlength=600) == 1).all()
    assert (cells[home][np.argsort(rows[home])] == semantic.assign(x, centroids)).all()
    assert np.bincount(rows, minlength=600).max() <= 3 and (~home).any()
    assert len(semantic.memberships(x, centroids, reach=0.0)[0]) == 600
    # through a tree of 3 coarse clusters: probing all of them is the flat search; probing one, a home of its own
    coarse = semantic.train_centroids(centroids, 3, seed=0)
    groups = semantic.assign(centroids, coarse)
    order = np.argsort(groups, kind="stable")
    leaves, groups = centroids[order], groups[order]
    flat = semantic.memberships(x, leaves, reach=0.3, max_extra=2)
    tree = semantic.memberships(x, leaves, reach=0.3, max_extra=2, coarse=coarse, groups=groups, probes=3)
    assert all((a == b).all() for a, b in zip(flat, tree, strict=True))
    one = semantic.memberships(x, leaves, reach=0.3, max_extra=2, coarse=coarse, groups=groups, probes=1)
    nearest = semantic.assign(x, coarse)
    assert (groups[one[1]] == nearest[one[0]]).all()  # every membership inside the row's one probed cluster


def test_float16_column(tmp_path: Path) -> None:
    """Bit-exact through Parquet, nulls kept, chunks and slices decoded; the cosine error bound of the docstring."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1_000, 512)).astype(np.float32) * 3
    present = rng.random(1_000) > 0.1
    column = embedding_store.encode(x, present)
    assert column.type == pa.binary(1024) and column.null_count == (~present).sum()
    table = pa.table({"embedding": column})
    options = embedding_store.parquet_options(table, ["embedding"])
    pq.write_table(table, tmp_path / "e.parquet", row_group_size=300, **options)  # type: ignore[arg-type]
    back = pq.read_table(tmp_path / "e.parquet")["embedding"]
    assert back.num_chunks > 1
    vectors, rows = embedding_store.decode(back)
    assert (rows == np.flatnonzero(present)).all() and vectors.dtype == np.float16
    assert (vectors == unit(x[present]).astype(np.float16)).all()
    sliced, sliced_rows = embedding_store.decode(back.combine_chunks().slice(250, 400))
    assert (sliced_rows == np.flatnonzero(present[250:650])).all()
    assert (sliced == vectors[np.isin(rows, sliced_rows + 250)]).all()
    assert (embedding_store.decode(embedding_store.pack(vectors))[0] == vectors).all()
    with pytest.raises(ValueError, match="zero length"):
        embedding_store.encode(np.zeros((2, 4)))
    near, random_pairs = embedding_store.measured_error(n=20_000)
    assert near <= 2.4e-5 and random_pairs <= 7e-5  # the docstring's maxima over 10^6 pairs
