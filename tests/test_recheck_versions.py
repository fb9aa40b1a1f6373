"""v1 -> recheck -> v2 -> v3 end to end, through `curate.run.main`, against the sources themselves: the local Flickr
stand-in (the real `flickrapi` client, asked per owner) and the local fault server (URL lists). Between two points
in time photos are deleted, made private, relicensed, an account closes, URLs go 404/410, redirect to a
placeholder, opt out of AI training or answer 503. Exactly those images leave v2 with their reasons (no
replacement drawn); every other member of v2's tars is byte-identical to v1's; the Flickr calls per owner are one
per page plus the retries; v3 keeps the removals in force, and recheck.max_age_days reuses recent answers."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import NO_FILTER, encode, photo, run_curate
from faultserver import FaultServer, fault_server
from flickr_standin import RATE_LIMITED, FlickrStandIn, flickr_standin

from curate.config import FLICKR_KEY_ENV, FLICKR_SECRET_ENV

KEY, SECRET = "recheck-KEY-77", "recheck-SECRET-88"
NO_MODELS = ["detect.face=[]", "detect.person=[]", "detect.hand=[]", *NO_FILTER]
# Fetch and the recheck give up fast on a route that does not answer, and the Flickr back-off is short.
# The sample recipe asks nothing (its rows are local copies): these runs ask.
QUICK = ["fetch.retries=1", "fetch.backoff_s=0.01", "fetch.read_timeout_s=2", "fetch.total_timeout_s=4",
         "recheck.backoff_s=0.01", "recheck.enabled=true"]  # fmt: skip
OWNERS = {"11111@N01": 4, "22222@N02": 2, "33333@N03": 2, "44444@N04": 3}


def flickr_photo(number: int, owner: str, url: str) -> dict[str, Any]:
    pid = str(7_000_000 + number)
    return {
        "id": pid, "owner": owner, "secret": f"{number:08x}", "server": "65535", "farm": 66,
        "title": f"photo {number}", "ispublic": 1, "isfriend": 0, "isfamily": 0, "license": "4",
        "ownername": f"Owner {owner[:5]}", "datetaken": "2015-06-01 10:00:00", "datetakengranularity": 0,
        "datetakenunknown": "0", "latitude": 0, "longitude": 0, "accuracy": 0, "context": 0,
        "url_m": url, "height_m": 240, "width_m": 320,
    }  # fmt: skip


def members(tar_dir: Path) -> dict[str, bytes]:
    """name -> bytes of every member of every PASS-layout tar of a release."""
    found: dict[str, bytes] = {}
    for path in sorted(tar_dir.glob("PASS.*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                handle = tar.extractfile(member)
                assert handle is not None
                found[member.name] = handle.read()
    return found


def manifest(run_dir: Path, version: str) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "release" / version / "manifest.parquet").set_index("image_id")


def removed(run_dir: Path, version: str) -> dict[str, str]:
    changes = pd.read_parquet(run_dir / "release" / version / "diff.parquet")
    assert (changes["change"] == "added").sum() == 0  # a removal pulls in no replacement
    gone = changes[changes["change"] == "removed"]
    return dict(zip(gone["image_id"], gone["reason"], strict=True))


# -- Flickr: asked per owner ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flickr_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FlickrStandIn, Path, list[Any]]]:
    tmp = tmp_path_factory.mktemp("recheck_flickr")
    patch = pytest.MonkeyPatch()
    patch.setenv(FLICKR_KEY_ENV, KEY)
    patch.setenv(FLICKR_SECRET_ENV, SECRET)
    with fault_server() as images:
        catalogue = []
        for owner, count in OWNERS.items():
            for _ in range(count):
                n = len(catalogue)
                catalogue.append(flickr_photo(n, owner, images.serve(f"/f/{n}.jpg", encode(photo(seed=100 + n)))))
        with flickr_standin(KEY, SECRET, catalogue) as standin:
            yield standin, tmp / "run", catalogue
    patch.undo()


def flickr_args(standin: FlickrStandIn, run_dir: Path, *extra: str) -> list[str]:
    return ["pipeline=sample", "ingest.source=flickr", f"ingest.flickr.endpoint={standin.endpoint}",
            "ingest.flickr.license_ids=[4]", "ingest.flickr.max_pages=5", "ingest.flickr.timeout_s=5",
            "ingest.num_shards=2", f"run.dir={run_dir}", *NO_MODELS, *QUICK, *extra]  # fmt: skip


def test_flickr_v1_recheck_v2(flickr_world: tuple[FlickrStandIn, Path, list[Any]]) -> None:
    standin, run_dir, catalogue = flickr_world
    assert run_curate(*flickr_args(standin, run_dir)) == 0
    v1 = manifest(run_dir, "v1")
    assert (v1["status"] == "kept").sum() == len(catalogue)
    assert set(v1["recheck_reason"]) == {"not_asked"}  # no previous release: nothing to ask
    assert standin.people_calls == []
    searches = len(standin.searches)

    # t2: what happened at Flickr since v1 (nothing to the first owner's photos)
    ids = {f"flickr-{p['id']}": p for p in catalogue}
    b0, c0, c1, d0, d1, d2 = (f"flickr-{catalogue[i]['id']}" for i in (4, 6, 7, 8, 9, 10))
    now = []
    for p in catalogue:
        image_id = f"flickr-{p['id']}"
        if image_id == d0 or p["owner"] == "33333@N03":  # deleted; the whole account closed
            continue
        changed = dict(p)
        if image_id == d1:
            changed["license"] = "0"  # all rights reserved now
        if image_id == d2:
            changed["license"] = "11"  # CC BY 4.0: another version of cc-by, still allowed
        if image_id == b0:
            changed["ispublic"] = 0  # made private
        now.append(changed)
    standin.replace_catalogue(now)
    standin.fail_owner_page("44444@N04", 1, RATE_LIMITED)  # rate-limited once, then answered
    v1_dir = run_dir / "release" / "v1"
    v2_args = flickr_args(standin, run_dir, "release.version=v2", f"release.previous={v1_dir}",
                          "recheck.owners_per_batch=1")  # fmt: skip
    # The README's path: ask first (stage=recheck), then release. One owner per batch, each a cached step.
    assert run_curate(*v2_args, "stage=recheck") == 0
    first = standin.calls_per_owner()
    assert first == {"11111@N01": 1, "22222@N02": 1, "33333@N03": 1, "44444@N04": 2}  # one retry after the 429
    # A recheck killed before its second batch finished: started again, it asks that owner alone again.
    (run_dir / "work" / "recheck" / "flickr" / "answers-00001.parquet").unlink()
    assert run_curate(*v2_args, "stage=recheck") == 0
    assert standin.calls_per_owner() == {**first, "22222@N02": 2}
    assert run_curate(*v2_args) == 0  # stage=all: the recheck is done, release applies it
    assert standin.calls_per_owner() == {**first, "22222@N02": 2}
    assert len(standin.searches) == searches  # the candidates are not searched again: only the owners are asked

    v2 = manifest(run_dir, "v2")
    want = {d0: "gone_at_source", d1: "license_changed", b0: "gone_at_source", c0: "gone_at_source",
            c1: "gone_at_source"}  # fmt: skip
    assert removed(run_dir, "v2") == {i: f"recheck:{r}" for i, r in want.items()}
    assert v2.loc[d1, ["recheck_old_license", "recheck_new_license"]].tolist() == ["cc-by", "all-rights-reserved"]
    assert v2.loc[d2, "recheck_reason"] == "ok" and v2.loc[d2, "status"] == "kept"  # cc-by 4.0 is cc-by
    assert v2.loc[list(want), "recheck_status"].eq("rejected").all()
    assert v2["recheck_at"].notna().sum() == len(ids)
    for request in standin.people_calls:
        assert request.form["extras"] == "license" and request.form["per_page"] == "500"
        assert request.api_key == KEY and request.signature_ok
    # every other image is byte-identical in v2's tars
    before, after = members(v1_dir), members(run_dir / "release" / "v2")
    assert set(before) - set(after) == {n for n in before if n.split("/")[-1].split(".")[0] in want}
    assert all(after[name] == before[name] for name in after)
    card = (run_dir / "release" / "v2" / "DATA_CARD.md").read_text()
    assert "## Recheck at the sources (images of v1)" in card
    assert "Flickr API calls behind these answers: 5 for 4 owner(s)" in card and "| gone_at_source | 4 |" in card
    assert "| license_changed | 1 |" in card
    # v3 from v2: the owners of v2's images are asked anew, the first one too, whose batch holds the very photos
    # it held for v2;
    # the closed account's images are v2's removals, carried in force without asking.
    asked_v2 = standin.calls_per_owner()
    v2_dir = run_dir / "release" / "v2"
    assert run_curate(*flickr_args(standin, run_dir, "release.version=v3", f"release.previous={v2_dir}",
                                   "recheck.owners_per_batch=1")) == 0  # fmt: skip
    assert standin.calls_per_owner() == {**asked_v2, **{o: asked_v2[o] + 1 for o in OWNERS if o != "33333@N03"}}
    v3 = manifest(run_dir, "v3")
    assert set(v3.index[v3["status"] == "kept"]) == set(v2.index[v2["status"] == "kept"])
    assert v3.loc[list(want), "reason"].tolist() == [f"recheck:{r}" for r in want.values()]
    for path in run_dir.rglob("*"):  # the key and secret are written nowhere, manifests and answers included
        if path.suffix == ".parquet":
            text = pd.read_parquet(path).astype(str).to_csv()
        elif path.is_file() and path.suffix in (".json", ".yaml", ".md", ".txt", ".csv", ".log"):
            text = path.read_text(errors="replace")
        else:
            continue
        assert KEY not in text and SECRET not in text, path


# -- URLs: asked by a request -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def url_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FaultServer, Path, dict[str, bytes]]]:
    tmp = tmp_path_factory.mktemp("recheck_urls")
    with fault_server() as server:
        images = {f"u{n}": encode(photo(seed=200 + n)) for n in range(8)}
        table = pd.DataFrame(
            [{"id": key, "url": server.serve(f"/{key}.jpg", data), "license": "CC BY 2.0"}
             for key, data in images.items()]
        )  # fmt: skip
        table.to_csv(tmp / "list.csv", index=False)
        yield server, tmp, images


AGENT = "curate-test/1"


def url_args(tmp: Path, *extra: str) -> list[str]:
    return ["pipeline=sample", "ingest.source=urls", f"ingest.path={tmp / 'list.csv'}", "ingest.id_column=id",
            "ingest.num_shards=2", f"run.dir={tmp / 'run'}", f"fetch.user_agent={AGENT}", *NO_MODELS, *QUICK,
            *extra]  # fmt: skip


def test_urls_v1_recheck_v2_v3(url_world: tuple[FaultServer, Path, dict[str, bytes]]) -> None:
    server, tmp, images = url_world
    run_dir = tmp / "run"
    assert run_curate(*url_args(tmp)) == 0
    v1 = manifest(run_dir, "v1")
    assert (v1["status"] == "kept").sum() == len(images)
    by_key = {v1.loc[i, "source_id"]: i for i in v1.index}

    # t2: u1 404, u2 410, u3 a redirect to Flickr's placeholder, u4 opts out, u5 answers 503 (unreachable)
    server.serve("/pw/images/en-us/photo_unavailable.png", encode(photo(seed=9)), "image/png")
    server.status("/u1.jpg", 404)
    server.status("/u2.jpg", 410)
    server.redirect("/u3.jpg", "/pw/images/en-us/photo_unavailable.png")
    server.serve_header_lines("/u4.jpg", images["u4"], [("X-Robots-Tag", "noai")])
    server.status("/u5.jpg", 503)
    v1_dir = run_dir / "release" / "v1"
    assert run_curate(*url_args(tmp, "release.version=v2", f"release.previous={v1_dir}")) == 0
    want = {"u1": "gone_at_source", "u2": "gone_at_source", "u3": "gone_at_source", "u4": "opt_out"}
    assert removed(run_dir, "v2") == {by_key[k]: f"recheck:{r}" for k, r in want.items()}
    v2 = manifest(run_dir, "v2")
    assert v2.loc[by_key["u5"], ["status", "recheck_reason"]].tolist() == ["kept", "unreachable"]
    assert "noai" in v2.loc[by_key["u4"], "recheck_error"]
    before, after = members(v1_dir), members(run_dir / "release" / "v2")
    assert len(after) == len(before) - len(want) and all(after[n] == before[n] for n in after)
    # the recheck asks as fetch does: fetch.user_agent on every request, and fetch.retries on a 503
    assert {a for k in images for a in server.agents[f"/{k}.jpg"]} == {AGENT}
    assert server.hits["/u5.jpg"] == 1 + 2  # v1's fetch, then the recheck's first try and its one retry

    # t3: everything is served again. v3 keeps v2's removals in force (carried, not asked), reuses v2's young
    # "ok" answers (recheck.max_age_days) and asks again only what was unreachable.
    for key, data in images.items():
        server.serve(f"/{key}.jpg", data)
    hits = dict(server.hits)
    v2_dir = run_dir / "release" / "v2"
    assert run_curate(*url_args(tmp, "release.version=v3", f"release.previous={v2_dir}",
                                "recheck.max_age_days=30")) == 0  # fmt: skip
    asked = {k for k in images if server.hits[f"/{k}.jpg"] > hits.get(f"/{k}.jpg", 0)}
    assert asked == {"u5"}
    v3 = manifest(run_dir, "v3")
    assert v3.loc[by_key["u5"], ["status", "recheck_reason"]].tolist() == ["kept", "ok"]
    for key, reason in want.items():
        row = v3.loc[by_key[key]]
        assert (row["status"], row["reason"], row["recheck_reason"]) == ("rejected", f"recheck:{reason}", reason)
        assert row["recheck_error"].startswith("carried from v2")
    assert set(v3.index[v3["status"] == "kept"]) == set(v2.index[v2["status"] == "kept"])
    card = (run_dir / "release" / "v3" / "DATA_CARD.md").read_text()
    assert "- 1 image(s) asked at their source now, between " in card
    assert "- 3 recent answer(s) of v2 reused (recheck.max_age_days=30)" in card
    assert "- 4 removal(s) of earlier rechecks carried in force" in card and "Flickr API calls" not in card

    # The run's recheck answers are now v3's (asked about v2): a release built from v1 must not use them, and
    # leaves no trace.
    args = url_args(tmp, "stage=release", "release.version=v4", f"release.previous={v1_dir}")
    assert run_curate(*args) == 1
    assert not (run_dir / "release" / "v4").exists()


def test_a_recheck_that_fails_releases_nothing_unasked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with fault_server() as server:
        table = pd.DataFrame(
            [{"id": f"w{n}", "url": server.serve(f"/w{n}.jpg", encode(photo(seed=300 + n))), "license": "CC BY 2.0"}
             for n in range(4)]
        )  # fmt: skip
        table.to_csv(tmp_path / "list.csv", index=False)
        assert run_curate(*url_args(tmp_path)) == 0
        v1_dir = tmp_path / "run" / "release" / "v1"
        v2 = url_args(tmp_path, "release.version=v2", f"release.previous={v1_dir}", "dask.retries=0")

        def broken(*_: object, **__: object) -> None:
            raise RuntimeError("the recheck itself broke")

        monkeypatch.setattr("curate.stages.recheck.recheck_urls", broken)  # the workers are threads here
        assert run_curate(*v2) == 1  # release refuses while a recheck shard is failed
        assert not (tmp_path / "run" / "release" / "v2").exists()
        assert run_curate(*v2, "release.allow_failed_shards=true") == 0
    rows = manifest(tmp_path / "run", "v2")
    assert set(rows["status"]) == {"failed"} and set(rows["reason"]) == {"recheck:shard_failed"}
