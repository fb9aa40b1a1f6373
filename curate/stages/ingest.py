"""ingest: read candidates from a source and fix the shard layout for the whole run.

Two distributed steps: every input unit (file, API query) is read by one task that scatters its rows into
per-shard buckets by a hash of `image_id`; then one task per shard concatenates its buckets in unit order,
marks repeated ids, and writes the shard's part and marker. Memory stays bounded by a unit's batch size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from curate.config import CurateConfig
from curate.io.atomic import read_parquet, write_json, write_parquet
from curate.rundir import RunDir
from curate.runner import Runner, StageReport, fingerprint, write_marker
from curate.schema import CANDIDATE_COLUMNS, check_reasons
from curate.sources import expand_inputs, read_unit, rows_to_frame, unit_fingerprint

NAME = "ingest"
VERSION = "1"


def shard_of(image_ids: pd.Series, num_shards: int) -> pd.Series:
    """Stable across runs and machines (unlike Python's hash())."""
    return image_ids.map(lambda i: int(hashlib.sha1(str(i).encode("utf-8")).hexdigest()[:8], 16) % num_shards)


def bucket_path(run: RunDir, unit_index: int, shard: int) -> Path:
    return run.root / "manifest" / "_ingest_buckets" / f"unit-{unit_index:05d}" / f"part-{shard:05d}.parquet"


def scatter_unit(cfg: CurateConfig, unit_index: int, unit: str) -> int:
    run = RunDir(Path(cfg.run.dir))
    buckets: dict[int, list[pd.DataFrame]] = {}
    total = 0
    for batch in read_unit(cfg.ingest, unit):
        total += len(batch)
        for shard, rows in batch.groupby(shard_of(batch["image_id"], cfg.ingest.num_shards), sort=True):
            buckets.setdefault(int(shard), []).append(rows)
    for shard, frames in buckets.items():
        write_parquet(bucket_path(run, unit_index, shard), pd.concat(frames, ignore_index=True))
    return total


def merge_shard(cfg: CurateConfig, shard: int, num_units: int, fp: str) -> dict[str, Any]:
    started = time.perf_counter()
    run = RunDir(Path(cfg.run.dir))
    frames = [
        read_parquet(path) for unit_index in range(num_units) if (path := bucket_path(run, unit_index, shard)).exists()
    ]
    frame = pd.concat(frames, ignore_index=True) if frames else rows_to_frame([])
    # The first occurrence of an id is the candidate; later ones are recorded, not silently merged.
    repeated = frame["image_id"].duplicated(keep="first") & (frame["ingest_status"] == "ok")
    frame.loc[repeated, ["ingest_status", "ingest_reason"]] = ["rejected", "duplicate_id"]
    frame = frame[CANDIDATE_COLUMNS]
    check_reasons(NAME, frame["ingest_reason"])
    write_parquet(run.part(NAME, shard), frame)
    return write_marker(run, NAME, shard, fp, frame, started)


def ingest_fingerprint(cfg: CurateConfig, units: list[str]) -> str:
    return fingerprint(
        {
            "stage": NAME,
            "version": VERSION,
            "config": dataclasses.asdict(cfg.ingest),
            "units": [unit_fingerprint(cfg.ingest, unit) for unit in units],
        }
    )


def run_ingest(runner: Runner) -> StageReport:
    cfg, run = runner.cfg, runner.run
    started = time.perf_counter()
    num_shards = cfg.ingest.num_shards
    units = expand_inputs(cfg.ingest)
    fp = ingest_fingerprint(cfg, units)
    report = StageReport(NAME, num_shards)
    markers = [run.read_marker(NAME, shard) for shard in range(num_shards)]
    layout_ok = run.shards_file.exists() and run.num_shards() == num_shards
    if layout_ok and all(m is not None and m["fingerprint"] == fp for m in markers):
        report.skipped = num_shards
        for marker in markers:
            report.add(marker or {})
        report.wall_s = time.perf_counter() - started
        runner.record(report)
        return report

    buckets = run.root / "manifest" / "_ingest_buckets"
    shutil.rmtree(buckets, ignore_errors=True)
    scattered = {
        index: runner.client.submit(scatter_unit, cfg, index, unit, key=f"ingest-read-{index}-{fp[:12]}")
        for index, unit in enumerate(units)
    }
    list(runner.gather(scattered, report, "ingest (read)"))
    if report.failures:
        report.wall_s = time.perf_counter() - started
        runner.record(report)
        return report
    merged = {
        shard: runner.client.submit(merge_shard, cfg, shard, len(units), fp, key=f"ingest-{shard}-{fp[:12]}")
        for shard in range(num_shards)
    }
    for _, marker in runner.gather(merged, report, "ingest"):
        report.finished(marker)
    if not report.failures:
        write_json(run.shards_file, {"num_shards": num_shards, "ingest_fingerprint": fp})
        shutil.rmtree(buckets, ignore_errors=True)
    report.wall_s = time.perf_counter() - started
    runner.record(report)
    return report
