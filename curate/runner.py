"""Shards, fingerprints, skip-completed, Dask submission, atomic parts, per-shard stats.

The runner alone applies the caching rule (`curate.cache`) and submits Dask tasks. A stage sees a
`StageContext`: the run directory, a map of tasks over the cluster, and cached steps (a run-wide one, or one
per shard), never the runner itself.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from distributed import Client, as_completed
from tqdm import tqdm

from curate import __version__, pipeline
from curate.cache import fingerprint, is_current, read_marker, record_step
from curate.config import ConfigError, CurateConfig
from curate.faults import describe
from curate.io.atomic import sha256_file, write_json, write_parquet, write_text
from curate.rundir import RunDir
from curate.schema import FAILED, OK, check_reasons
from curate.stages.base import ShardStage

SHARD_FAILED = "shard_failed"
# The CPU workers of curate's own clusters (curate.run.open_client) offer one COMPUTE_SLOT and two NETWORK_SLOTs,
# and run a thread for each: a task that mostly waits on the network (fetch) takes a NETWORK_SLOT, every other
# task the COMPUTE_SLOT. So a worker computes one shard (detect) while it downloads two, and the downloads keep
# their threads while it computes (with two threads, overlapped downloads lost one of them to detect and ran
# slower than stage by stage: bench/README.md). GPU workers offer no slot (only GPU=1, for detect), so nothing
# else ever holds a GPU worker.
COMPUTE_SLOT = "compute"
NETWORK_SLOT = "network"
# What each CPU worker offers, one thread per slot.
CPU_WORKER_RESOURCES = {COMPUTE_SLOT: 1, NETWORK_SLOT: 2}
CPU_WORKER_THREADS = sum(CPU_WORKER_RESOURCES.values())


class StageRefused(RuntimeError):
    """A stage refuses to go on, before writing anything: shards of earlier stages failed (release, unless
    allowed), or its output is a published release that must not change."""


log = logging.getLogger(__name__)


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
    run: RunDir,
    stage: str,
    shard: int,
    fp: str,
    frame: pd.DataFrame,
    started: float,
    failed: bool = False,
    outputs: list[Path] | None = None,
) -> dict[str, Any]:
    """The shard's completion marker, written last; `outputs`: files besides the part the shard wrote (fetch's
    tar), which must still exist for the shard to count as finished."""
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
        "outputs": [p.relative_to(run.root).as_posix() for p in [run.part(stage, shard), *(outputs or [])]],
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
        live &= rows[f"{name}_status"] == OK
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
    frame[f"{name}_status"] = pd.Series(FAILED, index=rows.index, dtype="string").where(live)
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
    return write_marker(run, stage.name, shard, fp, frame, started, outputs=stage.shard_outputs(run, shard))


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


def chains(stage: ShardStage) -> bool:
    """Whether a stage's shards can each run right after the same shard's stage before (`Runner.run_overlapped`):
    one with no run-wide step (dedup's grouping, release's selection, review's decisions), that lays out no
    shards and refuses no work."""
    kind = type(stage)
    return (
        not kind.lays_out_shards
        and not kind.sees_all_rows
        and kind.prepare is ShardStage.prepare
        and kind.refuse_work is ShardStage.refuse_work
    )


class StageContext:
    """What a stage's run-wide work sees: the config, the run directory, a map of tasks over the cluster, and
    cached steps. Failures of its tasks are recorded in the stage's report; `failed` says whether any happened."""

    def __init__(self, runner: Runner, stage: str, report: StageReport) -> None:
        self._runner = runner
        self._report = report
        self.stage = stage
        self.cfg = runner.cfg
        self.run = runner.run

    @property
    def failed(self) -> bool:
        return bool(self._report.failures)

    def map(
        self,
        func: Callable[..., Any],
        tasks: Mapping[Any, tuple[Any, ...]],
        *,
        desc: str,
        key: str,
        retries: int | None = None,
        error_file: Callable[[Any], Path] | None = None,
    ) -> dict[Any, Any]:
        """`func(*args)` for every tag's args as one Dask task each (key `<key>-<n>`); → tag: result of every
        task that succeeded. A task that failed after its retries is recorded (and its traceback written to
        `error_file(tag)` when given); the others go on."""
        if not tasks:
            return {}
        futures = {
            tag: self._runner.submit(func, *args, key=f"{key}-{n}", retries=retries)
            for n, (tag, args) in enumerate(tasks.items())
        }
        return dict(self._runner.gather(futures, self._report, desc, error_file))

    def step(self, name: str, made_from: Any, outputs: list[Path], build: Callable[[], None]) -> str:
        """A run-wide step of the stage, cached by the one rule: `build()` (which writes `outputs`) runs only
        when the step's marker (work/<stage>/<name>.json) does not hold the fingerprint of `made_from` or an
        output is gone. Returns one digest of the outputs, for the fingerprint of every shard."""
        marker_path, fp = self._step_marker(name), self._step_fingerprint(name, made_from, outputs)
        marker = read_marker(marker_path)
        if marker is None or not is_current(marker, fp, self.run.root):
            build()
            marker = record_step(marker_path, self.run.root, fp, outputs)
        return str(marker["digest"])

    def is_current(self, name: str, made_from: Any, outputs: list[Path]) -> bool:
        """Whether step `name` would be reused (a stage that may not rebuild it asks first: release, published)."""
        marker = read_marker(self._step_marker(name))
        return is_current(marker, self._step_fingerprint(name, made_from, outputs), self.run.root)

    def _step_marker(self, name: str) -> Path:
        return self.run.root / "work" / self.stage / f"{name}.json"

    def _step_fingerprint(self, name: str, made_from: Any, outputs: list[Path]) -> str:
        listed = [p.relative_to(self.run.root).as_posix() for p in outputs]
        return fingerprint({"step": f"{self.stage}/{name}", "made_from": made_from, "outputs": listed})

    def shard_steps(
        self,
        name: str,
        func: Callable[[CurateConfig, int], Any],
        made_from: Callable[[int], Any],
        output: Callable[[int], Path],
    ) -> list[str]:
        """A per-shard step of the stage, cached by the one rule: `func(cfg, shard)` (which writes
        `output(shard)`) runs as a Dask task for every shard whose marker (beside its output, `.json`) does not
        hold the fingerprint of `made_from(shard)`. Returns the outputs' sha256 in shard order ([] when a task
        failed: see `failed`)."""
        shards = range(self.run.num_shards())
        fps = {s: fingerprint({"step": f"{self.stage}/{name}", "made_from": made_from(s)}) for s in shards}
        todo = {
            s: (self.cfg, s) for s in shards if not is_current(read_marker(_beside(output(s))), fps[s], self.run.root)
        }
        for shard in self.map(
            func, todo, desc=f"{self.stage} {name}", key=f"{self.stage}-{name}-{fingerprint(fps)[:12]}"
        ):
            record_step(_beside(output(shard)), self.run.root, fps[shard], [output(shard)])
        if self.failed:
            return []
        markers = [read_marker(_beside(output(s))) or {} for s in shards]
        return [str(m["output_sha256"][0]) for m in markers]


def _beside(output: Path) -> Path:
    return output.with_suffix(".json")


class Runner:
    """Runs stages over the run directory's shards on a Dask client that is opened only when needed."""

    def __init__(self, cfg: CurateConfig, client_factory: Callable[[], Client]) -> None:
        self.cfg = cfg
        self.run = RunDir(Path(cfg.run.dir))
        self._client_factory = client_factory
        self._client: Client | None = None
        self._warming = ThreadPoolExecutor(max_workers=1, thread_name_prefix="curate-warm")
        self._warm: dict[str, Future[Any]] = {}

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def close(self) -> None:
        self._warming.shutdown(wait=False, cancel_futures=True)
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
        retries: int | None = None,
        priority: int = 0,
        waits_on_network: bool = False,
        uses_gpu: bool = False,
    ) -> Any:
        """One task on the cluster; Dask runs it again (`retries`, default dask.retries, times) when it raises or
        its worker dies. Of the tasks that can run, Dask starts those of higher `priority` first. Where it runs
        is `placement`'s."""
        retries = self.cfg.dask.retries if retries is None else retries
        resources = self.placement(uses_gpu, waits_on_network)
        return self.client.submit(func, *args, key=key, resources=resources, retries=retries, priority=priority)

    def placement(self, uses_gpu: bool, waits_on_network: bool) -> dict[str, int] | None:
        """The resources a task asks for. A GPU stage's: a GPU worker, when the run has GPUs (dask.gpus). On
        curate's own clusters every other task takes a CPU worker's NETWORK_SLOT if it waits on the network, else
        its COMPUTE_SLOT. On a cluster given by dask.address only the GPU rule holds (its workers offer no
        slots)."""
        if uses_gpu and self.cfg.dask.gpus:
            return {"GPU": 1}
        if self.cfg.dask.address:
            return None
        return {NETWORK_SLOT: 1} if waits_on_network else {COMPUTE_SLOT: 1}

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
                    self.record_failure(err, report, desc, tag, error_file)
                else:
                    yield tag, result
                bar.update(1)

    def record_failure(
        self, err: BaseException, report: StageReport, desc: str, tag: Any, error_file: Callable[[Any], Path] | None
    ) -> None:
        """A task that failed after its retries: in the report, the log and (when given) `error_file(tag)`."""
        where = ""
        if error_file is not None:
            path = error_file(tag)
            text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            tries = self.cfg.dask.retries + 1
            write_text(path, f"{desc} {tag} failed in each of {tries} attempt(s)\n{text}")
            where = f" (traceback: {path})"
        report.failures.append(f"{desc} {tag}: {type(err).__name__}: {str(err)[:300]}{where}")
        log.error("%s %s failed: %s%s", desc, tag, err, where)

    def layout_is_current(self, stage: ShardStage) -> bool:
        """Whether a stage that lays out the shards (ingest) finished every shard with its fingerprint now."""
        num_shards = stage.layout_shards()
        if not (self.run.shards_file.exists() and self.run.num_shards() == num_shards):
            return False
        fp = stage.layout_fingerprint()
        return all(is_current(self.run.read_marker(stage.name, s), fp, self.run.root) for s in range(num_shards))

    def has_work(self, stage: ShardStage, upstream: list[str] | None = None) -> bool:
        """Whether some shard would run now, upstream as it stands. For a stage with a run-wide step (`prepare`)
        it answers True unless asked of its shards alone: their fingerprints hold the step's digest, unknown here."""
        if stage.lays_out_shards:
            return not self.layout_is_current(stage)
        upstream = pipeline.upstream(stage.name) if upstream is None else upstream
        for shard in range(self.run.num_shards()):
            try:
                fp = shard_fingerprint(stage, self.run, upstream, shard)
            except ConfigError:  # an upstream shard is unfinished: it will run, and this stage after it
                return True
            if not is_current(self.run.read_marker(stage.name, shard), fp, self.run.root):
                return True
            if stage.wants_rerun(self.run, shard):
                return True
        return False

    def run_stage(self, stage: ShardStage, upstream: list[str] | None = None) -> StageReport:
        """The stage over every shard, reading the columns of `upstream` (default: every earlier stage)."""
        if stage.lays_out_shards:
            return self._run_layout(stage)
        upstream = pipeline.upstream(stage.name) if upstream is None else upstream
        started = time.perf_counter()
        num_shards = self.run.num_shards()
        report = StageReport(stage.name, num_shards)
        try:
            # a run-wide step (dedup's grouping, release's selection, review's latest decisions)
            prepared = stage.prepare(StageContext(self, stage.name, report))
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
            fp = self.shard_todo(stage, upstream, shard, report, prepared)
            if fp is not None:
                todo[shard] = fp
        refused = stage.refuse_work(self.run) if todo else None
        if refused:
            report.failures.append(refused)
            report.fatal = True
            report.wall_s = time.perf_counter() - started
            return report
        if todo:
            stage.before_work()  # e.g. detect's weight check: only when a shard will run
            futures = {
                shard: self.submit(
                    run_shard,
                    stage,
                    upstream,
                    shard,
                    fp,
                    key=f"{stage.name}-{shard}-{fp[:12]}",
                    waits_on_network=stage.waits_on_network,
                    uses_gpu=stage.uses_gpu,
                )
                for shard, fp in todo.items()
            }
            errors = partial(self.run.error_file, stage.name)
            done = set()
            for shard, marker in self.gather(futures, report, stage.name, errors):
                report.finished(marker)
                done.add(shard)
            for shard in sorted(set(todo) - done):
                self.shard_failed(stage, upstream, shard, todo[shard], report)
        if report.failed_shards and stage.sees_all_rows:
            report.fatal = True
        elif not report.fatal and (todo or not stage.is_finished(self.run)):
            stage.finish(self.run, num_shards)
        report.wall_s = time.perf_counter() - started
        self.record(report)
        return report

    def shard_todo(
        self, stage: ShardStage, upstream: list[str], shard: int, report: StageReport, prepared: str | None = None
    ) -> str | None:
        """The shard's fingerprint when it must run now; None (counted as skipped in `report`) when its marker
        is current."""
        fp = shard_fingerprint(stage, self.run, upstream, shard, prepared)
        marker = self.run.read_marker(stage.name, shard)
        if is_current(marker, fp, self.run.root) and marker is not None and not stage.wants_rerun(self.run, shard):
            report.skipped += 1
            report.add(marker)
            return None
        return fp

    def shard_failed(self, stage: ShardStage, upstream: list[str], shard: int, fp: str, report: StageReport) -> bool:
        """A shard task failed after its retries: its rows are recorded as failed/shard_failed (not for release,
        the last stage). False when even that failed: the stage is fatal, later stages must not run."""
        report.failed_shards.append(shard)
        if stage.sees_all_rows:
            return True  # release: nothing after it; its files are not assembled
        summary = f"shard task failed: see {self.run.error_file(stage.name, shard).relative_to(self.run.root)}"
        try:
            report.add(write_failed_shard(stage, upstream, shard, fp, summary))
        except Exception as err:  # noqa: BLE001 - e.g. the disk that failed the task is still full
            report.fatal = True  # the shard has no rows to go on with: later stages must not run
            report.failures.append(f"{stage.name} {shard}: could not record the failure: {describe(err)}")
            return False
        return True

    def warm(self, stage: ShardStage) -> Future[Any]:
        """The stage's fingerprint config, computed in a thread from the first call on. It can take seconds in
        this process (detect's identities import torch and the detectors): started early (while ingest runs), the
        overlapped chain does not stall on it when the first shard reaches that stage."""
        if stage.name not in self._warm:
            self._warm[stage.name] = self._warming.submit(stage.fingerprint_config)
        return self._warm[stage.name]

    def run_overlapped(self, stages: list[ShardStage]) -> list[StageReport]:
        """Consecutive per-shard stages (`overlaps`) as one chain of tasks per shard: a shard's next stage is
        submitted as soon as its stage before is done, so that detect of shard N runs while other shards still
        download. Each task is `run_shard`, cached and fingerprinted as when the stages run one after another (the
        outputs are the same bytes); later stages get a higher Dask priority, so a free worker finishes a shard's
        chain before it opens another shard. A shard whose task failed after its retries goes on over its
        failed/shard_failed rows; a stage that could not record a failure stops every shard's chain there."""
        started = time.perf_counter()
        num_shards = self.run.num_shards()
        reports = [StageReport(stage.name, num_shards) for stage in stages]
        upstreams = [pipeline.upstream(stage.name) for stage in stages]
        warm = [self.warm(stage) for stage in stages]
        prepared: set[int] = set()
        for k, stage in enumerate(stages):
            if self.has_work(stage):
                stage.before_work()  # e.g. detect's weight check: before any shard is submitted
                prepared.add(k)
        pending: dict[Any, tuple[int, int, str]] = {}
        finished: as_completed | None = None  # opened with the first task: no work, no client
        bars = [self.progress(num_shards, stage.name) for stage in stages]
        last = [started] * len(stages)

        def advance(k: int, shard: int) -> None:
            # the shard's first stage from k that has work is submitted; the current ones before it are skipped
            nonlocal finished
            for j in range(k, len(stages)):
                if any(report.fatal for report in reports[: j + 1]):
                    return  # a stage could not record a failure: no chain goes past it
                warm[j].result()
                fp = self.shard_todo(stages[j], upstreams[j], shard, reports[j])
                if fp is None:
                    bars[j].update(1)
                    continue
                if j not in prepared:  # work that appeared only now (an earlier stage re-ran this shard)
                    stages[j].before_work()
                    prepared.add(j)
                future = self.submit(
                    run_shard, stages[j], upstreams[j], shard, fp, key=f"{stages[j].name}-{shard}-{fp[:12]}",
                    priority=j, waits_on_network=stages[j].waits_on_network, uses_gpu=stages[j].uses_gpu,
                )  # fmt: skip
                pending[future] = (j, shard, fp)
                if finished is None:
                    finished = as_completed([future], loop=self.client.loop)
                else:
                    finished.add(future)
                return

        try:
            for shard in range(num_shards):
                advance(0, shard)
            for future in finished if finished is not None else []:
                k, shard, fp = pending.pop(future)
                stage, report = stages[k], reports[k]
                try:
                    marker = future.result()
                except Exception as err:  # noqa: BLE001 - the shard's failure; the other shards go on
                    self.record_failure(err, report, stage.name, shard, partial(self.run.error_file, stage.name))
                    go_on = self.shard_failed(stage, upstreams[k], shard, fp, report)
                else:
                    report.finished(marker)
                    go_on = True
                bars[k].update(1)
                last[k] = time.perf_counter()
                if go_on:
                    advance(k + 1, shard)
        finally:
            for bar in bars:
                bar.close()
        for k, (stage, report) in enumerate(zip(stages, reports, strict=True)):
            if any(r.fatal for r in reports[:k]):
                report.fatal = True  # its shards did not all get their input: it stopped with the stage before
            elif not report.fatal and (report.done or not stage.is_finished(self.run)):
                stage.finish(self.run, num_shards)
            # each stage's wall time runs from the chain's start to its last shard
            report.wall_s = (last[k] if report.done or report.failures else time.perf_counter()) - started
            self.record(report)
        return reports

    def _run_layout(self, stage: ShardStage) -> StageReport:
        """A stage that lays out the shards (ingest) is one step over all its inputs: it runs whole, when any
        shard's marker lacks its fingerprint, and its tasks write every shard's part and marker."""
        started = time.perf_counter()
        num_shards = stage.layout_shards()
        report = StageReport(stage.name, num_shards)
        if self.layout_is_current(stage):
            report.skipped = num_shards
            for shard in range(num_shards):
                report.add(self.run.read_marker(stage.name, shard) or {"counts": {}})
        else:
            for marker in stage.lay_out(StageContext(self, stage.name, report), stage.layout_fingerprint()):
                report.finished(marker)
            report.fatal = bool(report.failures)  # no shard layout without every input read: nothing later runs
        report.wall_s = time.perf_counter() - started
        self.record(report)
        return report

    def record(self, report: StageReport) -> None:
        """stats/<stage>.json: totals of the last invocation that did work (per-shard detail: stats/<stage>/)."""
        if not (report.done or report.failures):
            return
        write_json(self.run.root / "stats" / f"{report.stage}.json", report.as_json())
