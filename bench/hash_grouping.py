"""Hash grouping on the cluster: time and peak memory of the client and of each worker when dedup groups N rows
of hashes (exact sha256, pHash and its crop views) from per-shard features files, against the same grouping with
every task run in the client's own process (what the stage did before its tasks went to the workers).

    .venv/bin/python bench/hash_grouping.py [--sizes 100000,1000000,4000000] [--part-rows 100000] [--workers 2]

Rows: random 64-bit pHashes, each with a hash per crop view of curate.dedup.phash.VIEWS (random but for the full
view); 1 % of the rows are copies of others with 1..5 bits flipped, 1 % exact byte copies (same sha256) and 1 % crops
(their pHash within 1..6 bits of a crop view of another row). The features are written once per size in a process of
their own; then each way of grouping runs in a fresh process (its own peak RSS), on a fresh LocalCluster of
--workers single-threaded worker processes for `cluster`. Worker peaks are each worker's ru_maxrss at the end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.config import DedupConfig
from curate.dedup import grouping
from curate.dedup.phash import VIEWS as CROP_VIEWS

VIEWS = len(CROP_VIEWS)


def _flip(values: np.ndarray, bits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = values.copy()
    for b in range(int(bits.max(initial=0))):
        flip = np.uint64(1) << rng.integers(0, 64, size=len(values)).astype(np.uint64)
        out[b < bits] ^= flip[b < bits]
    return out


def make(n: int, part_rows: int, folder: Path, seed: int = 0) -> None:
    """Write n rows of features as parts of part_rows rows."""
    rng = np.random.default_rng(seed)
    phash = rng.integers(0, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    views = rng.integers(0, 2**63, size=(n, VIEWS), dtype=np.uint64) * np.uint64(2)
    views[:, 0] = phash
    digests = rng.integers(0, 2**62, size=n)
    share = n // 100
    near = rng.integers(0, n - 3 * share, size=share)
    phash[n - share :] = _flip(phash[near], rng.integers(1, 6, share), rng)
    exact = rng.integers(0, n - 3 * share, size=share)
    phash[n - 2 * share : n - share], digests[n - 2 * share : n - share] = phash[exact], digests[exact]
    cropped = rng.integers(0, n - 3 * share, size=share)
    which = rng.integers(1, VIEWS, size=share)
    phash[n - 3 * share : n - 2 * share] = _flip(views[cropped, which], rng.integers(1, 7, share), rng)
    views[n - 3 * share :, 0] = phash[n - 3 * share :]
    for part, start in enumerate(range(0, n, part_rows)):
        stop = min(n, start + part_rows)
        rows = stop - start
        table = pa.table(
            {
                "image_id": pa.array([f"i{i:09d}" for i in range(start, stop)]),
                "shard": pa.array(np.full(rows, part, dtype=np.int64)),
                "sha256": pa.array([f"{d:064x}" for d in digests[start:stop]]),
                "phash": pa.array(phash[start:stop].view(np.int64)),
                "phash_mirror": pa.array(np.zeros(rows, dtype=np.int64)),
                "phash_ok": pa.array(np.ones(rows, dtype=bool)),
                "trimmed_phash": pa.array(phash[start:stop].view(np.int64)),
                "view_hashes": pa.ListArray.from_arrays(
                    np.arange(0, (rows + 1) * VIEWS, VIEWS, dtype=np.int32),
                    pa.array(views[start:stop].ravel().view(np.int64)),
                ),
                "width": pa.array(rng.integers(200, 2000, rows)),
                "height": pa.array(rng.integers(200, 2000, rows)),
                "date_taken": pa.array([None] * rows, type=pa.string()),
                "dedup_error": pa.array([None] * rows, type=pa.string()),
            }
        )
        pq.write_table(table, folder / f"part-{part:05d}.parquet")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def group(folder: Path, way: str, workers: int) -> dict[str, Any]:
    parts = sorted(folder.glob("part-*.parquet"))
    outputs = [folder / f"out-{way}-{k:05d}.parquet" for k in range(len(parts))]
    settings = DedupConfig(embedding_cosine=0)
    started = time.perf_counter()
    worker_peaks: list[float] = []
    if way == "in_process":
        assert grouping.group(parts, outputs, settings, lambda f, tasks, _: {t: f(*a) for t, a in tasks.items()})
    else:
        from distributed import Client, LocalCluster

        with (
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True) as cluster,
            Client(cluster) as client,
        ):
            started = time.perf_counter()  # the cluster's start is not the grouping's

            def run_tasks(func: Any, tasks: dict[Any, tuple[Any, ...]], _: str) -> dict[Any, Any]:
                futures = {tag: client.submit(func, *args, pure=False) for tag, args in tasks.items()}
                return {tag: future.result() for tag, future in futures.items()}

            assert grouping.group(parts, outputs, settings, run_tasks)
            seconds = time.perf_counter() - started
            worker_peaks = sorted(client.run(peak_mib).values())
    seconds = time.perf_counter() - started if way == "in_process" else seconds
    rejected = sum(
        int((pq.read_table(p, columns=["dedup_status"]).column(0).to_numpy(zero_copy_only=False) == "rejected").sum())
        for p in outputs
    )
    return {"way": way, "seconds": seconds, "client_mib": peak_mib(), "worker_mib": worker_peaks, "rejected": rejected}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000,4000000")
    parser.add_argument("--part-rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--_make", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--_group", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._make:
        make(int(args._make[0]), args.part_rows, Path(args._make[1]))
        return
    if args._group:
        print(json.dumps(group(Path(args._group[0]), args._group[1], args.workers)))
        return
    print("| rows | way | seconds | client peak MiB | worker peaks MiB | rejected |")
    print("|---:|---|---:|---:|---|---:|")
    results: dict[tuple[int, str], dict[str, Any]] = {}
    for n in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="hash-grouping-") as tmp:
            me = [sys.executable, __file__, "--part-rows", str(args.part_rows), "--workers", str(args.workers)]
            subprocess.run([*me, "--_make", str(n), tmp], check=True)
            for way in ("in_process", "cluster"):
                out = subprocess.run([*me, "--_group", tmp, way], check=True, capture_output=True, text=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                results[n, way] = result
                workers = ", ".join(f"{m:.0f}" for m in result["worker_mib"]) or "-"
                print(
                    f"| {n:,} | {way} | {result['seconds']:.1f} | {result['client_mib']:.0f} | {workers} |"
                    f" {result['rejected']:,} |",
                    flush=True,
                )
    sizes = sorted({n for n, _ in results})
    for way in ("in_process", "cluster"):
        for small, large in itertools.pairwise(sizes):
            ratio = results[large, way]["seconds"] / results[small, way]["seconds"]
            per_10x = ratio ** (1 / np.log10(large / small))
            print(f"{way}: {small:,} -> {large:,} rows: {ratio:.1f}x the time ({per_10x:.1f}x per 10x)")


if __name__ == "__main__":
    main()
