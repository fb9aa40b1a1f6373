"""The bundled sample through every implemented stage, and the fingerprint rules between stages."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import NO_FILTER, read_stage, run_curate


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("sample") / "run"
    assert run_curate(f"run.dir={run_dir}", *NO_FILTER) == 0
    return run_dir


def test_every_candidate_is_in_the_manifest_with_a_reason(sample_run: Path) -> None:
    manifest = pd.read_parquet(sample_run / "release" / "v1" / "manifest.parquet").set_index("source_ref")
    assert len(manifest) == 41  # every line of yfcc_sample.tsv
    reasons = manifest["reason"].to_dict()
    assert reasons["yfcc_sample.tsv:37"] == "ingest:video"
    assert reasons["yfcc_sample.tsv:38"] == "fetch:not_found"
    assert reasons["yfcc_sample.tsv:39"] == "license:unknown_license"
    assert reasons["yfcc_sample.tsv:40"] == "ingest:short_row"
    assert manifest.loc["yfcc_sample.tsv:41", "ingest_reason"] == "bad_date"  # kept, date left empty
    assert manifest.loc["yfcc_sample.tsv:41", "status"] == "kept"
    assert manifest.loc["yfcc_sample.tsv:4", "reason"] == "license:not_allowed"  # CC BY-NC
    kept = manifest[manifest["status"] == "kept"]
    assert len(kept) == 31
    assert not manifest["image_id"].str.contains(r"[./]").any()
    assert kept["license_code"].eq("cc-by").all()
    assert kept["owner_name"].notna().all() and kept["page_url"].notna().all()


def test_pass_layout(sample_run: Path) -> None:
    release = sample_run / "release" / "v1"
    with open(release / "pass_metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 31
    assert {"hash", "unickname", "latitude", "longitude", "datetaken", "license_url", "photo_page_url"} <= set(rows[0])
    names = []
    for tar_path in sorted(release.glob("PASS.*.tar")):
        with tarfile.open(tar_path) as tar:
            names += tar.getnames()
    assert all(n.startswith("PASS_dataset/dummy_folder/") for n in names)
    assert sorted(n.rsplit("/", 1)[1].split(".")[0] for n in names) == sorted(r["hash"] for r in rows)
    assert len((release / "pass_urls.txt").read_text().splitlines()) == 31


def test_webdataset_shards(sample_run: Path) -> None:
    keys: dict[str, set[str]] = {}
    for tar_path in sorted((sample_run / "release" / "v1" / "webdataset").glob("*.tar")):
        assert len(tar_path.stem) == 5
        with tarfile.open(tar_path) as tar:
            for info in tar:
                key, ext = info.name.split(".", 1)  # WebDataset's own rule: split at the first dot
                keys.setdefault(key, set()).add(ext)
                if ext == "json":
                    meta = json.loads(tar.extractfile(info).read())  # type: ignore[union-attr]
                    assert meta["image_id"] == key and meta["license_code"] == "cc-by"
    assert len(keys) == 31
    assert all(exts in ({"jpg", "json"}, {"png", "json"}) for exts in keys.values())


def test_sha256sums_and_data_card(sample_run: Path) -> None:
    import hashlib

    release = sample_run / "release" / "v1"
    listed = {}
    for line in (release / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    files = {p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert set(listed) == files
    for name, digest in listed.items():
        assert hashlib.sha256((release / name).read_bytes()).hexdigest() == digest
    card = (release / "DATA_CARD.md").read_text()
    assert card == (sample_run / "data_cards" / "v1.md").read_text()
    assert "Released: 31 of 41 candidates." in card
    assert "| within the owner cap and the sample, not taken down | 31 | 0 | - |" in card  # the funnel
    assert "| released: still at its source, licence allowed, not opted out | 31 | 0 | - |" in card
    assert "| license | rejected | not_allowed | 6 |" in card
    assert "| scored by the human filter | 31 | 0 | - |" in card
    assert "retinaface_mnet025" in card and "2979b33ffafda5d7" in card  # the model and its pinned weights


def test_stage_config_change_recomputes_that_stage_and_later_only(sample_run: Path, tmp_path: Path) -> None:
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(sample_run, run_dir)

    def stamps(stage: str) -> dict[str, str]:
        return {p.name: p.read_text() for p in (run_dir / "stats" / stage).glob("*.json")}

    before = {s: stamps(s) for s in ("ingest", "license", "fetch", "release")}
    # v1 is published and never changes: the new licence policy is v2
    assert run_curate(f"run.dir={run_dir}", "license.allow=[cc-by,cc-by-sa]", "release.version=v2", *NO_FILTER) == 0
    after = {s: stamps(s) for s in ("ingest", "license", "fetch", "release")}
    assert after["ingest"] == before["ingest"]
    assert after["license"] != before["license"] and after["release"] != before["release"]
    rows = read_stage(run_dir, "license", "fetch")
    assert (rows["license_code"].eq("cc-by-sa") & rows["license_status"].eq("ok")).sum() == 2
    manifest = pd.read_parquet(run_dir / "release" / "v2" / "manifest.parquet")
    assert (manifest["status"] == "kept").sum() == 33


def test_folder_pipeline(tmp_path: Path) -> None:
    from conftest import encode, photo

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(encode(photo(seed=1)))
    (folder / "sub" / "a.jpg").write_bytes(encode(photo(seed=2)))
    (folder / "notes.txt").write_text("not an image")
    run_dir = tmp_path / "run"
    assert run_curate("pipeline=folder", f"ingest.path={folder}", f"run.dir={run_dir}", *NO_FILTER) == 0
    manifest = pd.read_parquet(run_dir / "release" / "v1" / "manifest.parquet").set_index("source_ref")
    assert manifest.loc["a.jpg", "status"] == "kept" and manifest.loc["sub/a.jpg", "status"] == "kept"
    assert manifest.loc["a.jpg", "image_id"] != manifest.loc["sub/a.jpg", "image_id"]
    assert manifest.loc["a.jpg", "license_reason"] == "unknown_kept"
    assert manifest.loc["notes.txt", "reason"] == "fetch:not_an_image"
