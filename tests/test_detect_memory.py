"""detect's memory and fault isolation, on real shards and the real models: tar members are read lazily, batches
are cut by pixels as well as by count without changing any result, and one image that breaks a detector costs
only its own row."""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import MODELS, encode, photo, run_curate

from curate.config import ConfigError
from curate.configload import load_config
from curate.detect.images import Image, image_hw
from curate.detect.types import Detections, Detector
from curate.io.tars import SortedTarWriter, TarMembers, iter_tar, read_members
from curate.rundir import RunDir
from curate.runner import live_rows
from curate.stages.detect import PIXELS_PER_SLOT, DetectStage, Scorer, encoded_batches, read_batches

UPSTREAM = ["ingest", "license", "fetch"]
SAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "curate" / "sample_data" / "images"
needs_models = pytest.mark.skipif(not MODELS.exists(), reason="needs the offline weights in ../shared/models")


# ------------------------------------------------------------------------------------------- lazy tar members


def _shard(tmp_path: Path, members: dict[str, bytes]) -> Path:
    path = tmp_path / "part-00000.tar"
    with SortedTarWriter(path) as writer:
        for name, data in members.items():
            writer.add(name, data)
    return path


def test_members_are_read_on_demand_and_equal_the_whole_read(tmp_path: Path) -> None:
    members = {f"{i:03d}.jpg": encode(photo(40 + i, 30, seed=i)) for i in range(20)}
    members["big.bin"] = bytes(range(256)) * 40_000  # spans many tar blocks
    path = _shard(tmp_path, members)
    with TarMembers(path) as tar:
        assert set(tar.index) == set(members) and "000.jpg" in tar and "nope.jpg" not in tar
        # backwards, so that nothing relies on reading in stored order
        for name in sorted(members, reverse=True):
            assert tar.get(name) == members[name]
        assert tar.get("nope.jpg") is None
    assert dict(iter_tar(path)) == members
    assert read_members(path, {"003.jpg", "big.bin", "nope.jpg"}) == {k: members[k] for k in ("003.jpg", "big.bin")}


def test_a_missing_tar_has_no_members_and_a_broken_one_raises(tmp_path: Path) -> None:
    with TarMembers(tmp_path / "absent.tar") as tar:
        assert tar.get("a.jpg") is None and tar.index == {}
    assert read_members(tmp_path / "absent.tar", {"a.jpg"}) == {}
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"this disk block went bad" * 100)
    unread = TarMembers(broken)  # nothing looked up: a shard with no live rows never opens its tar
    with pytest.raises(tarfile.ReadError):
        unread.get("a.jpg")


def test_a_member_cut_short_is_an_error_not_short_bytes(tmp_path: Path) -> None:
    path = _shard(tmp_path, {"a.jpg": b"x" * 5000, "b.jpg": b"y" * 100})
    with TarMembers(path) as tar:
        offset, _ = tar.index["a.jpg"]
        with open(path, "r+b") as handle:
            handle.truncate(offset + 1000)
        with pytest.raises(OSError, match="cut short"):
            tar.get("a.jpg")


# ---------------------------------------------------------------------------------------- batches by pixels


def _blobs(sizes: Sequence[tuple[int, int]]) -> dict[str, bytes]:
    return {f"{i:03d}.jpg": encode(photo(w, h, seed=i)) for i, (w, h) in enumerate(sizes)}


def test_batches_are_cut_by_count_and_by_pixels_in_row_order() -> None:
    sizes = [(100, 100)] * 5 + [(400, 300)] + [(100, 100)] * 3  # (width, height)
    blobs = _blobs(sizes)
    names = list(blobs)
    cut = [len(b) for b, _ in encoded_batches(names, blobs.get, size=4, pixels=25_000)]
    # 2 × 10k fit the budget, a third would not; the 120k image is over it and alone
    assert cut == [2, 2, 1, 1, 2, 1]
    assert [len(b) for b, _ in encoded_batches(names, blobs.get, size=4, pixels=0)] == [4, 4, 1]
    assert [len(b) for b, _ in encoded_batches(names, blobs.get, size=16, pixels=10**9)] == [9]
    # decoded in the same order, each with its own size
    decoded = [image for images, _ in read_batches(names, blobs.get, 4, 25_000, None) for image in images]
    assert [image_hw(image)[::-1] for image in decoded] == sizes


def test_missing_broken_and_unreadable_members_fail_their_own_rows_only() -> None:
    blobs = _blobs([(64, 48)] * 3)
    blobs["002.jpg"] = blobs["002.jpg"][:200]  # truncated JPEG: a decode error

    def read(name: str) -> bytes | None:
        if name == "001.jpg":
            raise UnicodeDecodeError("utf-8", b"EIO", 0, 1, "a fault no reason code foresaw")  # internal_error
        return blobs.get(name)

    names: list[str | None] = ["000.jpg", "001.jpg", "002.jpg", "gone.jpg", None]
    batches = list(read_batches(names, read, 16, 0, None))
    assert len(batches) == 1
    images, failures = batches[0]
    assert images[0] is not None and failures[0] is None
    assert failures[1] is not None and failures[1][0] == "internal_error" and "UnicodeDecodeError" in failures[1][1]
    assert failures[2] is not None and failures[2][0] == "decode_error"
    assert failures[3] == failures[4] == ("decode_error", "KeyError: image missing from the shard's tar")
    assert images[1:] == [None] * 4


def test_a_disk_error_reading_a_member_is_the_shards_failure_not_a_row_outcome() -> None:
    """An OSError (EIO, a member cut short) may be mended by a retry: it must fail the shard task, which Dask retries,
    rather than be written down as rows that are never looked at again."""

    def read(name: str) -> bytes | None:
        raise OSError("EIO reading one block")

    with pytest.raises(OSError, match="EIO"):
        list(read_batches(["000.jpg"], read, 16, 0, None))


def test_batch_pixels_is_validated_and_defaults_to_the_batch_size() -> None:
    assert load_config([]).detect.batch_pixels == 0  # = batch_size x PIXELS_PER_SLOT
    assert PIXELS_PER_SLOT == 1024 * 768
    with pytest.raises(ConfigError, match="batch_pixels"):
        load_config(["detect.batch_pixels=-1"])
    with pytest.raises(ConfigError, match="face_max_side"):
        load_config(["detect.face_max_side=-1"])


def test_batch_pixels_is_speed_only_and_the_face_cap_is_not() -> None:
    """Finished shards are kept across a change of batch_pixels (same results, proven below), redone across a
    change of face_max_side (other pixels reach the face detector)."""
    base = DetectStage(load_config([])).fingerprint_config()
    assert DetectStage(load_config(["detect.batch_pixels=1"])).fingerprint_config() == base
    changed = ["detect.face_max_side=0", "decide.preset=custom"]  # (strict was calibrated at 2048)
    assert DetectStage(load_config(changed)).fingerprint_config() != base


# ------------------------------------------------------------------------------ the stage on real shards


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample through fetch, in two shards (the faces and people of the sample are real)."""
    run_dir = tmp_path_factory.mktemp("memory") / "run"
    for stage in UPSTREAM:
        assert run_curate(f"run.dir={run_dir}", f"stage={stage}", "ingest.num_shards=2") == 0
    return run_dir


class RaisesOn:
    """A real detector that raises on images of one size: a scripted fault, as a bug met by one image would."""

    def __init__(self, inner: Detector, hw: tuple[int, int]) -> None:
        self.inner, self.hw = inner, hw
        self.name, self.tiles = inner.name, inner.tiles

    def detect(self, images: Sequence[Image]) -> list[Detections]:
        if any(image_hw(image) == self.hw for image in images):
            raise RuntimeError(f"scripted fault on an image of {self.hw}")
        return self.inner.detect(images)

    def submit(self, images: Sequence[Image]) -> Callable[[], list[Detections]]:
        return lambda: self.detect(images)

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()  # the wrapped detector scores: the fingerprint's own


class FaultyDetect(DetectStage):
    hw: tuple[int, int] = (0, 0)

    def scorer(self) -> Scorer:
        scorer = super().scorer()
        scorer.families = [
            (family, names, [RaisesOn(d, self.hw) for d in detectors]) for family, names, detectors in scorer.families
        ]
        return scorer


def _detect(run_dir: Path, *overrides: str, stage: type[DetectStage] = DetectStage) -> pd.DataFrame:
    """The detect stage's own process() on every shard's live rows, as the runner calls it."""
    quick = ["detect.person_tiles=1", "decide.preset=custom"]  # (strict's bars need the tiles)
    cfg = load_config([f"run.dir={run_dir}", f"models.dir={MODELS}", *quick, *overrides])
    run = RunDir(run_dir)
    frames = []
    for shard in range(2):
        rows = run.load_joined(shard, UPSTREAM)
        live = rows[live_rows(rows, UPSTREAM)].reset_index(drop=True)
        frames.append(
            pd.concat([live[["tar_member", "width", "height"]], stage(cfg).process(live, shard, run)], axis=1)
        )
    return pd.concat(frames, ignore_index=True)


def _assert_same_scores(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal up to floating-point rounding, as batched inference is to one image at a time."""
    assert list(a.columns) == list(b.columns)
    for column in a.columns:
        if column.endswith(("_max", "_prob")):
            # hand presence comes from a second network on crops batched across images: measured up to 6.4e-4
            # apart batched and alone (tests/test_mediapipe_detectors.py); the others to 1e-5
            atol = 1e-3 if column.startswith("hand_") else 1e-4
            np.testing.assert_allclose(a[column].astype(float), b[column].astype(float), atol=atol, err_msg=column)
        elif column.endswith("_boxes"):
            assert a[column].isna().tolist() == b[column].isna().tolist(), column
            for x, y in zip(a[column].dropna(), b[column].dropna(), strict=True):
                assert len(x) == len(y), column
                np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=0.05, err_msg=column)
        else:  # (pandas may hold a missing value as None or NaN, depending on the other rows of a column)
            assert a[column].isna().tolist() == b[column].isna().tolist(), column
            assert a[column].dropna().tolist() == b[column].dropna().tolist(), column


@needs_models
def test_batching_by_pixels_gives_the_results_of_one_image_at_a_time(fetched: Path) -> None:
    default = _detect(fetched)
    assert len(default) == 31 and (default["detect_status"] == "ok").all()
    assert (default["face_retinaface_mnet025_count"] > 0).sum() >= 5  # not vacuous: the sample has faces
    alone = _detect(fetched, "detect.batch_pixels=1")  # every image over the budget: batches of one
    few = _detect(fetched, "detect.batch_size=5", "detect.batch_pixels=600000")
    _assert_same_scores(alone, default)
    _assert_same_scores(few, default)


@needs_models
def test_one_image_that_breaks_a_detector_fails_only_its_row(fetched: Path) -> None:
    default = _detect(fetched)
    # the sample's 600 x 604 selfie, the only image of that size, has many faces
    target = default[(default["width"] == 600) & (default["height"] == 604)]
    assert len(target) == 1 and target["face_retinaface_mnet025_count"].iloc[0] > 3
    FaultyDetect.hw = (604, 600)
    faulty = _detect(fetched, stage=FaultyDetect)
    hit = faulty.index == target.index[0]
    assert faulty.loc[hit, "detect_status"].tolist() == ["failed"]
    assert faulty.loc[hit, "detect_reason"].tolist() == ["internal_error"]
    error = faulty.loc[hit, "detect_error"].iloc[0]
    assert error.startswith("RuntimeError: scripted fault on an image of (604, 600)") and "[at detect" in error
    scores = [c for c in faulty.columns if c.startswith(("face_", "person_"))]
    assert faulty.loc[hit, scores].isna().all(axis=None)
    # Every other row, in the failing batch or not, is scored as without the fault.
    _assert_same_scores(faulty[~hit].reset_index(drop=True), default[~hit].reset_index(drop=True))


@needs_models
def test_a_shard_of_large_photos_is_detected_in_pixel_sized_batches(tmp_path: Path) -> None:
    """End to end through the runner: large and small images in one shard, results in row order."""
    folder = tmp_path / "images"
    folder.mkdir()
    sizes = [(3000, 2000), (320, 240), (2000, 3000), (320, 240), (640, 480)]
    for i, (w, h) in enumerate(sizes):
        (folder / f"{i}.jpg").write_bytes(encode(photo(w, h, seed=i)))
    run_dir = tmp_path / "run"
    flags = [f"run.dir={run_dir}", "ingest.source=folder", f"ingest.path={folder}", "ingest.assume_license=cc-by"]
    flags += [
        f"fetch.file_root={folder}",
        "ingest.num_shards=1",
        "detect.person_tiles=1",
        "decide.preset=custom",  # strict's bars need the tiles
        "detect.batch_pixels=7000000",
    ]
    for stage in (*UPSTREAM, "detect"):
        assert run_curate(*flags, f"stage={stage}") == 0
    rows = pd.concat([pd.read_parquet(run_dir / "manifest" / s / "part-00000.parquet") for s in UPSTREAM], axis=1)
    detect = pd.read_parquet(run_dir / "manifest" / "detect" / "part-00000.parquet")
    assert (rows["fetch_status"] == "ok").all() and (detect["detect_status"] == "ok").all()
    assert sorted(zip(rows["width"], rows["height"], strict=True)) == sorted(sizes)
    assert detect["face_retinaface_mnet025_max"].notna().all() and detect["person_yolox_nano_max"].notna().all()


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts bytes read through Linux's /proc/self/io")
def test_indexing_reads_the_headers_not_the_members(tmp_path: Path) -> None:
    members = {f"{i:03d}.jpg": bytes([i]) * 1_000_000 for i in range(8)}
    path = _shard(tmp_path, members)

    def read_so_far() -> int:  # every byte this process has read through a system call
        fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
        return int(fields["rchar"])

    before = read_so_far()
    with TarMembers(path) as tar:
        indexed = read_so_far() - before
        assert tar.get("005.jpg") == members["005.jpg"]
        one = read_so_far() - before - indexed
    assert sorted(tar.index) == sorted(members)
    assert indexed < 100_000, indexed  # 8 MB of members, a few kB of headers
    assert 1_000_000 <= one < 1_100_000, one


@needs_models
@pytest.mark.parametrize("name", ["dlib_mmod_cars_test_image.jpg", "esr_wolf_gray.jpg", "fr_obama_partial_face.jpg"])
def test_the_face_cap_resizes_plane_by_plane_to_the_bit(name: str) -> None:
    """RetinaFace shrinks an image over face_max_side one channel at a time (a third of the float memory): the
    same numbers as resizing the whole BGR image at once, as it did before."""
    import torch
    import torch.nn.functional as F

    from curate.detect.decoding import decode
    from curate.detect.images import to_chw
    from curate.detect.retinaface import MEAN_BGR, RetinaFaceDetector

    image = decode((SAMPLE_IMAGES / name).read_bytes())
    detector = RetinaFaceDetector(MODELS / "retinaface_mobilenet0.25_Final.pth", max_side=200)
    prepared, factors = detector._prepare(image)
    whole = to_chw(image, "cpu").flip(0).float() - torch.tensor(MEAN_BGR)[:, None, None]
    size = tuple(prepared.shape[1:])
    expected = F.interpolate(whole[None], size=size, mode="bilinear", antialias=True)[0]
    assert max(size) == 200 and torch.equal(prepared, expected)
    assert factors == (image.shape[1] / size[1], image.shape[0] / size[0])
