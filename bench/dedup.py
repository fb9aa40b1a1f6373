"""Dedup benchmark: time and peak memory to de-duplicate synthetic hashes and embeddings at growing sizes, the
growth per 10x input, and agreement with brute force on a 20k subset.

    .venv/bin/python bench/dedup.py [--sizes 100000,1000000,4000000] [--dim 64] [--k 5] [--cosine 0.95]

Hashes: random 64-bit pHashes, 1 % of them copies of others with 1..k bits flipped, and 1 % exact byte
duplicates (same sha256); the timed work is the dedup stage's own grouping step (`assign_groups`: exact groups,
multi-index Hamming search, connected components, representatives). Embeddings: random unit vectors of --dim
dimensions, 1 % near copies; the timed work is faiss range search (flat up to dedup.flat_max rows, IVF beyond, as the
stage does) plus connected components. Each size runs in a fresh process so that its peak RSS is its own.

    .venv/bin/python bench/dedup.py --compare [--sizes ...] [--faiss 3x21x1,4x16x1,6x10x0,8x8x0] [--rounds 2]

--compare: curate's multi-index search (`hamming_index.near_pairs`) against faiss's `IndexBinaryMultiHash` on the
same hashes (uniform random 64-bit values, 2 % of them replaced by copies of others with exactly 0..8 bits flipped,
seeded): build plus range search for every pair within --k, reduced to the same (i < j) pairs. A faiss
configuration is NHASHxBxNFLIP: NHASH tables of B bits each, probed with up to NFLIP flipped bits; it is exact when
NFLIP >= k // NHASH (pigeonhole: some table's B bits differ in at most that many). Every configuration and size runs
in a process of its own (its own peak RSS), the configurations alternate order round by round, one that runs past
--timeout is dropped for the larger sizes, and each run's pairs are digested so that equality can be checked.

    .venv/bin/python bench/dedup.py --semantic-scale [--sizes 100000,1000000,4000000] [--dim 512] [--cosine 0.95]
        [--part-rows 100000] [--centres 5000] [--margin M] [--max-extra E] [--probes P] [--clusters K]
        [--leaf-rows R] [--brute-max 100000] [--semantic-timeout 1500] [--tmp /tmp] [--keep]

--semantic-scale: `curate.dedup.semantic.semantic_pairs` (SemDeDup-style clustering as Dask tasks over per-shard
Parquet files) on a real `distributed.LocalCluster` of 2 worker processes x 1 thread, started fresh for each size.
Data (`clustered_parts`): unit vectors with cluster structure, written as float16 (`embedding_store.encode`) in
Parquet parts of --part-rows rows in a temporary folder under --tmp. Every direction of variation is drawn with a
1/(i+1) variance spectrum in a random rotation (effective dimension ~28 of 512, as real embeddings concentrate
their variance in a few dozen directions). --centres centres (default 5,000) share one common direction (any two
centres have cosine ~0.5, as CLIP embeddings crowd in a cone); their popularity is lognormal (sigma 1: the
biggest has ~20x the mean's rows); a row is sqrt(0.75) * its centre + sqrt(0.25) * a spectral direction (two rows
of a centre: cosine ~0.75; of different centres: ~0.37). 1 % of the rows of each part are near copies of a row of
the previous part (the first part: of its own rows), at a cosine drawn uniformly from [0.95, 1) with the
original: a spectral step orthogonal to it, so copies move most along the directions the data varies most in,
which are also those the clusters' boundaries cut across (isotropic steps would cross almost no boundary).

A size is generated in one child process (which also finds the exact pairs by all-pairs float32 search on the
float32 originals when n <= --brute-max) and run in another, so that the run's peak RSS is its own: `client MB`
is that child's ru_maxrss (the driver, with the scheduler in-process, the LocalCluster's nannies' parent), `worker
MB` the largest ru_maxrss any worker reported at the end; `stored/n` rows written to the work files per embedded
row (a row goes once to every coarse cluster whose leaves it is in), `member/n` leaf memberships per row (its home
leaf and the leaves it queries).
`planted recall`: the share of planted copies at cosine >= --cosine (float32) that were found, at every size;
`recall` and `precision` against the exact all-pairs search (sizes <= --brute-max). A size that runs past
--semantic-timeout seconds stops the run; the larger sizes are then extrapolated from the last measured growth.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from curate.config import CurateConfig, DedupConfig
from curate.dedup import embedding_store, embeddings, hamming_index, semantic
from curate.dedup.groups import components
from curate.stages.dedup import assign_groups


def synthetic_hashes(n: int, k: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    near = n // 100
    flips = np.zeros(near, dtype=np.uint64)
    for _ in range(k):
        flips |= np.uint64(1) << rng.integers(0, 64, size=near).astype(np.uint64)
    values[n - near :] = values[rng.integers(0, n - 2 * near, size=near)] ^ flips
    digests = rng.integers(0, 2**62, size=n).astype(str)
    exact = rng.integers(0, n - 2 * near, size=near)
    digests[n - 2 * near : n - near] = digests[exact]
    values[n - 2 * near : n - near] = values[exact]
    return pd.DataFrame(
        {
            "image_id": pd.array([f"i{i:09d}" for i in range(n)], dtype="string"),
            "shard": np.zeros(n, dtype=np.int64),
            "sha256": pd.array(digests, dtype="string"),
            "phash": values.view(np.int64),
            "phash_mirror": values.view(np.int64),
            "phash_ok": np.ones(n, dtype=bool),
            "width": pd.array(rng.integers(100, 500, size=n), dtype="Int64"),
            "height": pd.array(rng.integers(100, 500, size=n), dtype="Int64"),
            "date_taken": pd.array([None] * n, dtype="string"),
            "dedup_error": pd.array([None] * n, dtype="string"),
        }
    )


def synthetic_embeddings(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    near = n // 100
    vectors[n - near :] = vectors[rng.integers(0, n - near, size=near)] + 0.05 * rng.standard_normal(
        (near, dim), dtype=np.float32
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def planted_near_duplicates(n: int, seed: int = 0) -> np.ndarray:
    """Uniform random 64-bit hashes; the last 2 % are copies of earlier ones with exactly 0, 1, ..., 8 distinct bits
    flipped, in turn."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    near = n // 50
    distance = np.arange(near) % 9
    bits = np.argsort(rng.random((near, 64)), axis=1)[:, :8].astype(np.uint64)  # 8 distinct positions per copy
    chosen = np.where(np.arange(8)[None, :] < distance[:, None], np.uint64(1) << bits, np.uint64(0))
    values[n - near :] = values[rng.integers(0, n - near, size=near)] ^ np.bitwise_or.reduce(chosen, axis=1)
    return values


def faiss_settings(config: str) -> tuple[int, int, int]:
    """NHASHxBxNFLIP, e.g. "3x21x1" -> (nhash, b, nflip)."""
    nhash, b, nflip = (int(part) for part in config.split("x"))
    return nhash, b, nflip


def faiss_near_pairs(
    values: np.ndarray, k: int, nhash: int, b: int, nflip: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """near_pairs through faiss.IndexBinaryMultiHash: (i, j) with i < j, and the seconds the build took."""
    import faiss

    started = time.perf_counter()
    codes = np.ascontiguousarray(values, dtype=np.uint64).view(np.uint8).reshape(len(values), 8)
    index = faiss.IndexBinaryMultiHash(64, nhash, b)
    index.nflip = nflip
    index.add(codes)
    built = time.perf_counter() - started
    lims, _, found = index.range_search(codes, k + 1)  # faiss keeps a binary range result when distance < radius
    queries = np.repeat(np.arange(len(values), dtype=np.int64), np.diff(lims).astype(np.int64))
    keep = queries < found  # each pair is found from both ends (and every hash finds itself): keep it once
    return queries[keep], found[keep].astype(np.int64), built


def one_index(config: str, n: int, k: int) -> dict[str, float | int | str]:
    """Runs in a child process: one index configuration at one size."""
    import faiss

    values = planted_near_duplicates(n)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if config == "ours":
        i, j = hamming_index.near_pairs(values, k)
        built = float("nan")
    else:
        i, j, built = faiss_near_pairs(values, k, *faiss_settings(config))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    keys = np.sort(i * n + j)
    return {
        "seconds": seconds,
        "build_seconds": built,
        "base_rss_mb": base,
        "peak_rss_mb": peak,
        "pairs": len(keys),
        "digest": hashlib.sha256(keys.tobytes()).hexdigest()[:16],
        "threads": 1 if config == "ours" else faiss.omp_get_max_threads(),
    }


def compare(args: argparse.Namespace) -> None:
    """curate's index against faiss's, every configuration at every size, in one run."""
    import faiss

    configs = ["ours"] + [c for c in args.faiss.split(",") if c]
    for config in configs[1:]:
        nhash, _, nflip = faiss_settings(config)
        if nflip < args.k // nhash:
            print(f"faiss {config}: not exact at k={args.k} (needs nflip >= {args.k // nhash})")
    print(f"k={args.k}, {args.rounds} rounds, timeout {args.timeout:.0f} s per run, faiss {faiss.__version__}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    dropped: set[str] = set()
    summary = []
    for n in [int(s) for s in args.sizes.split(",")]:
        runs: dict[str, list[dict]] = {c: [] for c in configs}
        for round_ in range(args.rounds):
            order = configs if round_ % 2 == 0 else configs[::-1]
            for config in order:
                if config in dropped:
                    continue
                child = [sys.executable, __file__, "--one-index", config, str(n), "--k", str(args.k)]
                try:
                    done = subprocess.run(child, check=True, capture_output=True, text=True, timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    print(f"  n={n:,} round {round_ + 1} {config}: over {args.timeout:.0f} s, dropped", flush=True)
                    dropped.add(config)
                    continue
                result = json.loads(done.stdout)
                runs[config].append(result)
                print(f"  n={n:,} round {round_ + 1} {config}: {result['seconds']:.2f} s, "
                      f"peak RSS {result['peak_rss_mb']:.0f} MB, {result['pairs']:,} pairs", flush=True)  # fmt: skip
        summary.append((n, runs))
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'index':<15} {'n':>10} {'threads':>7} {'build s':>8} {'total s':>8} {'x ours':>7} {'peak RSS MB':>11} "
          f"{'x ours':>7} {'search MB':>9} {'pairs':>8} {'same pairs':>10}")  # fmt: skip
    for n, runs in summary:
        if not runs["ours"]:
            continue
        ours = runs["ours"]
        ours_seconds = float(np.median([r["seconds"] for r in ours]))
        ours_rss = float(np.median([r["peak_rss_mb"] for r in ours]))
        for config in configs:
            name = config if config == "ours" else f"faiss {config}"
            if not runs[config]:
                print(f"{name:<15} {n:>10,} {'':>7} {'':>8} {'> ' + str(int(args.timeout)):>8}")
                continue
            seconds = float(np.median([r["seconds"] for r in runs[config]]))
            build = float(np.median([r["build_seconds"] for r in runs[config]]))
            rss = float(np.median([r["peak_rss_mb"] for r in runs[config]]))
            own = float(np.median([r["peak_rss_mb"] - r["base_rss_mb"] for r in runs[config]]))
            same = all(r["digest"] == ours[0]["digest"] for r in runs[config] + ours)
            built = "" if np.isnan(build) else f"{build:.2f}"
            print(f"{name:<15} {n:>10,} {runs[config][0]['threads']:>7} {built:>8} {seconds:>8.2f} "
                  f"{seconds / ours_seconds:>7.2f} {rss:>11.0f} {rss / ours_rss:>7.2f} {own:>9.0f} "
                  f"{runs[config][0]['pairs']:>8,} {'yes' if same else 'NO':>10}")  # fmt: skip


def one(kind: str, n: int, args: argparse.Namespace) -> dict[str, float]:
    """Runs in a child process: one kind at one size."""
    if kind == "hashes":
        features = synthetic_hashes(n, args.k)
        cfg = CurateConfig(dedup=DedupConfig(phash_distance=args.k, embedding_cosine=0.0))
        started = time.perf_counter()
        out = assign_groups(features, cfg)
        seconds = time.perf_counter() - started
        duplicates = int((out["dedup_status"] == "rejected").sum())
    else:
        vectors = synthetic_embeddings(n, args.dim)
        started = time.perf_counter()
        settings = DedupConfig()
        i, j = embeddings.similar_pairs(vectors, args.cosine, settings.flat_max, settings.ivf_nprobe)
        label = components(n, i, j)
        seconds = time.perf_counter() - started
        duplicates = int(n - len(np.unique(label)))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_rss_mb": rss, "duplicates": duplicates}


def agreement(args: argparse.Namespace) -> list[str]:
    """20k subset: the stage's searches against brute force."""
    lines = []
    values = synthetic_hashes(20_000, args.k)["phash"].to_numpy().view(np.uint64)
    fast = set(zip(*hamming_index.near_pairs(values, args.k), strict=True))
    brute = set(zip(*hamming_index.brute_force_pairs(values, args.k), strict=True))
    lines.append(f"hashes, 20k, k={args.k}: multi-index {len(fast)} pairs, brute force {len(brute)} pairs, "
                 f"identical: {fast == brute}")  # fmt: skip
    vectors = synthetic_embeddings(20_000, args.dim)
    gram = vectors @ vectors.T
    exact = {(a, b) for a, b in zip(*np.nonzero(gram >= args.cosine), strict=True) if a < b}
    flat = set(zip(*embeddings.similar_pairs(vectors, args.cosine, flat_max=100_000, nprobe=16), strict=True))
    ivf = set(zip(*embeddings.similar_pairs(vectors, args.cosine, flat_max=1_000, nprobe=16), strict=True))
    lines.append(f"embeddings, 20k, cosine>={args.cosine}: brute force {len(exact)} pairs; faiss flat {len(flat)}, "
                 f"identical: {flat == exact}; faiss IVF (forced) {len(ivf)}, "
                 f"recall {len(ivf & exact) / max(1, len(exact)):.4f}, false pairs {len(ivf - exact)}")  # fmt: skip
    return lines


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def clustered_parts(
    n: int, dim: int, directory: Path, *, part_rows: int, centres: int, seed: int = 0, keep: bool = False
) -> tuple[list[Path], np.ndarray, np.ndarray | None]:
    """--semantic-scale's data (see the module docstring) -> part files, the planted (original, copy) positions,
    and the float32 originals when `keep` (the exact search needs them). One part in memory at a time."""
    rng = np.random.default_rng(seed)
    # a random rotation and a 1/(i+1) variance spectrum: every direction of variation is such a "spectral" vector
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    scale = (1 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)

    def spectral(g: np.random.Generator, rows: int) -> np.ndarray:
        return _unit_rows((g.standard_normal((rows, dim), dtype=np.float32) * scale) @ rotation)

    common = spectral(rng, 1)
    directions = _unit_rows(np.sqrt(0.5) * common + np.sqrt(0.5) * spectral(rng, centres))
    popularity = rng.lognormal(0.0, 1.0, centres)
    popularity /= popularity.sum()
    parts, planted, kept = [], [], []
    previous: np.ndarray | None = None
    for s, start in enumerate(range(0, n, part_rows)):
        rows = min(part_rows, n - start)
        part_rng = np.random.default_rng([seed, s])
        centre = part_rng.choice(centres, size=rows, p=popularity)
        x = _unit_rows(np.sqrt(0.75) * directions[centre] + np.sqrt(0.25) * spectral(part_rng, rows))
        x = x.astype(np.float32)
        copies = rows // 100
        slots = part_rng.choice(rows, size=copies, replace=False)
        if previous is None:  # the first part copies its own rows (never a row that is itself a copy)
            others = np.setdiff1d(np.arange(rows), slots)
            source, base, source_start = others[part_rng.integers(0, len(others), copies)], x, start
        else:
            source, base, source_start = part_rng.integers(0, len(previous), copies), previous, start - len(previous)
        original = base[source].copy()
        step = spectral(part_rng, copies)
        step = _unit_rows(step - np.einsum("ij,ij->i", step, original)[:, None] * original)  # orthogonal to it
        target = part_rng.uniform(0.95, 1.0, copies)
        x[slots] = _unit_rows(original + np.sqrt(1 / target**2 - 1)[:, None].astype(np.float32) * step)
        planted.append(np.stack([source + source_start, slots + start], axis=1))
        path = directory / f"part-{s:05d}.parquet"
        table = pa.table({"row": np.arange(start, start + rows), "embedding": embedding_store.encode(x)})
        pq.write_table(table, path, **embedding_store.parquet_options(table, ["embedding"]))  # type: ignore[arg-type]
        parts.append(path)
        if keep:
            kept.append(x)
        previous = x
    originals = np.concatenate(kept) if keep else None
    return parts, np.concatenate(planted).astype(np.int64), originals


def brute_force_cosine_pairs(vectors: np.ndarray, cosine: float, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Every (i, j), i < j, with float32 cosine >= `cosine`: exact all-pairs, a block of rows at a time."""
    out_i, out_j = [], []
    for start in range(0, len(vectors), block):
        r, c = np.nonzero(vectors[start : start + block] @ vectors[start:].T >= cosine)
        keep = c > r
        out_i.append(r[keep] + start)
        out_j.append(c[keep] + start)
    return np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64)


def semantic_generate(n: int, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Child process: write one size's parts (and its exact pairs when small enough)."""
    started = time.perf_counter()
    brute = n <= args.brute_max
    parts, planted, originals = clustered_parts(
        n, args.dim, directory, part_rows=args.part_rows, centres=args.centres, keep=brute
    )
    out: dict[str, Any] = {"parts": len(parts), "generate_seconds": time.perf_counter() - started}
    np.save(directory / "planted.npy", planted)
    if originals is not None:
        started = time.perf_counter()
        i, j = brute_force_cosine_pairs(originals, args.cosine)
        np.save(directory / "exact.npy", np.stack([i, j], axis=1))
        np.save(directory / "originals.npy", originals)
        out.update(exact_pairs=len(i), brute_seconds=time.perf_counter() - started)
    return out


def semantic_run(n: int, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Child process: one size through semantic_pairs on a fresh LocalCluster; then its recall."""
    import logging

    from distributed import Client, LocalCluster

    parts = sorted(directory.glob("part-*.parquet"))
    options: dict[str, Any] = {"stats": {}}
    for name in ("margin", "clusters", "leaf_rows", "max_extra", "probes"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:  # fmt: skip

        def run_tasks(func: Any, tasks: dict[Any, tuple[Any, ...]], desc: str) -> dict[Any, Any]:
            futures = {tag: client.submit(func, *task, pure=False) for tag, task in tasks.items()}
            return {tag: future.result() for tag, future in futures.items()}

        client.wait_for_workers(2)
        started = time.perf_counter()
        i, j = semantic.semantic_pairs(parts, "embedding", args.cosine, directory / "work", run_tasks, **options)
        seconds = time.perf_counter() - started
        workers = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    client_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    found = i * n + j
    planted = np.load(directory / "planted.npy")
    result: dict[str, Any] = {"seconds": seconds, "client_mb": client_mb, "worker_mb": max(workers.values()),
                              "pairs": len(found), **options["stats"]}  # fmt: skip
    result.update(_planted_recall(parts, planted, found, n, args.cosine))
    if (directory / "exact.npy").exists():
        exact = np.load(directory / "exact.npy")
        result.update(
            _exact_recall(exact[:, 0] * n + exact[:, 1], found, np.load(directory / "originals.npy"), n, args)
        )
    return result


def _planted_recall(parts: list[Path], planted: np.ndarray, found: np.ndarray, n: int, cosine: float) -> dict[str, Any]:
    """Share of the planted copies at cosine >= `cosine` (of the stored vectors, in float32) that were found."""
    vectors = np.concatenate([embedding_store.decode(pq.read_table(p, columns=["embedding"])["embedding"])[0]
                              for p in parts])  # fmt: skip
    a, b = vectors[planted[:, 0]].astype(np.float32), vectors[planted[:, 1]].astype(np.float32)
    cos = np.einsum("ij,ij->i", _unit_rows(a), _unit_rows(b))
    pairs = planted[cos >= cosine]
    keys = np.minimum(pairs[:, 0], pairs[:, 1]) * n + np.maximum(pairs[:, 0], pairs[:, 1])
    return {"planted": len(keys), "planted_recall": float(np.isin(keys, found).mean()) if len(keys) else 1.0}


def _exact_recall(
    exact: np.ndarray, found: np.ndarray, originals: np.ndarray, n: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Recall and precision against the exact pairs; how many of the misses and false pairs lie within the float16
    bound of the threshold (float16 rounding, not the clustering)."""
    hit = np.isin(exact, found)
    missed, false = exact[~hit], found[~np.isin(found, exact)]

    def cosines(keys: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", originals[keys // n], originals[keys % n])

    near = 1e-4  # embedding_store: float16 moves a cosine by at most ~2.4e-5 at 0.95
    return {
        "exact_pairs": len(exact),
        "recall": float(hit.mean()) if len(exact) else 1.0,
        "precision": float(np.isin(found, exact).mean()) if len(found) else 1.0,
        "missed": len(missed),
        "missed_near_threshold": int((cosines(missed) < args.cosine + near).sum()),
        "false": len(false),
        "false_near_threshold": int((cosines(false) >= args.cosine - near).sum()),
    }


def semantic_scale(args: argparse.Namespace) -> None:
    """Every size: generate (child), run (fresh child, fresh LocalCluster), one table."""
    sizes = [int(s) for s in args.sizes.split(",")]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"dim {args.dim}, cosine >= {args.cosine}, parts of {args.part_rows:,} rows, {args.centres:,} centres, "
          f"2 workers x 1 thread; load average {load}", flush=True)  # fmt: skip
    flags = ["--dim", str(args.dim), "--cosine", str(args.cosine), "--part-rows", str(args.part_rows),
             "--centres", str(args.centres), "--brute-max", str(args.brute_max)]  # fmt: skip
    for name in ("margin", "clusters", "leaf_rows", "max_extra", "probes"):
        if getattr(args, name) is not None:
            flags += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    rows: list[tuple[int, dict[str, Any]]] = []
    for n in sizes:
        directory = Path(tempfile.mkdtemp(prefix=f"semantic-{n}-", dir=args.tmp))
        try:
            made = json.loads(subprocess.run([sys.executable, __file__, "--semantic-generate", str(n), str(directory),
                                              *flags], check=True, capture_output=True, text=True).stdout)  # fmt: skip
            print(
                f"  n={n:,}: generated {made['parts']} parts in {made['generate_seconds']:.0f} s"
                + (f", exact search {made['brute_seconds']:.0f} s" if "brute_seconds" in made else ""),
                flush=True,
            )
            child = [sys.executable, __file__, "--semantic-run", str(n), str(directory), *flags]
            try:
                done = subprocess.run(child, check=True, capture_output=True, text=True, timeout=args.semantic_timeout)
            except subprocess.TimeoutExpired:
                print(f"  n={n:,}: over {args.semantic_timeout:.0f} s, stopped", flush=True)
                _extrapolate(rows, sizes[sizes.index(n) :])
                break
            result = json.loads(done.stdout)
            rows.append((n, result))
            print(f"  n={n:,}: {json.dumps(result)}", flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(directory, ignore_errors=True)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    _semantic_table(rows)


def _semantic_table(rows: list[tuple[int, dict[str, Any]]]) -> None:
    print(f"{'n':>10} {'seconds':>8} {'x per 10x':>9} {'client MB':>9} {'worker MB':>9} {'clusters':>8} "
          f"{'leaves':>7} {'largest':>8} {'stored/n':>8} {'member/n':>8} {'pairs':>8} {'planted recall':>14} "
          f"{'recall':>7} {'precision':>9}")  # fmt: skip
    previous: tuple[int, float] | None = None
    for n, r in rows:
        growth = f"{(r['seconds'] / previous[1]) ** (1 / np.log10(n / previous[0])):.1f}" if previous else ""
        recall = f"{r['recall']:.4f}" if "recall" in r else ""
        precision = f"{r['precision']:.4f}" if "precision" in r else ""
        print(f"{n:>10,} {r['seconds']:>8.1f} {growth:>9} {r['client_mb']:>9.0f} {r['worker_mb']:>9.0f} "
              f"{r['clusters']:>8} {r['leaves']:>7,} {r['largest_cluster']:>8,} {r['stored'] / r['embedded']:>8.2f} "
              f"{r['memberships'] / r['embedded']:>8.2f} {r['pairs']:>8,} {r['planted_recall']:>14.4f} "
              f"{recall:>7} {precision:>9}")  # fmt: skip
        previous = (n, r["seconds"])
    for n, r in rows:
        phases = ", ".join(f"{k[8:]} {r[k]:.1f} s" for k in r if k.startswith("seconds_"))
        exact = ""
        if "recall" in r:
            exact = (f"; exact pairs {r['exact_pairs']:,}, missed {r['missed']} "
                     f"({r['missed_near_threshold']} within 1e-4 of the threshold), "
                     f"false {r['false']} ({r['false_near_threshold']} within 1e-4)")  # fmt: skip
        print(f"n={n:,}: {phases}{exact}")


def _extrapolate(rows: list[tuple[int, dict[str, Any]]], missing: list[int]) -> None:
    """Seconds at the sizes that did not run, from the last measured growth (needs two measured sizes)."""
    if len(rows) < 2:
        print("  (fewer than two sizes measured: nothing to extrapolate from)")
        return
    (n1, r1), (n2, r2) = rows[-2], rows[-1]
    exponent = np.log(r2["seconds"] / r1["seconds"]) / np.log(n2 / n1)
    for n in missing:
        print(f"  n={n:,}: extrapolated {r2['seconds'] * (n / n2) ** exponent:.0f} s (time ~ n^{exponent:.2f}, "
              f"measured {n1:,} -> {n2:,}), not run")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000,4000000")
    parser.add_argument("--dim", type=int, default=None, help="64 (512 for --semantic-scale)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--cosine", type=float, default=0.95)
    parser.add_argument("--kinds", default="hashes,embeddings")
    parser.add_argument("--compare", action="store_true", help="curate's Hamming index against faiss's")
    parser.add_argument("--faiss", default="3x21x1,4x16x1,6x10x0,8x8x0", help="NHASHxBxNFLIP,... for --compare")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each configuration for --compare")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one --compare run may take")
    parser.add_argument("--semantic-scale", action="store_true", help="semantic_pairs on a LocalCluster")
    parser.add_argument("--part-rows", type=int, default=100_000, help="rows per part for --semantic-scale")
    parser.add_argument("--centres", type=int, default=5_000, help="cluster centres of --semantic-scale's data")
    parser.add_argument("--margin", type=float, default=None, help="semantic_pairs' margin (default: its own)")
    parser.add_argument("--clusters", type=int, default=None, help="semantic_pairs' coarse clusters")
    parser.add_argument("--leaf-rows", type=int, default=None, help="semantic_pairs' rows per leaf cluster")
    parser.add_argument("--max-extra", type=int, default=None, help="semantic_pairs' most query leaves per row")
    parser.add_argument("--probes", type=int, default=None, help="semantic_pairs' coarse clusters probed per row")
    parser.add_argument("--brute-max", type=int, default=100_000, help="largest size checked by exact search")
    parser.add_argument("--semantic-timeout", type=float, default=1500.0, help="seconds one size may run")
    parser.add_argument("--tmp", default="/tmp", help="where --semantic-scale writes its parts")
    parser.add_argument("--keep", action="store_true", help="keep --semantic-scale's parts")
    parser.add_argument("--semantic-generate", nargs=2, metavar=("N", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--semantic-run", nargs=2, metavar=("N", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--one-index", nargs=2, metavar=("CONFIG", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dim is None:
        args.dim = 512 if args.semantic_scale or args.semantic_generate or args.semantic_run else 64
    if args.semantic_generate:
        print(json.dumps(semantic_generate(int(args.semantic_generate[0]), Path(args.semantic_generate[1]), args)))
        return 0
    if args.semantic_run:
        print(json.dumps(semantic_run(int(args.semantic_run[0]), Path(args.semantic_run[1]), args)))
        return 0
    if args.semantic_scale:
        semantic_scale(args)
        return 0
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args)))
        return 0
    if args.one_index:
        print(json.dumps(one_index(args.one_index[0], int(args.one_index[1]), args.k)))
        return 0
    if args.compare:
        compare(args)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'kind':<11} {'n':>10} {'seconds':>9} {'x per 10x n':>12} {'peak RSS MB':>12} {'duplicates':>11}")
    for kind in args.kinds.split(","):
        previous: tuple[int, float] | None = None
        for n in sizes:
            child = [sys.executable, __file__, "--one", kind, str(n), "--dim", str(args.dim), "--k", str(args.k),
                     "--cosine", str(args.cosine)]  # fmt: skip
            result = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
            growth = ""
            if previous:
                # time ratio normalised to a 10x step: (t2 / t1) ** (1 / log10(n2 / n1))
                growth = f"{(result['seconds'] / previous[1]) ** (1 / np.log10(n / previous[0])):.1f}"
            print(f"{kind:<11} {n:>10,} {result['seconds']:>9.2f} {growth:>12} {result['peak_rss_mb']:>12.0f} "
                  f"{result['duplicates']:>11,}", flush=True)  # fmt: skip
            previous = (n, result["seconds"])
    for line in agreement(args):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
