"""fetch against a real local HTTP server with every fault we know: each ends as a row with the right reason."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from conftest import NO_FILTER, encode, photo, read_stage, run_curate
from faultserver import FaultServer, fault_server
from PIL import Image

RUN_FLAGS = [
    "pipeline=sample",
    "ingest.source=urls",
    "ingest.assume_license=cc-by",
    "ingest.num_shards=2",
    "ingest.id_column=id",
    "fetch.read_timeout_s=1.0",
    "fetch.total_timeout_s=3",
    "fetch.retries=2",
    "fetch.backoff_s=0.01",
    "fetch.max_bytes=300000",
    *NO_FILTER,
]


def gps_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° CW to display
    exif[0x010F] = "SecretCam"  # make
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (51.0, 30.0, 12.0)
    return encode(photo(seed=7), "JPEG", quality=92, exif=exif)


def big_noise_jpeg() -> bytes:
    import numpy as np

    pixels = np.random.default_rng(3).integers(0, 255, (900, 1200, 3), dtype="uint8")
    return encode(Image.fromarray(pixels), "JPEG", quality=98)


def build_routes(server: FaultServer, tmp: Path) -> dict[str, tuple[str, str]]:
    """id → url, and the expected (status, reason) per id."""
    good = encode(photo(seed=1))
    big = big_noise_jpeg()
    assert len(big) > 300000
    cmyk = encode(photo(seed=4).convert("CMYK"), "JPEG")
    alpha = photo(seed=5).convert("RGBA")
    alpha.putalpha(128)
    bomb = encode(Image.new("1", (10000, 10000)), "PNG")
    cases = {
        "ok": (server.serve("/ok.jpg", good), "ok", "ok"),
        "missing": (server.status("/missing.jpg", 404), "failed", "not_found"),
        "forbidden": (server.status("/forbidden.jpg", 403), "failed", "http_client_error"),
        "flaky": (server.fail_then_serve("/flaky.jpg", 1, encode(photo(seed=2))), "ok", "ok"),
        "always500": (server.status("/always500.jpg", 500), "failed", "http_server_error"),
        "stall": (server.stall("/stall.jpg", 3.0), "failed", "timeout"),
        "truncated": (server.truncated("/truncated.jpg", encode(photo(seed=3))), "failed", "truncated"),
        "html": (
            server.serve("/html.jpg", b"<html><body>Not found</body></html>", "image/jpeg"),
            "failed",
            "not_an_image",
        ),
        "loop": (server.redirect("/loop.jpg", "/loop.jpg"), "failed", "redirect_loop"),
        "huge": (server.serve("/huge.jpg", big), "rejected", "too_large"),
        "huge-chunked": (server.chunked("/huge-chunked.jpg", big), "rejected", "too_large"),
        "alpha": (server.serve("/alpha.png", encode(alpha, "PNG"), "image/png"), "ok", "ok"),
        "cmyk": (server.serve("/cmyk.jpg", cmyk), "ok", "ok"),
        "bomb": (server.serve("/bomb.png", bomb, "image/png"), "rejected", "decompression_bomb"),
        "single": (
            server.serve("/single.jpg", encode(Image.new("RGB", (300, 200), (9, 99, 199)))),
            "rejected",
            "single_colour",
        ),
        "tiny": (server.serve("/tiny.jpg", encode(photo(40, 30))), "rejected", "too_small"),
        "wide": (server.serve("/wide.jpg", encode(photo(1200, 100))), "rejected", "extreme_aspect"),
        "corrupt": (server.serve("/corrupt.jpg", good[:600] + b"\x00" * 50), "failed", "corrupt"),
        "gps": (server.serve("/gps.jpg", gps_jpeg()), "ok", "ok"),
        "ftp": ("ftp://127.0.0.1/x.jpg", "failed", "bad_url"),
        "escape": ("file:///etc/passwd", "failed", "url_outside_root"),
    }
    lines = ["id,url"] + [f"{key},{url}" for key, (url, _, _) in cases.items()]
    (tmp / "urls.csv").write_text("\n".join(lines) + "\n")
    return {key: (status, reason) for key, (_, status, reason) in cases.items()}


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("faults")
    (tmp / "root").mkdir()
    with fault_server() as server:
        expected = build_routes(server, tmp)
        run_dir = tmp / "run"
        flags = [*RUN_FLAGS, f"ingest.path={tmp / 'urls.csv'}", f"run.dir={run_dir}", f"fetch.file_root={tmp / 'root'}"]
        code = run_curate(*flags)
        yield server, run_dir, expected, flags, code


def test_every_fault_ends_as_a_row_with_its_reason(faulty_run) -> None:  # type: ignore[no-untyped-def]
    _, run_dir, expected, _, code = faulty_run
    assert code == 0  # the run completes whatever the hosts did
    rows = read_stage(run_dir, "license", "fetch").set_index("image_id")
    assert sorted(rows.index) == sorted(expected)
    got = {key: (rows.loc[key, "fetch_status"], rows.loc[key, "fetch_reason"]) for key in expected}
    assert got == expected
    assert rows.loc["flaky", "fetch_attempts"] == 2
    assert rows.loc["always500", "fetch_attempts"] == 3
    assert rows.loc["alpha", "mode"] == "RGBA" and rows.loc["alpha", "format"] == "png"
    assert rows.loc["cmyk", "mode"] == "CMYK"
    assert rows.loc["ok", "width"] == 320 and rows.loc["ok", "height"] == 240


def test_kept_images_are_in_the_shard_tars_and_the_release(faulty_run) -> None:  # type: ignore[no-untyped-def]
    _, run_dir, expected, _, _ = faulty_run
    kept = sorted(key for key, (status, _) in expected.items() if status == "ok")
    members: dict[str, bytes] = {}
    for tar_path in sorted((run_dir / "images").glob("part-*.tar")):
        with tarfile.open(tar_path) as tar:
            names = tar.getnames()
            assert names == sorted(names)
            for info in tar:
                assert info.mtime == 946684800 and info.uid == 0 and info.uname == ""
                members[info.name] = tar.extractfile(info).read()  # type: ignore[union-attr]
    assert sorted(name.rsplit(".", 1)[0] for name in members) == kept
    manifest = pd_read(run_dir / "release" / "v1" / "manifest.parquet")
    assert len(manifest) == len(expected)  # every candidate, kept or not
    assert sorted(manifest.loc[manifest["status"] == "kept", "image_id"]) == kept
    stopped = manifest.set_index("image_id").loc["missing"]
    assert stopped["status"] == "failed" and stopped["reason"] == "fetch:not_found"


def test_metadata_is_stripped_but_pixels_and_orientation_kept(faulty_run) -> None:  # type: ignore[no-untyped-def]
    _, run_dir, _, _, _ = faulty_run
    data = None
    for tar_path in (run_dir / "images").glob("part-*.tar"):
        with tarfile.open(tar_path) as tar:
            if "gps.jpg" in tar.getnames():
                data = tar.extractfile("gps.jpg").read()  # type: ignore[union-attr]
    assert data is not None
    original = gps_jpeg()
    assert b"SecretCam" in original and b"SecretCam" not in data
    stored = Image.open(io.BytesIO(data))
    exif = stored.getexif()
    assert exif.get(0x0112) == 6  # still displays upright
    assert 0x8825 not in exif and exif.get_ifd(0x8825) == {}  # no GPS
    assert stored.tobytes() == Image.open(io.BytesIO(original)).tobytes()  # same pixels: no re-encode


def test_stats_markers_count_every_reason(faulty_run) -> None:  # type: ignore[no-untyped-def]
    _, run_dir, expected, _, _ = faulty_run
    totals: dict[str, int] = {}
    for marker in (run_dir / "stats" / "fetch").glob("part-*.json"):
        stats = json.loads(marker.read_text())
        assert stats["images_per_s"] is not None and stats["wall_s"] >= 0
        for key, n in stats["counts"].items():
            totals[key] = totals.get(key, 0) + n
    want: dict[str, int] = {}
    for status, reason in expected.values():
        want[f"{status}/{reason}"] = want.get(f"{status}/{reason}", 0) + 1
    assert totals == want


def test_retry_failed_refetches_only_transient_failures(faulty_run) -> None:  # type: ignore[no-untyped-def]
    server, run_dir, _expected, flags, _ = faulty_run
    before = read_stage(run_dir, "license", "fetch").set_index("image_id")
    hits_before = dict(server.hits)
    server.serve("/always500.jpg", encode(photo(seed=9)))  # the host has recovered
    assert run_curate(*flags, "stage=fetch", "fetch.retry_failed=true") == 0
    after = read_stage(run_dir, "license", "fetch").set_index("image_id")
    assert (after.loc["always500", "fetch_status"], after.loc["always500", "fetch_reason"]) == ("ok", "ok")
    # Permanent outcomes were not fetched again and did not change.
    for key in ("ok", "missing", "html", "huge", "gps", "cmyk"):
        assert server.hits[f"/{key}.jpg"] == hits_before[f"/{key}.jpg"]
        assert after.loc[key, "fetch_reason"] == before.loc[key, "fetch_reason"]
    for key in ("ok", "gps", "cmyk"):
        assert after.loc[key, "sha256"] == before.loc[key, "sha256"]
    # Still-broken transient rows were tried again and still fail with their reason.
    assert server.hits["/stall.jpg"] > hits_before["/stall.jpg"]
    assert after.loc["stall", "fetch_reason"] == "timeout"
    # The next release picks the recovered image up (v1 is published: it never changes).
    assert run_curate(*flags, "stage=all", "release.version=v2") == 0
    manifest = pd_read(run_dir / "release" / "v2" / "manifest.parquet").set_index("image_id")
    assert manifest.loc["always500", "status"] == "kept"


def pd_read(path: Path):  # type: ignore[no-untyped-def]
    import pandas as pd

    return pd.read_parquet(path)
