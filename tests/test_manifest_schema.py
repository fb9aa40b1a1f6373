"""The release manifest's declared schema (curate/manifest.py): fixed by the recipe, never by the data.

The two pipeline tests hold once release.finish writes `conform(table, manifest_schema(cfg))`: a release with
every detector's scores and one in which no row reached detect have the same schema, and concatenate.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MODELS, REPO, run_curate

from curate.config import CurateConfig, DetectConfig
from curate.manifest import (
    INTERNAL_COLUMNS,
    LICENSE,
    STAGES,
    UndeclaredColumn,
    conform,
    detect_columns,
    frame_of,
    manifest_schema,
    render_doc,
    stage_columns,
    tiles_scored,
)
from curate.runconfig import load_run_config
from curate.schema import CANDIDATE_SCHEMA

DOC = REPO / "docs" / "MANIFEST.md"


def config(**detect: object) -> CurateConfig:
    cfg = CurateConfig()
    return replace(cfg, detect=replace(cfg.detect, **detect))


# -- the declaration ------------------------------------------------------------------------------------------


def test_the_schema_is_every_stage_in_order_without_internal_columns() -> None:
    schema = manifest_schema(config())
    assert len(set(schema.names)) == len(schema.names)
    assert schema.names[: len(CANDIDATE_SCHEMA)] == CANDIDATE_SCHEMA.names
    assert not INTERNAL_COLUMNS & set(schema.names)
    assert INTERNAL_COLUMNS == {"tar_member", "release_status", "release_reason"}
    for stage in STAGES[:-1]:  # release's overall columns are status/reason, not release_status/reason
        assert {f"{stage}_status", f"{stage}_reason", f"{stage}_error"} <= set(schema.names), stage
    assert schema.names[-9:] == [
        *("decision", "decision_reason", "select_status", "select_reason", "takedown_reason", "takedown_date"),
        *("status", "reason", "shard"),
    ]
    assert schema.field("fetch_attempts").type == pa.int64()
    assert all(f.nullable for f in schema)


def test_detector_columns_follow_the_recipe_exactly() -> None:
    def names(**detect: object) -> list[str]:
        # (no hands unless given: the default stack has them)
        return [c.name for c in detect_columns(DetectConfig(**{"hand": [], **detect}))][:-3]  # without detect_*

    assert names(face=["retinaface_mnet025"], person=["yolox_nano"], person_tiles=3) == [
        *("face_retinaface_mnet025_max", "face_retinaface_mnet025_count", "face_retinaface_mnet025_boxes"),
        *("person_yolox_nano_max", "person_yolox_nano_tiles_max", "person_yolox_nano_tiles_looked"),
        *("person_yolox_nano_tiles_decided_by", "person_yolox_nano_count", "person_yolox_nano_boxes"),
    ]
    assert "person_yolox_nano_tiles_max" not in names(person=["yolox_nano"], person_tiles=1)
    assert not [n for n in names(person=["yolox_nano"], tile_policy="off") if "_tiles_" in n]
    # detectors that cannot tile have no tiles column (registry: tiles=False); a face detector never gets them
    assert names(face=[], person=["fasterrcnn_resnet50_fpn_v2"], person_tiles=3) == [
        *("person_fasterrcnn_resnet50_fpn_v2_max", "person_fasterrcnn_resnet50_fpn_v2_count"),
        "person_fasterrcnn_resnet50_fpn_v2_boxes",
    ]
    assert names(face=[], person=[]) == []
    assert names(face=[], person=[], clip_model="ViT-B-32") == ["clip_human_prob", "clip_top_class", "clip_embedding"]
    schema = manifest_schema(config(clip_model="ViT-B-32"))
    assert schema.field("clip_embedding").type == pa.list_(pa.float32())
    assert schema.field("face_retinaface_mnet025_boxes").type == pa.list_(pa.float64())
    assert schema.field("face_retinaface_mnet025_count").type == pa.int64()


@pytest.mark.skipif(not (MODELS / "yolox_nano_coco_416.onnx").exists(), reason="needs the offline weights")
@pytest.mark.parametrize("tiles", [1, 3])
def test_the_declared_tiles_are_those_of_the_built_detectors(tiles: int) -> None:
    from curate.config import ModelsConfig
    from curate.detect.loaders import face_detectors, person_detectors

    detect = DetectConfig(face=["retinaface_mnet025"], person=["yolox_nano"], person_tiles=tiles)
    models = ModelsConfig(dir=str(MODELS), download=False)
    for family, build in (("face", face_detectors), ("person", person_detectors)):
        names = detect.face if family == "face" else detect.person
        for name, detector in zip(names, build(detect, models, "cpu"), strict=True):
            assert (getattr(detector, "tiles", 1) > 1) == tiles_scored(family, name, detect), (family, name)


def test_the_doc_is_generated_from_the_declaration() -> None:
    assert DOC.exists() and DOC.read_text() == render_doc(), (
        "docs/MANIFEST.md differs from curate/manifest.py: regenerate it with "
        "`.venv/bin/python -m curate.manifest > docs/MANIFEST.md`"
    )


# -- conform and frame_of ---------------------------------------------------------------------------------------


def test_conform_casts_adds_typed_nulls_and_drops_bookkeeping() -> None:
    cfg = config()
    schema = manifest_schema(cfg)
    drifted = pa.table(
        {
            "image_id": pa.array(["a", "b"], pa.large_string()),
            "face_retinaface_mnet025_count": pa.array([2.0, None]),  # a NaN turned the ints into doubles
            "face_retinaface_mnet025_boxes": pa.nulls(2),  # a shard where no row was scored
            "detect_error": pa.nulls(2),
            "tar_member": ["a.jpg", None],
        }
    )
    table = conform(drifted, schema)
    assert table.schema == schema
    assert table.column("face_retinaface_mnet025_count").to_pylist() == [2, None]
    assert table.column("image_id").type == pa.string() and table.column("shard").null_count == 2
    assert table.column("person_yolox_nano_tiles_max").type == pa.float64()


def test_conform_refuses_what_is_not_declared() -> None:
    schema = manifest_schema(config())
    with pytest.raises(UndeclaredColumn, match="face_secret_max"):
        conform(pa.table({"image_id": ["a"], "face_secret_max": [0.5]}), schema)
    with pytest.raises(TypeError, match="fetch_attempts"):
        conform(pa.table({"fetch_attempts": [1.5]}), schema)  # a count is never fractional: no silent truncation


def test_a_part_with_no_live_row_still_has_every_column_typed() -> None:
    columns = detect_columns(DetectConfig(clip_model="ViT-B-32"))
    empty = frame_of(columns, {}, 0)
    assert list(empty.columns) == [c.name for c in columns]
    assert str(empty["face_retinaface_mnet025_count"].dtype) == "Int64"
    assert str(empty["detect_status"].dtype) == "string"
    license = frame_of(LICENSE, {"license_assumed": [True, None]}, 2)
    assert license["license_assumed"].tolist() == [True, pd.NA] and license["license_code"].isna().all()
    with pytest.raises(UndeclaredColumn, match="license_mood"):
        frame_of(LICENSE, {"license_mood": ["glad"]}, 1)


def test_every_stage_is_declared() -> None:
    assert list(stage_columns(config())) == list(STAGES)


# -- the pipeline (needs release.finish to write conform(table, manifest_schema(cfg))) --------------------------


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("scored") / "run"
    assert run_curate(f"run.dir={run_dir}") == 0
    return run_dir


@pytest.fixture(scope="module")
def unscored_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same recipe, but fetch refuses every image as too small: no row reaches detect, dedup or review."""
    run_dir = tmp_path_factory.mktemp("unscored") / "run"
    assert run_curate(f"run.dir={run_dir}", "fetch.min_side=100000") == 0
    return run_dir


def manifest(run_dir: Path) -> Path:
    return run_dir / "release" / "v1" / "manifest.parquet"


def test_the_manifest_has_the_declared_schema(scored_run: Path) -> None:
    cfg = load_run_config(scored_run)
    assert pq.read_schema(manifest(scored_run)).remove_metadata() == manifest_schema(cfg)


def test_a_release_where_nothing_reached_detect_has_the_same_schema(scored_run: Path, unscored_run: Path) -> None:
    cfg = load_run_config(unscored_run)
    assert manifest_schema(cfg) == manifest_schema(load_run_config(scored_run))  # fetch.min_side is no column
    unscored = pq.read_table(manifest(unscored_run))
    assert unscored.schema.remove_metadata() == manifest_schema(cfg)
    assert unscored.column("detect_status").null_count == unscored.num_rows  # nothing reached detect
    both = pa.concat_tables([pq.read_table(manifest(scored_run)), unscored])
    assert both.num_rows == 2 * unscored.num_rows == 82
    assert pd.concat([both.to_pandas(), unscored.to_pandas()]).shape[1] == len(manifest_schema(cfg))


def test_detect_parts_have_every_column_even_with_no_live_row(unscored_run: Path) -> None:
    cfg = load_run_config(unscored_run)
    declared = [c.name for c in stage_columns(cfg)["detect"]]
    for part in sorted((unscored_run / "manifest" / "detect").glob("part-*.parquet")):
        schema = pq.read_schema(part)
        assert schema.names == declared, part.name
        assert schema.field("face_retinaface_mnet025_count").type == pa.int64()
