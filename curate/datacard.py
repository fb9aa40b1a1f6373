"""The data card: what the release holds and how it was made, stating only what the data shows and saying what
is not known.

Only deterministic facts go in (no wall times, no paths of the run directory or the machine), so the same inputs
and the same installed software (whose versions it lists) give a byte-identical card. Counts are gathered shard
by shard (`Tally.add`): the card never needs the whole manifest in memory.
"""

from __future__ import annotations

import json
import platform
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import yaml

from curate import __version__
from curate.config import DETECTOR_FAMILIES, CurateConfig, DetectConfig, output_settings
from curate.detect.decide import FAMILIES, Rule, family_of, run_rule
from curate.funnel import FunnelCounter, count_rows, describe_reasons, funnel_rows
from curate.io.atomic import read_json
from curate.manifest import tiles_scored
from curate.review.audit import AuditEstimate, estimate, sample_path
from curate.rundir import RunDir
from curate.schema import KEPT

# The stages whose own status/reason every row carries, in the manifest's order ("select" is release's selection).
STAGES = ("ingest", "license", "fetch", "detect", "dedup", "review", "recheck", "select")
# Every library whose code produces the release's scores or bytes (decoding, detectors, hashes, files).
SOFTWARE = (
    "dask",
    "distributed",
    "pandas",
    "pyarrow",
    "numpy",
    "pillow",
    "torch",
    "torchvision",
    "open_clip_torch",
    "onnxruntime",
    "faiss-cpu",
    "requests",
    "flickrapi",
    "hydra-core",
)
OVERRIDES_LISTED = 50
UNKNOWN_LICENCE = "unknown"
# What the release writes each attribution field as (pass_metadata.csv).
ATTRIBUTION = (
    ("owner_name", "an owner name (`unickname`)"),
    ("license_attribution_url", "a licence URL (`license_url`)"),
    ("page_url", "a photo page URL (`photo_page_url`)"),
)


class Override(NamedTuple):
    """An image the human filter rejected or sent to review that a reviewer kept."""

    image_id: str
    verdict: str  # the filter's: "reject: face", "review: uncertain"
    reviewer: str
    date: str
    outcome: str  # what became of it in this release: "kept", "rejected (dedup:exact_duplicate)"


def _text(frame: pd.DataFrame, name: str) -> pd.Series:
    """A string column, or nulls when this manifest predates it."""
    if name not in frame:
        return pd.Series(pd.NA, index=frame.index, dtype="string")
    return frame[name].astype("string")


def _count(column: pd.Series) -> Counter[Any]:
    """Rows per value of one column (nulls left out)."""
    return Counter({key[0]: n for key, n in count_rows(column).items()})


def _present(values: pd.Series) -> pd.Series:
    return values.notna() & (values.str.strip() != "")


@dataclass
class Tally:
    """Counts gathered shard by shard from the release manifest's rows."""

    funnel: FunnelCounter = field(default_factory=FunnelCounter)
    outcomes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    reached_fetch: int = 0
    licences: Counter[tuple[str, bool]] = field(default_factory=Counter)  # released: (code | unknown, assumed)
    attribution: Counter[str] = field(default_factory=Counter)  # released images holding each ATTRIBUTION field
    formats: Counter[str] = field(default_factory=Counter)
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)
    dedup_groups: int = 0
    reviews: Counter[str] = field(default_factory=Counter)  # the latest review decision of every candidate
    overrides: int = 0
    overridden: list[Override] = field(default_factory=list)  # the first OVERRIDES_LISTED by image_id

    @property
    def candidates(self) -> int:
        return self.funnel.total

    @property
    def released(self) -> int:
        return self.funnel.released

    def add(self, frame: pd.DataFrame) -> None:
        self.funnel.add(frame)
        kept = frame[frame["status"] == KEPT]
        self.reached_fetch += int(frame["fetch_status"].notna().sum())
        for stage in STAGES:
            status, reason = _text(frame, f"{stage}_status"), _text(frame, f"{stage}_reason").fillna("-")
            self.outcomes.update({(stage, *key): n for key, n in count_rows(status, reason).items()})
        self.reviews.update(_count(_text(frame, "review_decision")))
        # a group lives in one shard's rows or across several; its representative's id names it, so count those
        self.dedup_groups += int((frame["dedup_group"] == frame["image_id"]).sum())
        self._released(kept)
        self.decisions.update(count_rows(_text(frame, "decision"), _text(frame, "decision_reason")))
        self._overrides(frame)

    def _released(self, kept: pd.DataFrame) -> None:
        codes = _text(kept, "license_code").fillna(UNKNOWN_LICENCE)
        assumed = kept["license_assumed"].fillna(False).astype(bool) if "license_assumed" in kept else False
        self.licences.update(count_rows(codes, pd.Series(assumed, index=kept.index)))
        for column, _ in ATTRIBUTION:
            self.attribution[column] += int(_present(_text(kept, column)).sum())
        self.formats.update(_count(_text(kept, "format")))

    def _overrides(self, frame: pd.DataFrame) -> None:
        hit = frame["decision"].isin(["reject", "review"]) & _text(frame, "review_decision").eq("keep").fillna(False)
        rows = frame[hit.astype(bool)]
        self.overrides += len(rows)
        for row in rows.itertuples():
            outcome = KEPT if row.status == KEPT else f"{row.status} ({row.reason})"
            timestamp = row.review_timestamp if isinstance(row.review_timestamp, str) else "-"
            self.overridden.append(
                Override(
                    str(row.image_id),
                    f"{row.decision}: {row.decision_reason}",
                    str(row.review_reviewer),
                    timestamp[:10],
                    outcome,
                )
            )
        # only the first ones by id are listed: keep no more than that, whatever the shard order
        self.overridden = sorted(self.overridden)[:OVERRIDES_LISTED]


# --- small pieces ---------------------------------------------------------------------------------------------


def markdown_table(header: tuple[str, ...], rows: Sequence[tuple[object, ...]]) -> str:
    """A Markdown table (the data card's, and the release's sections of it)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _software(cfg: CurateConfig) -> list[tuple[object, ...]]:
    names = list(SOFTWARE)
    # the ResNet-50 RetinaFace comes through this package: name it where it is installed or needed
    if _installed("retina-face") or "retinaface_r50" in cfg.detect.face:
        names.append("retina-face")
    found: list[tuple[object, ...]] = [("python", platform.python_version()), ("curate", __version__)]
    return found + [(name, _installed(name) or "not installed") for name in names]


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def ran_families(cfg: CurateConfig) -> list[str]:
    """The decision families whose scores this release's detectors produced (see curate.detect.decide)."""
    d = cfg.detect
    families = ["face"] if d.face else []
    if d.person:
        tiled = any(tiles_scored("person", name, d) for name in d.person)  # only some detectors can tile
        families += ["person"] + (["person_tiles"] if tiled else [])
    families += ["hand"] if d.hand else []
    return families + (["clip"] if d.clip_model else [])


def _decide_settings(cfg: CurateConfig) -> dict[str, Any]:
    """The bar of every score column the release's detectors wrote, and the preset they come from."""
    return run_rule(cfg).as_json()


def card_config(cfg: CurateConfig) -> dict[str, object]:
    """The settings that shaped the data; where it ran (paths, cluster) is left out, files are named only."""
    fetch = output_settings(cfg.fetch, frozenset({"file_root"}))
    ingest = asdict(cfg.ingest)
    ingest["source"] = cfg.ingest.source.value
    ingest["path"] = Path(cfg.ingest.path).name if cfg.ingest.path else ""
    return {
        "pipeline": Path(cfg.pipeline).name,
        "ingest": ingest,
        "license": asdict(cfg.license),
        "fetch": fetch,
        "detect": output_settings(cfg.detect),
        "decide": _decide_settings(cfg),
        "dedup": {**asdict(cfg.dedup), "references": [r.name for r in cfg.dedup.references]},
        "recheck": output_settings(cfg.recheck),
        "release": {
            "version": cfg.release.version,
            "name": cfg.release.name,
            "owner_cap": cfg.release.owner_cap,
            "target_size": cfg.release.target_size,
            "seed": cfg.release.seed,
            "previous": Path(cfg.release.previous).name if cfg.release.previous else "",
            "evaluation": Path(cfg.release.evaluation).name if cfg.release.evaluation else "",
        },
    }


# --- the sections -----------------------------------------------------------------------------------------------


def _screening_note(cfg: CurateConfig) -> str:
    if not ran_families(cfg):
        return "> **Not screened for people**: every detector was switched off. Do not publish this as human-free."
    return (
        "> Screened by the automated human filter below, and by people where the review section says so. "
        "Automated filters miss people: see the measured performance, the known limitations and the audit below."
    )


def _funnel(tally: Tally) -> list[str]:
    rows: list[tuple[object, ...]] = [
        (row.label, row.remaining, row.stopped if k else "-", describe_reasons(row.reasons))
        for k, row in enumerate(funnel_rows(tally.funnel))
    ]
    return [
        "## Funnel",
        "Each candidate is counted once, at the first step that stopped it (its `reason` in `manifest.parquet`):",
        "",
        markdown_table(("step", "images left", "stopped here", "reasons"), rows),
        "",
        f"Released: {tally.released} of {tally.candidates} candidates.",
    ]


def _outcomes(tally: Tally, num_shards: int) -> list[str]:
    order = {stage: i for i, stage in enumerate(STAGES)}
    rows: list[tuple[object, ...]] = [
        (*key, n) for key, n in sorted(tally.outcomes.items(), key=lambda kv: (order[kv[0][0]], kv[0]))
    ]
    return [
        "## Outcomes per stage and reason",
        "What each stage decided about every row it saw. A row a stage stopped goes to no later stage; the human "
        "filter's verdicts are applied at release, so dedup and review also see the images it rejects.",
        "",
        markdown_table(("stage", "status", "reason", "rows"), rows),
        "",
        f"Rows that reached fetch: {tally.reached_fetch}; shards: {num_shards}.",
    ]


def _threshold_rows(rule: Rule) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for column, bar in sorted(rule.bars.items(), key=lambda item: (FAMILIES.index(str(family_of(item[0]))), item[0])):
        band = bar.review if bar.review < bar.reject else "- (no review band)"
        if bar.calibrated:
            origin = f"calibrated ({bar.source})" if bar.source else "calibrated"
        else:
            origin = bar.source or "not calibrated; no source given"
        rows.append((f"`{column}`", family_of(column), bar.reject, band, origin))
    return rows


def _provenance_lines(rule: Rule) -> list[str]:
    """What the preset says about itself: how its bars were found and what they scored there."""
    found = rule.provenance
    if not found:
        return []
    keys = ("method", "calibration_set", "target_recall", "review_recall", "date", "curate_version")
    lines = [f"Preset **{rule.preset}**: " + ", ".join(f"{k}: {_described(found[k])}" for k in keys if k in found)]
    lines[0] += "."
    lines += _measured_lines(found.get("measured") or {}, "Measured there")
    inherited = found.get("offline_stack_from")
    if isinstance(inherited, dict):
        # pipeline=pass: the offline stack's bars are another preset's; what that preset measured holds for the
        # offline stack alone, a floor for the recall of the whole under the OR rule (and not for its false removals)
        lines.append(
            f"The offline stack's bars are preset {inherited.get('preset')}'s, calibrated on "
            f"{_described(inherited.get('calibration_set'))}; the other bars are not calibrated, so the false "
            "removals of this preset as a whole were not measured. For the offline stack alone:"
        )
        lines += _measured_lines(inherited.get("measured") or {}, "Measured for the offline stack")
    return ["", *lines]


def _tile_policy_lines(cfg: CurateConfig, rule: Rule) -> list[str]:
    """A preset's figures were measured looking at every tile (curate calibrate always does); a run under
    detect.tile_policy=auto did not, and the card must not let the reader take one for the other."""
    calibrated_tiles = any(bar.calibrated and column.endswith("_tiles_max") for column, bar in rule.bars.items())
    if cfg.detect.tile_policy != "auto" or not calibrated_tiles or not rule.provenance:
        return []
    return [
        "These figures were measured with every tile looked at (`detect.tile_policy=always`). This run used "
        f"`auto`: images a full view already scores at {cfg.detect.tile_decisive} or more get no tiles, and of the "
        f"others only tiles where the full view's person score reaches {cfg.detect.tile_gate} are looked at "
        "(`*_tiles_looked`, `*_tiles_decided_by` in the manifest). Its own recall is not the figure above; measure "
        "it with `curate evaluate` and pass the result as `release.evaluation`."
    ]


def _described(value: Any) -> str:
    """A calibration set as a reader wants it (name, images, labels' digest); anything else as it is."""
    if isinstance(value, dict) and "name" in value:
        digest = str(value.get("labels_sha256", ""))[:16]
        labels = f", labels sha256 {digest}…" if digest else ""
        return f"{value['name']} ({value.get('images', '?')} images{labels})"
    return str(value)


def _measured_lines(measured: dict[str, Any], lead: str) -> list[str]:
    lines = []
    for label, key in (("in-sample", "in_sample"), ("k-fold", "kfold")):
        found = measured.get(key)
        if found:
            lines.append(
                f"{lead} ({label}): recall {found['recall']:.3f} (95 % CI {found['recall_ci'][0]:.3f}"
                f"-{found['recall_ci'][1]:.3f}), false removal {found['false_removal']:.3f} (95 % CI "
                f"{found['false_removal_ci'][0]:.3f}-{found['false_removal_ci'][1]:.3f})."
            )
        band = (measured.get("with_review") or {}).get(key)
        if band:
            lines.append(
                f"{lead} ({label}, with the review band): recall counting reviewed images as caught "
                f"{band['recall_with_review']:.3f} (95 % CI {band['recall_with_review_ci'][0]:.3f}-"
                f"{band['recall_with_review_ci'][1]:.3f}), {band['review_images']} of {band['images']} images "
                f"sent to review ({band['review_load']:.1%}{_split(band)})."
            )
    return lines


def _split(band: dict[str, Any]) -> str:
    """How the images sent to review split between those with people and those without, where recorded."""
    if "humans_to_review" not in band or "others_to_review" not in band:
        return ""
    return f": {band['humans_to_review']} with people, {band['others_to_review']} without"


def _human_filter(cfg: CurateConfig, tally: Tally) -> list[str]:
    parts = ["## Human filter"]
    rule = run_rule(cfg)
    rows = _threshold_rows(rule)
    if not rows:
        return [*parts, "No detector ran: no image was screened, no threshold applied."]
    return [
        *parts,
        "Detectors store raw scores (`face_*`, `person_*`, `hand_*`, `clip_*` columns of the manifest); these bars "
        f"(`decide.preset={rule.preset}`) were then applied to them: an image is rejected when any score is above "
        "its column's bar, and sent to review (never released unseen) when it is above a review band only. Each "
        "bar says where it comes from: calibrated on a labelled set, a published operating point, or neither (a first "
        "guess, a user's choice), as its row says.",
        "",
        markdown_table(
            ("score column", "family", "rejected above", "sent to review above", "where the bar comes from"), rows
        ),
        *_provenance_lines(rule),
        *_tile_policy_lines(cfg, rule),
        "",
        "The filter's verdicts on every scored image, before any reviewer's decision (`decision`, `decision_reason`):",
        "",
        markdown_table(("decision", "reason", "images"), sorted((d, r, n) for (d, r), n in tally.decisions.items())),
    ]


# What `curate.evaluate ... out=FILE` always writes; without these the card could state no figure.
EVALUATION_KEYS = ("recall", "false_removal_rate", "n_human", "n_no_human")


def _read_evaluation(cfg: CurateConfig) -> dict[str, Any] | None:
    if not cfg.release.evaluation:
        return None
    path = Path(cfg.release.evaluation)
    found: dict[str, Any] = json.loads(path.read_text())
    missing = [key for key in EVALUATION_KEYS if key not in found]
    if missing:
        raise ValueError(f"release.evaluation={path.name} lacks {missing}: give the JSON curate.evaluate out= writes")
    return found


def _release_digest(cfg: CurateConfig, name: str) -> tuple[str, str]:
    """(digest, where it comes from) of a registry model as this release knows it, without hashing weights."""
    from curate.models.registry import REGISTRY, locate, pinned, recorded_pin

    spec = REGISTRY.get(name)
    if spec is None:
        return "-", "not in the registry"
    ran = read_json(RunDir(Path(cfg.run.dir)).detect_weights) or {}
    pin = pinned(spec)  # a model of several files: their sha256 joined by "+"
    if name in ran:  # the file detect scored with, as verified on disk on the machine that ran it
        origin = "pinned in the registry" if pin else "recorded at first download (no published digest)"
        return ran[name], f"{origin}; verified on disk when detect ran"
    if pin:
        prefix = "" if len(spec.sha256) == 64 else f" (its first {len(spec.sha256)} hex digits, all that is published)"
        return pin, "pinned in the registry" + prefix
    recorded = recorded_pin(locate(spec, cfg.models))
    if recorded.exists():
        return recorded.read_text().strip(), "recorded at first download (no published digest)"
    return "-", "not recorded yet (no published digest; recorded at first download)"


def _model_rows(cfg: CurateConfig) -> list[tuple[object, ...]]:
    from curate.models.registry import REGISTRY

    rows: list[tuple[object, ...]] = []
    for family in DETECTOR_FAMILIES:
        for name in getattr(cfg.detect, family):
            spec = REGISTRY.get(name)
            digest, provenance = _release_digest(cfg, name)
            rows.append((name, family, spec.url if spec else "-", digest, provenance, spec.licence if spec else "-"))
    if cfg.detect.clip_model:
        model = f"{cfg.detect.clip_model}/{cfg.detect.clip_pretrained}"
        rows.append((model, "clip", "open_clip registry", "-", "as open_clip resolves the pretrained tag", "-"))
    return rows


def _evaluation_mismatches(cfg: CurateConfig, found: dict[str, Any]) -> list[str]:
    """Where the evaluated filter differs from this release's: each one makes the figures not this filter's."""
    problems: list[str] = []
    models = found.get("models")
    if models is None:
        problems.append("the evaluation does not record which model weights it ran")
    else:
        for family in DETECTOR_FAMILIES:
            names = getattr(cfg.detect, family)
            ran = [m["name"] for m in models.get(family) or []]
            if ran != list(names):
                problems.append(f"{family} models: evaluated {_names(ran)}, released with {_names(names)}")
                continue
            for m in models.get(family) or []:
                digest, _ = _release_digest(cfg, m["name"])
                if digest == "-":
                    problems.append(f"{m['name']}: this release records no digest to compare with the evaluation's")
                elif not str(m.get("sha256", "")).startswith(digest):
                    problems.append(f"{m['name']}: evaluated weights sha256 {m.get('sha256')}, released {digest}")
        clip = models.get("clip") or {}
        ran_clip = f"{clip.get('model')}/{clip.get('pretrained')}" if clip else "none"
        ours = f"{cfg.detect.clip_model}/{cfg.detect.clip_pretrained}" if cfg.detect.clip_model else "none"
        if ran_clip != ours:
            problems.append(f"CLIP: evaluated {ran_clip}, released with {ours}")
    if "recall_without_review" not in found:
        problems.append(
            "the evaluation was written by an older curate evaluate, which counted images without people sent to "
            "review as removed (its false-removal rate is not this card's measure): run it again"
        )
    from curate.evaluate import SCORE_SETTINGS  # the detect settings that change scores, as evaluate records them

    recorded = found.get("detect") or {}
    default = DetectConfig()
    # A setting an older evaluation does not record was its default then (detect.person_tiles_skip came later)
    for key in sorted({*recorded, *SCORE_SETTINGS}):
        if not hasattr(cfg.detect, key):
            continue
        value = recorded.get(key, getattr(default, key))
        if getattr(cfg.detect, key) != value:
            told = "" if key in recorded else " (not recorded: the default)"
            problems.append(f"detect.{key}: evaluated {value}{told}, released with {getattr(cfg.detect, key)}")
    evaluated = (found.get("decide") or {}).get("bars")
    if evaluated is None:  # an evaluation from before bars per score column: its thresholds cannot be compared
        problems.append("decide: the evaluation records no bar per score column (an older curate): evaluate again")
        evaluated = {}
    for column, bar in _decide_settings(cfg)["bars"].items():
        theirs = evaluated.get(column) or {}
        if (theirs.get("reject"), theirs.get("review")) != (bar["reject"], bar["review"]):
            problems.append(
                f"decide {column}: evaluated reject {theirs.get('reject')} review {theirs.get('review')}, released "
                f"with reject {bar['reject']} review {bar['review']}"
            )
    return problems


def _names(names: list[str]) -> str:
    return ", ".join(names) or "none"


def _rate(value: object) -> str:
    return "-" if value is None else f"{float(value):.3f}"  # type: ignore[arg-type]


def _evaluation(cfg: CurateConfig, found: dict[str, Any] | None) -> list[str]:
    parts = ["## Measured performance of the human filter"]
    if found is None:
        return [
            *parts,
            "Recall (images with people that the filter removes) and the false-removal rate (images without "
            "people that it removes) were **not measured for these models**: no evaluation was given "
            "(`release.evaluation`). How many people this filter misses is not known.",
        ]
    where = found.get("evaluation_set") or {}
    if "recall_without_review" in found:
        counted = (
            "An image with people counts as caught when the filter rejects it or sends it to review (neither is "
            "released unless a reviewer keeps it); an image without people counts as falsely removed only when the "
            "filter rejects it (a reviewer keeps those sent to review: they are the review load)."
        )
    else:  # an older curate evaluate: the JSON does not say how many images went to review
        counted = (
            "This evaluation was written by an older curate evaluate: an image counted as removed when the filter "
            "rejected it or sent it to review, images without people included."
        )
    figures: list[tuple[object, ...]] = [
        ("recall (people removed)", _rate(found["recall"]), found["n_human"]),
        ("false-removal rate (no people, removed)", _rate(found["false_removal_rate"]), found["n_no_human"]),
    ]
    if "recall_without_review" in found:
        figures.append(
            ("recall without review (people rejected)", _rate(found["recall_without_review"]), found["n_human"])
        )
    review = found.get("review")
    if isinstance(review, dict):
        sent = f"{review.get('images', 0)} ({review.get('human', 0)} with people, {review.get('no_human', 0)} without)"
        figures.append(("sent to review (share of all images)", _rate(review.get("share")), sent))
    parts += [
        f"Measured by `curate.evaluate` on the evaluation set **{where.get('name', 'unnamed')}** "
        f"({where.get('size', found['n_human'] + found['n_no_human'])} labelled images: {found['n_human']} with "
        f"people, {found['n_no_human']} without). {counted}",
        "",
        markdown_table(("measure", "value", "images"), figures),
    ]
    mismatches = _evaluation_mismatches(cfg, found)
    if mismatches:
        warning = "> **Warning: the evaluation ran a different filter from this release's** (or counted otherwise), "
        parts += ["", warning + "so these figures do not measure it: " + "; ".join(mismatches) + "."]
    detectors = found.get("per_detector") or {}
    if detectors:
        rows = [
            (k, v["threshold"], _rate(v["recall"]), _rate(v["false_removal_rate"]))
            for k, v in sorted(detectors.items())
        ]
        parts += ["", "Each detector alone at its threshold:", ""]
        parts.append(markdown_table(("detector", "threshold", "recall", "false-removal rate"), rows))
    return parts


def _limitations(cfg: CurateConfig, found: dict[str, Any] | None) -> list[str]:
    parts = ["## Known limitations"]
    if found is None:
        parts.append(
            "The human filter's limitations are **unknown**: it was not evaluated, so which kinds of images it "
            "misses people in, and which images without people it removes, is not known."
        )
    else:
        parts += _misses(found)
    parts += ["", "Automated filters miss people: no evaluation set covers every way a person can appear in a photo."]
    audit, own = card_audit(cfg)
    if audit is not None and audit.checked:
        parts.append(
            f"The audit ({_audited(cfg, audit, own)}) bounds how many released images still show a person: "
            f"{audit.rate:.2%} of those checked (95 % Wilson interval {audit.low:.2%} – {audit.high:.2%}; see the "
            "audit below)."
        )
    else:
        parts.append("No audit has been checked, so nothing bounds how many released images still show a person.")
    return parts


def _misses(found: dict[str, Any]) -> list[str]:
    """The evaluation's categories with misses, and its false removals by category."""
    categories = {
        name.split("/", 1)[1]: (name.split("/", 1)[0], v) for name, v in (found.get("per_category") or {}).items()
    }
    missed = Counter(m["category"] for m in found.get("missed") or [])
    wrong: dict[str, Counter[str]] = {}
    for item in found.get("false_removals") or []:
        wrong.setdefault(item["category"], Counter())[str(item.get("reason", "-"))] += 1
    misses: list[tuple[object, ...]] = []
    removals: list[tuple[object, ...]] = []
    for category, (label, v) in sorted(categories.items()):
        if label == "human" and v.get("recall") is not None and v["recall"] < 1:
            misses.append((category, v["n"], missed.get(category, 0), _rate(v["recall"])))
        elif label == "no_human" and (v.get("false_removal_rate") or 0) > 0:
            why = wrong.get(category, Counter())
            reasons = describe_reasons(tuple(sorted(why.items(), key=lambda kv: (-kv[1], kv[0]))))
            removals.append((category, v["n"], sum(why.values()), _rate(v["false_removal_rate"]), reasons))
    return [
        "Categories of the evaluation set where the filter missed people:",
        "",
        markdown_table(("category", "images", "missed", "recall"), misses)
        if misses
        else "none: it removed every person.",
        "",
        "Images without people that the filter removed, by category:",
        "",
        markdown_table(("category", "images", "removed", "rate", "reasons"), removals) if removals else "none.",
    ]


def _licences(cfg: CurateConfig, tally: Tally) -> list[str]:
    def label(code: str, assumed: bool) -> str:
        if not assumed:
            return code
        why = (
            "ingest.assume_license" if cfg.ingest.assume_license else f"the {cfg.ingest.source.value} source's default"
        )
        return f"{code} (assumed: {why})"

    rows: list[tuple[object, ...]] = sorted((label(c, a), n) for (c, a), n in tally.licences.items())
    parts = ["## Licences of released images", markdown_table(("licence", "images"), rows or [("-", 0)])]
    unknown = sum(n for (c, _), n in tally.licences.items() if c == UNKNOWN_LICENCE)
    if unknown:
        parts += ["", f"**{unknown} released image(s) have no known licence** (`license.keep_unknown`): "]
        parts[-1] += "establish their licence before anyone else uses them."
    assumed = sum(n for (_, a), n in tally.licences.items() if a)
    if assumed:
        parts += ["", f"{assumed} released image(s) carried no licence information of their own: their licence "]
        parts[-1] += "is an assumption made for the whole input, not a statement of each image's owner."
    return [*parts, "", *_attribution(tally)]


def _attribution(tally: Tally) -> list[str]:
    held = [(what, tally.attribution[column]) for column, what in ATTRIBUTION]
    if tally.released and all(n == tally.released for _, n in held):
        listed = ", ".join(what for what, _ in held[:-1]) + f" and {held[-1][0]}"
        return [f"Every released image has {listed} in `pass_metadata.csv`."]
    rows: list[tuple[object, ...]] = [(what, n, tally.released - n) for what, n in held]
    lacking = [f"{tally.released - n} lack {what}" for what, n in held if n < tally.released]
    return [
        "Attribution as far as the data holds it (`pass_metadata.csv`):",
        "",
        markdown_table(("released images with", "images", "without"), rows),
        "",
        f"**Not every released image can be attributed from this data**: {'; '.join(lacking)}."
        if tally.released
        else "No image was released.",
    ]


def _overrides(tally: Tally) -> list[str]:
    if not tally.overrides:
        return ["No reviewer kept an image the filter had rejected or sent to review."]
    rows: list[tuple[object, ...]] = list(tally.overridden)
    shown = f" (the first {len(rows)} by image_id)" if len(rows) < tally.overrides else ""
    return [
        f"**{tally.overrides} image(s) the filter rejected or sent to review were kept by a reviewer** (a "
        f"reviewer's keep overrides the filter){shown}:",
        "",
        markdown_table(("image_id", "filter's verdict", "reviewer", "date", "in this release"), rows),
    ]


def card_audit(cfg: CurateConfig) -> tuple[AuditEstimate | None, bool]:
    """The audit the card reports: this version's sample if one was drawn, else the previous release's when that
    release is one of this run directory (its sample lives here); (estimate, whether it audits this version)."""
    if sample_path(cfg, cfg.release.version).exists():
        return estimate(cfg, cfg.release.version), True
    previous = Path(cfg.release.previous) if cfg.release.previous else None
    if previous is not None and previous.resolve().parent == (Path(cfg.run.dir) / "release").resolve():
        return estimate(cfg, previous.name), False
    return None, False


def _audited(cfg: CurateConfig, found: AuditEstimate, own: bool) -> str:
    """Which release the audit checked, said plainly when it is not this one."""
    if own:
        return found.version
    return f"{found.version}, the previous release; {cfg.release.version} itself has no audit sample yet"


def audit_section(cfg: CurateConfig, tally: Tally) -> list[str]:
    """The reviewers' decisions, their overrides of the filter, and the audit's residual-rate estimate."""
    review = Counter({why: n for (step, why), n in tally.funnel.stops.items() if step == "review"})
    parts = [
        "## Human review",
        "The latest review decision of each candidate (`review_decision`):",
        "",
        markdown_table(("review decision", "images"), sorted(tally.reviews.items()))
        if tally.reviews
        else "No reviewer has decided on any candidate.",
        "",
        f"Stopped by a reviewer in this release: {review.get('removed', 0)} removed (`review:removed`), "
        f"{review.get('unsure', 0)} left unsure and not released (`review:unsure`).",
        "",
        *_overrides(tally),
    ]
    found, own = card_audit(cfg)
    if found is None:
        parts += ["", "No audit sample was drawn (`stage=audit`): the residual rate of humans is not estimated."]
    elif found.checked == 0:
        drawn = f"An audit sample of {found.sample} images of {_audited(cfg, found, own)} was drawn"
        parts += ["", drawn + "; none checked yet."]
    else:
        parts += [
            "",
            f"**Residual humans** (audit of {_audited(cfg, found, own)}): {found.humans} of {found.checked} checked "
            f"images (a seeded random sample of {found.sample} from {found.population} released) showed a human: "
            f"{found.rate:.2%}, 95 % Wilson interval {found.low:.2%} – {found.high:.2%}"
            + (f"; {found.unsure} marked unsure are not counted." if found.unsure else "."),
            "Images found with a human are removed from the next release through the ledger.",
        ]
    return parts


def _duplicates(cfg: CurateConfig, tally: Tally) -> list[str]:
    settings = ", ".join(f"{k}={v}" for k, v in asdict(cfg.dedup).items() if k != "references")
    return [
        "## Duplicates",
        f"{tally.dedup_groups} duplicate group(s); each keeps one representative (highest resolution, then "
        "earliest date, then smallest image_id); the others are `dedup_status=rejected` with their "
        f"`dedup_group` and `dedup_of`. Settings: {settings}; reference sets: "
        + (", ".join(r.name for r in cfg.dedup.references) or "none")
        + ".",
    ]


def render_data_card(cfg: CurateConfig, tally: Tally, num_shards: int, extra: list[str] | None = None) -> str:
    found = _read_evaluation(cfg)
    formats: list[tuple[object, ...]] = sorted(tally.formats.items())
    sections = [
        [
            f"# Data card: {cfg.release.name} {cfg.release.version}",
            "",
            "Generated by curate from the run's manifests. Every candidate is listed in `manifest.parquet` with "
            "its status and the first reason that stopped it.",
            "",
            _screening_note(cfg),
        ],
        _funnel(tally),
        _human_filter(cfg, tally),
        _evaluation(cfg, found),
        _limitations(cfg, found),
        audit_section(cfg, tally),
        _licences(cfg, tally),
        ["## Formats of released images", markdown_table(("format", "images"), formats or [("-", 0)])],
        _duplicates(cfg, tally),
        _outcomes(tally, num_shards),
        [
            "## Models",
            markdown_table(("model", "family", "source", "weights sha256", "digest from", "licence"), _model_rows(cfg))
            if ran_families(cfg)
            else "No model ran.",
        ],
        ["## Software", markdown_table(("package", "version"), _software(cfg))],
        ["## Configuration", "```yaml", yaml.safe_dump(card_config(cfg), sort_keys=True).rstrip(), "```"],
    ]
    lines = [line for section in sections for line in [*section, ""]]
    return "\n".join([*lines, *(extra or []), ""])
