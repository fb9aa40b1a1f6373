"""The recheck stage's per-row outcome, on one shard: an answer decided run-wide (Flickr, carried, reused), a URL
asked now, a folder's file (no_source), a row the previous release did not hold (new), a planned answer that went
missing (unreachable, never a null); and what preflight refuses before any work."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from faultserver import fault_server, sample_jpeg

from curate.config import FLICKR_KEY_ENV, FLICKR_SECRET_ENV, ConfigError, CurateConfig
from curate.configload import load_config
from curate.io.atomic import write_json, write_parquet
from curate.rundir import RunDir
from curate.stages.recheck import ANSWER_COLUMNS, RecheckStage, asked_about, stale_refusal, stamp_path

ASKED_AT = "2026-12-01T10:00:00Z"
URLS = ["ingest.source=urls", f"ingest.path={__file__}"]  # a recheck of URLs needs no key


def previous_release(folder: Path, ids: list[str]) -> Path:
    folder.mkdir(parents=True)
    write_parquet(folder / "manifest.parquet", pd.DataFrame({"image_id": ids, "status": "kept"}))
    return folder


def test_each_plan_gives_its_answer_and_no_live_row_is_left_null(tmp_path: Path) -> None:
    previous = previous_release(tmp_path / "v1", ["flickr1", "carried1", "local1", "url_gone", "url_ok", "lost1"])
    cfg = load_config([*URLS, f"run.dir={tmp_path / 'run'}", f"release.previous={previous}", "recheck.enabled=true"])
    stage = RecheckStage(cfg, now=lambda: ASKED_AT)
    run = RunDir(tmp_path / "run")
    with fault_server() as server:
        gone, served = server.status("/gone.jpg", 410), server.serve("/ok.jpg", sample_jpeg(seed=3))
        decided = {"recheck_status": "rejected", "recheck_reason": "license_changed", "recheck_at": ASKED_AT,
                   "recheck_old_license": "cc-by", "recheck_new_license": "all-rights-reserved"}  # fmt: skip
        plan = pd.DataFrame(
            [
                {"image_id": "flickr1", "plan": "decided", **decided},
                {
                    "image_id": "carried1",
                    "plan": "decided",
                    **decided,
                    "recheck_reason": "gone_at_source",
                    "recheck_error": "carried from v1: not listed",
                },
                {"image_id": "local1", "plan": "no_source"},
                {"image_id": "url_gone", "plan": "url"},
                {"image_id": "url_ok", "plan": "url"},
                {"image_id": "lost1", "plan": "decided"},  # its answer went missing
            ]
        ).reindex(columns=["image_id", "plan", *ANSWER_COLUMNS])
        write_parquet(stage.plan_path(run, 0), plan.astype("string"))
        rows = pd.DataFrame(
            {
                "image_id": ["new1", "url_ok", "flickr1", "local1", "url_gone", "carried1", "lost1"],
                "image_url": [served, served, None, None, gone, None, None],
            }
        )
        out = stage.process(rows, 0, run)
    assert len(out) == len(rows)
    got = dict(zip(rows["image_id"], zip(out["recheck_status"], out["recheck_reason"], strict=True), strict=True))
    assert got == {
        "new1": ("ok", "new"),  # not in the previous release: it was just fetched, nothing to ask
        "url_ok": ("ok", "ok"),
        "flickr1": ("rejected", "license_changed"),
        "local1": ("ok", "no_source"),
        "url_gone": ("rejected", "gone_at_source"),
        "carried1": ("rejected", "gone_at_source"),
        "lost1": ("ok", "unreachable"),
    }
    by_id = out.set_index(rows["image_id"])
    assert by_id.loc["url_ok", "recheck_at"] == ASKED_AT and pd.isna(by_id.loc["new1", "recheck_at"])
    assert by_id.loc["flickr1", "recheck_new_license"] == "all-rights-reserved"
    assert by_id.loc["carried1", "recheck_error"].startswith("carried from v1")
    assert by_id.loc["lost1", "recheck_error"] == "no answer recorded"
    assert server.hits["/gone.jpg"] == 1 and server.hits["/ok.jpg"] == 1  # only the URL rows were asked


def test_without_a_previous_release_nothing_is_asked(tmp_path: Path) -> None:
    cfg = load_config([*URLS, f"run.dir={tmp_path / 'run'}", "recheck.enabled=true"])
    out = RecheckStage(cfg).process(pd.DataFrame({"image_id": ["a", "b"], "image_url": ["x", "y"]}), 0,
                                    RunDir(tmp_path / "run"))  # fmt: skip
    assert out["recheck_reason"].tolist() == ["not_asked", "not_asked"]
    assert out["recheck_status"].tolist() == ["ok", "ok"]


def refusal(cfg: CurateConfig, run: RunDir) -> str | None:
    """What release says of the run's recheck answers under `cfg` (as it calls it: the previous digest)."""
    return stale_refusal(run, asked_about(cfg), cfg.release.previous)


def test_release_refuses_answers_made_for_another_previous(tmp_path: Path) -> None:
    v1 = previous_release(tmp_path / "v1", ["a"])
    v2 = previous_release(tmp_path / "v2", ["a", "b"])
    run = RunDir(tmp_path / "run")
    asked_v1 = load_config([*URLS, f"run.dir={run.root}", f"release.previous={v1}", "recheck.enabled=true"])
    assert "run holds no recheck" in (refusal(asked_v1, run) or "")
    write_json(stamp_path(run), {"asked_about": asked_about(asked_v1), "previous": str(v1)})
    assert refusal(asked_v1, run) is None
    other = load_config([*URLS, f"run.dir={run.root}", f"release.previous={v2}", "recheck.enabled=true"])
    message = refusal(other, run) or ""
    assert f"a recheck for {v1}" in message and "stage=recheck" in message
    # not asking at all is its own answer: a release without asking needs the run's recheck to have asked nothing
    unasked = load_config([*URLS, f"run.dir={run.root}", f"release.previous={v1}", "recheck.enabled=false"])
    assert "without asking the sources" in (refusal(unasked, run) or "")


def test_a_flickr_recheck_without_the_key_fails_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(FLICKR_KEY_ENV, raising=False)
    monkeypatch.delenv(FLICKR_SECRET_ENV, raising=False)
    v1 = previous_release(tmp_path / "v1", ["a"])
    base = [f"run.dir={tmp_path / 'run'}", f"release.previous={v1}", "ingest.source=yfcc", "ingest.path=" + __file__]
    for stage in ("stage=recheck", "stage=all"):
        with pytest.raises(ConfigError, match=f"{FLICKR_KEY_ENV} and {FLICKR_SECRET_ENV}.*recheck.enabled=false"):
            load_config([*base, stage, "recheck.enabled=true"])
    load_config([*base, "stage=recheck", "recheck.enabled=false"])  # asks nothing: needs no key
    load_config([f"run.dir={tmp_path / 'run'}", "stage=all", "recheck.enabled=true"])  # no previous: asks nothing
    monkeypatch.setenv(FLICKR_KEY_ENV, "k")
    monkeypatch.setenv(FLICKR_SECRET_ENV, "s")
    load_config([*base, "stage=recheck", "recheck.enabled=true"])
