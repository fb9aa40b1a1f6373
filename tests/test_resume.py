"""SIGKILL in the middle of fetch, start again: nothing lost, nothing duplicated, finished shards not redone,
and a release byte-identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from conftest import MODELS, NO_SELECT, REPO, encode, photo
from faultserver import fault_server

N_IMAGES = 48
SHARDS = 6


def command(urls: Path, run_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "curate.run",
        "pipeline=sample", "ingest.source=urls", "ingest.assume_license=cc-by", f"ingest.path={urls}",
        f"ingest.num_shards={SHARDS}", f"run.dir={run_dir}", "run.progress=false",
        # One shard at a time, two downloads in flight: slow enough to kill half-way.
        "dask.processes=false", "dask.n_workers=1", "fetch.concurrency=2", f"models.dir={MODELS}", *NO_SELECT,
    ]  # fmt: skip


def release_files(run_dir: Path) -> dict[str, bytes]:
    root = run_dir / "release" / "v1"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_kill_during_fetch_then_resume(tmp_path: Path) -> None:
    with fault_server() as server:
        lines = [server.serve(f"/img{i}.jpg", encode(photo(300, 200, seed=i)), delay_s=0.15) for i in range(N_IMAGES)]
        urls = tmp_path / "urls.txt"
        urls.write_text("\n".join(lines) + "\n")

        reference = tmp_path / "reference"
        subprocess.run(command(urls, reference), cwd=REPO, check=True, capture_output=True)

        run_dir = tmp_path / "killed"
        markers = run_dir / "stats" / "fetch"
        process = subprocess.Popen(command(urls, run_dir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = list(markers.glob("part-*.json")) if markers.exists() else []
            if len(done) >= 2:
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        finished = {p.name: p.read_bytes() for p in markers.glob("part-*.json")}
        assert 2 <= len(finished) < SHARDS, "the kill must land in the middle of fetch"
        assert not (run_dir / "release").exists()
        hits_before_resume = sum(server.hits.values())

        result = subprocess.run(command(urls, run_dir), cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        hits_on_resume = sum(server.hits.values()) - hits_before_resume

    # Finished shards were not redone: their markers (with their wall times) are untouched.
    for name, content in finished.items():
        assert (markers / name).read_bytes() == content
    # Only the unfinished shards' images were downloaded again.
    assert hits_on_resume <= N_IMAGES - 2 * (N_IMAGES // SHARDS) + 2 * SHARDS

    # Byte-identical to the uninterrupted run.
    assert release_files(run_dir) == release_files(reference)
    manifest = pd.read_parquet(run_dir / "release" / "v1" / "manifest.parquet")
    assert len(manifest) == N_IMAGES and manifest["image_id"].is_unique
    assert (manifest["status"] == "kept").all()
    assert not list(run_dir.rglob(".*.tmp")) and not list(run_dir.rglob(".*.spool"))


def test_second_run_does_no_work(tmp_path: Path) -> None:
    from conftest import run_curate

    run_dir = tmp_path / "sample"
    assert run_curate(f"run.dir={run_dir}") == 0
    stamps = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and "invocations" not in p.parts}
    started = time.perf_counter()
    assert run_curate(f"run.dir={run_dir}") == 0
    assert time.perf_counter() - started < 10
    unchanged = {p: p.stat().st_mtime_ns for p in stamps if p.name not in ("config.yaml", ".lock")}
    assert unchanged == {p: t for p, t in stamps.items() if p.name not in ("config.yaml", ".lock")}
