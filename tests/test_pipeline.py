"""The pipeline is declared once (curate/pipeline.py): the CLI's stages, the reasons, the manifest's stages and
the funnel agree with it, and a stage added with one line there runs in its place, reading every earlier stage."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest
from conftest import run_curate

from curate import datacard, pipeline, schema
from curate.config import Stage
from curate.configload import load_config
from curate.funnel import STEPS
from curate.manifest import STAGES as MANIFEST_STAGES
from curate.manifest import manifest_schema
from curate.runconfig import load_run_config
from curate.rundir import RunDir
from curate.stages.base import ShardStage


def test_every_fact_about_the_stages_agrees_with_the_pipeline() -> None:
    names = pipeline.names()
    assert [s.value for s in Stage] == [*names, "all", *pipeline.TOOLS]
    assert set(names) <= set(schema.REASONS)
    assert [key for key, _ in STEPS] == [key for entry in pipeline.PIPELINE for key, _ in entry.funnel]
    assert list(MANIFEST_STAGES) == list(names)
    for name in names:
        assert pipeline.stage_class(name).name == name
        assert pipeline.upstream(name) == list(names[: names.index(name)])
    # The data card tallies the outcome of each stage whose `<s>_status`/`<s>_reason` pair the manifest declares
    # (release's own pair is internal; its selection's is select_*): the same stages, in the manifest's order. A
    # pair, because some other columns end in _status (fetch's http_status).
    columns = manifest_schema(load_config([])).names
    paired = [c.removesuffix("_status") for c in columns if c.endswith("_status")]
    assert [s for s in paired if f"{s}_reason" in columns] == list(datacard.STAGES)


@dataclass
class ToyConfig:
    min_ratio: float = 1.0


class ToyStage(ShardStage):
    """Marks every image it sees wider than tall: a stand-in for a new check between dedup and review."""

    name = "toy"
    version = "1"
    seen: ClassVar[list[list[str]]] = []

    def stage_config(self) -> ToyConfig:
        return ToyConfig()  # a real stage's dataclass is a group of CurateConfig (ARCHITECTURE.md, step 3)

    def process(self, rows: pd.DataFrame, shard: int, run: RunDir) -> pd.DataFrame:
        ToyStage.seen.append(sorted(c for c in rows.columns if c in {f"{n}_status" for n in pipeline.names()}))
        wide = (rows["width"] > rows["height"]).fillna(False)
        return pd.DataFrame({"toy_status": "ok", "toy_reason": wide.map({True: "wide", False: "ok"})})


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipeline") / "run"
    assert run_curate(f"run.dir={root}") == 0
    return root


def test_a_stage_added_with_one_line_runs_in_its_place(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    entries = list(pipeline.PIPELINE)
    at = pipeline.names().index("review")
    # the one line: where it belongs, its class, its funnel step
    entries.insert(at, pipeline.StageEntry("toy", f"{__name__}:ToyStage", (("toy", "not a toy"),)))
    monkeypatch.setattr(pipeline, "PIPELINE", tuple(entries))
    monkeypatch.setitem(schema.REASONS, "toy", frozenset({"ok", "wide"}))
    from curate.run import run_locked

    cfg = load_run_config(run_dir)
    reports = run_locked(cfg)
    assert [r.stage for r in reports] == list(pipeline.names())
    toy = next(r for r in reports if r.stage == "toy")
    assert toy.done == 4 and not toy.failures
    # it read the columns of every earlier stage, and rows an earlier stage stopped were not passed in
    assert ToyStage.seen and all(s == sorted(f"{n}_status" for n in pipeline.upstream("toy")) for s in ToyStage.seen)
    parts = pd.concat([pd.read_parquet(p) for p in sorted((run_dir / "manifest" / "toy").glob("*.parquet"))])
    assert set(parts["toy_reason"].dropna()) <= {"ok", "wide"} and parts["toy_reason"].notna().sum() == 30
    # finished shards are skipped like any stage's
    ToyStage.seen.clear()
    again = next(r for r in run_locked(cfg) if r.stage == "toy")
    assert again.done == 0 and again.skipped == 4 and not ToyStage.seen
