"""The detectors of a config, built by their registry entries (once per worker process, never at import), and
what they will report as `identity()` (for the detect stage's fingerprint, without building them)."""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.config import DETECTOR_FAMILIES, ConfigError, CurateConfig, DetectConfig, ModelsConfig
from curate.detect.builder import report_floor as report_floor  # its old home: bench/ imports it from here
from curate.detect.types import Detector
from curate.models.clip import clip_checkpoint, clip_on_disk
from curate.models.registry import (
    CLIP,
    REGISTRY,
    ModelSpec,
    absent,
    file_digest,
    known_digest,
    refuse_bad_detectors,
    resolve,
)

if TYPE_CHECKING:
    from curate.detect.clip_filter import ClipHumanFilter


def pick_device(wanted: str) -> str:
    import torch

    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"detect.device={wanted} but torch sees no GPU; use detect.device=auto or cpu")
    return wanted


def builder_of(spec: ModelSpec) -> Callable[..., Any]:
    """The entry's builder, imported from its "module:function" path when it is one."""
    if callable(spec.builder):
        return spec.builder
    module, _, attribute = spec.builder.partition(":")
    found: Callable[..., Any] = getattr(importlib.import_module(module), attribute)
    return found


@functools.lru_cache(maxsize=16)
def _build(name: str, spec: str, weights: str, files: str, device: str, detect: str) -> Any:
    # keyed by the entry, the weights (path, and each file's digest: a file replaced in place is a new detector,
    # as it is a new fingerprint), the device and the detect config, all as text (hashable)
    entry = REGISTRY[name]
    return builder_of(entry)(Path(weights), device, DetectConfig(**json.loads(detect)), **entry.params)


def build(name: str, weights: Path, device: str, detect: DetectConfig) -> Any:
    """The registry entry `name`'s detector with these weights, built once per process for the same arguments."""
    spec = REGISTRY[name]
    key = json.dumps({"builder": str(spec.builder), "params": dict(spec.params)}, sort_keys=True, default=str)
    return _build(
        name, key, str(weights), _file_states(spec, weights), device, json.dumps(asdict(detect), sort_keys=True)
    )


def _file_states(spec: ModelSpec, weights: Path) -> str:
    """The sha256 of the weights file and of the entry's extra files beside it (the hand landmark model), as
    detect's fingerprint sees them (`registry.file_digest`, hashed once per version of a file)."""
    paths = [weights, *(weights.with_name(extra.filename) for extra in spec.extra)]
    return json.dumps([file_digest(p) for p in paths if p.is_file()])


def family_detectors(family: str, detect: DetectConfig, models: ModelsConfig, device: str) -> list[Detector]:
    """The detectors of detect.<family>, in the order listed; a misconfigured list is refused first."""
    refuse_bad_detectors(detect)
    names: list[str] = getattr(detect, family)
    return [build(name, resolve(name, models), device, detect.seen_by(name)) for name in names]


def face_detectors(detect: DetectConfig, models: ModelsConfig, device: str) -> list[Detector]:
    return family_detectors("face", detect, models, device)


def person_detectors(detect: DetectConfig, models: ModelsConfig, device: str) -> list[Detector]:
    return family_detectors("person", detect, models, device)


def hand_detectors(detect: DetectConfig, models: ModelsConfig, device: str) -> list[Detector]:
    return family_detectors("hand", detect, models, device)


def weights_path(name: str, cfg: CurateConfig) -> Path:
    """A registry entry's verified weight file (downloaded when allowed); CLIP's is detect.clip_model's."""
    if REGISTRY[name].kind == "clip":
        return Path(clip_checkpoint(cfg, download=cfg.models.download))
    return resolve(name, cfg.models)


def clip_filter(cfg: CurateConfig, device: str) -> ClipHumanFilter | None:
    if not cfg.detect.clip_model:
        return None
    clip: ClipHumanFilter = build(CLIP, weights_path(CLIP, cfg), device, cfg.detect)
    return clip


# -- identities without building ---------------------------------------------------------------------------


def clip_key(detect: DetectConfig) -> str:
    """The CLIP checkpoint's name among the digests the detect stage records (stats/detect_weights.json)."""
    return f"clip:{detect.clip_model}/{detect.clip_pretrained}"


def identity_of(name: str, digest: str, cfg: CurateConfig) -> dict[str, Any]:
    """What the registry entry's detector, with weights of sha256 `digest`, reports as identity(): from its
    Builder without building it, or (a plain callable builder) by building it on the CPU."""
    spec = REGISTRY[name]
    builder = builder_of(spec)
    describe = getattr(builder, "identity", None)
    if describe is not None:
        found: dict[str, Any] = describe(digest, cfg.detect.seen_by(name), **spec.params)
        return found
    if digest.startswith(absent("")):  # nothing to build it from: an identity that matches no built one
        return {"builder": str(spec.builder), "params": dict(spec.params), "weights": digest}
    return dict(builder(weights_path(name, cfg), "cpu", cfg.detect.seen_by(name), **spec.params).identity())


def identities(cfg: CurateConfig, recorded: Mapping[str, str]) -> dict[str, Any]:
    """Per family, each configured detector's identity as it would be built now: the weights as they are on
    this machine (`recorded`: the digests this run recorded, for weights that are not here). An unknown name
    gets a stand-in (detect refuses it before any work)."""
    detect = cfg.detect
    found: dict[str, Any] = {}
    for family in DETECTOR_FAMILIES:
        names: list[str] = getattr(detect, family)
        found[family] = {
            name: identity_of(name, known_digest(name, cfg.models, recorded), cfg)
            if name in REGISTRY
            else {"unknown": name}
            for name in names
        }
    found["clip"] = None
    if detect.clip_model:
        path = clip_on_disk(cfg)
        digest = file_digest(path) if path else recorded.get(clip_key(detect), absent(clip_key(detect)))
        found["clip"] = identity_of(CLIP, digest, cfg)
    return found
