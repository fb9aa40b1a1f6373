"""`curate calibrate images=DIR [labels=CSV] out=PRESET.yaml [target_recall=0.97] [review_recall=R]
[max_false_removal=F] [folds=5] [seed=0] [name=NAME] [scores=FILE.parquet] [pipeline=NAME] [detect.* overrides]`

`curate calibrate run.dir=RUN out=PRESET.yaml [target_recall=...]`

Finds one bar per score column (per model: `face_<name>_max`, `person_<name>_max`, `person_<name>_tiles_max`,
`hand_<name>_max`, `clip_human_prob`) for the lowest false-removal rate at the target recall under the OR rule
(any column above its bar removes the image), and writes them as a decision preset: use it with
`decide.preset=PRESET.yaml`.

With `review_recall=R` (from target_recall up to 1; none by default) it also searches a review band: one review bar
per column, at most its reject bar, such that the images rejected or sent to review hold R of the human images,
sending as few images without humans to review as it finds. The preset then carries the review bars, and its
provenance the band's recall (reviews counted as caught) and review load, in-sample and k-fold.

From a labelled folder (labels.csv as for `curate evaluate`: file, label human|no_human, category) it runs detect
once and keeps the scores (`scores=`, default `<out>.scores.parquet`, with a `.json` beside it naming the
detectors and labels they came from). The next calibration with the same detectors and labels reads them back:
changing the target never re-runs a model. It looks at every tile (`detect.tile_policy=always`): a bar is searched
over every image's score, not over those `auto` would look at.

From a run (`run.dir=RUN`) it reads the scores detect stored and labels them with the review ledger: `remove` is
a human, `keep` is no human; `unsure`, and images nobody reviewed, are left out. Every review round can so
tighten the bars for the models the run actually used.

The preset records its provenance: the models (with their weights' sha256), the calibration set (name, images,
sha256 of its labels), the target, the measured recall and false-removal rate with 95 % Wilson intervals, both
in-sample and as a stratified k-fold estimate (bars searched on the other folds, so closer to what unseen images
will see), a per-category table, the curate version and the date; each bar names the set it was calibrated on.
When the bars found miss the target recall (or the review recall) or exceed `max_false_removal` the exit code is 1
and they go to `<out>.missed.yaml` instead, leaving `out` as it was.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import curate
from curate.calibration import (
    BandRates,
    Rates,
    category_rates,
    kfold,
    per_column,
    rates,
    removed,
    review_rates,
    search,
    search_review,
)
from curate.config import ConfigError, CurateConfig
from curate.detect.bars import NEVER, Bar, family_of, score_columns
from curate.detect.presets import Preset, save_preset
from curate.io.atomic import sha256_file

OWN_KEYS = (
    "images",
    "labels",
    "out",
    "target_recall",
    "review_recall",
    "max_false_removal",
    "folds",
    "seed",
    "name",
    "scores",
)
USAGE = (
    "usage: curate calibrate (images=DIR [labels=CSV] | run.dir=RUN) out=PRESET.yaml [target_recall=0.97] "
    "[review_recall=R] ..."
)


def rates_json(found: Rates) -> dict[str, Any]:
    return {
        "recall": round(found.recall, 4),
        "recall_ci": [round(v, 4) for v in found.recall_ci],
        "false_removal": round(found.false_removal, 4),
        "false_removal_ci": [round(v, 4) for v in found.false_removal_ci],
        "humans": found.humans,
        "others": found.others,
    }


def band_json(found: BandRates) -> dict[str, Any]:
    return {
        "recall_with_review": round(found.recall, 4),
        "recall_with_review_ci": [round(v, 4) for v in found.recall_ci],
        "review_images": found.reviewed,
        "review_load": round(found.review_load, 4),
        "review_load_ci": [round(v, 4) for v in found.review_load_ci],
        "humans_to_review": found.reviewed_humans,
        "others_to_review": found.reviewed_others,
        "images": found.images,
    }


def per_model(frame: pd.DataFrame, human: np.ndarray, bars: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Each column alone at its bar, and the human images only it catches."""
    return {
        column: {
            "bar": round(bars[column], 6),
            "recall_alone": round(alone.recall, 4),
            "false_removal_alone": round(alone.false_removal, 4),
            "only_it_catches": frame.loc[only, "file"].tolist(),
        }
        for column, (alone, only) in per_column(frame[list(bars)], human, bars).items()
    }


def calibrate(
    frame: pd.DataFrame, target: float, folds: int, seed: int, review_recall: float | None = None
) -> dict[str, Any]:
    """The bars, and what they measure in-sample and held out; with `review_recall`, the review band too."""
    columns = score_columns(frame.columns)
    if not columns:
        raise ConfigError("no score columns to calibrate: did any detector run?")
    human = (frame["label"] == "human").to_numpy()
    scores = frame[columns].astype("float64")
    bars = search(scores, human, target)
    hit = removed(scores, bars)
    held_out = kfold(scores, human, target, folds=folds, seed=seed, review_recall=review_recall)
    result = {
        "bars": bars,
        "in_sample": rates(scores, human, bars),
        "kfold": held_out.rates,
        "per_category": category_rates(frame, hit),
        "per_model": per_model(frame, human, bars),
        "missed": frame.loc[human & ~hit, "file"].tolist(),
    }
    if review_recall is not None:
        review = search_review(scores, human, bars, review_recall)
        result |= {
            "review_recall": review_recall,
            "review_bars": review,
            "band_in_sample": review_rates(scores, human, bars, review),
            "band_kfold": held_out.band,
        }
    return result


def from_folder(cfg: CurateConfig, images: Path, labels_path: Path, scores_path: Path) -> tuple[pd.DataFrame, dict]:
    """The labelled folder's scores: read back when the same detectors scored the same labels, else detect."""
    from curate.evaluate import provenance, read_labels, score_folder
    from curate.stages.detect import DetectStage

    labels = read_labels(labels_path)
    # What the scores are made of: the detectors as identified for detect's fingerprint, detect's code version,
    # the labels, and every listed image's name, size and mtime (a changed photo is scored again).
    listing = [(name, *_size_and_mtime(images / name)) for name in labels["file"]]
    made_of = {
        "detect": DetectStage(cfg).fingerprint_config(),
        "detect_version": DetectStage.version,
        "curate_version": curate.__version__,
        "labels_sha256": sha256_file(labels_path),
        "images": listing,
    }
    stamp_path = scores_path.with_suffix(".json")
    stamp = json.loads(stamp_path.read_text()) if stamp_path.exists() else {}
    if scores_path.exists() and stamp.get("made_of") == json.loads(json.dumps(made_of, default=str)):
        print(f"curate calibrate: reading the scores back from {scores_path} (same detectors, same labels)")
        scored, unreadable = pd.read_parquet(scores_path), stamp.get("unreadable", [])
    else:
        from curate.models.registry import check_available

        check_available(cfg)
        scored, unreadable = score_folder(cfg, images, labels)
        keep = [c for c in scored.columns if c in ("file", "label", "category") or family_of(c)]
        scores_path.parent.mkdir(parents=True, exist_ok=True)
        scored[keep].to_parquet(scores_path, index=False)
        stamp_path.write_text(json.dumps({"made_of": made_of, "unreadable": unreadable}, default=str) + "\n")
    for entry in unreadable:
        print(f"curate calibrate: left out, unreadable: {entry['file']} ({entry['error']})", file=sys.stderr)
    described = provenance(cfg, images, labels)
    source = {
        "name": described["evaluation_set"]["name"],
        "images": len(scored),
        "unreadable": [entry["file"] for entry in unreadable],
        "labels_sha256": made_of["labels_sha256"],
        "models": described["models"],
        "detect": described["detect"],
    }
    return scored, source


def _size_and_mtime(path: Path) -> tuple[int | None, int | None]:
    try:
        found = path.stat()
    except OSError:  # listed but absent: score_folder leaves it out as unreadable
        return None, None
    return found.st_size, found.st_mtime_ns


def from_run(cfg: CurateConfig) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """A run's stored scores, labelled by its review ledger (remove: human, keep: no human), and the scores of
    the images nobody reviewed (for `unseen_now_kept`), read once."""
    from curate.io.atomic import read_columns
    from curate.review import ledger
    from curate.rundir import RunDir

    run = RunDir(Path(cfg.run.dir))
    frames = [
        read_columns(run.part("ingest", s), lambda n: n == "image_id").join(
            read_columns(run.part("detect", s), lambda n: family_of(n) is not None)
        )
        for s in range(run.num_shards())
        if run.part("detect", s).exists()
    ]
    if not frames:
        raise ConfigError(f"{run.root} has no detect scores yet: run it up to stage=detect first")
    scores = pd.concat(frames, ignore_index=True)
    decided = ledger.latest(run.root)
    label = decided["decision"].map({"remove": "human", "keep": "no_human"}).dropna()
    frame = scores[scores["image_id"].isin(label.index)].reset_index(drop=True)
    unreviewed = scores[~scores["image_id"].isin(decided.index)].reset_index(drop=True)
    frame.insert(0, "label", frame["image_id"].map(label).to_numpy())
    frame.insert(0, "category", "reviewed")
    frame.insert(0, "file", frame.pop("image_id"))
    if frame["label"].nunique() < 2:
        raise ConfigError(
            f"the review ledger of {run.root} labels {len(frame)} scored image(s), not both kinds: calibration needs "
            "images reviewers removed (humans) and images they kept (no humans)"
        )
    weights = json.loads(run.detect_weights.read_text()) if run.detect_weights.exists() else None
    from curate.evaluate import SCORE_SETTINGS

    source = {
        "name": f"review ledger of {run.root.name}",
        "images": len(frame),
        "labels_sha256": sha256_file(ledger.ledger_path(run.root)),
        "models": weights or "unknown (the run recorded no weights' digests)",
        # the settings the scores were made with: a release with other ones is refused this preset
        "detect": {key: getattr(cfg.detect, key) for key in SCORE_SETTINGS},
    }
    return frame, source, unreviewed


def unseen_now_kept(
    run_root: Path, unreviewed: pd.DataFrame, bars: dict[str, float], review: dict[str, float] | None
) -> int | None:
    """How many of the run's `unreviewed` images (nobody reviewed them) the rule it runs now rejects or sends to
    review, and these bars would keep (release). A ledger labels only what reviewers saw (flagged and borderline
    images), so bars fitted to it can rise above images it never showed them. None: the run's own rule cannot be
    built (its config is refused as it stands)."""
    from curate.detect.decide import decide, run_rule
    from curate.runconfig import load_run_config

    try:
        current = run_rule(load_run_config(run_root))
    except ConfigError:
        return None
    if unreviewed.empty:
        return 0
    flagged = decide(unreviewed, current)[0] != "keep"
    values = unreviewed[list(bars)].astype("float64")
    kept = ~removed(values, bars)
    if review is not None:
        kept &= ~removed(values, review)
    return int((flagged & kept).sum())


# What a preset records of the set it was calibrated on (`unreviewed_now_kept`: from a run's ledger only).
SET_KEYS = ("name", "images", "labels_sha256", "unreadable", "unreviewed_now_kept")


def preset_of(name: str, result: dict[str, Any], source: dict, target: float, folds: int) -> Preset:
    origin = f"curate calibrate on {source['name']} ({source['images']} images), target recall {target}"
    review = result.get("review_bars")
    if review is not None:
        origin += f", review recall {result['review_recall']}"
    bars = {
        c: Bar(reject=float(b), review=float(review[c]) if review else NEVER, calibrated=True, source=origin)
        for c, b in result["bars"].items()
    }
    measured: dict[str, Any] = {
        "in_sample": rates_json(result["in_sample"]),
        "kfold": {"folds": folds, **rates_json(result["kfold"])},
    }
    goals: dict[str, Any] = {"target_recall": target}
    if review is not None:
        goals["review_recall"] = result["review_recall"]
        measured["with_review"] = {
            "in_sample": band_json(result["band_in_sample"]),
            "kfold": {"folds": folds, **band_json(result["band_kfold"])},
        }
    return Preset(
        name=name,
        bars=bars,
        description=(
            f"Calibrated by `curate calibrate` on {source['name']} ({source['images']} images) for recall >= {target} "
            "under the OR rule. In-sample figures are optimistic; the k-fold ones are the estimate to quote."
        ),
        provenance={
            "method": "curate calibrate",
            "calibration_set": {k: source[k] for k in SET_KEYS if k in source},
            "models": source.get("models"),
            "detect": source.get("detect"),
            **goals,
            "measured": measured,
            "per_category": result["per_category"],
            "per_model": result["per_model"],
            "curate_version": curate.__version__,
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        },
    )


def report(result: dict[str, Any], target: float) -> str:
    def line(label: str, found: Rates) -> str:
        (r0, r1), (f0, f1) = found.recall_ci, found.false_removal_ci
        return (
            f"{label:<10} recall {found.recall:.3f} ({r0:.3f}-{r1:.3f}, {found.caught}/{found.humans})   false removal "
            f"{found.false_removal:.3f} ({f0:.3f}-{f1:.3f}, {found.removed_others}/{found.others})"
        )

    def band_line(label: str, found: BandRates) -> str:
        (r0, r1), (l0, l1) = found.recall_ci, found.review_load_ci
        return (
            f"{label:<10} recall with review {found.recall:.3f} ({r0:.3f}-{r1:.3f}, {found.caught}/{found.humans})   "
            f"review load {found.review_load:.3f} ({l0:.3f}-{l1:.3f}, {found.reviewed}/{found.images} images: "
            f"{found.reviewed_humans} human, {found.reviewed_others} not)"
        )

    goal = f"target recall {target}" + (f", review recall {result['review_recall']}" if "review_bars" in result else "")
    lines = [f"{goal}; 95 % Wilson intervals in brackets", line("in-sample", result["in_sample"]),
             line("k-fold", result["kfold"])]  # fmt: skip
    if "review_bars" in result:
        lines += [band_line("in-sample", result["band_in_sample"]), band_line("k-fold", result["band_kfold"])]
    lines += ["", f"{'score column':<36} {'bar':>8} {'recall':>7} {'false rm':>9}  only it catches"]
    for column, values in result["per_model"].items():
        only = ", ".join(values["only_it_catches"]) or "-"
        lines.append(
            f"{column:<36} {values['bar']:>8.4f} {values['recall_alone']:>7.3f} {values['false_removal_alone']:>9.3f}"
            f"  {only}"
        )
    lines += ["", f"{'category':<40} {'n':>4} {'removed':>8}"]
    for category, values in result["per_category"].items():
        share = values.get("recall", values.get("false_removal_rate"))
        lines.append(f"{category:<40} {values['n']:>4} {share:>8.3f}")
    lines += ["", "missed: " + (", ".join(result["missed"]) or "none")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if any("=" not in a for a in args):
        print(USAGE + "\n(every argument is key=value)", file=sys.stderr)
        return 2
    own = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.split("=", 1)[0] in OWN_KEYS}
    overrides = [a for a in args if a.split("=", 1)[0] not in own]
    from_a_run = any(a.startswith("run.dir=") for a in overrides)
    if "out" not in own or ("images" in own) == from_a_run:
        print(USAGE, file=sys.stderr)
        return 2
    from curate.configload import load_config

    out = Path(own["out"])
    try:
        target = float(own.get("target_recall", 0.97))
        limit = float(own["max_false_removal"]) if "max_false_removal" in own else None
        folds, seed = int(own.get("folds", 5)), int(own.get("seed", 0))
        review_recall = float(own["review_recall"]) if "review_recall" in own else None
        if not 0.0 < target <= 1.0 or folds < 2:
            raise ConfigError("target_recall must lie in (0, 1] and folds must be >= 2")
        if review_recall is not None and not target <= review_recall <= 1.0:
            raise ConfigError(f"review_recall must lie in [target_recall, 1] = [{target}, 1], not {review_recall}")
        # stage=detect: the detectors and their settings, not the run's inputs (nothing is written to a run)
        tiles = [a.split("=", 1)[1] for a in overrides if a.split("=", 1)[0] == "detect.tile_policy"]
        if not from_a_run and tiles and tiles[-1] == "auto":
            raise ConfigError(
                "detect.tile_policy=auto looks at the tiles only where the full view leaves the decision open, so a "
                "bar searched over its tile scores would be searched over some images only: calibrate looks at every "
                "tile (tile_policy=always, its default); drop detect.tile_policy=auto"
            )
        policy = [] if from_a_run or tiles else ["detect.tile_policy=always"]
        cfg = load_config([*overrides, *policy, "stage=detect", "decide.preset=custom"])
        if from_a_run:
            frame, source, unreviewed = from_run(cfg)
            if cfg.detect.tile_policy == "auto" and any(c.endswith("_tiles_max") for c in frame.columns):
                print(
                    "curate calibrate: warning: the run looked at tiles only where the full view left the decision "
                    "open (detect.tile_policy=auto): the tiles' bars are searched over those images alone",
                    file=sys.stderr,
                )
        else:
            images = Path(own["images"])
            scores = Path(own.get("scores", out.with_suffix(".scores.parquet")))
            # One process does all the work here: let torch use every core.
            threads = cfg.detect.torch_threads or os.cpu_count() or 1
            cfg = replace(cfg, detect=replace(cfg.detect, torch_threads=threads))
            frame, source = from_folder(cfg, images, Path(own.get("labels", images / "labels.csv")), scores)
        result = calibrate(frame, target, folds, seed, review_recall)
    except (ConfigError, FileNotFoundError) as err:
        print(f"curate calibrate: {err}", file=sys.stderr)
        return 2
    if from_a_run:
        unseen = unseen_now_kept(Path(cfg.run.dir), unreviewed, result["bars"], result.get("review_bars"))
        source["unreviewed_now_kept"] = "unknown" if unseen is None else unseen
    preset = preset_of(own.get("name", out.stem), result, source, target, folds)
    print(report(result, target))
    if from_a_run and source["unreviewed_now_kept"]:
        print(
            f"\ncurate calibrate: warning: these bars would keep {source['unreviewed_now_kept']} image(s) that the "
            "run's rule now rejects or sends to review and that nobody reviewed; the ledger saw only what reviewers "
            "saw. Review them (stage=review) before releasing with this preset.",
            file=sys.stderr,
        )
    kept_target = result["in_sample"].recall >= target - 1e-12
    # A review band that cannot reach its recall misses the goal as the reject bars do.
    kept_review = review_recall is None or result["band_in_sample"].recall >= review_recall - 1e-12
    if not (kept_target and kept_review) or (limit is not None and result["in_sample"].false_removal > limit):
        # Never over a working preset a config may point at: the bars that missed go beside it, to look at.
        missed = out.with_name(out.stem + ".missed.yaml")
        save_preset(missed, preset)
        goal = f"target recall {target}" + ("" if review_recall is None else f", review recall {review_recall}")
        print(f"\ncurate calibrate: the bars found miss the goal ({goal}, max false removal {limit}); "
              f"they are in {missed}, {out} is left as it was")  # fmt: skip
        return 1
    save_preset(out, preset)
    print(f"\nwrote {out}: use it with decide.preset={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
