"""Cropped and bordered copies: the crop views and border trimming against an implementation written here from their
definition, the folder pipeline grouping the near-duplicate benchmark's crops and borders at the default settings,
and the grouping on a real Dask cluster giving the same groups whatever the order its tasks finish in."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import NO_FILTER, read_stage, run_curate
from dedup_fixture import features as fixed_features
from distributed import Client, LocalCluster
from PIL import Image, ImageOps

from curate.config import CurateConfig, DedupConfig
from curate.dedup import grouping
from curate.dedup.phash import VIEWS, grey_picture, trim_borders, view_thumbnails
from curate.io.atomic import read_parquet
from curate.stages import dedup

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "curate/sample_data/images"
PHOTOS = sorted(SAMPLE.glob("*.jpg"))


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _reference_phash(grey: Image.Image) -> int:
    """pHash from its definition: 32 x 32 Lanczos, the orthonormal 2-D DCT-II summed term by term, the 8 x 8 lowest
    frequencies against their median, most significant bit first."""
    x = np.asarray(grey.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    n = np.arange(32)
    coefficients = np.zeros((8, 8))
    for u in range(8):
        for v in range(8):
            basis = np.outer(np.cos(np.pi * (2 * n + 1) * u / 64), np.cos(np.pi * (2 * n + 1) * v / 64))
            scale = (np.sqrt(1 / 32) if u == 0 else np.sqrt(2 / 32)) * (np.sqrt(1 / 32) if v == 0 else np.sqrt(2 / 32))
            coefficients[u, v] = scale * (basis * x).sum()
    bits = (coefficients > np.median(coefficients)).ravel()
    return int(sum(1 << (63 - k) for k, bit in enumerate(bits) if bit))


def _reference_views(grey: Image.Image) -> list[int]:
    width, height = grey.size
    out = []
    for inset, dx, dy in VIEWS:
        left, top = round(width * (inset + dx)), round(height * (inset + dy))
        right, bottom = width - round(width * (inset - dx)), height - round(height * (inset - dy))
        out.append(_reference_phash(grey.crop((left, top, right, bottom))))
    return out


@pytest.mark.parametrize("photo", PHOTOS[:4], ids=lambda p: p.name)
def test_each_views_hash_equals_the_definition(photo: Path) -> None:
    data = _jpeg(ImageOps.exif_transpose(Image.open(photo)))
    features = dedup.image_features({"x": data}, "x", None)
    grey = grey_picture(data)
    expected = _reference_views(grey)
    assert features.phash == expected[0]  # the full view is the pHash the manifest shows
    assert set(expected) <= set(features.views)
    assert len(view_thumbnails(grey)) == len(VIEWS) == 11


@pytest.mark.parametrize(
    "bars",
    [(0, 40, 0, 40), (30, 0, 30, 0), (12, 12, 12, 12), (0, 0, 0, 25)],
    ids=["letterbox", "pillar", "frame", "one"],
)
@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (128, 128, 128)], ids=["black", "white", "grey"])
def test_uniform_borders_are_trimmed_to_the_picture(
    bars: tuple[int, int, int, int], colour: tuple[int, int, int]
) -> None:
    photo = ImageOps.exif_transpose(Image.open(PHOTOS[1])).convert("RGB").resize((240, 180))
    left, top, right, bottom = bars
    framed = Image.new("RGB", (240 + left + right, 180 + top + bottom), colour)
    framed.paste(photo, (left, top))
    grey = Image.open(io.BytesIO(_jpeg(framed, 75))).convert("L")
    trimmed = trim_borders(grey)
    # JPEG blurs the edge between bar and picture by a pixel or two
    assert abs(trimmed.size[0] - 240) <= 3 and abs(trimmed.size[1] - 180) <= 3
    features = dedup.image_features({"x": _jpeg(framed, 75)}, "x", None)
    assert features.trimmed == _reference_phash(trimmed) != features.phash


def test_a_picture_without_borders_or_without_anything_is_left_whole() -> None:
    grey = grey_picture(_jpeg(ImageOps.exif_transpose(Image.open(PHOTOS[2]))))
    assert trim_borders(grey).size == grey.size
    blank = Image.new("L", (200, 100), 255)
    assert trim_borders(blank).size == blank.size
    features = dedup.image_features({"x": _jpeg(blank)}, "x", None)
    assert features.phash_ok and features.trimmed == features.phash


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_neardup_for_crops", REPO / "bench/neardup.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cropped_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """6 real photos, and each one's benchmark variants of the families crop_2_5, crop_5_10 and border: a folder
    run at the default dedup settings. -> (run dir, file name -> the photo it comes from)."""
    nd = _bench()
    root = tmp_path_factory.mktemp("crops")
    photos = root / "photos"
    photos.mkdir()
    source: dict[str, str] = {}
    for index, path in enumerate(PHOTOS[:6]):
        image = nd.load(path)
        name = f"p{index}.jpg"
        (photos / name).write_bytes(_jpeg(image))
        source[name] = name
        for kind, variant, quality in nd.variants_of(image, index, 0, ["crop_2_5", "crop_5_10", "border"]):
            file = f"p{index}_{kind.replace('/', '_')}.jpg"
            (photos / file).write_bytes(_jpeg(variant, quality))
            source[file] = name
    run_dir = root / "run"
    code = run_curate(
        "pipeline=folder",
        f"ingest.path={photos}",
        f"run.dir={run_dir}",
        "detect.face=[]",
        "detect.person=[]",
        "detect.hand=[]",
        *NO_FILTER,
        "dedup.exact=true",  # dedup at its defaults again (NO_FILTER turns it off)
        "dedup.phash_distance=5",
    )
    assert code == 0
    return run_dir, source


def test_the_folder_pipeline_groups_crops_and_borders_at_the_defaults(cropped_run: tuple[Path, dict[str, str]]) -> None:
    run_dir, source = cropped_run
    rows = read_stage(run_dir, "dedup").set_index("source_ref")
    assert len(rows) == len(source) == 6 * 5  # a photo, two crops, bars and a frame
    groups = rows["dedup_group"]
    assert groups.notna().all()
    by_photo = pd.Series(source).groupby(pd.Series(source)).groups
    for photo, files in by_photo.items():
        assert groups.loc[list(files)].nunique() == 1, f"{photo}'s copies are split: {groups.loc[list(files)]}"
    assert groups.nunique() == 6  # and no two photos merged
    reasons = rows["dedup_reason"].value_counts()
    assert reasons["ok"] == 6 and reasons["near_duplicate"] == 24


def test_the_crop_views_enter_the_fingerprint(cropped_run: tuple[Path, dict[str, str]]) -> None:
    run_dir, _ = cropped_run
    before = read_stage(run_dir, "dedup")
    assert run_curate(f"run.dir={run_dir}", "stage=dedup", "dedup.crop_distance=-1") == 0
    after = read_stage(run_dir, "dedup")
    assert (after["dedup_reason"] == "near_duplicate").sum() < (before["dedup_reason"] == "near_duplicate").sum()


def test_the_grouping_on_a_cluster_equals_the_grouping_in_one_process(tmp_path: Path) -> None:
    frame = fixed_features()
    settings = DedupConfig(flip=True, phash_distance=8)
    expected = dedup.assign_groups(frame, CurateConfig(dedup=settings))
    parts, outputs = [], []
    for shard in range(3):
        parts.append(tmp_path / f"features-{shard}.parquet")
        outputs.append(tmp_path / f"assignments-{shard}.parquet")
        grouping.write_features(parts[-1], frame[frame["shard"] == shard].reset_index(drop=True))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster, Client(cluster) as client:

        def backwards(func: Any, tasks: dict[Any, tuple[Any, ...]], desc: str) -> dict[Any, Any]:
            # submitted last first, gathered as they finish: the result may not depend on either order
            futures = {tag: client.submit(func, *args, pure=False) for tag, args in reversed(list(tasks.items()))}
            return {tag: futures[tag].result() for tag in reversed(list(futures))}

        assert grouping.group(parts, outputs, settings, backwards, tmp_path / "semantic")
    got = pd.concat([read_parquet(path) for path in outputs], ignore_index=True)
    columns = ["image_id", "dedup_group", "dedup_of", "dedup_status", "dedup_reason", "dedup_match", "phash"]
    pd.testing.assert_frame_equal(got[columns], expected[columns], check_dtype=False)
    assert (expected["dedup_reason"] == "near_duplicate").sum() > 100  # the fixed set's links are there
