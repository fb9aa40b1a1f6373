"""Build detectors by registry name, once per worker process (never at import)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from curate.config import ConfigError, CurateConfig, DetectConfig, ModelsConfig
from curate.detect.types import COUNT_ABOVE, Detector
from curate.models.registry import ModelMissing, resolve

TORCHVISION_ARCHS = (
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
)


def pick_device(wanted: str) -> str:
    import torch

    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"detect.device={wanted} but torch sees no GPU; use detect.device=auto or cpu")
    return wanted


def clip_checkpoint(cfg: CurateConfig, download: bool) -> str:
    """A local CLIP checkpoint: models.dir/clip-<model>-<tag>.pt, or open_clip's sha-checked download."""
    model, tag = cfg.detect.clip_model, cfg.detect.clip_pretrained
    if cfg.models.dir:
        path = Path(os.path.expanduser(cfg.models.dir)) / f"clip-{model}-{tag}.pt"
        if not path.exists():
            raise ModelMissing(
                f"CLIP {model}/{tag} needs {path.name} in models.dir={cfg.models.dir}: run "
                "`python -m curate.models download` on a machine with internet and copy the file"
            )
        return str(path)
    import open_clip

    pretrained = open_clip.get_pretrained_cfg(model, tag)
    if not pretrained:
        raise ConfigError(f"open_clip has no pretrained tag {tag!r} for {model!r}: see open_clip.list_pretrained()")
    if not download:
        raise ModelMissing(f"CLIP {model}/{tag} is not cached and models.download=false")
    cache = os.path.expanduser(cfg.models.cache)
    path = open_clip.download_pretrained(pretrained, cache_dir=cache)
    if not path:
        raise ModelMissing(f"could not download CLIP {model}/{tag}")
    return str(path)


@functools.lru_cache(maxsize=16)
def _build(name: str, weights: str, device: str, options: tuple[tuple[str, Any], ...]) -> Detector:
    kwargs = dict(options)
    if name == "retinaface_mnet025":
        from curate.detect.retinaface import RetinaFaceDetector

        return RetinaFaceDetector(Path(weights), device=device, **kwargs)
    if name == "retinaface_r50":
        from curate.detect.retinaface_r50 import RetinaFaceR50Detector

        return RetinaFaceR50Detector(Path(weights), device=device, **kwargs)
    if name.startswith("yolox_"):
        from curate.detect.yolox import YoloxDetector

        return YoloxDetector(Path(weights), variant=name.removeprefix("yolox_"), device=device, **kwargs)
    if name in TORCHVISION_ARCHS:
        from curate.detect.torchvision_person import TorchvisionPersonDetector

        kwargs.pop("tiles", None)
        kwargs.pop("tile_min_side", None)
        return TorchvisionPersonDetector(arch=name, weights=Path(weights), device=device, **kwargs)
    raise ConfigError(f"no loader for detector {name!r}")


def face_detectors(cfg: DetectConfig, models: ModelsConfig, device: str) -> list[Detector]:
    half = cfg.half and device.startswith("cuda")
    built = []
    for name in cfg.face:
        options: tuple[tuple[str, Any], ...] = (("batch_size", cfg.batch_size),)
        if name != "retinaface_mnet025":  # always float32: see curate.detect.retinaface.full_float32
            options += (("half", half),)
        else:
            options += (("report_floor", report_floor(cfg)),)
        if cfg.face_max_side:
            options += (("max_side", cfg.face_max_side),)
        built.append(_build(name, str(resolve(name, models)), device, options))
    return built


def person_detectors(cfg: DetectConfig, models: ModelsConfig, device: str) -> list[Detector]:
    half = cfg.half and device.startswith("cuda")
    options: tuple[tuple[str, Any], ...] = (("batch_size", cfg.batch_size), ("half", half))
    options += (("tiles", cfg.person_tiles), ("tile_min_side", cfg.person_tile_min_side))
    built = []
    for name in cfg.person:
        extra = (("report_floor", report_floor(cfg)),) if name.startswith("yolox_") else ()
        built.append(_build(name, str(resolve(name, models)), device, options + extra))
    return built


def report_floor(cfg: DetectConfig) -> float:
    """The lowest box score the detect stage stores or counts (boxes >= box_floor, counts above COUNT_ABOVE):
    detectors that support it skip the boxes below, which saves their NMS most of its work and changes no stored
    value."""
    return min(cfg.box_floor, COUNT_ABOVE)


@functools.lru_cache(maxsize=4)
def _clip(model: str, checkpoint: str, device: str, batch_size: int, half: bool) -> Any:
    from curate.detect.clip_filter import ClipHumanFilter

    return ClipHumanFilter(model=model, pretrained=None, weights=Path(checkpoint), device=device,
                           batch_size=batch_size, half=half)  # fmt: skip


def clip_filter(cfg: CurateConfig, device: str) -> Any | None:
    if not cfg.detect.clip_model:
        return None
    checkpoint = clip_checkpoint(cfg, download=cfg.models.download)
    return _clip(cfg.detect.clip_model, checkpoint, device, cfg.detect.batch_size,
                 cfg.detect.half and device.startswith("cuda"))  # fmt: skip
