"""Versions: the owner cap and seeded sample, a takedown round trip v1 -> v2 -> v3, a re-audit of a release made
elsewhere into vN+1, and byte-identical releases from two runs with the same seed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import NO_FILTER, run_curate

from curate.run import SAMPLE_DIR
from curate.selection import select


def test_select_caps_owners_then_samples_deterministically() -> None:
    candidates = pd.DataFrame(
        {"image_id": [f"i{n:02d}" for n in range(30)], "owner_nsid": ["a"] * 12 + ["b"] * 12 + [None] * 6}
    )
    reason = select(candidates, owner_cap=5, target_size=0, seed=1)
    assert (reason[:12] == "owner_cap").sum() == 7 and (reason[12:24] == "owner_cap").sum() == 7
    assert (reason[24:] == "ok").all()  # unknown owners are not one owner
    sampled = select(candidates, owner_cap=5, target_size=8, seed=1)
    assert (sampled == "ok").sum() == 8 and (sampled == "sampled_out").sum() == 30 - 14 - 8
    assert sampled.equals(select(candidates.sample(frac=1, random_state=3), 5, 8, 1).reindex(candidates.index))
    assert not sampled.equals(select(candidates, 5, 8, seed=2))


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("versions") / "run"
    # the sample recipe (human filter, dedup) with a cap of 1 and a sample of 5: 11 images pass its filter, at most
    # 2 per owner, so both the cap and the sample act
    assert run_curate(f"run.dir={run_dir}", "release.owner_cap=1", "release.target_size=5") == 0
    return run_dir


def manifest(run_dir: Path, version: str) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "release" / version / "manifest.parquet").set_index("image_id")


def test_sample_release_shows_groups_cap_and_sample(v1: Path) -> None:
    rows = manifest(v1, "v1")
    assert (rows["status"] == "kept").sum() == 5
    assert rows["dedup_group"].notna().sum() >= 2 and (rows["reason"] == "dedup:exact_duplicate").sum() >= 1
    assert (rows["reason"] == "select:owner_cap").sum() >= 1 and (rows["reason"] == "select:sampled_out").sum() >= 1
    kept = rows[rows["status"] == "kept"]
    assert kept.groupby("owner_nsid").size().max() <= 1
    card = (v1 / "release" / "v1" / "DATA_CARD.md").read_text()
    assert "owner_cap" in card and "sampled_out" in card and "## Duplicates" in card


def test_takedown_round_trip(v1: Path, tmp_path: Path) -> None:
    kept = manifest(v1, "v1").query("status == 'kept'").index.sort_values()
    chosen = list(kept[:3])
    takedowns = tmp_path / "takedowns.csv"
    lines = ["image_id,reason,date", *(f"{i},owner request,2026-11-20" for i in chosen), "no-such-id,dmca,2026-11-21"]
    takedowns.write_text("\n".join(lines) + "\n")
    v1_dir = v1 / "release" / "v1"
    args = [f"run.dir={v1}", "stage=release", f"release.previous={v1_dir}"]
    assert run_curate(*args, "release.version=v2", f"release.takedowns=[{takedowns}]") == 0

    v2_dir = v1 / "release" / "v2"
    diff = pd.read_parquet(v2_dir / "diff.parquet")
    removed = diff[diff["change"] == "removed"]
    assert sorted(removed["image_id"]) == chosen
    assert (removed["reason"] == "select:takedown").all()
    assert (diff["change"] == "added").sum() == 0  # a takedown pulls in no replacement
    assert (diff["change"] == "kept").sum() == len(kept) - 3
    rows = manifest(v1, "v2")
    assert (rows.loc[chosen, "takedown_reason"] == "owner request").all()
    assert (rows.loc[chosen, "takedown_date"] == "2026-11-20").all()
    unmatched = pd.read_csv(v2_dir / "takedowns_unmatched.csv")
    assert unmatched["image_id"].tolist() == ["no-such-id"]
    card = (v2_dir / "DATA_CARD.md").read_text()
    assert "no-such-id" in card and "| removed | 3 |" in card
    assert "diff.parquet" in (v2_dir / "SHA256SUMS").read_text()

    # v3 from v2 with no list: v2's takedowns stay in force
    assert run_curate(f"run.dir={v1}", "stage=release", "release.version=v3", f"release.previous={v2_dir}") == 0
    diff3 = pd.read_parquet(v1 / "release" / "v3" / "diff.parquet")
    assert set(diff3["change"]) == {"kept"} and len(diff3) == len(kept) - 3


def test_reaudit_of_a_release_made_elsewhere_removes_only_what_is_newly_flagged(tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert run_curate(f"run.dir={first}", *NO_FILTER) == 0  # published without any human filter
    published = tmp_path / "published"
    published.mkdir()
    shutil.copy(first / "release" / "v1" / "pass_metadata.csv", published)  # as PASS ships: no manifest
    again = tmp_path / "again"
    args = [
        "ingest.source=pass_release",
        f"ingest.path={published / 'pass_metadata.csv'}",
        f"fetch.file_root={SAMPLE_DIR}",
        f"run.dir={again}",
        "release.version=v2",
        f"release.previous={published}",
        "release.owner_cap=0",
        "release.target_size=0",
    ]
    assert run_curate(*args) == 0
    diff = pd.read_parquet(again / "release" / "v2" / "diff.parquet").set_index("image_id")
    now = manifest(again, "v2")
    assert (diff["change"] == "added").sum() == 0
    flagged = now.index[now["status"] != "kept"]
    assert len(flagged) >= 5  # the sample has people: the filter finds them
    assert sorted(diff.index[diff["change"] == "removed"]) == sorted(flagged)
    # newly flagged: people (v1 had no human filter) and a duplicate (v1 had no dedup)
    assert diff.loc[flagged, "reason"].str.startswith(("detect:", "dedup:")).all()
    assert (diff.loc[flagged, "reason"] == "dedup:exact_duplicate").sum() == 1


def test_two_runs_with_the_same_seed_are_byte_identical(v1: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert run_curate(f"run.dir={again}", "release.owner_cap=1", "release.target_size=5") == 0  # as v1
    first, second = v1 / "release" / "v1", again / "release" / "v1"
    assert (first / "SHA256SUMS").read_text() == (second / "SHA256SUMS").read_text()
    for name in ("manifest.parquet", "PASS.0.tar", "webdataset/00000.tar", "DATA_CARD.md"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
