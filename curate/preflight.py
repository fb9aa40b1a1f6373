"""Preflight: whether what a config names is there, for the stages this invocation runs.

The schema (`curate.config`) checks values only. This module looks outside them, at the files and folders, the
environment variables and the model registry that the invocation will use, and refuses them with a ConfigError
before any work starts and before anything is written to the run directory. Only the stage that reads a file
asks for it: a report needs no takedown list, a re-release needs no ingest input.
"""

from __future__ import annotations

import os
from pathlib import Path

from curate.config import FLICKR_KEY_ENV, FLICKR_SECRET_ENV, ConfigError, CurateConfig, Source, Stage, refuse
from curate.detect.decide import run_rule
from curate.models.registry import check_detectors
from curate.sources import check_inputs  # it knows how each source expands its path (a glob, a folder, a file)

__all__ = ["preflight", "problems"]


def preflight(cfg: CurateConfig) -> None:
    """Refuse, in one ConfigError naming every key to change, what the invocation would miss."""
    refuse(problems(cfg))


def problems(cfg: CurateConfig) -> list[str]:
    """What the invocation of `cfg.stage` would miss: inputs, credentials, reference sets, release files and
    detectors the registry does not know."""
    # The registry says which models exist and which family each belongs to; detect's weight files are checked
    # only when detect has work (curate.models.registry.check_available), since a finished run needs none.
    return [*_ingest(cfg), *_dedup(cfg), *_recheck(cfg), *_release(cfg), *_decision(cfg), *check_detectors(cfg)]


def _flickr_key_set() -> bool:
    return bool(os.environ.get(FLICKR_KEY_ENV) and os.environ.get(FLICKR_SECRET_ENV))


def _runs(cfg: CurateConfig, stage: Stage) -> bool:
    return cfg.stage in (stage, Stage.all)


def _ingest(cfg: CurateConfig) -> list[str]:
    ing = cfg.ingest
    if not _runs(cfg, Stage.ingest):
        return []
    if ing.source == Source.flickr:
        if _flickr_key_set():
            return []
        return [f"ingest.source=flickr needs the environment variables {FLICKR_KEY_ENV} and {FLICKR_SECRET_ENV}"]
    if not ing.path:
        return [f"ingest.path must be set for ingest.source={ing.source.value}"]
    problem = check_inputs(ing)
    return [problem] if problem else []


def _dedup(cfg: CurateConfig) -> list[str]:
    if not _runs(cfg, Stage.dedup):
        return []
    return [
        f"dedup.references {ref.name!r}: {key}={getattr(ref, key)} not found"
        for ref in cfg.dedup.references
        for key in ("folder", "hashes", "embeddings")
        if getattr(ref, key) and not Path(getattr(ref, key)).exists()
    ]


def _decision(cfg: CurateConfig) -> list[str]:
    """The preset is readable and has a bar for every score column the configured detectors write (a column
    without one would be a silent keep)."""
    if cfg.stage not in (Stage.detect, Stage.release, Stage.all):
        return []  # the stages that score or decide; a report or an audit shows what a release decided
    try:
        run_rule(cfg)
    except ConfigError as err:
        return [str(err)]
    return []


def _previous(cfg: CurateConfig) -> list[str]:
    previous = cfg.release.previous
    if previous and not any((Path(previous) / name).exists() for name in ("manifest.parquet", "pass_metadata.csv")):
        return [f"release.previous={previous!r} must be a release folder holding manifest.parquet or pass_metadata.csv"]
    return []


def _recheck(cfg: CurateConfig) -> list[str]:
    """A recheck of Flickr or YFCC images asks the Flickr API: its key must be there before any work starts."""
    if not (_runs(cfg, Stage.recheck) and cfg.recheck.enabled and cfg.release.previous):
        return []
    found = _previous(cfg) if cfg.stage == Stage.recheck else []  # stage=all: _release says it
    if cfg.ingest.source in (Source.flickr, Source.yfcc) and not _flickr_key_set():
        found.append(
            f"the recheck of a {cfg.ingest.source.value} run asks the Flickr API about release.previous's images: "
            f"set the environment variables {FLICKR_KEY_ENV} and {FLICKR_SECRET_ENV}, or recheck.enabled=false to "
            "release without asking (the data card then says so)"
        )
    return found


def _release(cfg: CurateConfig) -> list[str]:
    if not _runs(cfg, Stage.release):  # the files only release reads: a report needs none of them
        return []
    r = cfg.release
    found = _previous(cfg)
    found += [f"release.takedowns: {path} not found" for path in r.takedowns if not Path(path).is_file()]
    if r.evaluation and not Path(r.evaluation).is_file():
        found.append(f"release.evaluation={r.evaluation!r} not found")
    return found
