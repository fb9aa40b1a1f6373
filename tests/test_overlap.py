"""stage=all with run.overlap (license, fetch and detect as one chain of tasks per shard) against stage by stage:
the same bytes, a SIGKILL in the middle resumes to those bytes too, and the overlap really happens.

Every run is `python -m curate.run` in a subprocess over the same URL list, served by one local HTTP server with a
per-request delay, and scored by the real default detectors (models.dir=MODELS).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import MODELS, NO_SELECT, REPO, encode, photo
from faultserver import FaultServer, fault_server

N_IMAGES = 24
SHARDS = 6
# per request, one at a time per shard (fetch.concurrency=1): fetch takes a while, so the chain has something to
# overlap (and to kill in)
DELAY_S = 1.0
CHAINED = ("license", "fetch", "detect")
STAGES = ("ingest", *CHAINED, "dedup", "review", "release")
# Marker and stats fields that time a run or name its process: the only ones allowed to differ between runs.
VOLATILE = {"wall_s", "images_per_s", "worker", "shard_wall_s"}


def command(urls: Path, run_dir: Path, *extra: str, workers: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "curate.run",
        "pipeline=sample", "stage=all", "ingest.source=urls", "ingest.assume_license=cc-by", f"ingest.path={urls}",
        f"ingest.num_shards={SHARDS}", f"run.dir={run_dir}", "run.progress=false",
        "dask.processes=false", f"dask.n_workers={workers}", "fetch.concurrency=1", f"models.dir={MODELS}",
        # Torch's thread count moves some scores in their last bits (BlazeFace, ~1e-7), and curate picks it from
        # dask.n_workers (1 thread per worker unless there is one worker): fixed, so worker counts may differ.
        "detect.torch_threads=1", *NO_SELECT, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FaultServer, Path]]:
    with fault_server() as server:
        lines = [
            server.serve(f"/img{i}.jpg", encode(photo(300, 200, seed=i)), delay_s=DELAY_S) for i in range(N_IMAGES)
        ]
        urls = tmp_path_factory.mktemp("overlap") / "urls.txt"
        urls.write_text("\n".join(lines) + "\n")
        yield server, urls


@pytest.fixture(scope="module")
def runs(served: tuple[FaultServer, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One uninterrupted run per mode, same input, same server."""
    _, urls = served
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for mode, overlap in (("overlapped", "true"), ("stagewise", "false")):
        run_dir = root / mode
        result = subprocess.run(
            command(urls, run_dir, f"run.overlap={overlap}"), cwd=REPO, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
        out[mode] = run_dir
    return out


def outputs(run_dir: Path) -> dict[str, bytes]:
    """What a run produced, by path: every stage's parts, the image tars, the release, the run-wide steps."""
    files = [
        *(run_dir / "manifest").rglob("*.parquet"),
        *(run_dir / "images").glob("*.tar"),
        *(run_dir / "release").rglob("*"),
        *(run_dir / "work").rglob("*"),
    ]
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(files) if p.is_file()}


def steady(value: Any) -> Any:
    """A marker or stats file without its timings and process name."""
    if isinstance(value, dict):
        return {k: steady(v) for k, v in value.items() if k not in VOLATILE}
    return value


def stats(run_dir: Path) -> dict[str, Any]:
    """Every JSON file under stats/ (shard markers, stage totals, detect's weight digests), timings dropped."""
    return {
        p.relative_to(run_dir).as_posix(): steady(json.loads(p.read_text()))
        for p in sorted((run_dir / "stats").rglob("*.json"))
    }


def shard_times(run_dir: Path, stage: str) -> list[tuple[float, float]]:
    """(started, finished) of each shard of the stage, in seconds since the epoch: finished is its marker's mtime
    (the marker is written last), started that less the marker's wall_s (timed from the task's start to just
    before the marker is written, so never earlier than the task really started)."""
    times = []
    for path in sorted((run_dir / "stats" / stage).glob("part-*.json")):
        finished = path.stat().st_mtime_ns / 1e9
        times.append((finished - json.loads(path.read_text())["wall_s"], finished))
    return times


def test_overlapped_and_stagewise_write_the_same_bytes(runs: dict[str, Path]) -> None:
    overlapped, stagewise = outputs(runs["overlapped"]), outputs(runs["stagewise"])
    for stage in STAGES:
        parts = [k for k in overlapped if k.startswith(f"manifest/{stage}/part-")]
        assert len(parts) == SHARDS, stage
    assert len([k for k in overlapped if k.startswith("images/part-")]) == SHARDS
    assert {"release/v1/SHA256SUMS", "release/v1/manifest.parquet"} <= set(overlapped)
    assert overlapped.keys() == stagewise.keys()
    differ = sorted(k for k in overlapped if overlapped[k] != stagewise[k])
    assert not differ, f"differ between run.overlap=true and false: {differ}"
    # Markers (fingerprints, output digests, counts) and stage totals too, all but timings and worker names.
    assert stats(runs["overlapped"]) == stats(runs["stagewise"])
    manifest = pd.read_parquet(runs["overlapped"] / "release" / "v1" / "manifest.parquet")
    assert len(manifest) == N_IMAGES and (manifest["status"] == "kept").all()


def test_overlap_really_happens(runs: dict[str, Path]) -> None:
    # Some detect shard started before the last fetch shard finished: detect and fetch ran at the same time.
    # Stage by stage, every detect task starts after every fetch marker is written (the control).
    for mode, overlapping in (("overlapped", True), ("stagewise", False)):
        fetch, detect = shard_times(runs[mode], "fetch"), shard_times(runs[mode], "detect")
        assert len(fetch) == len(detect) == SHARDS
        last_fetch = max(finished for _, finished in fetch)
        early = [started for started, _ in detect if started < last_fetch]
        assert bool(early) == overlapping, (mode, fetch, detect)


def tar_names(run_dir: Path) -> list[str]:
    names = []
    for path in sorted((run_dir / "images").glob("part-*.tar")):
        with tarfile.open(path) as tar:
            names += [info.name for info in tar if info.isfile()]
    return names


def test_kill_while_overlapped_then_resume(
    served: tuple[FaultServer, Path], runs: dict[str, Path], tmp_path: Path
) -> None:
    server, urls = served
    run_dir = tmp_path / "killed"
    # One worker: the chain goes shard by shard, so the first detect marker comes with most shards unfetched.
    process = subprocess.Popen(
        command(urls, run_dir, "run.overlap=true", workers=1), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    detect_markers = run_dir / "stats" / "detect"
    deadline = time.monotonic() + 120
    while not (detect_markers.exists() and list(detect_markers.glob("part-*.json"))):
        assert time.monotonic() < deadline, "no detect shard finished in time"
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # workers are threads of this process: they die with it
    process.wait()

    finished = {
        stage: {p.name: p.read_bytes() for p in (run_dir / "stats" / stage).glob("part-*.json")} for stage in CHAINED
    }
    assert 1 <= len(finished["detect"]) < SHARDS and len(finished["fetch"]) < SHARDS, "the kill must land mid-chain"
    assert not (run_dir / "release").exists()
    unfetched = [s for s in range(SHARDS) if f"part-{s:05d}.json" not in finished["fetch"]]
    to_download = sum(
        len(pd.read_parquet(run_dir / "manifest" / "ingest" / f"part-{s:05d}.parquet")) for s in unfetched
    )
    time.sleep(0.5)  # a request the killed run had already sent is counted (or not) before this
    hits_before = sum(server.hits.values())

    result = subprocess.run(command(urls, run_dir, "run.overlap=true"), cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

    # Only the unfinished shards ran again: finished markers are untouched, the totals say so, and only the
    # unfetched shards' images were downloaded (each once).
    for stage in CHAINED:
        for name, content in finished[stage].items():
            assert (run_dir / "stats" / stage / name).read_bytes() == content, f"{stage} {name} was redone"
        redo = SHARDS - len(finished[stage])
        totals = run_dir / "stats" / f"{stage}.json"
        if redo:
            report = json.loads(totals.read_text())
            assert (report["shards_run"], report["shards_skipped"]) == (redo, len(finished[stage])), stage
        else:  # the killed run never got to write its totals, and the resumed one had nothing to do
            assert not totals.exists(), stage
    assert sum(server.hits.values()) - hits_before == to_download

    # Byte-identical to the uninterrupted overlapped run (which had two workers), and nothing duplicated.
    assert outputs(run_dir) == outputs(runs["overlapped"])
    manifest = pd.read_parquet(run_dir / "release" / "v1" / "manifest.parquet")
    assert len(manifest) == N_IMAGES and manifest["image_id"].is_unique and (manifest["status"] == "kept").all()
    names = tar_names(run_dir)
    assert len(names) == len(set(names)) == N_IMAGES
    for stage in STAGES:
        rows = sum(len(pd.read_parquet(p)) for p in (run_dir / "manifest" / stage).glob("part-*.parquet"))
        assert rows == N_IMAGES, stage
    assert not list(run_dir.rglob(".*.tmp")) and not list(run_dir.rglob(".*.spool"))
