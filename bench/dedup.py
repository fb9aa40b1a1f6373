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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pandas as pd

from curate.config import CurateConfig, DedupConfig
from curate.dedup import embeddings, hamming_index
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000,4000000")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--cosine", type=float, default=0.95)
    parser.add_argument("--kinds", default="hashes,embeddings")
    parser.add_argument("--compare", action="store_true", help="curate's Hamming index against faiss's")
    parser.add_argument("--faiss", default="3x21x1,4x16x1,6x10x0,8x8x0", help="NHASHxBxNFLIP,... for --compare")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each configuration for --compare")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one --compare run may take")
    parser.add_argument("--one", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--one-index", nargs=2, metavar=("CONFIG", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
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
