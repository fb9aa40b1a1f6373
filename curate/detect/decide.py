"""Score first, decide separately: a pure function from stored detector scores to keep / reject / review.

The rule has one bar per stored score column (`face_<model>_max`, `person_<model>_max`, `person_<model>_tiles_max`,
`hand_<model>_max`, `clip_human_prob`): an image is rejected when ANY column is above its reject bar, and goes
to review when none is but some column is above its review bar. It reads thresholds from config (or a preset
file, `curate.detect.presets`) and scores from the manifest and never touches a model, so a notebook,
`curate.evaluate` or `curate calibrate` can preview any threshold and release can re-decide without re-running
detect.

Where the bars come from (`decide.preset`):
- `strict`, `pass`, or a path to a YAML file: a preset, one bar per column, with its provenance. A score column
  the preset has no bar for is an error, never a silent keep; so is a calibrated column the configuration does
  not write (calibrated bars hold their recall only together).
- `pass_v1`: PASS's exact rule for PASS's models: RetinaFace MobileNet-0.25 above 0.5, or any COCO person detector
  above 0.5 on the full image; nothing else counts (no other face model, no tiles, hands or CLIP).
- `custom`: the family keys of `decide` (`decide.face`, `decide.person`, ...) for every column of that family.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from curate.config import ConfigError, CurateConfig, DecideConfig
from curate.detect.bars import FAMILIES, NEVER, REASON, Bar, family_of, score_columns
from curate.detect.presets import load_preset
from curate.schema import OK

# The rules by family; any other decide.preset is a preset: shipped (curate/presets/<name>.yaml) or a path.
FAMILY_RULES = ("pass_v1", "custom")


@dataclass(frozen=True)
class Rule:
    """The decision in force: a bar per score column, where it came from, and the preset's provenance."""

    preset: str
    bars: dict[str, Bar]
    provenance: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """What the decision depends on (release's fingerprint and the data card): the bars, by column."""
        return {"preset": self.preset, "bars": {c: asdict(b) for c, b in sorted(self.bars.items())}}


# PASS's face detector: the only face model its rule knew.
PASS_FACE_COLUMN = "face_retinaface_mnet025_max"


def family_bar(cfg: DecideConfig, column: str) -> Bar:
    """A column's bar under the rules by family (pass_v1, custom)."""
    family = str(family_of(column))
    if cfg.preset == "pass_v1":
        source = "PASS v1: RetinaFace MobileNet-0.25 or a COCO person (full image) > 0.5; nothing else counts"
        counts = column == PASS_FACE_COLUMN or family == "person"
        return Bar(0.5 if counts else NEVER, source=source)
    return Bar(getattr(cfg, family), getattr(cfg, f"{family}_review"), source="decide.preset=custom")


def rule(cfg: DecideConfig, columns: Sequence[str]) -> Rule:
    """The rule for these score columns. Raises ConfigError when a preset has no bar for one of them."""
    columns = score_columns(columns)
    if cfg.preset == "pass_v1":
        faces = [c for c in columns if family_of(c) == "face"]
        if faces and PASS_FACE_COLUMN not in faces:
            raise ConfigError(
                f"decide.preset=pass_v1 is PASS's rule for PASS's face detector (retinaface_mnet025); the configured "
                f"face columns {faces} would remove nothing under it: add retinaface_mnet025 to detect.face, or use a "
                "preset (strict, pass, a calibrated file) or decide.preset=custom"
            )
    if cfg.preset in FAMILY_RULES:
        return Rule(cfg.preset, {c: family_bar(cfg, c) for c in columns})
    preset = load_preset(cfg.preset)
    missing = [c for c in columns if c not in preset.bars]
    if missing:
        raise ConfigError(
            f"decide.preset={cfg.preset} has no bar for the score column(s) {missing} (bars for "
            f"{sorted(preset.bars)}): calibrate one for these models (curate calibrate ... out=preset.yaml, then "
            "decide.preset=preset.yaml), or use decide.preset=custom with the decide.* family thresholds"
        )
    # Calibrated bars hold their operating point only together: under the OR rule each was set for the images the
    # others miss, so one model's bar stands in for another's catches (strict's RetinaFace MobileNet-0.25 bar is
    # 1.0 because BlazeFace and YOLOX catch its faces). Without one of those models recall falls, silently.
    absent = sorted(c for c, bar in preset.bars.items() if bar.calibrated and c not in columns)
    if absent:
        raise ConfigError(
            f"decide.preset={cfg.preset}: its bars were calibrated together for score columns this configuration "
            f"does not write: {absent}. Without those models the other bars do not hold the preset's recall: add "
            "back what writes them (the preset's provenance names its models and detect settings), calibrate a "
            "preset for yours (curate calibrate ... out=preset.yaml), or use decide.preset=custom with the decide.* "
            "family thresholds"
        )
    return Rule(preset.name, {c: preset.bars[c] for c in columns}, preset.provenance)


def run_rule(cfg: CurateConfig) -> Rule:
    """The rule for the score columns this run's detect configuration writes. Raises ConfigError, besides
    `rule`'s cases, when the preset records the detect settings it was calibrated with and this configuration
    changes one of them (tiles, the face size cap): the same models then give other scores."""
    from curate.manifest import detect_columns  # the columns follow the configured detectors

    active = rule(cfg.decide, [column.name for column in detect_columns(cfg.detect)])
    recorded = active.provenance.get("detect")
    if isinstance(recorded, dict):
        changed = {
            k: (v, getattr(cfg.detect, k))
            for k, v in recorded.items()
            if _differs(k, v, getattr(cfg.detect, k, v), active)
        }
        if changed:
            told = ", ".join(f"detect.{k}={now} (calibrated with {then})" for k, (then, now) in sorted(changed.items()))
            raise ConfigError(
                f"decide.preset={cfg.decide.preset} was calibrated with other detect settings: {told}. Its bars do "
                "not hold their recall for scores made otherwise: use its settings, calibrate a preset for yours "
                "(curate calibrate ... out=preset.yaml), or use decide.preset=custom with the decide.* family "
                "thresholds"
            )
    return active


def _differs(key: str, then: object, now: object, active: Rule) -> bool:
    """Whether a recorded detect setting differs in a way that changes a calibrated bar's scores. The tiles' skip
    list matters only for the detectors with a calibrated column: skipping the tiles of one that has none, or
    cannot tile at all (pipeline=pass with Faster R-CNN beside YOLOX-L), leaves every calibrated score as it was."""
    if key != "person_tiles_skip" or isinstance(then, str) or isinstance(now, str):
        return bool(then != now)
    if not isinstance(then, Sequence) or not isinstance(now, Sequence):
        return bool(then != now)
    calibrated = [column for column, bar in active.bars.items() if bar.calibrated]

    def skipped(names: Sequence[object]) -> set[str]:
        return {str(name) for name in names if any(f"_{name}_" in column for column in calibrated)}

    return skipped(then) != skipped(now)


def decide(rows: pd.DataFrame, cfg: DecideConfig | Rule) -> tuple[np.ndarray, np.ndarray]:
    """(decision, reason) per row: keep/ok, reject/face|person|hand|clip_human, review/uncertain|tiles_skipped. A
    column that is null on a row (that model did not run, or saw no tiles) is no evidence either way; tiles skipped
    as decided by a column this rule does not reject on are (`tiles_unlooked`)."""
    active = cfg if isinstance(cfg, Rule) else rule(cfg, list(rows.columns))
    n = len(rows)
    decision = np.full(n, "keep", dtype=object)
    reason = np.full(n, OK, dtype=object)
    rejected = {family: np.zeros(n, dtype=bool) for family in FAMILIES}
    uncertain = np.zeros(n, dtype=bool)
    for column, bar in active.bars.items():
        values = np.nan_to_num(pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype="float64"), nan=-1.0)
        rejected[str(family_of(column))] |= values > bar.reject
        uncertain |= values > bar.review
    decision[uncertain], reason[uncertain] = "review", "uncertain"
    unlooked = tiles_unlooked(rows, active) & ~uncertain
    decision[unlooked], reason[unlooked] = "review", TILES_SKIPPED
    for family in reversed(FAMILIES):  # the strongest evidence is written last, so it names the reason
        hit = rejected[family]
        decision[hit], reason[hit] = "reject", REASON[family]
    return decision, reason


TILES_SKIPPED = "tiles_skipped"


def tiles_unlooked(rows: pd.DataFrame, active: Rule) -> np.ndarray:
    """Rows whose tiles detect.tile_policy=auto skipped because a full-view column reached detect.tile_decisive
    (`*_tiles_decided_by` names it), under a rule that could act on those tiles: unless some column rejects the
    row (`decide` writes rejections last), the tiles might have changed the decision, so a person looks. A rule
    that never acts on the tiles (pass_v1, a tiles bar of 1.0) never needs them."""
    unlooked = np.zeros(len(rows), dtype=bool)
    for by in (c for c in rows.columns if c.endswith("_tiles_decided_by")):
        tiles = active.bars.get(by.removesuffix("_decided_by") + "_max")
        if tiles is not None and min(tiles.reject, tiles.review) < NEVER:
            unlooked |= rows[by].notna().to_numpy(dtype=bool)
    return unlooked


def family_scores(rows: pd.DataFrame) -> pd.DataFrame:
    """Per family, the max over its columns (NaN where none ran): for display and sorting, not for deciding."""
    out = {}
    for family in FAMILIES:
        columns = [c for c in rows.columns if family_of(c) == family]
        values = rows[columns].astype("float64").max(axis=1, skipna=True) if columns else np.nan
        out[family] = pd.Series(values, index=rows.index, dtype="float64")
    return pd.DataFrame(out, index=rows.index)
