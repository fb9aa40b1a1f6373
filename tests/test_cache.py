"""The one caching rule, as the runner applies it to every kind of result: a stage's shards, a per-shard step
(dedup's features) and a run-wide step (dedup's groups, review's latest decisions, release's selection). A result
is redone exactly when what it is made from changed or a file it wrote is gone, and never otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from conftest import FAST, run_curate

from curate.cache import is_current
from curate.config import CurateConfig
from curate.configload import load_config
from curate.io.atomic import write_text
from curate.run import open_client
from curate.rundir import RunDir
from curate.runner import Runner, StageContext, StageReport
from curate.stages.base import ShardStage


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    run_dir = tmp_path / "run"
    assert run_curate(f"run.dir={run_dir}", "stage=ingest", "pipeline=sample", "ingest.num_shards=2") == 0
    cfg = load_config([f"run.dir={run_dir}", "pipeline=sample", "ingest.num_shards=2", "dask.retries=0", *FAST])
    runner = Runner(cfg, lambda: open_client(cfg))
    yield runner
    runner.close()


def context(runner: Runner, stage: str = "dedup") -> StageContext:
    return StageContext(runner, stage, StageReport(stage, runner.run.num_shards()))


def test_a_run_wide_step_is_rebuilt_exactly_when_its_inputs_change_or_an_output_is_gone(runner: Runner) -> None:
    out = runner.run.root / "work" / "dedup" / "groups.txt"
    builds: list[str] = []

    def build(text: str) -> None:
        builds.append(text)
        write_text(out, text)

    ctx = context(runner)
    first = ctx.step("groups", {"config": 1}, [out], lambda: build("a"))
    assert builds == ["a"] and (runner.run.root / "work" / "dedup" / "groups.json").exists()
    assert ctx.step("groups", {"config": 1}, [out], lambda: build("never")) == first  # reused: not rebuilt
    assert ctx.is_current("groups", {"config": 1}, [out])
    assert not ctx.is_current("groups", {"config": 2}, [out])
    changed = ctx.step("groups", {"config": 2}, [out], lambda: build("b"))
    assert builds == ["a", "b"] and changed != first  # the digest follows the outputs' content
    out.unlink()
    assert ctx.step("groups", {"config": 2}, [out], lambda: build("b")) == changed  # rebuilt, same content
    assert builds == ["a", "b", "b"]


def write_feature(cfg: CurateConfig, shard: int) -> None:
    """A per-shard step's task: writes its output and counts its calls."""
    root = Path(cfg.run.dir)
    write_text(feature_path(root, shard), f"features of shard {shard}")
    calls = root / f"calls-{shard}"
    calls.write_text(str(int(calls.read_text()) + 1 if calls.exists() else 1))


def feature_path(root: Path, shard: int) -> Path:
    return root / "work" / "dedup" / "toy" / f"part-{shard:05d}.txt"


def test_a_per_shard_step_redoes_only_the_shards_whose_inputs_changed_or_output_is_gone(runner: Runner) -> None:
    root = runner.run.root
    versions = {0: "a", 1: "a"}

    def steps() -> list[str]:
        ctx = context(runner)
        digests = ctx.shard_steps(
            "toy", write_feature, made_from=lambda shard: versions[shard], output=lambda s: feature_path(root, s)
        )
        assert not ctx.failed
        return digests

    def calls() -> list[int]:
        return [int((root / f"calls-{s}").read_text()) for s in (0, 1)]

    first = steps()
    assert calls() == [1, 1] and len(first) == 2
    assert steps() == first and calls() == [1, 1]
    versions[1] = "b"
    assert steps() == first and calls() == [1, 2]  # same content: same digests, but shard 1 was redone
    feature_path(root, 0).unlink()
    steps()
    assert calls() == [2, 2]


class WritesAFile(ShardStage):
    """A stage whose shards write a file besides their part, as fetch writes its tar."""

    name = "license"  # stands in for a real stage: the closed reason sets and the run layout know it
    version = "test"

    def shard_outputs(self, run: RunDir, shard: int) -> list[Path]:
        return [run.root / "extra" / f"{shard}.bin"]

    def process(self, rows: pd.DataFrame, shard: int, run: RunDir) -> pd.DataFrame:
        write_text(run.root / "extra" / f"{shard}.bin", "bytes")
        return pd.DataFrame({"license_status": ["ok"] * len(rows), "license_reason": ["ok"] * len(rows)})


def test_a_shard_whose_other_output_is_gone_runs_again_and_only_it(runner: Runner) -> None:
    stage = WritesAFile(runner.cfg)
    assert runner.run_stage(stage).done == 2
    marker = runner.run.read_marker("license", 1)
    assert marker is not None and "extra/1.bin" in marker["outputs"]
    assert not runner.has_work(stage)
    again = runner.run_stage(stage)
    assert (again.done, again.skipped) == (0, 2)
    (runner.run.root / "extra" / "1.bin").unlink()
    assert not is_current(marker, marker["fingerprint"], runner.run.root)
    assert runner.has_work(stage)
    mended = runner.run_stage(stage)
    assert (mended.done, mended.skipped) == (1, 1)
