"""detect on the bundled sample with the offline models (RetinaFace MobileNet-0.25 + YOLOX-Nano): scores in
the manifest, decisions applied at release, and a changed threshold never re-runs a model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import MODELS, read_stage, run_curate

from curate.evaluate import main as evaluate
from curate.run import main

pytestmark = pytest.mark.skipif(not MODELS.exists(), reason="needs the offline weights in ../shared/models")

SAMPLE_LABELS = Path(__file__).resolve().parents[1] / "curate" / "sample_data" / "labels.csv"


@pytest.fixture(scope="module")
def detected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("detect") / "run"
    assert run_curate(f"run.dir={run_dir}", "stage=all") == 0
    return run_dir


def test_every_image_has_every_detectors_scores_and_a_decision(detected: Path) -> None:
    manifest = pd.read_parquet(detected / "release" / "v1" / "manifest.parquet")
    scored = manifest[manifest["fetch_status"] == "ok"]
    assert len(scored) == 31 and (scored["detect_status"] == "ok").all()
    columns = ("face_retinaface_mnet025_max", "person_yolox_nano_max", "person_yolox_nano_tiles_max")
    for column in (*columns, "face_retinaface_mnet025_boxes"):
        assert scored[column].notna().all(), column
    assert scored["decision"].isin(["keep", "reject", "review"]).all()
    assert set(scored["decision_reason"]) <= {"ok", "face", "person", "clip_human", "uncertain"}
    # Nothing flagged is released.
    assert (manifest.loc[manifest["status"] == "kept", "decision"] == "keep").all()


def test_humans_in_the_sample_are_removed(detected: Path) -> None:
    manifest = pd.read_parquet(detected / "release" / "v1" / "manifest.parquet")
    manifest["file"] = manifest["image_url"].str.removeprefix("file:")
    labelled = manifest.merge(pd.read_csv(SAMPLE_LABELS), on="file")
    humans = labelled[(labelled["label"] == "human") & labelled["decision"].notna()]
    # Every human photo that reached detect is flagged, except the ones the offline detectors cannot see
    # (measured: none on the sample).
    assert (humans["decision"] != "keep").all(), humans.loc[humans["decision"] == "keep", "file"].tolist()


def test_boxes_are_in_image_coordinates(detected: Path) -> None:
    rows = read_stage(detected, "license", "fetch", "detect")
    face = rows[rows["face_retinaface_mnet025_count"] > 0].iloc[0]
    boxes = list(face["face_retinaface_mnet025_boxes"])
    x1, y1, x2, y2, score = boxes[:5]
    assert 0 <= x1 < x2 <= face["width"] + 1 and 0 <= y1 < y2 <= face["height"] + 1 and score > 0.5


def test_threshold_change_re_decides_without_re_detecting(detected: Path) -> None:
    markers = {p.name: p.read_text() for p in (detected / "stats" / "detect").glob("*.json")}
    # v1 is published and never changes: new thresholds make a new version
    assert run_curate(f"run.dir={detected}", "decide.preset=pass_v1", "release.version=pass-rule") == 0
    assert {p.name: p.read_text() for p in (detected / "stats" / "detect").glob("*.json")} == markers
    manifest = pd.read_parquet(detected / "release" / "pass-rule" / "manifest.parquet")
    scored = manifest[manifest["decision"].notna()]
    face, person = scored["face_retinaface_mnet025_max"], scored["person_yolox_nano_max"]
    expected = ((face > 0.5) | (person > 0.5)).map({True: "reject", False: "keep"})
    assert (scored["decision"] == expected).all()  # PASS's exact rule


def test_missing_weights_fail_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    flags = ["dask.processes=false", "run.progress=false", f"run.dir={run_dir}", f"models.dir={tmp_path / 'empty'}"]
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert "retinaface_mobilenet0.25_Final.pth" in err and "python -m curate.models download" in err
    assert not (run_dir / "manifest").exists()


def test_evaluate_on_the_dev_set(tmp_path: Path) -> None:
    dev = MODELS.parent / "evalsets" / "dev"
    out = tmp_path / "eval.json"
    assert evaluate([f"images={dev}", f"labels={dev / 'labels.csv'}", f"out={out}", f"models.dir={MODELS}"]) == 0
    result = json.loads(out.read_text())
    assert set(result) >= {"recall", "false_removal_rate", "per_category", "per_detector", "missed"}
    # The goal, with the offline models and the strict preset (tuned on this set, so optimistic): recall >= 0.95
    # at a false-removal rate <= 0.15. Measured: 0.956 (109 of 114) at 0.143 (15 of 105).
    assert result["recall"] >= 0.95
    assert result["false_removal_rate"] <= 0.15
    assert result["per_category"]["human/full_body"]["recall"] == 1.0
    assert result["per_category"]["human/small_distant_people"]["recall"] >= 0.9
    assert result["per_detector"]["person_yolox_nano"]["recall"] >= 0.85
    # tiles alone catch people the full view misses, and they have a bar of their own
    tiles = result["per_detector"]["person_yolox_nano_tiles"]
    assert tiles["threshold"] == 0.4 and tiles["recall"] >= 0.6
    # without tiles the same preset misses more: the small distant people
    no_tiles = tmp_path / "no_tiles.json"
    assert evaluate([f"images={dev}", f"labels={dev / 'labels.csv'}", f"out={no_tiles}", f"models.dir={MODELS}",
                     "detect.person_tiles=1"]) == 0  # fmt: skip
    assert json.loads(no_tiles.read_text())["recall"] < result["recall"]
