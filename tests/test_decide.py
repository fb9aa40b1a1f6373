"""The decision is a pure function of stored scores, one bar per score column; PASS v1's rule is reproduced
exactly; presets are files that say where each bar comes from, and a column without a bar is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curate.config import SHIPPED_PRESETS, ConfigError, DecideConfig
from curate.configload import load_config
from curate.detect.bars import score_columns
from curate.detect.decide import Bar, Rule, decide, family_of, family_scores, rule, run_rule
from curate.detect.presets import Preset, load_preset, save_preset, shipped

FACE, PERSON, TILES, CLIP = "face_x_max", "person_y_max", "person_y_tiles_max", "clip_human_prob"


def rows(face: list[float], person: list[float], clip: list[float] | None = None) -> pd.DataFrame:
    n = len(face)
    return pd.DataFrame({FACE: face, PERSON: person, CLIP: clip if clip is not None else [np.nan] * n})


def pass_rows(face: list[float], person: list[float]) -> pd.DataFrame:
    """Scores of PASS's face detector (RetinaFace MobileNet-0.25) and a COCO person detector."""
    return rows(face, person).rename(columns={FACE: "face_retinaface_mnet025_max"})


def test_pass_v1_is_face_or_person_above_half() -> None:
    frame = pass_rows([0.51, 0.5, 0.1, 0.9, 0.0], [0.0, 0.51, 0.5, 0.9, 0.49])
    verdict, reason = decide(frame, DecideConfig("pass_v1"))
    assert list(verdict) == ["reject", "reject", "keep", "reject", "keep"]
    assert list(reason) == ["face", "person", "ok", "face", "ok"]


def test_pass_v1_ignores_other_face_models_clip_tiles_and_hands_and_has_no_review_band() -> None:
    frame = pass_rows([0.45], [0.45]).assign(
        **{CLIP: [0.99], TILES: [0.99], "hand_z_max": [0.99], "face_blazeface_full_max": [0.99]}
    )
    verdict, _ = decide(frame, DecideConfig(preset="pass_v1"))
    assert list(verdict) == ["keep"]
    # face models without PASS's own would decide nothing under PASS's rule: refused
    with pytest.raises(ConfigError, match=r"add retinaface_mnet025 to detect\.face"):
        rule(DecideConfig("pass_v1"), ["face_blazeface_full_max", "person_yolox_nano_max"])
    assert rule(DecideConfig("pass_v1"), ["person_yolox_nano_max"]).bars["person_yolox_nano_max"].reject == 0.5


def test_custom_family_thresholds_and_review_band() -> None:
    cfg = DecideConfig(
        preset="custom", face=0.6, person=0.4, clip=0.7, face_review=0.2, person_review=0.2, clip_review=0.4
    )
    verdict, reason = decide(
        rows([0.3, 0.1, 0.1, 0.1, np.nan], [0.1, 0.1, 0.5, 0.1, np.nan], [0.1, 0.8, 0.1, 0.5, 0.1]), cfg
    )
    assert list(zip(verdict, reason, strict=True)) == [
        ("review", "uncertain"),
        ("reject", "clip_human"),
        ("reject", "person"),
        ("review", "uncertain"),
        ("keep", "ok"),  # a model that did not run never counts as evidence
    ]


def test_every_column_of_a_family_counts_and_the_strongest_family_names_the_reason() -> None:
    frame = pd.DataFrame(
        {
            "face_a_max": [0.2, None, 0.9, 0.0],
            "face_b_max": [0.7, None, 0.1, 0.0],
            "face_a_count": [9, 9, 9, 9],  # not a score column
            "person_x_max": [0.1, 0.3, 0.9, 0.0],
            "hand_h_max": [0.0, 0.0, 0.0, 0.8],
            "clip_human_prob": [0.5, 0.2, None, 0.9],
        }
    )
    _, reason = decide(frame, DecideConfig(preset="custom", face=0.6, person=0.6, hand=0.6, clip=0.6))
    assert list(reason) == ["face", "ok", "face", "hand"]  # face beats person; hand beats CLIP
    got = family_scores(frame)
    np.testing.assert_allclose(got["face"], [0.7, np.nan, 0.9, 0.0])
    np.testing.assert_allclose(got["clip"], [0.5, 0.2, np.nan, 0.9])


def test_tile_columns_feed_their_own_family() -> None:
    assert [family_of(c) for c in (PERSON, TILES, FACE, "hand_z_max")] == ["person", "person_tiles", "face", "hand"]
    assert family_of("clip_human_prob") == "clip" and family_of("person_x_count") is None


def test_one_bar_per_column() -> None:
    # Two person detectors with different bars: the same score is evidence from one and not from the other.
    active = Rule("test", {"person_a_max": Bar(0.8), "person_b_max": Bar(0.2, review=0.1)})
    frame = pd.DataFrame({"person_a_max": [0.5, 0.9, 0.0], "person_b_max": [0.0, 0.0, 0.15]})
    verdict, reason = decide(frame, active)
    assert list(zip(verdict, reason, strict=True)) == [("keep", "ok"), ("reject", "person"), ("review", "uncertain")]


def test_changing_one_models_bar_changes_only_the_decisions_it_drives() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({c: rng.random(200) for c in ("face_a_max", "person_b_max", "person_b_tiles_max")})
    bars = {"face_a_max": Bar(0.9), "person_b_max": Bar(0.8), "person_b_tiles_max": Bar(0.95)}
    before, _ = decide(frame, Rule("t", bars))
    after, _ = decide(frame, Rule("t", {**bars, "person_b_max": Bar(0.5)}))
    changed = before != after
    assert changed.any()
    driven = (frame["person_b_max"] > 0.5) & (frame["person_b_max"] <= 0.8)
    others = (frame["face_a_max"] > 0.9) | (frame["person_b_tiles_max"] > 0.95)
    assert (changed == (driven & ~others)).all()


def test_the_shipped_presets_agree_with_the_schema_and_load() -> None:
    assert shipped() == sorted(SHIPPED_PRESETS)
    for name in shipped():
        preset = load_preset(name)
        assert preset.bars and all(family_of(c) for c in preset.bars)
        assert all(bar.calibrated or bar.source for bar in preset.bars.values()), "every bar says where it is from"


def test_strict_is_calibrated_for_the_default_stack_and_pass_keeps_its_bars() -> None:
    from curate.config import DetectConfig
    from curate.manifest import detect_columns

    offline = score_columns([c.name for c in detect_columns(DetectConfig())])
    strict = rule(DecideConfig("strict"), offline)  # a bar for every column the default stack writes
    assert all(bar.calibrated and "curate calibrate" in bar.source for bar in strict.bars.values())
    measured = strict.provenance["measured"]
    assert {"in_sample", "kfold"} <= measured.keys() and measured["kfold"]["folds"] == 5
    assert strict.provenance["calibration_set"]["images"] == 219
    # pipeline=pass: the offline stack's bars are strict's (its recall a floor under the OR rule); the stronger
    # models' bars are published operating points, marked as not calibrated
    passing = load_preset("pass")

    def bar(b: Bar) -> tuple[float, float, bool]:
        return (b.reject, b.review, b.calibrated)

    assert {c: bar(passing.bars[c]) for c in offline} == {c: bar(b) for c, b in strict.bars.items()}
    # and the settings they were calibrated with, YOLOX-L's full view aside
    assert {**passing.provenance["detect"], "person_tiles_skip": []} == strict.provenance["detect"]
    others = {c: b for c, b in passing.bars.items() if c not in offline}
    assert others and all(not b.calibrated and b.source for b in others.values())


def test_a_preset_round_trips_through_its_file(tmp_path: Path) -> None:
    preset = Preset(
        "mine",
        {"face_x_max": Bar(0.7, 0.5, True, ""), "hand_y_max": Bar(0.6, source="published: somewhere")},
        description="test",
        provenance={"target_recall": 0.99, "measured": {"kfold": {"recall": 0.98}}},
    )
    path = tmp_path / "mine.yaml"
    save_preset(path, preset)
    assert load_preset(str(path)) == preset
    active = rule(DecideConfig(str(path)), ["face_x_max", "hand_y_max", "face_x_count"])
    assert active.preset == "mine" and active.provenance["target_recall"] == 0.99


def test_a_score_column_without_a_bar_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no bar for the score column\(s\) \['person_unknown_max'\]"):
        rule(DecideConfig("strict"), ["face_retinaface_mnet025_max", "person_unknown_max"])
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nbars:\n  face_x_max: {reject: 1.5}\n  nonsense: 0.5\n")
    with pytest.raises(ConfigError, match=r"reject and review must lie within 0\.\.1.*nonsense: not a score column"):
        load_preset(str(path))
    with pytest.raises(ConfigError, match="no such preset"):
        load_preset(str(tmp_path / "absent.yaml"))


def test_the_config_is_refused_before_any_work_when_its_preset_lacks_a_configured_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="person_fasterrcnn_resnet50_fpn_v2_max"):
        load_config(
            [f"run.dir={tmp_path / 'run'}", "detect.person=[fasterrcnn_resnet50_fpn_v2]", "detect.person_tiles=1"]
        )
    assert not (tmp_path / "run").exists()
    cfg = load_config(["pipeline=pass", f"run.dir={tmp_path / 'pass'}", "stage=release"])
    assert set(run_rule(cfg).bars) == {
        "face_retinaface_mnet025_max",
        "face_blazeface_full_max",
        "face_retinaface_r50_max",
        "person_yolox_nano_max",
        "person_yolox_nano_tiles_max",
        "person_yolox_l_max",
        "hand_mediapipe_hands_max",
        "clip_human_prob",
    }


def test_a_preset_with_values_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "typed.yaml"
    path.write_text(
        "bars:\n  face_x_max: {reject: high}\n  person_y_max: {reject: 0.5, calibrated: 'false'}\n  hand_z_max: true\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_preset(str(path))
    message = str(refused.value)
    assert "face_x_max: reject and review must be numbers" in message
    assert "person_y_max: calibrated must be true or false" in message
    assert "hand_z_max: needs at least" in message


def test_a_calibrated_preset_is_refused_without_its_models_or_with_other_detect_settings(tmp_path: Path) -> None:
    """strict's bars were calibrated together, with tiles and a face size cap: under the OR rule one model's bar
    stands in for another's catches, so without a model, or with scores made otherwise, recall falls silently."""
    run = f"run.dir={tmp_path / 'run'}"
    with pytest.raises(ConfigError, match=r"calibrated together .* \['hand_mediapipe_hands_max'\]"):
        load_config([run, "detect.hand=[]"])
    with pytest.raises(ConfigError, match=r"\['person_yolox_nano_tiles_max'\]"):
        load_config([run, "detect.person_tiles=1"])
    with pytest.raises(ConfigError, match=r"detect\.face_max_side=1024 \(calibrated with 2048\)"):
        load_config([run, "detect.face_max_side=1024"])
    with pytest.raises(ConfigError, match=r"detect\.person_tiles=2 \(calibrated with 3\)"):
        load_config([run, "detect.person_tiles=2"])
    assert not (tmp_path / "run").exists()  # refused before anything is written
    for changed in ("detect.hand=[]", "detect.person_tiles=1", "detect.face_max_side=1024"):
        assert run_rule(load_config([run, changed, "decide.preset=custom"])).preset == "custom"
    # speed-only settings are free
    assert run_rule(load_config([run, "detect.batch_size=3", "detect.device=cpu"])).preset == "strict"
