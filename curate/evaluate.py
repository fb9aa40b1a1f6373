"""`python -m curate.evaluate images=DIR labels=CSV [out=FILE.json] [pipeline=NAME] [overrides…]`

Runs detect + decide on a labelled folder (labels.csv: file relative to DIR, label human|no_human, category)
and prints recall on human images, the false-removal rate on no_human images — overall, per category and
per detector — and the files missed. A human image counts as caught when the decision is not "keep" (rejected,
or sent to review: neither is released); a no_human image counts as falsely removed only when rejected (a
reviewer keeps one sent to review), and the images sent to review are counted apart: the review load.

The JSON (`out=`) also records what was measured: the evaluation set's name (the images folder's) and size, the
models exactly as run (registry names with the sha256 of the weights on disk; CLIP model and pretrained tag), the
detect settings that change scores and the thresholds. A data card given it (`release.evaluation`) states these
figures and warns where its release ran something else.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from curate.calibration import category_rates, per_column
from curate.config import DETECTOR_FAMILIES, ConfigError, CurateConfig
from curate.configload import load_config
from curate.detect.decide import decide, rule
from curate.detect.decoding import DECODE_ERRORS, decode
from curate.stages.detect import Scorer, score_isolated

# The detect settings that change a model's scores (not only its speed): the card compares them with its own.
SCORE_SETTINGS = ("face_max_side", "person_tiles", "person_tile_min_side", "person_tiles_skip")


LABELS = ("human", "no_human")


def read_labels(path: Path) -> pd.DataFrame:
    """labels.csv (file, label human|no_human, category); a missing column or another label is refused, naming
    the rows (a typo such as "humans" would otherwise count as an image without people)."""
    labels = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"file", "label", "category"} - set(labels.columns)
    if missing:
        raise ConfigError(f"{path} lacks columns {sorted(missing)}")
    bad = np.flatnonzero(~labels["label"].isin(LABELS).to_numpy())
    if len(bad):  # line numbers of the file: its header is line 1
        shown = ", ".join(f"line {i + 2}: {labels['label'].iloc[i]!r}" for i in bad[:5])
        raise ConfigError(f"{path}: label must be human or no_human ({len(bad)} row(s) are not: {shown})")
    return labels


def score_folder(cfg: CurateConfig, images: Path, labels: pd.DataFrame) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """The labelled images with every detector's scores, and the images that could not be read or decoded
    or that a detector failed on (file and why): those are left out of the figures and listed, never scored as
    "nothing found"."""
    scorer = Scorer(cfg)
    columns: dict[str, list[Any]] = {}
    readable: list[int] = []
    unreadable: list[dict[str, str]] = []
    failed: set[int] = set()  # positions among the readable images whose scoring failed
    size = cfg.detect.batch_size
    # Minutes on a CPU: show how far it got (on stderr, so stdout stays the report; off when not a terminal).
    with tqdm(total=len(labels), desc="evaluate", unit="image", file=sys.stderr, disable=None) as bar:
        for start in range(0, len(labels), size):
            batch: list[Any] = []
            for index, name in enumerate(labels["file"].iloc[start : start + size], start):
                try:
                    batch.append(decode((images / name).read_bytes()))
                except DECODE_ERRORS as err:  # OSError covers a missing file
                    unreadable.append({"file": name, "error": f"{type(err).__name__}: {err}"[:300]})
                    continue
                readable.append(index)
            first = len(readable) - len(batch)
            # One image a detector cannot score costs only its own row, as in the detect stage: it is left out
            # and named with the readable ones that failed, never scored as "nothing found".
            scored, faults = score_isolated(scorer, batch) if batch else ({}, [])
            for key, values in scored.items():
                columns.setdefault(key, []).extend(values)
            for offset, fault in enumerate(faults):
                if fault is not None:
                    failed.add(first + offset)
                    name = labels["file"].iloc[readable[first + offset]]
                    unreadable.append({"file": name, "error": f"{fault[0]}: {fault[1]}"[:300]})
            bar.update(min(size, len(labels) - start))
    kept = labels.iloc[readable].reset_index(drop=True)
    found = pd.concat([kept, pd.DataFrame(columns)], axis=1)
    return found.drop(index=sorted(failed)).reset_index(drop=True), unreadable


def rate(hits: pd.Series) -> float | None:
    return round(float(hits.mean()), 4) if len(hits) else None


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def summarise(scored: pd.DataFrame, cfg: CurateConfig) -> dict[str, Any]:
    active = rule(cfg.decide, list(scored.columns))
    decision, reason = decide(scored, active)
    # Recall counts an image sent to review as caught (it is not released unless a reviewer keeps it); the
    # false-removal rate counts only the images rejected outright (a reviewer keeps the others), and the review
    # load says how many images the band hands to people: the figures `curate calibrate` reports.
    scored = scored.assign(decision=decision, reason=reason, removed=decision != "keep")
    human = scored["label"] == "human"
    rejected = scored["decision"] == "reject"
    reviewed = scored["decision"] == "review"
    bars = {column: bar.reject for column, bar in active.bars.items()}
    per_detector: dict[str, Any] = {}
    for column, (alone, only) in per_column(scored[list(bars)], human.to_numpy(), bars).items():
        per_detector[column.removesuffix("_max")] = {
            "threshold": bars[column],
            "recall": _rounded(alone.recall),
            "false_removal_rate": _rounded(alone.false_removal),
            "only_it_catches": int(only.sum()),
            "only_it_catches_files": scored.loc[only, "file"].tolist(),
        }
    per_category = category_rates(scored, np.where(human, scored["removed"], rejected))
    missed = scored[human & ~scored["removed"]]
    wrongly = scored[~human & rejected]
    return {
        "recall": rate(scored.loc[human, "removed"]),
        "recall_without_review": rate(scored.loc[human, "decision"] == "reject"),
        "false_removal_rate": rate(rejected[~human]),
        "review": {
            "images": int(reviewed.sum()),
            "share": rate(reviewed),
            "human": int((reviewed & human).sum()),
            "no_human": int((reviewed & ~human).sum()),
        },
        "n_human": int(human.sum()),
        "n_no_human": int((~human).sum()),
        "per_category": per_category,
        "per_detector": per_detector,
        "missed": [{"file": r.file, "category": r.category} for r in missed.itertuples()],
        "false_removals": [{"file": r.file, "category": r.category, "reason": r.reason} for r in wrongly.itertuples()],
        "decide": active.as_json(),
        "detectors": {**{f: getattr(cfg.detect, f) for f in DETECTOR_FAMILIES}, "clip": cfg.detect.clip_model},
        "tiles": tiles_looked(scored, cfg),
    }


def tiles_looked(scored: pd.DataFrame, cfg: CurateConfig) -> dict[str, Any]:
    """How each tiling detector looked at its tiles (detect.tile_policy): under `auto` its tiles' figures above
    count only the images whose tiles it looked at."""
    found: dict[str, Any] = {"policy": cfg.detect.tile_policy}
    for column in (c for c in scored.columns if c.endswith("_tiles_looked")):
        prefix = column.removesuffix("_tiles_looked")
        looked = pd.to_numeric(scored[column], errors="coerce")
        by = scored.get(f"{prefix}_tiles_decided_by")
        found[prefix] = {
            "tiles_per_image": _rounded(float(looked.mean())) if looked.notna().any() else None,
            "decided_without_tiles": int(by.notna().sum()) if by is not None else 0,
            "no_tile_looked": int((looked == 0).sum()),
        }
    return found


def provenance(cfg: CurateConfig, images: Path, labels: pd.DataFrame) -> dict[str, Any]:
    """What was measured: the set, the models as run (weights' sha256 on disk) and the settings that change scores."""
    from curate.models.registry import weights_digest

    def weights(names: list[str]) -> list[dict[str, str]]:
        # verified against its pin (or recorded digest) before it is named here; a model of several files (the
        # hands' palm and landmark networks) has their digests joined by "+", as its identity states them
        return [{"name": name, "sha256": weights_digest(name, cfg.models)} for name in names]

    clip = {"model": cfg.detect.clip_model, "pretrained": cfg.detect.clip_pretrained} if cfg.detect.clip_model else None
    return {
        "evaluation_set": {"name": images.resolve().name, "size": len(labels)},
        "models": {**{f: weights(getattr(cfg.detect, f)) for f in DETECTOR_FAMILIES}, "clip": clip},
        "detect": {key: getattr(cfg.detect, key) for key in SCORE_SETTINGS},
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"recall (human, n={result['n_human']}): {result['recall']}",
        f"false-removal rate (no_human, n={result['n_no_human']}): {result['false_removal_rate']}",
        f"sent to review: {result['review']['images']} ({result['review']['human']} human, "
        f"{result['review']['no_human']} no_human; recall without them {result['recall_without_review']})",
        "",
        f"{'category':<34} {'n':>4} {'recall / false-removal':>24}",
    ]
    for name, values in result["per_category"].items():
        value = values.get("recall", values.get("false_removal_rate"))
        lines.append(f"{name:<34} {values['n']:>4} {value!s:>24}")
    lines += ["", f"{'model (alone)':<34} {'threshold':>9} {'recall':>8} {'false-removal':>14} {'only it':>8}"]
    for name, values in result["per_detector"].items():
        lines.append(
            f"{name:<34} {values['threshold']:>9} {values['recall']!s:>8} {values['false_removal_rate']!s:>14} "
            f"{values.get('only_it_catches', '-')!s:>8}"
        )
    lines += ["", "missed: " + (", ".join(m["file"] for m in result["missed"]) or "none")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    own = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.split("=", 1)[0] in ("images", "labels", "out")}
    overrides = [a for a in args if a.split("=", 1)[0] not in own]
    if "images" not in own:
        print("usage: python -m curate.evaluate images=DIR [labels=CSV] [out=FILE.json] [overrides…]", file=sys.stderr)
        return 2
    images = Path(own["images"])
    labels_path = Path(own.get("labels", images / "labels.csv"))
    try:
        # stage=detect: the config's detectors and thresholds, without the run's ingest inputs (run.dir=RUN
        # evaluates a run's remembered detectors; nothing is written to it)
        cfg = load_config([*overrides, "stage=detect"])
        # One process does all the work here: let torch use every core.
        cfg = replace(cfg, detect=replace(cfg.detect, torch_threads=cfg.detect.torch_threads or os.cpu_count() or 1))
        labels = read_labels(labels_path)
        from curate.models.registry import check_available

        check_available(cfg)
    except (ConfigError, FileNotFoundError) as err:
        print(f"curate.evaluate: {err}", file=sys.stderr)
        return 2
    scored, unreadable = score_folder(cfg, images, labels)
    result = {**summarise(scored, cfg), **provenance(cfg, images, labels), "unreadable": unreadable}
    print(report(result))
    for entry in unreadable:
        print(f"left out, unreadable: {entry['file']} ({entry['error']})", file=sys.stderr)
    if "out" in own:
        Path(own["out"]).write_text(json.dumps(result, indent=2, sort_keys=True, default=_plain) + "\n")
    return 0


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


if __name__ == "__main__":
    sys.exit(main())
