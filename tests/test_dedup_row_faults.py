"""Dedup: one row whose features raise is that row's failed / internal_error, never its shard's end; an image
Pillow cannot decode keeps its old outcome (ok, no pHash); a failed row takes part in no group and is not released."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import NO_FILTER, read_stage, run_curate
from PIL import Image, UnidentifiedImageError

import curate.stages.dedup as dedup
from curate.config import CurateConfig
from curate.io.tars import TarMembers
from curate.run import SAMPLE_DIR
from curate.rundir import RunDir

PHOTOS = sorted((SAMPLE_DIR / "images").glob("*.jpg"))
# Photos are told apart by their size: fetch may rewrite the bytes (metadata), never the pixels.
BAD = (400, 300)  # hashing raises something no reason foresaw: internal_error
UNDECODABLE = (360, 270)  # Pillow refuses it: no pHash, and the row stays ok (as before)
SIZES = {"bad": BAD, "bad_half": (200, 150), "undecodable": UNDECODABLE, "a": (320, 240), "b": (340, 255)}


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def faulty_grey_picture(data: bytes) -> Image.Image:
    size = Image.open(io.BytesIO(data)).size
    if size == BAD:
        raise RuntimeError("planted fault")
    if size == UNDECODABLE:
        raise UnidentifiedImageError("planted: cannot identify image file")
    return REAL_GREY_PICTURE(data)


REAL_GREY_PICTURE = dedup.grey_picture


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """Five real photos at sizes of their own, a half-size copy of the bad one (its near duplicate) and a
    byte-identical copy of "a" (its exact duplicate), in two shards, with the hashing of "bad" raising."""
    root = tmp_path_factory.mktemp("dedup_faults")
    photos = root / "photos"
    photos.mkdir()
    for (name, size), path in zip(SIZES.items(), PHOTOS, strict=False):
        source = PHOTOS[0] if name == "bad_half" else path  # the bad photo, at half its size
        (photos / f"{name}.jpg").write_bytes(_jpeg(Image.open(source).resize(size)))
    (photos / "a_copy.jpg").write_bytes((photos / "a.jpg").read_bytes())
    run_dir = root / "run"
    with pytest.MonkeyPatch.context() as patch:  # dask.processes=false: the workers are threads of this process
        patch.setattr(dedup, "grey_picture", faulty_grey_picture)
        code = run_curate(
            "pipeline=folder",
            f"ingest.path={photos}",
            f"run.dir={run_dir}",
            "ingest.num_shards=2",
            "detect.face=[]",
            "detect.person=[]",
            "detect.hand=[]",
            *NO_FILTER,
            "dedup.exact=true",
            "dedup.phash_distance=10",
        )
    yield run_dir, code


def _by_name(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(name=frame["source_ref"].str.removesuffix(".jpg")).set_index("name")


def test_the_row_whose_hashing_raises_is_failed_with_the_exception(faulty_run: tuple[Path, int]) -> None:
    run_dir, code = faulty_run
    assert code == 0
    rows = _by_name(read_stage(run_dir, "license", "fetch", "detect", "dedup"))
    assert (rows["detect_status"] == "ok").all()  # every row reached dedup
    bad = rows.loc["bad"]
    assert (bad["dedup_status"], bad["dedup_reason"]) == ("failed", "internal_error")
    assert bad["dedup_error"].startswith("RuntimeError: planted fault [at ")
    assert "faulty_grey_picture" in bad["dedup_error"] and "image_features" in bad["dedup_error"]
    assert pd.isna(bad["phash"]) and pd.isna(bad["dedup_group"]) and pd.isna(bad["dedup_of"])


def test_the_other_rows_are_hashed_and_grouped_as_usual(faulty_run: tuple[Path, int]) -> None:
    run_dir, _ = faulty_run
    rows = _by_name(read_stage(run_dir, "dedup"))
    others = rows.drop(index=["bad", "undecodable"])
    assert others["phash"].notna().all() and others["phash"].str.fullmatch("[0-9a-f]{16}").all()
    assert others["dedup_error"].isna().all()
    pair = rows.loc[["a", "a_copy"]]
    assert sorted(pair["dedup_reason"]) == ["exact_duplicate", "ok"] and pair["dedup_group"].nunique() == 1
    # The failed row links to nothing: its near duplicate is not rejected for a row that is not released.
    assert (rows.loc["bad_half", "dedup_status"], rows.loc["bad_half", "dedup_reason"]) == ("ok", "ok")
    assert pd.isna(rows.loc["bad_half", "dedup_group"]) and pd.isna(rows.loc["b", "dedup_group"])
    # What Pillow cannot decode keeps its outcome: no pHash, not failed.
    undecodable = rows.loc["undecodable"]
    assert (undecodable["dedup_status"], undecodable["dedup_reason"]) == ("ok", "ok")
    assert pd.isna(undecodable["phash"]) and pd.isna(undecodable["dedup_error"])


def test_the_shard_did_not_fail(faulty_run: tuple[Path, int]) -> None:
    run_dir, _ = faulty_run
    run = RunDir(run_dir)
    for shard in range(run.num_shards()):
        marker = run.read_marker("dedup", shard)
        assert marker is not None and not marker.get("failed")
        assert not (run_dir / "stats" / "dedup" / f"part-{shard:05d}.error.txt").exists()


def test_the_failed_row_is_not_released_and_the_card_counts_it(faulty_run: tuple[Path, int]) -> None:
    run_dir, _ = faulty_run
    release = run_dir / "release" / "v1"
    manifest = _by_name(pd.read_parquet(release / "manifest.parquet"))
    assert (manifest.loc["bad", "status"], manifest.loc["bad", "reason"]) == ("failed", "dedup:internal_error")
    assert manifest.loc["bad", "dedup_error"].startswith("RuntimeError: planted fault")
    kept = set(manifest.index[manifest["status"] == "kept"])
    (representative,) = [name for name in ("a", "a_copy") if manifest.loc[name, "dedup_reason"] == "ok"]
    assert kept == {"bad_half", "undecodable", "b", representative}
    released: set[str] = set()
    for path in (release / "webdataset").glob("*.tar"):
        with tarfile.open(path) as tar:
            released |= {name.split(".", 1)[0] for name in tar.getnames()}
    assert released == set(manifest.loc[sorted(kept), "image_id"])
    card = (release / "DATA_CARD.md").read_text()
    assert any("not a duplicate" in line and "internal_error 1" in line for line in card.splitlines()), card


# The grouping and one image's features, without a run -------------------------------------------------------


def _features(error: list[str | None], sha256: list[str]) -> pd.DataFrame:
    n = len(error)
    return pd.DataFrame(
        {
            "image_id": pd.Series([f"i{k}" for k in range(n)], dtype="string"),
            "shard": np.zeros(n, dtype=np.int64),
            "sha256": pd.Series(sha256, dtype="string"),
            "phash": np.array([0, 0xFFFF_FFFF, 0x7FFF_FFFF_0000_0000][:n], dtype=np.int64),  # 31+ bits apart
            "phash_mirror": np.zeros(n, dtype=np.int64),
            "phash_ok": [e is None for e in error],
            "width": pd.Series([100] * n, dtype="Int64"),
            "height": pd.Series([100] * n, dtype="Int64"),
            "date_taken": pd.Series([None] * n, dtype="string"),
            "dedup_error": pd.Series(error, dtype="string"),
        }
    )


def test_a_failed_row_is_in_no_group_even_with_the_same_bytes() -> None:
    # i0 failed and would have been the representative of the exact group {i0, i1} (smallest id)
    out = dedup.assign_groups(_features(["ValueError: x", None, None], ["s", "s", "t"]), CurateConfig())
    assert list(out["dedup_status"]) == ["failed", "ok", "ok"]
    assert list(out["dedup_reason"]) == ["internal_error", "ok", "ok"]
    assert out["dedup_group"].isna().all() and out["dedup_of"].isna().all()
    assert out.loc[0, "dedup_error"] == "ValueError: x" and out["dedup_error"].iloc[1:].isna().all()
    assert pd.isna(out.loc[0, "phash"]) and out["phash"].iloc[1:].notna().all()


@pytest.fixture
def one_tar(tmp_path: Path) -> Iterator[TarMembers]:
    path = tmp_path / "part.tar"
    data = _jpeg(Image.open(PHOTOS[0]).resize((200, 150)))
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("x.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with TarMembers(path) as members:
        yield members


def test_one_images_features_and_its_faults(one_tar: TarMembers) -> None:
    ok = dedup.image_features(one_tar, "x.jpg", [0.6, 0.8])
    assert ok.phash_ok and ok.error is None and ok.embedding is not None and ok.embedding.dtype == np.float32
    assert dedup.image_features(one_tar, "x.jpg", None).embedding is None  # CLIP off: no embedding, no fault
    for broken in ([[0.6, 0.8]], [float("nan"), 1.0], []):  # would stop the run-wide grouping, or poison faiss
        got = dedup.image_features(one_tar, "x.jpg", broken)
        assert not got.phash_ok and got.error is not None and got.error.startswith("ValueError: clip_embedding")
    missing = dedup.image_features(one_tar, "gone.jpg", None)
    assert missing.error is not None and missing.error.startswith("KeyError: ")


def test_a_tar_that_cannot_be_read_is_the_shards_fault() -> None:
    class Unreadable(TarMembers):
        def get(self, name: str) -> bytes | None:
            raise OSError("member cut short")

    with pytest.raises(OSError, match="cut short"):  # the runner retries the shard's task
        dedup.image_features(Unreadable(Path("unused.tar")), "x.jpg", None)
