"""Configuration errors fail before any work starts, with a message that says what to change."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import run_curate

from curate.config import ConfigError
from curate.configload import load_config


def fails_with(capsys: pytest.CaptureFixture[str], run_dir: Path, *overrides: str) -> str:
    assert run_curate(f"run.dir={run_dir}", *overrides) == 2
    assert not (run_dir / "manifest").exists()  # nothing started
    return capsys.readouterr().err


def test_misspelt_key_names_the_right_one(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = fails_with(capsys, tmp_path / "r", "fetch.timeout_s=3")
    assert "fetch.timeout_s" in err
    assert "did you mean fetch." in err


def test_wrong_type_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = fails_with(capsys, tmp_path / "r", "ingest.num_shards=many")
    assert "num_shards" in err


def test_bad_values_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = fails_with(capsys, tmp_path / "r", "license.allow=[cc-by,cc-by-banana]", "ingest.num_shards=0")
    assert "license.allow" in err and "cc-by-banana" in err
    assert "ingest.num_shards must be >= 1" in err


def test_unknown_stage_and_pipeline(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = fails_with(capsys, tmp_path / "r", "stage=download")
    assert "stage" in err and "download" in err
    err = fails_with(capsys, tmp_path / "r", "pipeline=nope")
    assert "pipeline='nope' not found" in err and "sample" in err


def test_missing_input_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = fails_with(capsys, tmp_path / "r", "ingest.path=/nonexistent/yfcc.tsv")
    assert "ingest.path" in err and "/nonexistent/yfcc.tsv" in err
    err = fails_with(capsys, tmp_path / "r", "pipeline=pass")
    assert "ingest.path" in err


def test_stage_before_its_input_says_which_to_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run_curate(f"run.dir={tmp_path / 'r'}", "stage=fetch") == 2
    assert "stage=ingest" in capsys.readouterr().err


def test_each_invocation_keeps_its_config(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    assert run_curate(f"run.dir={run_dir}", "stage=ingest") == 0
    assert run_curate(f"run.dir={run_dir}", "stage=license", "license.allow=[cc-by,cc0]") == 0
    saved = sorted((run_dir / "invocations").glob("*.yaml"))
    assert [p.name for p in saved] == ["0000-ingest.yaml", "0001-license.yaml"]
    second = yaml.safe_load(saved[1].read_text())
    assert second["license"]["allow"] == ["cc-by", "cc0"] and second["stage"] == "license"


def test_recipe_by_path(tmp_path: Path) -> None:
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("defaults:\n  - curate_schema\n  - _self_\ningest:\n  num_shards: 3\n")
    cfg = load_config([f"pipeline={recipe}", "ingest.path=" + __file__, "ingest.source=urls"])
    assert cfg.ingest.num_shards == 3


def test_config_error_type() -> None:
    with pytest.raises(ConfigError, match=r"fetch\.retries must be >= 0"):
        load_config(["fetch.retries=-1"])
