"""The data card: counts per stage and reason, licences, the config and software versions.

Only deterministic facts go in (no wall times, no paths of the run directory), so the same inputs give a
byte-identical card.
"""

from __future__ import annotations

import platform
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd
import yaml

from curate import __version__
from curate.config import CurateConfig
from curate.detect.decide import thresholds

FUNNEL = [
    ("ingest", "candidates read"),
    ("license", "licence allowed"),
    ("fetch", "downloaded and valid"),
    ("detect", "scored by the human filter"),
    ("dedup", "not a duplicate"),
    ("review", "not removed by a reviewer"),
    ("select", "within the owner cap and the sample, not taken down"),
]
SOFTWARE = ["dask", "distributed", "pandas", "pyarrow", "pillow", "requests", "flickrapi", "hydra-core"]


def _software() -> list[tuple[str, str]]:
    found = [("python", platform.python_version()), ("curate", __version__)]
    for name in SOFTWARE:
        try:
            found.append((name, version(name)))
        except PackageNotFoundError:
            found.append((name, "not installed"))
    return found


def _table(header: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _screening_note(cfg: CurateConfig) -> str:
    if not (cfg.detect.face or cfg.detect.person or cfg.detect.clip_model):
        return "> **Not screened for people**: every detector was switched off. Do not publish this as human-free."
    return (
        "> Screened by the automated human filter below, and by people where the review section says so. "
        "Automated filters miss people (PASS v1 let at least 603 through): the audit below estimates how many."
    )


def _models(cfg: CurateConfig) -> list[tuple[object, ...]]:
    from curate.models.registry import REGISTRY

    rows: list[tuple[object, ...]] = []
    for family, names in (("face", cfg.detect.face), ("person", cfg.detect.person)):
        for name in names:
            spec = REGISTRY.get(name)
            pin = (spec.sha256 or "none published (recorded at first download)") if spec else "-"
            rows.append((family, name, pin, spec.licence if spec else "-"))
    if cfg.detect.clip_model:
        rows.append(("clip", f"{cfg.detect.clip_model}/{cfg.detect.clip_pretrained}", "open_clip registry", "-"))
    return rows or [("-", "none", "-", "-")]


def card_config(cfg: CurateConfig) -> dict[str, object]:
    """The settings that shaped the data; where it ran (paths, cluster) is left out."""
    fetch = asdict(cfg.fetch)
    for key in ("concurrency", "per_host_concurrency", "retry_failed", "user_agent", "file_root"):
        fetch.pop(key)
    ingest = asdict(cfg.ingest)
    ingest["source"] = cfg.ingest.source.value
    return {
        "pipeline": cfg.pipeline,
        "ingest": ingest,
        "license": asdict(cfg.license),
        "fetch": fetch,
        "detect": {k: v for k, v in asdict(cfg.detect).items() if k not in ("device", "batch_size", "torch_threads")},
        "decide": asdict(thresholds(cfg.decide)),
        "dedup": {**asdict(cfg.dedup), "references": [r.name for r in cfg.dedup.references]},
        "release": {
            "version": cfg.release.version,
            "name": cfg.release.name,
            "owner_cap": cfg.release.owner_cap,
            "target_size": cfg.release.target_size,
            "seed": cfg.release.seed,
            "previous": Path(cfg.release.previous).name if cfg.release.previous else "",
        },
    }


@dataclass
class Tally:
    """Counts gathered shard by shard: the card never needs the whole manifest in memory."""

    candidates: int = 0
    released: int = 0
    stage_ok: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    reached_fetch: int = 0
    licences: Counter[str] = field(default_factory=Counter)
    formats: Counter[str] = field(default_factory=Counter)
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)
    dedup_groups: int = 0
    reviews: Counter[str] = field(default_factory=Counter)

    def add(self, frame: pd.DataFrame) -> None:
        kept = frame[frame["status"] == "kept"]
        self.candidates += len(frame)
        self.released += len(kept)
        self.reached_fetch += int(frame["fetch_status"].notna().sum())
        for stage, _ in FUNNEL:
            status, reason = frame[f"{stage}_status"], frame[f"{stage}_reason"]
            self.stage_ok[stage] += int((status == "ok").sum())
            seen = status.notna()
            pairs = status[seen].astype(str) + "/" + reason[seen].astype(str)
            for pair, n in pairs.value_counts().items():
                code, why = str(pair).split("/", 1)
                self.outcomes[(stage, code, why)] += int(n)
        # a group lives in one shard's rows or across several; its representative's id names it, so count those
        self.reviews.update(frame["review_decision"].dropna().astype(str))
        self.dedup_groups += int((frame["dedup_group"] == frame["image_id"]).sum())
        self.licences.update(kept["license_code"].dropna().astype(str))
        self.formats.update(kept["format"].dropna().astype(str))
        decided = frame["decision"].notna()
        self.decisions.update(zip(frame.loc[decided, "decision"].astype(str),
                                  frame.loc[decided, "decision_reason"].astype(str), strict=True))  # fmt: skip


def render_data_card(cfg: CurateConfig, tally: Tally, num_shards: int, extra: list[str] | None = None) -> str:
    funnel_rows: list[tuple[object, ...]] = [("candidates", tally.candidates)]
    for stage, label in FUNNEL:
        if stage == "select":  # the selection applies to what the human filter kept
            funnel_rows.append(("human filter: kept", sum(n for (d, _), n in tally.decisions.items() if d == "keep")))
        funnel_rows.append((f"{stage}: {label}", tally.stage_ok[stage]))
    funnel_rows.append(("released", tally.released))
    order = {stage: i for i, (stage, _) in enumerate(FUNNEL)}
    reason_rows: list[tuple[object, ...]] = [
        (*key, n) for key, n in sorted(tally.outcomes.items(), key=lambda kv: (order[kv[0][0]], kv[0]))
    ]
    licence_rows: list[tuple[object, ...]] = sorted(tally.licences.items())
    formats: list[tuple[object, ...]] = sorted(tally.formats.items())

    parts = [
        f"# Data card: {cfg.release.name} {cfg.release.version}",
        "",
        "Generated by curate from the run's manifests. Every candidate is listed in `manifest.parquet` with "
        "its status and the first reason that stopped it.",
        "",
        _screening_note(cfg),
        "",
        "## Funnel",
        _table(("step", "images"), funnel_rows),
        "",
        "## Outcomes per stage and reason",
        _table(("stage", "status", "reason", "rows"), reason_rows),
        "",
        f"Rows that reached fetch: {tally.reached_fetch}; shards: {num_shards}.",
        "",
        "## Licences of released images",
        _table(("licence", "images"), licence_rows or [("-", 0)]),
        "",
        "Every released image keeps its attribution in `pass_metadata.csv`: owner (`unickname`), licence URL and "
        "photo page URL.",
        "",
        "## Formats of released images",
        _table(("format", "images"), formats or [("-", 0)]),
        "",
        "## Configuration",
        "```yaml",
        yaml.safe_dump(card_config(cfg), sort_keys=True).rstrip(),
        "```",
        "",
        "## Software",
        _table(("package", "version"), list(_software())),
        "",
        "## Human filter",
        "Detectors store raw scores (`face_*`, `person_*`, `clip_*` columns of the manifest); this decision "
        "was then applied to them (`decision`, `decision_reason`):",
        "",
        _table(("decision", "reason", "images"), sorted((d, r, n) for (d, r), n in tally.decisions.items())),
        "",
        "Thresholds (`decide`): " + ", ".join(f"{k}={v}" for k, v in asdict(thresholds(cfg.decide)).items()),
        "",
        "## Models",
        _table(("family", "model", "weights sha256", "licence"), _models(cfg)),
        "",
        "## Duplicates",
        f"{tally.dedup_groups} duplicate group(s); each keeps one representative (highest resolution, then "
        "earliest date, then smallest image_id); the others are `dedup_status=rejected` with their "
        "`dedup_group` and `dedup_of`. Settings: "
        + ", ".join(f"{k}={v}" for k, v in asdict(cfg.dedup).items() if k != "references")
        + "; reference sets: "
        + (", ".join(r.name for r in cfg.dedup.references) or "none")
        + ".",
        "",
        *(extra or []),
        "",
    ]
    return "\n".join(parts)
