"""Overlap benchmark: `stage=all` with run.overlap=true against run.overlap=false, same images, one invocation.

    .venv/bin/python bench/overlap.py [--n 96] [--shards 8] [--delay-ms 50] [--repeat 1] [--keep]

Generates N distinct 500x375 JPEGs (bench/fetch.py's generator), serves them from a local HTTP server in its own
process that waits --delay-ms before each answer (bench/imageserver.py), and
runs the whole pipeline (`python -m curate.run pipeline=sample stage=all`, real detectors from --models-dir) once
per mode and repeat, in a fresh run directory each time; alternate repeats swap which mode goes first. Prints the
wall clock, CPU and peak memory of each run, and the ratio stage-by-stage / overlapped (medians over repeats).

Exits non-zero when a run failed, when a run released nothing, or when the runs' outputs differ (every stage's
manifest parts, the image tars, the release's files and the run-wide steps under work/ must be the same bytes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

# bench/ is this script's folder, so it is first on sys.path: the fetch benchmark's parts are reused as they are.
from fetch import Usage, in_work_folder, make_images, run_measured, start_server, write_url_list

ROOT = Path(__file__).resolve().parents[1]
MODES = {"overlapped": "true", "stage-by-stage": "false"}


# ----------------------------------------------------------------------------------------------- runs


@dataclass
class Result:
    mode: str
    run: int
    run_dir: Path
    usage: Usage
    released: int
    stage_wall_s: dict[str, float]
    # detect overlapped fetch: some detect shard started before the last fetch shard finished
    detect_before_last_fetch: bool


def curate_cmd(args: argparse.Namespace, urls: Path, run_dir: Path, overlap: str) -> list[str]:
    return [
        sys.executable, "-m", "curate.run",
        "pipeline=sample", "stage=all", f"run.dir={run_dir}", f"run.overlap={overlap}", "run.progress=false",
        f"dask.n_workers={args.workers}", f"models.dir={args.models_dir}",
        "ingest.source=urls", f"ingest.path={urls}", "ingest.assume_license=cc-by", f"ingest.num_shards={args.shards}",
        f"fetch.concurrency={args.concurrency}", f"fetch.per_host_concurrency={args.concurrency}",
        # the sample pipeline caps each owner at 2 and samples 10: release whatever passes the filter instead
        "release.owner_cap=0", "release.target_size=0",
    ]  # fmt: skip


def released_count(run_dir: Path) -> int:
    import pandas as pd

    release = run_dir / "release" / "v1"
    if not (release / "SHA256SUMS").exists():
        return 0
    return int((pd.read_parquet(release / "manifest.parquet", columns=["status"])["status"] == "kept").sum())


def shard_times(run_dir: Path, stage: str) -> list[tuple[float, float]]:
    """(started, finished) of each shard: its marker's mtime (written last) and that less the marker's wall_s."""
    times = []
    for path in (run_dir / "stats" / stage).glob("part-*.json"):
        finished = path.stat().st_mtime_ns / 1e9
        times.append((finished - json.loads(path.read_text())["wall_s"], finished))
    return times


def run_mode(args: argparse.Namespace, work: Path, urls: Path, mode: str, run: int) -> Result:
    run_dir = work / f"{mode}-run{run}"
    usage = run_measured(curate_cmd(args, urls, run_dir, MODES[mode]), work / f"{mode}-run{run}.log")
    walls = {}
    for stage in ("license", "fetch", "detect", "dedup", "review", "release"):
        stats = run_dir / "stats" / f"{stage}.json"
        walls[stage] = json.loads(stats.read_text())["wall_s"] if stats.exists() else float("nan")
    fetched, detected = shard_times(run_dir, "fetch"), shard_times(run_dir, "detect")
    overlapped = bool(fetched and detected) and min(s for s, _ in detected) < max(f for _, f in fetched)
    return Result(mode, run, run_dir, usage, released_count(run_dir), walls, overlapped)


def outputs(run_dir: Path) -> dict[str, bytes]:
    files = [
        *(run_dir / "manifest").rglob("*.parquet"),
        *(run_dir / "images").glob("*.tar"),
        *(run_dir / "release").rglob("*"),
        *(run_dir / "work").rglob("*"),
    ]
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(files) if p.is_file()}


def differences(results: list[Result]) -> list[str]:
    """Every run's outputs against the first run's."""
    first = outputs(results[0].run_dir)
    problems = []
    for other in results[1:]:
        theirs = outputs(other.run_dir)
        differ = sorted(k for k in first.keys() | theirs.keys() if first.get(k) != theirs.get(k))
        if differ:
            shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
            problems.append(
                f"outputs of {other.mode} run {other.run} differ from {results[0].mode} run {results[0].run}: {shown}"
            )
    return problems


# ------------------------------------------------------------------------------------------ reporting


def table(results: list[Result]) -> str:
    head = (
        f"{'mode':<15} {'run':>3} {'seconds':>8} {'cpu s':>7} {'peak RSS MB':>11} {'max proc MB':>11} "
        f"{'released':>8} {'fetch s':>8} {'detect s':>8} {'overlap seen':>12} {'busy before %':>13}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        tree = "-" if r.usage.tree_rss_mb is None else f"{r.usage.tree_rss_mb:.0f}"
        busy = "-" if r.usage.busy_before is None else f"{r.usage.busy_before:.0f}"
        lines.append(
            f"{r.mode:<15} {r.run:>3} {r.usage.seconds:>8.2f} {r.usage.cpu_s:>7.1f} {tree:>11} "
            f"{r.usage.max_proc_rss_mb:>11.0f} {r.released:>8} {r.stage_wall_s['fetch']:>8.2f} "
            f"{r.stage_wall_s['detect']:>8.2f} {'yes' if r.detect_before_last_fetch else 'no':>12} {busy:>13}"
        )
    return "\n".join(lines)


def median_seconds(results: list[Result], mode: str) -> float:
    return statistics.median(r.usage.seconds for r in results if r.mode == mode)


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=96, help="images to generate (default 96)")
    parser.add_argument("--shards", type=int, default=8, help="ingest.num_shards (default 8)")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="server wait before each answer (default 50)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of each mode (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="dask.n_workers (default 2)")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="fetch.concurrency and fetch.per_host_concurrency (default 4)"
    )
    parser.add_argument("--models-dir", type=Path, default=ROOT.parent / "shared" / "models", help="models.dir")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (images, run dirs, logs)")
    args = parser.parse_args(argv)
    if min(args.n, args.shards, args.repeat, args.workers, args.concurrency) < 1 or args.delay_ms < 0:
        parser.error("--n, --shards, --repeat, --workers and --concurrency must be >= 1, --delay-ms >= 0")
    args.models_dir = args.models_dir.resolve()
    if not args.models_dir.is_dir():
        parser.error(f"--models-dir {args.models_dir} is not a folder")
    return args


def benchmark(args: argparse.Namespace, work: Path) -> int:
    print(f"generating {args.n} JPEGs in {work / 'images'}", flush=True)
    total = make_images(work / "images", args.n, args.seed)
    server = start_server(work / "images", args.delay_ms)
    results: list[Result] = []
    try:
        urls = work / "urls.txt"
        write_url_list(urls, server.port, args.n)
        print(
            f"{args.n} images, {total / 2**20:.1f} MiB, served on 127.0.0.1:{server.port} with {args.delay_ms:g} ms "
            f"per request; {args.shards} shards, dask.n_workers={args.workers}, fetch.concurrency={args.concurrency}; "
            f"models from {args.models_dir}",
            flush=True,
        )
        for repeat in range(args.repeat):
            # Alternate which mode goes first, so neither always gets the warmer page cache.
            order = list(MODES) if repeat % 2 == 0 else list(reversed(MODES))
            for mode in order:
                print(f"[{repeat + 1}/{args.repeat}] stage=all run.overlap={MODES[mode]} ({mode}) ...", flush=True)
                results.append(run_mode(args, work, urls, mode, repeat + 1))
    finally:
        server.stop()
    print()
    print(table(results))
    overlapped, stagewise = median_seconds(results, "overlapped"), median_seconds(results, "stage-by-stage")
    print(f"overlapped:     {overlapped:.2f} s (median of {args.repeat})")
    print(f"stage-by-stage: {stagewise:.2f} s (median of {args.repeat})")
    print(f"ratio stage-by-stage/overlapped: {stagewise / overlapped:.3f}")
    print(
        "(seconds: wall clock of `python -m curate.run stage=all`, start-up included; cpu s: user+sys of its process "
        "tree; peak RSS: summed over the tree, sampled every 0.1 s; max proc: largest single process; fetch s and "
        "detect s: the stage's wall_s in stats/ (overlapped: from the chain's start to the stage's last shard); "
        "overlap seen: a detect shard started before the last fetch shard finished; busy before: CPU use of other "
        "work in the second before the start)"
    )
    problems = [f"{r.mode} run {r.run} released nothing ({r.run_dir})" for r in results if r.released == 0]
    problems += differences(results)
    if not problems:
        print(f"outputs identical across all {len(results)} runs; {results[0].released} images released by each")
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    return in_work_folder("overlap", benchmark, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
