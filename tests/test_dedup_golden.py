"""The grouping keeps the groups it gave before it moved from the client to the workers (tests/dedup_fixture.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
from dedup_fixture import features, reference_hashes

from curate.config import CurateConfig, DedupConfig, ReferenceSet
from curate.stages.dedup import assign_groups

GOLDEN = Path(__file__).parent / "golden" / "dedup_groups.csv.gz"
COLUMNS = ["image_id", "dedup_group", "dedup_of", "dedup_status", "dedup_reason", "dedup_match"]


def settings_for(reference: Path) -> dict[str, DedupConfig]:
    return {
        "default": DedupConfig(crop_distance=-1, references=[ReferenceSet(name="eval", hashes=str(reference))]),
        "flip_d8": DedupConfig(crop_distance=-1, flip=True, phash_distance=8, embedding_cosine=0.9),
        "no_semantic": DedupConfig(crop_distance=-1, embedding_cosine=0),
    }


@pytest.mark.parametrize("name", ["default", "flip_d8", "no_semantic"])
def test_the_same_groups_as_the_in_client_grouping(name: str, tmp_path: Path) -> None:
    frame = features()
    reference = tmp_path / "ref.csv"
    reference_hashes(frame).to_csv(reference, index=False)
    # the crop views came after the golden file (crop_distance=-1): the links are the ones it was made from
    got = assign_groups(frame, CurateConfig(dedup=settings_for(reference)[name]))[COLUMNS].astype("string")
    expected = pd.read_csv(GOLDEN, dtype="string").query("setting == @name")[COLUMNS]
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False)


def test_beyond_flat_max_the_clustered_search_gives_the_same_groups(tmp_path: Path) -> None:
    # 2.7k embedded rows over dedup.flat_max=500: the SemDeDup-style search of curate.dedup.semantic, in tasks
    frame = features()
    reference = tmp_path / "ref.csv"
    reference_hashes(frame).to_csv(reference, index=False)
    settings = dataclasses.replace(settings_for(reference)["default"], flat_max=500)
    got = assign_groups(frame, CurateConfig(dedup=settings))[COLUMNS].astype("string")
    expected = pd.read_csv(GOLDEN, dtype="string").query("setting == 'default'")[COLUMNS]
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False)
