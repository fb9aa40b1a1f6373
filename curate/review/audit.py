"""The audit: a seeded random sample of released images for people to check, and from the checked ones an
estimate of how many released images still show a human, with a 95 % Wilson interval."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from curate.config import CurateConfig
from curate.io.atomic import read_parquet, write_parquet
from curate.review import ledger
from curate.review.stats import wilson_interval
from curate.schema import KEPT
from curate.selection import seeded_key


def audited_version(cfg: CurateConfig) -> str:
    return cfg.audit.version or cfg.release.version


def sample_path(cfg: CurateConfig, version: str | None = None) -> Path:
    """The audit sample of `version` (default: the audited version of the config)."""
    return Path(cfg.run.dir) / "audit" / (version or audited_version(cfg)) / "sample.parquet"


def draw(cfg: CurateConfig) -> pd.DataFrame:
    """Draw (or keep, when one with the same size and seed exists) the sample of kept images to check."""
    version = audited_version(cfg)
    manifest = Path(cfg.run.dir) / "release" / version / "manifest.parquet"
    if not manifest.exists():
        raise FileNotFoundError(f"no release {version} in {cfg.run.dir}: run stage=release first")
    rows = pd.read_parquet(manifest, columns=["image_id", "status", "shard"])
    kept = rows[rows["status"] == KEPT].copy()
    kept["key"] = seeded_key(kept["image_id"], cfg.audit.seed)
    sample = kept.sort_values(["key", "image_id"]).head(cfg.audit.size)
    sample = sample.assign(size=cfg.audit.size, seed=cfg.audit.seed, population=len(kept))
    sample = sample[["image_id", "shard", "size", "seed", "population"]].reset_index(drop=True)
    path = sample_path(cfg)
    if path.exists():
        existing = read_parquet(path)
        if existing["image_id"].tolist() == sample["image_id"].tolist():
            return existing  # drawn before: the checks already made stay valid
    write_parquet(path, sample)
    return sample


def audit_sample(cfg: CurateConfig) -> pd.DataFrame:
    path = sample_path(cfg)
    if not path.exists():
        raise FileNotFoundError(f"no audit sample for {audited_version(cfg)}: run stage=audit first")
    return read_parquet(path)


@dataclass(frozen=True)
class AuditEstimate:
    version: str
    population: int  # released images the sample was drawn from
    sample: int
    checked: int  # decided keep (no human) or remove (a human); unsure ones are not counted
    humans: int
    unsure: int
    rate: float
    low: float
    high: float


def estimate(cfg: CurateConfig, version: str | None = None) -> AuditEstimate | None:
    """The residual rate of images with humans, from the checked part of the audit sample of `version` (default:
    the audited version of the config); None: no sample was drawn."""
    version = version or audited_version(cfg)
    path = sample_path(cfg, version)
    if not path.exists():
        return None
    sample = read_parquet(path)
    decided = ledger.latest(cfg.run.dir)["decision"].reindex(sample["image_id"])
    humans = int((decided == "remove").sum())
    checked = humans + int((decided == "keep").sum())
    low, high = wilson_interval(humans, checked)
    return AuditEstimate(
        version=version,
        population=int(sample["population"].iloc[0]) if len(sample) else 0,
        sample=len(sample),
        checked=checked,
        humans=humans,
        unsure=int((decided == "unsure").sum()),
        rate=humans / checked if checked else 0.0,
        low=low,
        high=high,
    )
