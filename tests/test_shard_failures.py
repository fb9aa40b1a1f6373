"""A shard task that keeps failing is survivable and explained: Dask retries it, its traceback is kept, its rows
become failed/shard_failed, the other shards and the later stages go on, and release refuses unless allowed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest
from conftest import FAST, MODELS, NO_FILTER, run_curate

from curate.config import CurateConfig
from curate.configload import load_config
from curate.run import open_client
from curate.rundir import RunDir
from curate.runner import Runner
from curate.stages.base import ShardStage

pytestmark = pytest.mark.skipif(not MODELS.exists(), reason="needs the offline weights in ../shared/models")

QUICK = ["pipeline=sample", "ingest.num_shards=2", "detect.person_tiles=1", "dask.retries=1", *NO_FILTER]


def test_a_corrupt_shard_fails_alone_and_release_refuses_until_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    for stage in ("ingest", "license", "fetch"):
        assert run_curate(f"run.dir={run_dir}", f"stage={stage}", *QUICK) == 0
    tar = run_dir / "images" / "part-00001.tar"
    good = tmp_path / "good.tar"
    shutil.copy(tar, good)
    tar.write_bytes(b"this disk block went bad" * 100)  # the kind of fault no row-level guard can absorb

    capsys.readouterr()
    assert run_curate(f"run.dir={run_dir}", "stage=all", *QUICK) == 1
    out = capsys.readouterr().out
    error = run_dir / "stats" / "detect" / "part-00001.error.txt"
    assert error.exists() and "Traceback" in error.read_text() and "attempt" in error.read_text()
    assert "release refused" in out and "detect shard 1" in out and "stats/detect/part-00001.error.txt" in out
    assert "allow_failed_shards" in out
    assert not (run_dir / "release").exists(), "a refused release leaves no trace"
    # The other shard went on through every stage up to release.
    for stage in ("detect", "dedup", "review"):
        marker = RunDir(run_dir).read_marker(stage, 0)
        assert marker is not None and not marker.get("failed"), stage
    assert RunDir(run_dir).read_marker("detect", 1)["failed"] is True  # type: ignore[index]

    assert run_curate(f"run.dir={run_dir}", "stage=all", "release.allow_failed_shards=true", *QUICK) == 0
    manifest = pd.read_parquet(run_dir / "release" / "v1" / "manifest.parquet")
    ingest = pd.concat([pd.read_parquet(p) for p in sorted((run_dir / "manifest" / "ingest").glob("*.parquet"))])
    assert sorted(manifest["image_id"]) == sorted(ingest["image_id"]), "every candidate, exactly once"
    lost = manifest[(manifest["shard"] == 1) & (manifest["fetch_status"] == "ok")]
    assert len(lost) > 0
    assert (lost["status"] == "failed").all() and (lost["reason"] == "detect:shard_failed").all()
    assert (manifest.loc[manifest["shard"] == 0, "status"] == "kept").any()

    # Mended: the next invocation redoes exactly the failed shard (and what depends on it), and the error goes.
    shutil.copy(good, tar)
    assert run_curate(f"run.dir={run_dir}", "stage=all", "release.version=v2", *QUICK) == 0
    assert not error.exists()
    mended = pd.read_parquet(run_dir / "release" / "v2" / "manifest.parquet")
    assert not mended["reason"].str.endswith("shard_failed").any()


class FlakyStage(ShardStage):
    """A scripted stage for the runner: shard 0's first `fail_times` attempts raise, as a lost NFS mount would."""

    name = "license"  # stands in for a real stage name: the closed reason sets and the run layout know it
    version = "test"
    fail_times: ClassVar[int] = 1

    def process(self, rows: pd.DataFrame, shard: int, run: RunDir) -> pd.DataFrame:
        counter = run.root / f"attempts-{shard}"
        seen = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(seen + 1))
        if shard == 0 and seen < self.fail_times:
            raise OSError(f"attempt {seen + 1}: stale file handle")
        return pd.DataFrame({"license_status": ["ok"] * len(rows), "license_reason": ["ok"] * len(rows)})


def runner_for(run_dir: Path, retries: int) -> tuple[CurateConfig, Runner]:
    cfg = load_config([f"run.dir={run_dir}", "pipeline=sample", "ingest.num_shards=2", f"dask.retries={retries}",
                       *FAST])  # fmt: skip
    return cfg, Runner(cfg, lambda: open_client(cfg))


@pytest.mark.parametrize("retries", [0, 1])
def test_dask_retries_a_failing_shard_task(tmp_path: Path, retries: int) -> None:
    run_dir = tmp_path / "run"
    assert run_curate(f"run.dir={run_dir}", "stage=ingest", "pipeline=sample", "ingest.num_shards=2") == 0
    cfg, runner = runner_for(run_dir, retries)
    try:
        report = runner.run_stage(FlakyStage(cfg), ["ingest"])
    finally:
        runner.close()
    run = RunDir(run_dir)
    assert (run_dir / "attempts-0").read_text() == ("2" if retries else "1")
    if retries:
        assert report.failed_shards == [] and not report.failures
        assert not run.error_file("license", 0).exists()
        assert not run.read_marker("license", 0).get("failed")  # type: ignore[union-attr]
    else:
        assert report.failed_shards == [0] and "stale file handle" in report.failures[0]
        assert "OSError: attempt 1: stale file handle" in run.error_file("license", 0).read_text()
        part = pd.read_parquet(run.part("license", 0))
        live = pd.read_parquet(run.part("ingest", 0))["ingest_status"] == "ok"
        assert set(part.loc[live, "license_reason"]) == {"shard_failed"}
        assert part.loc[~live, "license_reason"].isna().all()
        assert report.counts.get("failed/shard_failed") == int(live.sum())
        assert run.read_marker("license", 1) is not None  # the other shard went on


def test_a_failed_fetch_shard_lets_the_later_stages_run_and_is_fetched_again(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    for stage in ("ingest", "license"):
        assert run_curate(f"run.dir={run_dir}", f"stage={stage}", *QUICK) == 0
    blocker = run_dir / "images" / "part-00001.tar"
    blocker.mkdir(parents=True)  # the tar cannot be renamed into place: fetch's shard 1 fails on every attempt
    assert run_curate(f"run.dir={run_dir}", "stage=all", "release.allow_failed_shards=true", *QUICK) == 0
    manifest = pd.read_parquet(run_dir / "release" / "v1" / "manifest.parquet")
    lost = manifest[manifest["shard"] == 1]
    reached = lost["license_status"] == "ok"
    assert reached.any() and (lost.loc[reached, "reason"] == "fetch:shard_failed").all()
    assert (manifest.loc[manifest["shard"] == 0, "status"] == "kept").any()
    assert (run_dir / "stats" / "fetch" / "part-00001.error.txt").exists()

    blocker.rmdir()
    # Retrying transient failures must also retry a failed shard's rows (they have no outcome worth keeping).
    assert run_curate(f"run.dir={run_dir}", "stage=all", "fetch.retry_failed=true", "release.version=v2", *QUICK) == 0
    mended = pd.read_parquet(run_dir / "release" / "v2" / "manifest.parquet")
    assert not mended["reason"].str.endswith("shard_failed").any()
    assert (mended.loc[mended["shard"] == 1, "status"] == "kept").any()
