"""Re-auditing a published release, Parquet URL lists, licence normalisation, and the per-host limit."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import NO_FILTER, encode, photo, read_stage, run_curate
from faultserver import Handler, fault_server

from curate.licenses import normalize
from curate.run import SAMPLE_DIR
from curate.schema import safe_id


def test_reaudit_a_published_release(tmp_path: Path) -> None:
    first = tmp_path / "v1"
    assert run_curate(f"run.dir={first}", *NO_FILTER) == 0
    published = first / "release" / "v1" / "pass_metadata.csv"
    again = tmp_path / "reaudit"
    assert (
        run_curate(
            "ingest.source=pass_release",
            f"ingest.path={published}",
            f"run.dir={again}",
            f"fetch.file_root={SAMPLE_DIR}",
            *NO_FILTER,
        )
        == 0
    )
    before = pd.read_parquet(first / "release" / "v1" / "manifest.parquet")
    after = pd.read_parquet(again / "release" / "v1" / "manifest.parquet")
    assert len(after) == 31 and (after["status"] == "kept").all()
    kept_before = before[before["status"] == "kept"].set_index("image_id")
    after = after.set_index("image_id")
    assert sorted(after.index) == sorted(kept_before.index)
    assert (after["sha256"] == kept_before.loc[after.index, "sha256"]).all()
    assert (after["owner_name"] == kept_before.loc[after.index, "owner_name"]).all()


def test_parquet_url_list_with_ids_and_licences(tmp_path: Path) -> None:
    with fault_server() as server:
        table = pd.DataFrame(
            {
                "key": ["a1", "b.2", "c3"],
                "link": [server.serve(f"/{i}.jpg", encode(photo(seed=i))) for i in range(3)],
                "license": ["Attribution License", "Attribution-NonCommercial License", ""],
            }
        )
        table.to_parquet(tmp_path / "list.parquet")
        run_dir = tmp_path / "run"
        flags = [f"ingest.path={tmp_path / 'list.parquet'}", "ingest.source=urls", "ingest.url_column=link"]
        assert run_curate(*flags, "ingest.id_column=key", f"run.dir={run_dir}", "stage=fetch") == 2  # not ingested
        assert run_curate(*flags, "ingest.id_column=key", f"run.dir={run_dir}") == 0
    rows = read_stage(run_dir, "license", "fetch").set_index("source_id")
    # Safe ids stay as they are; dots never reach a key, and the id as given is kept beside it.
    assert rows.loc["a1", "image_id"] == "a1" and rows.loc["c3", "image_id"] == "c3"
    assert rows.loc["b.2", "image_id"] == safe_id("b.2") and "." not in safe_id("b.2")
    assert rows.loc["a1", "fetch_status"] == "ok"
    assert rows.loc["b.2", "license_reason"] == "not_allowed"
    # No licence information and no ingest.assume_license: unknown, never a guess.
    assert rows.loc["c3", "license_reason"] == "unknown_license"


@pytest.mark.parametrize(
    ("given", "code"),
    [
        ({"license_id": 4}, "cc-by"),
        ({"license_id": "11"}, "cc-by"),
        ({"license_id": "9"}, "cc0"),
        ({"license_id": 2}, "cc-by-nc"),
        ({"name": "Attribution License"}, "cc-by"),
        ({"name": "Attribution-ShareAlike+License"}, "cc-by-sa"),
        ({"url": "http://creativecommons.org/licenses/by-nc-nd/2.0/"}, "cc-by-nc-nd"),
        ({"name": "Attribution License", "url": "http://creativecommons.org/licenses/by-sa/2.0/"}, "cc-by-sa"),
        ({"url": "https://creativecommons.org/publicdomain/zero/1.0/"}, "cc0"),
        ({"name": "Some Custom License", "url": "http://x.invalid/"}, None),
        ({}, None),
    ],
)
def test_licence_normalisation(given: dict[str, object], code: str | None) -> None:
    assert normalize(**given) == code  # type: ignore[arg-type]


def test_per_host_concurrency_is_respected(tmp_path: Path) -> None:
    in_flight = 0
    peak = 0
    lock = threading.Lock()
    body = encode(photo(seed=3))

    def slow(handler: Handler, _: int) -> None:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.05)
        with lock:
            in_flight -= 1
        handler.send_body(body)

    with fault_server() as server:
        for i in range(24):
            server.routes[f"/p{i}.jpg"] = slow
        (tmp_path / "urls.txt").write_text("\n".join(server.url(f"/p{i}.jpg") for i in range(24)))
        code = run_curate(
            "ingest.source=urls",
            f"ingest.path={tmp_path / 'urls.txt'}",
            "ingest.assume_license=cc-by",
            "ingest.num_shards=1",
            "fetch.concurrency=12",
            "fetch.per_host_concurrency=3",
            f"run.dir={tmp_path / 'run'}",
            "stage=all",
        )
    assert code == 0
    assert peak == 3  # reached, never passed
    rows = read_stage(tmp_path / "run", "fetch")
    assert (rows["fetch_status"] == "ok").all()
