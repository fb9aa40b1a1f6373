"""Ingest memory benchmark: peak RSS of the Dask worker processes while ingesting one large YFCC file.

    .venv/bin/python bench/ingest_memory.py                  # 2,000,000 rows
    .venv/bin/python bench/ingest_memory.py --rows 10000000  # 10M rows (about 4.5 GB of metadata)

Writes a synthetic YFCC100M file (25 columns, about 450 bytes a line, like the real one) into a temporary
folder, runs `python -m curate.run pipeline=sample stage=ingest` on it with a real LocalCluster
(dask.processes=true, dask.n_workers=2), and samples every process under it: the peak RSS of each is read from
/proc/<pid>/status (VmHWM, the kernel's own high-water mark, so a peak between two samples is not missed).
Prints the peak per worker process, of the client process, the wall time and rows/s. The figure before the
streaming ingest, from issue #10: one worker peaked at 1.46 GB on 2M rows (it held a whole file's rows).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
BEFORE_2M_GB = 1.46  # issue #10, one worker, stage=ingest over one 2M-row file, before this change
SAMPLE_EVERY_S = 0.2
WORDS = "sunset beach city street portrait dog cat mountain lake tree flower car train bridge snow night".split()


def write_yfcc(path: Path, rows: int, seed: int = 0) -> None:
    """A YFCC100M-shaped file: every row a distinct photo hash and id, realistic field lengths."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        lines = []
        for number in range(rows):
            photo_id = 5_000_000_000 + number
            words = rng.sample(WORDS, 4)
            title = "+".join(words[:2]) + f"+{number}"
            description = "+".join(rng.choices(WORDS, k=rng.randint(5, 25)))
            tags = ",".join(words)
            nsid = f"{rng.randint(10_000_000, 99_999_999)}@N0{rng.randint(0, 8)}"
            fields = [
                str(number), str(photo_id), f"{rng.getrandbits(128):032x}", nsid, f"user+{nsid[:5]}",
                "2010-06-12 14:03:22.0", "1276351402", "Canon+EOS+400D+DIGITAL", title, description, tags, "",
                f"{rng.uniform(-180, 180):.6f}", f"{rng.uniform(-90, 90):.6f}", "16",
                f"http://www.flickr.com/photos/{nsid}/{photo_id}/",
                f"http://farm5.staticflickr.com/4012/{photo_id}_0123456789.jpg", "Attribution License",
                "http://creativecommons.org/licenses/by/2.0/", "4012", "5", "0123456789", "abcdef0123", "jpg", "0",
            ]  # fmt: skip
            lines.append("\t".join(fields) + "\n")
            if len(lines) >= 10_000:
                out.write("".join(lines))
                lines = []
        out.write("".join(lines))


def vm_hwm(pid: int) -> int:
    """The process's peak resident set size so far, in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_ingest(path: Path, run_dir: Path, workers: int, shards: int) -> tuple[float, dict[int, tuple[str, int]], int]:
    """Wall seconds, {pid: (role, peak bytes)} of every process under the run, and its return code."""
    command = [
        sys.executable, "-m", "curate.run", "pipeline=sample", "stage=ingest", f"ingest.path={path}",
        f"ingest.num_shards={shards}", f"run.dir={run_dir}", "run.progress=false", "dask.processes=true",
        f"dask.n_workers={workers}",
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    main = psutil.Process(process.pid)
    peaks: dict[int, tuple[str, int]] = {}
    while process.poll() is None:
        try:
            family = [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for proc in family:
            try:
                role = "client" if proc.pid == main.pid else _role(proc)
            except psutil.Error:
                continue
            peak = vm_hwm(proc.pid)
            if peak:
                peaks[proc.pid] = (role, max(peak, peaks.get(proc.pid, ("", 0))[1]))
        time.sleep(SAMPLE_EVERY_S)
    return time.perf_counter() - started, peaks, process.wait()


def _role(proc: psutil.Process) -> str:
    """The LocalCluster's nannies live in the client process; its children are the worker processes and
    multiprocessing's resource tracker."""
    return "tracker" if "resource_tracker" in " ".join(proc.cmdline()) else "worker"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the generated file and run folder")
    args = parser.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="curate-ingest-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "yfcc100m_dataset.tsv"
    try:
        started = time.perf_counter()
        write_yfcc(path, args.rows)
        size = path.stat().st_size
        print(f"generated {args.rows:,} rows, {size / 2**30:.2f} GiB in {time.perf_counter() - started:.0f} s")
        run_dir = work / "run"
        shutil.rmtree(run_dir, ignore_errors=True)
        wall, peaks, code = run_ingest(path, run_dir, args.workers, args.shards)
        if code != 0:
            raise SystemExit(f"curate exited with {code}")
        for pid, (role, peak) in sorted(peaks.items(), key=lambda item: (item[1][0], item[0])):
            print(f"  {role:7s} pid {pid:7d}  peak RSS {peak / 2**20:8.0f} MiB")
        worker_peak = max((peak for role, peak in peaks.values() if role == "worker"), default=0)
        print(
            f"rows {args.rows:,}  workers {args.workers}  shards {args.shards}  wall {wall:.1f} s  "
            f"{args.rows / wall:,.0f} rows/s  worst worker peak {worker_peak / 2**20:.0f} MiB "
            f"({worker_peak / 1e9:.2f} GB; before: {BEFORE_2M_GB} GB at 2M rows)"
        )
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
        elif not args.keep:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
