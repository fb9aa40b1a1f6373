"""The data card of pipeline=pass names where every bar in force comes from: the offline stack's bars as
calibrated (strict's, on dev), the stronger models' as the published operating points they were taken from
(RedCaps for RetinaFace-R50, PASS v1 for a COCO person at 0.5), and CLIP's as the guess it is.

No weights exist offline for pass's stronger models, so nothing runs: the card's human-filter section is rendered
from the composed `pipeline=pass` config (stage=release: loading it checks no weights, detect has no work) and an
empty tally, and the values are compared with curate/presets/pass.yaml as read here."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from curate.config import CurateConfig, DecideConfig
from curate.configload import load_config
from curate.datacard import Tally, _human_filter, _threshold_rows, render_data_card
from curate.detect.decide import rule
from curate.detect.presets import SHIPPED_DIR

# The preset's bars as its file states them: column -> {reject, review, calibrated, source}.
PASS_BARS: dict[str, dict[str, Any]] = yaml.safe_load((SHIPPED_DIR / "pass.yaml").read_text())["bars"]
# The one bar pipeline=pass does not put in force: Faster R-CNN is not among its person detectors.
FASTER_RCNN = "person_fasterrcnn_resnet50_fpn_v2_max"
HEADER = ["score column", "family", "rejected above", "sent to review above", "where the bar comes from"]


@pytest.fixture
def pass_config(tmp_path: Path) -> CurateConfig:
    # an empty models.dir: the card's model rows look there for recorded digests, never in the user's cache
    (tmp_path / "models").mkdir()
    return load_config(
        ["pipeline=pass", f"run.dir={tmp_path / 'pass'}", "stage=release", f"models.dir={tmp_path / 'models'}"]
    )


def tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in `text`, header row first, as cells."""
    found = []
    for is_table, group in itertools.groupby(text.splitlines(), key=lambda line: line.startswith("|")):
        if is_table:
            lines = list(group)
            found.append([[c.strip() for c in line.strip("|").split("|")] for k, line in enumerate(lines) if k != 1])
    return found


def threshold_table(lines: list[str]) -> dict[str, list[str]]:
    """The human-filter section's bars: column name -> [family, reject, review, origin]."""
    (bars,) = [t for t in tables("\n".join(lines)) if t[0] == HEADER]
    return {row[0].strip("`"): row[1:] for row in bars[1:]}


def family(column: str) -> str:
    return "person_tiles" if column.endswith("_tiles_max") else column.split("_", 1)[0]


def assert_row_states_the_bar(column: str, row: list[str]) -> None:
    """The card's row holds the preset's value, its review band (or says there is none) and its origin."""
    bar = PASS_BARS[column]
    review = bar.get("review", 1.0)
    assert row[0] == family(column), column
    assert row[1] == str(float(bar["reject"])), column
    assert row[2] == (str(float(review)) if review < bar["reject"] else "- (no review band)"), column
    assert bar["source"] and bar["source"] in row[3], column
    # a calibrated bar says so; a published operating point or a guess never claims to be calibrated
    assert row[3].startswith("calibrated") == bar["calibrated"], column


def test_every_bar_pipeline_pass_applies_is_in_the_card_with_its_value_and_origin(pass_config: CurateConfig) -> None:
    rows = threshold_table(_human_filter(pass_config, Tally()))
    assert set(rows) == set(PASS_BARS) - {FASTER_RCNN}
    for column, row in rows.items():
        assert_row_states_the_bar(column, row)


def test_the_offline_stack_is_calibrated_and_the_stronger_models_name_their_published_source(
    pass_config: CurateConfig,
) -> None:
    rows = threshold_table(_human_filter(pass_config, Tally()))
    origin = {column: row[3] for column, row in rows.items()}
    strict = "calibrated (strict's bar: curate calibrate on dev (219 images), target recall 0.97, review recall 0.99)"
    offline = [
        "face_retinaface_mnet025_max",
        "face_blazeface_full_max",
        "person_yolox_nano_max",
        "person_yolox_nano_tiles_max",
        "hand_mediapipe_hands_max",
    ]
    assert {column: origin[column] for column in offline} == dict.fromkeys(offline, strict)
    r50 = origin["face_retinaface_r50_max"]
    assert r50.startswith("published operating point, RedCaps (Desai et al. 2021)") and r50.endswith("at 0.9")
    assert rows["face_retinaface_r50_max"][1] == "0.9"
    yolox_l = origin["person_yolox_l_max"]
    assert yolox_l.startswith(
        "published operating point, PASS v1 (Asano et al. 2021) flagged any COCO person above 0.5"
    )
    assert rows["person_yolox_l_max"][1] == "0.5"
    assert origin["clip_human_prob"].startswith("a first guess") and rows["clip_human_prob"][1:3] == ["0.5", "0.3"]


def test_the_faster_rcnn_bar_renders_with_its_published_source() -> None:
    # pipeline=pass does not run Faster R-CNN unless asked (see the last test): its row as the card's renderer
    # makes it, with every column of the preset (a calibrated bar must not be left out of its rule)
    active = rule(DecideConfig("pass"), list(PASS_BARS))
    rows = {str(row[0]).strip("`"): [str(c) for c in row[1:]] for row in _threshold_rows(active)}
    assert set(rows) == set(PASS_BARS)
    assert_row_states_the_bar(FASTER_RCNN, rows[FASTER_RCNN])
    assert "PASS v1 (Asano et al. 2021) flagged any COCO person above 0.5" in rows[FASTER_RCNN][3]


def test_the_card_says_the_uncalibrated_bars_leave_the_false_removals_unmeasured(pass_config: CurateConfig) -> None:
    text = "\n".join(_human_filter(pass_config, Tally()))
    assert "(`decide.preset=pass`)" in text
    assert (
        "Preset **pass**: method: strict's calibrated bars (curate calibrate) and published operating points." in text
    )
    assert (
        "The offline stack's bars are preset strict's, calibrated on dev (219 images, labels sha256 "
        "f053d82dcf4f80e2…); the other bars are not calibrated, so the false removals of this preset as a whole "
        "were not measured."
    ) in text
    # the figures are the offline stack's alone, and said to be
    assert "Measured for the offline stack (k-fold): recall 0.939" in text and "Measured there" not in text


def test_the_release_card_carries_the_same_human_filter_section(pass_config: CurateConfig) -> None:
    card = render_data_card(pass_config, Tally(), 0)
    section = card.split("\n## Human filter\n", 1)[1].split("\n## ", 1)[0]
    assert threshold_table(section.splitlines()) == threshold_table(_human_filter(pass_config, Tally()))
    assert section.rstrip("\n") == "\n".join(_human_filter(pass_config, Tally())[1:]).rstrip("\n")


def test_the_lead_in_does_not_call_a_guess_calibrated_or_published(pass_config: CurateConfig) -> None:
    text = "\n".join(_human_filter(pass_config, Tally()))
    assert "a first guess" in text
    assert "calibrated on a labelled set, or a published operating point." not in text


def test_the_pass_presets_faster_rcnn_bar_can_be_put_in_force(tmp_path: Path) -> None:
    person = "detect.person=[yolox_nano,yolox_l,fasterrcnn_resnet50_fpn_v2]"
    skip = "detect.person_tiles_skip=[yolox_l,fasterrcnn_resnet50_fpn_v2]"
    cfg = load_config(["pipeline=pass", f"run.dir={tmp_path / 'pass'}", "stage=release", person, skip])
    assert FASTER_RCNN in threshold_table(_human_filter(cfg, Tally()))
