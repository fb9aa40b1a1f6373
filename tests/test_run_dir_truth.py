"""The run directory keeps its truth: it remembers its pipeline and config, nothing is written before the lock or
by a refused invocation, a published release never changes, and review decisions mean what the README says.

One sample run is made once (module fixture); every test works on its own copy of it."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import MODELS, run_curate

from curate.configload import load_config
from curate.review import ledger
from curate.run import main

# In-process Dask, no progress bars, and NO models.dir: a finished run must not need one.
QUIET = ["dask.processes=false", "dask.n_workers=2", "run.progress=false"]
# Settings the sample recipe does not have: if a later invocation composed the recipe again, they would be lost.
OWN = ["release.name=Truth", "release.owner_cap=3", "release.target_size=0"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("truth") / "run"
    assert run_curate(f"run.dir={root}", *OWN) == 0
    return root


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    # the copy's config.yaml names the original directory; a later invocation must use the one it was given
    return copy


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file's sha256 (the lock file aside: it is how a writer is kept out)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock" and not str(p.relative_to(root)).startswith(skip)
    }


def test_tools_and_later_runs_start_from_the_remembered_config(run: Path) -> None:
    def remembered() -> dict[str, object]:
        stored = yaml.safe_load((run / "config.yaml").read_text())
        stored["run"].pop("dir")  # the copy lives elsewhere: config.yaml follows the directory
        return stored

    config = remembered()
    # the README's commands, with nothing but the run dir (and no models.dir): before, each composed the sample
    assert main([f"run.dir={run}", "stage=report", *QUIET]) == 0
    assert remembered() == config
    assert main([f"run.dir={run}", "stage=audit", "audit.size=3", *QUIET]) == 0
    assert remembered() == {**config, "audit": {**config["audit"], "size": 3}}  # type: ignore[dict-item]
    cfg = load_config([f"run.dir={run}"])
    assert (cfg.pipeline, cfg.release.name, cfg.release.owner_cap, cfg.release.target_size) == ("sample", "Truth", 3, 0)
    assert cfg.models.dir == str(MODELS)  # remembered: review commands work offline
    assert cfg.stage.value == "all"  # the stage is the invocation's, never remembered
    # an override goes on top of the remembered config, the rest stays
    assert load_config([f"run.dir={run}", "release.seed=7"]).release.owner_cap == 3


def test_a_different_pipeline_is_refused_and_writes_nothing(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(run)
    assert main([f"run.dir={run}", "pipeline=folder", f"ingest.path={run}", *QUIET]) == 2
    message = capsys.readouterr().err
    assert "pipeline=sample" in message and "another run.dir" in message
    assert snapshot(run) == before


def test_a_writer_refused_by_the_lock_leaves_the_run_dir_as_it_was(run: Path) -> None:
    before = snapshot(run)
    with open(run / ".lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main([f"run.dir={run}", "release.seed=3", *QUIET]) == 2
        assert main([f"run.dir={run}", "stage=report", *QUIET]) == 2
    assert snapshot(run) == before  # config.yaml and invocations/ included


def test_a_run_with_nothing_to_detect_needs_no_weights(run: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    assert main([f"run.dir={run}", f"models.dir={empty}", *QUIET]) == 0  # detect has no work: no check


def test_a_published_release_never_changes_and_unsure_is_not_released(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = run / "release" / "v1"
    published = snapshot(v1)
    kept = pd.read_parquet(v1 / "manifest.parquet").query("status == 'kept'")["image_id"].tolist()
    ledger.append(run, [(kept[0], "unsure"), (kept[1], "remove")], reviewer="test")

    # applying the decisions as before (stage=all): the release refuses, naming the next version's command
    # review applies the ledger, and the recheck after it follows its live rows; nothing else changes
    brought_up_to_date = ("manifest/review", "stats/review", "work/review", "manifest/recheck", "stats/recheck",
                          "invocations")  # fmt: skip
    before = snapshot(run, skip=brought_up_to_date)
    config = (run / "config.yaml").read_bytes()
    capsys.readouterr()
    assert main([f"run.dir={run}", *QUIET]) == 1
    out = capsys.readouterr().out
    assert "release v1 is published" in out and f"release.version=v2 release.previous={v1}" in out
    assert snapshot(v1) == published
    assert snapshot(run, skip=brought_up_to_date) == before
    assert (run / "config.yaml").read_bytes() == config  # a failed invocation is not remembered

    assert main([f"run.dir={run}", "stage=release", "release.version=v2", f"release.previous={v1}", *QUIET]) == 0
    assert snapshot(v1) == published
    manifest = pd.read_parquet(run / "release" / "v2" / "manifest.parquet").set_index("image_id")
    assert manifest.loc[kept[0], ["status", "reason"]].tolist() == ["review", "review:unsure"]
    assert manifest.loc[kept[1], ["status", "reason"]].tolist() == ["rejected", "review:removed"]
    changes = pd.read_parquet(run / "release" / "v2" / "diff.parquet").set_index("image_id")["change"]
    assert changes[kept[0]] == changes[kept[1]] == "removed"
    # remembered now (that invocation succeeded): a plain re-run is a no-op and touches neither version
    v2 = snapshot(run / "release" / "v2")
    assert load_config([f"run.dir={run}"]).release.version == "v2"
    assert main([f"run.dir={run}", *QUIET]) == 0
    assert snapshot(v1) == published and snapshot(run / "release" / "v2") == v2


def test_changed_thresholds_refuse_too_and_the_hint_keeps_the_overrides(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    published = snapshot(run / "release" / "v1")
    assert main([f"run.dir={run}", "stage=release", "decide.preset=pass_v1", *QUIET]) == 1
    out = capsys.readouterr().out
    hint = out.split("(with this command's overrides), run:")[1]
    assert "decide.preset=pass_v1" in hint and "release.version=v2" in hint
    assert snapshot(run / "release" / "v1") == published
    assert not (run / "release" / "v2").exists()


def test_release_formats(run: Path) -> None:
    v1 = run / "release" / "v1"
    metadata = pd.read_csv(v1 / "pass_metadata.csv", dtype=str)
    manifest = pd.read_parquet(v1 / "manifest.parquet")
    assert (manifest["status"] == "failed").any()  # the sample has a missing file: the case that made floats
    assert metadata["width"].str.fullmatch(r"\d+").all() and metadata["height"].str.fullmatch(r"\d+").all()
    members = set()
    for tar in v1.glob("PASS.*.tar"):
        with tarfile.open(tar) as handle:
            members |= set(handle.getnames())
    assert set(metadata["file"]) == members
    kept = manifest[manifest["status"] == "kept"].set_index("image_id")
    for row in metadata.itertuples():
        suffix = {"jpeg": ".jpeg", "png": ".png", "webp": ".webp"}[kept.at[row.image_id, "format"]]
        assert row.file == f"PASS_dataset/dummy_folder/{row.image_id}{suffix}"
    assert any(name.endswith(".png") for name in members)  # the sample's PNG keeps its own extension


def test_takedowns_take_a_single_path_and_unmatched_ones_are_carried_forward(run: Path, tmp_path: Path) -> None:
    v1 = run / "release" / "v1"
    kept = pd.read_parquet(v1 / "manifest.parquet").query("status == 'kept'")["image_id"].tolist()
    takedowns = tmp_path / "takedowns.csv"
    takedowns.write_text(f"image_id,reason,date\n{kept[0]},owner request,2026-11-30\nnot-in-this-run,gdpr,2026-11-29\n")
    # a single path where the schema has a list (before: "str is not a ListConfig")
    assert load_config([f"run.dir={run}", f"release.takedowns={takedowns}"]).release.takedowns == [str(takedowns)]
    assert main([f"run.dir={run}", "stage=release", "release.version=v2", f"release.previous={v1}",
                 f"release.takedowns={takedowns}", *QUIET]) == 0  # fmt: skip
    v2 = run / "release" / "v2"
    assert "not-in-this-run" in (v2 / "takedowns_unmatched.csv").read_text()
    # v3 is built from v2 with no takedown file of its own: both stay in force, the unmatched one too
    assert main([f"run.dir={run}", "stage=release", "release.version=v3", f"release.previous={v2}",
                 "release.takedowns=[]", *QUIET]) == 0  # fmt: skip
    v3 = run / "release" / "v3"
    manifest = pd.read_parquet(v3 / "manifest.parquet").set_index("image_id")
    assert manifest.loc[kept[0], "reason"] == "select:takedown"
    assert "not-in-this-run" in (v3 / "takedowns_unmatched.csv").read_text()


def test_invocations_are_numbered_under_the_lock_and_config_is_remembered(run: Path) -> None:
    logged = sorted(p.name for p in (run / "invocations").glob("*.yaml"))
    assert main([f"run.dir={run}", "stage=report", *QUIET]) == 0
    after = sorted(p.name for p in (run / "invocations").glob("*.yaml"))
    assert after == [*logged, f"{len(logged):04d}-report.yaml"]
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["pipeline"] == "sample" and stored["stage"] == "all"


def test_a_quoted_run_dir_is_the_same_run(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # before: the quotes were taken as part of the path, the sample recipe composed anew and another pipeline let in
    assert load_config([f"run.dir='{run}'"]).release.name == "Truth"
    assert main([f"run.dir='{run}'", "pipeline=folder", f"ingest.path={run}", *QUIET]) == 2
    assert "is a run of pipeline=sample" in capsys.readouterr().err


def test_a_tool_on_a_directory_that_is_no_run_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    assert main([f"run.dir={missing}", "stage=report", *QUIET]) == 2
    assert not missing.exists()


def test_a_re_spelt_run_dir_is_no_change(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert main([f"run.dir={run}", "stage=audit", "audit.size=3", *QUIET]) == 0
    published = snapshot(run / "release" / "v1")
    monkeypatch.chdir(run.parent)
    # the audit sample is a release input; the same file under a relative spelling must not count as a change
    assert main([f"run.dir={run.name}", "stage=release", *QUIET]) == 1  # the v1 audit is new since v1: v2 needed
    assert main([f"run.dir={run.name}", "stage=release", "release.version=v2",
                 f"release.previous={run.name}/release/v1", *QUIET]) == 0  # fmt: skip
    v2 = snapshot(run / "release" / "v2")
    assert main([f"run.dir={run}", "stage=release", *QUIET]) == 0  # absolute now: still the same, a no-op
    assert snapshot(run / "release" / "v2") == v2 and snapshot(run / "release" / "v1") == published


def test_one_invocation_settings_are_not_remembered(run: Path) -> None:
    assert main([f"run.dir={run}", "stage=fetch", "fetch.retry_failed=true", *QUIET]) == 0
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["fetch"]["retry_failed"] is False and stored["release"]["allow_failed_shards"] is False


def test_a_lost_tar_of_an_unfinished_release_is_written_again_never_published_missing(run: Path) -> None:
    v1 = run / "release" / "v1"
    sums = (v1 / "SHA256SUMS").read_text()
    # as if killed after the shards and before the release-wide files: not published yet, one tar lost
    (v1 / "SHA256SUMS").unlink()
    (v1 / "PASS.0.tar").unlink()
    assert main([f"run.dir={run}", "stage=release", *QUIET]) == 0
    assert (v1 / "PASS.0.tar").exists()
    assert (v1 / "SHA256SUMS").read_text() == sums  # the same bytes as the release that was lost


def test_release_refuses_scores_from_detectors_other_than_the_configured_ones(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(run, skip=("invocations",))
    capsys.readouterr()
    # the sample scored 3 x 3 tiles; configured without them (custom bars: strict's need the tiles), the stored
    # tile scores are not the configured detectors'
    flags = ["stage=release", "detect.person_tiles=1", "decide.preset=custom", "release.version=v2"]
    code = main([f"run.dir={run}", *flags, *QUIET])
    assert code == 1
    out = capsys.readouterr().out
    assert "person_yolox_nano_tiles_max" in out and "run stage=detect" in out
    assert snapshot(run, skip=("invocations",)) == before
