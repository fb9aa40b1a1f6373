"""Shards, fingerprints, skip-completed, Dask submission, atomic parts, per-shard stats."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from distributed import Client, as_completed
from tqdm import tqdm

from curate import __version__
from curate.config import ConfigError, CurateConfig
from curate.faults import describe
from curate.io.atomic import sha256_file, write_json, write_parquet, write_text
from curate.rundir import RunDir
from curate.schema import check_reasons
from curate.stages.base import ShardStage

SHARD_FAILED = "shard_failed"


class StageRefused(RuntimeError):
    """A stage refuses to go on, before writing anything: shards of earlier stages failed (release, unless
    allowed), or its output is a published release that must not change."""


log = logging.getLogger(__name__)


def fingerprint(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def count_outcomes(frame: pd.DataFrame, stage: str) -> dict[str, int]:
    """'status/reason' → rows; rows the stage never saw count as 'not_reached'."""
    status = frame[f"{stage}_status"].fillna("not_reached").astype(str)
    reason = frame[f"{stage}_reason"].fillna("-").astype(str)
    keys = (status + "/" + reason).where(status != "not_reached", "not_reached")
    return {str(k): int(v) for k, v in sorted(keys.value_counts().items())}


@dataclass
class StageReport:
    stage: str
    shards: int
    done: int = 0
    skipped: int = 0
    wall_s: float = 0.0
    shard_wall_s: float = 0.0
    processed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    # Shards whose task failed after its retries: their rows are written as failed/shard_failed, and later
    # stages go on without them.
    failed_shards: list[int] = field(default_factory=list)
    # The stage could not go on at all (a run-wide step failed, or it refused): later stages do not run.
    fatal: bool = False

    def add(self, marker: dict[str, Any]) -> None:
        for key, value in marker["counts"].items():
            self.counts[key] = self.counts.get(key, 0) + value

    def finished(self, marker: dict[str, Any]) -> None:
        """A shard this invocation ran (as opposed to one it skipped)."""
        self.done += 1
        self.shard_wall_s += marker["wall_s"]
        self.processed += marker["rows"] - marker["counts"].get("not_reached", 0)
        self.add(marker)

    def as_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "shards": self.shards,
            "shards_run": self.done,
            "shards_skipped": self.skipped,
            "rows": self.rows,
            "counts": dict(sorted(self.counts.items())),
            "wall_s": round(self.wall_s, 3),
            "shard_wall_s": round(self.shard_wall_s, 3),
            "images_per_s": round(self.processed / self.wall_s, 2) if self.done and self.wall_s > 0 else None,
            "failures": self.failures,
            "failed_shards": self.failed_shards,
            "fatal": self.fatal,
        }

    @property
    def rows(self) -> int:
        return sum(self.counts.values())


def write_marker(
    run: RunDir, stage: str, shard: int, fp: str, frame: pd.DataFrame, started: float, failed: bool = False
) -> dict[str, Any]:
    wall = time.perf_counter() - started
    processed = int(frame[f"{stage}_status"].notna().sum())
    marker = {
        "stage": stage,
        "shard": shard,
        "fingerprint": fp,
        "curate_version": __version__,
        "rows": len(frame),
        "counts": count_outcomes(frame, stage),
        "wall_s": round(wall, 4),
        "images_per_s": round(processed / wall, 2) if wall > 0 else None,
        "output_sha256": sha256_file(run.part(stage, shard)),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    if failed:
        marker["failed"] = True  # never counts as finished: the next invocation tries the shard again
    else:
        run.error_file(stage, shard).unlink(missing_ok=True)  # an earlier failure's traceback no longer holds
    write_json(run.marker(stage, shard), marker)  # last: this is the completion marker
    return marker


def live_rows(rows: pd.DataFrame, upstream: list[str]) -> pd.Series:
    """Rows every upstream stage passed (status ok); the others are "not reached" for the next stage."""
    live = pd.Series(True, index=rows.index)
    for name in upstream:
        live &= rows[f"{name}_status"] == "ok"
    return live.fillna(False).astype(bool)


def write_failed_shard(stage: ShardStage, upstream: list[str], shard: int, fp: str, error: str) -> dict[str, Any]:
    """After a shard task failed for good: every row it would have handled becomes `failed`/`shard_failed`, so no
    row vanishes and the later stages go on over it (with nothing live). Its traceback lies in the error file."""
    started = time.perf_counter()
    run = RunDir(Path(stage.cfg.run.dir))
    rows = run.load_joined(shard, upstream)
    live = live_rows(rows, upstream) if not stage.sees_all_rows else pd.Series(True, index=rows.index)
    name = stage.name
    frame = pd.DataFrame(
        {column: pd.Series(pd.NA, index=rows.index, dtype=dtype) for column, dtype in stage.output_columns().items()}
    )
    frame[f"{name}_status"] = pd.Series("failed", index=rows.index, dtype="string").where(live)
    frame[f"{name}_reason"] = pd.Series(SHARD_FAILED, index=rows.index, dtype="string").where(live)
    frame[f"{name}_error"] = pd.Series(error, index=rows.index, dtype="string").where(live)
    write_parquet(run.part(name, shard), frame)
    return write_marker(run, name, shard, fp, frame, started, failed=True)


def run_shard(stage: ShardStage, upstream: list[str], shard: int, fp: str) -> dict[str, Any]:
    """One task: read the shard, run the stage on its live rows, write part then marker."""
    started = time.perf_counter()
    run = RunDir(Path(stage.cfg.run.dir))
    rows = run.load_joined(shard, upstream)
    live = live_rows(rows, upstream) if not stage.sees_all_rows else pd.Series(True, index=rows.index)
    added = stage.process(rows[live].reset_index(drop=True), shard, run)
    if len(added) != int(live.sum()):
        raise RuntimeError(f"stage {stage.name} returned {len(added)} rows for {int(live.sum())}")
    added.index = rows.index[live]
    for column in (f"{stage.name}_status", f"{stage.name}_reason"):
        # Typed even when no row was live, so every shard's part has the same schema.
        added[column] = added[column].astype("string")
    frame = added.reindex(rows.index)
    check_reasons(stage.name, frame[f"{stage.name}_reason"])
    write_parquet(run.part(stage.name, shard), frame)
    return write_marker(run, stage.name, shard, fp, frame, started)


def shard_fingerprint(
    stage: ShardStage, run: RunDir, upstream: list[str], shard: int, prepared: str | None = None
) -> str:
    inputs = {}
    for name in upstream:
        marker = run.read_marker(name, shard)
        if marker is None:
            raise ConfigError(f"stage {name} has not finished shard {shard}: run stage={name} first")
        inputs[name] = marker["output_sha256"]
    return fingerprint(
        {
            "stage": stage.name,
            "version": stage.version,
            "config": stage.fingerprint_config(),
            "inputs": inputs,
            "prepared": prepared,  # the digest of the stage's run-wide step, if it has one
        }
    )


class Runner:
    """Runs stages over the run directory's shards on a Dask client that is opened only when needed."""

    def __init__(self, cfg: CurateConfig, client_factory: Callable[[], Client]) -> None:
        self.cfg = cfg
        self.run = RunDir(Path(cfg.run.dir))
        self._client_factory = client_factory
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            # A client made from a cluster object does not own it: closing the client alone left the cluster's
            # scheduler, workers and threads running, one set per invocation in a long-lived process (the tests).
            cluster = getattr(self._client, "cluster", None)
            self._client.close()
            self._client = None
            if cluster is not None:
                cluster.close()

    def progress(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit="shard", disable=not self.cfg.run.progress, leave=True)

    def submit(
        self,
        func: Callable[..., Any],
        *args: Any,
        key: str,
        resources: dict[str, int] | None = None,
        retries: int | None = None,
    ) -> Any:
        """One task on the cluster; Dask runs it again (`retries`, default dask.retries, times) when it raises or
        its worker dies."""
        retries = self.cfg.dask.retries if retries is None else retries
        return self.client.submit(func, *args, key=key, resources=resources, retries=retries)

    def gather(
        self,
        futures: dict[Any, Any],
        report: StageReport,
        desc: str,
        error_file: Callable[[Any], Path] | None = None,
    ) -> Iterator[tuple[Any, Any]]:
        """Yield (tag, result) as tasks finish; a task that failed after its retries is recorded (its whole
        traceback in `error_file(tag)` when given), and the others go on."""
        by_future = {future: tag for tag, future in futures.items()}
        with self.progress(len(futures), desc) as bar:
            for future in as_completed(list(by_future), loop=self.client.loop):
                tag = by_future[future]
                try:
                    result = future.result()
                except Exception as err:  # noqa: BLE001 - reported per task; the other tasks go on
                    where = ""
                    if error_file is not None:
                        path = error_file(tag)
                        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
                        tries = self.cfg.dask.retries + 1
                        write_text(path, f"{desc} {tag} failed in each of {tries} attempt(s)\n{text}")
                        where = f" (traceback: {path})"
                    report.failures.append(f"{desc} {tag}: {type(err).__name__}: {str(err)[:300]}{where}")
                    log.error("%s %s failed: %s%s", desc, tag, err, where)
                else:
                    yield tag, result
                bar.update(1)

    def has_work(self, stage: ShardStage, upstream: list[str]) -> bool:
        """Whether some shard of a stage without a run-wide step would run now (upstream as it stands)."""
        num_shards = self.run.num_shards()
        for shard in range(num_shards):
            try:
                fp = shard_fingerprint(stage, self.run, upstream, shard)
            except ConfigError:  # an upstream shard is unfinished: it will run, and this stage after it
                return True
            marker = self.run.read_marker(stage.name, shard)
            if marker is None or marker["fingerprint"] != fp or marker.get("failed"):
                return True
            if stage.wants_rerun(self.run, shard):
                return True
        return False

    def run_stage(self, stage: ShardStage, upstream: list[str]) -> StageReport:
        started = time.perf_counter()
        num_shards = self.run.num_shards()
        report = StageReport(stage.name, num_shards)
        try:
            prepared = stage.prepare(self, report)  # a run-wide step (dedup's grouping, release's selection)
        except StageRefused as refusal:
            report.failures.append(str(refusal))
            report.fatal = True
            report.wall_s = time.perf_counter() - started
            return report  # a refusal leaves no trace in the run directory (the summary and exit code say it)
        if report.failures:  # the run-wide step's own tasks failed
            report.fatal = True
            report.wall_s = time.perf_counter() - started
            self.record(report)
            return report
        todo: dict[int, str] = {}
        for shard in range(num_shards):
            fp = shard_fingerprint(stage, self.run, upstream, shard, prepared)
            marker = self.run.read_marker(stage.name, shard)
            finished = marker is not None and marker["fingerprint"] == fp and not marker.get("failed")
            if finished and marker is not None and not stage.wants_rerun(self.run, shard):
                report.skipped += 1
                report.add(marker)
            else:
                todo[shard] = fp
        refused = stage.refuse_work(self.run) if todo else None
        if refused:
            report.failures.append(refused)
            report.fatal = True
            report.wall_s = time.perf_counter() - started
            return report
        if todo:
            stage.before_work()  # e.g. detect's weight check: only when a shard will run
            # GPU stages go to workers that offer a GPU (one per GPU), when the run has any.
            resources = {"GPU": 1} if stage.uses_gpu and self.cfg.dask.gpus else None
            futures = {
                shard: self.submit(
                    run_shard, stage, upstream, shard, fp, key=f"{stage.name}-{shard}-{fp[:12]}", resources=resources
                )
                for shard, fp in todo.items()
            }
            errors = partial(self.run.error_file, stage.name)
            done = set()
            for shard, marker in self.gather(futures, report, stage.name, errors):
                report.finished(marker)
                done.add(shard)
            for shard in sorted(set(todo) - done):
                report.failed_shards.append(shard)
                if stage.sees_all_rows:
                    continue  # release: nothing after it; its files are not assembled (below)
                summary = f"shard task failed: see {errors(shard).relative_to(self.run.root)}"
                try:
                    report.add(write_failed_shard(stage, upstream, shard, todo[shard], summary))
                except Exception as err:  # noqa: BLE001 - e.g. the disk that failed the task is still full
                    report.fatal = True  # the shard has no rows to go on with: later stages must not run
                    report.failures.append(f"{stage.name} {shard}: could not record the failure: {describe(err)}")
        if report.failed_shards and stage.sees_all_rows:
            report.fatal = True
        elif not report.fatal and (todo or not stage.is_finished(self.run)):
            stage.finish(self.run, num_shards)
        report.wall_s = time.perf_counter() - started
        self.record(report)
        return report

    def record(self, report: StageReport) -> None:
        """stats/<stage>.json: totals of the last invocation that did work (per-shard detail: stats/<stage>/)."""
        if not (report.done or report.failures):
            return
        write_json(self.run.root / "stats" / f"{report.stage}.json", report.as_json())
