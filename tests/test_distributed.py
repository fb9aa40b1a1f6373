"""A real `dask scheduler` and two `dask worker` processes on loopback run the sample pipeline."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from conftest import MODELS, NO_FILTER, REPO

from curate.run import main

DASK = str(Path(sys.executable).parent / "dask")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = open(tmp_path / "dask.log", "w")
    scheduler = subprocess.Popen(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        stdout=logs, stderr=logs, cwd=REPO,
    )  # fmt: skip
    workers = [
        subprocess.Popen(
            [DASK, "worker", address, "--nthreads", "1", "--no-dashboard", "--name", f"w{i}"],
            stdout=logs,
            stderr=logs,
            cwd=REPO,
        )
        for i in range(2)
    ]
    try:
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for process in [*workers, scheduler]:
            process.terminate()
        for process in [*workers, scheduler]:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        logs.close()


def test_sample_on_a_real_scheduler_and_two_workers(cluster: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code = main(
        [
            f"run.dir={run_dir}",
            f"dask.address={cluster}",
            "ingest.num_shards=8",
            "run.progress=false",
            f"models.dir={MODELS}",
            *NO_FILTER,
        ]
    )
    assert code == 0
    workers = set()
    for stage in ("ingest", "license", "fetch", "release"):
        for marker in (run_dir / "stats" / stage).glob("part-*.json"):
            workers.add(json.loads(marker.read_text())["worker"])
    # Both worker processes did shards (the client process did none: it has no worker).
    assert len(workers) == 2
    manifest = pd.read_parquet(run_dir / "release" / "v1" / "manifest.parquet")
    assert len(manifest) == 41 and (manifest["status"] == "kept").sum() == 31
    started = time.perf_counter()
    assert (
        main(
            [
                f"run.dir={run_dir}",
                f"dask.address={cluster}",
                "ingest.num_shards=8",
                "run.progress=false",
                f"models.dir={MODELS}",
                *NO_FILTER,
            ]
        )
        == 0
    )
    assert time.perf_counter() - started < 10


def test_one_pinned_worker_per_gpu(tmp_path: Path) -> None:
    """Workers pinned with CUDA_VISIBLE_DEVICES and a GPU=1 resource for detect, CPU workers for the rest.

    This machine has no GPU, so detect falls back to the CPU inside those workers; what is checked is the
    placement: every detect shard ran on a GPU worker, and both workers were used.
    """
    run_dir = tmp_path / "run"
    code = main(
        [f"run.dir={run_dir}", "dask.gpus=2", "ingest.num_shards=4", "run.progress=false", f"models.dir={MODELS}"]
    )
    assert code == 0
    pinned = {json.loads(m.read_text())["cuda_visible_devices"] for m in (run_dir / "stats" / "detect").glob("*.json")}
    assert pinned == {"0", "1"}
    # every other stage ran on the CPU workers beside them (no GPU visible there): downloads never hold a GPU
    for stage in ("license", "fetch", "dedup", "review", "release"):
        markers = list((run_dir / "stats" / stage).glob("part-*.json"))
        assert markers, stage
        assert {json.loads(m.read_text())["cuda_visible_devices"] for m in markers} == {""}, stage


@pytest.mark.parametrize(
    ("overrides", "detect", "fetch", "other"),
    [
        # curate's LocalCluster: one compute task per worker, downloads beside it (two slots: both threads when idle)
        ([], {"compute": 1}, {"network": 1}, {"compute": 1}),
        # curate's GPU cluster: detect on a GPU worker, which offers no slot, so nothing else lands there
        (["dask.gpus=1"], {"GPU": 1}, {"network": 1}, {"compute": 1}),
        # a cluster of the user's: its workers offer no slots; only the GPU rule holds
        (["dask.address=tcp://127.0.0.1:1", "dask.gpus=1"], {"GPU": 1}, None, None),
        (["dask.address=tcp://127.0.0.1:1"], None, None, None),
    ],
)
def test_where_each_kind_of_task_runs(
    overrides: list[str], detect: dict | None, fetch: dict | None, other: dict | None
) -> None:
    from types import SimpleNamespace

    from curate.configload import load_config
    from curate.runner import Runner

    runner = SimpleNamespace(cfg=load_config(overrides))
    assert Runner.placement(runner, uses_gpu=True, waits_on_network=False) == detect  # type: ignore[arg-type]
    assert Runner.placement(runner, uses_gpu=False, waits_on_network=True) == fetch  # type: ignore[arg-type]
    assert Runner.placement(runner, uses_gpu=False, waits_on_network=False) == other  # type: ignore[arg-type]
