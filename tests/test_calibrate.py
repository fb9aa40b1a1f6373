"""`curate calibrate`: from a labelled folder of real photos with the real offline models (detect runs once, a new
target reads the scores back), and from a sample run's stored scores labelled by its review ledger."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FAST, MODELS, SHARED, run_curate
from PIL import Image

import curate.calibrate
from curate.calibrate import main
from curate.detect.presets import load_preset
from curate.review import ledger

DEV = SHARED / "evalsets" / "dev"
pytestmark = pytest.mark.skipif(not (MODELS.exists() and DEV.exists()), reason="needs ../shared models and dev set")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five human and five no_human dev photos, with their labels."""
    folder = tmp_path_factory.mktemp("labelled")
    with open(DEV / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = [r for r in rows if r["label"] == "human"][:5] + [r for r in rows if r["label"] == "no_human"][:5]
    for row in chosen:
        (folder / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DEV / row["file"], folder / row["file"])
    pd.DataFrame(chosen)[["file", "label", "category"]].to_csv(folder / "labels.csv", index=False)
    return folder


def test_calibrate_a_labelled_folder_then_a_new_target_without_rerunning_a_model(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine.yaml"
    args = [f"images={labelled}", f"out={out}", f"models.dir={MODELS}"]
    assert main([*args, "target_recall=0.8"]) == 0
    printed = capsys.readouterr().out
    assert "in-sample" in printed and "k-fold" in printed and "human/" in printed
    preset = load_preset(str(out))
    assert set(preset.bars) == {
        "face_retinaface_mnet025_max",
        "face_blazeface_full_max",
        "person_yolox_nano_max",
        "person_yolox_nano_tiles_max",
        "hand_mediapipe_hands_max",
    }  # the default stack's
    assert all(bar.calibrated for bar in preset.bars.values())
    found = preset.provenance
    assert found["calibration_set"]["images"] == 10 and found["target_recall"] == 0.8
    assert found["measured"]["in_sample"]["recall"] >= 0.8
    assert {"recall_ci", "false_removal_ci"} <= set(found["measured"]["kfold"])
    assert [m["name"] for m in found["models"]["face"]] == ["retinaface_mnet025", "blazeface_full"]
    assert (tmp_path / "mine.scores.parquet").exists()

    # A new target reads the stored scores back: no model runs.
    again = tmp_path / "again.yaml"
    scores = f"scores={tmp_path / 'mine.scores.parquet'}"
    code = main([f"images={labelled}", f"out={again}", scores, f"models.dir={MODELS}", "target_recall=1.0"])
    assert "reading the scores back" in capsys.readouterr().out
    # a goal missed leaves `out` alone and puts the bars beside it
    written = again if code == 0 else tmp_path / "again.missed.yaml"
    assert code in (0, 1) and written.exists() and (code == 0 or not again.exists())
    assert load_preset(str(written)).provenance["target_recall"] == 1.0


def test_calibrate_from_a_runs_review_ledger_and_release_with_the_preset(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    quick = ["pipeline=sample", "ingest.num_shards=2", "detect.person_tiles=1", "decide.preset=custom", *FAST]
    assert run_curate(f"run.dir={run_dir}", "stage=all", *quick) == 0
    detect = pd.concat(
        [
            pd.read_parquet(p).assign(image_id=pd.read_parquet(run_dir / "manifest" / "ingest" / p.name)["image_id"])
            for p in sorted((run_dir / "manifest" / "detect").glob("*.parquet"))
        ]
    )
    scored = detect[detect["detect_status"] == "ok"].sort_values("face_retinaface_mnet025_max")
    # reviewers removed the four highest face scores and kept the four lowest
    ledger.append(run_dir, [(i, "remove") for i in scored["image_id"].tail(4)], reviewer="r")
    ledger.append(run_dir, [(i, "keep") for i in scored["image_id"].head(4)], reviewer="r")
    out = tmp_path / "reviewed.yaml"
    assert main([f"run.dir={run_dir}", f"out={out}", "target_recall=1.0"]) == 0
    preset = load_preset(str(out))
    assert set(preset.bars) == {
        "face_retinaface_mnet025_max",
        "face_blazeface_full_max",
        "person_yolox_nano_max",
        "hand_mediapipe_hands_max",
    }
    assert preset.provenance["calibration_set"]["images"] == 8
    # the settings the run's scores were made with, and how many unreviewed images the run's rule flags that
    # these bars would keep (the ledger saw only what reviewers saw)
    assert preset.provenance["detect"]["person_tiles"] == 1
    assert isinstance(preset.provenance["calibration_set"]["unreviewed_now_kept"], int)
    assert run_curate(f"run.dir={run_dir}", "stage=release", "release.version=v2", *quick, f"decide.preset={out}") == 0
    card = (run_dir / "release" / "v2" / "DATA_CARD.md").read_text()
    assert f"decide.preset={preset.name}" in card and "calibrated" in card


def test_calibrate_refuses_what_it_cannot_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([f"out={tmp_path / 'x.yaml'}"]) == 2
    assert main(["out", f"images={tmp_path}"]) == 2
    assert main([f"images={tmp_path}", f"run.dir={tmp_path}", f"out={tmp_path / 'x.yaml'}"]) == 2
    run_dir = tmp_path / "empty"
    assert main([f"run.dir={run_dir}", f"out={tmp_path / 'x.yaml'}"]) == 2
    assert "curate calibrate" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


def test_an_unreadable_labelled_image_is_left_out_and_named_and_a_bad_label_refused(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "set"
    shutil.copytree(labelled, folder)
    (folder / "images").mkdir(exist_ok=True)
    (folder / "images" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    labels = pd.read_csv(folder / "labels.csv")
    extra = pd.DataFrame([{"file": "images/cut.jpg", "label": "human", "category": "broken"},
                          {"file": "images/absent.jpg", "label": "no_human", "category": "broken"}])  # fmt: skip
    pd.concat([labels, extra]).to_csv(folder / "labels.csv", index=False)
    out = tmp_path / "p.yaml"
    assert main([f"images={folder}", f"out={out}", f"models.dir={MODELS}", "target_recall=0.8"]) == 0
    err = capsys.readouterr().err
    assert "left out, unreadable: images/cut.jpg" in err and "images/absent.jpg" in err
    found = load_preset(str(out)).provenance["calibration_set"]
    assert found["images"] == 10 and found["unreadable"] == ["images/cut.jpg", "images/absent.jpg"]

    pd.concat([labels, pd.DataFrame([{"file": "x.jpg", "label": "humans", "category": "typo"}])]).to_csv(
        folder / "labels.csv", index=False
    )
    assert main([f"images={folder}", f"out={tmp_path / 'q.yaml'}", f"models.dir={MODELS}"]) == 2
    assert "label must be human or no_human (1 row(s) are not: line 12: 'humans')" in capsys.readouterr().err


def toy_scores(cfg: object, images: Path, labels: Path, scores: Path) -> tuple[pd.DataFrame, dict]:
    """Stored scores in place of detect: test_calibration.py's review-band table (face reject bar 0.75; review
    bars face 0.55 and hand 0.475 at review recall 1, sending humans 2 and 3 and no-human image 4 to review)."""
    frame = pd.DataFrame(
        {
            "file": [f"{i}.jpg" for i in range(9)],
            "label": ["human"] * 4 + ["no_human"] * 5,
            "category": ["toy"] * 9,
            "face_a_max": [0.9, 0.8, 0.6, 0.3, 0.7, 0.5, 0.2, np.nan, 0.1],
            "hand_b_max": [np.nan, np.nan, 0.1, 0.5, np.nan, 0.2, 0.45, 0.4, 0.1],
        }
    )
    return frame, {"name": "toy", "images": 9, "labels_sha256": "0" * 64, "models": {}}


def test_calibrate_with_a_review_band(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(curate.calibrate, "from_folder", toy_scores)
    args = [f"images={tmp_path}", f"models.dir={MODELS}", "target_recall=0.5", "folds=2"]
    out = tmp_path / "band.yaml"
    assert main([*args, f"out={out}", "review_recall=1.0"]) == 0
    printed = capsys.readouterr().out
    assert "target recall 0.5, review recall 1.0;" in printed
    assert "in-sample  recall with review 1.000" in printed and "3/9 images: 2 human, 1 not" in printed
    assert "k-fold     recall with review" in printed
    preset = load_preset(str(out))
    face, hand = preset.bars["face_a_max"], preset.bars["hand_b_max"]
    assert (face.reject, face.review, hand.reject, hand.review) == (0.75, 0.55, 1.0, 0.475)
    assert face.source == "curate calibrate on toy (9 images), target recall 0.5, review recall 1.0"
    found = preset.provenance
    assert found["target_recall"] == 0.5 and found["review_recall"] == 1.0
    band = found["measured"]["with_review"]
    assert {k: band["in_sample"][k] for k in ("recall_with_review", "review_images", "review_load")} == {
        "recall_with_review": 1.0,
        "review_images": 3,
        "review_load": 0.3333,
    }
    assert (band["in_sample"]["humans_to_review"], band["in_sample"]["others_to_review"]) == (2, 1)
    assert band["kfold"]["folds"] == 2 and band["kfold"]["images"] == 9
    assert {"recall_with_review_ci", "review_load_ci"} <= set(band["kfold"])

    # Without review_recall: no band, no new keys; each bar still says where it came from.
    plain = tmp_path / "plain.yaml"
    assert main([*args, f"out={plain}"]) == 0
    assert "with review" not in capsys.readouterr().out
    preset = load_preset(str(plain))
    assert all(bar.review == 1.0 for bar in preset.bars.values())
    assert preset.bars["face_a_max"].source == "curate calibrate on toy (9 images), target recall 0.5"
    assert "review_recall" not in preset.provenance and set(preset.provenance["measured"]) == {"in_sample", "kfold"}


def test_calibrate_refuses_a_review_recall_below_the_target_before_any_model_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_models(*args: object) -> None:
        raise AssertionError("a model ran")

    monkeypatch.setattr(curate.calibrate, "from_folder", no_models)
    out = tmp_path / "x.yaml"
    for review_recall in ("0.9", "1.5"):
        assert main([f"images={tmp_path}", f"out={out}", "target_recall=0.97", f"review_recall={review_recall}"]) == 2
        assert "review_recall must lie in [target_recall, 1]" in capsys.readouterr().err
    assert not out.exists()


def test_an_image_a_detector_fails_on_is_left_out_and_named_not_the_run(
    labelled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from curate.stages.detect import Scorer

    broken = np.asarray(Image.open(labelled / pd.read_csv(labelled / "labels.csv")["file"].iloc[0]).convert("RGB"))
    real = Scorer.score

    def score(self: Scorer, images: list) -> dict:
        if any(image is not None and image.shape == broken.shape for image in images):
            raise RuntimeError("a detector fault on one image")
        return real(self, images)

    monkeypatch.setattr(Scorer, "score", score)
    out = tmp_path / "p.yaml"
    assert main([f"images={labelled}", f"out={out}", f"models.dir={MODELS}", "target_recall=0.5"]) in (0, 1)
    err = capsys.readouterr().err
    first = pd.read_csv(labelled / "labels.csv")["file"].iloc[0]
    assert f"left out, unreadable: {first} (internal_error: RuntimeError: a detector fault on one image" in err
    written = out if out.exists() else tmp_path / "p.missed.yaml"
    found = load_preset(str(written)).provenance["calibration_set"]
    assert found["images"] == 9 and found["unreadable"] == [first]
