"""detect.tile_policy: `always` looks at every tile of every image, `auto` only where the tiles can change the
decision, `off` at none. With the real offline stack on sample photos: auto's full views are always's and its
tiles a subset of always's (all of them where it looks at all); an image is decided without its tiles exactly
when its first full-view score reaches detect.tile_decisive; at the strict preset auto decides as always does
within one image; decide sends to review (`tiles_skipped`) a row whose tiles were skipped on a column its rule
does not reject on; and `off` writes no tiles columns, which strict (calibrated with tiles) refuses. An image too
small for tiles is never recorded as decided without them; a rule that cannot act on tiles (pass_v1, a tiles bar
of 1.0) sends nothing to review for skipping them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import MODELS, REPO

from curate.config import DETECTOR_FAMILIES, ConfigError, CurateConfig, DecideConfig
from curate.configload import load_config
from curate.detect.bars import NEVER, score_columns
from curate.detect.decide import TILES_SKIPPED, Bar, Rule, decide, rule, run_rule
from curate.detect.decoding import decode
from curate.detect.images import Image
from curate.manifest import detect_columns

WEIGHTS = (
    "yolox_nano_coco_416.onnx",
    "retinaface_mobilenet0.25_Final.pth",
    "mediapipe_face_detection_full_range_sparse.tflite",
    "mediapipe_palm_detection_full.tflite",
    "mediapipe_hand_landmark_full.tflite",
)
needs_models = pytest.mark.skipif(
    not all((MODELS / name).is_file() for name in WEIGHTS), reason="needs the offline weights in ../shared/models"
)

SAMPLE = REPO / "curate" / "sample_data" / "images"
# Sample photos that take every path of tile_policy=auto (as measured with the default stack): decided by a face
# (fish-bike, adele, girl-3, and the macaque, a hard negative RetinaFace fires on) or by a person (girl-2, dog,
# onehand); undecided with a few of their tiles past the gate (cars, zebra, wolf, fly, ade, cat), with all nine
# (inputs_0014) or with none (horse).
PHOTOS = (
    "caffe_fish-bike.jpg",
    "gfp_adele_crop.jpg",
    "rembg_girl-3.jpg",
    "mmp_macaque_d47f1b1ee9d3217e.jpg",
    "rembg_girl-2.jpg",
    "sam_dog.jpg",
    "mmp_onehand10k_1402.jpg",
    "dlib_mmod_cars_test_image.jpg",
    "mmp_zebra_810.jpg",
    "esr_wolf_gray.jpg",
    "mmp_fly_1400.jpg",
    "esr_ade_val_00000114.jpg",
    "caffe_cat.jpg",
    "esr_inputs_0014.jpg",
    "u2n_horse.jpg",
)
UNDECODABLE = "<undecodable>"  # a row whose bytes did not decode: None in the batch, amid the photos
ROWS = (*PHOTOS[:3], UNDECODABLE, *PHOTOS[3:])

TILED = "person_yolox_nano"
TILES_MAX, LOOKED, DECIDED_BY = f"{TILED}_tiles_max", f"{TILED}_tiles_looked", f"{TILED}_tiles_decided_by"
GRID = 9  # detect.person_tiles=3: a 3 x 3 grid, cut from every image (person_tile_min_side=0)
# The full view of YOLOX runs in other batches under auto (full views alone, then tiles) than under always (each
# image with its tiles): the same numbers up to float32 rounding (measured: 1e-6).
TOL = 1e-5

# torch_threads: a Scorer otherwise drops torch to one thread (it assumes a worker per core)
BASE = [f"models.dir={MODELS}", "detect.device=cpu", "detect.torch_threads=2"]


@dataclass(frozen=True)
class Scored:
    cfg: CurateConfig
    scorer: Any  # curate.stages.detect.Scorer
    frame: pd.DataFrame  # the score columns (no boxes), one row per ROWS


def full_view_columns(cfg: CurateConfig) -> list[str]:
    """The full-view score columns in the order that decides an image without its tiles: faces, persons, hands."""
    return [f"{family}_{name}_max" for family in DETECTOR_FAMILIES for name in getattr(cfg.detect, family)]


def score(images: list[Image | None], *overrides: str) -> Scored:
    from curate.stages.detect import Scorer

    cfg = load_config([*BASE, *overrides])
    scorer = Scorer(cfg)
    results = scorer.score(images)
    frame = pd.DataFrame({k: v for k, v in results.items() if not k.endswith("_boxes")}, index=list(ROWS))
    return Scored(cfg, scorer, frame)


def photos(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(index=UNDECODABLE)


def decided(value: object) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


@pytest.fixture(scope="module")
def images() -> list[Image | None]:
    decoded: list[Image | None] = [decode((SAMPLE / name).read_bytes()) for name in PHOTOS]
    return [*decoded[:3], None, *decoded[3:]]


@pytest.fixture(scope="module")
def auto(two_threads: None, images: list[Image | None]) -> Scored:
    return score(images, "detect.tile_policy=auto")


@pytest.fixture(scope="module")
def always(two_threads: None, images: list[Image | None]) -> Scored:
    return score(images, "detect.tile_policy=always")


@pytest.fixture(scope="module")
def open_gate(two_threads: None, images: list[Image | None]) -> Scored:
    """auto with every tile past the gate and a decisive score only a certain one: always, but for an image some
    full view scores exactly 1.0."""
    return score(images, "detect.tile_policy=auto", "detect.tile_gate=0", "detect.tile_decisive=1.0")


# -- auto against always, on real photos ------------------------------------------------------------------------


@needs_models
def test_auto_sees_always_full_views_and_a_subset_of_its_tiles(auto: Scored, always: Scored) -> None:
    a, b = photos(auto.frame), photos(always.frame)
    assert list(a.columns) == list(b.columns)
    for column in full_view_columns(auto.cfg):
        np.testing.assert_allclose(a[column].astype(float), b[column].astype(float), rtol=0, atol=TOL, err_msg=column)
    # always: every tile of every image, never decided by a full view
    assert (b[LOOKED] == GRID).all(), b[LOOKED].to_dict()
    assert b[DECIDED_BY].isna().all() and b[TILES_MAX].notna().all()

    paths = {"decided": 0, "all": 0, "some": 0, "none": 0}
    decisive = auto.cfg.detect.tile_decisive
    for name, row in a.iterrows():
        looked, by, tiles = int(row[LOOKED]), decided(row[DECIDED_BY]), row[TILES_MAX]
        theirs = float(b.at[name, TILES_MAX])
        assert 0 <= looked <= GRID, name
        if by is not None:
            paths["decided"] += 1
            assert looked == 0 and pd.isna(tiles), name
            assert row[by] >= decisive, (name, by, row[by])
        elif looked == GRID:
            paths["all"] += 1
            assert float(tiles) == pytest.approx(theirs, abs=TOL), name
        elif looked > 0:
            paths["some"] += 1
            assert float(tiles) <= theirs + TOL, (name, float(tiles), theirs)
        else:  # undecided, and no tile past the gate: no tiles score at all
            paths["none"] += 1
            assert pd.isna(tiles), name
    # the photos exercise every path (else this test would prove less than it says)
    assert all(paths.values()), paths
    # and auto is the cheaper: under a third of always's tiles here (about a fifth on the dev set)
    assert a[LOOKED].sum() * 3 < b[LOOKED].sum(), (a[LOOKED].sum(), b[LOOKED].sum())


@needs_models
def test_the_first_full_view_score_at_tile_decisive_decides(auto: Scored) -> None:
    """decided_by is the first column (faces, then persons, then hands) whose full view reaches tile_decisive;
    an image none reaches is undecided."""
    columns = full_view_columns(auto.cfg)
    decisive = auto.cfg.detect.tile_decisive
    found = []
    for name, row in photos(auto.frame).iterrows():
        expected = next((c for c in columns if row[c] >= decisive), None)
        assert decided(row[DECIDED_BY]) == expected, (name, {c: row[c] for c in columns})
        found.append(expected)
    # decided by a face, by a person and not at all, among these photos
    assert {str(f).split("_")[0] for f in found} >= {"face", "person", "None"}, found


@needs_models
def test_auto_looks_at_the_tiles_its_gate_lets_through(images: list[Image | None], auto: Scored) -> None:
    """An undecided image's tiles_looked is the number of its windows where the full view's raw person score of
    some anchor centred in the window reaches detect.tile_gate (YoloxDetector's own full views, looked at again)."""
    (detector,) = [d for family, names, found in auto.scorer.families if family == "person"
                   for n, d in zip(names, found, strict=True) if n == "yolox_nano"]  # fmt: skip
    batch = [image for image in images if image is not None]
    views = detector.submit_views(batch)()
    gate = auto.cfg.detect.tile_gate
    frame = photos(auto.frame)
    partial = 0
    for i, name in enumerate(PHOTOS):
        assert len(views.windows[i]) == GRID and len(views.peaks[i]) == GRID, name
        passed = sum(peak >= gate for peak in views.peaks[i])
        expected = 0 if decided(frame.at[name, DECIDED_BY]) else passed
        assert int(frame.at[name, LOOKED]) == expected, (name, views.peaks[i])
        partial += 0 < expected < GRID
    assert partial, "no photo had some but not all of its tiles past the gate"


@needs_models
def test_an_undecodable_image_has_no_scores(auto: Scored, always: Scored) -> None:
    for scored in (auto, always):
        row = scored.frame.loc[UNDECODABLE]
        assert row.isna().all(), row[row.notna()].to_dict()


@needs_models
def test_strict_decides_alike_under_auto_and_always(auto: Scored, always: Scored) -> None:
    rule_auto, rule_always = run_rule(auto.cfg), run_rule(always.cfg)
    assert rule_auto.preset == "strict" and rule_auto.bars == rule_always.bars
    a, b = photos(auto.frame), photos(always.frame)
    got_a, why_a = decide(a, rule_auto)
    got_b, why_b = decide(b, rule_always)
    differ = [(name, (got_a[i], why_a[i]), (got_b[i], why_b[i])) for i, name in enumerate(a.index)
              if (got_a[i], why_a[i]) != (got_b[i], why_b[i])]  # fmt: skip
    assert len(differ) <= 1, differ
    # nothing always flags is kept under auto (a human that auto's skipped tiles would have found)
    lost = [name for i, name in enumerate(a.index) if got_b[i] != "keep" and got_a[i] == "keep"]
    assert not lost, differ
    # where they differ, auto is the cautious one: a skipped tile sends to review, never to a silent keep
    assert all(ours == ("review", TILES_SKIPPED) for _, ours, _ in differ), differ


@needs_models
def test_an_open_gate_and_only_certain_scores_deciding_look_at_every_tile(open_gate: Scored, always: Scored) -> None:
    """tile_gate=0: every tile of an undecided image; tile_decisive=1.0: only a full-view score of exactly 1.0
    (the check is >=) decides. Then auto's tiles are always's."""
    a, b = photos(open_gate.frame), photos(always.frame)
    for column in full_view_columns(open_gate.cfg):
        np.testing.assert_allclose(a[column].astype(float), b[column].astype(float), rtol=0, atol=TOL, err_msg=column)
    for name, row in a.iterrows():
        by = decided(row[DECIDED_BY])
        if by is not None:  # a certain score: honestly decided, without tiles
            assert row[by] >= 1.0 and int(row[LOOKED]) == 0 and pd.isna(row[TILES_MAX]), name
            continue
        assert int(row[LOOKED]) == GRID, name
        assert float(row[TILES_MAX]) == pytest.approx(float(b.at[name, TILES_MAX]), abs=TOL), name
    assert a[DECIDED_BY].isna().sum() >= len(a) - 1  # no sample score is exactly 1.0 as measured; at most one


@needs_models
def test_off_scores_no_tiles(two_threads: None, images: list[Image | None], always: Scored) -> None:
    from curate.stages.detect import Scorer

    cfg = load_config([*BASE, "detect.tile_policy=off", "decide.preset=custom"])
    scorer = Scorer(cfg)
    (detector,) = [d for family, _, found in scorer.families if family == "person" for d in found]
    assert detector.tiles == 1
    few = [0, 3, 8]  # decided by a face, the undecodable row, an undecided photo with tiles under auto
    results = scorer.score([images[i] for i in few])
    assert not [key for key in results if "_tiles_" in key]
    assert results[f"{TILED}_max"][1] is None
    for j, i in enumerate(few):
        if ROWS[i] != UNDECODABLE:
            assert results[f"{TILED}_max"][j] == pytest.approx(float(always.frame.at[ROWS[i], f"{TILED}_max"]), abs=TOL)


@needs_models
def test_an_image_without_tiles_is_not_decided_by_a_full_view(two_threads: None, images: list[Image | None]) -> None:
    from curate.stages.detect import Scorer

    macaque = ROWS.index("mmp_macaque_d47f1b1ee9d3217e.jpg")  # RetinaFace 0.97 on it, strict never rejects there
    cfg = load_config([*BASE, "detect.person_tile_min_side=100000", "decide.preset=custom"])
    results = Scorer(cfg).score([images[macaque]])
    assert results[LOOKED] == [0] and results[TILES_MAX] == [None]  # too small for tiles: none to skip
    assert results[DECIDED_BY] == [None]


# -- decide on hand-made rows ------------------------------------------------------------------------------------

REJECTS, NEVER_REJECTS, HIGH_BAR = "face_a_max", "face_b_max", "face_c_max"
PERSON, TILES, BY = "person_y_max", "person_y_tiles_max", "person_y_tiles_decided_by"
HAND = "hand_z_max"  # written, but the rule has no bar for it
RULE = Rule(
    "hand-made",
    {
        REJECTS: Bar(0.5),
        NEVER_REJECTS: Bar(NEVER),
        HIGH_BAR: Bar(0.8),
        PERSON: Bar(0.5, 0.3),
        TILES: Bar(0.5, 0.2),
    },
)
# (scores, decided_by, expected decision, expected reason)
CASES = [
    ({REJECTS: 0.9}, REJECTS, "reject", "face"),  # the column that decided rejects: no need for the tiles
    ({NEVER_REJECTS: 0.9}, NEVER_REJECTS, "review", TILES_SKIPPED),  # it never rejects: the tiles might have
    ({NEVER_REJECTS: 0.9}, None, "keep", "ok"),  # not decided (looked at its tiles): unaffected
    ({PERSON: 0.1}, None, "keep", "ok"),
    ({NEVER_REJECTS: 0.9, PERSON: 0.9}, NEVER_REJECTS, "reject", "person"),  # another column rejects it anyway
    ({NEVER_REJECTS: 0.9, PERSON: 0.4}, NEVER_REJECTS, "review", "uncertain"),  # already to review
    ({HIGH_BAR: 0.75}, HIGH_BAR, "review", TILES_SKIPPED),  # decisive, yet under that column's reject bar
    ({HIGH_BAR: 0.8}, HIGH_BAR, "review", TILES_SKIPPED),  # at the bar is not above it
    ({HIGH_BAR: 0.81}, HIGH_BAR, "reject", "face"),
]


def hand_made(with_decided_by: bool = True) -> pd.DataFrame:
    columns = [REJECTS, NEVER_REJECTS, HIGH_BAR, PERSON, TILES, HAND]
    frame = pd.DataFrame([{c: scores.get(c, 0.0) for c in columns} for scores, _, _, _ in CASES])
    # a decided image got no tiles: null tiles score
    frame[TILES] = [None if by else 0.0 for _, by, _, _ in CASES]
    if with_decided_by:
        frame[BY] = pd.Series([by for _, by, _, _ in CASES], dtype=object)
    return frame


def test_decide_reviews_the_rows_whose_skipped_tiles_the_rule_could_need() -> None:
    got, why = decide(hand_made(), RULE)
    expected = [(decision, reason) for _, _, decision, reason in CASES]
    assert list(zip(got, why, strict=True)) == expected


def test_a_row_not_decided_by_a_full_view_is_decided_as_without_the_column() -> None:
    with_by = decide(hand_made(), RULE)
    without = decide(hand_made(with_decided_by=False), RULE)
    for i, (_, by, _, _) in enumerate(CASES):
        if by is None:
            assert (with_by[0][i], with_by[1][i]) == (without[0][i], without[1][i]), i
    # and without the column nothing is ever tiles_skipped
    assert TILES_SKIPPED not in set(without[1])


def test_tiles_columns_other_than_the_score_are_not_score_columns() -> None:
    frame = hand_made().assign(person_y_tiles_looked=0)
    assert score_columns(frame.columns) == [REJECTS, NEVER_REJECTS, HIGH_BAR, PERSON, TILES, HAND]
    # a rule from the frame's columns (custom, faces never rejecting): decided_by and looked get no bar, and a row
    # decided by a face is sent to review
    cfg = DecideConfig(preset="custom", face=NEVER, person=0.5, person_tiles=0.5, hand=0.5)
    assert set(rule(cfg, list(frame.columns)).bars) == {REJECTS, NEVER_REJECTS, HIGH_BAR, PERSON, TILES, HAND}
    got, why = decide(frame, cfg)
    assert (got[0], why[0]) == ("review", TILES_SKIPPED)


def test_a_row_decided_by_a_column_the_rule_has_no_bar_for_goes_to_review() -> None:
    frame = pd.DataFrame({**{c: [0.0, 0.0] for c in RULE.bars}, HAND: [0.9, 0.9], TILES: [None, None]})
    frame[BY] = [HAND, "hand_gone_max"]
    got, why = decide(frame, RULE)  # no bar for HAND, no column at all for hand_gone_max: neither rejects
    assert list(zip(got, why, strict=True)) == [("review", TILES_SKIPPED)] * 2


def test_a_rule_that_cannot_use_tiles_reviews_nothing_for_skipping_them() -> None:
    frame = pd.DataFrame(
        {
            "face_retinaface_mnet025_max": [0.1, 0.99],
            "face_blazeface_full_max": [0.9, 0.9],
            "person_yolox_nano_max": [0.1, 0.1],
            "person_yolox_nano_tiles_max": [None, None],
            "person_yolox_nano_tiles_looked": [0, 0],
            "person_yolox_nano_tiles_decided_by": ["face_blazeface_full_max", "face_retinaface_mnet025_max"],
        }
    )
    no_filter = DecideConfig("custom", face=1, person=1, person_tiles=1, hand=1, clip=1)
    assert list(decide(frame, DecideConfig("pass_v1"))[0]) == ["keep", "reject"]
    assert list(decide(frame, no_filter)[0]) == ["keep", "keep"]


# -- configuration ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("detect.tile_policy=sometimes", r"detect\.tile_policy='sometimes': use always, auto, off"),
        ("detect.tile_decisive=0", r"detect\.tile_decisive must be in \(0, 1\]"),
        ("detect.tile_decisive=1.5", r"detect\.tile_decisive must be in \(0, 1\]"),
        ("detect.tile_gate=1", r"detect\.tile_gate must be in \[0, 1\)"),
        ("detect.tile_gate=-0.1", r"detect\.tile_gate must be in \[0, 1\)"),
    ],
)
def test_bad_tile_settings_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config([*BASE, override])


def test_the_edges_of_the_tile_settings_are_accepted() -> None:
    cfg = load_config([*BASE, "detect.tile_decisive=1.0", "detect.tile_gate=0"])
    assert (cfg.detect.tile_policy, cfg.detect.tile_decisive, cfg.detect.tile_gate) == ("auto", 1.0, 0.0)


def test_off_writes_no_tiles_columns_and_strict_refuses_it() -> None:
    calibrated = (
        r"calibrated together for score columns this configuration does not write: \['person_yolox_nano_tiles_max"
    )
    with pytest.raises(ConfigError, match=calibrated):  # strict is the default preset: refused before any work
        load_config([*BASE, "detect.tile_policy=off"])
    cfg = load_config([*BASE, "detect.tile_policy=off", "decide.preset=custom"])
    names = [c.name for c in detect_columns(cfg.detect)]
    assert f"{TILED}_max" in names and not [n for n in names if "_tiles_" in n], names
    with pytest.raises(ConfigError, match=calibrated):
        run_rule(replace(cfg, decide=replace(cfg.decide, preset="strict")))
    # the other policies write all three tiles columns, and strict takes them
    for policy in ("auto", "always"):
        cfg = load_config([*BASE, f"detect.tile_policy={policy}"])
        names = [c.name for c in detect_columns(cfg.detect)]
        assert {TILES_MAX, LOOKED, DECIDED_BY} <= set(names), policy
        assert TILES_MAX in run_rule(cfg).bars
