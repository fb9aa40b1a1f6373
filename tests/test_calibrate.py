"""`curate calibrate`: from a labelled folder of real photos with the real offline models (detect runs once, a new
target reads the scores back), and from a sample run's stored scores labelled by its review ledger."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import FAST, MODELS, SHARED, run_curate

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
    assert set(preset.bars) == {"face_retinaface_mnet025_max", "person_yolox_nano_max", "person_yolox_nano_tiles_max"}
    assert all(bar.calibrated for bar in preset.bars.values())
    found = preset.provenance
    assert found["calibration_set"]["images"] == 10 and found["target_recall"] == 0.8
    assert found["measured"]["in_sample"]["recall"] >= 0.8
    assert {"recall_ci", "false_removal_ci"} <= set(found["measured"]["kfold"])
    assert [m["name"] for m in found["models"]["face"]] == ["retinaface_mnet025"]
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
    quick = ["pipeline=sample", "ingest.num_shards=2", "detect.person_tiles=1", *FAST]
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
    assert set(preset.bars) == {"face_retinaface_mnet025_max", "person_yolox_nano_max"}
    assert preset.provenance["calibration_set"]["images"] == 8
    assert run_curate(f"run.dir={run_dir}", "stage=release", f"decide.preset={out}", "release.version=v2", *quick) == 0
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
