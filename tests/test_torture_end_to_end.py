"""The whole torture corpus end to end through release: the 63 odd files (over HTTP and as file: URLs), the HTTP
faults of the fault server, reads outside fetch.file_root, odd ids, licences and CSV lines.

What must hold: every input row is in the release manifest exactly once, with a status and a reason from the
closed set (the expected one for every row); no byte outside fetch.file_root is read; only allowed licences are
released; and no released file carries metadata, by the bytes and by exiftool's account.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import torture_files as torture
from conftest import MODELS, NO_FILTER, encode, photo
from faultserver import fault_server, torture_routes
from test_torture_files import exiftool, forbidden

from curate.run import main
from curate.schema import REASONS

pytestmark = pytest.mark.skipif(not MODELS.exists(), reason="needs the offline weights in ../shared/models")

MAX_BYTES = 300_000
FETCH = [
    # The fault server's expectations (faultserver.torture_routes) hold with these.
    "fetch.total_timeout_s=2",
    "fetch.read_timeout_s=1.0",
    "fetch.retries=1",
    "fetch.backoff_s=0.01",
    "fetch.max_retry_after_s=3",
    f"fetch.max_bytes={MAX_BYTES}",
]
POLICY = {"too_large", "unsupported_format", "single_colour", "too_small", "extreme_aspect", "decompression_bomb"}
OUTSIDE_MARK = b"outside-the-root-never-read"


def fetch_status(reason: str) -> str:
    return "ok" if reason == "ok" else "rejected" if reason in POLICY else "failed"


def build_inputs(tmp_path: Path, server) -> tuple[Path, Path, dict[str, str]]:  # type: ignore[no-untyped-def]
    """The URL list (bytes, with its odd lines), the file root, and the release reason expected per source id."""
    root = tmp_path / "root"
    (root / "files").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.jpg"
    secret.write_bytes(encode(photo(seed=99)) + OUTSIDE_MARK)
    os.symlink(secret, root / "files" / "link-to-outside.jpg")

    rows: list[list[str]] = []  # id, url, license, owner, title
    expected: dict[str, str] = {}

    def add(source_id: str, url: str, reason: str, license: str = "CC BY 2.0", owner: str = "o1") -> None:
        rows.append([source_id, url, license, owner, f"title of {source_id}"])
        expected[source_id] = reason

    for name, (data, reason) in sorted(torture.torture_files().items()):
        if len(data) > MAX_BYTES:
            reason = "too_large"
        path = f"/files/{name}"
        server.serve(path, data)
        add(f"http-{name}", server.url(path), "ok" if reason == "ok" else f"fetch:{reason}")
        (root / "files" / name).write_bytes(data)
        add(f"file-{name}", f"file:files/{name}", "ok" if reason == "ok" else f"fetch:{reason}")
    for name, (url, _, reason) in sorted(torture_routes(server).items()):
        add(f"route-{name}", url, "ok" if reason == "ok" else f"fetch:{reason}")
    # Nothing outside the root, by any path.
    add("outside-absolute", secret.as_uri(), "fetch:url_outside_root")
    add("outside-dotdot", "file:../outside/secret.jpg", "fetch:url_outside_root")
    add("outside-symlink", "file:files/link-to-outside.jpg", "fetch:url_outside_root")
    add("outside-etc", "file:///etc/hostname", "fetch:url_outside_root")
    add("bad-url-ipv6", "http://[::1", "fetch:bad_url")
    add("bad-url-scheme", "gopher://127.0.0.1/x", "fetch:bad_url")
    # Licences: usual spellings are understood; a stated licence is never replaced by the assumed one.
    good = server.serve("/licence.jpg", encode(photo(seed=5)))
    for index, spelling in enumerate(["cc-by", "CC BY 4.0", "CC-BY-4.0", "https://creativecommons.org/licenses/by/2.0/",
                                      "Attribution License", ""]):  # fmt: skip
        add(f"licence-ok-{index}", good, "ok", license=spelling)
    for index, spelling in enumerate(["All Rights Reserved", "CC BY-NC 2.0", "cc-by-nd", "Attribution-NonCommercial"]):
        add(f"licence-no-{index}", good, "license:not_allowed", license=spelling)
    add("licence-unknown", good, "license:unknown_license", license="my own terms")
    # Ids that a lossy mapping would merge: each is its own candidate.
    for index, odd in enumerate(["a/b", "a.b", "a b", "图片", "写真"]):
        add(odd, server.serve(f"/id-{index}.jpg", encode(photo(seed=20 + index))), "ok")
    add("no-url", "", "ingest:missing_url")

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "url", "license", "owner", "title"])
    writer.writerows(rows)
    text = buffer.getvalue().encode("utf-8")
    # A line with an extra field and a title that is not UTF-8: rows of their own, never the end of the unit.
    text += b"extra-field," + good.encode() + b",CC BY 2.0,o1,t,surplus\n"
    text += b"latin1-title," + good.encode() + b",CC BY 2.0,o1,caf\xe9\n"
    urls = tmp_path / "urls.csv"
    urls.write_bytes(text)
    return urls, root, expected


def released_files(release: Path) -> dict[str, bytes]:
    found = {}
    for tar_path in sorted(release.rglob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                handle = tar.extractfile(member)
                if handle is not None and not member.name.endswith(".json"):
                    found[f"{tar_path.name}:{member.name}"] = handle.read()
    return found


def test_every_odd_input_ends_as_one_row_with_its_reason_and_nothing_leaks(tmp_path: Path) -> None:
    with fault_server() as server:
        urls, root, expected = build_inputs(tmp_path, server)
        run_dir = tmp_path / "run"
        # Real worker processes: the fault server in this process must not share its GIL with 128 download threads,
        # or its own slowness would pass for the faults' timeouts.
        code = main([
            "dask.processes=true", "dask.n_workers=2", "run.progress=false", f"models.dir={MODELS}", "pipeline=sample",
            "ingest.source=urls", f"ingest.path={urls}", "ingest.id_column=id",
            "ingest.assume_license=cc-by", "ingest.num_shards=3", f"fetch.file_root={root}", f"run.dir={run_dir}",
            "detect.person_tiles=1", *FETCH, *NO_FILTER,
        ])  # fmt: skip
    assert code == 0
    release = run_dir / "release" / "v1"
    manifest = pd.read_parquet(release / "manifest.parquet")

    # Every input row exactly once (the two odd CSV lines included), ids distinct.
    assert len(manifest) == len(expected) + 2
    assert manifest["image_id"].is_unique
    for stage, reasons in REASONS.items():
        column = "reason" if stage == "release" else f"{stage}_reason"
        if column in manifest:
            assert set(manifest[column].dropna()) <= reasons, stage
    by_source = manifest.set_index("source_id")
    got = by_source["reason"].to_dict()
    wrong = {sid: (got.get(sid), want) for sid, want in expected.items() if got.get(sid) != want}
    assert wrong == {}
    assert by_source.loc["extra-field", "ingest_reason"] == "malformed_row"
    assert by_source.loc["latin1-title", "ingest_reason"] == "bad_encoding"
    assert by_source.loc["latin1-title", "status"] == "kept"
    fetched = manifest[manifest["fetch_status"].notna()]
    assert (fetched["fetch_status"] == fetched["fetch_reason"].map(fetch_status)).all()

    # Only allowed licences are released, and the stated one was never overridden by the assumed one.
    kept = manifest[manifest["status"] == "kept"]
    assert set(kept["license_code"]) == {"cc-by"}

    # Nothing outside the root was read into the run.
    for path in [*run_dir.rglob("*.tar"), *run_dir.rglob("*.parquet")]:
        assert OUTSIDE_MARK not in path.read_bytes(), path

    # No metadata in any released byte.
    files = released_files(release)
    assert len(files) == 2 * len(kept)  # the PASS tars and the WebDataset shards
    for name, data in files.items():
        for secret in torture.SECRETS:
            assert secret not in data, (name, secret)
    if shutil.which("exiftool") is None:
        if os.environ.get("CURATE_REQUIRE_EXIFTOOL"):
            pytest.fail("exiftool is required (CURATE_REQUIRE_EXIFTOOL is set)")
        pytest.skip("exiftool not installed (Debian: libimage-exiftool-perl)")
    written = []
    for index, data in enumerate(files.values()):
        path = tmp_path / "released" / f"{index:04d}.img"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    reports = exiftool(written)
    assert {name: leak for name in reports if (leak := forbidden(reports[name]))} == {}


def test_a_folder_file_whose_name_is_not_utf8_is_fetched_and_released(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")
    with open(raw, "wb") as handle:
        handle.write(encode(photo(seed=3)))
    (folder / "plain.jpg").write_bytes(encode(photo(seed=4)))
    run_dir = tmp_path / "run"
    assert main([
        "dask.processes=false", "dask.n_workers=1", "run.progress=false", f"models.dir={MODELS}", "pipeline=folder",
        f"ingest.path={folder}", "ingest.assume_license=cc-by", f"fetch.file_root={folder}", f"run.dir={run_dir}",
        "detect.person_tiles=1", *NO_FILTER,
    ]) == 0  # fmt: skip
    manifest = pd.read_parquet(run_dir / "release" / "v1" / "manifest.parquet").set_index("source_id")
    assert manifest.loc["caf\\xe9.jpg", "ingest_reason"] == "bad_encoding"
    assert manifest.loc["caf\\xe9.jpg", "status"] == "kept", manifest.loc["caf\\xe9.jpg", "fetch_error"]
    assert manifest.loc["plain.jpg", "status"] == "kept"
