"""detect on the bundled sample with the offline models (RetinaFace MobileNet-0.25 + YOLOX-Nano): scores in
the manifest, decisions applied at release, and a changed threshold never re-runs a model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import MODELS, read_stage, run_curate

from curate.detect.presets import load_preset
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
    columns = ("face_retinaface_mnet025_max", "person_yolox_nano_max", "person_yolox_nano_tiles_looked")
    for column in (*columns, "face_retinaface_mnet025_boxes"):
        assert scored[column].notna().all(), column
    # tile_policy=auto: a tiles score wherever a tile was looked at, none where none was
    looked = scored["person_yolox_nano_tiles_looked"] > 0
    assert (scored["person_yolox_nano_tiles_max"].notna() == looked).all()
    assert (
        scored.loc[scored["person_yolox_nano_tiles_decided_by"].notna(), "person_yolox_nano_tiles_looked"] == 0
    ).all()
    assert scored["decision"].isin(["keep", "reject", "review"]).all()
    assert set(scored["decision_reason"]) <= {
        "ok",
        "face",
        "person",
        "hand",
        "clip_human",
        "uncertain",
        "tiles_skipped",
    }
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
    # The default stack and the strict preset, calibrated on this set (so optimistic) with every tile looked at
    # (tile_policy=always): evaluate's figures, with the default tile_policy=auto, are within one image of those
    # `curate calibrate` recorded in the preset, in-sample (humans sent to review count as caught; others sent to
    # review are not false removals).
    measured = load_preset("strict").provenance["measured"]
    band = measured["with_review"]["in_sample"]
    humans, others = 114, 105
    assert abs(result["recall"] - band["recall_with_review"]) * humans <= 1 + 1e-6  # 113 of 114 with always
    assert abs(result["recall_without_review"] - measured["in_sample"]["recall"]) * humans <= 1 + 1e-6
    assert abs(result["false_removal_rate"] - measured["in_sample"]["false_removal"]) * others <= 1 + 1e-6
    assert abs(result["review"]["images"] - band["review_images"]) <= 3
    assert result["per_category"]["human/full_body"]["recall"] == 1.0
    assert result["per_detector"]["person_yolox_nano"]["recall"] >= 0.85
    # tiles alone catch people the full view misses, and they have a bar of their own
    tiles = result["per_detector"]["person_yolox_nano_tiles"]
    assert tiles["threshold"] == load_preset("strict").bars["person_yolox_nano_tiles_max"].reject
    # tile_policy=auto: the tiles' own figures count only the images whose tiles it looked at (most human images
    # are decided by a full view first), so their recall alone is no measure here; how it looked is
    looked = result["tiles"]["person_yolox_nano"]
    assert result["tiles"]["policy"] == "auto"
    assert 0 < looked["tiles_per_image"] < 3 and looked["decided_without_tiles"] >= 100
    # without tiles strict's bars would not hold its recall: refused before any model runs
    no_tiles = tmp_path / "no_tiles.json"
    assert evaluate([f"images={dev}", f"labels={dev / 'labels.csv'}", f"out={no_tiles}", f"models.dir={MODELS}",
                     "detect.person_tiles=1"]) == 2  # fmt: skip
    assert not no_tiles.exists()


MEDIAPIPE = ("mediapipe_face_detection_full_range_sparse.tflite", "mediapipe_palm_detection_full.tflite",
             "mediapipe_hand_landmark_full.tflite")  # fmt: skip
needs_mediapipe = pytest.mark.skipif(
    not all((MODELS / name).is_file() for name in MEDIAPIPE), reason="needs the MediaPipe weights in ../shared/models"
)
# A lone hand (the COCO detectors miss it), a couple's faces, and two no-human photos of the dev set.
FEW_DEV = ("mmp_freihand_00032915.jpg", "df_couple.jpg", "caffe_cat.jpg", "dn_horses.jpg")


@needs_mediapipe
def test_blazeface_and_hands_through_the_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The MediaPipe detectors as a user configures them: BlazeFace beside RetinaFace under detect.face, the hand
    detector under detect.hand, decided by decide.hand (custom: the family bars, so the test sets its own)."""
    from curate.models.__main__ import main as models

    run_dir = tmp_path / "run"
    flags = [f"run.dir={run_dir}", "detect.face=[retinaface_mnet025,blazeface_full]", "detect.hand=[mediapipe_hands]",
             "decide.preset=custom", "detect.person_tiles=1"]  # fmt: skip
    assert run_curate(*flags, "stage=all") == 0
    manifest = pd.read_parquet(run_dir / "release" / "v1" / "manifest.parquet")
    scored = manifest[manifest["detect_status"] == "ok"]
    assert len(scored) == 31
    for column in ("face_retinaface_mnet025_max", "face_blazeface_full_max", "hand_mediapipe_hands_max"):
        assert scored[column].notna().all() and scored[column].between(0.0, 1.0).all(), column
    for prefix in ("face_blazeface_full", "hand_mediapipe_hands"):
        assert (scored[f"{prefix}_count"] >= 0).all() and scored[f"{prefix}_boxes"].notna().all(), prefix
    assert (scored["hand_mediapipe_hands_count"] > 0).any()  # the sample has hands in it
    hand_boxes = next(b for b in scored["hand_mediapipe_hands_boxes"] if len(b))
    assert len(hand_boxes) % 5 == 0 and 0.0 <= hand_boxes[4] <= 1.0
    assert set(scored["decision_reason"]) <= {"ok", "face", "person", "hand", "clip_human", "uncertain"}
    # the hand detector's weights are recorded as both files' digests, as its identity states them
    recorded = json.loads((run_dir / "stats" / "detect_weights.json").read_text())
    assert recorded["mediapipe_hands"].count("+") == 1 and len(recorded["blazeface_full"]) == 64
    card = (run_dir / "release" / "v1" / "DATA_CARD.md").read_text()
    assert "mediapipe_hands" in card and "blazeface_full" in card and "hand_mediapipe_hands_max" in card

    # curate.evaluate on a few dev images reports each of them per model
    dev = MODELS.parent / "evalsets" / "dev"
    labels = pd.read_csv(dev / "labels.csv", dtype=str, keep_default_na=False)
    few = labels[labels["file"].str.removeprefix("images/").isin(FEW_DEV)]
    assert len(few) == len(FEW_DEV)
    few.to_csv(tmp_path / "few.csv", index=False)
    out = tmp_path / "eval.json"
    argv = [f"images={dev}", f"labels={tmp_path / 'few.csv'}", f"out={out}", f"models.dir={MODELS}", *flags[1:]]
    assert evaluate(argv) == 0
    result = json.loads(out.read_text())
    per_detector = result["per_detector"]
    assert {"face_retinaface_mnet025", "face_blazeface_full", "person_yolox_nano", "hand_mediapipe_hands"} <= set(
        per_detector
    )
    hands = per_detector["hand_mediapipe_hands"]
    assert hands["threshold"] == 0.5 and hands["recall"] >= 0.5 and hands["false_removal_rate"] == 0.0
    assert "images/mmp_freihand_00032915.jpg" not in [m["file"] for m in result["missed"]]  # the lone hand
    assert result["detectors"]["hand"] == ["mediapipe_hands"]
    (hand_model,) = result["models"]["hand"]
    assert hand_model == {"name": "mediapipe_hands", "sha256": recorded["mediapipe_hands"]}
    assert "hand_mediapipe_hands" in capsys.readouterr().out  # the printed report too

    # and `curate models list` shows the entries
    assert models(["list"]) == 0
    listed = capsys.readouterr().out
    assert any(line.split()[:2] == ["blazeface_full", "face"] for line in listed.splitlines())
    hands_line = next(line for line in listed.splitlines() if line.startswith("mediapipe_hands "))
    assert " hand " in hands_line and "mediapipe_hand_landmark_full.tflite" in hands_line
