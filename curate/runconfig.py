"""The config schema's registration with Hydra/OmegaConf, and the config a run directory was last run with.

A library module (the review notebooks and the report read a run's config through it), so that nothing but the
command line imports the command-line module `curate.run`.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from curate.config import CurateConfig

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"


def register_schema() -> None:
    """The schema as `curate_schema` for the recipes' defaults, and the `${curate_sample:}` resolver."""
    ConfigStore.instance().store(name="curate_schema", node=CurateConfig)
    if not OmegaConf.has_resolver("curate_sample"):
        OmegaConf.register_new_resolver("curate_sample", lambda: str(SAMPLE_DIR))


def load_run_config(run_dir: Path | str) -> CurateConfig:
    """The config a run directory was last run with (its config.yaml), for notebooks and reports."""
    register_schema()
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} has no config.yaml: run python -m curate.run run.dir={run_dir} first")
    merged = OmegaConf.merge(OmegaConf.structured(CurateConfig), OmegaConf.load(path))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, CurateConfig)
    cfg.run.dir = str(run_dir)
    return cfg
