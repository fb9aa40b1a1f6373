"""Decision presets as YAML files: one bar per score column, and where each bar and the whole came from.

Shipped presets live in `curate/presets/<name>.yaml` (`decide.preset=strict`); a user's anywhere
(`decide.preset=path/to/preset.yaml`). `curate calibrate` writes them. A preset's `provenance` is free-form but
written by `curate calibrate` with: the models and their weights' sha256, the calibration set (name, images,
sha256 of its labels), the target recall, the measured recall and false-removal rate with 95 % intervals
(in-sample and k-fold), the curate version and the date. Release and the data card cite it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from curate.config import ConfigError
from curate.detect.bars import NEVER, Bar, family_of

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "presets"


@dataclass(frozen=True)
class Preset:
    name: str
    bars: dict[str, Bar]
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)


def shipped() -> list[str]:
    """The names of the presets that ship with curate."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))


def preset_path(value: str) -> Path:
    """A shipped preset's file, or the path given."""
    return SHIPPED_DIR / f"{value}.yaml" if value in shipped() else Path(value)


def load_preset(value: str) -> Preset:
    """Read and check a preset (a shipped name or a path); ConfigError says what is wrong and where."""
    path = preset_path(value)
    if not path.is_file():
        raise ConfigError(f"decide.preset={value}: no such preset (shipped: {', '.join(shipped())}) or file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"decide.preset={value}: {path} is not a readable YAML file: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("bars"), dict) or not data["bars"]:
        raise ConfigError(f"decide.preset={value}: {path} needs a `bars:` mapping of score column -> bar")
    bars, problems = {}, []
    for column, entry in data["bars"].items():
        if family_of(str(column)) is None:
            problems.append(f"{column}: not a score column (face_*_max, person_*_max, hand_*_max, clip_human_prob)")
            continue
        entry = {"reject": entry} if isinstance(entry, (int, float)) and not isinstance(entry, bool) else entry
        if not isinstance(entry, dict) or "reject" not in entry:
            problems.append(f"{column}: needs at least `reject: <0..1>`")
            continue
        unknown = set(entry) - {"reject", "review", "calibrated", "source"}
        if unknown:
            problems.append(f"{column}: unknown keys {sorted(unknown)}")
            continue
        reject, review, calibrated = entry["reject"], entry.get("review", NEVER), entry.get("calibrated", False)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (reject, review)):
            problems.append(f"{column}: reject and review must be numbers")
            continue
        if not isinstance(calibrated, bool):  # "false" in quotes would read as true
            problems.append(f"{column}: calibrated must be true or false")
            continue
        if not (0.0 <= reject <= 1.0 and 0.0 <= review <= 1.0):
            problems.append(f"{column}: reject and review must lie within 0..1")
        bars[str(column)] = Bar(float(reject), float(review), calibrated, str(entry.get("source", "")))
    if problems:
        raise ConfigError(f"decide.preset={value} ({path}): " + "; ".join(problems))
    return Preset(
        name=str(data.get("name") or path.stem),
        bars=bars,
        description=str(data.get("description", "")),
        provenance=dict(data.get("provenance") or {}),
    )


def save_preset(path: Path, preset: Preset) -> None:
    """Write a preset as YAML, in a stable order (bars by column)."""
    data = {
        "name": preset.name,
        "description": preset.description,
        "bars": {c: asdict(b) for c, b in sorted(preset.bars.items())},
        "provenance": preset.provenance,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110), encoding="utf-8")
