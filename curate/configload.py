"""Loading a config: one invocation's config, composed with Hydra and checked before any work.

A run directory that has a config.yaml remembers what it is: an invocation starts from that config with the
command line's overrides on top; a new run directory composes a recipe from `pipelines/`. The schema checks the
values as the config is built (`curate.config`) and `curate.preflight` what they name; nothing here writes to the
run directory (`curate.run` does, under its lock) or runs any stage.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from curate.config import ConfigError, CurateConfig
from curate.preflight import preflight
from curate.runconfig import register_schema

__all__ = [
    "PATH_KEYS",
    "PER_INVOCATION",
    "PIPELINES_ENV",
    "absolute_paths",
    "as_list_override",
    "config_text",
    "given_run_dir",
    "load_config",
    "pipelines_dir",
    "recipes",
    "same_pipeline",
    "without_per_invocation",
]

PIPELINES_ENV = "CURATE_PIPELINES_DIR"


def pipelines_dir() -> Path:
    return Path(os.environ.get(PIPELINES_ENV) or Path(__file__).resolve().parents[1] / "pipelines")


def _explain(err: BaseException) -> str:
    """Hydra's message plus the OmegaConf cause (which holds the useful part), without the '+key' advice:
    the schema is closed, so adding a key can never be the fix."""
    lines = [line for line in str(err).strip().splitlines() if not line.startswith("To append")]
    cause = err.__cause__
    while cause is not None:
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        if first and first not in lines:
            lines.append(first)
        cause = cause.__cause__
    message = "\n  ".join(lines)
    return _hint(message) if "not in '" in message else message


def _hint(message: str) -> str:
    """Add a did-you-mean for misspelt keys."""
    keys = _all_keys(OmegaConf.structured(CurateConfig))
    for word in message.replace("'", " ").replace('"', " ").split():
        if "." in word and word not in keys:
            close = difflib.get_close_matches(word, keys, n=1)
            if close:
                return f"{message}\n  did you mean {close[0]}?"
    return message


def _all_keys(node: object, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in OmegaConf.to_container(node, resolve=False).items():  # type: ignore[union-attr]
        full = f"{prefix}{key!s}"
        keys.append(full)
        if isinstance(value, dict):
            keys += _all_keys(OmegaConf.create(value), full + ".")
    return keys


# Settings that hold for one invocation only: a run directory's remembered config never carries them on.
PER_INVOCATION = ("stage", "fetch.retry_failed", "release.allow_failed_shards")


def load_config(argv: list[str]) -> CurateConfig:
    """The config of one invocation, checked (its values by the schema, what they name by curate.preflight);
    writes nothing.

    A run directory that has a config.yaml remembers what it is: the invocation starts from that config, with the
    command line's overrides on top (a different `pipeline=` is refused). A new run directory composes
    `pipeline=NAME` (a recipe in pipelines/ or a path to a .yaml; default sample) with the overrides.
    """
    register_schema()
    pipeline: str | None = None
    overrides = []
    for arg in argv:
        if arg.startswith("pipeline="):
            pipeline = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    overrides = [as_list_override(arg) for arg in overrides]
    run_dir = given_run_dir(overrides)
    if run_dir is None:
        run_dir = Path(_compose_recipe(pipeline or "sample", overrides).run.dir)
    remembered = run_dir / "config.yaml"
    if remembered.exists():
        cfg = _compose_remembered(remembered, pipeline, overrides)
        cfg.run.dir = str(run_dir)  # the directory may have moved since it was recorded
    else:
        cfg = _compose_recipe(pipeline or "sample", overrides)
    absolute_paths(cfg)
    preflight(cfg)  # the schema checked the values as the config was built; this, what they name
    return cfg


def given_run_dir(overrides: list[str]) -> Path | None:
    """run.dir as the command line gives it, unquoted as Hydra reads it (None: the recipe's default)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise ConfigError(_explain(err)) from err
    found = [str(o.value()) for o in parsed if o.key_or_group == "run.dir" and not o.is_delete()]
    if found and "${" in found[-1]:
        return None  # an interpolation: the composed config resolves it
    return Path(found[-1]) if found and found[-1] else None


# Input paths are remembered absolute: later invocations (the notebooks, a report) may run from elsewhere.
PATH_KEYS = ("ingest.path", "fetch.file_root", "models.dir", "release.previous", "release.evaluation",
             "release.data_card_dir")  # fmt: skip


def absolute_paths(cfg: CurateConfig) -> None:
    for key in PATH_KEYS:
        group, name = key.split(".")
        value = getattr(getattr(cfg, group), name)
        if value:
            setattr(getattr(cfg, group), name, os.path.abspath(os.path.expanduser(value)))
    cfg.release.takedowns = [os.path.abspath(p) for p in cfg.release.takedowns]
    for ref in cfg.dedup.references:
        for name in ("folder", "hashes", "embeddings"):
            if getattr(ref, name):
                setattr(ref, name, os.path.abspath(getattr(ref, name)))
    if cfg.pipeline.endswith(".yaml"):
        cfg.pipeline = os.path.abspath(cfg.pipeline)
    if cfg.decide.preset.endswith((".yaml", ".yml")):  # a preset file of the user's (shipped ones go by name)
        cfg.decide.preset = os.path.abspath(os.path.expanduser(cfg.decide.preset))


def as_list_override(arg: str) -> str:
    """`release.takedowns=file.csv` means a list of one: a single value where the schema has a list is wrapped,
    instead of OmegaConf's `str is not a ListConfig`."""
    key, sep, value = arg.partition("=")
    if sep and value not in ("", "null") and not value.startswith("[") and key.lstrip("+~") in _list_keys():
        return f"{key}=[{value}]"
    return arg


def _list_keys() -> set[str]:
    schema = OmegaConf.structured(CurateConfig)
    return {key for key in _all_keys(schema) if OmegaConf.is_list(OmegaConf.select(schema, key))}


def _compose(config_dir: Path, name: str, overrides: list[str]) -> CurateConfig:
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            composed = compose(config_name=name, overrides=overrides)
        cfg = OmegaConf.to_object(composed)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_explain(err)) from err
    assert isinstance(cfg, CurateConfig)
    return cfg


def _compose_recipe(pipeline: str, overrides: list[str]) -> CurateConfig:
    if pipeline.endswith(".yaml"):
        config_dir, name = Path(pipeline).resolve().parent, Path(pipeline).stem
    else:
        config_dir, name = pipelines_dir(), pipeline
    if not (config_dir / f"{name}.yaml").exists():
        raise ConfigError(f"pipeline={pipeline!r} not found; choose one of {recipes()} or give a path to a .yaml")
    cfg = _compose(config_dir, name, [*overrides])
    cfg.pipeline = pipeline
    return cfg


def _compose_remembered(path: Path, pipeline: str | None, overrides: list[str]) -> CurateConfig:
    try:
        stored = OmegaConf.merge(OmegaConf.structured(CurateConfig), OmegaConf.load(path))
    except (OmegaConfBaseException, OSError, ValueError) as err:
        raise ConfigError(
            f"{path} cannot be read as a curate config ({err}); restore it or start a new run.dir"
        ) from err
    stored = without_per_invocation(stored)
    recorded = str(stored.pipeline)
    if pipeline is not None and not same_pipeline(pipeline, recorded):
        raise ConfigError(
            f"{path.parent} is a run of pipeline={recorded} (its config.yaml): leave pipeline= out to go on with it "
            f"(overrides still apply), or start a new run of pipeline={pipeline} with another run.dir=..."
        )
    ConfigStore.instance().store(name="curate_remembered_run", node=stored)
    return _compose(pipelines_dir(), "curate_remembered_run", overrides)


def without_per_invocation(node: Any) -> Any:
    """The config with the one-invocation settings (PER_INVOCATION) at their defaults."""
    defaults = OmegaConf.structured(CurateConfig)
    for key in PER_INVOCATION:
        OmegaConf.update(node, key, OmegaConf.select(defaults, key))
    return node


def same_pipeline(given: str, recorded: str) -> bool:
    if given == recorded:
        return True
    return given.endswith(".yaml") and recorded.endswith(".yaml") and Path(given).resolve() == Path(recorded).resolve()


def recipes() -> list[str]:
    return sorted(p.stem for p in pipelines_dir().glob("*.yaml"))


def config_text(cfg: CurateConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
