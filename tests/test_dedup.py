"""Dedup: the pHash, the multi-index Hamming search against brute force, grouping and representatives, faiss
embedding pairs, and the whole stage on real photos with real near-duplicates made from them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import NO_FILTER, SHARED, run_curate
from PIL import Image

from curate.dedup import embeddings, hamming_index
from curate.dedup.groups import components, representatives
from curate.dedup.phash import hamming, phash
from curate.run import SAMPLE_DIR

DEV = SHARED / "evalsets" / "dev" / "images"
PHOTOS = sorted(p for p in (DEV if DEV.is_dir() else SAMPLE_DIR / "images").glob("*.jpg"))


def planted_hashes(n: int, k: int, seed: int) -> np.ndarray:
    """Random 64-bit hashes, a tenth of them copies of others with up to k bits flipped."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    copies = n // 10
    flips = np.zeros(copies, dtype=np.uint64)
    for _ in range(k):
        flips |= np.uint64(1) << rng.integers(0, 64, size=copies).astype(np.uint64)
    values[-copies:] = values[rng.integers(0, n - copies, size=copies)] ^ flips
    return values


@pytest.mark.parametrize(("k", "seed"), [(0, 0), (3, 1), (5, 2), (8, 3), (12, 4)])
def test_multi_index_search_equals_brute_force(k: int, seed: int) -> None:
    values = planted_hashes(3000, k, seed)
    got = set(zip(*hamming_index.near_pairs(values, k), strict=True))
    expected = set(zip(*hamming_index.brute_force_pairs(values, k), strict=True))
    assert len(expected) >= 250  # the planted copies are there: the comparison is not vacuous
    assert got == expected


def test_matches_against_an_index_equal_brute_force() -> None:
    index = planted_hashes(2000, 4, 5)
    queries = index[:300] ^ np.uint64(0b1011)  # three bits away from their originals
    q, r = hamming_index.matches(index, queries, 4)
    distance = np.bitwise_count(queries[:, None] ^ index[None, :])
    assert set(zip(q, r, strict=True)) == set(zip(*np.nonzero(distance <= 4), strict=True))
    assert len(q) >= 300


def test_components_and_the_representative_rule() -> None:
    label = components(6, np.array([0, 3, 4]), np.array([2, 2, 5]))
    assert label.tolist() == [0, 1, 0, 0, 4, 4]
    features = pd.DataFrame(
        {
            "image_id": ["f", "b", "a", "c", "e", "d"],
            "width": [100, 50, 100, 100, 10, 10],
            "height": [100, 50, 100, 100, 10, 10],
            "date_taken": ["2010-01-02", None, "2010-01-01", "2010-01-01", None, None],
        }
    )
    rep = representatives(features, label)
    # group {0, 2, 3}: same resolution; 2 and 3 share the earliest date; "a" < "c" -> 2
    assert rep.tolist() == [2, 1, 2, 2, 5, 5]  # group {4, 5}: a tie on everything but the id -> "d"


def test_embedding_pairs_flat_and_ivf_find_the_close_vectors() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3000, 64)).astype(np.float32)
    base[2500:] = base[:500] + 0.05 * rng.normal(size=(500, 64)).astype(np.float32)  # 500 near copies
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    cosine = base @ base.T
    expected = {(i, j) for i, j in zip(*np.nonzero(cosine >= 0.95), strict=True) if i < j}
    flat = set(zip(*embeddings.similar_pairs(base, 0.95, flat_max=10_000, nprobe=1), strict=True))
    assert flat == expected and len(expected) >= 500
    ivf = set(zip(*embeddings.similar_pairs(base, 0.95, flat_max=100, nprobe=8), strict=True))
    assert ivf <= expected and len(ivf) >= 0.95 * len(expected)  # IVF may miss a few; it never invents pairs


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _variants(image: Image.Image) -> dict[str, Image.Image | bytes]:
    w, h = image.size
    dx, dy = max(1, w // 50), max(1, h // 50)  # 2 % off each side
    return {
        "q40": _jpeg(image, 40),
        "half": image.resize((w // 2, h // 2), Image.Resampling.BICUBIC),
        "crop": image.crop((dx, dy, w - dx, h - dy)),
        "flip": image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    }


@pytest.fixture(scope="module")
def near_duplicate_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A folder of 8 real photos and 4 derived copies of each of the first 4; a reference folder holding a
    re-encoded copy of photo 7."""
    root = tmp_path_factory.mktemp("dedup")
    photos, reference = root / "photos", root / "reference"
    photos.mkdir()
    reference.mkdir()
    originals = PHOTOS[:8]
    for index, path in enumerate(originals):
        image = Image.open(path).convert("RGB")
        (photos / f"p{index}.jpg").write_bytes(_jpeg(image))
        if index < 4:
            for name, variant in _variants(image).items():
                data = variant if isinstance(variant, bytes) else _jpeg(variant)
                (photos / f"p{index}_{name}.jpg").write_bytes(data)
    (reference / "val_00001.jpg").write_bytes(_jpeg(Image.open(originals[7]).convert("RGB"), 60))
    run_dir = root / "run"
    code = run_curate(
        "pipeline=folder",
        f"ingest.path={photos}",
        f"run.dir={run_dir}",
        "detect.face=[]",
        "detect.person=[]",
        *NO_FILTER,
        "dedup.exact=true",
        "dedup.phash_distance=10",
        "dedup.flip=true",
        f"dedup.references=[{{name: imagenet_val, folder: {reference}}}]",
    )
    assert code == 0
    return run_dir, [p.name for p in originals]


def test_real_near_duplicates_are_grouped_and_different_photos_are_not(
    near_duplicate_run: tuple[Path, list[str]],
) -> None:
    run_dir, _ = near_duplicate_run
    # a folder's image ids are the file name made safe plus a digest; source_ref keeps the name
    manifest = pd.read_parquet(run_dir / "release" / "v1" / "manifest.parquet").set_index("source_ref")
    for index in range(4):
        members = [f"p{index}.jpg"] + [f"p{index}_{v}.jpg" for v in ("q40", "half", "crop", "flip")]
        groups = manifest.loc[members, "dedup_group"]
        assert groups.notna().all() and groups.nunique() == 1, groups
        # the full-resolution original represents its group; every copy points at it
        assert manifest.loc[f"p{index}.jpg", "dedup_status"] == "ok"
        assert manifest.loc[f"p{index}.jpg", "status"] == "kept"
        copies = manifest.loc[members[1:]]
        assert (copies["dedup_of"] == manifest.loc[f"p{index}.jpg", "image_id"]).all()
        assert (copies["status"] == "rejected").all()
        assert copies["reason"].isin(["dedup:near_duplicate", "dedup:exact_duplicate"]).all()
    # different photos never share a group
    originals = manifest.loc[[f"p{i}.jpg" for i in range(8)], "dedup_group"].dropna()
    assert originals.nunique() == len(originals)
    for index in range(4, 7):
        assert pd.isna(manifest.loc[f"p{index}.jpg", "dedup_group"])
        assert manifest.loc[f"p{index}.jpg", "status"] == "kept"


def test_duplicates_of_a_reference_set_are_rejected(near_duplicate_run: tuple[Path, list[str]]) -> None:
    run_dir, _ = near_duplicate_run
    manifest = pd.read_parquet(run_dir / "release" / "v1" / "manifest.parquet").set_index("source_ref")
    row = manifest.loc["p7.jpg"]
    assert row["status"] == "rejected" and row["reason"] == "dedup:reference_duplicate"
    assert row["dedup_match"] == "imagenet_val:phash"
    card = (run_dir / "release" / "v1" / "DATA_CARD.md").read_text()
    assert "## Duplicates" in card and "imagenet_val" in card


def test_phash_tolerates_re_encoding_and_resizing() -> None:
    image = Image.open(PHOTOS[0]).convert("RGB")
    original = phash(_jpeg(image))
    for variant in (_jpeg(image, 30), _jpeg(image.resize((image.width // 3, image.height // 3)))):
        assert hamming(np.uint64(original), np.uint64(phash(variant))) <= 4
