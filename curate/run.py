"""Entry point: `python -m curate.run [pipeline=NAME] [stage=STAGE] [key=value ...]`.

Loads the invocation's config (curate.configload: composed, its values and what they name checked), takes the
run directory's lock, opens a Dask client only if some shard has work, runs the stage(s) and prints a summary.
No pipeline logic lives here, and no library module imports this one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from pathlib import Path
from typing import IO, Any

from omegaconf import OmegaConf

from curate import pipeline
from curate.config import ConfigError, CurateConfig, Stage
from curate.configload import config_text, load_config, pipelines_dir, without_per_invocation
from curate.io.atomic import write_text
from curate.runconfig import SAMPLE_DIR
from curate.rundir import RunDir
from curate.runner import CPU_WORKER_RESOURCES, CPU_WORKER_THREADS, Runner, StageReport, chains
from curate.stages.base import ShardStage

# SAMPLE_DIR: where the bundled sample lives, for the tests and benchmarks that name it
__all__ = ["SAMPLE_DIR", "main"]

log = logging.getLogger("curate")


def log_invocation(cfg: CurateConfig) -> Path:
    """invocations/NNNN-<stage>.yaml: every attempt under the lock, numbered under it (so numbers never race)."""
    folder = Path(cfg.run.dir) / "invocations"
    numbers = [int(p.name[:4]) for p in folder.glob("[0-9][0-9][0-9][0-9]-*.yaml")] if folder.exists() else []
    number = max(numbers, default=-1) + 1  # never an existing number, even after a log was deleted
    path = folder / f"{number:04d}-{cfg.stage.value}.yaml"
    write_text(path, config_text(cfg))
    return path


def remember_config(cfg: CurateConfig) -> None:
    """config.yaml: what the run directory is (the notebooks, report and audit read it). Written atomically, under
    the lock, by the first invocation and then by every one that succeeded; unchanged text is not rewritten."""
    path = Path(cfg.run.dir) / "config.yaml"
    # what holds for one invocation (its stage, retry_failed, ...) is not what the run is
    text = OmegaConf.to_yaml(without_per_invocation(OmegaConf.structured(cfg)))
    if not path.exists() or path.read_text() != text:
        write_text(path, text)


def open_client(cfg: CurateConfig):  # type: ignore[no-untyped-def]
    from distributed import Client, LocalCluster

    if cfg.dask.address:
        return Client(cfg.dask.address, timeout="30s", set_as_default=False)
    if cfg.dask.gpus:
        return Client(gpu_cluster(cfg), set_as_default=False)
    cluster = LocalCluster(
        n_workers=cfg.dask.n_workers or os.cpu_count() or 1,
        # one compute task per worker, and downloads beside it (Runner.placement)
        threads_per_worker=CPU_WORKER_THREADS,
        resources=CPU_WORKER_RESOURCES,
        processes=cfg.dask.processes,
        dashboard_address=":0",  # never clash with a user's own dashboard
        silence_logs=logging.ERROR,
    )
    return Client(cluster, set_as_default=False)


def gpu_cluster(cfg: CurateConfig):  # type: ignore[no-untyped-def]
    """One worker per GPU, pinned to it through CUDA_VISIBLE_DEVICES and offering GPU=1 (detect asks for it; one
    thread each), and beside them CPU workers for every other stage, above all the downloads: the GPUs detect
    while other shards download (`Runner.placement`). CPU workers: dask.n_workers, or one per core left over,
    each with a compute thread and two download threads, and no GPU in sight."""
    from distributed import Nanny, Scheduler, SpecCluster, Worker

    gpus = cfg.dask.gpus
    cpus = cfg.dask.n_workers or max(1, (os.cpu_count() or 1) - gpus)
    workers: dict[str, dict[str, Any]] = {
        f"gpu-{index}": {
            "cls": Nanny,
            "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": str(index)}, "resources": {"GPU": 1}},
        }
        for index in range(gpus)
    }
    for index in range(cpus):
        options: dict[str, Any] = {"nthreads": CPU_WORKER_THREADS, "resources": dict(CPU_WORKER_RESOURCES)}
        if cfg.dask.processes:
            options["env"] = {"CUDA_VISIBLE_DEVICES": ""}
        workers[f"cpu-{index}"] = {"cls": Nanny if cfg.dask.processes else Worker, "options": options}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR)


def stages_for(stage: Stage) -> list[str]:
    if stage == Stage.all:
        return list(pipeline.names())
    return [stage.value]


def stage_groups(cfg: CurateConfig) -> list[list[ShardStage]]:
    """The invocation's stages in order, consecutive per-shard stages grouped to run overlapped (run.overlap):
    with stage=all, license, fetch and detect run as one chain of tasks per shard; run-wide steps stay barriers."""
    groups: list[list[ShardStage]] = []
    for name in stages_for(cfg.stage):
        stage = pipeline.stage_class(name)(cfg)
        if cfg.run.overlap and groups and chains(stage) and all(chains(s) for s in groups[-1]):
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


def needs_models(cfg: CurateConfig, runner: Runner) -> bool:
    """Whether detect will run a model in this invocation: a review, audit or re-release of a finished run
    needs no weight file (and so no models.dir) at all."""
    names = stages_for(cfg.stage)
    if "detect" not in names:
        return False
    if not runner.run.shards_file.exists():
        return True
    # detect has work when it, or a stage before it in this invocation, has a shard to redo
    before = [*pipeline.upstream("detect"), "detect"]
    return any(runner.has_work(pipeline.stage_class(name)(cfg)) for name in names if name in before)


def run_locked(cfg: CurateConfig) -> list[StageReport]:
    reports: list[StageReport] = []
    runner = Runner(cfg, lambda: open_client(cfg))
    try:
        if needs_models(cfg, runner):
            from curate.models.registry import check_available

            check_available(cfg)  # a missing weight file fails here, before any work
        groups = stage_groups(cfg)
        for stage in (stage for group in groups if len(group) > 1 for stage in group):
            runner.warm(stage)  # while the stages before the chain run (ingest)
        for group in groups:
            done = runner.run_overlapped(group) if len(group) > 1 else [runner.run_stage(group[0])]
            reports += done
            if any(report.fatal for report in done):
                break  # a failed shard does not stop the run (its rows are shard_failed); a failed stage does
    finally:
        runner.close()
    return reports


def run_tool(cfg: CurateConfig) -> int:
    """stage=audit (draw the sample to check) and stage=report (the static HTML report): read-only helpers
    over a finished run, outside `all`."""
    try:
        if cfg.stage == Stage.audit:
            from curate.review.audit import draw, sample_path

            sample = draw(cfg)
            print(f"audit: {len(sample)} released images drawn (seed {cfg.audit.seed}) -> {sample_path(cfg)}")
            print(
                "check them in notebooks/review_flagged.ipynb with mode='audit'; the next version's data card "
                "states the residual rate (README: 'Reviewing, auditing, reporting')"
            )
        else:
            from curate.review.report import write_report

            print(f"report: {write_report(cfg)} (it shows flagged images: keep it inside the run directory)")
    except FileNotFoundError as err:
        print(f"curate: {err}", file=sys.stderr)
        return 2
    return 0


def hold_run_lock(root: Path) -> IO[str]:
    """One writer per run directory; a killed run's lock dies with it, and so may its temp files."""
    root.mkdir(parents=True, exist_ok=True)
    handle = open(root / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(f"another curate process is writing {root}; wait for it or choose another run.dir") from None
    for stale in [*root.rglob(".*.tmp"), *root.rglob(".*.spool")]:
        stale.unlink(missing_ok=True)  # half-written files of a killed run: never read, safe to drop
    return handle


def summary(reports: list[StageReport], alarm_fraction: float = 0.5) -> str:
    lines = [f"{'stage':<9} {'shards run':>10} {'skipped':>8} {'rows':>8} {'ok':>8} {'wall s':>8}  top reasons"]
    for r in reports:
        ok = sum(n for k, n in r.counts.items() if k.startswith("ok/"))
        top = sorted(((n, k) for k, n in r.counts.items() if not k.startswith("ok/")), reverse=True)[:4]
        reasons = ", ".join(f"{k}={n}" for n, k in top) or "-"
        lines.append(f"{r.stage:<9} {r.done:>10} {r.skipped:>8} {r.rows:>8} {ok:>8} {r.wall_s:>8.2f}  {reasons}")
    for r in reports:
        # release repeats the earlier stages' reasons and adds the human filter and the sample, which remove most
        # rows by design: its own share would warn on every healthy run, and the stages' shares already speak.
        if r.stage != "release":
            lines += alarms(r, alarm_fraction)
    for r in reports:
        lines += [f"FAILED {line}" for line in r.failures]
        if r.failed_shards and r.stage == "release":
            lines.append(
                f"FAILED release: shard(s) {', '.join(map(str, r.failed_shards))} failed after every retry, so the "
                "release was not assembled; run it again"
            )
        elif r.failed_shards:
            lines.append(
                f"FAILED {r.stage}: shard(s) {', '.join(map(str, r.failed_shards))} failed after every retry; their "
                "rows are recorded as failed/shard_failed and the next stages went on without them. Run again to "
                "retry them (release refuses while they are failed unless release.allow_failed_shards=true)."
            )
    return "\n".join(lines)


def alarms(report: StageReport, fraction: float) -> list[str]:
    """A loud line when a stage stopped more than `fraction` of the rows it saw (or every one of them): a wrong
    column, file variant or setting looks exactly like this, and exit 0 alone would hide it."""
    seen = {k: n for k, n in report.counts.items() if k != "not_reached"}
    total = sum(seen.values())
    stopped = sum(n for k, n in seen.items() if not k.startswith("ok/"))
    if not total or not stopped or (stopped < total and stopped / total <= fraction):
        return []
    top = ", ".join(f"{k}={n}" for n, k in sorted(((n, k) for k, n in seen.items() if not k.startswith("ok/")),
                                                        reverse=True)[:3])  # fmt: skip
    share = "EVERY row" if stopped == total else f"{stopped / total:.0%} of the rows"
    return [
        f"WARNING {report.stage} stopped {share} it saw ({stopped} of {total}: {top}); "
        f"check the input and settings (alarm above run.alarm_fraction={fraction})"
    ]


def source_lines(run_dir: Path, fraction: float) -> list[str]:
    """Per input file of the last ingest: the layout it was read as, and a warning when most of its rows failed
    to parse (a YFCC file read with the wrong layout looks exactly like that)."""
    from curate.io.atomic import read_json

    found = read_json(run_dir / "stats" / "ingest_sources.json") or {}
    lines = []
    for unit in found.get("units", []):
        layout = f"read as {unit['layout']} ({unit['layout_detection']}), " if unit.get("layout") else ""
        broken = unit.get("malformed", 0) + unit.get("short", 0) + unit.get("internal_error", 0)
        lines.append(f"ingest {unit['unit']}: {layout}{unit['rows']} rows, {broken} unparseable")
        if unit["rows"] and (broken == unit["rows"] or broken / unit["rows"] > fraction):
            lines.append(
                f"WARNING ingest {unit['unit']}: {broken} of {unit['rows']} rows could not be parsed "
                "(malformed, short or internal_error): check ingest.source and the file's format"
            )
    return lines


def exit_code(cfg: CurateConfig, reports: list[StageReport]) -> int:
    """1 when something failed; failed shards are accepted only by a release that was told to go without them."""
    if any(r.fatal or (r.failures and not r.failed_shards) for r in reports):
        return 1
    released = any(r.stage == "release" and not r.fatal for r in reports)
    if any(r.failed_shards for r in reports) and not (released and cfg.release.allow_failed_shards):
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help", "--help-all", "help") for arg in args):
        from curate.configdoc import run_help

        print(run_help(pipelines_dir(), full="--help-all" in args))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # oauthlib logs signed request headers (the API key) at DEBUG: keep it and its friends quiet.
    for noisy in ("distributed", "flickrapi", "urllib3", "oauthlib", "requests_oauthlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        cfg = load_config(args)
        if cfg.stage not in (Stage.ingest, Stage.all) and not (Path(cfg.run.dir) / "config.yaml").exists():
            raise ConfigError(
                f"{cfg.run.dir} is not a run directory yet (no config.yaml): start it with stage=all (or stage=ingest)"
            )
        lock = hold_run_lock(Path(cfg.run.dir))  # nothing is written to the run directory before this
    except ConfigError as err:
        print(f"curate: {err}", file=sys.stderr)
        return 2
    try:
        return invoke(cfg, args)
    finally:
        lock.close()


def invoke(cfg: CurateConfig, args: list[str]) -> int:
    """One invocation under the lock: logged, run, then remembered in config.yaml when it succeeded."""
    log_invocation(cfg)
    root = Path(cfg.run.dir)
    first = not (root / "config.yaml").exists()
    code = run_tool(cfg) if cfg.stage in (Stage.audit, Stage.report) else run_and_report(cfg, args)
    # The first invocation is remembered once it made a run (shards exist), even if a shard failed: the run
    # directory then knows its pipeline. After that, only successful invocations are remembered.
    if code == 0 or (first and RunDir(root).shards_file.exists()):
        remember_config(cfg)
    return code


def run_and_report(cfg: CurateConfig, args: list[str]) -> int:
    try:
        reports = run_locked(cfg)
    except (ConfigError, FileNotFoundError) as err:
        print(f"curate: {err}", file=sys.stderr)
        return 2
    print(summary(reports, cfg.run.alarm_fraction))
    if any(r.stage == "ingest" and r.done for r in reports):
        print("\n".join(source_lines(Path(cfg.run.dir), cfg.run.alarm_fraction)))
    if any(r.stage == "release" and not r.fatal for r in reports):
        print(f"release: {Path(cfg.run.dir) / 'release' / cfg.release.version}")
    if hint := next_version_hint(cfg, reports, args):
        print(hint)
    return exit_code(cfg, reports)


def next_version_hint(cfg: CurateConfig, reports: list[StageReport], args: list[str]) -> str:
    """When release refused to change a published version: the command that makes the next one with this
    invocation's settings (they are not remembered, since the invocation did not succeed)."""
    from curate.stages.release import is_published, next_version

    release = next((r for r in reports if r.stage == "release"), None)
    root = Path(cfg.run.dir)
    if release is None or not release.fatal or not is_published(root, cfg.release.version):
        return ""
    replaced = ("stage=", "run.dir=", "release.version=", "release.previous=")
    kept = [a for a in args if not a.lstrip("+~").startswith(replaced)]
    command = [
        "curate run",
        f"run.dir={root}",
        "stage=all",
        *kept,
        f"release.version={next_version(root, cfg.release.version)}",
        f"release.previous={root / 'release' / cfg.release.version}",
    ]
    return "to publish what changed as a new version (with this command's overrides), run:\n  " + " ".join(command)


if __name__ == "__main__":
    sys.exit(main())
