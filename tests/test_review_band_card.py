"""The review band as reviewers, `curate evaluate` and the data card see it, on synthetic scores (no model runs):
borderline images are measured against the bar that acts (review where there is a band), a column at NEVER makes
none; the card says where there is no band, gives a preset's review-band figures (and the pass preset's inherited
ones), counts a reviewed human as caught but a reviewed image without people as kept, and flags an evaluation
written before that (or one that does not record a setting that has a default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from curate.config import DecideConfig
from curate.configload import load_config
from curate.datacard import _evaluation, _evaluation_mismatches, _provenance_lines, _threshold_rows
from curate.detect.bars import NEVER, Bar
from curate.detect.decide import Rule, decide, rule
from curate.detect.presets import Preset, load_preset, save_preset
from curate.evaluate import summarise
from curate.review.candidates import closeness, flagged_and_borderline

FACE, PERSON = "face_x_max", "person_y_max"


def write_preset(path: Path, bars: dict[str, Bar], provenance: dict[str, Any] | None = None) -> str:
    save_preset(path, Preset("band", bars, description="test", provenance=provenance or {}))
    return str(path)


def candidates(rows: pd.DataFrame, bars: dict[str, Bar], margin: float = 0.5) -> pd.DataFrame:
    """What the reviewer's list shows for these rows under these bars (scored_rows' decision and closeness)."""
    active = Rule("band", bars)
    decision, reason = decide(rows, active)
    rows = rows.assign(decision=decision, decision_reason=reason, closeness=closeness(rows, active))
    return flagged_and_borderline(rows, margin)


def test_a_column_at_never_makes_no_image_borderline() -> None:
    # strict's RetinaFace MobileNet-0.25 bar is 1.0: it decides nothing, so a score of 0.9 there is not close to it
    rows = pd.DataFrame({"image_id": ["a", "b", "c"], FACE: [0.9, 0.6, 0.99], PERSON: [0.0, 0.0, None]})
    shown = candidates(rows, {FACE: Bar(NEVER, NEVER), PERSON: Bar(0.5)})
    assert shown.empty


def test_a_kept_image_just_under_a_review_bar_is_borderline() -> None:
    # the tiles' band: reject 0.5458, review 0.1534; a kept image can only be close to the review bar
    bars = {PERSON: Bar(0.5458, 0.1534)}
    rows = pd.DataFrame({"image_id": ["near", "far", "band", "out"], PERSON: [0.15, 0.01, 0.3, 0.9]})
    shown = candidates(rows, bars, margin=0.1).set_index("image_id")
    assert shown["group"].to_dict() == {"near": "borderline", "band": "uncertain", "out": "person"}
    # measured against the reject bar, 0.15 would be far from it (0.27 of it)
    assert closeness(rows, Rule("band", bars))[0] > 0.9


def test_the_card_says_where_there_is_no_review_band() -> None:
    active = rule(DecideConfig("strict"), list(load_preset("strict").bars))
    rows = {row[0]: row for row in _threshold_rows(active)}
    assert rows["`face_blazeface_full_max`"][3] == "- (no review band)"  # review == reject
    assert rows["`face_retinaface_mnet025_max`"][3] == "- (no review band)"  # both NEVER
    assert rows["`person_yolox_nano_max`"][2:4] == (0.135, 0.1042)


def test_the_card_gives_the_review_bands_measured_figures(tmp_path: Path) -> None:
    strict = load_preset("strict").provenance
    path = write_preset(
        tmp_path / "band.yaml",
        {PERSON: Bar(0.5, 0.2, True, "test")},
        {"method": "curate calibrate", "target_recall": 0.97, "review_recall": 0.99, "measured": strict["measured"]},
    )
    lines = "\n".join(_provenance_lines(rule(DecideConfig(path), [PERSON])))
    assert "Preset **band**: method: curate calibrate, target_recall: 0.97, review_recall: 0.99." in lines
    assert "Measured there (k-fold): recall 0.939 (95 % CI 0.879-0.970), false removal 0.095" in lines
    assert (
        "Measured there (k-fold, with the review band): recall counting reviewed images as caught 0.974 (95 % CI "
        "0.925-0.991), 20 of 219 images sent to review (9.1%: 4 with people, 16 without)."
    ) in lines
    assert "Measured there (in-sample, with the review band)" in lines


def test_the_card_gives_the_pass_presets_inherited_offline_stack_figures() -> None:
    lines = "\n".join(_provenance_lines(rule(DecideConfig("pass"), list(load_preset("pass").bars))))
    assert "The offline stack's bars are preset strict's, calibrated on dev (219 images" in lines
    assert "so the false removals of this preset as a whole were not measured" in lines
    assert "Measured for the offline stack (in-sample): recall 0.974" in lines


def test_evaluate_counts_a_reviewed_human_as_caught_and_a_reviewed_image_without_people_as_kept(
    tmp_path: Path,
) -> None:
    # a preset of the writer's own for the columns this configuration writes, with a band on the person score
    face, person, tiles = "face_blazeface_full_max", "person_yolox_nano_max", "person_yolox_nano_tiles_max"
    path = write_preset(tmp_path / "band.yaml", {face: Bar(0.8), person: Bar(0.5, 0.2), tiles: Bar(NEVER)})
    cfg = load_config([f"decide.preset={path}", "stage=detect", "detect.face=[blazeface_full]", "detect.hand=[]"])
    frame = pd.DataFrame(
        {
            "file": ["h_reject", "h_review", "h_miss", "h_face", "n_review", "n_keep", "n_reject", "n_keep2"],
            "label": ["human"] * 4 + ["no_human"] * 4,
            "category": ["full_body"] * 4 + ["animal"] * 4,
            face: [0.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0, 0.0],
            person: [0.9, 0.3, 0.1, 0.0, 0.3, 0.1, 0.7, 0.0],
        }
    )
    result = summarise(frame, cfg)
    assert result["recall"] == 0.75  # h_reject, h_review (to review), h_face; h_miss missed
    assert result["recall_without_review"] == 0.5
    assert result["false_removal_rate"] == 0.25  # n_reject only: n_review goes to a reviewer
    assert result["review"] == {"images": 2, "share": 0.25, "human": 1, "no_human": 1}
    assert [m["file"] for m in result["missed"]] == ["h_miss"]
    assert [r["file"] for r in result["false_removals"]] == ["n_reject"]
    # and the card states them, with the review load
    measured = "\n".join(_evaluation(cfg, {**result, "evaluation_set": {"name": "synthetic", "size": 8}}))
    assert "an image without people counts as falsely removed only when the filter rejects it" in measured
    assert "| recall without review (people rejected) | 0.500 | 4 |" in measured
    assert "| sent to review (share of all images) | 0.250 | 2 (1 with people, 1 without) |" in measured
    assert "older curate evaluate" not in measured


def test_an_older_evaluation_is_flagged(tmp_path: Path) -> None:
    cfg = load_config([f"run.dir={tmp_path / 'run'}", "stage=release"])
    settings = {"face_max_side": 2048, "person_tiles": 3, "person_tile_min_side": 0, "person_tiles_skip": []}
    found: dict[str, Any] = {"recall": 0.9, "false_removal_rate": 0.2, "n_human": 1, "n_no_human": 1}
    older = _evaluation_mismatches(cfg, {**found, "detect": settings})
    assert any("written by an older curate evaluate" in p and p.endswith("run it again") for p in older)
    assert not any(p.startswith("detect.") for p in older)
    current = _evaluation_mismatches(cfg, {**found, "recall_without_review": 0.8, "detect": settings})
    assert not any("older curate evaluate" in p for p in current)
    text = "\n".join(_evaluation(cfg, {**found, "detect": settings}))
    assert "This evaluation was written by an older curate evaluate" in text


def test_a_setting_the_evaluation_does_not_record_is_compared_as_its_default(tmp_path: Path) -> None:
    cfg = load_config(["pipeline=pass", f"run.dir={tmp_path / 'pass'}", "stage=release"])
    assert cfg.detect.person_tiles_skip == ["yolox_l"]
    older = {"face_max_side": 2048, "person_tiles": 3, "person_tile_min_side": 0}  # before person_tiles_skip
    found = {"recall": 0.9, "recall_without_review": 0.8, "false_removal_rate": 0.2, "detect": older}
    problems = _evaluation_mismatches(cfg, found)
    assert "detect.person_tiles_skip: evaluated [] (not recorded: the default), released with ['yolox_l']" in problems
    recorded = _evaluation_mismatches(cfg, {**found, "detect": {**older, "person_tiles_skip": ["yolox_l"]}})
    assert not any(p.startswith("detect.") for p in recorded)
