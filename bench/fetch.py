"""Fetch benchmark: curate's fetch stage against img2dataset on the same images, in one invocation.

    .venv/bin/python bench/fetch.py [--n 3000] [--repeat 1] [--keep]

Generates N distinct PASS-sized JPEGs, serves them from a local HTTP server (its own process), downloads them
all with `python -m curate.run stage=fetch` and with img2dataset's CLI, checks that both got (nearly) every
image, and prints images/s, CPU seconds and peak memory for each plus the ratio curate / img2dataset.

img2dataset pins old dependencies, so it lives in its own virtualenv (.venv-bench beside the project's .venv,
created on first use) and runs as a subprocess; `--img2dataset-python` points at another interpreter.
See bench/README.md for what exactly is measured.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BENCH_VENV = ROOT / ".venv-bench"
SERVER = Path(__file__).resolve().parent / "imageserver.py"
# Tried when a plain `pip install img2dataset` does not import: the release this benchmark was checked with.
IMG2DATASET_PIN = "img2dataset==1.47.0"
# albumentations (an img2dataset dependency) checks PyPI for updates on import; the benchmark must not.
QUIET_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
MIN_SUCCESS = 0.99
SAMPLE_EVERY_S = 0.1


class BenchError(RuntimeError):
    """The benchmark cannot give a valid number; the message says why."""


# --------------------------------------------------------------------------------------------- test images


def make_jpeg(rng: np.random.Generator, quality: int = 90) -> bytes:
    """One photo-like JPEG: a smooth random colour field plus sensor-like noise, 500x375 or 375x500.

    The smooth field makes every image distinct and never single-coloured; the noise keeps the JPEG near the
    size of a real PASS image (tens of KB) instead of compressing to almost nothing.
    """
    width, height = (375, 500) if rng.random() < 0.25 else (500, 375)
    grid = rng.integers(0, 256, size=(int(rng.integers(2, 8)), int(rng.integers(2, 8)), 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(grid, "RGB").resize((width, height), Image.Resampling.BICUBIC), np.int16)
    amplitude = int(rng.integers(8, 31))  # varies the file size the way texture does in real photos
    noisy = field + rng.integers(-amplitude, amplitude + 1, size=field.shape, dtype=np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def make_images(folder: Path, n: int, seed: int) -> int:
    """Write n JPEGs named 000000.jpg ...; returns their total size in bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = 0
    for number in range(n):
        data = make_jpeg(rng)
        (folder / f"{number:06d}.jpg").write_bytes(data)
        total += len(data)
    return total


# ------------------------------------------------------------------------------------------ local server


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_server(folder: Path, delay_ms: float = 0.0) -> Server:
    """bench/imageserver.py over `folder` in its own process, waiting `delay_ms` before each answer."""
    process = subprocess.Popen(
        [sys.executable, str(SERVER), str(folder), str(delay_ms)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()  # the server prints its port once it listens
    if not line.isdigit():
        process.kill()
        raise BenchError(f"image server did not start (said {line!r})")
    return Server(process, int(line))


def write_url_list(path: Path, port: int, n: int) -> None:
    path.write_text("".join(f"http://127.0.0.1:{port}/{number:06d}.jpg\n" for number in range(n)))


# ------------------------------------------------------------------------------------------- measuring


@dataclass
class Usage:
    busy_before: float | None  # % of all cores busy in the second before the start, with this script idle
    seconds: float  # wall clock of the whole command, start-up included
    cpu_s: float  # user + system CPU of the process and every descendant it waited for
    max_proc_rss_mb: float  # the largest single process of the tree (ru_maxrss)
    tree_rss_mb: float | None  # the peak of the summed RSS of the whole tree, sampled; None without psutil


class TreeSampler(threading.Thread):
    """Polls the summed RSS of a process and all its descendants (Dask workers are grandchildren)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_bytes: int | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        self.peak_bytes = 0
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop_event.is_set():
            total = 0
            try:
                for proc in [root, *root.children(recursive=True)]:
                    try:
                        total += proc.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass  # a worker that ended between listing and reading
            except psutil.NoSuchProcess:
                return
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop_event.wait(SAMPLE_EVERY_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def busy_percent() -> float | None:
    """How busy the machine is without us: other work slows whichever tool it overlaps, so a run that started
    on a busy machine can be recognised (and repeated). The load average cannot tell: our own threads count."""
    try:
        import psutil
    except ImportError:
        return None
    return float(psutil.cpu_percent(interval=1.0))


def run_measured(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None, timed: bool = True) -> Usage:
    """Run cmd to completion, output to `log`; raise BenchError with the log's tail if it fails."""
    busy = busy_percent() if timed else None
    with open(log, "wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        sampler = TreeSampler(process.pid)
        sampler.start()
        # wait4 rather than Popen.wait: it hands back this child's rusage alone, which includes the
        # descendants it reaped, unlike RUSAGE_CHILDREN that also counts the server and earlier runs.
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
    if process.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise BenchError(f"{' '.join(cmd[:4])} ... exited {process.returncode}; end of {log}:\n{tail}")
    return Usage(
        busy_before=busy,
        seconds=seconds,
        cpu_s=usage.ru_utime + usage.ru_stime,
        max_proc_rss_mb=usage.ru_maxrss / 1024,  # Linux reports KiB
        tree_rss_mb=None if sampler.peak_bytes is None else sampler.peak_bytes / 2**20,
    )


@dataclass
class Result:
    tool: str
    run: int
    ok: int
    usage: Usage

    @property
    def images_per_s(self) -> float:
        return self.ok / self.usage.seconds


# ---------------------------------------------------------------------------------------------- curate


def curate_cmd(run_dir: Path, urls: Path, stage: str, shards: int, threads: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "curate.run",
        "pipeline=sample",
        f"stage={stage}",
        f"run.dir={run_dir}",
        "run.progress=false",
        "dask.n_workers=2",
        "ingest.source=urls",
        f"ingest.path={urls}",
        "ingest.assume_license=cc-by",
        f"ingest.num_shards={shards}",
        f"fetch.concurrency={threads}",
        # One host serves everything here; a per-host cap below the thread count would only measure the cap.
        f"fetch.per_host_concurrency={threads}",
    ]


def count_curate_ok(run_dir: Path) -> int:
    """Rows with fetch_status == 'ok', cross-checked against the members of the image tars."""
    import pandas as pd

    parts = sorted((run_dir / "manifest" / "fetch").glob("part-*.parquet"))
    ok = sum(int((pd.read_parquet(p, columns=["fetch_status"])["fetch_status"] == "ok").sum()) for p in parts)
    members = sum(_tar_members(tar, ".jpg") for tar in (run_dir / "images").glob("part-*.tar"))
    if members != ok:
        raise BenchError(f"curate: {ok} rows say ok but the tars hold {members} images")
    return ok


def run_curate(work: Path, urls: Path, shards: int, threads: int, run: int) -> Result:
    label = f"run{run}"
    run_dir = work / f"curate-{label}"
    # stage=fetch needs ingest and license done; they are not part of the measurement.
    for stage in ("ingest", "license"):
        run_measured(
            curate_cmd(run_dir, urls, stage, shards, threads), work / f"curate-{label}-{stage}.log", timed=False
        )
    usage = run_measured(curate_cmd(run_dir, urls, "fetch", shards, threads), work / f"curate-{label}-fetch.log")
    return Result("curate", run, count_curate_ok(run_dir), usage)


# ----------------------------------------------------------------------------------------- img2dataset


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}


def _img2dataset_version(python: Path) -> str | None:
    probe = "import importlib.metadata as m, img2dataset; print(m.version('img2dataset'))"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=_env(QUIET_ENV))
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_img2dataset(python: Path | None) -> tuple[Path, str]:
    """The interpreter that runs img2dataset and its version; builds .venv-bench when none is given."""
    if python is not None:
        version = _img2dataset_version(python)
        if version is None:
            raise BenchError(f"{python} cannot import img2dataset")
        return python, version
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {BENCH_VENV} (img2dataset gets its own venv: it pins old dependencies)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    version = _img2dataset_version(python)
    for spec in ("img2dataset", IMG2DATASET_PIN):
        if version is not None:
            break
        print(f"installing {spec} into {BENCH_VENV} (a few minutes the first time)", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", spec], env=_env(QUIET_ENV))
        version = _img2dataset_version(python)
    if version is None:
        raise BenchError(f"could not install an importable img2dataset into {BENCH_VENV}; see bench/README.md")
    return python, version


def count_img2dataset_ok(out: Path) -> int:
    """The successes of its per-shard stats files, cross-checked against the images in its tars."""
    ok = sum(json.loads(stats.read_text())["successes"] for stats in out.glob("*_stats.json"))
    members = sum(_tar_members(tar, ".jpg") for tar in out.glob("*.tar"))
    if members != ok:
        raise BenchError(f"img2dataset: stats say {ok} successes but the tars hold {members} images")
    return ok


def run_img2dataset(python: Path, work: Path, urls: Path, args: argparse.Namespace, run: int) -> Result:
    label = f"run{run}"
    out = work / f"img2dataset-{label}"
    cmd = [
        str(python),
        "-c",
        "from img2dataset import main; main()",
        f"--url_list={urls}",
        "--input_format=txt",
        f"--output_folder={out}",
        "--output_format=webdataset",  # a tar per shard, as curate writes
        "--resize_mode=no",  # PASS keeps the original pixels
        "--disable_all_reencoding=True",
        "--processes_count=2",
        f"--thread_count={args.threads}",
        # The same shard count as curate, so both spread the same units of work over their two processes.
        f"--number_sample_per_shard={math.ceil(args.n / args.shards)}",
        "--enable_wandb=False",
    ]
    usage = run_measured(cmd, work / f"img2dataset-{label}.log", env=_env(QUIET_ENV))
    return Result("img2dataset", run, count_img2dataset_ok(out), usage)


# ------------------------------------------------------------------------------------------- reporting


def _tar_members(path: Path, suffix: str) -> int:
    with tarfile.open(path) as tar:
        return sum(1 for info in tar if info.isfile() and info.name.endswith(suffix))


def table(results: list[Result]) -> str:
    head = (
        f"{'tool':<12} {'run':>3} {'images ok':>9} {'seconds':>8} {'images/s':>9} {'cpu s':>7} "
        f"{'peak RSS MB':>11} {'max proc MB':>11} {'busy before %':>13}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        tree = "-" if r.usage.tree_rss_mb is None else f"{r.usage.tree_rss_mb:.0f}"
        busy = "-" if r.usage.busy_before is None else f"{r.usage.busy_before:.0f}"
        lines.append(
            f"{r.tool:<12} {r.run:>3} {r.ok:>9} {r.usage.seconds:>8.2f} {r.images_per_s:>9.1f} {r.usage.cpu_s:>7.1f} "
            f"{tree:>11} {r.usage.max_proc_rss_mb:>11.0f} {busy:>13}"
        )
    return "\n".join(lines)


def median_rate(results: list[Result], tool: str) -> float:
    return statistics.median(r.images_per_s for r in results if r.tool == tool)


def check_counts(results: list[Result], n: int) -> list[str]:
    return [
        f"{r.tool} downloaded only {r.ok} of {n} images (< {MIN_SUCCESS:.0%}); see its log in the work folder"
        for r in results
        if r.ok < MIN_SUCCESS * n
    ]


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="images to generate and download (default 3000)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of each tool (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (images, outputs, logs)")
    parser.add_argument("--shards", type=int, default=4, help="shards for both tools (default 4)")
    parser.add_argument("--threads", type=int, default=32, help="download threads per process, both tools")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    parser.add_argument("--img2dataset-python", type=Path, default=None, help="interpreter with img2dataset")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeat < 1 or args.shards < 1 or args.threads < 1:
        parser.error("--n, --repeat, --shards and --threads must be >= 1")
    return args


def benchmark(args: argparse.Namespace, work: Path) -> int:
    img2dataset_python, img2dataset_version = ensure_img2dataset(args.img2dataset_python)
    print(f"generating {args.n} JPEGs in {work / 'images'}", flush=True)
    total = make_images(work / "images", args.n, args.seed)
    server = start_server(work / "images")
    try:
        urls = work / "urls.txt"
        write_url_list(urls, server.port, args.n)
        print(
            f"{args.n} images, {total / 2**20:.1f} MiB (mean {total / args.n / 1024:.0f} KiB), served on "
            f"127.0.0.1:{server.port}; {os.cpu_count()} cores; {args.shards} shards, 2 processes x "
            f"{args.threads} threads each; img2dataset {img2dataset_version}",
            flush=True,
        )
        results: list[Result] = []
        for repeat in range(args.repeat):
            # Alternate which tool goes first, so neither always gets the warmer page cache.
            order = ["curate", "img2dataset"] if repeat % 2 == 0 else ["img2dataset", "curate"]
            for tool in order:
                print(f"[{repeat + 1}/{args.repeat}] {tool} ...", flush=True)
                if tool == "curate":
                    result = run_curate(work, urls, args.shards, args.threads, repeat + 1)
                else:
                    result = run_img2dataset(img2dataset_python, work, urls, args, repeat + 1)
                results.append(result)
    finally:
        server.stop()
    print()
    print(table(results))
    baseline = median_rate(results, "img2dataset")
    ratio = f"{median_rate(results, 'curate') / baseline:.2f}" if baseline else "n/a (img2dataset got no image)"
    print(f"ratio curate/img2dataset: {ratio}")
    print(
        "(seconds: wall clock of the CLI, start-up included; cpu s: user+sys of the process tree; peak RSS: "
        "summed over the process tree, sampled every 0.1 s; max proc: largest single process; busy before: "
        "CPU use of other work in the second before the start)"
    )
    problems = check_counts(results, args.n)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


def in_work_folder(name: str, benchmark: Callable[[argparse.Namespace, Path], int], args: argparse.Namespace) -> int:
    """`benchmark(args, folder)` in a fresh temporary folder, removed afterwards unless --keep or it failed."""
    work = Path(tempfile.mkdtemp(prefix=f"curate-{name}-bench-"))
    code = 1
    try:
        code = benchmark(args, work)
    except BenchError as err:
        print(f"bench/{name}.py: {err}", file=sys.stderr)
    finally:
        # A failed run keeps its folder: the logs in it say what went wrong.
        if args.keep or code != 0:
            print(f"kept {work}", file=sys.stderr if code else sys.stdout)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return code


def main(argv: list[str] | None = None) -> int:
    return in_work_folder("fetch", benchmark, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
