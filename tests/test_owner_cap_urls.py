"""The owner cap on a URL list, end to end: the list's `owner` column is the owner the cap counts, and an owner
with more releasable images than `release.owner_cap` keeps that many; the rest are `select:owner_cap`."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from conftest import NO_FILTER, encode, photo, run_curate
from faultserver import fault_server

CAP = 2
BY = "CC BY 2.0"
# id -> (owner, licence): alice has one image over the cap after her non-free one is rejected, bob exactly the
# cap, carol one; a row without an owner is never capped.
ROWS = {
    "alice1": ("alice", BY),
    "alice2": ("alice", BY),
    "alice3": ("alice", BY),
    "alice4": ("alice", BY),
    "alice_nc": ("alice", "CC BY-NC 2.0"),
    "bob1": ("bob", BY),
    "bob2": ("bob", BY),
    "carol1": ("carol", BY),
    "nobody": ("", BY),
}


@pytest.fixture(scope="module")
def capped_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    tmp = tmp_path_factory.mktemp("owner_cap")
    with fault_server() as server:
        table = pd.DataFrame(
            [
                {"id": key, "url": server.serve(f"/{key}.jpg", encode(photo(seed=n))), "owner": owner, "license": lic}
                for n, (key, (owner, lic)) in enumerate(ROWS.items())
            ]
        )
        table.to_csv(tmp / "list.csv", index=False)
        run_dir = tmp / "run"
        code = run_curate(
            "pipeline=sample",
            "ingest.source=urls",
            f"ingest.path={tmp / 'list.csv'}",
            "ingest.id_column=id",
            "ingest.num_shards=2",
            f"run.dir={run_dir}",
            "detect.face=[]",
            "detect.person=[]",
            "detect.hand=[]",
            *NO_FILTER,
            f"release.owner_cap={CAP}",  # after NO_FILTER's owner_cap=0
        )
        yield run_dir, code


def test_an_owner_over_the_cap_keeps_the_cap_and_the_rest_carry_owner_cap(capped_run: tuple[Path, int]) -> None:
    run_dir, code = capped_run
    assert code == 0
    manifest = pd.read_parquet(run_dir / "release" / "v1" / "manifest.parquet").set_index("image_id")
    assert sorted(manifest.index) == sorted(ROWS)
    assert all(manifest.loc[key, "owner_nsid"] == owner for key, (owner, _) in ROWS.items() if owner)
    assert pd.isna(manifest.loc["nobody", "owner_nsid"])
    # The licence stops alice_nc first: the cap counts only what would otherwise be released.
    nc = manifest.loc["alice_nc"]
    assert (nc["status"], nc["reason"]) == ("rejected", "license:not_allowed") and pd.isna(nc["select_reason"])
    alice = manifest.loc[["alice1", "alice2", "alice3", "alice4"]]
    assert (alice["status"] == "kept").sum() == CAP
    capped = alice[alice["status"] != "kept"]
    assert len(capped) == 2
    assert (capped["status"] == "rejected").all() and (capped["reason"] == "select:owner_cap").all()
    assert (capped["select_status"] == "rejected").all() and (capped["select_reason"] == "owner_cap").all()
    # The other owners are untouched.
    others = manifest.loc[["bob1", "bob2", "carol1", "nobody"]]
    assert (others["status"] == "kept").all() and (others["select_reason"] == "ok").all()


def test_only_the_kept_images_are_released(capped_run: tuple[Path, int]) -> None:
    run_dir, _ = capped_run
    release = run_dir / "release" / "v1"
    manifest = pd.read_parquet(release / "manifest.parquet")
    released: set[str] = set()
    for path in (release / "webdataset").glob("*.tar"):
        with tarfile.open(path) as tar:
            released |= {name.split(".", 1)[0] for name in tar.getnames()}
    assert released == set(manifest.loc[manifest["status"] == "kept", "image_id"])
    assert len(released) == 4 + CAP  # bob's two, carol's, the ownerless one and alice's CAP
