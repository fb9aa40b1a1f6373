"""The config is a pure schema: each group checks its own values as it is built, through the real loader too;
what the values name on disk or in the environment is preflight's, before anything is written to run.dir."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import FAST
from omegaconf import OmegaConf

from curate import config, preflight
from curate.config import ConfigError, CurateConfig, FetchConfig, ReleaseConfig, Stage
from curate.configload import load_config
from curate.run import main


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("fetch.total_timeout_s=-1", r"fetch\.\*_timeout_s must be > 0"),
        ("fetch.retries=-1", r"fetch\.retries must be >= 0"),
        ("run.alarm_fraction=2", r"run\.alarm_fraction must be within 0\.\.1"),
        ("dask.gpus=-1", r"dask\.gpus must be >= 0"),
        ("dask.address=localhost:8786", r"dask\.address='localhost:8786' must look like tcp://HOST:PORT"),
        ("ingest.num_shards=0", r"ingest\.num_shards must be >= 1"),
        ("ingest.flickr.per_page=501", r"ingest\.flickr\.per_page must be 1\.\.500"),
        ("license.allow=[cc-by-banana]", r"license\.allow has unknown codes \['cc-by-banana'\]"),
        ("detect.device=gpu", r"detect\.device='gpu': use auto, cpu, cuda or cuda:N"),
        ("detect.person_tiles=0", r"detect\.person_tiles must be >= 1"),
        ("decide.person_review=1.5", r"decide\.person_review must be within 0\.\.1"),
        ("decide.preset=loose", r"decide\.preset must be strict, pass, pass_v1, custom or the path of a preset file"),
        ("dedup.phash_distance=17", r"dedup\.phash_distance must be within -1\.\.16"),
        ("dedup.references=[{name: a}]", r"dedup\.references 'a': give exactly one of folder, hashes, embeddings"),
        ("review.borderline_margin=2", r"review\.borderline_margin must be within 0\.\.1"),
        ("audit.size=0", r"audit\.size must be >= 1"),
        ("release.version=v.2", r"release\.version='v\.2' must be non-empty letters"),
        ("release.owner_cap=-1", r"release\.owner_cap and release\.target_size must be >= 0"),
    ],
)
def test_a_range_check_fires_through_the_real_loader(override: str, message: str) -> None:
    # stage=report: no stage input is read, so nothing but the schema can refuse it
    with pytest.raises(ConfigError, match=message):
        load_config(["stage=report", override])


def test_the_checks_run_when_omegaconf_builds_the_config() -> None:
    node = OmegaConf.merge(OmegaConf.structured(CurateConfig), {"fetch": {"retries": -1}, "audit": {"size": 0}})
    with pytest.raises(ConfigError) as caught:
        OmegaConf.to_object(node)
    # every group's problems at once, each naming its key
    assert "fetch.retries must be >= 0" in str(caught.value) and "audit.size must be >= 1" in str(caught.value)
    with pytest.raises(ConfigError, match=r"fetch\.max_bytes must be > 0"):
        CurateConfig(fetch=FetchConfig(max_bytes=0))


def test_a_remembered_config_is_checked_too(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    stored = OmegaConf.structured(CurateConfig(stage=Stage.report))
    stored.audit.size = 0  # a config.yaml edited by hand
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(stored))
    with pytest.raises(ConfigError, match=r"audit\.size must be >= 1"):
        load_config([f"run.dir={run_dir}", "stage=report"])


def test_the_schema_looks_at_nothing_but_its_values(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.csv")
    cfg = CurateConfig(release=ReleaseConfig(takedowns=[missing], evaluation=missing))  # builds: no disk looked at
    assert cfg.problems() == [] and CurateConfig().problems() == []
    assert preflight.problems(cfg) == [
        "ingest.path must be set for ingest.source=yfcc",
        f"release.takedowns: {missing} not found",
        f"release.evaluation={missing!r} not found",
    ]
    assert preflight.problems(CurateConfig(stage=Stage.report, release=cfg.release)) == []  # a report reads none
    tree = ast.parse(Path(config.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"os", "pathlib", "glob", "curate.sources", "curate.models.registry"}


def test_preflight_refuses_a_missing_input_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "r"
    assert main([f"run.dir={run_dir}", "ingest.source=urls", f"ingest.path={tmp_path / 'no-urls.txt'}", *FAST]) == 2
    err = capsys.readouterr().err
    assert "ingest.path" in err and "no-urls.txt" in err
    assert not run_dir.exists()  # not even the lock: preflight ran before it
    with pytest.raises(ConfigError, match=r"ingest\.path: no file matches"):
        load_config([f"run.dir={run_dir}", f"ingest.path={tmp_path / 'nothing-*.tsv'}"])
    assert not run_dir.exists()
