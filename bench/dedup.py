"""Dedup benchmark: time and peak memory to de-duplicate synthetic hashes and embeddings at growing sizes, the
growth per 10x input, and agreement with brute force on a 20k subset.

    .venv/bin/python bench/dedup.py [--sizes 100000,1000000,4000000] [--dim 64] [--k 5] [--cosine 0.95]

Hashes: random 64-bit pHashes, 1 % of them copies of others with 1..k bits flipped, and 1 % exact byte
duplicates (same sha256); the timed work is the dedup stage's own grouping step (`assign_groups`: exact groups,
multi-index Hamming search, connected components, representatives). Embeddings: random unit vectors of --dim
dimensions, 1 % near copies; the timed work is faiss range search (flat up to dedup.flat_max rows, IVF beyond, as the
stage does) plus connected components. Each size runs in a fresh process so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--one", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args)))
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
