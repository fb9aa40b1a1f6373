"""Entry point: `python -m curate.run [pipeline=NAME] [stage=STAGE] [key=value ...]`.

Composes the recipe with Hydra, checks it, opens a Dask client only if some shard has work, runs the stage(s)
and prints a summary. No pipeline logic lives here.
"""

from __future__ import annotations

import difflib
import fcntl
import logging
import os
import sys
from pathlib import Path
from typing import IO

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from curate.config import ConfigError, CurateConfig, Stage, validate
from curate.runconfig import SAMPLE_DIR, load_run_config, register_schema
from curate.runner import Runner, StageReport
from curate.sources import check_inputs

__all__ = ["SAMPLE_DIR", "load_run_config", "main"]  # load_run_config: the notebooks' old import path

log = logging.getLogger("curate")

PIPELINES_ENV = "CURATE_PIPELINES_DIR"
ORDER = ["ingest", "license", "fetch", "detect", "dedup", "review", "release"]


def pipelines_dir() -> Path:
    return Path(os.environ.get(PIPELINES_ENV) or Path(__file__).resolve().parents[1] / "pipelines")


def _explain(err: BaseException) -> str:
    """Hydra's message plus the OmegaConf cause (which holds the useful part), without the '+key' advice:
    the schema is closed, so adding a key can never be the fix."""
    lines = [line for line in str(err).strip().splitlines() if not line.startswith("To append")]
    cause = err.__cause__
    while cause is not None:
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        if first and first not in lines:
            lines.append(first)
        cause = cause.__cause__
    message = "\n  ".join(lines)
    return _hint(message) if "not in '" in message else message


def _hint(message: str) -> str:
    """Add a did-you-mean for misspelt keys."""
    keys = _all_keys(OmegaConf.structured(CurateConfig))
    for word in message.replace("'", " ").replace('"', " ").split():
        if "." in word and word not in keys:
            close = difflib.get_close_matches(word, keys, n=1)
            if close:
                return f"{message}\n  did you mean {close[0]}?"
    return message


def _all_keys(node: object, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in OmegaConf.to_container(node, resolve=False).items():  # type: ignore[union-attr]
        full = f"{prefix}{key!s}"
        keys.append(full)
        if isinstance(value, dict):
            keys += _all_keys(OmegaConf.create(value), full + ".")
    return keys


def load_config(argv: list[str]) -> CurateConfig:
    """Compose `pipeline=NAME` (a recipe in pipelines/ or a path to a .yaml) with the overrides."""
    register_schema()
    pipeline = "sample"
    overrides = []
    for arg in argv:
        if arg.startswith("pipeline="):
            pipeline = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    if pipeline.endswith(".yaml"):
        config_dir, name = Path(pipeline).resolve().parent, Path(pipeline).stem
    else:
        config_dir, name = pipelines_dir(), pipeline
    if not (config_dir / f"{name}.yaml").exists():
        known = sorted(p.stem for p in pipelines_dir().glob("*.yaml"))
        raise ConfigError(f"pipeline={pipeline!r} not found; choose one of {known} or give a path to a .yaml")
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            composed = compose(config_name=name, overrides=overrides)
        composed.pipeline = pipeline
        cfg = OmegaConf.to_object(composed)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_explain(err)) from err
    assert isinstance(cfg, CurateConfig)
    validate(cfg)
    if cfg.stage in (Stage.ingest, Stage.all) and (problem := check_inputs(cfg.ingest)):
        raise ConfigError(f"invalid configuration:\n  - {problem}")
    return cfg


def save_config(cfg: CurateConfig) -> None:
    root = Path(cfg.run.dir)
    (root / "invocations").mkdir(parents=True, exist_ok=True)
    text = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    number = len(list((root / "invocations").glob("*.yaml")))
    (root / "invocations" / f"{number:04d}-{cfg.stage.value}.yaml").write_text(text)
    (root / "config.yaml").write_text(text)


def open_client(cfg: CurateConfig):  # type: ignore[no-untyped-def]
    from distributed import Client, LocalCluster

    if cfg.dask.address:
        return Client(cfg.dask.address, timeout="30s", set_as_default=False)
    if cfg.dask.gpus:
        return Client(gpu_cluster(cfg.dask.gpus), set_as_default=False)
    cluster = LocalCluster(
        n_workers=cfg.dask.n_workers or os.cpu_count() or 1,
        threads_per_worker=1,
        processes=cfg.dask.processes,
        dashboard_address=":0",  # never clash with a user's own dashboard
        silence_logs=logging.ERROR,
    )
    return Client(cluster, set_as_default=False)


def gpu_cluster(gpus: int):  # type: ignore[no-untyped-def]
    """One worker per GPU: dask-cuda's LocalCUDACluster when installed, else plain workers each pinned to one
    GPU through CUDA_VISIBLE_DEVICES. Either way every worker offers the resource GPU=1, which detect asks for."""
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        from distributed import Nanny, Scheduler, SpecCluster

        workers = {
            f"gpu-{index}": {
                "cls": Nanny,
                "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": str(index)}, "resources": {"GPU": 1}},
            }
            for index in range(gpus)
        }
        scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
        return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR)
    return LocalCUDACluster(
        CUDA_VISIBLE_DEVICES=list(range(gpus)), threads_per_worker=1, resources={"GPU": 1}, dashboard_address=":0"
    )


def stages_for(stage: Stage) -> list[str]:
    if stage == Stage.all:
        return ORDER
    return [stage.value]


def run(cfg: CurateConfig) -> list[StageReport]:
    from curate.stages.dedup import UPSTREAM as DEDUP_INPUTS
    from curate.stages.dedup import DedupStage
    from curate.stages.detect import DetectStage
    from curate.stages.fetch import FetchStage
    from curate.stages.ingest import run_ingest
    from curate.stages.license import LicenseStage
    from curate.stages.release import RELEASE_INPUTS, ReleaseStage
    from curate.stages.review import UPSTREAM as REVIEW_INPUTS
    from curate.stages.review import ReviewStage

    shard_stages = {
        "license": (LicenseStage, ["ingest"]),
        "fetch": (FetchStage, ["ingest", "license"]),
        "detect": (DetectStage, ["ingest", "license", "fetch"]),
        "dedup": (DedupStage, DEDUP_INPUTS),
        "review": (ReviewStage, REVIEW_INPUTS),
        "release": (ReleaseStage, RELEASE_INPUTS),
    }
    reports: list[StageReport] = []
    if "detect" in stages_for(cfg.stage):
        from curate.models.registry import check_available

        check_available(cfg)  # a missing weight file fails here, before any work
    runner = Runner(cfg, lambda: open_client(cfg))
    lock = hold_run_lock(Path(cfg.run.dir))
    try:
        for name in stages_for(cfg.stage):
            if name == "ingest":
                report = run_ingest(runner)
            else:
                stage_cls, upstream = shard_stages[name]
                report = runner.run_stage(stage_cls(cfg), upstream)
            reports.append(report)
            if name == "ingest" and report.failures:
                report.fatal = True  # no shard layout without every input read: nothing later can run
            if report.fatal:
                break  # a failed shard does not stop the run (its rows are shard_failed); a failed stage does
    finally:
        runner.close()
        lock.close()
    return reports


def run_tool(cfg: CurateConfig) -> int:
    """stage=audit (draw the sample to check) and stage=report (the static HTML report): read-only helpers
    over a finished run, outside `all`."""
    try:
        if cfg.stage == Stage.audit:
            from curate.review.audit import draw, sample_path

            sample = draw(cfg)
            print(f"audit: {len(sample)} released images drawn (seed {cfg.audit.seed}) -> {sample_path(cfg)}")
            print("check them in notebooks/review_flagged.ipynb with mode='audit', then run stage=all again")
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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # oauthlib logs signed request headers (the API key) at DEBUG: keep it and its friends quiet.
    for noisy in ("distributed", "flickrapi", "urllib3", "oauthlib", "requests_oauthlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        cfg = load_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as err:
        print(f"curate: {err}", file=sys.stderr)
        return 2
    save_config(cfg)
    if cfg.stage in (Stage.audit, Stage.report):
        return run_tool(cfg)
    try:
        reports = run(cfg)
    except (ConfigError, FileNotFoundError) as err:
        print(f"curate: {err}", file=sys.stderr)
        return 2
    print(summary(reports, cfg.run.alarm_fraction))
    if any(r.stage == "ingest" and r.done for r in reports):
        print("\n".join(source_lines(Path(cfg.run.dir), cfg.run.alarm_fraction)))
    if any(r.stage == "release" and not r.fatal for r in reports):
        print(f"release: {Path(cfg.run.dir) / 'release' / cfg.release.version}")
    return exit_code(cfg, reports)


if __name__ == "__main__":
    sys.exit(main())
